//! A failed poll changes nothing and emits nothing (invariant 3): no false deletions
//! whatever the source does, and the daemon recovers when the source does.

use std::time::Duration;

use pollhook::demo::api::Fault;
use pollhook::store::Store;
use serde_json::json;

use crate::support::{accepted, summary, Harness};

#[tokio::test]
async fn source_faults_never_look_like_deletions() {
    let mut h = Harness::new().await;
    for id in ["1", "2", "3"] {
        h.api.set(id, json!({"name": id}));
    }
    // Failed polls back off; capped at the interval here, so each fault is polled a few
    // times quickly (backoff itself is tested in `sources`).
    h.start(h.config("timeout = \"500ms\"\nmax_backoff = \"200ms\"", ""));
    h.polls(2).await;
    let faults = [
        Fault::Status(500),
        Fault::Status(404),
        Fault::Status(301),
        Fault::InvalidJson,
        Fault::Truncated,
        Fault::Empty,
        Fault::MissingItems,
        Fault::Slow(Duration::from_secs(1)),
    ];
    for fault in faults {
        h.api.set_fault(fault.clone());
        h.polls(3).await;
        assert!(
            h.rx.received().is_empty(),
            "{fault:?} emitted: {:#?}",
            summary(&h.rx.received())
        );
    }
    h.api.set_fault(Fault::None);
    // Recovery: the next change is seen against the last good snapshot.
    h.api.set("4", json!({"name": "4"}));
    let got = h
        .received("created after recovery", |r| {
            accepted(r, "s.created").count() == 1
        })
        .await;
    h.polls(3).await;
    assert_eq!(h.rx.received().len(), 1, "{:#?}", summary(&got));
    h.stop().await;
    assert_eq!(h.store().source_state("s").unwrap().items, 4);
}

#[tokio::test]
async fn allow_empty_lets_a_real_empty_list_delete() {
    let mut h = Harness::new().await;
    h.api.set("1", json!({}));
    h.start(h.config("allow_empty = true", ""));
    h.polls(2).await;
    h.api.remove("1");
    h.received("deletion", |r| accepted(r, "s.deleted").count() == 1)
        .await;
    h.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_fail_the_poll() {
    let mut h = Harness::new().await;
    h.api.set("1", json!({"pad": "x"}));
    h.start(h.config("max_body = \"400\"", ""));
    h.polls(2).await;
    // Over the cap: the new item is not seen, and the old one is not deleted.
    h.api.set("2", json!({"pad": "y".repeat(500)}));
    h.polls(3).await;
    assert!(
        h.rx.received().is_empty(),
        "{:#?}",
        summary(&h.rx.received())
    );
    h.api.set("2", json!({"pad": "small"}));
    h.received("created once under the cap", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn items_without_ids_fail_the_poll() {
    let mut h = Harness::new().await;
    h.api.set("1", json!({}));
    h.start(h.config("id = \"/key\"", ""));
    // Items have no "key" member: every poll fails, nothing is recorded or sent.
    h.polls(3).await;
    h.stop().await;
    let state = h.store().source_state("s").unwrap();
    assert!(!state.initialized, "a failed poll committed: {state:?}");
    assert!(h.rx.received().is_empty());
}

/// Invariant 5 for sources: a source that hangs does not delay another.
#[tokio::test]
async fn a_hanging_source_does_not_delay_another() {
    let mut h = Harness::new().await;
    let slow_api =
        pollhook::demo::api::SampleApi::start(tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    slow_api.set_fault(Fault::Slow(Duration::from_secs(20)));
    let extra = format!(
        "[sources.slow]\nurl = \"{}\"\ninterval = \"200ms\"\ntimeout = \"30s\"\nitems = \"/items\"\n",
        slow_api.url()
    );
    h.start(h.config("", &extra));
    h.polls(2).await;
    h.api.set("1", json!({}));
    h.received("the healthy source's event", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    assert_eq!(
        slow_api.requests(),
        1,
        "the hanging source polled twice at once"
    );
    h.stop().await;
}
