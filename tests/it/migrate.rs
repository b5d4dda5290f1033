//! `pollhook migrate-store` with the binary: a daemon on sled delivers and leaves a
//! delivery pending, the state moves into PostgreSQL, and the daemon started there
//! goes on where the one on sled stopped. Only in `it_pg`.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::process::{Daemon, BIN};
use crate::support::{accepted, on_postgres, summary, wait_for, WAIT};
use pollhook::store::{PgStore, Store};

/// Runs `pollhook migrate-store --config <config>`; returns (success, stdout, stderr).
fn migrate(config: &Path) -> (bool, String, String) {
    migrate_with(config, &[])
}

/// [`migrate`] with more arguments.
fn migrate_with(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["migrate-store", "--config"])
        .arg(config)
        .args(args)
        .env_remove("STATE_DIRECTORY")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_installation_moved_to_postgres_goes_on_without_a_flood_or_a_lost_delivery() {
    if !on_postgres() {
        // Needs a database to move to; `it_pg` runs this.
        return;
    }
    let h = harness!();
    let url = h.pg.as_ref().unwrap().1.clone();
    // The same config twice: on sled (no [store]), and naming the database. Enough
    // retries (12 s of them) that the failing delivery is still pending when stopped.
    // With baseline = false a source whose state was lost would announce every item
    // as created again: the flood the move must not cause.
    let pg_text = h.config_text("baseline = false", "").replacen(
        "retry = [",
        &format!("retry = [{}", "\"200ms\", ".repeat(50)),
        1,
    );
    let sled_text = pg_text.replacen(&format!("[store]\npostgres = {url:?}\n"), "", 1);
    assert_ne!(sled_text, pg_text);
    let (sled_config, pg_config) = (h.dir.path().join("sled.toml"), h.dir.path().join("pg.toml"));
    std::fs::write(&sled_config, &sled_text).unwrap();
    std::fs::write(&pg_config, &pg_text).unwrap();

    // Refused: a config without a database to move to; a state_dir without a
    // database to move (and none is created there).
    let (ok, _, stderr) = migrate(&sled_config);
    assert!(
        !ok && stderr.contains("names no PostgreSQL database"),
        "{stderr}"
    );
    let (ok, _, stderr) = migrate(&pg_config);
    assert!(
        !ok && stderr.contains("there is no sled database in"),
        "{stderr}"
    );
    let nowhere = h.dir.path().join("nowhere");
    let (ok, _, stderr) = migrate_with(&pg_config, &["--from", nowhere.to_str().unwrap()]);
    assert!(!ok && stderr.contains("given with --from"), "{stderr}");
    assert!(!h.state_dir().exists() && !nowhere.exists());

    // On sled: items 1 and 2 at the first poll, then 3, are delivered; 4 stays pending.
    h.api.set("1", json!({"v": 1}));
    h.api.set("2", json!({"v": 1}));
    let mut on_sled = Daemon::start(&sled_config, &h.dir.path().join("sled.log"), &[]);
    h.received("1 and 2 created", |r| accepted(r, "s.created").count() == 2)
        .await;
    h.api.set("3", json!({"v": 1}));
    h.received("3 created", |r| accepted(r, "s.created").count() == 3)
        .await;
    h.rx.set_status(500);
    h.api.set("4", json!({"v": 1}));
    let failed = h
        .received("a failing attempt for 4", |r| {
            r.iter().any(|r| r.item_id == "4" && r.status == 500)
        })
        .await;
    let pending_id = failed.iter().find(|r| r.item_id == "4").unwrap().id.clone();

    // While the daemon holds the state_dir, the copy is refused and writes nothing.
    let (ok, _, stderr) = migrate(&pg_config);
    assert!(
        !ok && stderr.contains("holds its lock") && stderr.contains("stop the daemon"),
        "{stderr}"
    );
    on_sled.sigterm();
    assert_eq!(on_sled.wait(WAIT).await, Some(0), "{}", on_sled.log());
    let before = h.rx.received().len();

    let (ok, stdout, stderr) = migrate(&pg_config);
    assert!(ok, "migrate-store failed:\n{stderr}\n{stdout}");
    assert!(stderr.contains("No pollhook daemon may run"), "{stderr}");
    assert!(stdout.contains("sources: 1 (4 stored items)"), "{stdout}");
    assert!(
        stdout.contains("was not changed: it is a backup"),
        "{stdout}"
    );
    let t = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("t "))
        .unwrap();
    assert_eq!(
        t.split_whitespace().collect::<Vec<_>>(),
        ["t", "1", "pending", "0", "dead"]
    );
    // The pending delivery came with its attempts and last error.
    let store = PgStore::open(&url, "the test database").unwrap();
    let pending = store.pending("t", None, usize::MAX).unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (pending[0].event_id.as_str(), pending[0].item_id.as_str()),
        (pending_id.as_str(), "4")
    );
    assert!(
        pending[0].attempts >= 1 && pending[0].last_error.is_some(),
        "{pending:?}"
    );
    // The state_dir is still there, as it was: a second copy is refused as the
    // database now holds state.
    assert!(h.state_dir().join("db").exists());
    let (ok, _, stderr) = migrate(&pg_config);
    assert!(
        !ok && stderr.contains(
            "already holds pollhook state (1 source, 4 stored items, 1 pending delivery)"
        ),
        "{stderr}"
    );

    // On PostgreSQL: the pending delivery arrives with its id, no created flood for
    // the items that were there, and a new change arrives.
    h.rx.set_status(200);
    let mut on_pg = Daemon::start(&pg_config, &h.dir.path().join("pg.log"), &[]);
    h.received("4 delivered", |r| {
        r.iter().any(|r| r.item_id == "4" && r.status == 200)
    })
    .await;
    h.polls(3).await;
    h.api.set("5", json!({"v": 1}));
    let got = h
        .received("5 created", |r| {
            accepted(r, "s.created").any(|r| r.item_id == "5")
        })
        .await;
    let after = &got[before..];
    let created: Vec<(&str, &str)> = accepted(after, "s.created")
        .map(|r| (r.item_id.as_str(), r.id.as_str()))
        .collect();
    assert_eq!(created.len(), 2, "{:#?}\n{}", summary(after), on_pg.log());
    assert_eq!(
        created[0],
        ("4", pending_id.as_str()),
        "{:#?}",
        summary(after)
    );
    assert_eq!(created[1].0, "5");
    assert!(
        after.iter().all(|r| r.item_id == "4" || r.item_id == "5"),
        "events for items that existed before the move: {:#?}",
        summary(after)
    );
    wait_for(|| store.pending("t", None, 1).unwrap().is_empty()).await;
    on_pg.sigterm();
    assert_eq!(on_pg.wait(WAIT).await, Some(0), "{}", on_pg.log());
}
