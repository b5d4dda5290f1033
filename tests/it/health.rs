//! Health events: a source whose polls keep failing is reported once, and its recovery
//! once, across a restart; a target that stops accepting is reported to the other
//! health targets, and its recovery too.

use std::time::Duration;

use pollhook::demo::api::Fault;
use pollhook::demo::receiver::{Received, Receiver};
use pollhook::sign::Scheme;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::{wait_for, SECRET};

/// A health target `ops` posting to `rx`, taking only pollhook's own events.
pub fn ops(rx: &Receiver, health: &str) -> String {
    format!(
        r#"
[health]
targets = ["ops"]
{health}

[targets.ops]
url = "{}"
secret = "{SECRET}"
types = ["pollhook.*"]
retry = ["200ms"]
"#,
        rx.url()
    )
}

fn of_type<'a>(r: &'a [Received], t: &str) -> Vec<&'a Received> {
    r.iter()
        .filter(|r| r.status == 200 && r.event_type == t)
        .collect()
}

#[tokio::test]
async fn a_failing_source_is_reported_once_and_its_recovery_once_across_a_restart() {
    let mut h = harness!();
    let stop = CancellationToken::new();
    let rx = Receiver::start(Scheme::Standard, vec![SECRET.into()], stop.clone())
        .await
        .unwrap();
    let text = h.config_text(
        "query = { api_key = \"hunter2-is-a-secret\" }",
        &ops(&rx, "fail_after = 2"),
    );
    h.start(h.parse_config(&text));
    h.polls(2).await;
    h.api.set_fault(Fault::Status(500));
    wait_for(|| !of_type(&rx.received(), "pollhook.source.failing").is_empty()).await;
    // Failing goes on: no second `failing`, not even after a restart.
    h.polls(2).await;
    h.stop().await;
    h.start(h.parse_config(&text));
    h.polls(3).await;
    assert_eq!(rx.received().len(), 1, "{:#?}", rx.received());

    h.api.set_fault(Fault::None);
    wait_for(|| !of_type(&rx.received(), "pollhook.source.recovered").is_empty()).await;
    h.polls(3).await;
    h.stop().await;
    stop.cancel();

    let got = rx.received();
    assert_eq!(got.len(), 2, "{got:#?}");
    let failing = &got[0].body;
    assert_eq!(failing["type"], "pollhook.source.failing");
    assert_eq!(failing["source"], "pollhook");
    assert_eq!(failing["data"]["source"], "s");
    assert_eq!(failing["data"]["failures"], 2);
    let error = failing["data"]["error"].as_str().unwrap();
    assert!(error.contains("500"), "{error}");
    assert!(
        !got.iter().any(|r| r.body.to_string().contains("hunter2")),
        "a secret in a health event: {got:#?}"
    );
    let since = failing["data"]["failing_since"].as_str().unwrap();
    let recovered = &got[1].body;
    assert_eq!(recovered["type"], "pollhook.source.recovered");
    assert_eq!(recovered["data"]["failing_since"], since);
    assert!(recovered["data"]["failures"].as_u64().unwrap() >= 3);
    assert!(recovered["data"]["down_seconds"].is_u64());
    assert!(got.iter().all(|r| r.verified), "signed like every event");
    // The main target takes every type, but health events go to health targets only.
    assert!(h
        .rx
        .received()
        .iter()
        .all(|r| !r.event_type.starts_with("pollhook.")));
}

#[tokio::test]
async fn a_target_that_stops_accepting_is_reported_to_the_other_health_targets() {
    let mut h = harness!();
    let stop = CancellationToken::new();
    let ops_rx = Receiver::start(Scheme::Standard, vec![SECRET.into()], stop.clone())
        .await
        .unwrap();
    let app_rx = Receiver::start(Scheme::Standard, vec![SECRET.into()], stop.clone())
        .await
        .unwrap();
    // `app` is a health target too: it is told of others, never of itself. Its retries
    // last longer than the test, so its delivery stays pending until it accepts.
    let extra = ops(&ops_rx, "target_alert_after = \"1s\"")
        .replace("targets = [\"ops\"]", "targets = [\"ops\", \"app\"]")
        + &format!(
            "\n[targets.app]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry = [{}]\n",
            app_rx.url(),
            vec!["\"300ms\""; 60].join(", ")
        );
    h.start(h.config("", &extra));
    h.polls(2).await;
    app_rx.set_status(503);
    h.api.set("1", json!({"v": 1}));
    wait_for(|| !of_type(&ops_rx.received(), "pollhook.target.failing").is_empty()).await;
    app_rx.set_status(200);
    wait_for(|| !of_type(&ops_rx.received(), "pollhook.target.recovered").is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.stop().await;
    stop.cancel();

    let got = ops_rx.received();
    let types: Vec<&str> = got.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["pollhook.target.failing", "pollhook.target.recovered"],
        "{got:#?}"
    );
    assert_eq!(got[0].body["data"]["target"], "app");
    assert!(
        got[0].body["data"]["oldest_pending_age_seconds"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(got[1].body["data"]["target"], "app");
    // `app` got its own events, not the news of its own failing.
    assert!(app_rx
        .received()
        .iter()
        .all(|r| !r.event_type.starts_with("pollhook.")));
}
