//! Delivery semantics: retries, ids, per-item order, isolation, dead letters.

use std::time::{Duration, Instant};

use pollhook::demo::receiver::Receiver;
use pollhook::sign::Scheme;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{accepted, pending, summary, SECRET};

#[tokio::test]
async fn retries_keep_one_id_until_the_target_accepts() {
    let mut h = harness!();
    h.start(h.config("", ""));
    h.polls(2).await;
    h.rx.set_status(500);
    h.api.set("1", json!({"name": "apple"}));
    h.received("three failed attempts", |r| r.len() >= 3).await;
    h.rx.set_status(200);
    let got = h
        .received("acceptance", |r| accepted(r, "s.created").count() == 1)
        .await;
    let ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "ids changed between attempts: {ids:?}"
    );
    assert!(
        got.iter().all(|r| r.verified),
        "every attempt is signed afresh"
    );
    // The body is the same bytes on every attempt.
    assert!(got.iter().all(|r| r.body == got[0].body));
    h.stop().await;
    assert_eq!(pending(&*h.store(), "t"), 0);
}

#[tokio::test]
async fn a_retrying_item_holds_back_only_its_own_later_events() {
    let mut h = harness!();
    h.api.set("a", json!({"v": 0}));
    h.api.set("b", json!({"v": 0}));
    h.start(h.config("", ""));
    h.polls(2).await;
    h.rx.fail_item(Some("a"));
    // Three versions of a, each seen by a poll, queue three events of a in order.
    for v in 1..=3 {
        h.api.set("a", json!({"v": v}));
        h.polls(2).await;
    }
    // Meanwhile b's change goes straight through.
    h.api.set("b", json!({"v": 1}));
    h.received("b delivered while a fails", |r| {
        r.iter().any(|r| r.item_id == "b" && r.status == 200)
    })
    .await;
    // Only a's first event has been tried: the later ones wait behind it.
    let tried_a: Vec<String> =
        h.rx.received()
            .iter()
            .filter(|r| r.item_id == "a")
            .map(|r| r.id.clone())
            .collect();
    assert!(
        tried_a.iter().all(|id| *id == tried_a[0]),
        "a later event of a overtook a retrying one: {tried_a:?}"
    );

    h.rx.fail_item(None);
    let got = h
        .received("all of a", |r| {
            r.iter()
                .filter(|r| r.item_id == "a" && r.status == 200)
                .count()
                == 3
        })
        .await;
    let versions: Vec<i64> = got
        .iter()
        .filter(|r| r.item_id == "a" && r.status == 200)
        .map(|r| r.body["data"]["object"]["v"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3], "{:#?}", summary(&got));
    h.stop().await;
}

#[tokio::test]
async fn a_dead_target_does_not_delay_a_healthy_one() {
    let mut h = harness!();
    let slow = Receiver::start(
        Scheme::Standard,
        vec![SECRET.into()],
        CancellationToken::new(),
    )
    .await
    .unwrap();
    slow.set_delay(Duration::from_secs(5));
    let extra = format!(
        "[targets.slow]\nurl = \"{}\"\nsecret = \"{SECRET}\"\ntimeout = \"10s\"\nmax_in_flight = 1\n",
        slow.url()
    );
    h.start(h.config("", &extra));
    h.polls(2).await;
    for i in 0..5 {
        h.api.set(&i.to_string(), json!({"n": i}));
    }
    let started = Instant::now();
    h.received("all five on the healthy target", |r| {
        accepted(r, "s.created").count() == 5
    })
    .await;
    let took = started.elapsed();
    // The slow target holds one request for 5 s and the rest queue behind it; the healthy
    // one must not wait for that.
    assert!(
        took < Duration::from_secs(4),
        "healthy target took {took:?}"
    );
    assert!(slow.received().len() <= 1);
    h.stop().await;
}

#[tokio::test]
async fn gone_stops_at_once_and_the_last_retry_buries() {
    let mut h = harness!();
    let short =
        "[targets.short]\nurl = \"{URL}\"\nsecret = \"{SECRET}\"\nretry = [\"100ms\", \"100ms\"]\n";
    let extra = short
        .replace("{URL}", &h.rx.url())
        .replace("{SECRET}", SECRET);
    h.start(h.config("", &extra));
    h.polls(2).await;
    h.rx.set_status(410);
    h.api.set("gone", json!({}));
    // Target t: one attempt, then dead. Target short: one attempt too.
    h.received("410s", |r| r.len() >= 2).await;
    h.polls(4).await;
    assert_eq!(
        h.rx.received().len(),
        2,
        "410 was retried: {:#?}",
        summary(&h.rx.received())
    );

    h.rx.set_status(503);
    h.api.set("flaky", json!({}));
    // short: 1 attempt + 2 retries, then dead; t keeps retrying (10 retries).
    h.received("short's three attempts", |r| {
        r.iter().filter(|r| r.item_id == "flaky").count() >= 6
    })
    .await;
    h.stop().await;

    let store = h.store();
    let dead_short = store.dead(Some("short"), 100).unwrap();
    let dead_t = store.dead(Some("t"), 100).unwrap();
    assert_eq!(dead_t.len(), 1);
    assert_eq!(dead_t[0].item_id, "gone");
    assert!(dead_t[0].last_error.as_deref().unwrap().contains("410"));
    let flaky: Vec<_> = dead_short.iter().filter(|d| d.item_id == "flaky").collect();
    assert_eq!(flaky.len(), 1, "{dead_short:#?}");
    assert_eq!(flaky[0].attempts, 3);
    assert!(flaky[0].last_error.as_deref().unwrap().contains("503"));
    assert_eq!(pending(&*store, "short"), 0);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let mut h = harness!();
    h.start(h.config("", ""));
    h.polls(2).await;
    h.rx.set_status(429);
    h.rx.set_retry_after(Some(2));
    h.api.set("1", json!({}));
    h.received("first attempt", |r| !r.is_empty()).await;
    h.rx.set_status(200);
    let got = h
        .received("acceptance", |r| r.iter().any(|r| r.status == 200))
        .await;
    // The schedule says 200 ms; Retry-After asked for 2 s and wins.
    let gap = got[1].at_ms - got[0].at_ms;
    assert!(
        gap >= 1_900,
        "retried after {gap} ms despite Retry-After: 2"
    );
    assert_eq!(got.len(), 2);
    h.stop().await;
}
