//! The pollhook process under test: start, kill -9, SIGTERM, SIGSTOP/SIGCONT, memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pollhook");

pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    /// The cluster instance name its config gives (`[store] instance`), if any.
    pub instance: Option<String>,
    /// Highest VmHWM seen across every process started so far, KiB.
    pub peak_rss_kb: u64,
}

impl Daemon {
    /// Starts `pollhook run`; its stderr is appended to `log`.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        Daemon::spawn(config, log, "warn", None)
    }

    /// Starts `pollhook run` as cluster instance `name`, whose config file (naming it in
    /// `[store] instance`) is `config`. It logs at info level, so that its lease changes
    /// are in `log` when a run goes wrong.
    pub fn start_instance(config: &Path, log: &Path, name: &str) -> Daemon {
        Daemon::spawn(config, log, "info", Some(name.to_string()))
    }

    fn spawn(config: &Path, log: &Path, level: &str, instance: Option<String>) -> Daemon {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start pollhook");
        Daemon {
            child,
            log: log.to_path_buf(),
            instance,
            peak_rss_kb: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the running process, KiB.
    pub fn sample_rss(&mut self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        self.peak_rss_kb = self.peak_rss_kb.max(hwm);
        hwm
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill9(&mut self) {
        self.sample_rss();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&mut self) {
        self.sample_rss();
        self.signal(libc::SIGTERM);
    }

    /// Freezes the process (SIGSTOP), as a long stall of its host would.
    pub fn pause(&mut self) {
        self.sample_rss();
        self.signal(libc::SIGSTOP);
    }

    /// Lets a paused process run on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&mut self, signal: libc::c_int) {
        // Only to a child still running: once reaped, its pid may be another process's.
        if !self.alive() {
            return;
        }
        // SAFETY: kill(2) only sends a signal, to a child this harness started and owns.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// Waits for exit; `None` if it did not exit in time (then it is killed).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last lines of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes under `dir`, recursively.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
