//! The built binary, where the operator's experience is the point: kill -9 and restart,
//! SIGTERM, what reaches the logs, `check`, the demo.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{accepted, pending, summary, wait_for, Harness, SECRET, WAIT};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_pollhook");

/// The proxy variables reqwest reads: removed from every daemon the tests start, whose
/// servers are all on loopback, unless the test sets them (tests/it/proxy.rs).
pub(crate) const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

pub(crate) struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    pub(crate) fn start(config: &Path, log: &Path, envs: &[(&str, &str)]) -> Daemon {
        Daemon::start_in(config, log, envs, None)
    }

    /// [`Daemon::start`] in working directory `cwd` (else the test's), without a
    /// `$STATE_DIRECTORY` from the test's environment.
    pub(crate) fn start_in(
        config: &Path,
        log: &Path,
        envs: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> Daemon {
        let file = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(BIN);
        for var in PROXY_VARIABLES {
            cmd.env_remove(var);
        }
        cmd.args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "debug")
            .env_remove("STATE_DIRECTORY")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        Daemon {
            child: cmd.spawn().unwrap(),
            log: log.to_path_buf(),
        }
    }

    /// Whether the process is still running.
    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    pub(crate) fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) only sends a signal, to a child this test started and still owns.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(
            rc,
            0,
            "kill({signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Waits for the process to exit; returns its exit code.
    pub(crate) async fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "pollhook did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command that must succeed; returns its stdout.
pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(h: &Harness, source_extra: &str, extra: &str) -> PathBuf {
    let path = h.dir.path().join("config.toml");
    std::fs::write(&path, h.config_text(source_extra, extra)).unwrap();
    path
}

#[tokio::test]
async fn kill_9_loses_nothing_and_restart_keeps_the_ids() {
    let h = harness!();
    let config = write_config(&h, "", "");
    let log = h.dir.path().join("run1.log");
    let mut d = Daemon::start(&config, &log, &[]);
    h.polls(2).await;
    h.rx.set_status(500);
    h.api.set("1", json!({"v": 1}));
    h.api.set("2", json!({"v": 1}));
    // Both changes are committed once any attempt arrives (deliveries come only from
    // committed outbox entries).
    let before = h
        .received("failing attempts", |r| {
            r.iter().any(|r| r.item_id == "1") && r.iter().any(|r| r.item_id == "2")
        })
        .await;
    d.child.kill().unwrap();
    d.wait(WAIT).await;
    h.rx.set_status(200);
    let first_ids: std::collections::BTreeSet<String> =
        before.iter().map(|r| r.id.clone()).collect();

    let _d2 = Daemon::start(&config, &h.dir.path().join("run2.log"), &[]);
    let got = h
        .received("both after restart", |r| {
            accepted(r, "s.created").count() >= 2
        })
        .await;
    let accepted_ids: std::collections::BTreeSet<String> =
        accepted(&got, "s.created").map(|r| r.id.clone()).collect();
    assert_eq!(
        accepted_ids,
        first_ids,
        "ids changed across the crash: {:#?}",
        summary(&got)
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_deliveries_and_exits_0() {
    let h = harness!();
    let config = write_config(&h, "", "");
    let mut d = Daemon::start(&config, &h.dir.path().join("run.log"), &[]);
    h.polls(2).await;
    h.rx.set_delay(Duration::from_millis(1500));
    h.api.set("1", json!({"v": 1}));
    // Once the poll has committed, the delivery starts at once and the receiver holds
    // it for 1.5 s: SIGTERM comes while it is in flight.
    wait_for(|| d.log().contains("events=1")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        h.rx.received().is_empty(),
        "the delivery finished too early for this test"
    );
    let sent = Instant::now();
    d.sigterm();
    let code = d.wait(Duration::from_secs(6)).await;
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        sent.elapsed()
    );
    // The in-flight delivery finished before exit and was acknowledged.
    let got = h.rx.accepted();
    assert_eq!(
        got.len(),
        1,
        "{:#?}\n{}",
        summary(&h.rx.received()),
        d.log()
    );
    assert_eq!(pending(&*h.store(), "t"), 0);

    // A restart does not send it again.
    h.rx.set_delay(Duration::ZERO);
    let _d2 = Daemon::start(&config, &h.dir.path().join("run2.log"), &[]);
    h.polls(4).await;
    assert_eq!(h.rx.received().len(), 1, "{:#?}", summary(&h.rx.received()));
}

#[tokio::test]
async fn secrets_never_reach_logs_or_check_output() {
    let h = harness!();
    let secret_file = h.dir.path().join("gh-secret");
    std::fs::write(&secret_file, "file-secret-4711\n").unwrap();
    // A failing source and failing targets, so errors are logged too.
    let source_extra = "headers = { Authorization = \"Bearer ${API_TOKEN}\" }";
    let extra = format!(
        r#"[targets.gh]
url = "{rx}?token=url-secret-0815"
secret_file = {file:?}
signature = "github"
retry = ["100ms"]

[targets.stripe]
url = "http://user:pass-secret-9@127.0.0.1:1/hook"
secret_env = "STRIPE_SECRET"
signature = "stripe"
retry = ["100ms"]

[sources.broken]
url = "{api}?api_key=${{API_TOKEN}}"
interval = "200ms"
items = "/nope"

[sources.basic]
url = "http://127.0.0.1:1/items"
query = {{ key = "query-secret-2468" }}
interval = "200ms"
items = "/nope"
auth = {{ basic = {{ username = "u", password = "basic-secret-1357" }} }}

[sources.oauth]
url = "http://127.0.0.1:1/items"
interval = "200ms"
items = "/items"
auth = {{ oauth2 = {{ token_url = "http://127.0.0.1:1/token", client_id = "id", client_secret = "oauth-secret-8642" }} }}

[sources.bot]
url = "http://127.0.0.1:1/bot${{BOT_TOKEN}}/getUpdates"
interval = "200ms"
items = "/result"
"#,
        rx = h.rx.url(),
        file = secret_file.display().to_string(),
        api = h.api.url(),
    );
    let config = write_config(&h, source_extra, &extra);
    let envs = [
        ("API_TOKEN", "env-token-1234"),
        ("STRIPE_SECRET", "stripe-secret-5678"),
        ("BOT_TOKEN", "123456:bot-token-ABC"),
    ];
    let mut d = Daemon::start(&config, &h.dir.path().join("run.log"), &envs);
    // Source s's baseline is committed (other sources poll the same API, so counting
    // its requests would not tell).
    wait_for(|| d.log().contains("polled source=s ")).await;
    h.rx.set_status(500);
    h.api.set("1", json!({}));
    wait_for(|| d.log().contains("delivery is dead")).await;
    d.sigterm();
    assert_eq!(d.wait(WAIT).await, Some(0));
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .envs(envs)
        .output()
        .unwrap();
    assert!(check.status.success());
    let check_out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    let log = d.log();
    assert!(log.contains("poll failed"), "{log}");
    assert!(log.contains("OAuth2 token request failed"), "{log}");
    // A token in a URL's path: the URL is shown as written.
    let template = "http://127.0.0.1:1/bot${BOT_TOKEN}/getUpdates";
    assert!(log.contains(template), "{log}");
    assert!(check_out.contains(template), "{check_out}");
    for secret in [
        SECRET,
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "file-secret-4711",
        "url-secret-0815",
        "pass-secret-9",
        "env-token-1234",
        "stripe-secret-5678",
        "query-secret-2468",
        "basic-secret-1357",
        "oauth-secret-8642",
        "bot-token-ABC",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        assert!(
            !check_out.contains(secret),
            "{secret} in check output:\n{check_out}"
        );
    }
}

#[tokio::test]
async fn check_reports_every_problem_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[targets.t]\nurl = \"http://127.0.0.1:1/\"\nsecret = \"nope\"\n\n[sources.s]\nurl = \"http://127.0.0.1:1/\"\ncron = \"0 9 * * 8\"\ntargets = [\"x\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems"), "{err}");
    assert!(err.contains("bad.toml:3: targets.t.secret"), "{err}");
    assert!(err.contains("bad.toml:7: sources.s.cron"), "{err}");
    assert!(err.contains("bad.toml:8: sources.s.targets[0]"), "{err}");

    let good = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = run_ok(
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(&good)
            .env("GITHUB_TOKEN", "x"),
    );
    // Each source with its next three poll times; a zoned cron in its zone and UTC.
    assert_eq!(text.matches("next polls:").count(), 3, "{text}");
    assert!(
        text.contains("T06:30:00+01:00 (") || text.contains("T06:30:00+02:00 ("),
        "{text}"
    );
}

#[tokio::test]
async fn the_demo_shows_verified_webhooks() {
    let text = run_ok(
        Command::new(BIN)
            .args(["demo", "--for", "8s"])
            .env("RUST_LOG", "warn"),
    );
    assert!(text.contains("demo.created"), "{text}");
    assert!(text.contains("demo.updated"), "{text}");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("200 ")).collect();
    assert!(
        rows.len() >= 4 && rows.iter().all(|l| l.contains(" yes ")),
        "{text}"
    );
}

/// Invariant 7: between polls an idle daemon does no work (no busy loops, no timers
/// firing for nothing). Measured as CPU time from /proc over a quiet stretch.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_idle_daemon_uses_no_cpu() {
    let h = harness!();
    let config = h.dir.path().join("idle.toml");
    let text = h
        .config_text("", "")
        .replace("interval = \"200ms\"", "interval = \"1h\"");
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start(&config, &h.dir.path().join("idle.log"), &[]);
    // Let it start, open the store and run its first poll (within 10% of the interval
    // is up to 6 minutes, so the quiet stretch may include it; it is one request).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.child.id())).unwrap();
        // Fields after the command name: utime and stime are the 12th and 13th.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = after
            .split(' ')
            .skip(11)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        f[0] + f[1]
    };
    let before = cpu();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu() - before;
    // Clock ticks are 10 ms; a busy loop would burn ~300 here.
    assert!(used <= 5, "idle daemon used {used} ticks of CPU in 3 s");
}
