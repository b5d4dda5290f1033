//! Contract: polls with more events than one commit holds, committed in chunks as
//! `Plan::commit_all` commits them (nothing queued before the last commit, then every
//! event in detection order; a poll that never made its last commit delivers nothing;
//! the generation checked at every chunk), and commits racing a target worker's reads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    commit_all, committed, dump, event_ids, item, items_commit, poll_commits, state, Fixture,
};
use crate::diff::Seen;
use crate::extract::Collection;
use crate::store::tests::{all_pending, created, events_commit, ids, queue_events, NOW_MS};
use crate::store::{Delivery, PollCommit, StoreError};

/// Asserts that `result` is a conflict of source `s` between `expected` and `found`.
fn assert_conflict(result: Result<u64, StoreError>, expected: u64, found: u64) {
    match result {
        Err(StoreError::Conflict {
            source_name,
            expected: e,
            found: fd,
        }) => assert_eq!((source_name.as_str(), e, fd), ("s", expected, found)),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

fn a_staged_poll_queues_its_events_at_its_last_commit_in_detection_order(f: &mut Fixture) {
    let store = f.store();
    let old = created("s", 1, "old", &["t"]);
    store
        .commit_poll(PollCommit {
            upserts: vec![item("old")],
            item_count: 1,
            collection: Some(Collection::Array),
            ..events_commit("s", 0, vec![old.clone()])
        })
        .unwrap();
    // Seven events in three commits: two staged chunks, then the snapshot's.
    let items = ["a", "b", "c", "d", "e", "f", "g"];
    let (commits, events) = poll_commits("s", 1, 1, &items, &["t", "u"], 3);
    assert_eq!(commits.len(), 3);
    let mut commits = commits.into_iter();
    // Of a source that has committed. At a source's first poll, a staged chunk makes
    // PgStore list the source in `sources()` with the zero state (the row its commit
    // creates to lock), where sled lists nothing; `a_forget_during_a_first_staged_poll_
    // loses_no_event` says why that row matters.
    let before = dump(store, &["s", "r"]);
    for _ in 0..2 {
        let staged = commits.next().unwrap();
        assert_eq!(store.commit_poll(staged).unwrap(), 1);
        assert_eq!(dump(store, &["s", "r"]), before, "a staged chunk shows");
    }
    // Another source commits meanwhile, and a target worker loads what it queued.
    let r = queue_events(store, "r", 0, &["x"], &["t"], NOW_MS);
    let loaded = all_pending(store, "t");
    assert_eq!(ids(&loaded), [old.0.id.as_str(), r[0].id.as_str()]);
    let loaded_upto = loaded.last().unwrap().seq;

    assert_eq!(store.commit_poll(commits.next().unwrap()).unwrap(), 2);
    // Queued now, after everything committed before, in detection order chunk by chunk.
    let t = all_pending(store, "t");
    assert_eq!(ids(&t[..2]), ids(&loaded));
    assert_eq!(ids(&t[2..]), event_ids(&events));
    assert_eq!(ids(&all_pending(store, "u")), event_ids(&events));
    // The worker's next load finds them all.
    assert_eq!(
        ids(&store.pending("t", Some(loaded_upto), 100).unwrap()),
        event_ids(&events)
    );
    for (d, e) in t[2..].iter().zip(&events) {
        assert_eq!(
            (d.source.as_str(), d.item_id.as_str()),
            ("s", e.item_id.as_str())
        );
        assert_eq!(d.body, e.body);
        assert_eq!(
            (d.attempts, d.created_ms, d.next_at_ms),
            (0, NOW_MS, NOW_MS)
        );
    }
    assert_eq!(state(store, "s"), committed(2, 8, Some(Collection::Array)));
    let mut held: Vec<&str> = items.to_vec();
    held.push("old");
    let held: HashMap<String, Seen> = held.iter().map(|id| item(id)).collect();
    assert_eq!(store.snapshot("s").unwrap(), held);

    // Nothing queued twice, nothing lost, after a restart.
    let outbox = store.outbox(None, usize::MAX).unwrap();
    f.reopen();
    assert_eq!(f.store().outbox(None, usize::MAX).unwrap(), outbox);
}

fn an_abandoned_staged_poll_is_dropped_by_the_next_poll(f: &mut Fixture) {
    let store = f.store();
    store.commit_poll(items_commit("s", 0, &["old"])).unwrap();
    // Poll A stages two of its three commits, and its process dies.
    let (a, _) = poll_commits("s", 1, 1, &["a1", "a2", "a3", "a4", "a5"], &["t"], 2);
    for staged in a.into_iter().take(2) {
        assert_eq!(store.commit_poll(staged).unwrap(), 1);
    }
    f.reopen();
    let store = f.store();
    assert!(all_pending(store, "t").is_empty());
    assert_eq!(state(store, "s"), committed(1, 1, None));

    // Poll B, from the same state, in one commit: only its own event is queued.
    let (b, b_events) = poll_commits("s", 1, 1, &["b"], &["t"], 10);
    assert_eq!(b.len(), 1);
    assert_eq!(commit_all(store, b).unwrap(), 2);
    assert_eq!(ids(&all_pending(store, "t")), event_ids(&b_events));

    // Poll X stages a chunk and fails; poll C, staged too, moves only its own chunks.
    let (x, _) = poll_commits("s", 2, 2, &["x1", "x2", "x3"], &["t"], 2);
    assert_eq!(store.commit_poll(x.into_iter().next().unwrap()).unwrap(), 2);
    let (c, c_events) = poll_commits("s", 2, 2, &["c1", "c2", "c3", "c4", "c5"], &["t"], 2);
    assert_eq!(c.len(), 3);
    assert_eq!(commit_all(store, c).unwrap(), 3);
    let mut want = event_ids(&b_events);
    want.extend(event_ids(&c_events));
    assert_eq!(ids(&all_pending(store, "t")), want);
    assert_eq!(state(store, "s"), committed(3, 7, Some(Collection::Array)));
    f.reopen();
    assert_eq!(ids(&all_pending(f.store(), "t")), want);
}

fn each_commit_of_a_staged_poll_checks_the_generation(f: &mut Fixture) {
    let store = f.store();
    store.commit_poll(items_commit("s", 0, &["old"])).unwrap();
    let p_items = ["p1", "p2", "p3", "p4", "p5"];
    // A first chunk of a stale or an ahead generation: refused, nothing staged.
    let before = dump(store, &["s"]);
    for expected in [0, 5] {
        let (p, _) = poll_commits("s", expected, 1, &p_items, &["t"], 2);
        assert_conflict(
            store.commit_poll(p.into_iter().next().unwrap()),
            expected,
            1,
        );
        assert_eq!(dump(store, &["s"]), before);
    }

    // Poll P stages its first chunk; the source changes (poll Q commits) meanwhile. P's
    // next chunk and its last commit are refused and change nothing.
    let (p, _) = poll_commits("s", 1, 1, &p_items, &["t"], 2);
    let mut p = p.into_iter();
    assert_eq!(store.commit_poll(p.next().unwrap()).unwrap(), 1);
    let (q, q_events) = poll_commits("s", 1, 1, &["q"], &["t"], 10);
    assert_eq!(commit_all(store, q).unwrap(), 2);
    let before = dump(store, &["s"]);
    for refused in p {
        assert_conflict(store.commit_poll(refused), 1, 2);
        assert_eq!(dump(store, &["s"]), before);
    }
    assert_eq!(ids(&all_pending(store, "t")), event_ids(&q_events));

    // A forget between the chunks of poll R: its last commit is refused, and none of
    // its events is ever queued.
    let (r, _) = poll_commits("s", 2, 2, &["r1", "r2", "r3", "r4", "r5"], &["t"], 2);
    let mut r = r.into_iter();
    for _ in 0..2 {
        assert_eq!(store.commit_poll(r.next().unwrap()).unwrap(), 2);
    }
    assert!(store.forget_source("s").unwrap());
    assert_conflict(store.commit_poll(r.next().unwrap()), 2, 3);
    // The next poll, staged as well, queues its own events only.
    let (n, n_events) = poll_commits("s", 3, 0, &["n1", "n2", "n3"], &["t"], 2);
    assert_eq!(commit_all(store, n).unwrap(), 4);
    let mut want = event_ids(&q_events);
    want.extend(event_ids(&n_events));
    assert_eq!(ids(&all_pending(store, "t")), want);
    assert_eq!(state(store, "s"), committed(4, 3, Some(Collection::Array)));
}

/// The first poll of a source that reports its first items as created (`baseline =
/// false`) stages a chunk, and the source is forgotten (through the admin API) before the
/// poll's last commit. Either that commit is refused, and the next poll detects every
/// item again, or it queues every event the poll detected: never a snapshot holding
/// items whose events are lost (DESIGN invariant 1).
///
/// Both refuse the commit. PgStore: the staged chunk's commit created the source's row
/// (to lock it), so the forget finds state and moves the generation on. SledStore: the
/// forget finds staged chunks and moves the generation on for them (without that, it
/// dropped the chunk and kept the generation, and the poll's last commit wrote every
/// item with only its own chunk's events).
fn a_forget_during_a_first_staged_poll_loses_no_event(f: &mut Fixture) {
    let store = f.store();
    let (p, p_events) = poll_commits("s", 0, 0, &["a", "b", "c", "d", "e"], &["t"], 3);
    let mut p = p.into_iter();
    assert_eq!(store.commit_poll(p.next().unwrap()).unwrap(), 0);
    store.forget_source("s").unwrap();
    match store.commit_poll(p.next().unwrap()) {
        Err(StoreError::Conflict { .. }) => {
            assert!(all_pending(store, "t").is_empty());
            assert!(store.snapshot("s").unwrap().is_empty());
        }
        Ok(_) => assert_eq!(
            ids(&all_pending(store, "t")),
            event_ids(&p_events),
            "the snapshot holds items whose created events were dropped"
        ),
        Err(e) => panic!("{}", crate::error::chain(&e)),
    }
}

/// A target's worker loads the deliveries above the last sequence it has. With several
/// sources committing at once, single commits and staged polls, a delivery must never
/// be queued below a sequence a reader has already passed, or it would wait for the
/// next restart: sequence order is commit order.
fn concurrent_commits_never_land_behind_a_reader(f: &mut Fixture) {
    const SOURCES: u64 = 4;
    const POLLS: u64 = 60;
    let store = f.store();
    let done = AtomicBool::new(false);
    let (seen, committed) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut seen: Vec<Delivery> = Vec::new();
            let mut after = None;
            loop {
                let finished = done.load(Ordering::SeqCst);
                for d in store.pending("t", after, usize::MAX).unwrap() {
                    after = Some(d.seq);
                    seen.push(d);
                }
                if finished {
                    return seen;
                }
            }
        });
        let writers: Vec<_> = (0..SOURCES)
            .map(|w| {
                s.spawn(move || {
                    let source = format!("s{w}");
                    let mut events = Vec::new();
                    for g in 0..POLLS {
                        let items = [format!("{g}a"), format!("{g}b")];
                        let items = [items[0].as_str(), items[1].as_str()];
                        // Every third poll in two commits, its events moved at the last.
                        let per_commit = if g % 3 == 2 { 1 } else { 2 };
                        let (commits, e) =
                            poll_commits(&source, g, 2 * g, &items, &["t"], per_commit);
                        assert_eq!(commit_all(store, commits).unwrap(), g + 1);
                        events.extend(e);
                    }
                    (source, events)
                })
            })
            .collect();
        let committed: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::SeqCst);
        (reader.join().unwrap(), committed)
    });
    let all = all_pending(store, "t");
    assert_eq!(all.len(), (SOURCES * POLLS * 2) as usize);
    let loaded: HashSet<u64> = seen.iter().map(|d| d.seq).collect();
    let missed: Vec<u64> = (all.iter().map(|d| d.seq))
        .filter(|seq| !loaded.contains(seq))
        .collect();
    assert!(
        missed.is_empty(),
        "the reader missed {} of {} deliveries, committed behind sequences it had read (first: {:?})",
        missed.len(),
        all.len(),
        &missed[..missed.len().min(5)]
    );
    assert_eq!(ids(&seen), ids(&all));
    // Each source's events in the order it committed them.
    for (source, events) in &committed {
        let of_source: Vec<Delivery> = seen
            .iter()
            .filter(|d| &d.source == source)
            .cloned()
            .collect();
        assert_eq!(ids(&of_source), event_ids(events), "{source}");
    }
}

on_both_stores!(
    a_staged_poll_queues_its_events_at_its_last_commit_in_detection_order,
    an_abandoned_staged_poll_is_dropped_by_the_next_poll,
    each_commit_of_a_staged_poll_checks_the_generation,
    a_forget_during_a_first_staged_poll_loses_no_event,
    concurrent_commits_never_land_behind_a_reader,
);
