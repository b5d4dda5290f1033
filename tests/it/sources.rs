//! Every kind of API users poll, against `shaped_api` on loopback: pagination in each
//! style (and a walk failing on page 3; offsets as PostgREST and Jira take them), conditional requests, auth (bearer, basic,
//! OAuth2 with expiring tokens), POST bodies and queries, feeds, jq transforms,
//! document mode, event types, command sources, Retry-After, backoff, per-host limits.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollhook::config::Config;
use pollhook::poll::{PollReport, Poller};
use pollhook::source::Fetcher;
use pollhook::store::{SharedStore, SledStore};
use tokio_util::sync::CancellationToken;

use crate::shaped_api::{ShapedApi, BEARER};
use crate::support::{accepted, wait_for, Harness, SECRET};

/// A config with target `t` (the harness receiver) and source `s` made of `source`.
fn config(h: &Harness, source: &str) -> Config {
    h.write_config(&config_text(h, source))
}

/// [`config`] read with `env` as the environment: tests never change the process's
/// environment, which other test threads read at the same time.
fn config_with_env(h: &Harness, source: &str, env: &[(&str, &str)]) -> Config {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    Config::parse(
        &config_text(h, source),
        &h.dir.path().join("config.toml"),
        &lookup,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn config_text(h: &Harness, source: &str) -> String {
    format!(
        r#"state_dir = {state:?}

[admin]
listen = ""

[targets.t]
url = "{rx}"
secret = "{SECRET}"
retry = ["200ms"]
timeout = "2s"

[sources.s]
interval = "100ms"
{source}
"#,
        state = h.state_dir().display().to_string(),
        rx = h.rx.url(),
    )
}

struct Setup {
    h: Harness,
    api: ShapedApi,
    _servers: tokio_util::sync::DropGuard,
}

async fn setup() -> Setup {
    let servers = CancellationToken::new();
    let api = ShapedApi::start(servers.clone()).await;
    Setup {
        h: Harness::new().await.expect("sled needs no server"),
        api,
        _servers: servers.drop_guard(),
    }
}

/// Polls `s` of `config` once, in-process.
async fn poll(config: &Config, store: &SharedStore) -> Result<PollReport, String> {
    let poller = Poller::new(
        store.clone(),
        Fetcher::new(&config.sources).unwrap(),
        pollhook::poll::Wakes::default(),
    );
    poller
        .poll(&config.sources["s"])
        .await
        .map_err(|e| e.to_string())
}

fn ids(store: &SharedStore) -> BTreeSet<String> {
    store.snapshot("s").unwrap().into_keys().collect()
}

fn expect_ids(range: std::ops::Range<usize>) -> BTreeSet<String> {
    range.map(|n| format!("i{n}")).collect()
}

#[tokio::test]
async fn pagination_in_each_style_walks_every_page_and_a_failed_walk_deletes_nothing() {
    let styles = [
        ("link", "url = \"{api}/link\"\nitems = \"\"\n[sources.s.paginate]\nnext = \"link\""),
        (
            "next",
            "url = \"{api}/next\"\nitems = \"/items\"\n[sources.s.paginate]\nnext = \"/links/next\"",
        ),
        (
            "cursor",
            "url = \"{api}/cursor\"\nitems = \"/results\"\n[sources.s.paginate]\ncursor = \"/meta/next_cursor\"\nparam = \"cursor\"",
        ),
        (
            "page",
            "url = \"{api}/pages\"\nitems = \"/data\"\n[sources.s.paginate]\npage = \"page\"\nstart = 1\nsize = \"per_page\"\nsize_value = 2",
        ),
    ];
    for (style, table) in styles {
        let s = setup().await;
        s.api.set_items(0..5, 1);
        let c = config(
            &s.h,
            &table.replace("{api}", &format!("http://{}", s.api.addr)),
        );
        let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());

        let r = poll(&c, &store).await.unwrap();
        assert_eq!(r.items, 5, "{style}: {r:?}");
        assert!(r.pages >= 3, "{style}: five items, two a page: {r:?}");
        assert!(!r.truncated);
        assert_eq!(ids(&store), expect_ids(0..5), "{style}");

        // An item gone from page 2 is a deletion once the whole walk succeeded.
        s.api.set_items([0, 1, 3, 4], 1);
        let r = poll(&c, &store).await.unwrap();
        assert_eq!((r.items, r.deleted), (4, 1), "{style}: {r:?}");

        // A walk that fails on page 3 changes nothing.
        s.api.set_items(0..6, 2);
        s.api.fail_page(Some(3));
        let before = store.snapshot("s").unwrap();
        let err = poll(&c, &store).await.unwrap_err();
        assert!(err.contains("500"), "{style}: {err}");
        assert_eq!(store.snapshot("s").unwrap(), before, "{style}");
        s.api.fail_page(None);
    }
}

#[tokio::test]
async fn a_walk_cut_short_by_max_pages_updates_what_it_saw_and_deletes_nothing() {
    let s = setup().await;
    s.api.set_items(0..6, 1);
    let table = format!(
        "url = \"http://{}/next\"\nitems = \"/items\"\n[sources.s.paginate]\nnext = \"/links/next\"\nmax_pages = 2",
        s.api.addr
    );
    let c = config(&s.h, &table);
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    let r = poll(&c, &store).await.unwrap();
    assert_eq!((r.items, r.pages, r.truncated), (4, 2, true), "{r:?}");
    // i0 is gone and i1 changed: the change is seen, the absence is not a deletion.
    s.api.set_items(1..6, 1);
    s.api.set_items([1, 2, 3, 4, 5], 2);
    let r = poll(&c, &store).await.unwrap();
    // Pages 1-2 now hold i1-i4: three updates and a creation.
    assert_eq!(
        (r.updated, r.created, r.deleted, r.truncated),
        (3, 1, 0, true),
        "{r:?}"
    );
    assert!(ids(&store).contains("i0"), "kept: its page was not fetched");
}

/// The offsets `path` was asked for since request `from` of the API's log, with the
/// page size asked each time.
fn offsets_asked(api: &ShapedApi, from: usize, path: &str) -> Vec<(String, String)> {
    let (offset, limit) = match path {
        "/rows" => ("offset", "limit"),
        _ => ("startAt", "maxResults"),
    };
    api.log()[from..]
        .iter()
        .filter(|r| r.path == path)
        .map(|r| (r.query[offset].clone(), r.query[limit].clone()))
        .collect()
}

#[tokio::test]
async fn offset_pagination_walks_to_a_short_or_empty_page_and_a_failed_walk_deletes_nothing() {
    let apis = [
        (
            "/rows",
            "items = \"\"\n[sources.s.paginate]\noffset = \"offset\"\nsize = \"limit\"\nsize_value = 2",
        ),
        (
            "/search",
            "items = \"/issues\"\n[sources.s.paginate]\noffset = \"startAt\"\nsize = \"maxResults\"\nsize_value = 2",
        ),
    ];
    let asked = |offsets: &[&str]| -> Vec<(String, String)> {
        offsets
            .iter()
            .map(|o| (o.to_string(), "2".into()))
            .collect()
    };
    for (path, table) in apis {
        let s = setup().await;
        let c = config(
            &s.h,
            &format!("url = \"http://{}{path}\"\n{table}", s.api.addr),
        );
        let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());

        // Five items, two a page: the short third page (one item) is the last one asked.
        s.api.set_items(0..5, 1);
        let from = s.api.log().len();
        let r = poll(&c, &store).await.unwrap();
        assert_eq!(
            (r.items, r.pages, r.truncated),
            (5, 3, false),
            "{path}: {r:?}"
        );
        assert_eq!(
            offsets_asked(&s.api, from, path),
            asked(&["0", "2", "4"]),
            "{path}"
        );
        assert_eq!(ids(&store), expect_ids(0..5), "{path}");

        // Four items fill two pages; the empty third page ends the walk, and the item
        // gone is a deletion since the walk was complete.
        s.api.set_items([0, 1, 3, 4], 1);
        let from = s.api.log().len();
        let r = poll(&c, &store).await.unwrap();
        assert_eq!((r.items, r.pages, r.deleted), (4, 3, 1), "{path}: {r:?}");
        assert_eq!(
            offsets_asked(&s.api, from, path),
            asked(&["0", "2", "4"]),
            "{path}"
        );
        assert_eq!(
            ids(&store),
            BTreeSet::from(["i0", "i1", "i3", "i4"].map(String::from))
        );

        // A failed middle page fails the poll: of pages [i0 i1] [i2 i5] [i6], the
        // second answers 500, and nothing is updated, created or deleted.
        s.api.set_items([0, 1, 2, 5, 6], 2);
        s.api.fail_page(Some(2));
        let before = store.snapshot("s").unwrap();
        let err = poll(&c, &store).await.unwrap_err();
        assert!(err.contains("500"), "{path}: {err}");
        assert_eq!(store.snapshot("s").unwrap(), before, "{path}");
        s.api.fail_page(None);
    }
}

#[tokio::test]
async fn an_offset_walk_cut_short_by_max_pages_updates_what_it_saw_and_deletes_nothing() {
    let s = setup().await;
    s.api.set_items(0..6, 1);
    let table = format!(
        "url = \"http://{}/rows\"\nitems = \"\"\n[sources.s.paginate]\noffset = \"offset\"\nsize = \"limit\"\nsize_value = 2\nmax_pages = 2",
        s.api.addr
    );
    let c = config(&s.h, &table);
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    let r = poll(&c, &store).await.unwrap();
    assert_eq!((r.items, r.pages, r.truncated), (4, 2, true), "{r:?}");
    // i0 is gone and the rest changed: pages 1-2 now hold i1-i4, three updates and a
    // creation; i0's absence is not a deletion, since the walk did not reach the end.
    s.api.set_items(1..6, 2);
    let r = poll(&c, &store).await.unwrap();
    assert_eq!(
        (r.updated, r.created, r.deleted, r.truncated),
        (3, 1, 0, true),
        "{r:?}"
    );
    assert!(ids(&store).contains("i0"), "kept: the walk was cut short");
}

#[tokio::test]
async fn conditional_requests_cost_a_304_and_a_change_still_arrives() {
    let mut s = setup().await;
    let c = config(
        &s.h,
        &format!("url = \"http://{}/etag\"\nitems = \"/items\"", s.api.addr),
    );
    s.h.start(c);
    wait_for(|| s.api.not_modified() >= 3).await;
    let log = s.api.log();
    assert!(log[0].headers.get("if-none-match").is_none());
    let later = &log[1];
    assert_eq!(later.headers["if-none-match"], "\"v0\"");
    assert_eq!(
        later.headers["if-modified-since"],
        "Wed, 25 Nov 2026 10:00:00 GMT"
    );
    s.api.bump_version();
    let got =
        s.h.received("the update after 304s", |r| {
            accepted(r, "s.updated").count() == 1
        })
        .await;
    assert_eq!(got[0].body["data"]["object"]["version"], 1);
    let n = s.api.not_modified();
    wait_for(|| s.api.not_modified() > n + 1).await;
    s.h.stop().await;
}

#[tokio::test]
async fn bearer_basic_post_json_and_query() {
    let s = setup().await;
    s.api.set_items(0..3, 1);
    let api = format!("http://{}", s.api.addr);
    for (what, table) in [
        (
            "bearer from a file",
            format!(
                "url = \"{api}/bearer\"\nitems = \"/items\"\n[sources.s.auth]\nbearer_file = \"token\""
            ),
        ),
        (
            "basic from the environment",
            format!(
                "url = \"{api}/basic\"\nitems = \"/items\"\n[sources.s.auth]\nbasic = {{ username = \"alice\", password_env = \"PH_TEST_PASSWORD\" }}"
            ),
        ),
        (
            "GraphQL",
            format!(
                "url = \"{api}/graphql\"\nitems = \"/data/repository/issues/nodes\"\njson = {{ query = \"{{ repository {{ issues {{ nodes {{ id }} }} }} }}\", variables = {{ first = 100 }} }}\nquery = {{ state = \"open\", label = \"a b\" }}"
            ),
        ),
    ] {
        std::fs::write(s.h.dir.path().join("token"), format!("{BEARER}\n")).unwrap();
        let c = config_with_env(&s.h, &table, &[("PH_TEST_PASSWORD", "pa55:word")]);
        let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
        let r = poll(&c, &store).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.items, 3, "{what}");
        drop(store);
        std::fs::remove_dir_all(s.h.state_dir()).unwrap();
    }
    let gql = s
        .api
        .log()
        .into_iter()
        .find(|l| l.path == "/graphql")
        .unwrap();
    assert_eq!(gql.method, "POST", "a body makes the request a POST");
    assert_eq!(gql.headers["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_slice(&gql.body).unwrap();
    assert_eq!(body["variables"]["first"], 100);
    assert_eq!(gql.query["state"], "open");
    assert_eq!(gql.query["label"], "a b");
}

#[tokio::test]
async fn oauth2_tokens_are_cached_refreshed_before_expiry_and_after_a_401() {
    let mut s = setup().await;
    s.api.set_items(0..2, 1);
    s.api.set_token_lifetime(2);
    let api = format!("http://{}", s.api.addr);
    let table = format!(
        "url = \"{api}/oauth-items\"\nitems = \"/items\"\nbaseline = false\n[sources.s.auth]\noauth2 = {{ token_url = \"{api}/token\", client_id = \"pollhook-client\", client_secret_env = \"PH_TEST_CLIENT_SECRET\", scopes = [\"read\", \"items\"] }}"
    );
    let c = config_with_env(
        &s.h,
        &table,
        &[("PH_TEST_CLIENT_SECRET", "s3cr3t-client-secret")],
    );
    s.h.start(c);
    s.h.received("the first items", |r| accepted(r, "s.created").count() == 2)
        .await;
    // About 30 polls in 3 s, and tokens living 2 s: a token is reused, and renewed
    // before it runs out (no poll meets a 401).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let polls = s.api.requests_to("/oauth-items");
    let tokens = s.api.token_requests();
    assert!(polls >= 10, "{polls} polls");
    assert!(
        (2..=4).contains(&tokens),
        "{tokens} token requests for {polls} polls"
    );
    // A revoked token: the 401 gets a new token at once and the poll succeeds.
    s.api.revoke_tokens();
    s.api.set_items(0..3, 1);
    s.h.received("the item after the revocation", |r| {
        accepted(r, "s.created").count() == 3
    })
    .await;
    s.h.stop().await;
    // The client secret and tokens appear in no request but the token endpoint's.
    for l in s.api.log() {
        if l.path != "/token" {
            let auth = l.headers["authorization"].to_str().unwrap().to_string();
            assert!(auth.starts_with("Bearer tok-"), "{auth}");
        }
    }
}

const RSS: &str = r#"<?xml version="1.0"?>
<rss version="2.0"><channel><title>News</title><link>https://news.example/</link><description>d</description>
<item><guid>urn:news:1</guid><title>One</title><link>https://news.example/1</link><pubDate>Wed, 25 Nov 2026 10:00:00 GMT</pubDate></item>
<item><title>Two (no guid)</title><link>https://news.example/2</link><pubDate>Wed, 25 Nov 2026 11:00:00 GMT</pubDate></item>
<item><title>Three (no guid, no link)</title><pubDate>Wed, 25 Nov 2026 12:00:00 GMT</pubDate></item>
</channel></rss>"#;

const ATOM: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Blog</title><id>urn:blog</id><updated>2026-11-25T10:00:00Z</updated>
<entry><id>urn:blog:a</id><title>A</title><link href="https://blog.example/a"/><updated>2026-11-25T10:00:00Z</updated><summary>first</summary><author><name>Ann</name></author></entry>
<entry><id>urn:blog:b</id><title>B</title><link href="https://blog.example/b"/><updated>2026-11-25T11:00:00Z</updated></entry>
</feed>"#;

#[tokio::test]
async fn feeds_become_items_with_stable_ids() {
    let s = setup().await;
    let c = config(
        &s.h,
        &format!(
            "url = \"http://{}/feed\"\nformat = \"feed\"\nbaseline = false",
            s.api.addr
        ),
    );
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    s.api.set_feed("application/rss+xml", RSS);
    let r = poll(&c, &store).await.unwrap();
    assert_eq!((r.items, r.created), (3, 3), "{r:?}");
    let first = ids(&store);
    assert!(first.contains("urn:news:1"), "{first:?}");
    assert!(
        first.contains("https://news.example/2"),
        "no guid: the link: {first:?}"
    );
    // Ids never random: the same document polled again changes nothing.
    let r = poll(&c, &store).await.unwrap();
    assert_eq!((r.created, r.updated, r.deleted), (0, 0, 0), "{r:?}");
    assert_eq!(ids(&store), first);

    // Atom, with a title change on one entry: an update of that entry.
    std::fs::remove_dir_all(s.h.state_dir()).ok();
    drop(store);
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    s.api.set_feed("application/atom+xml", ATOM);
    poll(&c, &store).await.unwrap();
    s.api.set_feed(
        "application/atom+xml",
        &ATOM.replace("<title>B</title>", "<title>B2</title>"),
    );
    let r = poll(&c, &store).await.unwrap();
    assert_eq!((r.updated, r.created), (1, 0), "{r:?}");
    let b = &store.snapshot("s").unwrap()["urn:blog:b"];
    let b: serde_json::Value = serde_json::from_slice(&b.raw).unwrap();
    assert_eq!(b["title"], "B2");
    assert_eq!(b["link"], "https://blog.example/b");
    let a = &store.snapshot("s").unwrap()["urn:blog:a"];
    let a: serde_json::Value = serde_json::from_slice(&a.raw).unwrap();
    assert_eq!(a["authors"], serde_json::json!(["Ann"]));
}

#[tokio::test]
async fn a_jq_transform_shapes_items_and_a_failing_one_fails_the_poll() {
    let s = setup().await;
    s.api.set_items(0..4, 1);
    s.api.set_per_page(10);
    let table = format!(
        "url = \"http://{}/pages\"\ntransform = '.data | map(select(.id != \"i0\") | {{id, version: .v}})'\nitems = \"\"",
        s.api.addr
    );
    let c = config(&s.h, &table);
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    let r = poll(&c, &store).await.unwrap();
    assert_eq!(r.items, 3);
    let i1: serde_json::Value =
        serde_json::from_slice(&store.snapshot("s").unwrap()["i1"].raw).unwrap();
    assert_eq!(i1, serde_json::json!({"id": "i1", "version": 1}));

    let failing = config(
        &s.h,
        &format!(
            "url = \"http://{}/pages\"\ntransform = '.data[0].v | error(\"no good\")'\nitems = \"\"",
            s.api.addr
        ),
    );
    let before = store.snapshot("s").unwrap();
    let err = poll(&failing, &store).await.unwrap_err();
    assert!(err.contains("transform failed"), "{err}");
    assert_eq!(store.snapshot("s").unwrap(), before);
}

#[tokio::test]
async fn document_mode_and_event_type() {
    let mut s = setup().await;
    let c = config(
        &s.h,
        &format!(
            "url = \"http://{}/etag\"\nmode = \"document\"\nevent_type = \"acme.status\"\nbaseline = false",
            s.api.addr
        ),
    );
    s.h.start(c);
    s.h.received("the document", |r| {
        accepted(r, "acme.status.created").count() == 1
    })
    .await;
    s.api.bump_version();
    let got =
        s.h.received("the document's update", |r| {
            accepted(r, "acme.status.updated").count() == 1
        })
        .await;
    let update = accepted(&got, "acme.status.updated").next().unwrap();
    assert_eq!(update.body["source"], "s");
    assert_eq!(
        update.body["data"]["changes"],
        serde_json::json!([{"op": "replace", "path": "/items/0/version", "value": 1}])
    );
    s.h.stop().await;
}

#[tokio::test]
async fn command_sources() {
    let s = setup().await;
    let file = s.h.dir.path().join("things.json");
    std::fs::write(&file, r#"{"items": [{"id": 1}, {"id": 2}]}"#).unwrap();
    let c = config(
        &s.h,
        &format!(
            "command = [\"/bin/sh\", \"-c\", \"cat '{}'\"]\nitems = \"/items\"\ntimeout = \"5s\"",
            file.display()
        ),
    );
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    assert_eq!(poll(&c, &store).await.unwrap().items, 2);
    std::fs::write(&file, r#"{"items": [{"id": 1, "x": 1}, {"id": 2}]}"#).unwrap();
    assert_eq!(poll(&c, &store).await.unwrap().updated, 1);

    // Plenty on stderr must not block the program on a full pipe.
    let chatty = config(
        &s.h,
        &format!(
            "command = [\"/bin/sh\", \"-c\", \"head -c 300000 /dev/zero >&2; cat '{}'\"]\nitems = \"/items\"\ntimeout = \"5s\"",
            file.display()
        ),
    );
    assert_eq!(poll(&chatty, &store).await.unwrap().items, 2);

    let failing = config(
        &s.h,
        "command = [\"/bin/sh\", \"-c\", \"echo oops >&2; exit 3\"]\nitems = \"/items\"",
    );
    let before = store.snapshot("s").unwrap();
    let err = poll(&failing, &store).await.unwrap_err();
    assert!(err.contains("status 3") && err.contains("oops"), "{err}");
    let slow = config(
        &s.h,
        "command = [\"/bin/sh\", \"-c\", \"sleep 5\"]\nitems = \"/items\"\ntimeout = \"300ms\"",
    );
    let started = Instant::now();
    let err = poll(&slow, &store).await.unwrap_err();
    assert!(
        err.contains("timeout") && started.elapsed() < Duration::from_secs(3),
        "{err}"
    );
    assert_eq!(store.snapshot("s").unwrap(), before);
}

#[tokio::test]
async fn retry_after_and_backoff_space_out_polls_of_a_failing_source() {
    let mut s = setup().await;
    s.api.set_items(0..1, 1);
    s.api.rate_limit(Some(2));
    let c = config(
        &s.h,
        &format!(
            "url = \"http://{}/limited\"\nitems = \"/items\"",
            s.api.addr
        ),
    );
    s.h.start(c);
    wait_for(|| s.api.requests_to("/limited") >= 2).await;
    s.h.stop().await;
    let times = s.api.requests_times("/limited");
    let gap = times[1] - times[0];
    assert!(
        gap >= Duration::from_millis(1800),
        "Retry-After: 2 was not waited out: {gap:?}"
    );

    // Failures in a row back off (100 ms doubling to a 400 ms cap), and a success
    // returns to the schedule.
    let mut s = setup().await;
    s.api.set_items(0..1, 1);
    s.api.fail_page(Some(1));
    let c = config(
        &s.h,
        &format!(
            "url = \"http://{}/pages\"\nitems = \"/data\"\nmax_backoff = \"400ms\"",
            s.api.addr
        ),
    );
    s.h.start(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let failing = s.api.requests_to("/pages");
    assert!(
        (3..=11).contains(&failing),
        "{failing} polls in 2.5 s: at most one per 400 ms once backed off"
    );
    s.api.fail_page(None);
    wait_for(|| s.api.requests_to("/pages") >= failing + 10).await;
    s.h.stop().await;
}

#[tokio::test]
async fn at_most_max_per_host_polls_in_flight_to_one_host() {
    let s = setup().await;
    let mut text = format!(
        "state_dir = {:?}\nmax_per_host = 2\n\n[admin]\nlisten = \"\"\n\n[targets.t]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        s.h.state_dir().display().to_string(),
        s.h.rx.url()
    );
    for n in 0..6 {
        text.push_str(&format!(
            "\n[sources.s{n}]\nurl = \"http://{}/slow\"\ninterval = \"100ms\"\nitems = \"/items\"\n",
            s.api.addr
        ));
    }
    let mut h = s.h;
    let c = h.write_config(&text);
    h.start(c);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    h.stop().await;
    assert!(
        s.api.requests_to("/slow") >= 6,
        "{}",
        s.api.requests_to("/slow")
    );
    assert_eq!(s.api.max_in_flight(), 2, "max_per_host = 2");
}

#[tokio::test]
async fn walks_stay_on_their_origin_and_under_max_body() {
    let s = setup().await;
    s.api.set_items(0..6, 1);
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    // Credentials go only where the source's url points: a next page elsewhere fails.
    let c = config(
        &s.h,
        &format!(
            "url = \"http://{}/foreign\"\nitems = \"/items\"\n[sources.s.auth]\nbearer = \"{BEARER}\"\n[sources.s.paginate]\nnext = \"/links/next\"",
            s.api.addr
        ),
    );
    let err = poll(&c, &store).await.unwrap_err();
    assert!(err.contains("another origin"), "{err}");
    assert_eq!(
        s.api.requests_to("/next"),
        0,
        "the foreign page was not fetched"
    );
    assert!(store.snapshot("s").unwrap().is_empty());
    // max_body caps the whole walk: three pages of about 80 bytes against 150.
    let c = config(
        &s.h,
        &format!(
            "url = \"http://{}/next\"\nitems = \"/items\"\nmax_body = 150\n[sources.s.paginate]\nnext = \"/links/next\"",
            s.api.addr
        ),
    );
    let err = poll(&c, &store).await.unwrap_err();
    assert!(
        err.contains("pages of this walk total more than max_body"),
        "{err}"
    );
    assert!(store.snapshot("s").unwrap().is_empty());
}

/// A sled store in the harness's state dir, and a poller of `c`'s sources on it.
fn store_and_poller(s: &Setup, c: &Config) -> (SharedStore, Poller) {
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    let poller = Poller::new(
        store.clone(),
        Fetcher::new(&c.sources).unwrap(),
        pollhook::poll::Wakes::default(),
    );
    (store, poller)
}

#[tokio::test]
async fn after_a_forget_the_next_request_is_not_conditional() {
    let s = setup().await;
    let c = config(
        &s.h,
        &format!("url = \"http://{}/etag\"\nitems = \"/items\"", s.api.addr),
    );
    let (store, poller) = store_and_poller(&s, &c);
    let source = &c.sources["s"];
    let (_, conditions) = poller.poll_conditional(source, None).await.unwrap();
    let conditions = conditions.expect("the response had an ETag");
    let (r, _) = poller
        .poll_conditional(source, Some(&conditions))
        .await
        .unwrap();
    assert!(r.not_modified);
    assert!(store.forget_source("s").unwrap());
    // The stored items are gone: a 304 now would leave the source without a baseline.
    let (r, _) = poller
        .poll_conditional(source, Some(&conditions))
        .await
        .unwrap();
    assert!(!r.not_modified && r.first, "{r:?}");
    let last = s.api.log().pop().unwrap();
    assert!(last.headers.get("if-none-match").is_none());
    assert_eq!(ids(&store).len(), 1);
}

/// A body byte for byte the last committed one's is neither parsed nor diffed (like a
/// 304), unless the stored state moved on since (a forget); a changed body is diffed.
#[tokio::test]
async fn a_body_like_the_last_committed_one_is_not_diffed_again() {
    let s = setup().await;
    s.api.set_per_page(100);
    s.api.set_items(0..3, 1);
    let c = config(
        &s.h,
        &format!("url = \"http://{}/next\"\nitems = \"/items\"", s.api.addr),
    );
    let (store, poller) = store_and_poller(&s, &c);
    let source = &c.sources["s"];
    let (r, conditions) = poller.poll_conditional(source, None).await.unwrap();
    assert!(r.first && !r.same_body, "{r:?}");
    let conditions = conditions.expect("a single JSON body has a digest");
    assert!(conditions.validators.is_none() && conditions.digest.is_some());

    let (r, again) = poller
        .poll_conditional(source, Some(&conditions))
        .await
        .unwrap();
    assert!(r.same_body && !r.not_modified, "{r:?}");
    assert_eq!((r.items, r.created, r.updated, r.events), (3, 0, 0, 0));
    assert_eq!(again.as_ref(), Some(&conditions));

    // A changed body is diffed, with its events.
    s.api.set_items(0..3, 2);
    let (r, changed) = poller
        .poll_conditional(source, Some(&conditions))
        .await
        .unwrap();
    assert!(!r.same_body && r.updated == 3, "{r:?}");
    let changed = changed.unwrap();
    assert_ne!(changed.digest, conditions.digest);

    // After a forget the same body makes a first poll again, not a skipped one.
    assert!(store.forget_source("s").unwrap());
    let (r, _) = poller
        .poll_conditional(source, Some(&changed))
        .await
        .unwrap();
    assert!(!r.same_body && r.first, "{r:?}");
    assert_eq!(ids(&store).len(), 3);
}

/// The `link` of every stored item, by id.
fn links(store: &SharedStore) -> std::collections::BTreeMap<String, String> {
    store
        .snapshot("s")
        .unwrap()
        .into_iter()
        .map(|(id, seen)| {
            let item: serde_json::Value = serde_json::from_slice(&seen.raw).unwrap();
            (id, item["link"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[tokio::test]
async fn relative_feed_links_resolve_against_xml_base_and_the_feed_url() {
    let s = setup().await;
    let api = format!("http://{}", s.api.addr);
    let c = config(
        &s.h,
        &format!("url = \"{api}/feeds/atomrel?key=k\"\nformat = \"feed\""),
    );
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    s.api.set_feed(
        "application/atom+xml",
        r#"<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title><id>urn:f</id>
<entry><id>urn:1</id><title>1</title><link href="posts/1.html"/></entry>
<entry xml:base="/sub/dir/"><id>urn:2</id><title>2</title><link href="posts/2.html"/></entry>
<entry><title>no id</title><link href="/posts/3.html"/></entry>
</feed>"#,
    );
    poll(&c, &store).await.unwrap();
    let got = links(&store);
    assert_eq!(got["urn:1"], format!("{api}/feeds/posts/1.html"), "{got:?}");
    assert_eq!(
        got["urn:2"],
        format!("{api}/sub/dir/posts/2.html"),
        "{got:?}"
    );
    let third = format!("{api}/posts/3.html");
    assert_eq!(
        got.get(&third),
        Some(&third),
        "the id is the resolved link: {got:?}"
    );
    drop(store);

    // RSS and JSON Feed links resolve against the feed's URL too.
    for (content_type, doc) in [
        (
            "application/rss+xml",
            r#"<rss version="2.0"><channel><title>t</title><item><guid>urn:1</guid><link>posts/1.html</link></item></channel></rss>"#,
        ),
        (
            "application/feed+json",
            r#"{"version": "https://jsonfeed.org/version/1.1", "title": "t", "items": [{"id": "urn:1", "url": "posts/1.html"}]}"#,
        ),
    ] {
        std::fs::remove_dir_all(s.h.state_dir()).unwrap();
        let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
        s.api.set_feed(content_type, doc);
        poll(&c, &store).await.unwrap();
        assert_eq!(
            links(&store)["urn:1"],
            format!("{api}/feeds/posts/1.html"),
            "{content_type}"
        );
    }
}

#[tokio::test]
async fn redirects_stay_on_their_origin_and_send_no_referer() {
    let s = setup().await;
    let servers = CancellationToken::new();
    let _servers = servers.clone().drop_guard();
    let elsewhere = ShapedApi::start(servers).await;
    s.api.set_items(0..2, 1);
    elsewhere.set_items(0..2, 1);
    let (here, there) = (
        format!("http://{}", s.api.addr),
        format!("http://{}", elsewhere.addr),
    );
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());

    // To another origin (another port): refused, and the other server sees nothing.
    s.api.redirect(&format!("{there}/bearer"));
    let c = config(
        &s.h,
        &format!(
            "url = \"{here}/moved\"\nitems = \"/items\"\nquery = {{ api_key = \"query-key-1\" }}\nheaders = {{ X-Api-Key = \"header-key-2\", Private-Token = \"private-3\" }}\nauth = {{ bearer = \"{BEARER}\" }}"
        ),
    );
    let err = poll(&c, &store).await.unwrap_err();
    assert!(
        err.contains(&format!(
            "redirected from {here} to another origin, {there}"
        )) && err.contains("point url at the final location"),
        "{err}"
    );
    assert!(elsewhere.log().is_empty(), "{:#?}", elsewhere.log());

    // The OAuth2 token request follows the same rule.
    let oauth = config(
        &s.h,
        &format!(
            "url = \"{here}/oauth-items\"\nitems = \"/items\"\n[sources.s.auth]\noauth2 = {{ token_url = \"{here}/moved\", client_id = \"pollhook-client\", client_secret = \"s3cr3t-client-secret\", scopes = [\"read\", \"items\"] }}"
        ),
    );
    let err = poll(&oauth, &store).await.unwrap_err();
    assert!(err.contains("to another origin"), "{err}");
    assert!(elsewhere.log().is_empty(), "{:#?}", elsewhere.log());

    // Within the origin: followed, credentials kept, and no Referer.
    s.api.redirect("/bearer");
    let r = poll(&c, &store).await.unwrap();
    assert_eq!(r.items, 2);
    let landed = s
        .api
        .log()
        .into_iter()
        .find(|l| l.path == "/bearer")
        .unwrap();
    assert_eq!(landed.headers["x-api-key"], "header-key-2");
    assert!(
        landed.headers.get("referer").is_none(),
        "{:?}",
        landed.headers
    );
}

#[tokio::test]
async fn credentials_an_api_echoes_are_redacted_from_errors() {
    use base64::Engine;
    let s = setup().await;
    let api = format!("http://{}", s.api.addr);
    let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let cases = [
        (
            "bearer, header and query key",
            format!("url = \"{api}/echo\"\nitems = \"/items\"\nquery = {{ api_key = \"${{API_KEY}}\" }}\nheaders = {{ X-Api-Key = \"header-key-5678\" }}\nauth = {{ bearer_env = \"TOKEN\" }}"),
            vec!["bearer-token-1234".to_string(), "query-key-9012".into(), "header-key-5678".into()],
        ),
        (
            "basic",
            format!("url = \"{api}/echo\"\nitems = \"/items\"\nauth = {{ basic = {{ username = \"alice\", password = \"basic-pass-3456\" }} }}"),
            vec!["basic-pass-3456".to_string(), b64("alice:basic-pass-3456")],
        ),
        (
            "oauth2",
            format!("url = \"{api}/echo\"\nitems = \"/items\"\n[sources.s.auth]\noauth2 = {{ token_url = \"{api}/token\", client_id = \"pollhook-client\", client_secret = \"s3cr3t-client-secret\", scopes = [\"read\", \"items\"] }}"),
            // The shaped API's tokens are tok-<n>, n counting token requests.
            vec!["tok-".to_string()],
        ),
    ];
    let env = [
        ("TOKEN", "bearer-token-1234"),
        ("API_KEY", "query-key-9012"),
    ];
    for (what, table, secrets) in cases {
        let c = config_with_env(&s.h, &table, &env);
        let err = poll(&c, &store).await.unwrap_err();
        assert!(
            err.contains("HTTP 401") && err.contains("<redacted>"),
            "{what}: {err}"
        );
        for secret in &secrets {
            assert!(!err.contains(secret.as_str()), "{what}: {secret} in {err}");
        }
    }
    // The API did see the credentials (the test checks what pollhook hides).
    let echo = s.api.log().into_iter().find(|l| l.path == "/echo").unwrap();
    assert_eq!(echo.headers["authorization"], "Bearer bearer-token-1234");
}

#[tokio::test]
async fn a_byte_order_mark_before_json_is_skipped() {
    let s = setup().await;
    s.api.set_items(0..3, 1);
    let api = format!("http://{}", s.api.addr);
    let file = s.h.dir.path().join("bom.json");
    std::fs::write(&file, "\u{feff}{\"items\": [{\"id\": 1}]}").unwrap();
    for (what, table, items) in [
        // Extracted while parsing.
        (
            "streamed",
            format!("url = \"{api}/bom\"\nitems = \"/items\""),
            3,
        ),
        // Parsed whole, for the transform.
        (
            "parsed whole",
            format!("url = \"{api}/bom\"\nitems = \"/items\"\ntransform = \".\""),
            3,
        ),
        (
            "a command's output",
            format!(
                "command = [\"/bin/cat\", \"{}\"]\nitems = \"/items\"",
                file.display()
            ),
            1,
        ),
    ] {
        let store: SharedStore = Arc::new(SledStore::open(&s.h.state_dir()).unwrap());
        let c = config(&s.h, &table);
        let r = poll(&c, &store)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.items, items, "{what}");
        drop(store);
        std::fs::remove_dir_all(s.h.state_dir()).unwrap();
    }
}
