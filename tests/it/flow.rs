//! The happy path: what a user sees when items come, change and go.

use serde_json::json;

use crate::support::{accepted, pending};

#[tokio::test]
async fn baseline_then_each_change_kind_arrives_signed() {
    let mut h = harness!();
    h.api.set("1", json!({"name": "apple", "stock": 10}));
    h.api.set("2", json!({"name": "banana", "stock": 5}));
    h.start(h.config("", ""));
    // The first polls record the existing items silently (baseline = true).
    h.polls(3).await;
    assert!(h.rx.received().is_empty(), "baseline sent events");

    h.api.set("3", json!({"name": "cherry", "stock": 1}));
    let got = h
        .received("created", |r| accepted(r, "s.created").count() == 1)
        .await;
    let created = accepted(&got, "s.created").next().unwrap();
    assert!(created.verified);
    assert_eq!(created.item_id, "3");
    assert_eq!(created.body["id"], created.id.as_str());
    assert_eq!(created.body["source"], "s");
    assert_eq!(created.body["data"]["object"]["name"], "cherry");
    assert!(created.body["data"].get("previous").is_none());
    assert!(created.body["timestamp"].as_str().unwrap().ends_with('Z'));

    h.api.set("1", json!({"name": "apple", "stock": 9}));
    let got = h
        .received("updated", |r| accepted(r, "s.updated").count() == 1)
        .await;
    let updated = accepted(&got, "s.updated").next().unwrap();
    assert_eq!(updated.item_id, "1");
    assert_eq!(updated.body["data"]["previous"]["stock"], 10);
    assert_eq!(updated.body["data"]["object"]["stock"], 9);
    assert_eq!(
        updated.body["data"]["changes"],
        json!([{"op": "replace", "path": "/stock", "value": 9}])
    );

    h.api.remove("2");
    let got = h
        .received("deleted", |r| accepted(r, "s.deleted").count() == 1)
        .await;
    let deleted = accepted(&got, "s.deleted").next().unwrap();
    assert_eq!(deleted.item_id, "2");
    assert_eq!(deleted.body["data"]["object"]["name"], "banana");

    // Every event was sent once, signed, with its own id; nothing else came.
    h.polls(3).await;
    let all = h.rx.received();
    assert_eq!(all.len(), 3, "{:#?}", crate::support::summary(&all));
    assert!(all.iter().all(|r| r.verified));
    let mut ids: Vec<&str> = all.iter().map(|r| r.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    // Delivered entries are pruned from the outbox.
    h.stop().await;
    let store = h.store();
    assert_eq!(pending(&*store, "t"), 0);
    assert_eq!(store.source_state("s").unwrap().items, 2);
}

#[tokio::test]
async fn baseline_false_sends_existing_items_as_created() {
    let mut h = harness!();
    h.api.set("1", json!({"name": "apple"}));
    h.api.set("2", json!({"name": "banana"}));
    h.start(h.config("baseline = false", ""));
    let got = h
        .received("two created", |r| accepted(r, "s.created").count() == 2)
        .await;
    let mut items: Vec<&str> = accepted(&got, "s.created")
        .map(|r| r.item_id.as_str())
        .collect();
    items.sort();
    assert_eq!(items, ["1", "2"]);
    h.stop().await;
}

#[tokio::test]
async fn changes_only_in_ignored_fields_emit_nothing() {
    let mut h = harness!();
    h.api.set("1", json!({"name": "apple", "updated_at": "t0"}));
    h.start(h.config("ignore = [\"/updated_at\"]", ""));
    h.polls(2).await;
    h.api.set("1", json!({"name": "apple", "updated_at": "t1"}));
    h.polls(4).await;
    assert!(
        h.rx.received().is_empty(),
        "ignored change emitted: {:?}",
        crate::support::summary(&h.rx.received())
    );

    h.api
        .set("1", json!({"name": "apple pie", "updated_at": "t2"}));
    let got = h
        .received("updated", |r| accepted(r, "s.updated").count() == 1)
        .await;
    let u = accepted(&got, "s.updated").next().unwrap();
    assert_eq!(u.body["data"]["object"]["name"], "apple pie");
    h.stop().await;
}

#[tokio::test]
async fn event_filter_and_target_subset_are_honoured() {
    let mut h = harness!();
    let other = pollhook::demo::receiver::Receiver::start(
        pollhook::sign::Scheme::Github,
        vec!["gh-secret".into()],
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let extra = format!(
        "[targets.gh]\nurl = \"{}\"\nsecret = \"gh-secret\"\nsignature = \"github\"\n\n[sources.only_deletes]\nurl = \"{}\"\ninterval = \"200ms\"\nitems = \"/items\"\nevents = [\"deleted\"]\ntargets = [\"gh\"]\n",
        other.url(),
        h.api.url()
    );
    h.api.set("1", json!({"v": 1}));
    h.start(h.config("targets = [\"t\"]", &extra));
    h.polls(4).await;
    h.api.set("1", json!({"v": 2}));
    h.api.set("2", json!({"v": 1}));
    h.api.remove("1");
    // Source s sends everything to t only; only_deletes sends only the deletion to gh,
    // signed the GitHub way.
    h.received("s events", |r| {
        accepted(r, "s.deleted").count() == 1 && accepted(r, "s.created").count() == 1
    })
    .await;
    assert!(
        other
            .wait_until(crate::support::WAIT, |r| r
                .iter()
                .any(|r| r.event_type == "only_deletes.deleted"))
            .await
    );
    h.polls(3).await;
    let gh = other.received();
    assert!(
        gh.iter()
            .all(|r| r.event_type == "only_deletes.deleted" && r.verified),
        "{:#?}",
        crate::support::summary(&gh)
    );
    assert!(h
        .rx
        .received()
        .iter()
        .all(|r| r.event_type.starts_with("s.")));
    h.stop().await;
}

/// Invariant 2: a poll that detected a change but never committed (the process died)
/// is repeated by the next poll under the same event ids; a later, different change gets
/// a new id even if the item returns to an earlier version.
#[tokio::test]
async fn a_change_redetected_after_a_crash_keeps_its_id() {
    use chrono::{Duration, Utc};
    use pollhook::poll::Poller;
    use pollhook::source::Fetcher;
    use pollhook::store::SharedStore;

    let h = harness!();
    h.api.set("1", json!({"v": 1}));
    let config = h.config("baseline = false", "");
    let source = &config.sources["s"];
    let store: SharedStore = h.store();
    let poller = Poller::new(
        store.clone(),
        Fetcher::new(&config.sources).unwrap(),
        pollhook::poll::Wakes::default(),
    );
    // The ids a plan would queue, committing nothing; and those it queues, committed.
    let ids = |plan: pollhook::poll::Plan| -> Vec<String> {
        plan.into_events().map(|e| e.unwrap().id).collect()
    };
    let commit = |mut plan: pollhook::poll::Plan| -> Vec<String> {
        let mut ids = Vec::new();
        while let Some(c) = plan.next_commit().unwrap() {
            ids.extend(c.events.iter().map(|(e, _)| e.id.clone()));
            store.commit_poll(c).unwrap();
        }
        ids
    };

    let crashed = ids(poller.plan(source, Utc::now()).await.unwrap());
    // Nothing committed; a minute later the next poll sees the same change.
    let retried = poller
        .plan(source, Utc::now() + Duration::minutes(1))
        .await
        .unwrap();
    let created = commit(retried);
    assert_eq!(crashed.len(), 1);
    assert_eq!(crashed, created);

    let mut seen = created.clone();
    for v in [2, 1, 2] {
        h.api.set("1", json!({"v": v}));
        let id = commit(poller.plan(source, Utc::now()).await.unwrap());
        assert_eq!(id.len(), 1);
        assert!(!seen.contains(&id[0]), "v{v} reused an earlier id");
        seen.push(id[0].clone());
    }
}
