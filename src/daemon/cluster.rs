//! The daemon as a member of a cluster: several instances on one PostgreSQL database
//! (`[store] postgres`), each running the sources and targets it holds a lease on.
//!
//! Every quarter lease the daemon runs a lease round ([`PgStore::tick`]: renew, claim
//! up to its share, hand back what it stopped), then makes its running tasks match what
//! it holds; between rounds it wakes its target workers every [`WAKE`] so that they
//! load deliveries other instances' polls committed (the commit wakes only the workers
//! of its own process). The protocol itself, and why it is safe, is in
//! `store/pg/lease.rs` and `docs/CLUSTER.md`.

use std::sync::Arc;
use std::time::Duration;

use super::Running;
use crate::config::{Config, PostgresConfig};
use crate::metrics::Metrics;
use crate::store::{Held, PgStore, SharedStore, StoreError, TICKS};

/// How long a clean stop waits for the database to take the leases back.
const LEAVE: Duration = Duration::from_secs(5);

/// How often the target workers look for deliveries committed by other instances.
pub(super) const WAKE: Duration = Duration::from_millis(200);

/// This instance's membership.
pub(super) struct Cluster {
    store: Arc<PgStore>,
    /// How often a lease round runs.
    pub(super) every: Duration,
    /// What the last round found beyond this instance's share: stopped since, handed
    /// back by the next round.
    releasing: Held,
    /// The outbox's next sequence number when the workers were last woken.
    woken_at: Option<i64>,
}

impl Cluster {
    /// Connects and joins as the config's instance (default: host name and pid).
    /// Blocks.
    pub(super) fn open(pg: &PostgresConfig) -> Result<(Cluster, SharedStore), StoreError> {
        let name = pg.instance.clone().unwrap_or_else(default_instance);
        let store = Arc::new(PgStore::connect(pg)?.join(name, pg.lease));
        let cluster = Cluster {
            store: store.clone(),
            every: pg.lease / TICKS,
            releasing: Held::default(),
            woken_at: None,
        };
        Ok((cluster, store))
    }

    pub(super) fn instance(&self) -> &str {
        self.store.instance().unwrap_or("-")
    }

    /// Whether any instance queued deliveries since the last call that said so: the
    /// outbox's next sequence number moved (or it could not be read: the workers' own
    /// reads then say what failed). One round trip, where every worker reading its
    /// outbox every [`WAKE`] would be three each, idle or not.
    pub(super) async fn committed_elsewhere(&mut self) -> bool {
        let store = self.store.clone();
        let now = tokio::task::spawn_blocking(move || store.next_seq()).await;
        match now {
            Ok(Ok(seq)) if Some(seq) == self.woken_at => false,
            Ok(Ok(seq)) => {
                self.woken_at = Some(seq);
                true
            }
            _ => true,
        }
    }

    /// One lease round for the sources and targets of `config`.
    pub(super) async fn round(&mut self, config: &Config) -> Result<Held, StoreError> {
        let sources: Vec<String> = config.sources.keys().cloned().collect();
        let targets: Vec<String> = config.targets.keys().cloned().collect();
        let release = std::mem::take(&mut self.releasing);
        let store = self.store.clone();
        let held = tokio::task::spawn_blocking(move || store.tick(&sources, &targets, &release))
            .await
            .map_err(|error| StoreError::Stopped {
                task: "lease task",
                error,
            })??;
        self.releasing = Held {
            excess_sources: held.excess_sources.clone(),
            excess_targets: held.excess_targets.clone(),
            ..Held::default()
        };
        Ok(held)
    }

    /// The first lease round, before any task starts; failed, the instance starts with
    /// nothing and the next round tries again.
    pub(super) async fn first_round(&mut self, config: &Config, metrics: &Metrics) -> Held {
        match self.round(config).await {
            Ok(held) => {
                metrics.lease_round(held.instances, held.sources.len(), held.targets.len());
                tracing::info!(instance = %self.instance(), instances = held.instances, sources = held.running_sources().len(), targets = held.running_targets().len(), "joined the cluster");
                held
            }
            Err(e) => {
                metrics.lease_round_failed();
                tracing::warn!(instance = %self.instance(), error = %crate::error::chain(&e), "the first lease round failed; starting with no sources or targets, trying again in a quarter lease");
                Held::default()
            }
        }
    }

    /// A lease round, then the running tasks made to match what this instance holds.
    pub(super) async fn round_and_apply(&mut self, running: &mut Running) {
        let config = running.handle.config();
        let round = self.round(&config).await;
        let metrics = &running.handle.metrics;
        match round {
            Ok(held) => {
                metrics.lease_round(held.instances, held.sources.len(), held.targets.len());
                if running.held.as_ref() == Some(&held) {
                    return;
                }
                tracing::info!(instance = %self.instance(), instances = held.instances, sources = held.running_sources().len(), targets = held.running_targets().len(), "leases changed");
                running.held = Some(held);
                if let Err(e) = running.apply(&config).await {
                    tracing::error!(error = %crate::error::chain(&e), "cannot start a task this instance now holds");
                }
            }
            Err(e) => {
                metrics.lease_round_failed();
                tracing::warn!(instance = %self.instance(), error = %crate::error::chain(&e), "lease round failed; the work this instance holds stops when its leases run out, and resumes once the database answers");
            }
        }
    }

    /// Hands every lease back at a clean stop, so that the others take over at their
    /// next round rather than a lease later.
    pub(super) async fn leave(&self) {
        let store = self.store.clone();
        let left = tokio::time::timeout(LEAVE, tokio::task::spawn_blocking(move || store.leave()));
        let failed = match left.await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(instance = %self.instance(), "left the cluster: leases handed back");
                return;
            }
            Ok(Ok(Err(e))) => crate::error::chain(&e).to_string(),
            Ok(Err(e)) => crate::error::chain(&e).to_string(),
            Err(_) => format!("no answer within {}", humantime::format_duration(LEAVE)),
        };
        tracing::warn!(instance = %self.instance(), error = %failed, "cannot hand the leases back; the other instances take them over when they expire");
    }
}

/// [`Cluster::open`], again with backoff (1 s doubling to 30 s) while the database
/// cannot be reached: an instance started before its database, or during an outage,
/// waits for it instead of exiting. Errors that waiting does not mend (a bad URL, TLS,
/// a newer schema) fail at once; so does a shutdown.
pub(super) async fn open_retrying(
    pg: &PostgresConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(Cluster, SharedStore), StoreError> {
    let mut wait = Duration::from_secs(1);
    loop {
        let config = pg.clone();
        let opened = tokio::task::spawn_blocking(move || Cluster::open(&config))
            .await
            .map_err(|error| StoreError::Stopped {
                task: "open task",
                error,
            })?;
        match opened {
            Err(e @ (StoreError::Postgres { .. } | StoreError::PostgresTimeout { .. })) => {
                tracing::warn!(error = %crate::error::chain(&e), retry_in = %humantime::format_duration(wait), "cannot reach the PostgreSQL store; trying again (nothing runs until it answers)");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// `host-pid`: unique among running instances, and says where to look.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}", std::process::id())
}

/// The next tick of `timer`; never, without one (a single node).
pub(super) async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
