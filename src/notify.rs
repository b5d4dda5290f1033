//! The systemd notify protocol (`sd_notify(3)`), spoken by hand: one datagram of
//! `KEY=value` lines to the Unix socket named by `$NOTIFY_SOCKET`.
//!
//! With `Type=notify`, systemd considers pollhook started only after `READY=1` (sent
//! once the config is valid and the store is open), shows `STATUS=` lines in
//! `systemctl status`, and with `WatchdogSec=` restarts it when `WATCHDOG=1` stops
//! arriving. Outside systemd `$NOTIFY_SOCKET` is unset and every call does nothing.
//!
//! Notifications are best effort: a failed send is logged at debug level and never
//! stops the daemon (systemd itself may be restarting).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends notifications to the service manager, if there is one.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        Notifier::from_vars(&|name| std::env::var(name).ok())
    }

    /// [`Notifier::from_env`] with `env` as the environment.
    pub fn from_vars(env: &dyn Fn(&str) -> Option<String>) -> Notifier {
        let socket = env("NOTIFY_SOCKET")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        // The watchdog is ours unless WATCHDOG_PID names another process (a wrapper).
        let ours = env("WATCHDOG_PID").is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = env("WATCHDOG_USEC")
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// The service manager is listening.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Started: config valid, store open, sources and targets running.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload began; [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        self.send("RELOADING=1\nSTATUS=reloading the config");
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping: finishing in-flight deliveries");
    }

    /// A free-form line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// advises, so one late tick is not a restart.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends `WATCHDOG=1` at [`Notifier::watchdog_interval`] until `stop` is cancelled.
    /// The pings come from a tokio task, so they stop when the runtime is wedged, which
    /// is exactly when systemd should restart pollhook.
    pub async fn run_watchdog(self, stop: CancellationToken) {
        let Some(every) = self.watchdog_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.send("WATCHDOG=1"),
            }
        }
    }

    fn send(&self, message: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        if let Err(e) = send_datagram(path, message.as_bytes()) {
            tracing::debug!(socket = %path.display(), error = %crate::error::chain(&e), "cannot notify the service manager");
        }
    }
}

#[cfg(unix)]
fn send_datagram(path: &std::path::Path, message: &[u8]) -> std::io::Result<usize> {
    use std::os::unix::net::UnixDatagram;
    let socket = UnixDatagram::unbound()?;
    // This runs on an async worker thread: a listener that does not read (its buffer
    // full) must cost a lost notification, never a blocked worker. Seen in a test: the
    // watchdog's pings filled the socket and froze the admin API.
    socket.set_nonblocking(true)?;
    // A leading '@' names a socket in Linux's abstract namespace.
    #[cfg(target_os = "linux")]
    if let Some(name) = path.to_str().and_then(|p| p.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        return socket.send_to_addr(message, &addr);
    }
    socket.send_to(message, path)
}

#[cfg(not(unix))]
fn send_datagram(_: &std::path::Path, _: &[u8]) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn env<'a>(vars: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_no_watchdog_runs() {
        let n = Notifier::from_vars(&env(&[]));
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x"); // must not panic or block
    }

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let vars = [("NOTIFY_SOCKET", path.display().to_string())];
        let n = Notifier::from_vars(&env(&vars));
        n.ready("running");
        n.stopping();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=running");
        let len = listener.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"STOPPING=1\n"));
    }

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_our_pid() {
        let ours = std::process::id().to_string();
        let vars = [
            ("WATCHDOG_USEC", "30000000".to_string()),
            ("WATCHDOG_PID", ours),
        ];
        let n = Notifier::from_vars(&env(&vars));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let vars = [
            ("WATCHDOG_USEC", "30000000".to_string()),
            ("WATCHDOG_PID", "1".to_string()),
        ];
        assert_eq!(Notifier::from_vars(&env(&vars)).watchdog_interval(), None);
        let vars = [("WATCHDOG_USEC", "nonsense".to_string())];
        assert_eq!(Notifier::from_vars(&env(&vars)).watchdog_interval(), None);
    }
}
