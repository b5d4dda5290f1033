//! Tests of a poll committed in several chunks (more events than one commit holds): its
//! events are staged and reach the outbox only after the commit of its snapshot, in
//! detection order; a crash before that commit delivers none of them, a crash after it
//! loses none (DESIGN invariant 1).

use std::sync::Arc;

use super::sled_store::DIE_BEFORE_APPLY;
use super::tests::{all_pending, created, events_commit, open, seen};
use super::*;
use crate::event::Event;

/// Five created events of source `s` at generation 1, for target `t`.
fn five() -> Vec<(Event, Arc<[String]>)> {
    ["a", "b", "c", "d", "e"]
        .iter()
        .map(|id| created("s", 1, id, &["t"]))
        .collect()
}

/// The two commits of a poll of `s` from generation 0 that creates `events`' items:
/// three events staged, then the last two with the snapshot.
fn two_chunks(events: Vec<(Event, Arc<[String]>)>) -> (PollCommit, PollCommit) {
    let mut first = events_commit("s", 0, events[..3].to_vec());
    first.events_only = true;
    let upserts: Vec<(String, crate::diff::Seen)> = events
        .iter()
        .map(|(e, _)| {
            (
                e.item_id.clone(),
                seen(&serde_json::json!({"id": e.item_id})),
            )
        })
        .collect();
    let mut last = events_commit("s", 0, events[3..].to_vec());
    last.chunk = 1;
    last.item_count = upserts.len() as u64;
    last.upserts = upserts;
    (first, last)
}

/// Commits both chunks of `events` to `store` as a process would that dies right after
/// the snapshot commit, before its staged events move.
fn commit_and_die_before_the_move(store: &SledStore, events: Vec<(Event, Arc<[String]>)>) {
    let (first, last) = two_chunks(events);
    store.commit_poll(first).unwrap();
    DIE_BEFORE_APPLY.set(true);
    let committed = store.commit_poll(last);
    DIE_BEFORE_APPLY.set(false);
    assert_eq!(committed.unwrap(), 1);
}

fn event_ids(events: &[(Event, Arc<[String]>)]) -> Vec<String> {
    events.iter().map(|(e, _)| e.id.clone()).collect()
}

fn pending_ids(store: &SledStore) -> Vec<String> {
    all_pending(store, "t")
        .into_iter()
        .map(|d| d.event_id)
        .collect()
}

/// Delivery of a large poll starts on its first moved chunk, not after the whole move:
/// the commit's wake-up is called after each chunk's transaction, and the first call
/// already finds that chunk in the outbox.
#[test]
fn the_targets_are_woken_as_each_staged_chunk_reaches_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let events = five();
    let (first, mut last) = two_chunks(events.clone());
    let seen_at_wake = Arc::new(std::sync::Mutex::new(Vec::new()));
    last.queued = {
        let (store, seen_at_wake) = (store.clone(), seen_at_wake.clone());
        Queued::new(move || seen_at_wake.lock().unwrap().push(pending_ids(&store)))
    };
    store.commit_poll(first).unwrap();
    assert_eq!(store.commit_poll(last).unwrap(), 1);
    let ids = event_ids(&events);
    assert_eq!(
        *seen_at_wake.lock().unwrap(),
        vec![ids[..3].to_vec(), ids.clone()],
        "one wake per moved chunk, each after its chunk is queued"
    );
}

#[test]
fn staged_events_are_queued_only_when_the_snapshot_commits_in_detection_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let events = five();
    let (first, last) = two_chunks(events.clone());
    store.commit_poll(first).unwrap();
    assert!(pending_ids(&store).is_empty(), "a staged chunk was queued");
    assert_eq!(store.source_state("s").unwrap().generation, 0);
    assert_eq!(store.commit_poll(last).unwrap(), 1);
    assert_eq!(pending_ids(&store), event_ids(&events));
    let state = store.source_state("s").unwrap();
    assert_eq!((state.generation, state.items, state.staged), (1, 5, 0));
    assert!(store.stage.is_empty(), "the stage keeps moved chunks");
}

#[test]
fn a_crash_after_the_snapshot_commit_queues_the_staged_events_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let events = five();
    {
        let store = open(dir.path());
        commit_and_die_before_the_move(&store, events.clone());
        assert!(pending_ids(&store).is_empty());
        assert_eq!(store.source_state("s").unwrap().staged, 2);
    }
    let store = open(dir.path());
    assert_eq!(pending_ids(&store), event_ids(&events));
    assert_eq!(store.source_state("s").unwrap().staged, 0);
    assert!(store.stage.is_empty());
    // Reopening again queues nothing twice.
    drop(store);
    assert_eq!(pending_ids(&open(dir.path())).len(), 5);
}

#[test]
fn chunks_of_a_poll_that_never_committed_are_dropped_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let (first, _) = two_chunks(five());
        store.commit_poll(first).unwrap();
        assert!(!store.stage.is_empty());
    }
    // Dropped when the store opens after the crash.
    let store = open(dir.path());
    assert!(store.stage.is_empty());
    assert!(pending_ids(&store).is_empty());
    assert_eq!(store.source_state("s").unwrap(), SourceState::default());
    // And by the next poll's first commit, when the poll that staged them failed.
    let (first, _) = two_chunks(five());
    store.commit_poll(first).unwrap();
    let one = vec![created("s", 1, "z", &["t"])];
    store
        .commit_poll(events_commit("s", 0, one.clone()))
        .unwrap();
    assert_eq!(pending_ids(&store), event_ids(&one));
    assert!(store.stage.is_empty());
}

#[test]
fn forget_queues_committed_staged_events_and_drops_uncommitted_ones() {
    let dir = tempfile::tempdir().unwrap();
    let events = five();
    {
        let store = open(dir.path());
        commit_and_die_before_the_move(&store, events.clone());
        // A forget before the move: what was detected is still delivered.
        assert!(store.forget_source("s").unwrap());
        assert_eq!(pending_ids(&store), event_ids(&events));
        // Chunks of a poll in flight at the forget go with it.
        let mut staged = events_commit("s", 2, five());
        staged.events_only = true;
        store.commit_poll(staged).unwrap();
        assert!(store.forget_source("s").unwrap());
        assert!(store.stage.is_empty());
        assert_eq!(pending_ids(&store).len(), 5);
    }
}
