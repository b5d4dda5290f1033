//! The admin API of an in-process daemon: health and readiness, source status, the
//! Prometheus metrics, listing and replaying dead deliveries, poll now and dry runs.

use std::time::Duration;

use pollhook::demo::api::Fault;
use serde_json::{json, Value};

use crate::support::{accepted, free_port, wait_for, with_admin, Harness, WAIT};

/// A harness daemon with its admin API on a free port; returns the API's base URL.
pub(crate) async fn start(h: &mut Harness, config_text: &str) -> String {
    let port = free_port();
    let config = h.write_config(&with_admin(config_text, port));
    h.start(config);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await {
            if r.status() == 200 {
                return base;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin API never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(&url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

pub(crate) async fn get_json(url: String) -> Value {
    let (status, body) = get(url.clone()).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).unwrap()
}

pub(crate) async fn post(url: String, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

/// Waits until `GET url` satisfies `pred`.
async fn wait_json(url: String, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = get_json(url.clone()).await;
        if pred(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never matched; last: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_status_and_metrics_follow_polls_and_deliveries() {
    let mut h = harness!();
    h.api.set("1", json!({"v": 1}));
    let text = h.config_text("baseline = false", "");
    let base = start(&mut h, &text).await;
    h.received("the created event", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;

    let (status, _) = get(format!("{base}/healthz")).await;
    assert_eq!(status, 200);
    let sources = wait_json(format!("{base}/v1/sources"), |v| {
        v["sources"][0]["polls_ok"].as_u64() >= Some(2)
    })
    .await;
    let s = &sources["sources"][0];
    assert_eq!(s["name"], "s");
    assert_eq!(s["last_outcome"], "ok");
    assert_eq!(s["items"], 1);
    assert!(s["next_poll"].is_string(), "{s:#}");

    // The delivery's counters land when its attempt ends, just after the receiver saw it.
    let metrics = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, text) = get(format!("{base}/metrics")).await;
            assert_eq!(status, 200);
            if text.contains("pollhook_deliveries_total{target=\"t\",outcome=\"delivered\"} 1")
                || tokio::time::Instant::now() > deadline
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for line in [
        "pollhook_polls_total{source=\"s\",outcome=\"ok\"}",
        "pollhook_poll_duration_seconds_count{source=\"s\"}",
        "pollhook_source_items{source=\"s\"} 1",
        "pollhook_changes_total{source=\"s\",kind=\"created\"} 1",
        "pollhook_deliveries_total{target=\"t\",outcome=\"delivered\"} 1",
        "pollhook_delivery_duration_seconds_count{target=\"t\"} 1",
        "pollhook_pending_deliveries{target=\"t\"} 0",
        "pollhook_dead_deliveries{target=\"t\"} 0",
        "pollhook_oldest_pending_age_seconds{target=\"t\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
    // Labels are names only: no URL (which may hold a token) reaches the metrics.
    assert!(!metrics.contains("127.0.0.1"), "{metrics}");

    // A failing source shows its error, and is counted.
    h.api.set_fault(Fault::Status(503));
    let sources = wait_json(format!("{base}/v1/sources"), |v| {
        v["sources"][0]["last_outcome"] == "error"
    })
    .await;
    let s = &sources["sources"][0];
    assert!(s["last_error"].as_str().unwrap().contains("503"), "{s:#}");
    assert!(s["consecutive_failures"].as_u64() >= Some(1));
    let (_, metrics) = get(format!("{base}/metrics")).await;
    assert!(metrics.contains("pollhook_polls_total{source=\"s\",outcome=\"error\"}"));

    // The error shows its cause, not only pollhook's words for it: the JSON parser's
    // "at line 1 column …" comes after "response is not valid JSON".
    h.api.set_fault(Fault::InvalidJson);
    let sources = wait_json(format!("{base}/v1/sources"), |v| {
        v["sources"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not valid JSON"))
    })
    .await;
    let e = sources["sources"][0]["last_error"].as_str().unwrap();
    assert!(
        e.contains("not valid JSON: ") && e.contains(" at line 1 column "),
        "{e}"
    );

    // The cluster: none for a single node on sled; this one instance on PostgreSQL,
    // holding the source and the target.
    let cluster = get_json(format!("{base}/v1/cluster")).await;
    if crate::support::on_postgres() {
        let c = &cluster["cluster"];
        assert_eq!(
            c["instances"].as_array().map(Vec::len),
            Some(1),
            "{cluster:#}"
        );
        let me = c["instance"].as_str().unwrap();
        let sources = get_json(format!("{base}/v1/sources")).await;
        assert_eq!(sources["sources"][0]["holder"], me, "{sources:#}");
    } else {
        assert!(cluster["cluster"].is_null(), "{cluster:#}");
    }
    let targets = get_json(format!("{base}/v1/targets")).await;
    assert_eq!(targets["targets"][0]["name"], "t");
    assert_eq!(targets["targets"][0]["pending"], 0);
    h.stop().await;
}

#[tokio::test]
async fn dead_deliveries_are_listed_and_replayed_with_the_same_id_and_bytes() {
    let mut h = harness!();
    h.rx.set_status(500);
    h.api.set("1", json!({"v": 1}));
    let text = h.config_text("baseline = false", "").replacen(
        "retry = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]",
        "retry = [\"100ms\"]",
        1,
    );
    let base = start(&mut h, &text).await;

    let dead = wait_json(format!("{base}/v1/deliveries?status=dead&target=t"), |v| {
        v["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    let d = &dead["deliveries"][0];
    assert_eq!(d["type"], "s.created");
    assert_eq!(d["target"], "t");
    assert_eq!(d["status"], "dead");
    assert_eq!(d["attempts"], 2);
    assert!(d["last_error"].as_str().unwrap().contains("500"), "{d:#}");
    let id = d["event_id"].as_str().unwrap().to_string();
    let (_, metrics) = get(format!("{base}/metrics")).await;
    assert!(
        metrics.contains("pollhook_dead_deliveries{target=\"t\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pollhook_deliveries_total{target=\"t\",outcome=\"dead\"} 1"));

    // Wrong requests say what to send.
    let (status, body) = post(format!("{base}/v1/deliveries/replay"), json!({})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        format!("{base}/v1/deliveries/replay"),
        json!({"event": "evt_nope"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("evt_nope"));
    // Replaying to a target not configured would leave the deliveries with no worker.
    let (status, body) = post(
        format!("{base}/v1/deliveries/replay"),
        json!({"status": "dead", "target": "gone"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("not in the config"));

    h.rx.set_status(200);
    let failed_body = h.rx.received()[0].body.clone();
    let (status, body) = post(
        format!("{base}/v1/deliveries/replay"),
        json!({"status": "dead", "target": "t"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 1);
    let got = h
        .received("the replayed delivery", |r| {
            accepted(r, "s.created").count() == 1
        })
        .await;
    let ok = accepted(&got, "s.created").next().unwrap();
    assert_eq!(ok.id, id, "a replay keeps the event id");
    assert_eq!(ok.body, failed_body, "a replay sends the stored bytes");
    wait_json(format!("{base}/v1/deliveries"), |v| {
        v["deliveries"].as_array().is_some_and(|d| d.is_empty())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn poll_now_and_dry_run() {
    let mut h = harness!();
    h.api.set("1", json!({"v": 1}));
    let text = h
        .config_text("", "")
        .replacen("interval = \"200ms\"", "interval = \"1h\"", 1);
    let base = start(&mut h, &text).await;
    // The first scheduled poll (a silent baseline) comes within the first 10% of the hour
    // at the latest; ask for it now instead of waiting.
    let (status, first) = post(format!("{base}/v1/sources/s/poll"), json!({})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["report"]["items"], 1);

    h.api.set("2", json!({"v": 2}));
    let (status, dry) = post(
        format!("{base}/v1/sources/s/poll"),
        json!({"dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["report"]["created"], 1);
    let events = dry["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{dry:#}");
    assert_eq!(events[0]["type"], "s.created");
    assert_eq!(events[0]["data"]["id"], "2");
    // Nothing was committed or sent.
    let pending = get_json(format!("{base}/v1/deliveries?status=pending")).await;
    assert_eq!(pending["deliveries"].as_array().unwrap().len(), 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.rx.received().is_empty());

    let (status, real) = post(format!("{base}/v1/sources/s/poll"), json!({})).await;
    assert_eq!(status, 200, "{real}");
    assert_eq!(real["report"]["created"], 1);
    assert_eq!(real["report"]["events"], 1);
    let got = h
        .received("the polled change", |r| {
            accepted(r, "s.created").count() == 1
        })
        .await;
    assert_eq!(
        got[0].id, events[0]["id"],
        "the dry run showed the id the real poll sent"
    );

    let (status, body) = post(format!("{base}/v1/sources/nope/poll"), json!({})).await;
    assert_eq!(status, 404, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn the_admin_port_is_released_at_shutdown() {
    let mut h = harness!();
    let text = h.config_text("", "");
    let base = start(&mut h, &text).await;
    h.stop().await;
    wait_for(|| std::net::TcpStream::connect(base.trim_start_matches("http://")).is_err()).await;
}
