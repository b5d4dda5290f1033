//! Contract: health records. Missing is healthy; a record is replaced only if it is
//! still the one read, atomically with the events of its transition, and it survives a
//! restart; a target's oldest pending delivery.

use std::sync::Arc;

use super::Fixture;
use crate::health::{self, HealthRecord, Subject, Transition};
use crate::store::tests::{all_pending, created, events_commit};

fn failing(episode: u64) -> HealthRecord {
    HealthRecord {
        failures: 3,
        since_ms: Some(1_000),
        failing: true,
        episode,
        last_error: Some("status 500".into()),
    }
}

fn a_record_is_replaced_only_if_it_is_still_the_one_read(f: &mut Fixture) {
    let key = Subject::Source("s").key();
    let store = f.store();
    assert_eq!(store.health(&key).unwrap(), HealthRecord::default());
    let healthy = HealthRecord::default();
    let next = failing(1);
    let event = health::event(
        Subject::Source("s"),
        &Transition::Failing,
        &next,
        &healthy,
        None,
        5_000,
    );
    let targets: Arc<[String]> = vec!["ops".to_string(), "chat".to_string()].into();
    assert!(store
        .update_health(
            &key,
            &healthy,
            &next,
            vec![(event.clone(), targets.clone())],
            5_000
        )
        .unwrap());
    // A second writer that read the same (healthy) record: refused, nothing queued.
    let again = health::event(
        Subject::Source("s"),
        &Transition::Failing,
        &next,
        &healthy,
        None,
        6_000,
    );
    assert!(!store
        .update_health(&key, &healthy, &next, vec![(again, targets)], 6_000)
        .unwrap());
    for t in ["ops", "chat"] {
        let queued = all_pending(store, t);
        assert_eq!(queued.len(), 1, "{t}: {queued:#?}");
        assert_eq!(queued[0].event_id, event.id);
        assert_eq!(queued[0].event_type, health::SOURCE_FAILING);
        assert_eq!(queued[0].source, health::ORIGIN);
        assert_eq!(queued[0].item_id, "source:s");
        assert_eq!(queued[0].created_ms, 5_000);
        assert_eq!(queued[0].body, event.body);
    }
    // It outlives a restart.
    f.reopen();
    let store = f.store();
    assert_eq!(store.health(&key).unwrap(), next);
    // Other subjects are apart.
    assert_eq!(
        store.health(&Subject::Target("s").key()).unwrap(),
        HealthRecord::default()
    );
    // Back to healthy, with no event (a failure that never reached fail_after).
    let healthy_again = HealthRecord {
        episode: 1,
        ..HealthRecord::default()
    };
    assert!(store
        .update_health(&key, &next, &healthy_again, Vec::new(), 7_000)
        .unwrap());
    assert!(!store
        .update_health(&key, &next, &failing(2), Vec::new(), 8_000)
        .unwrap());
    assert_eq!(store.health(&key).unwrap(), healthy_again);
    assert_eq!(all_pending(store, "ops").len(), 1);
}

fn health_events_queue_after_the_deliveries_before_them(f: &mut Fixture) {
    let store = f.store();
    let e1 = created("s", 1, "1", &["ops"]);
    store
        .commit_poll(events_commit("s", 0, vec![e1.clone()]))
        .unwrap();
    let next = failing(1);
    let event = health::event(
        Subject::Target("t"),
        &Transition::Failing,
        &next,
        &HealthRecord::default(),
        Some(0),
        9_000,
    );
    let key = Subject::Target("t").key();
    let targets: Arc<[String]> = vec!["ops".to_string()].into();
    assert!(store
        .update_health(
            &key,
            &HealthRecord::default(),
            &next,
            vec![(event.clone(), targets)],
            9_000
        )
        .unwrap());
    let e2 = created("s", 2, "2", &["ops"]);
    store
        .commit_poll(events_commit("s", 1, vec![e2.clone()]))
        .unwrap();
    let ids: Vec<String> = all_pending(store, "ops")
        .into_iter()
        .map(|d| d.event_id)
        .collect();
    assert_eq!(ids, [e1.0.id, event.id, e2.0.id]);
}

fn the_oldest_pending_delivery_is_the_first_in_outbox_order(f: &mut Fixture) {
    let store = f.store();
    assert_eq!(store.oldest_pending("t").unwrap(), None);
    let mut c = events_commit(
        "s",
        0,
        vec![created("s", 1, "1", &["t"]), created("s", 1, "2", &["t"])],
    );
    c.now_ms = 4_000;
    store.commit_poll(c).unwrap();
    let mut c = events_commit("s", 1, vec![created("s", 2, "3", &["t", "u"])]);
    c.now_ms = 5_000;
    store.commit_poll(c).unwrap();
    assert_eq!(store.oldest_pending("t").unwrap(), Some(4_000));
    assert_eq!(store.oldest_pending("u").unwrap(), Some(5_000));
    assert_eq!(
        store.oldest_pending("t2").unwrap(),
        None,
        "a name sharing a prefix"
    );
    let seqs: Vec<u64> = all_pending(store, "t").iter().map(|d| d.seq).collect();
    store.ack_many("t", &seqs[..2]).unwrap();
    assert_eq!(store.oldest_pending("t").unwrap(), Some(5_000));
    store.ack_many("t", &seqs[2..]).unwrap();
    assert_eq!(store.oldest_pending("t").unwrap(), None);
}

on_both_stores!(
    a_record_is_replaced_only_if_it_is_still_the_one_read,
    health_events_queue_after_the_deliveries_before_them,
    the_oldest_pending_delivery_is_the_first_in_outbox_order,
);
