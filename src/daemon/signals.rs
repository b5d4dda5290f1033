//! How the operating system's signals reach the daemon: SIGTERM/SIGINT cancel the root
//! token, a second one forces the stop ([`Signalled`], for [`super::Options::force`]),
//! and SIGHUP asks for a reload.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A token cancelled by a signal, with the signal's name once it came.
#[derive(Clone, Default)]
pub struct Signalled {
    token: CancellationToken,
    signal: Arc<std::sync::OnceLock<&'static str>>,
}

impl Signalled {
    /// Records `signal` and cancels.
    pub fn fire(&self, signal: &'static str) {
        let _ = self.signal.set(signal);
        self.token.cancel();
    }

    pub(super) async fn fired(&self) -> &'static str {
        self.token.cancelled().await;
        self.signal.get().copied().unwrap_or("signal")
    }
}

/// What [`install_signals`] returns: the reload signal, and the second-signal token
/// for [`super::Options::force`].
pub struct Signals {
    pub reload: Arc<Notify>,
    pub force: Signalled,
}

/// Cancels `token` on SIGTERM or SIGINT, and signals `reload` on each SIGHUP. A second
/// SIGTERM or SIGINT fires `force`: an operator who asks twice does not wait for the grace
/// period (or for a stuck store). The handlers are installed before this returns (not in
/// the spawned task), so a signal right after start-up is not lost, and a SIGHUP before
/// the daemon is ready does not kill it (the default action would). Must be called
/// inside the tokio runtime.
pub fn install_signals(token: CancellationToken) -> Signals {
    let signals = Signals {
        reload: Arc::new(Notify::new()),
        force: Signalled::default(),
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers; stop pollhook with SIGKILL");
            return signals;
        };
        let notify = signals.reload.clone();
        let force = signals.force.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received; a second SIGTERM stops at once"); break }
                    _ = int.recv() => { tracing::info!("SIGINT received; a second SIGINT stops at once"); break }
                    _ = hup.recv() => notify.notify_one(),
                }
            }
            token.cancel();
            let second = loop {
                tokio::select! {
                    _ = term.recv() => break "SIGTERM",
                    _ = int.recv() => break "SIGINT",
                    // A reload while stopping is pointless: ignored.
                    _ = hup.recv() => {}
                }
            };
            tracing::error!(signal = second, "second signal: exiting at once; deliveries in flight are cut off and stay pending in the outbox, with every other unacknowledged delivery, until the next start");
            force.fire(second);
        });
    }
    #[cfg(not(unix))]
    {
        let force = signals.force.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
            let _ = tokio::signal::ctrl_c().await;
            force.fire("Ctrl-C");
        });
    }
    signals
}
