//! The running daemon: opens the store, starts one delivery worker per target and one
//! schedule loop per source, and stops them in order on shutdown.
//!
//! Shutdown (invariant 8): the root token is cancelled (SIGTERM/SIGINT, or the caller);
//! source loops stop at once (a poll cut off before its commit changes nothing); target
//! workers stop starting attempts and let those in flight finish within the grace
//! period; the store is flushed; `run` returns.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Source};
use crate::deliver::TargetWorker;
use crate::poll::Poller;
use crate::schedule::random_unit;
use crate::source::Fetcher;
use crate::store::{blocking, SharedStore, SledStore, StoreError};

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// Opens the store in the config's state directory.
pub async fn open_store(config: &Config) -> Result<SharedStore, StoreError> {
    let dir = config.state_dir.clone();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await
        .map_err(|e| StoreError::Db(format!("open task stopped: {e}")))??;
    Ok(Arc::new(store))
}

/// Runs the daemon until `shutdown` is cancelled, then stops cleanly.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let store = open_store(&config).await?;
    run_with_store(config, store, shutdown).await
}

/// [`run`] with an already open store.
pub async fn run_with_store(
    config: Config,
    store: SharedStore,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    report_backlog(&config, &store).await;
    let tracker = TaskTracker::new();
    let wakes: HashMap<String, Arc<Notify>> = config
        .targets
        .keys()
        .map(|name| (name.clone(), Arc::new(Notify::new())))
        .collect();
    let wakes = Arc::new(wakes);
    for (name, target) in &config.targets {
        let worker = TargetWorker::new(
            target.clone(),
            store.clone(),
            wakes[name].clone(),
            shutdown.child_token(),
            config.shutdown_grace,
        )?;
        tracker.spawn(worker.run());
    }
    let poller = Poller::new(store.clone(), Fetcher::new(&config.sources)?, wakes);
    for source in config.sources.values() {
        let lp = SourceLoop {
            source: source.clone(),
            poller: poller.clone(),
            shutdown: shutdown.child_token(),
        };
        tracker.spawn(lp.run());
    }
    tracing::info!(
        sources = config.sources.len(),
        targets = config.targets.len(),
        state_dir = %config.state_dir.display(),
        "pollhook running"
    );
    shutdown.cancelled().await;
    tracing::info!(grace = %humantime::format_duration(config.shutdown_grace), "stopping: polls stopped, finishing in-flight deliveries");
    tracker.close();
    tracker.wait().await;
    blocking(&store, |s| s.flush()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs what a previous run left pending, and warns about deliveries for targets that
/// are no longer configured (they wait until the target is configured again).
async fn report_backlog(config: &Config, store: &SharedStore) {
    match blocking(store, |s| s.pending_counts()).await {
        Ok(counts) => {
            for (target, n) in counts {
                if config.targets.contains_key(&target) {
                    tracing::info!(target_name = %target, pending = n, "resuming pending deliveries");
                } else {
                    tracing::warn!(target_name = %target, pending = n, "deliveries are pending for a target that is not in the config; they wait until it is configured again");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot count pending deliveries"),
    }
}

/// Polls one source on its schedule; never two polls at once, missed ticks skipped.
struct SourceLoop {
    source: Arc<Source>,
    poller: Poller,
    shutdown: CancellationToken,
}

impl SourceLoop {
    async fn run(self) {
        let s = &self.source;
        let mut scheduled = s.schedule.first(Utc::now(), random_unit());
        loop {
            let wait = (scheduled - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let started = std::time::Instant::now();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                result = self.poller.poll(s) => match result {
                    Ok(r) => tracing::info!(
                        source = %s.name, items = r.items, created = r.created, updated = r.updated,
                        deleted = r.deleted, events = r.events, first = r.first, baseline = r.baseline,
                        took_ms = started.elapsed().as_millis() as u64, "polled"
                    ),
                    Err(e) => tracing::warn!(source = %s.name, error = %e, "poll failed; nothing changed, next poll on schedule"),
                },
            }
            scheduled = s.schedule.next(scheduled, Utc::now(), random_unit());
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT. The handlers are installed before this
/// returns (not in the spawned task), so a signal right after start-up is not lost.
/// Must be called inside the tokio runtime.
pub fn cancel_on_signals(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; stop pollhook with SIGKILL");
            return;
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            token.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    });
}
