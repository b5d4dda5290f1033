//! The running daemon: opens the store, starts one delivery worker per target, one
//! schedule loop per source and the admin API, applies a new config on SIGHUP, and stops
//! them in order on shutdown.
//!
//! Shutdown (invariant 8): the root token is cancelled (SIGTERM/SIGINT, or the caller);
//! source loops stop at once (a poll cut off before its commit changes nothing); target
//! workers start no attempt after it and let those in flight finish within the grace
//! period; the store is flushed (waited for at most the grace too); `run` returns. Every
//! wait at shutdown is bounded, so a wedged store cannot hold the process; a second
//! SIGTERM/SIGINT ends it at once ([`Options::force`]).
//!
//! A fatal store error ([`StoreError::is_fatal`], e.g. sled's I/O error after a full
//! disk) seen by any task stops the daemon the same way, and `run` returns
//! [`DaemonError::StoreFailed`]: sled fails every later call until a restart, so the
//! process exits (non-zero) for its service manager to restart it, instead of staying up,
//! ready and pinging the watchdog, while every poll and delivery fails.
//!
//! Reload: the new config is validated completely before anything changes; a bad one
//! is logged and the running config stays. Sources and targets whose settings are
//! unchanged keep running untouched. A changed or removed target's worker stops like at
//! shutdown (in-flight attempts finish, acknowledgements are written) before its
//! successor starts, so no delivery is sent by two workers; pending deliveries stay in
//! the outbox throughout. A removed source's stored state is kept until
//! `pollhook forget`.

mod cluster;
mod signals;
mod source_loop;
mod tasks;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{Config, StoreConfig};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::running::{Failure, Handle, Health};
use crate::store::{blocking, PgStore, SharedStore, SledStore, StoreError};
use cluster::Cluster;
pub use signals::{install_signals, Signalled, Signals};
use tasks::Running;
use watch::Watched;

/// How long after the grace period the target workers may take to write their last
/// acknowledgements (a healthy store takes milliseconds) before shutdown stops waiting.
const FINAL_WRITES: Duration = Duration::from_secs(2);

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // Not `#[from]`/`#[source]`: the message shows the cause, and `{:#}` would repeat it.
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
    #[error("cannot listen on {addr} for the admin API ([admin] listen in {file}): {error}; set another address, or listen = \"\" to turn the admin API off")]
    AdminListen {
        addr: std::net::SocketAddr,
        file: String,
        error: std::io::Error,
    },
    #[error("the state database in {state_dir} failed while {}: {}. pollhook exits so that the service manager restarts it; check free space and permissions on {state_dir}", .failure.operation, .failure.error)]
    StoreFailed { state_dir: String, failure: Failure },
    #[error("stopped at once by a second {signal}, without waiting for deliveries in flight: they and every other unacknowledged delivery stay in the outbox and are sent after the next start")]
    Forced { signal: &'static str },
}

/// Opens the config's store: the sled database in its state directory, or the
/// PostgreSQL database of `[store] postgres`.
pub async fn open_store(config: &Config) -> Result<SharedStore, StoreError> {
    let dir = config.state_dir.clone();
    let store = config.store.clone();
    tokio::task::spawn_blocking(move || -> Result<SharedStore, StoreError> {
        Ok(match store {
            StoreConfig::Sled => Arc::new(SledStore::open(&dir)?),
            StoreConfig::Postgres(pg) => Arc::new(PgStore::connect(&pg)?),
        })
    })
    .await
    .map_err(|error| StoreError::Stopped {
        task: "open task",
        error,
    })?
}

/// How the daemon talks to what runs it.
#[derive(Default)]
pub struct Options {
    /// Signalled to re-read the config file (SIGHUP; see [`install_signals`]).
    pub reload: Option<Arc<Notify>>,
    /// The service manager, told when pollhook is ready, reloading and stopping.
    pub notifier: Notifier,
    /// Cancelled to stop at once, without waiting for anything (a second SIGTERM).
    pub force: Option<Signalled>,
}

/// Runs the daemon until `shutdown` is cancelled, then stops cleanly.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    run_with(config, None, shutdown, Options::default()).await
}

/// [`run`] with an already open store.
pub async fn run_with_store(
    config: Config,
    store: SharedStore,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    run_with(config, Some(store), shutdown, Options::default()).await
}

/// [`run`] with every option: an open store (else the config's is opened), reloads
/// and service-manager notifications.
pub async fn run_with(
    config: Config,
    store: Option<SharedStore>,
    shutdown: CancellationToken,
    options: Options,
) -> Result<(), DaemonError> {
    match options.force.clone() {
        // The caller exits right after (the binary's runtime then drops every task
        // still running): what is not acknowledged stays in the outbox, as after kill -9.
        Some(force) => tokio::select! {
            result = run_daemon(config, store, shutdown, options) => result,
            signal = force.fired() => Err(DaemonError::Forced { signal }),
        },
        None => run_daemon(config, store, shutdown, options).await,
    }
}

async fn run_daemon(
    config: Config,
    store: Option<SharedStore>,
    shutdown: CancellationToken,
    options: Options,
) -> Result<(), DaemonError> {
    let notifier = &options.notifier;
    let mut daemon = Daemon::start(config, store, shutdown, notifier).await?;
    daemon
        .serve(options.reload.clone().unwrap_or_default(), notifier)
        .await;
    daemon.stop(notifier).await
}

/// The daemon from start-up to shutdown: the tasks started from the config, the store
/// they share, its health, and the admin API.
struct Daemon {
    /// The config it started with: the state directory, which a reload cannot change.
    config: Arc<Config>,
    store: SharedStore,
    health: Arc<Health>,
    /// Its `shutdown` token is cancelled by the caller, or by the store failing.
    running: Running,
    admin: AdminApi,
    /// This instance's membership, on PostgreSQL.
    cluster: Option<Cluster>,
}

impl Daemon {
    /// Binds the admin API, opens the store, starts every task of `config` and tells the
    /// service manager pollhook is ready.
    async fn start(
        config: Config,
        store: Option<SharedStore>,
        shutdown: CancellationToken,
        notifier: &Notifier,
    ) -> Result<Daemon, DaemonError> {
        // What can fail cheaply comes before the store is opened (and, the first time,
        // created): a clash on the admin port must not leave an empty database behind.
        let listener = match config.admin_listen {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|error| {
                DaemonError::AdminListen {
                    addr,
                    file: config.file.display().to_string(),
                    error,
                }
            })?),
            None => None,
        };
        let (store, mut cluster) = match (store, &config.store) {
            (Some(s), _) => (s, None),
            (None, StoreConfig::Postgres(pg)) => {
                let (cluster, store) = cluster::open_retrying(pg, &shutdown).await?;
                (store, Some(cluster))
            }
            (None, StoreConfig::Sled) => (open_store(&config).await?, None),
        };
        // A daemon's memory comes in bursts (polls due together, a large commit).
        crate::malloc::start_trimmer();
        // Cancelled by the caller, or by the store failing.
        let stop = shutdown.child_token();
        let health = Arc::new(Health::new(stop.clone()));
        let store: SharedStore = Arc::new(Watched::new(store, health.clone()));
        report_backlog(&config, &store).await;
        let config = Arc::new(config);
        let handle = Arc::new(
            Handle::new(store.clone(), Arc::new(Metrics::new()), config.clone())
                .with_health(health.clone()),
        );
        let tracker = TaskTracker::new();
        let admin = AdminApi::start(listener, &handle);
        // Stops with `stop`: a failed store ends the pings at once, so a service manager
        // restarts pollhook even if its shutdown hangs.
        tracker.spawn(notifier.clone().run_watchdog(stop.child_token()));
        // Each target's health: failing when its oldest pending delivery is too old.
        tracker.spawn(crate::health::watch_targets(
            handle.clone(),
            stop.child_token(),
        ));
        let mut running = Running {
            handle: handle.clone(),
            tracker,
            shutdown: stop,
            targets: BTreeMap::new(),
            sources: BTreeMap::new(),
            held: None,
        };
        if let Some(c) = &mut cluster {
            running.held = Some(c.first_round(&config, &handle.metrics).await);
        }
        running.apply(&config).await?;
        handle.set_ready(true);
        let summary = format!(
            "running: {} sources, {} targets",
            config.sources.len(),
            config.targets.len()
        );
        tracing::info!(
            sources = config.sources.len(),
            targets = config.targets.len(),
            store = %store.describe(),
            "pollhook running"
        );
        notifier.ready(&summary);
        Ok(Daemon {
            config,
            store,
            health,
            running,
            admin,
            cluster,
        })
    }

    /// Runs until the shutdown token is cancelled, applying the config file again each
    /// time `reload` is signalled.
    async fn serve(&mut self, reload: Arc<Notify>, notifier: &Notifier) {
        let stop = self.running.shutdown.clone();
        // A single node has neither rounds nor cross-instance wakes: the timers never fire.
        let every = self.cluster.as_ref().map(|c| c.every);
        let mut round = every.map(tokio::time::interval);
        let mut wake = every.map(|_| tokio::time::interval(cluster::WAKE));
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = cluster::tick(&mut round) => {
                    if let Some(c) = &mut self.cluster {
                        // A round waits on the database (up to its time limit): a
                        // shutdown does not wait for it.
                        tokio::select! {
                            biased;
                            _ = stop.cancelled() => break,
                            () = c.round_and_apply(&mut self.running) => {}
                        }
                    }
                }
                _ = cluster::tick(&mut wake) => {
                    let Some(c) = &mut self.cluster else { continue };
                    let moved = tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        moved = c.committed_elsewhere() => moved,
                    };
                    if moved {
                        for name in self.running.targets.keys() {
                            self.running.handle.wakes.of(name).notify_one();
                        }
                    }
                }
                _ = reload.notified() => {
                    notifier.reloading();
                    let status = self.running.reload().await;
                    if self.health.failure().is_none() {
                        notifier.ready(&status);
                    }
                    // A source or target the reload added is claimed now, not up to a
                    // quarter lease later.
                    if let Some(r) = &mut round {
                        r.reset_immediately();
                    }
                }
            }
        }
    }

    /// Stops in order: lets the tasks finish within the grace period, flushes the store,
    /// then stops the admin API. Fails if the store failed.
    async fn stop(self, notifier: &Notifier) -> Result<(), DaemonError> {
        let handle = &self.running.handle;
        let tracker = &self.running.tracker;
        handle.set_ready(false);
        let state_dir = self.config.state_dir.display().to_string();
        if let Some(f) = self.health.failure() {
            notifier.status(&format!(
                "failed: the state database in {state_dir} failed while {}; stopping",
                f.operation
            ));
        }
        notifier.stopping();
        let grace = handle.config().shutdown_grace;
        // One deadline for the tasks: workers replaced by reloads and still finishing count
        // against it too. The final flush below has a bound of its own.
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(grace = %humantime::format_duration(grace), "stopping: polls stopped, finishing in-flight deliveries");
        tracker.close();
        if tokio::time::timeout_at(deadline + FINAL_WRITES, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks still busy after shutdown_grace (the state database may be stuck); not waiting for them: deliveries not acknowledged stay in the outbox");
        }
        // sled flushes on a blocking thread, which a failed write can leave stuck: wait for
        // it at most the grace, then exit anyway (sled is crash-safe; at worst the last
        // acknowledgements are repeated after the restart).
        match tokio::time::timeout(grace, blocking(&self.store, |s| s.flush())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_fatal() => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                tracing::error!(state_dir = %state_dir, grace = %humantime::format_duration(grace), "the final flush of the state database did not finish within shutdown_grace; exiting without it (acknowledgements of the last moments may be sent again after the restart)");
            }
        }
        if let Some(c) = &self.cluster {
            c.leave().await;
        }
        self.admin.stop().await;
        if let Some(failure) = self.health.failure() {
            return Err(DaemonError::StoreFailed {
                state_dir,
                failure: failure.clone(),
            });
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The admin API's task, if `[admin] listen` is set. It answers until the end of the
/// shutdown (`/readyz` then says 503), so it has its own token, cancelled last, or when
/// this is dropped (a failed start-up, or a forced stop dropping the daemon's future).
struct AdminApi {
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    task: Option<JoinHandle<()>>,
}

impl AdminApi {
    fn start(listener: Option<tokio::net::TcpListener>, handle: &Arc<Handle>) -> AdminApi {
        let stop = CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();
        let task = listener.map(|listener| {
            let addr = listener.local_addr().ok();
            tracing::info!(listen = ?addr, "admin API listening (no authentication: keep it on loopback or behind a proxy)");
            tokio::spawn(crate::admin::serve(listener, handle.clone(), stop.clone()))
        });
        AdminApi {
            stop,
            _stop_on_drop,
            task,
        }
    }

    /// Stops accepting; requests being answered finish, briefly.
    async fn stop(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }
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
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "cannot count pending deliveries")
        }
    }
}
