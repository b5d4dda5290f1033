//! Contract: the outbox and the dead letters. A target's pending deliveries in detection
//! order; acknowledging, rescheduling and burying one, and doing so to one that is gone;
//! the operator's listings, lookup of an event, replay of dead letters, queue statistics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{dump, event_ids, Fixture};
use crate::event::Event;
use crate::store::sled_store::REPLAY_BATCH;
use crate::store::tests::{
    all_pending, copy_of, created, events_commit, fresh, ids, queue_events, NOW_MS,
};
use crate::store::{Delivery, DeliveryStatus, Store, TargetStats};

fn pending_is_per_target_in_detection_order(f: &mut Fixture) {
    let e1 = created("s", 1, "1", &["t", "t2"]);
    let e2 = created("s", 1, "2", &["t"]);
    let e3 = created("s", 2, "3", &["t2"]);
    let e4 = created("s", 2, "4", &["t2", "t"]);
    let e5 = created("r", 1, "5", &["t"]);
    let e6 = created("r", 2, "6", &["t", "t2"]);
    let store = f.store();
    store
        .commit_poll(events_commit("s", 0, vec![e1.clone(), e2.clone()]))
        .unwrap();
    store
        .commit_poll(events_commit("s", 1, vec![e3.clone(), e4.clone()]))
        .unwrap();
    store
        .commit_poll(events_commit("r", 0, vec![e5.clone()]))
        .unwrap();
    // Sequence numbers keep detection order across a restart: a counter that started
    // over would sort e6 first, or overwrite e1's delivery.
    f.reopen();
    let store = f.store();
    store
        .commit_poll(events_commit("r", 1, vec![e6.clone()]))
        .unwrap();

    let t = all_pending(store, "t");
    let t2 = all_pending(store, "t2");
    let id = |e: &(Event, Arc<[String]>)| e.0.id.clone();
    assert_eq!(ids(&t), [id(&e1), id(&e2), id(&e4), id(&e5), id(&e6)]);
    assert_eq!(ids(&t2), [id(&e1), id(&e3), id(&e4), id(&e6)]);
    assert!(t.iter().all(|d| d.target == "t"));
    assert!(t2.iter().all(|d| d.target == "t2"));
    assert!(t.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(t2.windows(2).all(|w| w[0].seq < w[1].seq));
    // Names sharing a prefix with the real ones see nothing.
    assert!(all_pending(store, "").is_empty());
    assert!(all_pending(store, "t1").is_empty());
    assert!(all_pending(store, "t22").is_empty());

    let seq = |ds: &[Delivery], e: &(Event, Arc<[String]>)| {
        ds.iter().find(|d| d.event_id == e.0.id).unwrap().seq
    };
    // `after` is exclusive, even for a sequence number this target does not have.
    let after = |a: u64, limit: usize| {
        ids(&store.pending("t", Some(a), limit).unwrap())
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(after(seq(&t, &e2), 100), [id(&e4), id(&e5), id(&e6)]);
    assert_eq!(after(seq(&t2, &e3), 100), [id(&e4), id(&e5), id(&e6)]);
    assert_eq!(after(seq(&t, &e1), 2), [id(&e2), id(&e4)]);
    assert!(after(seq(&t, &e6), 100).is_empty());
    // Nothing is above the highest sequence number.
    assert!(after(u64::MAX, 100).is_empty());
    assert_eq!(
        ids(&store.pending("t", None, 2).unwrap()),
        [id(&e1), id(&e2)]
    );
    assert!(store.pending("t", None, 0).unwrap().is_empty());

    // delivery() looks up one target's copy only.
    assert!(store.delivery("t", seq(&t2, &e3)).unwrap().is_none());
    assert_eq!(
        store
            .delivery("t2", seq(&t2, &e3))
            .unwrap()
            .unwrap()
            .event_id,
        id(&e3)
    );
    assert!(store.delivery("t3", seq(&t, &e1)).unwrap().is_none());
}

/// Commits `n` events of `s` to `t` and `t2` and returns t's deliveries.
fn deliveries(store: &dyn Store, n: usize) -> Vec<Delivery> {
    let events = (1..=n)
        .map(|i| created("s", 1, &i.to_string(), &["t", "t2"]))
        .collect();
    store.commit_poll(events_commit("s", 0, events)).unwrap();
    let t = all_pending(store, "t");
    assert_eq!(t.len(), n);
    t
}

fn ack_and_ack_many_remove_exactly_those(f: &mut Fixture) {
    let store = f.store();
    let t = deliveries(store, 5);
    let t2 = all_pending(store, "t2");

    store.ack("t", t[1].seq).unwrap();
    assert_eq!(
        all_pending(store, "t"),
        [t[0].clone(), t[2].clone(), t[3].clone(), t[4].clone()]
    );
    assert_eq!(
        all_pending(store, "t2"),
        t2,
        "the other target's copy stays"
    );
    assert!(store.delivery("t", t[1].seq).unwrap().is_none());

    // Several at once, among them one already acknowledged and one never queued.
    store
        .ack_many("t", &[t[3].seq, t[0].seq, t[1].seq, 999_999])
        .unwrap();
    assert_eq!(all_pending(store, "t"), [t[2].clone(), t[4].clone()]);
    store.ack_many("t", &[]).unwrap();
    // Acking again, for a target that has none, is harmless.
    store.ack("t", t[1].seq).unwrap();
    store.ack("nobody", t[2].seq).unwrap();
    store.ack_many("nobody", &[t[2].seq, t[4].seq]).unwrap();
    assert_eq!(all_pending(store, "t"), [t[2].clone(), t[4].clone()]);
    assert_eq!(all_pending(store, "t2"), t2);
    assert!(store.dead(None, 10).unwrap().is_empty());

    // Gone for good.
    f.reopen();
    let store = f.store();
    assert_eq!(all_pending(store, "t"), [t[2].clone(), t[4].clone()]);
    assert_eq!(all_pending(store, "t2"), t2);
}

fn reschedule_updates_the_attempt_and_keeps_the_body(f: &mut Fixture) {
    let store = f.store();
    let t = deliveries(store, 3);
    let t2 = all_pending(store, "t2");

    store
        .reschedule("t", t[0].seq, 1, NOW_MS + 5_000, "HTTP 500")
        .unwrap();
    store
        .reschedule("t", t[0].seq, 2, NOW_MS + 300_000, "timed out")
        .unwrap();
    let want = Delivery {
        attempts: 2,
        next_at_ms: NOW_MS + 300_000,
        last_error: Some("timed out".into()),
        ..t[0].clone()
    };
    assert_eq!(store.delivery("t", t[0].seq).unwrap(), Some(want.clone()));
    // Same position in the queue, same bytes; nothing else touched.
    assert_eq!(
        all_pending(store, "t"),
        [want.clone(), t[1].clone(), t[2].clone()]
    );
    assert_eq!(all_pending(store, "t2"), t2);
    f.reopen();
    assert_eq!(f.store().delivery("t", t[0].seq).unwrap(), Some(want));
}

fn bury_moves_a_delivery_to_the_dead_letters(f: &mut Fixture) {
    let store = f.store();
    let t = deliveries(store, 3);
    store
        .reschedule("t", t[0].seq, 7, NOW_MS + 1_000, "HTTP 503")
        .unwrap();
    store.bury("t", t[0].seq, 8, "HTTP 410 Gone").unwrap();
    // A prefix-named target's dead letter must not show under `t`.
    store.bury("t2", t[2].seq, 1, "HTTP 404").unwrap();

    f.reopen();
    let store = f.store();
    let dead_t = Delivery {
        attempts: 8,
        next_at_ms: NOW_MS + 1_000,
        last_error: Some("HTTP 410 Gone".into()),
        ..t[0].clone()
    };
    assert!(store.delivery("t", t[0].seq).unwrap().is_none());
    assert_eq!(all_pending(store, "t"), t[1..]);
    assert_eq!(ids(&all_pending(store, "t2")), ids(&t[..2]));
    // Same bytes, attempts and error as queued; next_at_ms as last rescheduled.
    assert_eq!(
        store.dead(Some("t"), 10).unwrap(),
        std::slice::from_ref(&dead_t)
    );
    let dead_t2 = store.dead(Some("t2"), 10).unwrap();
    assert_eq!(dead_t2.len(), 1);
    assert_eq!(
        (
            dead_t2[0].target.as_str(),
            dead_t2[0].seq,
            dead_t2[0].attempts,
            dead_t2[0].last_error.as_deref(),
            &dead_t2[0].body,
        ),
        ("t2", t[2].seq, 1, Some("HTTP 404"), &t[2].body)
    );
    // Oldest first: by target, then sequence.
    assert_eq!(
        store.dead(None, 10).unwrap(),
        [dead_t.clone(), dead_t2[0].clone()]
    );
    assert_eq!(store.dead(None, 1).unwrap(), [dead_t]);
    assert!(store.dead(Some("t1"), 10).unwrap().is_empty());
    assert!(store.dead(None, 0).unwrap().is_empty());
    assert_eq!(
        store.pending_counts().unwrap(),
        HashMap::from([("t".to_string(), 2), ("t2".to_string(), 2)]),
        "dead letters are not pending"
    );
}

fn operations_on_missing_deliveries_are_not_errors_and_create_nothing(f: &mut Fixture) {
    let store = f.store();
    let t = deliveries(store, 3);
    store.bury("t", t[0].seq, 3, "HTTP 410 Gone").unwrap();
    store.ack("t", t[1].seq).unwrap();
    let before = dump(store, &["s"]);

    // Buried, acknowledged, never queued.
    for seq in [t[0].seq, t[1].seq, 999_999] {
        store.reschedule("t", seq, 9, NOW_MS, "late").unwrap();
        store.bury("t", seq, 9, "late").unwrap();
        store.ack("t", seq).unwrap();
        assert!(store.delivery("t", seq).unwrap().is_none());
    }
    store
        .reschedule("ghost", t[2].seq, 9, NOW_MS, "late")
        .unwrap();
    store.bury("ghost", t[2].seq, 9, "late").unwrap();
    // Nothing resurrected, created, or overwritten in the dead letters.
    assert!(all_pending(store, "ghost").is_empty());
    assert!(store.dead(Some("ghost"), 10).unwrap().is_empty());
    assert_eq!(dump(store, &["s"]), before);
}

fn outbox_lists_pending_deliveries_by_target_then_detection_order(f: &mut Fixture) {
    let store = f.store();
    assert!(store.outbox(None, 10).unwrap().is_empty());
    let t = deliveries(store, 3);
    let t2 = all_pending(store, "t2");
    // Detected later, listed first: by target before detection order.
    queue_events(store, "r", 0, &["9"], &["a"], NOW_MS);
    let a = all_pending(store, "a");
    assert!(a[0].seq > t2[2].seq);
    // "t" sorts before "t2", each in detection order.
    let everything: Vec<Delivery> = a.iter().chain(&t).chain(&t2).cloned().collect();
    assert_eq!(store.outbox(None, usize::MAX).unwrap(), everything);
    assert_eq!(store.outbox(Some("t"), usize::MAX).unwrap(), t);
    assert_eq!(store.outbox(Some("t2"), usize::MAX).unwrap(), t2);
    assert_eq!(store.outbox(None, 4).unwrap(), everything[..4]);
    assert_eq!(store.outbox(Some("t2"), 2).unwrap(), t2[..2]);
    assert!(store.outbox(None, 0).unwrap().is_empty());
    assert!(store.outbox(Some("t1"), 10).unwrap().is_empty());
    assert!(store.outbox(Some(""), 10).unwrap().is_empty());

    // Acked and buried deliveries are no longer pending; dead() is the other list.
    store.ack("t", t[0].seq).unwrap();
    store.bury("t", t[1].seq, 4, "HTTP 410").unwrap();
    assert_eq!(store.outbox(Some("t"), 10).unwrap(), t[2..]);
    assert_eq!(store.outbox(None, 10).unwrap().len(), 5);
    assert_eq!(ids(&store.dead(None, 10).unwrap()), ids(&t[1..2]));
}

fn find_event_finds_pending_and_dead_copies_across_targets(f: &mut Fixture) {
    let store = f.store();
    let events = queue_events(store, "s", 0, &["1", "2"], &["a", "b", "c"], NOW_MS);
    let pending = store.outbox(None, usize::MAX).unwrap();
    let (e1, e2) = (&events[0], &events[1]);
    store
        .bury("a", copy_of(&pending, "a", e1).seq, 5, "HTTP 404")
        .unwrap();
    store.ack("c", copy_of(&pending, "c", e1).seq).unwrap();
    let dead_a = store.dead(Some("a"), 10).unwrap();

    // The pending copies first, then the dead ones, though "a" sorts first.
    let found = store.find_event(&e1.id).unwrap();
    assert_eq!(
        found,
        [
            (DeliveryStatus::Pending, copy_of(&pending, "b", e1).clone()),
            (DeliveryStatus::Dead, dead_a[0].clone()),
        ]
    );
    assert_eq!(found[1].1.last_error.as_deref(), Some("HTTP 404"));
    assert_eq!(found[0].1.body, e1.body);
    // The other event's three copies, all pending, by target.
    let found = store.find_event(&e2.id).unwrap();
    assert_eq!(found.len(), 3);
    assert!(found
        .iter()
        .all(|(st, d)| *st == DeliveryStatus::Pending && d.event_id == e2.id));
    assert_eq!(
        found
            .iter()
            .map(|(_, d)| d.target.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    // And nothing for an unknown id.
    assert!(store.find_event("evt_unknown").unwrap().is_empty());
    assert!(store.find_event("").unwrap().is_empty());
}

fn replay_dead_queues_fresh_copies_after_everything_pending(f: &mut Fixture) {
    let store = f.store();
    let first = queue_events(store, "s", 0, &["1", "2", "3"], &["t", "t2"], NOW_MS);
    let pending = store.outbox(None, usize::MAX).unwrap();
    for e in &first[..2] {
        let seq = copy_of(&pending, "t", e).seq;
        store
            .reschedule("t", seq, 6, NOW_MS + 9_000, "HTTP 502")
            .unwrap();
        store.bury("t", seq, 7, "HTTP 503").unwrap();
    }
    store
        .bury("t2", copy_of(&pending, "t2", &first[0]).seq, 1, "HTTP 404")
        .unwrap();
    // Detected after the dead ones: still queued before their replay.
    let second = queue_events(store, "s", 1, &["4"], &["t"], NOW_MS + 1_000);
    let (dead_t, dead_t2) = (
        store.dead(Some("t"), 10).unwrap(),
        store.dead(Some("t2"), 10).unwrap(),
    );
    assert_eq!(ids(&dead_t), event_ids(&first[..2]));

    f.reopen();
    let store = f.store();
    let before = all_pending(store, "t");
    let loaded_upto = before.last().unwrap().seq;
    let now_ms = NOW_MS + 60_000;
    let replayed = store.replay_dead(Some("t"), None, now_ms).unwrap();
    assert_eq!(replayed.len(), 2);
    let want: Vec<Delivery> = dead_t
        .iter()
        .zip(&replayed)
        .map(|(d, r)| fresh(d, r.seq, now_ms))
        .collect();
    assert_eq!(replayed, want, "same event, fields reset, same body bytes");
    assert_eq!(replayed[0].body, first[0].body);
    assert_eq!(replayed[0].created_ms, NOW_MS);
    assert!(loaded_upto < replayed[0].seq && replayed[0].seq < replayed[1].seq);
    // What a running worker's next load finds: exactly the replayed deliveries.
    assert_eq!(
        store.pending("t", Some(loaded_upto), 100).unwrap(),
        replayed
    );
    assert_eq!(
        ids(&all_pending(store, "t")),
        [
            first[2].id.as_str(),
            second[0].id.as_str(),
            first[0].id.as_str(),
            first[1].id.as_str()
        ]
    );
    assert!(store.dead(Some("t"), 10).unwrap().is_empty());
    assert_eq!(store.dead(Some("t2"), 10).unwrap(), dead_t2, "other target");

    // Durable, and in exactly one of the two lists.
    f.reopen();
    let store = f.store();
    assert_eq!(
        store.pending("t", Some(loaded_upto), 100).unwrap(),
        replayed
    );
    assert_eq!(store.dead(None, 10).unwrap(), dead_t2);
    // Replayed again after failing again: yet another fresh copy, the same bytes.
    store.bury("t", replayed[1].seq, 3, "HTTP 500").unwrap();
    let again = store.replay_dead(None, None, now_ms + 1).unwrap();
    assert_eq!(again.len(), 2);
    // In dead-letter order: target "t" before "t2".
    assert_eq!(again[0], fresh(&replayed[1], again[0].seq, now_ms + 1));
    assert_eq!(again[1], fresh(&dead_t2[0], again[1].seq, now_ms + 1));
    assert!(replayed[1].seq < again[0].seq && again[0].seq < again[1].seq);
    assert!(store.dead(None, 10).unwrap().is_empty());
    let outbox = store.outbox(None, usize::MAX).unwrap();
    // Nothing dead to replay: nothing happens.
    assert!(store.replay_dead(None, None, now_ms).unwrap().is_empty());
    assert_eq!(store.outbox(None, usize::MAX).unwrap(), outbox);
}

fn replay_dead_filters_by_target_and_event(f: &mut Fixture) {
    let store = f.store();
    let events = queue_events(store, "s", 0, &["1", "2", "3"], &["t", "t2"], NOW_MS);
    for d in store.outbox(None, usize::MAX).unwrap() {
        store.bury(&d.target, d.seq, 1, "HTTP 500").unwrap();
    }
    let dead = store.dead(None, usize::MAX).unwrap();
    assert_eq!(dead.len(), 6);
    let key = |d: &Delivery| (d.target.clone(), d.event_id.clone());
    let dead_keys = |store: &dyn Store| -> Vec<(String, String)> {
        store.dead(None, 100).unwrap().iter().map(key).collect()
    };
    let mut remaining: Vec<_> = dead.iter().map(key).collect();
    let (e1, e3) = (&events[0].id, &events[2].id);
    for (target, event_id) in [
        (Some("t"), Some(e1.as_str())),
        (None, Some(e3.as_str())),
        (Some("t2"), None),
        (Some("t1"), None),
        (None, Some("evt_unknown")),
        (None, None),
    ] {
        let wanted: Vec<_> = remaining
            .iter()
            .filter(|(t, e)| target.is_none_or(|x| x == t) && event_id.is_none_or(|x| x == e))
            .cloned()
            .collect();
        let replayed = store.replay_dead(target, event_id, NOW_MS).unwrap();
        assert_eq!(
            replayed.iter().map(key).collect::<Vec<_>>(),
            wanted,
            "replay of {target:?}, {event_id:?}"
        );
        remaining.retain(|k| !wanted.contains(k));
        assert_eq!(dead_keys(store), remaining);
        for r in &replayed {
            assert_eq!(store.delivery(&r.target, r.seq).unwrap().as_ref(), Some(r));
        }
    }
    assert!(remaining.is_empty());
    assert_eq!(store.outbox(None, usize::MAX).unwrap().len(), 6);
}

/// More dead letters than one replay transaction moves: every one comes back once, in
/// order, none left behind.
fn replay_dead_moves_many_in_batches(f: &mut Fixture) {
    let store = f.store();
    let n = 2 * REPLAY_BATCH + 7;
    let names: Vec<String> = (0..n).map(|i| format!("{i:05}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let events = queue_events(store, "s", 0, &names, &["t"], NOW_MS);
    let pending = all_pending(store, "t");
    for d in &pending {
        store.bury("t", d.seq, 1, "HTTP 500").unwrap();
    }
    let dead = store.dead(None, usize::MAX).unwrap();
    assert_eq!(dead.len(), n);

    let replayed = store.replay_dead(None, None, NOW_MS + 1).unwrap();
    assert_eq!(replayed.len(), n);
    assert!(store.dead(None, usize::MAX).unwrap().is_empty());
    assert_eq!(all_pending(store, "t"), replayed);
    assert_eq!(ids(&replayed), event_ids(&events));
    assert!(replayed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(replayed[0].seq > pending[n - 1].seq);
    for (d, r) in dead.iter().zip(&replayed) {
        assert_eq!(*r, fresh(d, r.seq, NOW_MS + 1));
    }
}

fn target_stats_and_pending_counts_count_per_target(f: &mut Fixture) {
    let store = f.store();
    assert!(store.target_stats().unwrap().is_empty());
    assert!(store.pending_counts().unwrap().is_empty());
    let first = queue_events(store, "s", 0, &["1", "2"], &["a", "b", "a2", "d"], NOW_MS);
    queue_events(store, "s", 1, &["3"], &["a", "c", "d"], NOW_MS + 1_000);
    let pending = store.outbox(None, usize::MAX).unwrap();
    let seq = |t: &str, e: &Event| copy_of(&pending, t, e).seq;
    store.bury("a", seq("a", &first[0]), 3, "HTTP 500").unwrap();
    store.bury("b", seq("b", &first[0]), 3, "HTTP 500").unwrap();
    store.bury("b", seq("b", &first[1]), 3, "HTTP 500").unwrap();
    store.ack("a2", seq("a2", &first[0])).unwrap();
    store.ack("a2", seq("a2", &first[1])).unwrap();
    store.ack("d", seq("d", &first[1])).unwrap();
    store.bury("d", seq("d", &first[0]), 3, "HTTP 500").unwrap();

    let stats = |pending, oldest_pending_ms, dead| TargetStats {
        pending,
        oldest_pending_ms,
        dead,
    };
    assert_eq!(
        store.target_stats().unwrap(),
        BTreeMap::from([
            ("a".to_string(), stats(2, Some(NOW_MS), 1)),
            // Only dead letters: still listed. Nothing left at all: not listed.
            ("b".to_string(), stats(0, None, 2)),
            ("c".to_string(), stats(1, Some(NOW_MS + 1_000), 0)),
            ("d".to_string(), stats(1, Some(NOW_MS + 1_000), 1)),
        ])
    );
    // The oldest is the first pending in outbox order.
    store.ack("a", seq("a", &first[1])).unwrap();
    assert_eq!(
        store.target_stats().unwrap()["a"],
        stats(1, Some(NOW_MS + 1_000), 1)
    );
    // Replayed deliveries keep their detection time, and count as pending again.
    store.replay_dead(Some("b"), None, NOW_MS + 5_000).unwrap();
    assert_eq!(
        store.target_stats().unwrap()["b"],
        stats(2, Some(NOW_MS), 0)
    );
    // Replayed behind a later detection, it is not the first in outbox order: the
    // oldest pending is the one a worker delivers next, not the least detection time.
    store.replay_dead(Some("d"), None, NOW_MS + 5_000).unwrap();
    assert_eq!(
        store.target_stats().unwrap()["d"],
        stats(2, Some(NOW_MS + 1_000), 0)
    );
    f.reopen();
    let store = f.store();
    let counts = store.pending_counts().unwrap();
    assert_eq!(
        counts,
        HashMap::from([
            ("a".to_string(), 1),
            ("b".to_string(), 2),
            ("c".to_string(), 1),
            ("d".to_string(), 2),
        ])
    );
    for (target, s) in store.target_stats().unwrap() {
        assert_eq!(counts.get(&target).copied().unwrap_or(0), s.pending);
    }
}

/// A commit of more deliveries than one record holds (sled writes them in batches of
/// 32): every outcome, in any order, to any of them, is what a reader sees, also from
/// the middle of the queue and after a restart; and once all are finished nothing is
/// left of them.
fn many_deliveries_of_one_commit_take_any_outcome_in_any_order(f: &mut Fixture) {
    let store = f.store();
    let t = deliveries(store, 100);
    let t2 = all_pending(store, "t2");
    // What the outbox must hold for `t`, in order.
    let mut want: BTreeMap<u64, Delivery> = t.iter().map(|d| (d.seq, d.clone())).collect();
    // Compared by sequence first, for a readable message, then in full.
    let same = |got: &[Delivery], want: &[Delivery], what: &str| {
        let seqs = |ds: &[Delivery]| ds.iter().map(|d| d.seq).collect::<Vec<_>>();
        assert_eq!(seqs(got), seqs(want), "{what}: sequences");
        for (g, w) in got.iter().zip(want) {
            assert!(
                g == w,
                "{what}: delivery {} differs: {:?} vs {:?}",
                w.seq,
                (g.attempts, g.next_at_ms, &g.last_error),
                (w.attempts, w.next_at_ms, &w.last_error)
            );
        }
    };
    let check = |store: &dyn Store, want: &BTreeMap<u64, Delivery>| {
        let expected: Vec<Delivery> = want.values().cloned().collect();
        same(&all_pending(store, "t"), &expected, "pending");
        same(
            &store.outbox(Some("t"), usize::MAX).unwrap(),
            &expected,
            "outbox",
        );
        // From anywhere in the queue, of any length: a read from inside a batch.
        for (i, d) in t.iter().enumerate().step_by(7) {
            let after: Vec<Delivery> = want.range(d.seq + 1..).map(|(_, d)| d.clone()).collect();
            let limit = 1 + i % 40;
            let got = store.pending("t", Some(d.seq), limit).unwrap();
            assert_eq!(got, after[..after.len().min(limit)], "after {}", d.seq);
            assert_eq!(
                store.delivery("t", d.seq).unwrap().as_ref(),
                want.get(&d.seq)
            );
        }
        let stats = store.target_stats().unwrap();
        assert_eq!(stats.get("t").map_or(0, |s| s.pending), want.len() as u64);
        assert_eq!(
            all_pending(store, "t2"),
            t2,
            "the other target's copies stay"
        );
    };
    // Failed attempts, here and there: the first, the last and one in the middle of a
    // batch, the very last delivery, and one twice.
    for (i, attempts) in [(0, 1), (31, 1), (32, 2), (45, 1), (99, 3), (45, 2)] {
        let d = &t[i];
        let error = format!("HTTP 50{attempts} for {i}");
        let next_at = NOW_MS + 1_000 * i as i64;
        store
            .reschedule("t", d.seq, attempts, next_at, &error)
            .unwrap();
        let w = want.get_mut(&d.seq).unwrap();
        w.attempts = attempts;
        w.next_at_ms = next_at;
        w.last_error = Some(error);
    }
    check(store, &want);
    // Buried: one that had failed before (its last attempt's time stays) and one that
    // had not.
    let mut dead = Vec::new();
    for i in [45, 60] {
        store.bury("t", t[i].seq, 9, "HTTP 410 Gone").unwrap();
        let mut d = want.remove(&t[i].seq).unwrap();
        d.attempts = 9;
        d.last_error = Some("HTTP 410 Gone".into());
        dead.push(d);
    }
    assert_eq!(store.dead(Some("t"), usize::MAX).unwrap(), dead);
    check(store, &want);
    // Acknowledged in a scrambled order, several at a time, some twice, some of them
    // already buried.
    let order: Vec<usize> = (0..100).map(|i| (i * 37 + 11) % 100).collect();
    for chunk in order[..70].chunks(9) {
        let seqs: Vec<u64> = chunk.iter().map(|&i| t[i].seq).collect();
        store.ack_many("t", &seqs).unwrap();
        store.ack_many("t", &seqs[..1]).unwrap();
        for s in seqs {
            want.remove(&s);
        }
    }
    check(store, &want);
    f.reopen();
    let store = f.store();
    check(store, &want);
    assert_eq!(store.dead(Some("t"), usize::MAX).unwrap(), dead);
    // The rest, one at a time.
    for &i in &order[70..] {
        store.ack("t", t[i].seq).unwrap();
        want.remove(&t[i].seq);
    }
    assert!(want.is_empty());
    check(store, &want);
    assert!(store.oldest_pending("t").unwrap().is_none());
    f.reopen();
    let store = f.store();
    assert!(all_pending(store, "t").is_empty());
    assert_eq!(all_pending(store, "t2"), t2);
    assert_eq!(
        store.find_event(&t[45].event_id).unwrap().len(),
        2,
        "dead for t, pending for t2"
    );
}

on_both_stores!(
    many_deliveries_of_one_commit_take_any_outcome_in_any_order,
    pending_is_per_target_in_detection_order,
    ack_and_ack_many_remove_exactly_those,
    reschedule_updates_the_attempt_and_keeps_the_body,
    bury_moves_a_delivery_to_the_dead_letters,
    operations_on_missing_deliveries_are_not_errors_and_create_nothing,
    outbox_lists_pending_deliveries_by_target_then_detection_order,
    find_event_finds_pending_and_dead_copies_across_targets,
    replay_dead_queues_fresh_copies_after_everything_pending,
    replay_dead_filters_by_target_and_event,
    replay_dead_moves_many_in_batches,
    target_stats_and_pending_counts_count_per_target,
);
