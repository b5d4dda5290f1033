//! A failed poll changes nothing and emits nothing (invariant 3): no false deletions
//! whatever the source does, and the daemon recovers when the source does.

use std::time::Duration;

use pollhook::config::Config;
use pollhook::demo::api::Fault;
use pollhook::store::SharedStore;
use serde_json::json;

use crate::support::{accepted, summary, Harness};

#[tokio::test]
async fn source_faults_never_look_like_deletions() {
    let mut h = harness!();
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
    let mut h = harness!();
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
    let mut h = harness!();
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
    let mut h = harness!();
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
    let mut h = harness!();
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

/// A poller on the harness's source `s` and store, polled by the test itself, so that
/// it knows exactly which poll saw which answer.
fn poller(h: &Harness, config: &pollhook::config::Config) -> (pollhook::poll::Poller, SharedStore) {
    let store = h.store();
    let poller = pollhook::poll::Poller::new(
        store.clone(),
        pollhook::source::Fetcher::new(&config.sources).unwrap(),
        pollhook::poll::Wakes::default(),
    );
    (poller, store)
}

/// Every delivery queued for target `t`, as (event type, item id).
fn queued(store: &SharedStore) -> Vec<(String, String)> {
    store
        .pending("t", None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|d| (d.event_type, d.item_id))
        .collect()
}

/// An error answered with status 200 in place of the list (GitHub's rate limit) is an
/// object of two string members where an array of objects was held, or strings where an
/// object of objects was: the poll fails instead of deleting every held item.
#[tokio::test]
async fn an_error_object_in_place_of_the_list_deletes_nothing() {
    let h = harness!();
    for i in 0..30 {
        h.api.set(&i.to_string(), json!({"n": i}));
    }
    let rate_limited = json!({
        "message": "API rate limit exceeded for 127.0.0.1.",
        "documentation_url": "https://docs.github.com/rest/overview/rate-limits"
    })
    .to_string();
    let array = h.api.url().replace("/items", "/array");
    let text = h
        .config_text("baseline = false", "")
        .replace(
            &format!("url = \"{}\"\n", h.api.url()),
            &format!("url = \"{array}\"\n"),
        )
        .replace("items = \"/items\"", "items = \"\"");
    let config = Config::parse(&text, &h.dir.path().join("c.toml"), &|_| None).unwrap();
    let source = &config.sources["s"];
    let (poller, store) = poller(&h, &config);
    assert_eq!(poller.poll(source).await.unwrap().created, 30);
    let before = queued(&store);

    h.api.set_fault(Fault::Body(rate_limited.clone()));
    let err = poller.poll(source).await.unwrap_err().to_string();
    assert!(
        err.contains("are an object of strings") && err.contains("came as an array of objects"),
        "{err}"
    );
    assert!(err.contains("pollhook forget s"), "{err}");
    // Refused every time, not only once.
    assert!(poller.poll(source).await.is_err());
    assert_eq!(queued(&store), before);
    assert_eq!(store.source_state("s").unwrap().items, 30);

    // Back to normal: nothing happened, so nothing is sent.
    h.api.set_fault(Fault::None);
    let report = poller.poll(source).await.unwrap();
    assert_eq!((report.created, report.deleted), (0, 0), "{report:?}");
    assert_eq!(queued(&store), before);

    // An object collection (items keyed by id) whose items were objects: the same
    // error object has the same collection, but its items are strings.
    let object_of = |n: usize| {
        let m: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("k{i}"), json!({"n": i}))).collect();
        serde_json::Value::Object(m).to_string()
    };
    h.api.set_fault(Fault::Body(object_of(25)));
    let text = format!(
        "{text}\n[sources.o]\nurl = \"{}\"\ninterval = \"1h\"\nitems = \"\"\nbaseline = false\n",
        h.api.url()
    );
    let config = Config::parse(&text, &h.dir.path().join("c.toml"), &|_| None).unwrap();
    let other = &config.sources["o"];
    drop(poller);
    let poller = pollhook::poll::Poller::new(
        store.clone(),
        pollhook::source::Fetcher::new(&config.sources).unwrap(),
        pollhook::poll::Wakes::default(),
    );
    assert_eq!(poller.poll(other).await.unwrap().created, 25);
    h.api.set_fault(Fault::Body(rate_limited));
    let err = poller.poll(other).await.unwrap_err().to_string();
    assert!(
        err.contains("are an object of strings") && err.contains("came as an object of objects"),
        "{err}"
    );
    assert_eq!(store.source_state("o").unwrap().items, 25);
}

/// A list cut short (one item of 291) is held back by the deletion guard: nothing is
/// deleted unless the next two polls see the same; a one-off deletes nothing at all.
#[tokio::test]
async fn a_mass_deletion_waits_for_two_more_polls_that_confirm_it() {
    let h = harness!();
    for i in 0..291 {
        h.api.set(&format!("{i:03}"), json!({"n": i}));
    }
    let first = json!({"items": [h.api.items()["000"]]}).to_string();
    let config = h.config("baseline = false", "");
    let source = &config.sources["s"];
    let (poller, store) = poller(&h, &config);
    assert_eq!(poller.poll(source).await.unwrap().created, 291);
    let created = queued(&store);

    // One bad answer, twice in a row, then the full list again: nothing deleted.
    h.api.set_fault(Fault::Body(first.clone()));
    for seen in 1..=2 {
        let r = poller.poll(source).await.unwrap();
        let held = r.held_back.as_ref().expect("held back");
        assert_eq!(
            (held.deletions, held.held, held.seen, held.needed),
            (290, 291, seen, 3)
        );
        assert_eq!((r.deleted, r.events), (290, 0), "{r:?}");
    }
    h.api.set_fault(Fault::None);
    let r = poller.poll(source).await.unwrap();
    assert!(r.held_back.is_none() && r.deleted == 0, "{r:?}");
    assert_eq!(queued(&store), created);
    assert_eq!(store.source_state("s").unwrap().items, 291);

    // The same deletions three polls in a row are real: the third commits them.
    h.api.set_fault(Fault::Body(first));
    assert!(poller.poll(source).await.unwrap().held_back.is_some());
    assert!(poller.poll(source).await.unwrap().held_back.is_some());
    let r = poller.poll(source).await.unwrap();
    assert!(r.held_back.is_none(), "{r:?}");
    assert_eq!((r.deleted, r.events), (290, 290));
    assert_eq!(store.source_state("s").unwrap().items, 1);
    let deleted = queued(&store)
        .into_iter()
        .filter(|(t, _)| t == "s.deleted")
        .count();
    assert_eq!(deleted, 290);

    // Turned off, the same cut deletes at once; under min_items, too.
    for extra in [
        "[sources.s.deletion_guard]\nshare = \"off\"",
        "[sources.s.deletion_guard]\nmin_items = 300",
    ] {
        h.api.set_fault(Fault::None);
        let config = h.config("baseline = false", extra);
        let poller = pollhook::poll::Poller::new(
            store.clone(),
            pollhook::source::Fetcher::new(&config.sources).unwrap(),
            pollhook::poll::Wakes::default(),
        );
        let source = &config.sources["s"];
        assert_eq!(poller.poll(source).await.unwrap().created, 290);
        h.api.set_fault(Fault::Body(
            json!({"items": [h.api.items()["000"]]}).to_string(),
        ));
        let r = poller.poll(source).await.unwrap();
        assert!(r.held_back.is_none() && r.deleted == 290, "{extra}: {r:?}");
    }
}

/// pollhook knows how many items each source held: when the store gives back fewer (a
/// sled blob file lost with the one large item's bucket), it refuses to poll instead of
/// sending every missing item as created.
#[tokio::test]
async fn a_snapshot_read_back_short_is_refused_not_sent_as_created() {
    let h = harness!();
    if crate::support::on_postgres() {
        // sled's blob files; PostgreSQL keeps no such thing.
        return;
    }
    for i in 0..40 {
        h.api.set(&i.to_string(), json!({"n": i}));
    }
    // Larger than a page sled keeps inline (a quarter of its log segment).
    // Bytes that do not compress: the store packs large records (sled_pack.rs).
    let mut pad = String::new();
    let mut block = [0u8; 32];
    while pad.len() < 600_000 {
        block = <sha2::Sha256 as sha2::Digest>::digest(block).into();
        pad.extend(block.iter().map(|b| format!("{b:02x}")));
    }
    h.api.set("big", json!({ "pad": pad }));
    let config = h.config("max_body = \"2MiB\"", "");
    let source = &config.sources["s"];
    {
        let (poller, store) = poller(&h, &config);
        assert_eq!(poller.poll(source).await.unwrap().items, 41);
        store.flush().unwrap();
    }
    // Lose the blob files.
    let blobs = h.state_dir().join("db").join("blobs");
    let lost: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap_or_else(|e| panic!("{}: {e}", blobs.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!lost.is_empty(), "the large bucket is not a blob file");
    for f in &lost {
        std::fs::remove_file(f).unwrap();
    }
    let (poller, store) = poller(&h, &config);
    let err = poller.poll(source).await.unwrap_err().to_string();
    assert!(err.contains("holds 0 of the 41 items"), "{err}");
    assert!(err.contains("pollhook forget s"), "{err}");
    assert!(queued(&store).is_empty());
    // The way forward the message names: forget, and the next poll is a new baseline.
    assert!(store.forget_source("s").unwrap());
    let r = poller.poll(source).await.unwrap();
    assert_eq!((r.items, r.events, r.baseline), (41, 0, true), "{r:?}");
}

/// Integers beyond 64 bits stay exact: two such ids are two items, a change in the last
/// digit is an update, and the webhook body carries the digits as the API wrote them.
#[tokio::test]
async fn integers_beyond_64_bits_stay_exact() {
    let h = harness!();
    let body = |v: &str| {
        format!(
            r#"{{"items": [{{"id": 18446744073709551617, "v": {v}}}, {{"id": 18446744073709551618, "v": 1}}, {{"id": "p", "price": 9.90}}]}}"#
        )
    };
    h.api.set_fault(Fault::Body(body("18446744073709551617")));
    let config = h.config("baseline = false", "");
    let source = &config.sources["s"];
    let (poller, store) = poller(&h, &config);
    let r = poller.poll(source).await.unwrap();
    assert_eq!(r.created, 3, "{r:?}");
    let ids: Vec<(String, String)> = queued(&store);
    assert!(
        ids.iter().any(|(_, id)| id == "18446744073709551617"),
        "{ids:?}"
    );
    assert!(
        ids.iter().any(|(_, id)| id == "18446744073709551618"),
        "{ids:?}"
    );
    let bodies: Vec<String> = store
        .pending("t", None, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|d| String::from_utf8(d.body).unwrap())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains(r#""v":18446744073709551617"#)),
        "{bodies:?}"
    );
    assert!(bodies.iter().all(|b| !b.contains("e+19")), "{bodies:?}");

    h.api.set_fault(Fault::Body(body("18446744073709551618")));
    let r = poller.poll(source).await.unwrap();
    assert_eq!((r.created, r.updated, r.deleted), (0, 1, 0), "{r:?}");
    let update = store
        .pending("t", None, usize::MAX)
        .unwrap()
        .into_iter()
        .find(|d| d.event_type == "s.updated")
        .unwrap();
    let text = String::from_utf8(update.body).unwrap();
    assert!(
        text.contains(r#""op":"replace","path":"/v","value":18446744073709551618"#),
        "{text}"
    );
    // The same price written another way is no change.
    h.api.set_fault(Fault::Body(
        body("18446744073709551618").replace("9.90", "9.9"),
    ));
    let r = poller.poll(source).await.unwrap();
    assert_eq!((r.created, r.updated, r.deleted), (0, 0, 0), "{r:?}");
}

/// A poll's memory grows with the items it finds, so a source's `max_items` bounds it: a
/// response with more fails the poll, names the setting, and changes nothing.
#[tokio::test]
async fn a_response_with_more_than_max_items_changes_nothing() {
    let h = harness!();
    for i in 0..10 {
        h.api.set(&i.to_string(), json!({"n": i}));
    }
    let config = h.config("baseline = false\nmax_items = 10", "");
    let source = &config.sources["s"];
    let (poller, store) = poller(&h, &config);
    assert_eq!(poller.poll(source).await.unwrap().created, 10);
    let before = queued(&store);
    h.api.set("10", json!({"n": 10}));
    let err = poller.poll(source).await.unwrap_err().to_string();
    assert!(
        err.contains("more than max_items = 10 items") && err.contains("raise max_items"),
        "{err}"
    );
    assert_eq!(queued(&store), before);
    assert_eq!(store.source_state("s").unwrap().items, 10);
    // Within the limit again: the poll goes on from what it held.
    h.api.remove("10");
    h.api.set("3", json!({"n": 33}));
    let r = poller.poll(source).await.unwrap();
    assert_eq!((r.created, r.updated, r.deleted), (0, 1, 0), "{r:?}");
}

/// A poll with more events than one commit holds stages them in chunks before it
/// commits its snapshot: every event under the poll's generation. A crash before the
/// snapshot commit queues nothing (so no target hears of a change the store never
/// recorded, which the source may undo before the next poll) and loses nothing: the next
/// poll detects the same changes under the same ids and queues each once.
#[tokio::test]
async fn a_poll_of_many_changes_commits_in_chunks_and_a_crash_between_them_loses_nothing() {
    let h = harness!();
    let chunk = pollhook::poll::CHUNK;
    let n = chunk * 2 + 1_000;
    let items: Vec<serde_json::Value> = (0..n).map(|i| json!({"id": i, "v": 0})).collect();
    h.api
        .set_fault(Fault::Body(json!({ "items": items }).to_string()));
    let config = h.config("baseline = false", "");
    let source = &config.sources["s"];
    let (poller, store) = poller(&h, &config);
    // The first chunk of events is staged, then the process dies.
    let mut plan = poller.plan(source, chrono::Utc::now()).await.unwrap();
    assert_eq!(plan.report.events, n);
    let first = plan.next_commit().unwrap().unwrap();
    assert!(first.events_only && first.upserts.is_empty());
    assert_eq!(first.events.len(), chunk);
    let early: Vec<String> = first.events.iter().map(|(e, _)| e.id.clone()).collect();
    store.commit_poll(first).unwrap();
    drop(plan);
    let state = store.source_state("s").unwrap();
    assert_eq!(
        (state.generation, state.items, state.initialized),
        (0, 0, false)
    );
    assert_eq!(
        queued(&store).len(),
        0,
        "an event of a poll that never committed was queued"
    );
    // The next poll finds every change again and commits them all.
    let r = poller.poll(source).await.unwrap();
    assert_eq!((r.created, r.events), (n, n));
    let state = store.source_state("s").unwrap();
    assert_eq!((state.generation, state.items), (1, n as u64));
    let pending = store.pending("t", None, usize::MAX).unwrap();
    assert_eq!(
        pending.len(),
        n,
        "the crashed poll's staged events were queued too"
    );
    let mut ids: Vec<&str> = pending.iter().map(|d| d.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "a re-detected change got a new id");
    assert!(early
        .iter()
        .all(|id| ids.binary_search(&id.as_str()).is_ok()));
    let mut items: Vec<&str> = pending.iter().map(|d| d.item_id.as_str()).collect();
    items.sort();
    items.dedup();
    assert_eq!(items.len(), n, "an item's change is missing");
    for d in &pending {
        store.ack("t", d.seq).unwrap();
    }
    // One poll that updates them all: three chunks, one generation, n distinct ids.
    let items: Vec<serde_json::Value> = (0..n).map(|i| json!({"id": i, "v": 1})).collect();
    h.api
        .set_fault(Fault::Body(json!({ "items": items }).to_string()));
    let r = poller.poll(source).await.unwrap();
    assert_eq!((r.updated, r.events), (n, n));
    assert_eq!(store.source_state("s").unwrap().generation, 2);
    let updates: Vec<_> = store
        .pending("t", None, usize::MAX)
        .unwrap()
        .into_iter()
        .filter(|d| d.event_type == "s.updated")
        .collect();
    assert_eq!(updates.len(), n);
    let order: Vec<usize> = updates.iter().map(|d| d.item_id.parse().unwrap()).collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "staged chunks reached the outbox out of detection order"
    );
    let generation_of_ids: std::collections::HashSet<&str> =
        updates.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(generation_of_ids.len(), n);
    // Each id is the one a single commit at generation 2 would give.
    let d = &updates[n - 1];
    let body: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
    let version = pollhook::diff::fingerprint(&body["data"]["object"], &[]);
    assert_eq!(
        d.event_id,
        pollhook::event::event_id(
            "s",
            2,
            &d.item_id,
            pollhook::diff::ChangeKind::Updated,
            &version
        )
    );
}

/// An item a page walk sees on two pages (the list shifted between requests) is one
/// item: the count stored is the snapshot's, so the next poll finds what it expects.
#[tokio::test]
async fn an_item_seen_on_two_pages_counts_once() {
    use pollhook::extract::{Collection, Item};
    use pollhook::poll::{plan_fetched, Fetched};
    let h = harness!();
    let config = h.config("", "");
    let source = &config.sources["s"];
    let store = h.store();
    let store = &*store;
    let item = |id: &str| Item {
        id: id.into(),
        value: json!({"id": id}),
    };
    let pages = || Fetched::Items {
        items: vec![item("a"), item("b"), item("b"), item("c")],
        pages: 2,
        complete: true,
        collection: Some(Collection::Array),
    };
    let plan = plan_fetched(store, source, pages(), chrono::Utc::now()).unwrap();
    assert_eq!(plan.report.items, 3);
    plan.commit_all(store, || {}).unwrap();
    assert_eq!(store.source_state("s").unwrap().items, 3);
    let again = plan_fetched(store, source, pages(), chrono::Utc::now()).unwrap();
    assert_eq!((again.report.items, again.report.events), (3, 0));
}
