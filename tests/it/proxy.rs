//! Proxies (issue 13): `proxy` on a source or target sends its requests through a
//! forward proxy (plain HTTP forwarded, HTTPS through `CONNECT`) with the credentials
//! of its URL; without the key the environment's `HTTP_PROXY`/`HTTPS_PROXY` apply, and
//! `proxy = "none"` ignores them. The proxy's credentials reach no log line, even when
//! the proxy echoes them back in a refusal. The daemon runs as the built binary, so
//! that its environment is its own.
//!
//! [`ForwardProxy`] records what passed through it; the sample API and the receiver
//! count what reached them, so each test can tell the two ways apart.

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::forward_proxy::{basic, ForwardProxy};
use crate::process::{run_ok, Daemon, BIN, PROXY_VARIABLES};
use crate::support::{accepted, free_port, with_admin, Harness, WAIT};
use crate::tls::{https_front, TestCa};

const USER: &str = "pollhook-proxy-user";
const PASSWORD: &str = "pr0xy-pa55word";

/// Every form in which the proxy's credentials could leak into a log line.
fn credential_forms() -> Vec<String> {
    let header = basic(USER, PASSWORD);
    let b64 = header.trim_start_matches("Basic ").to_string();
    vec![
        PASSWORD.to_string(),
        USER.to_string(),
        format!("{USER}:{PASSWORD}"),
        b64,
    ]
}

fn assert_no_credentials(what: &str, text: &str) {
    for form in credential_forms() {
        assert!(
            !text.contains(&form),
            "{form:?} leaked into {what}:\n{text}"
        );
    }
}

/// `text` written as the config file beside the harness's state.
fn write(h: &Harness, text: &str) -> PathBuf {
    let path = h.dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Stops the daemon with SIGTERM and waits for a clean exit; returns its log.
async fn stop(mut d: Daemon) -> String {
    d.sigterm();
    assert_eq!(d.wait(WAIT).await, Some(0), "log:\n{}", d.log());
    d.log()
}

/// The path-and-query-free prefix of the API's URLs, as a forward proxy sees them.
fn api_prefix(h: &Harness) -> String {
    let url = reqwest::Url::parse(&h.api.url()).unwrap();
    format!("http://127.0.0.1:{}/", url.port().unwrap())
}

/// A source polled through its proxy, which wants credentials and refuses the first two
/// requests with a 407 that quotes the `Proxy-Authorization` it got: the polls that
/// follow go through with the configured credentials, every request the API saw came
/// through the proxy, and neither the log (at trace level) nor `pollhook check` shows
/// the credentials in any form.
#[tokio::test]
async fn a_source_is_polled_through_its_proxy_and_its_credentials_stay_out_of_the_log() {
    let h = harness!();
    let servers = CancellationToken::new();
    let _stop = servers.clone().drop_guard();
    let proxy = ForwardProxy::start(servers.clone()).await;
    proxy.require(USER, PASSWORD);
    proxy.refuse_next(2);
    h.api.set("1", json!({"name": "apple"}));
    let source_extra = format!(
        "baseline = false\nproxy = \"{}\"",
        proxy.url_with(USER, PASSWORD)
    );
    let config = write(&h, &h.config_text(&source_extra, ""));

    let check = run_ok(Command::new(BIN).args(["check", "--config"]).arg(&config));
    assert!(
        check.contains(&format!("via proxy {}", proxy.url())),
        "{check}"
    );
    assert_no_credentials("pollhook check", &check);

    let d = Daemon::start(&config, &h.dir.path().join("log"), &[("RUST_LOG", "trace")]);
    h.received("the item, polled through the proxy", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    let log = stop(d).await;

    // The refusals were logged as failed polls, echo and all (redacted) ...
    assert!(log.contains("HTTP 407"), "no failed poll logged:\n{log}");
    assert!(
        log.contains("<redacted>"),
        "the echo was not redacted:\n{log}"
    );
    assert_no_credentials("the daemon's log", &log);
    // ... and every request the API saw went through the proxy, with the credentials.
    let admitted = proxy.admitted();
    assert!(!admitted.is_empty());
    for p in &admitted {
        assert_eq!(p.method, "GET", "{p:?}");
        assert!(p.target.starts_with(&api_prefix(&h)), "{p:?}");
        assert_eq!(p.authorization, Some(basic(USER, PASSWORD)), "{p:?}");
    }
    assert_eq!(admitted.len() as u64, h.api.requests(), "{admitted:?}");
    assert_eq!(proxy.passed().len(), admitted.len() + 2);
}

/// A target delivered through its proxy over HTTPS: one `CONNECT` to the receiver's TLS
/// front (trusted through `ca_file`) with the proxy's credentials, the webhook arrives
/// signed. The first `CONNECT` is refused; that failure is logged, without credentials,
/// and the delivery retried. The source, without `proxy`, does not use it.
#[tokio::test]
async fn a_target_is_delivered_through_its_proxy_over_https_with_connect() {
    let h = harness!();
    let servers = CancellationToken::new();
    let _stop = servers.clone().drop_guard();
    let proxy = ForwardProxy::start(servers.clone()).await;
    proxy.require(USER, PASSWORD);
    proxy.refuse_next(1);
    let ca = TestCa::new("pollhook test CA");
    let rx_tls = https_front(&h.rx.url(), &ca, servers.clone()).await;
    std::fs::write(h.dir.path().join("ca.pem"), &ca.pem).unwrap();
    h.api.set("1", json!({"name": "apple"}));
    let target_extra = format!(
        "ca_file = \"ca.pem\"\nproxy = \"{}\"",
        proxy.url_with(USER, PASSWORD)
    );
    let text = h.config_text_for(&rx_tls, &target_extra, &h.api.url(), "baseline = false", "");
    let config = write(&h, &text);

    let d = Daemon::start(&config, &h.dir.path().join("log"), &[("RUST_LOG", "trace")]);
    let got = h
        .received("the webhook, through the proxy", |r| {
            accepted(r, "s.created").count() == 1
        })
        .await;
    assert!(got.iter().all(|r| r.verified), "signature did not verify");
    let log = stop(d).await;

    let front = reqwest::Url::parse(&rx_tls).unwrap();
    let authority = format!("127.0.0.1:{}", front.port().unwrap());
    let passed = proxy.passed();
    assert!(
        passed
            .iter()
            .all(|p| p.method == "CONNECT" && p.target == authority),
        "only the target's tunnels: {passed:?}"
    );
    let admitted = proxy.admitted();
    assert!(!admitted.is_empty(), "{passed:?}");
    assert!(
        admitted
            .iter()
            .all(|p| p.authorization == Some(basic(USER, PASSWORD))),
        "{admitted:?}"
    );
    assert!(
        log.contains(&format!("connection through proxy {}", proxy.url())),
        "the refused CONNECT is not logged as the proxy's:\n{log}"
    );
    assert_no_credentials("the daemon's log", &log);
}

/// `proxy = "none"` on a source and a target: with every proxy variable of the daemon's
/// environment pointing at the proxy, nothing goes through it.
#[tokio::test]
async fn proxy_none_ignores_the_proxy_variables_of_the_environment() {
    let h = harness!();
    let servers = CancellationToken::new();
    let _stop = servers.clone().drop_guard();
    let proxy = ForwardProxy::start(servers.clone()).await;
    h.api.set("1", json!({"name": "apple"}));
    let text = h.config_text_for(
        &h.rx.url(),
        "proxy = \"none\"",
        &h.api.url(),
        "baseline = false\nproxy = \"none\"",
        "",
    );
    let config = write(&h, &text);
    let url = proxy.url();
    let env: Vec<(&str, &str)> = PROXY_VARIABLES
        .iter()
        .filter(|v| !v.eq_ignore_ascii_case("no_proxy"))
        .map(|v| (*v, url.as_str()))
        .collect();

    let d = Daemon::start(&config, &h.dir.path().join("log"), &env);
    h.received("the webhook, sent directly", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    stop(d).await;
    assert!(proxy.passed().is_empty(), "{:?}", proxy.passed());
    assert!(h.api.requests() > 0);
}

/// Without `proxy`, `HTTP_PROXY` in the daemon's environment applies, as reqwest and
/// curl read it: the source's polls and the target's POSTs (both plain HTTP) go through
/// the proxy.
#[tokio::test]
async fn without_the_key_http_proxy_from_the_environment_applies() {
    let h = harness!();
    let servers = CancellationToken::new();
    let _stop = servers.clone().drop_guard();
    let proxy = ForwardProxy::start(servers.clone()).await;
    h.api.set("1", json!({"name": "apple"}));
    let config = write(&h, &h.config_text("baseline = false", ""));
    let url = proxy.url();

    let d = Daemon::start(&config, &h.dir.path().join("log"), &[("HTTP_PROXY", &url)]);
    h.received("the webhook, through the proxy", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    stop(d).await;
    let passed = proxy.passed();
    let rx = reqwest::Url::parse(&h.rx.url()).unwrap();
    let rx_prefix = format!("http://127.0.0.1:{}/", rx.port().unwrap());
    let polls = passed
        .iter()
        .filter(|p| p.method == "GET" && p.target.starts_with(&api_prefix(&h)))
        .count();
    assert_eq!(polls as u64, h.api.requests(), "{passed:?}");
    assert!(
        passed
            .iter()
            .any(|p| p.method == "POST" && p.target.starts_with(&rx_prefix)),
        "the webhook did not go through the proxy: {passed:?}"
    );
}

/// [`run_ok`] on a thread of its own, so that the proxy (on this test's runtime) can
/// answer the command meanwhile.
async fn off_the_runtime(mut cmd: Command) -> String {
    tokio::task::spawn_blocking(move || run_ok(&mut cmd))
        .await
        .unwrap()
}

/// What pollhook runs on loopback itself never goes through a proxy of the
/// environment: the operator commands talking to the daemon's admin API, and the demo
/// (its own API and receiver), each run with `HTTP_PROXY` pointing at the proxy.
#[tokio::test]
async fn the_operator_commands_and_the_demo_ignore_proxy_variables() {
    let h = harness!();
    let servers = CancellationToken::new();
    let _stop = servers.clone().drop_guard();
    let proxy = ForwardProxy::start(servers.clone()).await;
    let port = free_port();
    let config = write(&h, &with_admin(&h.config_text("", ""), port));
    let d = Daemon::start(&config, &h.dir.path().join("log"), &[]);
    let url = proxy.url();
    let with_proxy = |cmd: &mut Command| {
        for var in PROXY_VARIABLES {
            cmd.env_remove(var);
        }
        cmd.env("HTTP_PROXY", &url).env("http_proxy", &url);
    };
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no daemon:\n{}",
            d.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut status = Command::new(BIN);
    status.args(["status", "--config"]).arg(&config);
    with_proxy(&mut status);
    let out = off_the_runtime(status).await;
    assert!(out.contains("daemon: running"), "{out}");
    stop(d).await;

    let mut demo = Command::new(BIN);
    demo.args(["demo", "--for", "5s"]).env("RUST_LOG", "warn");
    with_proxy(&mut demo);
    let out = off_the_runtime(demo).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("200 ") && l.contains(" yes ")),
        "{out}"
    );
    assert!(proxy.passed().is_empty(), "{:?}", proxy.passed());
}
