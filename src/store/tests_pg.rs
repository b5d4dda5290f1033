//! The PostgreSQL store against a throwaway server: what only it has (migrations,
//! connections lost and regained). The behaviour both stores share is in
//! `tests_contract.rs`.

use super::tests::{all_pending, created, events_commit, ids, seen, NOW_MS};
use super::tests_contract::{commit_all, poll_commits};
use super::throwaway::Server;
use super::*;
use super::{Held, Work};

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
    // Both migrations, each once.
    assert_eq!(pg.psql(db, "SELECT count(*) FROM pollhook_schema"), "3");
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

/// A poll of several commits keeps one transaction from its first chunk to its last.
/// Lost between them (a database restart), the poll's later commits are refused and
/// nothing of it shows; the next poll starts over. A poll whose plan failed between two
/// chunks ends its transaction at once: a forget from another instance does not wait for
/// the source's next poll.
#[test]
fn a_poll_of_several_commits_that_loses_its_transaction_writes_nothing() {
    let Some(pg) = Server::for_test("a_poll_of_several_commits…") else {
        return;
    };
    let own = Server::start().unwrap();
    let _ = pg;
    let url = own.new_database("lost");
    let store = open(&url);
    store
        .commit_poll(events_commit("s", 0, vec![created("s", 1, "a", &["t"])]))
        .unwrap();
    let items = ["b1", "b2", "b3", "b4", "b5"];
    let (p, _) = poll_commits("s", 1, 1, &items, &["t"], 2);
    let mut p = p.into_iter();
    assert_eq!(store.commit_poll(p.next().unwrap()).unwrap(), 1);
    own.restart();
    // The next chunk fails on the dead connection, or it is written while the poll
    // builds the last, whose commit then fails with its error; a later one finds the
    // poll gone.
    let _ = store.commit_poll(p.next().unwrap());
    let mut last = store.commit_poll(p.next().unwrap());
    for _ in 0..5 {
        // A pooled connection that died with the server may fail the first reads.
        if !matches!(last, Err(StoreError::Postgres { .. })) {
            break;
        }
        let (again, _) = poll_commits("s", 1, 1, &items, &["t"], 2);
        last = store.commit_poll(again.into_iter().nth(1).unwrap());
    }
    match last {
        Err(StoreError::PollLost { source_name }) => assert_eq!(source_name, "s"),
        other => panic!("expected the poll to be lost, got {other:?}"),
    }
    assert_eq!(ids(&all_pending(&store, "t")).len(), 1);
    assert_eq!(store.source_state("s").unwrap().generation, 1);
    // The next poll, from the same state, commits all of its own.
    let (again, events) = poll_commits("s", 1, 1, &items, &["t"], 2);
    assert_eq!(commit_all(&store, again).unwrap(), 2);
    assert_eq!(all_pending(&store, "t").len(), 1 + events.len());

    // A poll stages a chunk and its plan fails (Plan::commit_all abandons it).
    let (q, _) = poll_commits("s", 2, 6, &["q1", "q2", "q3"], &["t"], 2);
    assert_eq!(store.commit_poll(q.into_iter().next().unwrap()).unwrap(), 2);
    store.abandon_poll("s");
    let other = open(&url);
    let started = std::time::Instant::now();
    assert!(other.forget_source("s").unwrap());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the forget waited {:?} for the abandoned poll's transaction",
        started.elapsed()
    );
}

/// Fencing: an instance paused past its lease (here: it stops renewing) writes nothing
/// once another took its source over, and its store says it no longer holds it.
#[test]
fn a_paused_instance_writes_nothing_after_another_took_its_work_over() {
    let Some(pg) = Server::for_test("a_paused_instance…") else {
        return;
    };
    let url = pg.new_database("fence");
    let lease = std::time::Duration::from_secs(2);
    let a = open(&url).join("a".into(), lease);
    let b = open(&url).join("b".into(), lease);
    let sources = ["s".to_string()];
    let none = Held::default();
    let held = a.tick(&sources, &[], &none).unwrap();
    assert!(held.sources.contains("s"), "{held:?}");
    let held = b.tick(&sources, &[], &none).unwrap();
    assert!(held.sources.is_empty(), "{held:?}");
    assert!(a.holds(Work::Source, "s") && !b.holds(Work::Source, "s"));
    a.commit_poll(events_commit("s", 0, vec![created("s", 1, "x", &["t"])]))
        .unwrap();

    // a stops renewing (a pause); its lease expires and b claims it, at a new epoch.
    std::thread::sleep(lease);
    let held = b.tick(&sources, &[], &none).unwrap();
    assert!(held.sources.contains("s"), "{held:?}");
    assert!(!a.holds(Work::Source, "s"));
    // a wakes up and commits what it polled before the pause: refused.
    match a.commit_poll(events_commit("s", 1, vec![created("s", 2, "y", &["t"])])) {
        Err(StoreError::NotHeld { name, instance, .. }) => {
            assert_eq!((name.as_str(), instance.as_str()), ("s", "a"));
        }
        other => panic!("a stale commit was not refused: {other:?}"),
    }
    // Even with a renewal first: its lease is gone, the round gives it nothing.
    let held = a.tick(&sources, &[], &none).unwrap();
    assert!(held.sources.is_empty(), "{held:?}");
    assert!(a
        .commit_poll(events_commit("s", 1, vec![created("s", 2, "y", &["t"])]))
        .is_err());
    // b commits; the outbox holds x (from a, before) and z (from b), not y.
    b.commit_poll(events_commit("s", 1, vec![created("s", 2, "z", &["t"])]))
        .unwrap();
    let items: Vec<String> = all_pending(&b, "t")
        .into_iter()
        .map(|d| d.item_id)
        .collect();
    assert_eq!(items, ["x", "z"]);
}
