//! The daemon's life from start to exit, where it used to go wrong: the start-up order
//! (nothing created before a cheap check fails), every wait at shutdown bounded (reload
//! bursts, a stuck final flush, a second SIGTERM), a failed store stopping the daemon
//! instead of leaving it up and "ready", and paths relative to the config file.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pollhook::config::Config;
use pollhook::daemon::{DaemonError, Options};
use pollhook::diff::Seen;
use pollhook::notify::Notifier;
use pollhook::store::{
    Delivery, DeliveryStatus, PollCommit, SharedStore, SledStore, SourceState, Store, StoreError,
    TargetStats,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::process::{Daemon, BIN};
use crate::service::notified;
use crate::support::{accepted, free_port, pending, wait_for, with_admin, SECRET, WAIT};

/// A sled store that can be made to fail as sled does after an I/O error (every call
/// from then on fails), and whose flush can be made to hang.
struct Breakable {
    inner: SledStore,
    broken: AtomicBool,
    flush_hangs: AtomicBool,
}

impl Breakable {
    fn open(dir: &Path) -> Arc<Breakable> {
        Arc::new(Breakable {
            inner: SledStore::open(dir).unwrap(),
            broken: AtomicBool::new(false),
            flush_hangs: AtomicBool::new(false),
        })
    }

    /// From now on every call fails with ENOSPC, as sled's do after a full disk.
    fn fill_the_disk(&self) {
        self.broken.store(true, Ordering::SeqCst);
    }

    fn gate(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Failed(sled::Error::Io(
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            )));
        }
        Ok(())
    }
}

impl Store for Breakable {
    fn health(&self, subject: &str) -> Result<pollhook::health::HealthRecord, StoreError> {
        self.gate()?;
        self.inner.health(subject)
    }
    fn update_health(
        &self,
        subject: &str,
        read: &pollhook::health::HealthRecord,
        next: &pollhook::health::HealthRecord,
        events: Vec<(pollhook::event::Event, std::sync::Arc<[String]>)>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.gate()?;
        self.inner
            .update_health(subject, read, next, events, now_ms)
    }
    fn oldest_pending(&self, target: &str) -> Result<Option<i64>, StoreError> {
        self.gate()?;
        self.inner.oldest_pending(target)
    }
    fn source_state(&self, source: &str) -> Result<SourceState, StoreError> {
        self.gate()?;
        self.inner.source_state(source)
    }
    fn snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError> {
        self.gate()?;
        self.inner.snapshot(source)
    }
    fn commit_poll(&self, commit: PollCommit) -> Result<u64, StoreError> {
        self.gate()?;
        self.inner.commit_poll(commit)
    }
    fn pending(&self, t: &str, after: Option<u64>, n: usize) -> Result<Vec<Delivery>, StoreError> {
        self.gate()?;
        self.inner.pending(t, after, n)
    }
    fn delivery(&self, t: &str, seq: u64) -> Result<Option<Delivery>, StoreError> {
        self.gate()?;
        self.inner.delivery(t, seq)
    }
    fn ack_many(&self, t: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.ack_many(t, seqs)
    }
    fn reschedule(&self, t: &str, seq: u64, a: u32, at: i64, e: &str) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.reschedule(t, seq, a, at, e)
    }
    fn bury(&self, t: &str, seq: u64, a: u32, e: &str) -> Result<(), StoreError> {
        self.gate()?;
        self.inner.bury(t, seq, a, e)
    }
    fn dead(&self, t: Option<&str>, n: usize) -> Result<Vec<Delivery>, StoreError> {
        self.gate()?;
        self.inner.dead(t, n)
    }
    fn outbox(&self, t: Option<&str>, n: usize) -> Result<Vec<Delivery>, StoreError> {
        self.gate()?;
        self.inner.outbox(t, n)
    }
    fn find_event(&self, id: &str) -> Result<Vec<(DeliveryStatus, Delivery)>, StoreError> {
        self.gate()?;
        self.inner.find_event(id)
    }
    fn replay_dead(
        &self,
        t: Option<&str>,
        id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.gate()?;
        self.inner.replay_dead(t, id, now_ms)
    }
    fn forget_source(&self, source: &str) -> Result<bool, StoreError> {
        self.gate()?;
        self.inner.forget_source(source)
    }
    fn sources(&self) -> Result<Vec<(String, SourceState)>, StoreError> {
        self.gate()?;
        self.inner.sources()
    }
    fn target_stats(&self) -> Result<BTreeMap<String, TargetStats>, StoreError> {
        self.gate()?;
        self.inner.target_stats()
    }
    fn flush(&self) -> Result<(), StoreError> {
        // Like sled's flush after a failed blob write: it never returns (until the test
        // lets it, so the test's runtime can shut down).
        while self.flush_hangs.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.gate()?;
        self.inner.flush()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Lets a hung flush return when the test ends, passed or failed: the test's runtime
/// waits for its blocking threads.
struct Unhang(Arc<Breakable>);

impl Drop for Unhang {
    fn drop(&mut self) {
        self.0.flush_hangs.store(false, Ordering::SeqCst);
    }
}

async fn readyz(port: u16) -> Option<u16> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await;
    r.ok().map(|r| r.status().as_u16())
}

/// Every notification that arrives within `within`.
fn notifications_for(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

// Multi-threaded: the notify socket is read with blocking calls while the daemon runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_makes_the_daemon_unready_stops_the_watchdog_and_exits_saying_why() {
    let h = harness!();
    let port = free_port();
    let config = Config::parse(
        &with_admin(&h.config_text("", ""), port),
        &h.dir.path().join("config.toml"),
        &|_| None,
    )
    .unwrap();
    let grace = config.shutdown_grace;
    let store = Breakable::open(&h.state_dir());
    let _unhang = Unhang(store.clone());
    let sock_path = h.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let socket = sock_path.display().to_string();
    let notifier = Notifier::from_vars(&|name| match name {
        "NOTIFY_SOCKET" => Some(socket.clone()),
        // A ping every 150 ms.
        "WATCHDOG_USEC" => Some("300000".into()),
        _ => None,
    });
    let options = Options {
        notifier,
        ..Options::default()
    };
    let token = CancellationToken::new();
    let _stop = token.clone().drop_guard();
    let shared: SharedStore = store.clone();
    let daemon = tokio::spawn(pollhook::daemon::run_with(
        config,
        Some(shared),
        token.clone(),
        options,
    ));
    let no_log = || String::new();
    notified(&sock, "READY=1", &no_log);
    notified(&sock, "WATCHDOG=1", &no_log);
    assert_eq!(readyz(port).await, Some(200));
    h.polls(2).await;

    // The disk fills; the next poll with a change fails to commit. The final flush
    // hangs too, which keeps the daemon stopping (and its admin API up) for the grace.
    store.flush_hangs.store(true, Ordering::SeqCst);
    store.fill_the_disk();
    h.api.set("1", json!({"v": 1}));
    let failed_at = Instant::now();
    let deadline = failed_at + WAIT;
    while readyz(port).await == Some(200) {
        assert!(Instant::now() < deadline, "/readyz still says ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        readyz(port).await,
        Some(503),
        "/readyz must answer 503 while stopping"
    );
    // The service manager hears why, and no more pings after it.
    let seen = notified(&sock, "STOPPING=1", &no_log);
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=failed: the state database in")),
        "{seen:?}"
    );
    let after = notifications_for(&sock, Duration::from_millis(800));
    assert!(
        !after.iter().any(|m| m.contains("WATCHDOG=1")),
        "watchdog pings after the store failed: {after:?}"
    );

    let result = tokio::time::timeout(WAIT, daemon)
        .await
        .expect("the daemon did not stop after its store failed")
        .unwrap();
    let took = failed_at.elapsed();
    store.flush_hangs.store(false, Ordering::SeqCst);
    let err = result.expect_err("a failed store must end the daemon with an error");
    assert!(matches!(err, DaemonError::StoreFailed { .. }), "{err:?}");
    let state = h.state_dir().display().to_string();
    let message = format!("{:#}", anyhow::Error::from(err));
    // The first call to fail is named: usually the poll's first (reading the source's
    // state), but a target's worker may come first under load.
    let first = [
        "reading the state of source s",
        "reading the stored items of source s",
        "committing a poll of source s",
        "reading pending deliveries of target t",
        "reading a delivery of target t",
    ];
    assert!(
        first.iter().any(|op| message.contains(&format!(
            "the state database in {state} failed while {op}: IO error: No space left on device (os error 28). "
        ))),
        "no failed call named in: {message}"
    );
    let advice = format!(
        "pollhook exits so that the service manager restarts it; check free space and permissions on {state}"
    );
    assert!(
        message.contains(&advice),
        "{advice:?} missing from: {message}"
    );
    assert_eq!(message.matches("No space left").count(), 1, "{message}");
    // The stuck flush was given the grace, not forever.
    assert!(took < grace * 2 + Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn a_stuck_final_flush_holds_the_shutdown_at_most_the_grace() {
    let h = harness!();
    let config = h.config("", "");
    let grace = config.shutdown_grace;
    let store = Breakable::open(&h.state_dir());
    let _unhang = Unhang(store.clone());
    let token = CancellationToken::new();
    let shared: SharedStore = store.clone();
    let daemon = tokio::spawn(pollhook::daemon::run_with(
        config,
        Some(shared),
        token.clone(),
        Options::default(),
    ));
    h.polls(2).await;
    store.flush_hangs.store(true, Ordering::SeqCst);
    let asked = Instant::now();
    token.cancel();
    let result = tokio::time::timeout(WAIT, daemon).await;
    let took = asked.elapsed();
    store.flush_hangs.store(false, Ordering::SeqCst);
    result
        .expect("the shutdown waited for the stuck flush")
        .unwrap()
        .unwrap();
    assert!(
        took < grace + Duration::from_secs(2),
        "shutdown took {took:?} with a grace of {grace:?}"
    );
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_and_leaves_the_delivery_pending() {
    let h = harness!();
    // A long grace and a receiver that holds the attempt: after the first SIGTERM the
    // daemon waits for it.
    let text = h
        .config_text("", "")
        .replacen("shutdown_grace = \"3s\"", "shutdown_grace = \"60s\"", 1)
        .replacen("timeout = \"2s\"", "timeout = \"60s\"", 1);
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    let mut d = Daemon::start(&config, &h.dir.path().join("run.log"), &[]);
    h.polls(2).await;
    h.rx.set_delay(Duration::from_secs(30));
    h.api.set("1", json!({"v": 1}));
    wait_for(|| !h.rx.arrivals().is_empty()).await;

    d.sigterm();
    wait_for(|| d.log().contains("stopping: polls stopped")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        d.running(),
        "the first SIGTERM must wait for the delivery in flight"
    );
    let second = Instant::now();
    d.sigterm();
    let code = d.wait(Duration::from_secs(3)).await;
    let log = d.log();
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "took {:?}",
        second.elapsed()
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}; log:\n{log}"
    );
    assert!(
        log.contains("second signal: exiting at once")
            && log.contains("stay pending in the outbox"),
        "{log}"
    );
    assert!(
        log.contains("error: stopped at once by a second SIGTERM"),
        "{log}"
    );
    // The delivery cut off is still there for the next start.
    assert_eq!(pending(&*h.store(), "t"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_of_reloads_sigterm_starts_no_attempt_and_exits_within_the_grace() {
    let h = harness!();
    // Target t with a header that each reload changes (so each restarts its worker), and
    // four attempts in flight at most.
    let text = |n: usize| {
        h.config_text("", "").replacen(
            "timeout = \"2s\"",
            &format!("timeout = \"5s\"\nmax_in_flight = 4\nheaders = {{ X-Reload = \"{n}\" }}"),
            1,
        )
    };
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, text(0)).unwrap();
    let mut d = Daemon::start(&config, &h.dir.path().join("run.log"), &[]);
    h.polls(2).await;
    // Each request is held a second: 40 deliveries take 10 s at four at a time.
    h.rx.set_delay(Duration::from_secs(1));
    for i in 0..40 {
        h.api.set(&i.to_string(), json!({"v": 1}));
    }
    wait_for(|| h.rx.arrivals().len() >= 4).await;
    let reloads = || d.log().matches("config reloaded").count();
    for n in 1..=20 {
        std::fs::write(&config, text(n)).unwrap();
        let before = reloads();
        d.signal(libc::SIGHUP);
        wait_for(|| reloads() > before).await;
    }
    let grace = Duration::from_secs(3);
    let sigterm_ms = chrono::Utc::now().timestamp_millis();
    let sent = Instant::now();
    d.sigterm();
    let code = d.wait(WAIT * 4).await;
    let took = sent.elapsed();
    assert_eq!(code, Some(0), "log:\n{}", d.log());
    // Requests already on their way when the signal came may land a little after it.
    let late: Vec<i64> =
        h.rx.arrivals()
            .into_iter()
            .map(|at| at - sigterm_ms)
            .filter(|after| *after > 250)
            .collect();
    assert!(
        late.is_empty(),
        "{} attempts started after SIGTERM (ms after it: {late:?})",
        late.len()
    );
    assert!(
        took < grace + Duration::from_secs(3),
        "shutdown took {took:?} with a grace of {grace:?}"
    );
    // Nothing was lost: what was not delivered is pending.
    let delivered: std::collections::BTreeSet<String> = accepted(&h.rx.received(), "s.created")
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(delivered.len() + pending(&*h.store(), "t"), 40);
}

#[tokio::test]
async fn a_taken_admin_port_fails_the_start_before_a_database_is_created() {
    let h = harness!();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = h.dir.path().join("config.toml");
    std::fs::write(&config, with_admin(&h.config_text("", ""), port)).unwrap();
    let state = h.state_dir();
    assert!(!state.exists());
    let mut d = Daemon::start(&config, &h.dir.path().join("run.log"), &[]);
    let code = d.wait(WAIT).await;
    let log = d.log();
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}; log:\n{log}"
    );
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(
        !state.exists(),
        "a state_dir was created although the daemon could not start"
    );
}

#[tokio::test]
async fn paths_in_the_config_and_the_default_state_dir_follow_the_config_file_not_the_cwd() {
    let h = harness!();
    let conf = h.dir.path().join("conf");
    let elsewhere = h.dir.path().join("elsewhere");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(conf.join("hook-secret"), format!("{SECRET}\n")).unwrap();
    // No state_dir (the default), and the secret in a file named relative to the config.
    let text = h.config_text("", "");
    let (first, rest) = text.split_once('\n').unwrap();
    assert!(first.starts_with("state_dir"), "{first}");
    let rest = rest.replacen(
        &format!("secret = \"{SECRET}\""),
        "secret_file = \"hook-secret\"",
        1,
    );
    let config = conf.join("config.toml");
    std::fs::write(&config, rest).unwrap();

    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .current_dir(&elsewhere)
        .env_remove("STATE_DIRECTORY")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let want = conf.join("pollhook-state");
    assert!(
        out.contains(&format!("state_dir: {}\n", want.display())),
        "{out}"
    );

    let mut d = Daemon::start_in(
        &config,
        &h.dir.path().join("run.log"),
        &[],
        Some(&elsewhere),
    );
    wait_for(|| d.log().contains("polled source=s")).await;
    h.api.set("1", json!({"v": 1}));
    // Accepted means the signature verified: the secret came from conf/hook-secret.
    h.received("a delivery signed with the file's secret", |r| {
        accepted(r, "s.created").count() == 1
    })
    .await;
    d.sigterm();
    assert_eq!(d.wait(WAIT).await, Some(0), "log:\n{}", d.log());
    assert!(
        want.join("db").exists(),
        "no database in {}",
        want.display()
    );
    assert!(
        !elsewhere.join("pollhook-state").exists(),
        "the database went to the working directory"
    );
}

#[test]
fn a_config_file_that_cannot_be_read_is_reported_with_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    for command in ["check", "run"] {
        let out = Command::new(BIN)
            .args([command, "--config"])
            .arg(&missing)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "cannot read config file {}: No such file or directory (os error 2)",
                missing.display()
            )),
            "{command}: {err}"
        );
        assert_eq!(err.matches("No such file").count(), 1, "{command}: {err}");
    }
}
