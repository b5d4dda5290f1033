//! The PostgreSQL store against a throwaway server: what only it has (migrations,
//! connections lost and regained). The behaviour both stores share is in
//! `tests_contract.rs`.

use super::tests::{all_pending, created, events_commit, seen, NOW_MS};
use super::throwaway::Server;
use super::*;

fn open(url: &str) -> PgStore {
    PgStore::open(url, "test").unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)))
}

#[test]
fn a_commit_is_read_back_by_another_connection_and_instances_migrate_once() {
    let Some(pg) = Server::for_test("a_commit_is_read_back…") else {
        return;
    };
    let url = pg.new_database("commit");
    // Several instances opening at once each find the schema, none applies it twice.
    let opened: Vec<PgStore> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(|| open(&url))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(pg.psql(db, "SELECT count(*) FROM pollhook_schema"), "1");
    let a = serde_json::json!({"id": "a"});
    let g = opened[0]
        .commit_poll(PollCommit {
            upserts: vec![("a".into(), seen(&a))],
            item_count: 1,
            ..events_commit("s", 0, vec![created("s", 1, "a", &["t", "u"])])
        })
        .unwrap();
    assert_eq!(g, 1);
    let other = &opened[3];
    assert_eq!(other.source_state("s").unwrap().generation, 1);
    assert_eq!(other.snapshot("s").unwrap()["a"], seen(&a));
    let t = all_pending(other, "t");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].created_ms, NOW_MS);
    assert_eq!(all_pending(other, "u")[0].seq, t[0].seq);
}

#[test]
fn a_database_restart_fails_calls_until_it_is_back_then_they_work() {
    let Some(pg) = Server::for_test("a_database_restart…") else {
        return;
    };
    // A server of its own: restarting the shared one would fail other tests.
    let own = Server::start().unwrap();
    let _ = pg;
    let url = own.new_database("restart");
    let store = open(&url);
    store
        .commit_poll(events_commit("s", 0, vec![created("s", 1, "a", &["t"])]))
        .unwrap();
    own.restart();
    // The pooled connection died with the server: the first call may fail, and says so.
    let mut failures = 0;
    let pending = loop {
        match store.pending("t", None, 10) {
            Ok(p) => break p,
            Err(e) => {
                assert!(matches!(e, StoreError::Postgres { .. }), "{e:?}");
                failures += 1;
                assert!(failures < 5, "{}", crate::error::chain(&e));
            }
        }
    };
    assert_eq!(pending.len(), 1);
}
