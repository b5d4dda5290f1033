//! Reloading the config in a running daemon (what SIGHUP does): sources and targets
//! added, changed and removed take effect; an invalid config changes nothing; no
//! pending delivery is lost or sent twice, and an attempt in flight finishes; a source
//! whose transform alone changed restarts with the new program.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pollhook::daemon::Options;
use pollhook::demo::api::SampleApi;
use pollhook::demo::receiver::{Received, Receiver};
use pollhook::sign::Scheme;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{accepted, pending, Harness, SECRET, WAIT};

fn has(r: &[Received], event_type: &str, item: &str) -> bool {
    accepted(r, event_type).any(|x| x.item_id == item)
}

/// Writes `text` as the config file and starts the daemon on it; notifying what this
/// returns reloads the file, as SIGHUP does.
fn start_reloadable(h: &mut Harness, text: &str) -> Arc<Notify> {
    let reload = Arc::new(Notify::new());
    let config = h.write_config(text);
    h.start_with(
        config,
        Options {
            reload: Some(reload.clone()),
            ..Options::default()
        },
    );
    reload
}

#[tokio::test]
async fn a_reload_applies_changes_and_loses_or_repeats_no_delivery() {
    let mut h = harness!();
    let servers = CancellationToken::new();
    let _stop_servers = servers.clone().drop_guard();
    let api2 = SampleApi::start(servers.clone()).await.unwrap();
    let rx2 = Receiver::start(Scheme::Standard, vec![SECRET.into()], servers.clone())
        .await
        .unwrap();
    h.api.set("1", json!({"v": 1}));
    api2.set("a", json!({"v": 1}));
    let text_a = h.config_text("baseline = false", "");
    let reload = start_reloadable(&mut h, &text_a);
    h.received("item 1", |r| has(r, "s.created", "1")).await;

    // An attempt in flight at the reload: the first receiver holds it for a second.
    h.rx.set_delay(Duration::from_millis(1000));
    h.api.set("2", json!({"v": 1}));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Target t moves to the second receiver; source s2 is added.
    let text_b = format!(
        "{}\n[sources.s2]\nurl = \"{}\"\ninterval = \"200ms\"\nitems = \"/items\"\nbaseline = false\n",
        text_a.replace(&h.rx.url(), &rx2.url()),
        api2.url()
    );
    h.write_config(&text_b);
    reload.notify_one();
    // Item 2's attempt, in flight to the old URL, finishes there ...
    h.received("item 2 at the old URL", |r| has(r, "s.created", "2"))
        .await;
    // ... and what comes next goes to the new one.
    h.api.set("3", json!({"v": 1}));
    assert!(
        rx2.wait_until(WAIT, |r| has(r, "s2.created", "a")
            && has(r, "s.created", "3"))
            .await,
        "the added source and the changed target did not take effect: {:?}",
        rx2.received()
    );

    // An invalid config is refused: the daemon goes on with the one it runs.
    std::fs::write(h.dir.path().join("config.toml"), "[sources.s\nurl = ").unwrap();
    reload.notify_one();
    h.api.set("4", json!({"v": 1}));
    assert!(
        rx2.wait_until(WAIT, |r| has(r, "s.created", "4")).await,
        "a bad reload stopped the daemon"
    );

    // s2 is removed: it is polled no more.
    h.write_config(&text_a.replace(&h.rx.url(), &rx2.url()));
    reload.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let polls = api2.requests();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        api2.requests() <= polls + 1,
        "the removed source is still polled"
    );
    h.api.set("5", json!({"v": 1}));
    assert!(rx2.wait_until(WAIT, |r| has(r, "s.created", "5")).await);
    h.stop().await;

    // Every event reached exactly one receiver exactly once.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in h.rx.received().iter().chain(rx2.received().iter()) {
        if (200..300).contains(&r.status) {
            *seen.entry(r.id.clone()).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 6, "items 1-5 of s and a of s2: {seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "a delivery was repeated: {seen:?}"
    );
    let store = h.store();
    assert_eq!(pending(&*store, "t"), 0);
    // The removed source's state stays until `pollhook forget`.
    assert_eq!(store.source_state("s2").unwrap().items, 1);
}

#[tokio::test]
async fn a_reload_restarts_a_source_whose_transform_changed() {
    let mut h = harness!();
    h.api.set("1", json!({"v": 1}));
    let text = h.config_text("baseline = false\ntransform = '.'", "");
    let reload = start_reloadable(&mut h, &text);
    h.received("item 1", |r| has(r, "s.created", "1")).await;

    // Only the program's text changes: the source restarts and polls with the new one,
    // which changes every item.
    h.write_config(&text.replace(
        "transform = '.'",
        "transform = '.items |= map(. + {tagged: true})'",
    ));
    reload.notify_one();
    h.received("item 1 shaped by the new transform", |r| {
        accepted(r, "s.updated")
            .any(|x| x.item_id == "1" && x.body["data"]["object"]["tagged"] == true)
    })
    .await;
    h.stop().await;
}
