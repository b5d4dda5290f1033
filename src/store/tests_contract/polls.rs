//! Contract: what a poll's commit writes and what it must not (DESIGN invariant 1),
//! forgetting a source, listing the stored sources, and names with bytes config never
//! allows.

use std::collections::HashMap;

use serde_json::json;

use super::{committed, dump, item, items_commit, promised, state, Fixture};
use crate::diff::{ChangeKind, Seen};
use crate::extract::Collection;
use crate::store::tests::{
    all_pending, created, event, events_commit, ids, queue_events, seen, NOW_MS,
};
use crate::store::{PollCommit, SourceState, StoreError};

fn commit_poll_writes_items_state_and_deliveries(f: &mut Fixture) {
    let a = json!({"id": "a", "name": "Ä"});
    let b = json!({"id": "b", "n": 1});
    let e1 = created("s", 1, "a", &["hooks", "audit"]);
    let e2 = created("s", 1, "b", &["hooks", "audit"]);
    let e3 = created("s", 1, "c", &["audit"]);
    let generation = f
        .store()
        .commit_poll(PollCommit {
            upserts: vec![("a".into(), seen(&a)), ("b".into(), seen(&b))],
            item_count: 2,
            collection: Some(Collection::Array),
            ..events_commit("s", 0, vec![e1.clone(), e2.clone(), e3.clone()])
        })
        .unwrap();
    assert_eq!(generation, 1);

    // Everything is there for the next handle.
    f.reopen();
    let store = f.store();
    assert_eq!(state(store, "s"), committed(1, 2, Some(Collection::Array)));
    let expected: HashMap<String, Seen> = [("a".into(), seen(&a)), ("b".into(), seen(&b))].into();
    assert_eq!(store.snapshot("s").unwrap(), expected);
    let hooks = all_pending(store, "hooks");
    let audit = all_pending(store, "audit");
    assert_eq!(ids(&hooks), [e1.0.id.as_str(), e2.0.id.as_str()]);
    assert_eq!(
        ids(&audit),
        [e1.0.id.as_str(), e2.0.id.as_str(), e3.0.id.as_str()]
    );
    for d in hooks.iter().chain(&audit) {
        let (e, _) = [&e1, &e2, &e3]
            .into_iter()
            .find(|(e, _)| e.id == d.event_id)
            .unwrap();
        assert_eq!(d.event_type, "s.created");
        assert_eq!(d.source, "s");
        assert_eq!(d.item_id, e.item_id);
        assert_eq!(d.body, e.body, "the stored bytes are the event's bytes");
        assert_eq!((d.attempts, d.last_error.as_deref()), (0, None));
        assert_eq!((d.created_ms, d.next_at_ms), (NOW_MS, NOW_MS));
        assert_eq!(store.delivery(&d.target, d.seq).unwrap().as_ref(), Some(d));
    }
    assert!(hooks.iter().all(|d| d.target == "hooks"));
    assert!(audit.iter().all(|d| d.target == "audit"));
    assert_eq!(
        store.pending_counts().unwrap(),
        HashMap::from([("hooks".to_string(), 2), ("audit".to_string(), 3)])
    );
    assert!(store.dead(None, 10).unwrap().is_empty());

    // The next commit builds on the state read back; one that saw no collection keeps
    // the stored one.
    let b2 = json!({"id": "b", "n": 2});
    let generation = store
        .commit_poll(PollCommit {
            upserts: vec![("b".into(), seen(&b2))],
            removals: vec!["a".into()],
            item_count: 1,
            ..events_commit("s", 1, Vec::new())
        })
        .unwrap();
    assert_eq!(generation, 2);
    f.reopen();
    let store = f.store();
    assert_eq!(state(store, "s"), committed(2, 1, Some(Collection::Array)));
    assert_eq!(
        store.snapshot("s").unwrap(),
        HashMap::from([("b".to_string(), seen(&b2))])
    );
    store.flush().unwrap();
    assert!(!store.describe().is_empty());
}

fn snapshot_is_per_source_and_removals_delete(f: &mut Fixture) {
    let store = f.store();
    let object = |id: &str, v: u32| json!({"id": id, "v": v, "text": "naïve ✓"});
    // Ids that are prefixes of each other, in sources whose names are too.
    let mut s_items = vec![("1", 1), ("10", 1), ("a/b", 1), ("ü", 1)];
    if f.takes_nul() {
        s_items.push(("a\0b", 1));
    }
    let s2_items = [("1", 2), ("2", 2)];
    for (source, items) in [("s", &s_items[..]), ("s2", &s2_items[..])] {
        store
            .commit_poll(PollCommit {
                upserts: items
                    .iter()
                    .map(|(id, v)| (id.to_string(), seen(&object(id, *v))))
                    .collect(),
                item_count: items.len() as u64,
                ..events_commit(source, 0, Vec::new())
            })
            .unwrap();
    }
    let map = |items: &[(&str, u32)]| -> HashMap<String, Seen> {
        items
            .iter()
            .map(|(id, v)| (id.to_string(), seen(&object(id, *v))))
            .collect()
    };
    assert_eq!(store.snapshot("s").unwrap(), map(&s_items));
    assert_eq!(store.snapshot("s2").unwrap(), map(&s2_items));
    assert!(store.snapshot("").unwrap().is_empty());
    assert!(store.snapshot("s1").unwrap().is_empty());

    // Remove "1" from s: not "10", and not s2's "1". Update "10".
    store
        .commit_poll(PollCommit {
            upserts: vec![("10".into(), seen(&object("10", 3)))],
            removals: vec!["1".into()],
            item_count: s_items.len() as u64 - 1,
            ..events_commit("s", 1, Vec::new())
        })
        .unwrap();
    let mut left = s_items.clone();
    left.retain(|(id, _)| *id != "1");
    left[0].1 = 3;
    assert_eq!(store.snapshot("s").unwrap(), map(&left));
    assert_eq!(store.snapshot("s2").unwrap(), map(&s2_items));
    assert_eq!(state(store, "s"), committed(2, left.len() as u64, None));
    assert_eq!(state(store, "s2"), committed(1, 2, None));

    // Removing every item leaves an empty snapshot.
    store
        .commit_poll(PollCommit {
            removals: left.iter().map(|(id, _)| id.to_string()).collect(),
            ..events_commit("s", 2, Vec::new())
        })
        .unwrap();
    f.reopen();
    let store = f.store();
    assert!(store.snapshot("s").unwrap().is_empty());
    assert_eq!(state(store, "s"), committed(3, 0, None));
    assert_eq!(store.snapshot("s2").unwrap(), map(&s2_items));
}

fn unchanged_poll_writes_nothing_and_keeps_the_generation(f: &mut Fixture) {
    let store = f.store();
    let generation = store
        .commit_poll(PollCommit {
            collection: Some(Collection::Object),
            ..items_commit("s", 0, &["x"])
        })
        .unwrap();
    assert_eq!(generation, 1);
    let before = dump(store, &["s"]);
    let unchanged = || PollCommit {
        item_count: 1,
        collection: Some(Collection::Object),
        ..events_commit("s", 1, Vec::new())
    };
    for _ in 0..3 {
        let generation = store.commit_poll(unchanged()).unwrap();
        assert_eq!(generation, 1, "an unchanged poll moved the generation");
    }
    assert_eq!(dump(store, &["s"]), before);
    f.reopen();
    assert_eq!(f.store().commit_poll(unchanged()).unwrap(), 1);
    assert_eq!(dump(f.store(), &["s"]), before);
}

fn first_commit_without_changes_records_the_empty_baseline(f: &mut Fixture) {
    let store = f.store();
    assert_eq!(store.source_state("s").unwrap(), SourceState::default());
    assert!(store.sources().unwrap().is_empty());
    let generation = store
        .commit_poll(events_commit("s", 0, Vec::new()))
        .unwrap();
    assert_eq!(generation, 0);

    // Recorded for good: the next poll is not a first poll again.
    f.reopen();
    let store = f.store();
    assert_eq!(state(store, "s"), committed(0, 0, None));
    assert!(store.snapshot("s").unwrap().is_empty());
    let listed: Vec<String> = store
        .sources()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(listed, ["s"]);
    // From now on an empty poll is an unchanged one.
    let before = dump(store, &["s"]);
    let generation = store
        .commit_poll(events_commit("s", 0, Vec::new()))
        .unwrap();
    assert_eq!(generation, 0);
    assert_eq!(dump(store, &["s"]), before);
}

/// Only commits that write are compared: sled does not check the generation of a commit
/// that changes nothing on a source that has committed (it returns the stored
/// generation at once, writing nothing), PgStore refuses it as a conflict.
fn a_stale_or_ahead_generation_is_a_conflict_that_changes_nothing(f: &mut Fixture) {
    let x1 = json!({"id": "x", "v": 1});
    f.store()
        .commit_poll(PollCommit {
            upserts: vec![("x".into(), seen(&x1))],
            item_count: 1,
            ..events_commit("s", 0, vec![created("s", 1, "x", &["t"])])
        })
        .unwrap();
    f.reopen();
    let store = f.store();
    let before = dump(store, &["s", "other"]);
    assert_eq!(before.states[0].generation, 1);

    // Stale (0 < 1), ahead (5 > 1), and a never-polled source expected at 1.
    for (source, expected, found) in [("s", 0, 1), ("s", 5, 1), ("other", 1, 0)] {
        let x2 = json!({"id": "x", "v": 2});
        let y = json!({"id": "y"});
        let commit = PollCommit {
            upserts: vec![("x".into(), seen(&x2)), ("y".into(), seen(&y))],
            removals: vec!["x".into()],
            item_count: 7,
            collection: Some(Collection::Array),
            ..events_commit(
                source,
                expected,
                vec![
                    (
                        event(source, expected + 1, ChangeKind::Updated, "x", x2),
                        vec!["t".into(), "u".into()].into(),
                    ),
                    created(source, expected + 1, "y", &["u"]),
                ],
            )
        };
        match store.commit_poll(commit) {
            Err(StoreError::Conflict {
                source_name,
                expected: e,
                found: fd,
            }) => assert_eq!((source_name.as_str(), e, fd), (source, expected, found)),
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(dump(store, &["s", "other"]), before);
    }
    f.reopen();
    let store = f.store();
    assert_eq!(dump(store, &["s", "other"]), before);

    // The right generation still commits afterwards.
    let generation = store
        .commit_poll(events_commit("s", 1, vec![created("s", 2, "y", &["u"])]))
        .unwrap();
    assert_eq!(generation, 2);
    assert_eq!(all_pending(store, "u").len(), 1);
}

fn forget_source_drops_the_snapshot_and_moves_the_generation_on(f: &mut Fixture) {
    let numbered = |i: usize| (format!("id-{i}"), seen(&json!({"id": i})));
    let commit = |source: &str, expected: u64, range: std::ops::Range<usize>| PollCommit {
        upserts: range.clone().map(numbered).collect(),
        item_count: range.len() as u64,
        ..events_commit(source, expected, Vec::new())
    };
    let store = f.store();
    // 1,000 items, then a change with deliveries: generation 2.
    store
        .commit_poll(PollCommit {
            collection: Some(Collection::Object),
            ..commit("s", 0, 0..1_000)
        })
        .unwrap();
    queue_events(store, "s", 1, &["new"], &["t", "t2"], NOW_MS);
    store
        .bury("t2", all_pending(store, "t2")[0].seq, 2, "HTTP 404")
        .unwrap();
    // Sources whose names start with "s" keep everything.
    store.commit_poll(commit("s2", 0, 0..3)).unwrap();
    store.commit_poll(commit("s\u{1}", 0, 5..6)).unwrap();
    let others = dump(store, &["s2", "s\u{1}"]);
    // A poll reads the state now and commits after the forget.
    let read = store.source_state("s").unwrap().generation;
    assert_eq!(read, 2);
    assert!(store.forget_source("s").unwrap());
    let (pending, dead) = (
        store.outbox(None, usize::MAX).unwrap(),
        store.dead(None, usize::MAX).unwrap(),
    );

    f.reopen();
    let store = f.store();
    assert!(store.snapshot("s").unwrap().is_empty());
    assert_eq!(
        state(store, "s"),
        SourceState {
            generation: 3,
            ..SourceState::default()
        }
    );
    let mut others_now = dump(store, &["s2", "s\u{1}"]);
    others_now.sources.retain(|(n, _)| n != "s");
    let mut others_then = others;
    others_then.sources.retain(|(n, _)| n != "s");
    assert_eq!(others_now, others_then);
    // The changes already detected are still to be delivered, or dead.
    assert_eq!(pending.len(), 1);
    assert_eq!(store.outbox(None, usize::MAX).unwrap(), pending);
    assert_eq!(dead.len(), 1);
    assert_eq!(store.dead(None, usize::MAX).unwrap(), dead);

    // The poll that read generation 2 (the old snapshot) is refused: it would otherwise
    // write its changes alone as the new snapshot.
    match store.commit_poll(commit("s", read, 0..1)) {
        Err(StoreError::Conflict {
            expected, found, ..
        }) => assert_eq!((expected, found), (2, 3)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The next poll is a first commit after the forget's generation: a new baseline
    // without any old item.
    let generation = store.commit_poll(commit("s", 3, 990..1_010)).unwrap();
    assert_eq!(generation, 4, "no event may reuse an earlier generation");
    assert_eq!(state(store, "s"), committed(4, 20, None));
    let expected: HashMap<String, Seen> = (990..1_010).map(numbered).collect();
    assert_eq!(store.snapshot("s").unwrap(), expected);
    // Forgetting again works the same; an empty baseline keeps the generation.
    assert!(store.forget_source("s").unwrap());
    assert!(store.snapshot("s").unwrap().is_empty());
    assert_eq!(
        store
            .commit_poll(events_commit("s", 5, Vec::new()))
            .unwrap(),
        5
    );
    assert_eq!(state(store, "s"), committed(5, 0, None));

    // A source never stored: false, and nothing written, not even its name.
    let before = dump(store, &["unknown", "s2\u{1}"]);
    assert!(!store.forget_source("unknown").unwrap());
    assert!(!store.forget_source("s2\u{1}").unwrap());
    assert_eq!(dump(store, &["unknown", "s2\u{1}"]), before);
    assert_eq!(state(store, "unknown"), SourceState::default());
}

fn sources_lists_every_stored_source_by_name(f: &mut Fixture) {
    let store = f.store();
    assert!(store.sources().unwrap().is_empty());
    let names = ["b", "a2", "a", "é", "B", "a b", "z", "a-"];
    for (n, source) in names.iter().enumerate() {
        let ids: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.commit_poll(items_commit(source, 0, &ids)).unwrap();
    }
    store.forget_source("b").unwrap();
    let listed = store.sources().unwrap();
    let listed_names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    // Bytewise, as `str`'s order is: "B" < "a" < "a b" < "a-" < "a2" < ... < "z" < "é".
    let mut sorted = names.to_vec();
    sorted.sort();
    assert_eq!(listed_names, sorted);
    assert_eq!(listed_names, ["B", "a", "a b", "a-", "a2", "b", "z", "é"]);
    for (name, s) in &listed {
        assert_eq!(*s, store.source_state(name).unwrap());
    }
    let of = |name: &str| listed.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(promised(of("é")), committed(1, 3, None));
    assert_eq!(
        promised(of("b")),
        SourceState {
            generation: 1,
            ..SourceState::default()
        },
        "a forgotten source is still listed"
    );
}

/// Names with bytes config never allows, which reach the store anyway from other paths
/// (an old database, a bug): each keeps its records apart, whatever its bytes. PostgreSQL
/// text cannot hold NUL, so those names are tried on sled only.
fn names_with_odd_bytes_keep_their_records_apart(f: &mut Fixture) {
    let mut names = vec![
        "s",
        "s s",
        "s/",
        "s/x",
        "a/b",
        "a",
        "ü",
        "u",
        "S",
        "s\u{1}",
        "s\u{1}\u{2}",
    ];
    if f.takes_nul() {
        names.extend(["s\0", "s\0\0", "s\0x"]);
    }
    let store = f.store();
    let item_ids = |n: usize| [format!("{n}"), format!("{n}/ü"), format!("{n} x")];
    let items =
        |n: usize| -> HashMap<String, Seen> { item_ids(n).iter().map(|id| item(id)).collect() };
    for (n, name) in names.iter().enumerate() {
        let ids = item_ids(n);
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        store.commit_poll(items_commit(name, 0, &ids)).unwrap();
        queue_events(store, name, 1, &[&format!("e{n}")], &[name], NOW_MS);
    }
    let before = dump(store, &names);
    for (n, name) in names.iter().enumerate() {
        assert_eq!(
            store.snapshot(name).unwrap(),
            items(n),
            "snapshot of {name:?}"
        );
        assert_eq!(state(store, name).generation, 2, "state of {name:?}");
        let pending = all_pending(store, name);
        assert_eq!(pending.len(), 1, "outbox of {name:?}");
        assert_eq!(
            (pending[0].target.as_str(), pending[0].source.as_str()),
            (*name, *name)
        );
        assert_eq!(store.outbox(Some(name), 10).unwrap(), pending);
        let found = store.find_event(&pending[0].event_id).unwrap();
        assert_eq!(found.len(), 1, "copies of {name:?}'s event");
    }
    // Listing and statistics give the names back as they were, in bytewise order.
    let mut sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    sorted.sort();
    let stats = store.target_stats().unwrap();
    assert_eq!(stats.keys().cloned().collect::<Vec<_>>(), sorted);
    assert!(names.iter().all(|n| stats[*n].pending == 1));
    let listed: Vec<String> = (store.sources().unwrap().into_iter())
        .map(|(n, _)| n)
        .collect();
    assert_eq!(listed, sorted);
    let targets: Vec<String> = (store.outbox(None, usize::MAX).unwrap().into_iter())
        .map(|d| d.target)
        .collect();
    assert_eq!(targets, sorted, "the outbox in target order");

    // Forgetting one, burying and replaying another's delivery touch no other.
    let (forgotten, buried) = (names.iter().position(|n| *n == "s").unwrap(), "s/");
    assert!(store.forget_source("s").unwrap());
    let seq = all_pending(store, buried)[0].seq;
    store.bury(buried, seq, 1, "HTTP 500").unwrap();
    assert_eq!(store.dead(None, 10).unwrap().len(), 1);
    assert_eq!(
        store.replay_dead(Some(buried), None, NOW_MS).unwrap().len(),
        1
    );
    let after = dump(store, &names);
    for (i, name) in names.iter().enumerate().filter(|(i, _)| *i != forgotten) {
        assert_eq!(
            after.snapshots[i], before.snapshots[i],
            "snapshot of {name:?}"
        );
        assert_eq!(after.states[i], before.states[i], "state of {name:?}");
    }
    assert!(after.snapshots[forgotten].is_empty());
    let untouched = |d: &crate::store::Delivery| d.target != buried;
    assert_eq!(
        after
            .outbox
            .iter()
            .filter(|d| untouched(d))
            .collect::<Vec<_>>(),
        before
            .outbox
            .iter()
            .filter(|d| untouched(d))
            .collect::<Vec<_>>()
    );
    assert!(store.dead(None, 10).unwrap().is_empty());
}

on_both_stores!(
    commit_poll_writes_items_state_and_deliveries,
    snapshot_is_per_source_and_removals_delete,
    unchanged_poll_writes_nothing_and_keeps_the_generation,
    first_commit_without_changes_records_the_empty_baseline,
    a_stale_or_ahead_generation_is_a_conflict_that_changes_nothing,
    forget_source_drops_the_snapshot_and_moves_the_generation_on,
    sources_lists_every_stored_source_by_name,
    names_with_odd_bytes_keep_their_records_apart,
);
