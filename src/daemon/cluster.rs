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

use crate::config::{Config, PostgresConfig};
use crate::store::{Held, PgStore, SharedStore, StoreError, TICKS};

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
        };
        Ok((cluster, store))
    }

    pub(super) fn instance(&self) -> &str {
        self.store.instance().unwrap_or("-")
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

    /// Hands every lease back at a clean stop, so that the others take over at their
    /// next round rather than a lease later.
    pub(super) async fn leave(&self) {
        let store = self.store.clone();
        let left = tokio::task::spawn_blocking(move || store.leave()).await;
        match left {
            Ok(Ok(())) => {
                tracing::info!(instance = %self.instance(), "left the cluster: leases handed back")
            }
            Ok(Err(e)) => {
                tracing::warn!(instance = %self.instance(), error = %crate::error::chain(&e), "cannot hand the leases back; the other instances take them over when they expire")
            }
            Err(e) => {
                tracing::warn!(instance = %self.instance(), error = %crate::error::chain(&e), "cannot hand the leases back; the other instances take them over when they expire")
            }
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
