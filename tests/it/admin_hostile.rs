//! The admin API under hostile or careless clients (issue 10): names that break the
//! config's name rule, web pages (cross-site requests, DNS rebinding), a thousand idle
//! connections, requests the server itself refuses, concurrent dry runs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollhook::demo::api::Fault;
use reqwest::Method;
use serde_json::{json, Value};

use crate::admin::{get_json, post, start};
use crate::process::BIN;
use crate::support::{accepted, free_port, wait_for, with_admin, Harness, WAIT};

/// Sends `req`; returns the status and the message of its `{"error": "…"}` answer,
/// failing the test if the answer is anything else.
async fn error_of(req: reqwest::RequestBuilder) -> (u16, String) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = r.text().await.unwrap();
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("the {status} answer is not JSON ({e}): {body:?}"));
    assert!(
        content_type.starts_with("application/json"),
        "{status}: Content-Type {content_type:?}"
    );
    let message = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" in the {status} answer {v}"));
    (status, message.to_string())
}

/// A config whose source is polled only on request (its cron fires on January 1st).
fn on_request(h: &Harness) -> String {
    h.config_text("", "")
        .replacen("interval = \"200ms\"", "cron = \"0 0 1 1 *\"", 1)
}

#[tokio::test]
async fn names_that_break_the_config_rule_are_refused_with_400() {
    let mut h = harness!();
    let text = on_request(&h);
    let base = start(&mut h, &text).await;
    let c = reqwest::Client::new();
    for (method, path, kind) in [
        (Method::DELETE, "/v1/sources/s%00/state", "source"),
        (Method::DELETE, "/v1/sources/..%2Fs/state", "source"),
        (Method::POST, "/v1/sources/a%20b/poll", "source"),
        (Method::POST, "/v1/sources/%FF/poll", "source"),
        (Method::GET, "/v1/deliveries?target=t%00", "target"),
        (Method::GET, "/v1/deliveries?target=.t", "target"),
    ] {
        let (status, message) = error_of(c.request(method, format!("{base}{path}"))).await;
        assert_eq!(status, 400, "{path}: {message}");
        assert!(
            message.contains(&format!("{kind} name")),
            "{path}: {message}"
        );
    }
    let (status, body) = post(
        format!("{base}/v1/deliveries/replay"),
        json!({"status": "dead", "target": "t\u{0}"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a valid target name"),
        "{body}"
    );

    // Forgetting a name neither configured nor stored is a mistake, said so.
    let (status, message) = error_of(c.delete(format!("{base}/v1/sources/nope/state"))).await;
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("nothing to forget"), "{message}");
    let r = c
        .delete(format!("{base}/v1/sources/s/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a configured source can be forgotten");
    h.stop().await;
}

/// Runs `pollhook <args> --config <config>`; returns (exit success, stderr).
fn cli(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_refuses_bad_names_before_anything_and_unknown_sources_to_forget() {
    let h = harness!();
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, h.config_text("", "")).unwrap();
    // No daemon and no database yet: a command that went ahead would say so instead.
    for (args, what) in [
        (&["forget", "a/b", "--yes"][..], "source"),
        (&["poll", "a b", "--dry-run"][..], "source"),
        (&["deliveries", "--target", "x y"][..], "target"),
        (&["replay", "--dead", "--target", "../t"][..], "target"),
    ] {
        let (ok, stderr) = cli(&config, args);
        assert!(!ok, "{args:?} succeeded");
        assert!(
            stderr.contains(&format!("is not a valid {what} name")),
            "{args:?}: {stderr}"
        );
    }
    drop(h.store());
    let (ok, stderr) = cli(&config, &["forget", "nope", "--yes"]);
    assert!(!ok, "forgetting an unknown source succeeded: {stderr}");
    assert!(stderr.contains("nothing to forget"), "{stderr}");
    let (ok, stderr) = cli(&config, &["forget", "s", "--yes"]);
    assert!(ok, "a configured source can be forgotten: {stderr}");
}

#[tokio::test]
async fn web_pages_can_neither_send_requests_nor_read_answers() {
    let mut h = harness!();
    let text = on_request(&h).replacen(
        "[admin]\nlisten = \"\"",
        "[admin]\nlisten = \"\"\nallowed_hosts = [\"Admin.Example.com\"]",
        1,
    );
    let base = start(&mut h, &text).await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let c = reqwest::Client::new();
    let replay = format!("{base}/v1/deliveries/replay");
    let poll = format!("{base}/v1/sources/s/poll");

    // A form or no-cors fetch: text/plain or form types, which need no preflight.
    let (status, message) = error_of(
        c.post(&replay)
            .header("content-type", "text/plain")
            .body(r#"{"status": "dead"}"#),
    )
    .await;
    assert_eq!(status, 415, "{message}");
    assert!(message.contains("application/json"), "{message}");
    let (status, message) = error_of(
        c.post(&poll)
            .header("content-type", "application/x-www-form-urlencoded"),
    )
    .await;
    assert_eq!(status, 415, "an empty form posts too: {message}");
    let (status, message) = error_of(c.post(&replay).body(r#"{"status": "dead"}"#)).await;
    assert_eq!(status, 415, "a body without a type: {message}");
    // No body and no type: `curl -X POST` polls.
    let r = c.post(&poll).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // A cross-site request carries its page's Origin.
    for origin in [
        "http://evil.example",
        "null",
        "http://localhost.evil.example:80",
    ] {
        let (status, message) = error_of(
            c.post(&replay)
                .header("origin", origin)
                .header("content-type", "application/json")
                .body(json!({"status": "dead"}).to_string()),
        )
        .await;
        assert_eq!(status, 403, "{origin}: {message}");
    }
    for origin in [
        format!("http://127.0.0.1:{port}"),
        "http://localhost:3000".to_string(),
        "https://admin.example.com".to_string(),
    ] {
        let r = c
            .post(&replay)
            .header("origin", &origin)
            .header("content-type", "application/json")
            .body(json!({"status": "dead"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{origin}: {}", r.text().await.unwrap());
    }

    // DNS rebinding: the page's own host name, pointed at 127.0.0.1.
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.nip.io:{port}"),
        "localhost.evil.example".to_string(),
    ] {
        let (status, message) =
            error_of(c.get(format!("{base}/v1/sources")).header("host", &host)).await;
        assert_eq!(status, 421, "{host}: {message}");
        assert!(message.contains("allowed_hosts"), "{message}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        "admin.example.com".to_string(),
        "ADMIN.example.com:443".to_string(),
    ] {
        let r = c
            .get(format!("{base}/v1/sources"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{host}: {}", r.text().await.unwrap());
    }
    h.stop().await;
}

#[tokio::test]
async fn errors_of_the_server_itself_are_json_too() {
    let mut h = harness!();
    let text = on_request(&h);
    let base = start(&mut h, &text).await;
    let c = reqwest::Client::new();

    let big = json!({"event": "x".repeat(100 * 1024)});
    let (status, message) = error_of(
        c.post(format!("{base}/v1/deliveries/replay"))
            .header("content-type", "application/json")
            .body(big.to_string()),
    )
    .await;
    assert_eq!(status, 413, "{message}");
    assert!(message.contains("64 KiB"), "{message}");

    let long = format!("{base}/v1/sources?pad={}", "x".repeat(16 * 1024));
    let (status, message) = error_of(c.get(long)).await;
    assert_eq!(status, 414, "{message}");

    let (status, message) = error_of(c.get(format!("{base}/v1/deliveries?limit=lots"))).await;
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("limit=<number>"), "{message}");

    let (status, message) = error_of(c.get(format!("{base}/v1/nope"))).await;
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("no route GET /v1/nope"), "{message}");

    let (status, message) = error_of(c.get(format!("{base}/v1/deliveries/replay"))).await;
    assert_eq!(status, 405, "{message}");
    let r = c
        .get(format!("{base}/v1/deliveries/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("POST".to_string()),
        "the 405 says what is allowed"
    );
    let (status, message) = error_of(c.delete(format!("{base}/healthz"))).await;
    assert_eq!(status, 405, "{message}");
    h.stop().await;
}

#[tokio::test]
async fn one_dry_run_per_source_at_a_time_and_its_answer_is_streamed() {
    let mut h = harness!();
    for i in 0..50 {
        h.api.set(&i.to_string(), json!({"v": i}));
    }
    let text = on_request(&h);
    let base = start(&mut h, &text).await;
    let url = format!("{base}/v1/sources/s/poll");
    h.api.set_fault(Fault::Slow(Duration::from_millis(1500)));
    let before = h.api.requests();
    let first = tokio::spawn(post(url.clone(), json!({"dry_run": true})));
    wait_for(|| h.api.requests() > before).await;
    let (status, body) = post(url.clone(), json!({"dry_run": true})).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already running"),
        "{body}"
    );
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 50);

    // Once answered, the next one runs; its answer is written as it goes (chunked),
    // not measured out in advance as one buffer.
    h.api.set_fault(Fault::None);
    let r = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(json!({"dry_run": true}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    assert_eq!(
        r.headers().get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..])
    );
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["dry_run"], true);
    assert_eq!(body["report"]["created"], 50);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 50);
    assert!(events.iter().all(|e| e["type"] == "s.created"), "{body:#}");
    // Nothing was committed.
    let pending = get_json(format!("{base}/v1/deliveries")).await;
    assert_eq!(pending["deliveries"].as_array().unwrap().len(), 0);
    h.stop().await;
}

/// Serves the admin API of a daemon-less handle over the harness's store, with `limits`.
async fn admin_with(
    h: &Harness,
    limits: pollhook::admin::Limits,
) -> (String, tokio_util::sync::CancellationToken) {
    let config = Arc::new(h.config("", ""));
    let store: pollhook::store::SharedStore = h.store();
    let handle = Arc::new(pollhook::running::Handle::new(
        store,
        Arc::new(pollhook::metrics::Metrics::new()),
        config,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(pollhook::admin::serve_with(
        listener,
        handle,
        stop.clone(),
        limits,
    ));
    (base, stop)
}

/// Whether the server closed `s` within `within` (a read sees the end).
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_admin_connections_are_closed_after_the_header_timeout() {
    let h = harness!();
    let (base, stop) = admin_with(
        &h,
        pollhook::admin::Limits {
            max_connections: 64,
            header_timeout: Duration::from_millis(500),
        },
    )
    .await;
    let addr = base.trim_start_matches("http://").to_string();
    let checks = tokio::task::spawn_blocking(move || {
        // Silent from the start.
        let mut silent = TcpStream::connect(&addr).unwrap();
        // Headers never finished (slowloris).
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        // Kept alive after an answer, then silent.
        let mut kept = TcpStream::connect(&addr).unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut answer = [0u8; 512];
        let n = kept.read(&mut answer).unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer[..n])
        );
        // Not closed at once: the timeout (500 ms) is what closes them.
        let early = Duration::from_millis(200);
        assert!(
            !closed_within(&mut silent, early),
            "closed before the timeout"
        );
        assert!(
            !closed_within(&mut slow, early),
            "closed before the timeout"
        );
        [
            ("silent", closed_within(&mut silent, Duration::from_secs(5))),
            ("slow", closed_within(&mut slow, Duration::from_secs(5))),
            (
                "kept alive",
                closed_within(&mut kept, Duration::from_secs(5)),
            ),
        ]
    })
    .await
    .unwrap();
    for (what, closed) in checks {
        assert!(closed, "the {what} connection was not closed");
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_limit_the_idlest_connection_makes_room() {
    let h = harness!();
    let (base, stop) = admin_with(
        &h,
        pollhook::admin::Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(60),
        },
    )
    .await;
    let addr = base.trim_start_matches("http://").to_string();
    let a = addr.clone();
    let (closed, _idle) = tokio::task::spawn_blocking(move || {
        let mut idle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(&a).unwrap()).collect();
        // The server holds 8: the 12 oldest are closed, at once, and the 8 newest stay.
        let closed: Vec<bool> = idle
            .iter_mut()
            .enumerate()
            .map(|(i, s)| {
                let wait = if i < 12 {
                    WAIT
                } else {
                    Duration::from_millis(200)
                };
                closed_within(s, wait)
            })
            .collect();
        // The rest stay open, held by this test, while it asks something.
        (closed, idle)
    })
    .await
    .unwrap();
    let expected: Vec<bool> = (0..20).map(|i| i < 12).collect();
    assert_eq!(
        closed, expected,
        "which of 20 idle connections were closed, oldest first, beyond a limit of 8"
    );
    // And a client that asks something is answered (within the request's timeout).
    let r = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stop.cancel();
}

/// The soft and hard open-files limits of process `pid`, from /proc.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

// The daemon is the built binary, with its own descriptor limits: a soft limit of 256
// (which it must raise) under a hard one of 1,024 (fewer than the connections opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_admin_connections_stop_neither_polls_deliveries_nor_healthz() {
    // This process holds the client ends.
    pollhook::limits::raise_open_files().unwrap();
    let h = harness!();
    let port = free_port();
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, with_admin(&h.config_text("", ""), port)).unwrap();
    let log = h.dir.path().join("log");
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + WAIT;
    while !matches!(reqwest::get(format!("{base}/readyz")).await, Ok(r) if r.status() == 200) {
        assert!(
            Instant::now() < deadline,
            "the daemon never became ready:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        open_files_limits(child.id()),
        (1024, 1024),
        "the soft limit was not raised"
    );
    h.polls(2).await;

    let idle = tokio::task::spawn_blocking(move || {
        (0..1100)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let r = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .unwrap_or_else(|e| panic!("/healthz did not answer: {e}\n{}", logs()));
    assert_eq!(r.status(), 200);
    // Polls and deliveries go on.
    h.api.set("1", json!({"v": 1}));
    h.received("the created event", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    h.polls(3).await;
    assert!(!logs().contains("Too many open files"), "{}", logs());
    drop(idle);

    // SAFETY: kill(2) only sends a signal, to the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}\n{}", logs());
}
