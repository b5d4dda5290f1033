//! Each target chooses its events (`types`, `filter`) and its body (`body`,
//! `content_type`): what each is queued, and the README's chat recipes, taken from the
//! README itself, against receivers that check what each service documents.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use pollhook::demo::receiver::Receiver;
use pollhook::sign::{verify_request, Scheme};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{accepted, wait_for, SECRET};

/// What a service checks in a request: Ok, or its 400's reason.
type Check = fn(&HeaderMap, &[u8]) -> Result<(), String>;

/// One request a capture got, with what it answered.
#[derive(Clone, Debug)]
struct Got {
    headers: HeaderMap,
    body: Vec<u8>,
    status: u16,
}

#[derive(Clone)]
struct Capture {
    log: Arc<Mutex<Vec<Got>>>,
    check: Check,
    /// Answers 500 to the first request (to see the retry send the same bytes).
    fail_first: bool,
}

impl Capture {
    async fn start(check: Check, fail_first: bool, stop: CancellationToken) -> (Capture, String) {
        let c = Capture {
            log: Arc::default(),
            check,
            fail_first,
        };
        let app = Router::new()
            .route("/", post(capture))
            .with_state(c.clone());
        let addr = pollhook::demo::serve_loopback(app, stop, "capture")
            .await
            .unwrap();
        (c, format!("http://{addr}/"))
    }

    fn got(&self) -> Vec<Got> {
        self.log.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.status == 200).collect()
    }
}

async fn capture(
    State(c): State<Capture>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut log = c.log.lock().unwrap();
    let (status, text) = if c.fail_first && log.is_empty() {
        (500, "try again".to_string())
    } else {
        match (c.check)(&headers, &body) {
            Ok(()) => (200, "ok".to_string()),
            Err(why) => (400, why),
        }
    };
    log.push(Got {
        headers,
        body: body.to_vec(),
        status,
    });
    (StatusCode::from_u16(status).unwrap(), text)
}

fn content_type(h: &HeaderMap) -> &str {
    h.get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

fn json_body(h: &HeaderMap, body: &[u8]) -> Result<Value, String> {
    if !content_type(h).starts_with("application/json") {
        return Err(format!("content type {:?}, not JSON", content_type(h)));
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid_payload: {e}"))
}

fn chars(v: &Value) -> usize {
    v.as_str().map_or(0, |s| s.chars().count())
}

/// Slack: `text`, or `blocks` (each with a type; a section's text at most 3,000
/// characters, mrkdwn or plain_text).
fn slack(h: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let v = json_body(h, body)?;
    let text = v["text"].as_str().is_some_and(|t| !t.is_empty());
    let blocks = v["blocks"].as_array();
    if !text && blocks.is_none_or(|b| b.is_empty()) {
        return Err("no_text".into());
    }
    for b in blocks.into_iter().flatten() {
        if !b["type"].is_string() {
            return Err("invalid_blocks: a block without type".into());
        }
        if b["type"] == "section" {
            let t = &b["text"];
            if !matches!(t["type"].as_str(), Some("mrkdwn" | "plain_text"))
                || chars(&t["text"]) == 0
            {
                return Err("invalid_blocks: section text".into());
            }
            if chars(&t["text"]) > 3000 {
                return Err("invalid_blocks: section text longer than 3000".into());
            }
        }
    }
    Ok(())
}

/// Discord: `content` (at most 2,000 characters) or `embeds` (at most 10; a title at
/// most 256, a description at most 4,096).
fn discord(h: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let v = json_body(h, body)?;
    let content = chars(&v["content"]);
    let embeds = v["embeds"].as_array();
    if content == 0 && embeds.is_none_or(|e| e.is_empty()) {
        return Err("50006: Cannot send an empty message".into());
    }
    if content > 2000 {
        return Err("content: Must be 2000 or fewer in length.".into());
    }
    let embeds = embeds.cloned().unwrap_or_default();
    if embeds.len() > 10 {
        return Err("embeds: Must be 10 or fewer in length.".into());
    }
    for e in &embeds {
        if chars(&e["title"]) > 256 || chars(&e["description"]) > 4096 {
            return Err("embeds.0.title: Must be 256 or fewer in length.".into());
        }
        if !e["url"].is_null() && !e["url"].as_str().is_some_and(|u| u.starts_with("http")) {
            return Err("embeds.0.url: Not a well formed URL.".into());
        }
    }
    Ok(())
}

/// Teams (Workflows): a message whose attachments are Adaptive Cards.
fn teams(h: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let v = json_body(h, body)?;
    if v["type"] != "message" {
        return Err("type must be \"message\"".into());
    }
    let attachments = v["attachments"].as_array().filter(|a| !a.is_empty());
    for a in attachments.ok_or("no attachments")? {
        if a["contentType"] != "application/vnd.microsoft.card.adaptive" {
            return Err("attachment is not an Adaptive Card".into());
        }
        let card = &a["content"];
        if card["type"] != "AdaptiveCard" || !card["version"].is_string() {
            return Err("content is not an AdaptiveCard with a version".into());
        }
        let body = card["body"].as_array().ok_or("card has no body")?;
        if body.iter().any(|e| !e["type"].is_string()) {
            return Err("card element without type".into());
        }
    }
    Ok(())
}

/// ntfy: the body is the message as plain text (at most 4,096 bytes, else it becomes an
/// attachment), the title a header.
fn ntfy(h: &HeaderMap, body: &[u8]) -> Result<(), String> {
    if !content_type(h).starts_with("text/plain") {
        return Err(format!("content type {:?}", content_type(h)));
    }
    let text = std::str::from_utf8(body).map_err(|_| "not UTF-8")?;
    if text.is_empty() || text.len() > 4096 || text.starts_with('"') {
        return Err(format!("not a plain message: {text:?}"));
    }
    if h.get("title").is_none() {
        return Err("no Title header".into());
    }
    Ok(())
}

/// Mattermost: `text` (Markdown), `username` optional.
fn mattermost(h: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let v = json_body(h, body)?;
    if chars(&v["text"]) == 0 && !v["attachments"].is_array() {
        return Err("Unable to parse incoming data: no text".into());
    }
    if !v["username"].is_null() && !v["username"].is_string() {
        return Err("username is not a string".into());
    }
    Ok(())
}

/// The README's TOML block that starts with `[targets.<name>]`.
fn recipe(name: &str) -> String {
    let readme = include_str!("../../README.md");
    let start = format!("```toml\n[targets.{name}]\n");
    let at = readme
        .find(&start)
        .unwrap_or_else(|| panic!("README has no recipe for [targets.{name}]"));
    let block = &readme[at + "```toml\n".len()..];
    block[..block.find("```").unwrap()].to_string()
}

/// `block` with its url pointing at `url`, and quick retries.
fn aimed(block: &str, url: &str) -> (String, String) {
    let table: toml::Value = toml::from_str(block).unwrap();
    let (name, t) = table["targets"].as_table().unwrap().iter().next().unwrap();
    let secret = t["secret"].as_str().unwrap().to_string();
    let mut out = String::new();
    for line in block.lines() {
        if line.starts_with("url = ") {
            out.push_str(&format!(
                "url = \"{url}\"\nretry = [\"200ms\", \"200ms\", \"200ms\"]\n"
            ));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains(url), "{name}: no url line");
    (out, secret)
}

#[tokio::test]
async fn the_readmes_chat_recipes_make_what_each_service_takes() {
    let mut h = harness!();
    let stop = CancellationToken::new();
    let services: [(&str, Check, bool); 6] = [
        ("slack", slack, true),
        ("discord", discord, false),
        ("discord-embed", discord, false),
        ("teams", teams, false),
        ("ntfy", ntfy, false),
        ("mattermost", mattermost, false),
    ];
    let mut extra = String::new();
    let mut captures = Vec::new();
    for (name, check, fail_first) in services {
        let (c, url) = Capture::start(check, fail_first, stop.clone()).await;
        let (block, secret) = aimed(&recipe(name), &url);
        extra.push_str(&block);
        captures.push((name, c, secret));
    }
    h.start(h.config("", &extra));
    h.polls(2).await;
    // A title that needs escaping for Slack, and one longer than Discord's limits.
    h.api.set(
        "1",
        json!({"title": "Fish & <Chips>", "url": "https://example.com/1"}),
    );
    h.api.set(
        "2",
        json!({"title": "x".repeat(2500), "url": "https://example.com/2"}),
    );
    for (name, c, _) in &captures {
        wait_for(|| c.accepted().len() == 2 || c.got().iter().any(|g| g.status == 400)).await;
        let refused: Vec<String> = c
            .got()
            .iter()
            .filter(|g| g.status == 400)
            .map(|g| String::from_utf8_lossy(&g.body).chars().take(300).collect())
            .collect();
        assert!(refused.is_empty(), "{name} refused: {refused:#?}");
    }
    h.stop().await;
    stop.cancel();

    let now = chrono::Utc::now().timestamp();
    for (name, c, secret) in &captures {
        for g in c.got() {
            // The signature covers exactly the bytes sent.
            verify_request(
                Scheme::Standard,
                std::slice::from_ref(secret),
                &g.headers,
                &g.body,
                now,
                300,
            )
            .unwrap_or_else(|e| panic!("{name}: signature does not verify: {e}"));
        }
    }
    let slack = &captures[0].1;
    let got = slack.got();
    assert_eq!(got[0].status, 500, "the first attempt is refused");
    let first_id = got[0].headers["webhook-id"].clone();
    let again: Vec<&Got> = got
        .iter()
        .filter(|g| g.headers["webhook-id"] == first_id)
        .collect();
    assert!(again.len() >= 2, "{got:#?}");
    assert!(
        again.iter().all(|g| g.body == again[0].body),
        "every attempt sends the same bytes"
    );
    let texts: Vec<Value> = slack
        .accepted()
        .iter()
        .map(|g| serde_json::from_slice(&g.body).unwrap())
        .collect();
    let mrkdwn: Vec<&str> = texts
        .iter()
        .map(|v| v["blocks"][0]["text"]["text"].as_str().unwrap())
        .collect();
    assert!(
        mrkdwn.contains(&"*s.created*\n<https://example.com/1|Fish &amp; &lt;Chips&gt;>"),
        "{mrkdwn:#?}"
    );
    let ntfy = &captures[4].1;
    let messages: Vec<String> = ntfy
        .accepted()
        .iter()
        .map(|g| String::from_utf8(g.body.clone()).unwrap())
        .collect();
    assert!(
        messages.contains(&"s.created: Fish & <Chips> https://example.com/1".to_string()),
        "{messages:#?}"
    );
    assert_eq!(ntfy.accepted()[0].headers["title"], "pollhook");
}

#[tokio::test]
async fn each_target_is_queued_only_the_events_it_takes() {
    let mut h = harness!();
    let stop = CancellationToken::new();
    let deletions = Receiver::start(Scheme::Standard, vec![SECRET.into()], stop.clone())
        .await
        .unwrap();
    let open = Receiver::start(Scheme::Standard, vec![SECRET.into()], stop.clone())
        .await
        .unwrap();
    // Both refuse everything: what reaches their outboxes stays there to be counted.
    deletions.set_status(500);
    open.set_status(500);
    let extra = format!(
        r#"
[targets.deletions]
url = "{}"
secret = "{SECRET}"
types = ["*.deleted"]
retry = ["1h"]

[targets.open]
url = "{}"
secret = "{SECRET}"
filter = '.data.object.state == "open"'
retry = ["1h"]
"#,
        deletions.url(),
        open.url()
    );
    h.start(h.config("", &extra));
    h.polls(2).await;
    h.api.set("a", json!({"state": "open"}));
    h.api.set("b", json!({"state": "closed"}));
    h.polls(2).await;
    h.api.set("b", json!({"state": "open"}));
    h.api.remove("a");
    h.received("every event on t", |r| {
        accepted(r, "s.created").count() == 2
            && accepted(r, "s.updated").count() == 1
            && accepted(r, "s.deleted").count() == 1
    })
    .await;
    // The deletion of a waits behind a's creation, which is retried in an hour.
    wait_for(|| deletions.received().len() == 1 && open.received().len() == 2).await;
    h.stop().await;
    stop.cancel();

    let store = h.store();
    let queued = |target: &str| -> Vec<(String, String)> {
        store
            .outbox(Some(target), 100)
            .unwrap()
            .into_iter()
            .map(|d| (d.event_type, d.item_id))
            .collect()
    };
    assert_eq!(queued("deletions"), [("s.deleted".into(), "a".into())]);
    // Created a (open), updated b (now open), deleted a (open as last seen); not the
    // creation of b, which was closed.
    assert_eq!(
        queued("open"),
        [
            ("s.created".into(), "a".into()),
            ("s.updated".into(), "b".into()),
            ("s.deleted".into(), "a".into())
        ]
    );
    assert_eq!(queued("t"), []);
}

#[tokio::test]
async fn a_body_that_fails_on_an_event_fails_the_poll_and_queues_nothing() {
    let mut h = harness!();
    let extra = "[targets.t2]\nurl = \"{URL}\"\nsecret = \"{SECRET}\"\nbody = '{n: (.data.object.n + 1)}'\n"
        .replace("{URL}", &h.rx.url())
        .replace("{SECRET}", SECRET);
    h.start(h.config("", &extra));
    h.polls(2).await;
    h.api.set("ok", json!({"n": 1}));
    h.received("the good event", |r| {
        r.iter().filter(|r| r.status == 200).count() == 2
    })
    .await;
    // A string where the program adds a number: the poll fails, nothing is queued for
    // any target (t neither), and it stays so.
    h.api.set("bad", json!({"n": "one"}));
    h.polls(4).await;
    assert_eq!(
        h.rx.received().len(),
        2,
        "nothing of the failing poll is sent"
    );
    h.stop().await;
    assert_eq!(crate::support::pending(&*h.store(), "t"), 0);
    assert_eq!(crate::support::pending(&*h.store(), "t2"), 0);
}
