//! `PgStore::import` (`pollhook migrate-store`) from a real sled store in a temporary
//! directory into a database of the throwaway PostgreSQL server: everything the trait
//! shows is the same on both afterwards, a poll of what did not change finds nothing
//! on PostgreSQL, a changed item gets the event id it would have had on sled; a
//! database that holds state or has a live instance is refused with nothing written,
//! and a copy that fails halfway leaves the database empty.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::tests::{open, seen, NOW_MS};
use super::throwaway::Server;
use super::*;
use crate::config::{Config, Source};
use crate::poll::{plan_response, Plan};

const CONFIG: &str = r#"
[targets.t]
url = "http://127.0.0.1:9/t"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[targets.u]
url = "http://127.0.0.1:9/u"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.big]
url = "http://127.0.0.1:9/big"
interval = "1m"
items = "/items"

[sources.small]
url = "http://127.0.0.1:9/small"
interval = "1m"
items = "/items"
baseline = false
targets = ["t"]
"#;

/// Items in source `big`: more than one insert's worth of a small batch, and more than
/// a thousand.
const BIG: usize = 1_500;

fn config(dir: &std::path::Path) -> Config {
    Config::parse(CONFIG, &dir.join("config.toml"), &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(NOW_MS).expect("a valid timestamp")
}

/// A response of items `ids`, item `i` at version `version(i)`.
fn body(ids: impl Iterator<Item = usize>, version: impl Fn(usize) -> u32) -> Vec<u8> {
    let items: Vec<_> = ids
        .map(|i| json!({"id": format!("i{i:05}"), "v": version(i), "name": format!("item {i}")}))
        .collect();
    serde_json::to_vec(&json!({ "items": items })).unwrap()
}

/// What a poll that got `body` would do, planned against `store`.
fn plan(store: &dyn Store, source: &Source, body: &[u8]) -> Plan {
    plan_response(store, source, body, now()).unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `source` with `body` into `store`; returns the events it queued.
fn poll(store: &dyn Store, source: &Source, body: &[u8]) -> usize {
    let p = plan(store, source, body);
    let events = p.report.events;
    p.commit_all(store, || {}).unwrap();
    events
}

/// A sled store holding two sources' snapshots (one of [`BIG`] items), pending
/// deliveries to two targets (one retried, with its last error), dead ones, and a gap
/// in the sequence (an acknowledged delivery).
fn sled_with_state(dir: &std::path::Path, config: &Config) -> SledStore {
    let sled = open(&dir.join("state"));
    let (big, small) = (&config.sources["big"], &config.sources["small"]);
    // big: a silent baseline, then 3 updates and a deletion, to t and u.
    assert_eq!(poll(&sled, big, &body(0..BIG, |_| 0)), 0);
    let changed = body(0..BIG - 1, |i| u32::from(i < 3));
    assert_eq!(poll(&sled, big, &changed), 4);
    // small: created events of its first poll (baseline = false), to t only.
    assert_eq!(poll(&sled, small, &body(0..5, |_| 0)), 5);
    let t = sled.pending("t", None, usize::MAX).unwrap();
    let u = sled.pending("u", None, usize::MAX).unwrap();
    assert_eq!((t.len(), u.len()), (9, 4));
    sled.reschedule("t", t[0].seq, 2, NOW_MS + 5_000, "HTTP 500: boom")
        .unwrap();
    sled.bury("t", t[1].seq, 10, "HTTP 410 Gone").unwrap();
    sled.ack("t", t[2].seq).unwrap();
    sled.bury("u", u[0].seq, 3, "connection refused").unwrap();
    sled
}

/// Everything the trait shows of a store, for comparing two.
#[derive(Debug, PartialEq)]
struct Dump {
    sources: Vec<(String, SourceState)>,
    snapshots: BTreeMap<String, HashMap<String, Seen>>,
    outbox: Vec<Delivery>,
    pending: BTreeMap<String, Vec<Delivery>>,
    dead: Vec<Delivery>,
    stats: BTreeMap<String, TargetStats>,
}

fn dump(store: &dyn Store) -> Dump {
    let sources: Vec<(String, SourceState)> = store
        .sources()
        .unwrap()
        .into_iter()
        // The snapshot's layout in sled; PostgreSQL has none (it reports 0).
        .map(|(name, s)| (name, SourceState { buckets: 0, ..s }))
        .collect();
    let snapshots = sources
        .iter()
        .map(|(name, _)| (name.clone(), store.snapshot(name).unwrap()))
        .collect();
    let stats = store.target_stats().unwrap();
    let pending = stats
        .keys()
        .map(|t| (t.clone(), store.pending(t, None, usize::MAX).unwrap()))
        .collect();
    Dump {
        sources,
        snapshots,
        outbox: store.outbox(None, usize::MAX).unwrap(),
        pending,
        dead: store.dead(None, usize::MAX).unwrap(),
        stats,
    }
}

fn pg_open(url: &str) -> PgStore {
    PgStore::open(url, "test").unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)))
}

#[test]
fn an_import_copies_everything_and_the_next_poll_on_postgres_finds_no_change() {
    let Some(pg) = Server::for_test("an_import_copies_everything…") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let sled = sled_with_state(dir.path(), &config);
    let before = dump(&sled);
    let pg = pg_open(&pg.new_database("import"));

    let report = pg
        .import(&sled)
        .unwrap_or_else(|e| panic!("{}", crate::error::chain(&e)));

    let after = dump(&pg);
    // Compared part by part first, for a readable failure.
    assert_eq!(after.sources, before.sources);
    assert_eq!(after.snapshots, before.snapshots);
    assert_eq!(after.outbox, before.outbox);
    assert_eq!(after.dead, before.dead);
    assert_eq!(after, before);
    assert_eq!(before.sources[0].1.generation, 2, "{:?}", before.sources);
    assert_eq!(before.snapshots["big"].len(), BIG - 1);
    let retried = &after.pending["t"][0];
    assert_eq!(
        (retried.attempts, retried.last_error.as_deref()),
        (2, Some("HTTP 500: boom"))
    );
    // What the report says it copied.
    let copied: Vec<(&str, u64, u64)> = report
        .sources
        .iter()
        .map(|s| (s.name.as_str(), s.state.generation, s.items))
        .collect();
    assert_eq!(copied, [("big", 2, BIG as u64 - 1), ("small", 1, 5)]);
    assert_eq!(report.items(), BIG as u64 + 4);
    let targets: Vec<(&str, u64, u64)> = report
        .targets
        .iter()
        .map(|(t, c)| (t.as_str(), c.pending, c.dead))
        .collect();
    assert_eq!(targets, [("t", 7, 1), ("u", 3, 1)]);

    // A poll of what did not change finds nothing to do on PostgreSQL.
    let (big, small) = (&config.sources["big"], &config.sources["small"]);
    let unchanged = body(0..BIG - 1, |i| u32::from(i < 3));
    for (source, body) in [(big, &unchanged), (small, &body(0..5, |_| 0))] {
        let p = plan(&pg, source, body);
        assert_eq!(p.report.events, 0, "{}: {:?}", source.name, p.report);
        assert!(!p.writes(), "{}: {:?}", source.name, p.report);
    }
    // A change gets the event id it would have got on sled: the generation came along.
    let changed = body(0..BIG - 1, |i| u32::from(i < 3) + u32::from(i == 7));
    let ids = |store: &dyn Store| -> Vec<String> {
        plan(store, big, &changed)
            .into_events()
            .map(|e| e.unwrap().id)
            .collect()
    };
    let on_sled = ids(&sled);
    assert_eq!(on_sled.len(), 1);
    assert_eq!(ids(&pg), on_sled);
    // And it queues after every delivery copied, in each target's order.
    assert_eq!(poll(&pg, big, &changed), 1);
    let highest = before
        .outbox
        .iter()
        .chain(&before.dead)
        .map(|d| d.seq)
        .max()
        .unwrap();
    assert!(report.next_seq > highest, "{report:?}");
    let t = pg.pending("t", None, usize::MAX).unwrap();
    assert_eq!(t.last().unwrap().event_id, on_sled[0]);
    assert_eq!(t.last().unwrap().seq, report.next_seq);
    assert!(t.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn an_import_into_a_database_with_state_or_a_live_instance_is_refused_and_writes_nothing() {
    let Some(server) = Server::for_test("an_import_into_a_database_with_state…") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sled = sled_with_state(dir.path(), &config(dir.path()));

    // A database another installation already uses.
    let used = pg_open(&server.new_database("used"));
    let a = json!({"id": "a"});
    used.commit_poll(PollCommit {
        upserts: vec![("a".into(), seen(&a))],
        item_count: 1,
        ..super::tests::events_commit(
            "other",
            0,
            vec![super::tests::created("other", 1, "a", &["t"])],
        )
    })
    .unwrap();
    let before = dump(&used);
    match used.import(&sled) {
        Err(StoreError::ImportNotEmpty { holds, .. }) => {
            assert_eq!(holds, "1 source, 1 stored item, 1 pending delivery")
        }
        other => panic!("an import into a used database was not refused: {other:?}"),
    }
    assert_eq!(dump(&used), before);

    // An empty database with an instance running on it (it could commit any moment).
    let url = server.new_database("live");
    let live = pg_open(&url).join("x".into(), std::time::Duration::from_secs(60));
    live.tick(&["s".to_string()], &[], &Held::default())
        .unwrap();
    let target = pg_open(&url);
    match target.import(&sled) {
        Err(StoreError::ImportInUse { instances, .. }) => {
            assert!(instances.starts_with("x (renewed"), "{instances}")
        }
        other => panic!("an import with an instance running was not refused: {other:?}"),
    }
    assert!(target.sources().unwrap().is_empty());
    assert!(target.target_stats().unwrap().is_empty());
}

#[test]
fn an_import_that_fails_halfway_leaves_the_database_empty() {
    let Some(server) = Server::for_test("an_import_that_fails_halfway…") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sled = open(dir.path());
    let commit = |source: &str, id: &str| {
        let item = json!({"id": id});
        sled.commit_poll(PollCommit {
            upserts: vec![(id.into(), seen(&item))],
            item_count: 1,
            ..super::tests::events_commit(
                source,
                0,
                vec![super::tests::created(source, 1, id, &["t"])],
            )
        })
        .unwrap();
    };
    commit("a", "fine");
    // PostgreSQL's text cannot hold a NUL: the copy fails at source z, after a's rows.
    commit("z", "bad\0id");
    let url = server.new_database("halfway");
    let pg = pg_open(&url);
    match pg.import(&sled) {
        Err(StoreError::ImportFailed { doing, .. }) => {
            assert_eq!(doing, "copying the stored items of source z")
        }
        other => panic!("the import did not fail as it should: {other:?}"),
    }
    assert!(pg.sources().unwrap().is_empty());
    assert!(pg.target_stats().unwrap().is_empty());
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(server.psql(db, "SELECT count(*) FROM pollhook_items"), "0");
    // Rolled back, not half there: a good store can still be copied into it.
    sled.forget_source("z").unwrap();
    let z = sled.outbox(Some("t"), usize::MAX).unwrap();
    sled.ack("t", z.last().unwrap().seq).unwrap();
    let report = pg.import(&sled).unwrap();
    assert_eq!(report.items(), 1);
}
