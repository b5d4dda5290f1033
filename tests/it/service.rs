//! The binary as a service: the systemd notify protocol (READY, WATCHDOG, RELOADING,
//! STOPPING) on a socket the test listens on, SIGHUP reloads, JSON logs, and the
//! operator's commands with and without a running daemon.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pollhook::demo::api::SampleApi;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::process::{run_ok, Daemon, BIN};
use crate::support::{accepted, free_port, with_admin, WAIT};

/// Reads notifications until one contains `want`; returns everything read up to it.
pub(crate) fn notified(sock: &UnixDatagram, want: &str, log: &dyn Fn() -> String) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = m.lines().any(|l| l == want);
                seen.push(m);
                if done {
                    return seen;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {want} within {WAIT:?}; got {seen:?}; log:\n{}", log());
}

#[tokio::test]
async fn systemd_notify_protocol_sighup_reload_and_json_logs() {
    let h = harness!();
    let servers = CancellationToken::new();
    let _stop = servers.clone().drop_guard();
    let api2 = SampleApi::start(servers.clone()).await.unwrap();
    h.api.set("1", json!({"v": 1}));
    let text = format!("log_format = \"json\"\n{}", h.config_text("", ""));
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, &text).unwrap();
    let path = h.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log = h.dir.path().join("log");
    let mut d = Daemon::start(
        &config,
        &log,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            // 300 ms: a ping every 150 ms.
            ("WATCHDOG_USEC", "300000"),
            ("RUST_LOG", "info"),
        ],
    );
    let logs = || d_log(&log);
    let seen = notified(&sock, "READY=1", &logs);
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=running: 1 sources, 1 targets")),
        "{seen:?}"
    );
    // Two pings (each wait fails the test if none comes).
    notified(&sock, "WATCHDOG=1", &logs);
    notified(&sock, "WATCHDOG=1", &logs);

    // SIGHUP: the new config (a second source) is read and applied.
    std::fs::write(
        &config,
        format!(
            "{text}\n[sources.s2]\nurl = \"{}\"\ninterval = \"200ms\"\nitems = \"/items\"\n",
            api2.url()
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    notified(&sock, "RELOADING=1", &logs);
    let seen = notified(&sock, "READY=1", &logs);
    assert!(
        seen.iter()
            .any(|m| m.contains("2 sources, 1 targets (reloaded)")),
        "{seen:?}"
    );
    let deadline = Instant::now() + WAIT;
    while api2.requests() < 2 {
        assert!(Instant::now() < deadline, "the added source is not polled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    d.sigterm();
    notified(&sock, "STOPPING=1", &logs);
    assert_eq!(d.wait(WAIT).await, Some(0), "log:\n{}", d.log());

    // log_format = "json": every line is one JSON object with the event's fields.
    let text = d.log();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "polled" && l["source"] == "s2"),
        "{text}"
    );
    assert!(lines.iter().any(|l| l["message"] == "config reloaded"));
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
}

fn d_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs `pollhook <args> --config <config>`; returns (exit success, stdout, stderr).
fn cli(config: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_ok(config: &std::path::Path, args: &[&str]) -> String {
    let (ok, stdout, stderr) = cli(config, args, "");
    assert!(ok, "pollhook {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}

// Multi-threaded: the sample API must answer the CLI's dry runs while this thread waits
// for the CLI process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_with_a_running_daemon_and_without_one() {
    let h = harness!();
    h.rx.set_status(500);
    h.api.set("1", json!({"v": 1}));
    let port = free_port();
    // No scheduled poll during the test (January 1st only): the operator polls, so a
    // dry run is never raced by the daemon's own poll.
    let text = with_admin(&h.config_text("baseline = false", ""), port)
        .replacen(
            "retry = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]",
            "retry = [\"100ms\"]",
            1,
        )
        .replacen("interval = \"200ms\"", "cron = \"0 0 1 1 *\"", 1);
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, &text).unwrap();
    let mut d = Daemon::start(&config, &h.dir.path().join("log"), &[]);
    // Ready once the admin API listens (it binds before the store is opened, and
    // answers once it is: the CLI's probe waits for that); asking before would have the
    // CLI open the store itself and contend for its lock.
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "no daemon; log:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A real poll, through the daemon.
    let (ok, _, stderr) = cli(&config, &["poll", "s"], "");
    assert!(ok && stderr.contains("s: 1 items, 1 created"), "{stderr}");

    // The delivery dies (two 500s); the operator sees it ...
    let deadline = Instant::now() + WAIT;
    let dead = loop {
        let (ok, out, _) = cli(&config, &["deliveries", "--status", "dead", "--json"], "");
        if ok && !out.trim().is_empty() {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no dead delivery listed; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let dead: Value = serde_json::from_str(dead.lines().next().unwrap()).unwrap();
    assert_eq!(dead["type"], "s.created");
    assert_eq!(dead["attempts"], 2);
    let status = cli_ok(&config, &["status"]);
    assert!(status.contains("daemon: running"), "{status}");
    let t_row = status
        .lines()
        .find(|l| l.trim_start().starts_with("t "))
        .unwrap();
    let cols: Vec<&str> = t_row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["0", "1"], "pending 0, dead 1: {status}");
    let table = cli_ok(&config, &["deliveries"]);
    assert!(table.contains("dead") && table.contains("500"), "{table}");

    // ... replays it once the receiver is fixed ...
    h.rx.set_status(200);
    let out = cli_ok(&config, &["replay", "--dead", "--target", "t"]);
    assert!(out.contains("1 deliveries put back"), "{out}");
    let got = h
        .received("the replayed delivery", |r| {
            accepted(r, "s.created").count() == 1
        })
        .await;
    assert_eq!(got.last().unwrap().id, dead["event_id"]);

    // ... and tries a change without committing it.
    h.api.set("2", json!({"v": 2}));
    let out = cli_ok(&config, &["poll", "s", "--dry-run"]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "s.created" && e["data"]["id"] == "2"),
        "{out}"
    );
    // A source the running daemon does not know yet (an edit not reloaded) is tried
    // locally against nothing stored: both items show as created.
    let edited = h.dir.path().join("edited.toml");
    std::fs::write(
        &edited,
        format!(
            "{text}\n[sources.s2]\nurl = \"{}\"\ninterval = \"1h\"\nitems = \"/items\"\n",
            h.api.url()
        ),
    )
    .unwrap();
    let (ok, out, stderr) = cli(&edited, &["poll", "s2", "--dry-run"], "");
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("not in the running daemon's config"),
        "{stderr}"
    );
    assert_eq!(out.lines().count(), 2, "{out}");

    d.sigterm();
    assert_eq!(d.wait(WAIT).await, Some(0));

    // Without a daemon the commands open the store themselves.
    let status = cli_ok(&config, &["status"]);
    assert!(status.contains("daemon: not running"), "{status}");
    assert!(cli_ok(&config, &["deliveries"]).contains("no deliveries match"));
    let (ok, _, _) = cli(&config, &["forget", "s"], "n\n");
    assert!(!ok, "forget without consent must change nothing and fail");
    let out = cli_ok(&config, &["forget", "s", "--yes"]);
    assert!(out.contains("forgot the stored state of source s"), "{out}");
    let status = cli_ok(&config, &["status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["daemon"], false);
    assert_eq!(status["sources"][0]["items"], 0, "{status:#}");
    // A dry run against the forgotten state shows every item as created.
    let out = cli_ok(&config, &["poll", "s", "--dry-run"]);
    assert_eq!(out.lines().count(), 2, "{out}");

    if crate::support::on_postgres() {
        // What follows is about sled's state_dir.
        return;
    }
    // A wrong state_dir is an error, not a new empty database that reports nothing.
    let nowhere = h.dir.path().join("nowhere");
    let state = h.state_dir().display().to_string();
    let other = h.dir.path().join("other.toml");
    std::fs::write(&other, text.replace(&state, &nowhere.display().to_string())).unwrap();
    let (ok, _, stderr) = cli(&other, &["status"], "");
    assert!(
        !ok && stderr.contains("there is no database in"),
        "{stderr}"
    );
    assert!(!nowhere.exists(), "a database was created");
    // A dry run needs none: every item shows as created.
    let out = cli_ok(&other, &["poll", "s", "--dry-run"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(!nowhere.exists());
}

#[test]
fn version_and_completions() {
    let out = run_ok(Command::new(BIN).arg("--version"));
    assert_eq!(
        out.trim(),
        format!("pollhook {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run_ok(Command::new(BIN).args(["completions", "bash"]));
    assert!(
        out.contains("_pollhook()") && out.contains("replay"),
        "{out}"
    );
}
