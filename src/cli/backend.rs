//! Where an operator command reads and changes pollhook's state: the running daemon,
//! through its admin API, or, when no daemon answers, the store, opened by this process
//! (sled allows one process at a time). [`Backend::connect`] chooses once; each
//! operation is one method, the same for both ways.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::Utc;
use reqwest::Method;

use super::client::{api_path, AdminClient, Refused};
use crate::admin::ops::{
    self, DeliveryQuery, DeliveryView, ForgetResponse, ReplayRequest, ReplayResponse, TargetView,
};
use crate::admin::{
    DeliveriesResponse, PollRequest, PollResponse, SourcesResponse, TargetsResponse,
};
use crate::config::{Config, Source, StoreConfig};
use crate::poll::Poller;
use crate::running::SourceStatus;
use crate::source::Fetcher;
use crate::store::{blocking, ClusterView, SharedStore, SledStore, StoreError};

/// No daemon answered and there is no database at the config's `state_dir`.
#[derive(Debug, thiserror::Error)]
#[error("no pollhook daemon answers and there is no database in {} (state_dir). If the daemon runs under systemd with StateDirectory=, run this command with STATE_DIRECTORY=/var/lib/pollhook, or set state_dir in the config", .0.display())]
pub struct NoDatabase(pub std::path::PathBuf);

/// Pollhook's state as one operator command reaches it, with the config it was found
/// from.
pub struct Backend<'c> {
    config: &'c Config,
    via: Via,
}

enum Via {
    /// A daemon answers.
    Daemon(AdminClient),
    /// No daemon runs: the store, opened by this process.
    Store(SharedStore),
}

impl<'c> Backend<'c> {
    /// The running daemon if its admin API answers, else the store.
    pub async fn connect(config: &'c Config) -> anyhow::Result<Backend<'c>> {
        let via = match AdminClient::find(config).await? {
            Some(daemon) => Via::Daemon(daemon),
            None => Via::Store(open_store(config).await?),
        };
        Ok(Backend { config, via })
    }

    /// The admin API's base URL, if a daemon answered.
    pub fn daemon(&self) -> Option<&str> {
        match &self.via {
            Via::Daemon(d) => Some(d.base()),
            Via::Store(_) => None,
        }
    }

    /// Every source's status. Without a daemon only what the store knows: the items.
    pub async fn sources(&self) -> anyhow::Result<Vec<SourceStatus>> {
        let store = match &self.via {
            Via::Daemon(d) => {
                let r: SourcesResponse = d.get(&api_path(&["sources"], &[])).await?;
                return Ok(r.sources);
            }
            Via::Store(store) => store,
        };
        let stored: BTreeMap<String, u64> = blocking(store, |s| s.sources())
            .await?
            .into_iter()
            .map(|(name, state)| (name, state.items))
            .collect();
        let statuses: Vec<SourceStatus> = (self.config.sources.values())
            .map(|s| SourceStatus::new(s, stored.get(&s.name).copied().unwrap_or(0), None))
            .collect();
        // In a cluster, with each source's holder.
        let configured = self.config.sources.clone();
        Ok(blocking(store, move |s| ops::sources(s, &configured, statuses)).await?)
    }

    /// The cluster's instances and leases; None for a single node (and from a daemon
    /// too old to answer `/v1/cluster`).
    pub async fn cluster(&self) -> anyhow::Result<Option<ClusterView>> {
        match &self.via {
            Via::Daemon(d) => Ok(d
                .get::<crate::admin::ClusterResponse>(&api_path(&["cluster"], &[]))
                .await
                .ok()
                .and_then(|r| r.cluster)),
            Via::Store(store) => Ok(blocking(store, |s| s.cluster()).await?),
        }
    }

    /// Every configured target, and every other one that holds deliveries.
    pub async fn targets(&self) -> anyhow::Result<Vec<TargetView>> {
        match &self.via {
            Via::Daemon(d) => {
                let r: TargetsResponse = d.get(&api_path(&["targets"], &[])).await?;
                Ok(r.targets)
            }
            Via::Store(store) => {
                let configured = ops::configured_targets(self.config);
                let now_ms = Utc::now().timestamp_millis();
                Ok(blocking(store, move |s| ops::targets(s, &configured, now_ms)).await?)
            }
        }
    }

    /// Pending and/or dead deliveries, oldest first within each.
    pub async fn deliveries(&self, q: DeliveryQuery) -> anyhow::Result<Vec<DeliveryView>> {
        match &self.via {
            Via::Daemon(d) => {
                let limit = q.limit.map(|l| l.to_string());
                let query: Vec<(&str, &str)> = [
                    ("status", q.status.as_deref()),
                    ("target", q.target.as_deref()),
                    ("limit", limit.as_deref()),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k, v?)))
                .collect();
                let r: DeliveriesResponse = d.get(&api_path(&["deliveries"], &query)).await?;
                Ok(r.deliveries)
            }
            Via::Store(store) => Ok(blocking(store, move |s| ops::deliveries(s, &q)).await?),
        }
    }

    /// Dead deliveries back in the queue with fresh attempts.
    pub async fn replay(&self, req: ReplayRequest) -> anyhow::Result<ReplayResponse> {
        match &self.via {
            Via::Daemon(d) => {
                let path = api_path(&["deliveries", "replay"], &[]);
                d.send(Method::POST, &path, &req).await
            }
            Via::Store(store) => {
                let configured = ops::configured_targets(self.config);
                let now_ms = Utc::now().timestamp_millis();
                Ok(blocking(store, move |s| ops::replay(s, &req, &configured, now_ms)).await?)
            }
        }
    }

    /// Polls `source` now: by the daemon, or in this process against the store.
    pub async fn poll(&self, source: &Arc<Source>, dry_run: bool) -> anyhow::Result<PollResponse> {
        let daemon = match &self.via {
            Via::Daemon(d) => d,
            Via::Store(store) => {
                return local_poll(self.config, source, Some(store.clone()), dry_run).await
            }
        };
        let path = api_path(&["sources", &source.name, "poll"], &[]);
        match daemon
            .send(Method::POST, &path, &PollRequest { dry_run })
            .await
        {
            Ok(r) => {
                if dry_run {
                    eprintln!("(dry run by the running daemon, with its loaded config: reload it to try edits)");
                }
                Ok(r)
            }
            Err(e) if dry_run && e.downcast_ref::<Refused>().is_some_and(|r| r.status == 404) => {
                // Not in the daemon's config (yet): tried here against nothing stored,
                // since the daemon holds the store. A source removed from the daemon's
                // config may still have stored items; they are not seen.
                eprintln!(
                    "(source {} is not in the running daemon's config: every item shows as created)",
                    source.name
                );
                local_poll(self.config, source, None, dry_run).await
            }
            Err(e) => Err(e),
        }
    }

    /// Drops a source's stored state; a name neither configured nor stored is an error.
    pub async fn forget(&self, name: &str) -> anyhow::Result<ForgetResponse> {
        match &self.via {
            Via::Daemon(d) => {
                let path = api_path(&["sources", name, "state"], &[]);
                d.send(Method::DELETE, &path, &()).await
            }
            Via::Store(store) => {
                let configured = self.config.sources.contains_key(name);
                let unknown = format!(
                    "no source {name} in {} and no stored state of it in {}: nothing to forget (is the name right? `pollhook status` lists the sources)",
                    self.config.file.display(),
                    self.config.state_dir.display()
                );
                let n = name.to_string();
                Ok(blocking(store, move |s| ops::forget(s, &n, configured, unknown)).await?)
            }
        }
    }
}

/// Opens the config's store: the PostgreSQL database of `[store]`, or the sled
/// database at `state_dir`, which must exist.
async fn open_store(config: &Config) -> anyhow::Result<SharedStore> {
    if let StoreConfig::Postgres(_) = &config.store {
        // Several instances share it and none holds it alone: open it as the daemon does.
        return Ok(crate::daemon::open_store(config).await?);
    }
    // Opening creates a database where there is none: an operator command must not do
    // that (an empty store would answer "nothing pending" for a wrong path).
    if !config.state_dir.join("db").exists() {
        return Err(NoDatabase(config.state_dir.clone()).into());
    }
    let dir = config.state_dir.clone();
    match tokio::task::spawn_blocking(move || SledStore::open(&dir)).await? {
        Ok(s) => Ok(Arc::new(s)),
        Err(StoreError::Open { path, reason }) => {
            let admin = match config.admin_listen {
                Some(a) => format!("its admin API does not answer at {a}"),
                None => "the admin API is off ([admin] listen = \"\")".to_string(),
            };
            bail!(
                "cannot open the state database in {path}: {reason}\n\
                 If a pollhook daemon is running on this state_dir, {admin}; \
                 commands reach a running daemon only through the admin API."
            )
        }
        Err(e) => Err(e.into()),
    }
}

/// A poll in this process: against the store when given, else against nothing stored.
pub async fn local_poll(
    config: &Config,
    source: &Arc<Source>,
    store: Option<SharedStore>,
    dry_run: bool,
) -> anyhow::Result<PollResponse> {
    let (store, _scratch) = match store {
        Some(s) => (s, None),
        None => {
            // An empty store in a temporary directory: the diff base is "nothing seen".
            let dir = tempdir()?;
            let s: SharedStore = Arc::new(SledStore::open(&dir.0)?);
            (s, Some(dir))
        }
    };
    let poller = Poller::new(
        store,
        Fetcher::new(&config.sources)?,
        crate::poll::Wakes::default(),
    );
    if dry_run {
        let (report, events) = poller
            .dry_run(source)
            .await
            .with_context(|| format!("poll of {} failed", source.name))?;
        return Ok(PollResponse {
            source: source.name.clone(),
            dry_run,
            report,
            events,
        });
    }
    let report = poller
        .poll(source)
        .await
        .with_context(|| format!("poll of {} failed", source.name))?;
    if report.events > 0 {
        eprintln!("(no daemon runs: the queued deliveries are sent when it starts)");
    }
    Ok(PollResponse {
        source: source.name.clone(),
        dry_run,
        report,
        events: Vec::new(),
    })
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

fn tempdir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "pollhook-dry-run-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(TempDir(dir))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
