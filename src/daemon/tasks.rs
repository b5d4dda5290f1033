//! The tasks started from the current config (a worker per target, a loop per source,
//! in a cluster only those this instance holds), and how a reload or a lease round
//! changes them: start what is new, restart what changed, stop what is gone.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::source_loop::SourceLoop;
use super::DaemonError;
use crate::config::{Config, Source, Target};
use crate::deliver::TargetWorker;
use crate::poll::Poller;
use crate::running::{Handle, RunningSource};
use crate::source::Fetcher;
use crate::store::{blocking, Held};

/// A target's worker as it runs now.
pub(super) struct RunningTarget {
    pub(super) target: Arc<Target>,
    pub(super) stop: CancellationToken,
    pub(super) done: JoinHandle<()>,
}

/// A source's loop as it runs now.
pub(super) struct RunningLoop {
    pub(super) stop: CancellationToken,
}

/// The tasks started from the current config, and how to change them.
pub(super) struct Running {
    pub(super) handle: Arc<Handle>,
    pub(super) tracker: TaskTracker,
    pub(super) shutdown: CancellationToken,
    pub(super) targets: BTreeMap<String, RunningTarget>,
    pub(super) sources: BTreeMap<String, RunningLoop>,
    /// In a cluster, what this instance holds (None: everything, a single node).
    pub(super) held: Option<Held>,
}

impl Running {
    /// Re-reads the config file and applies it; a config that does not load changes
    /// nothing. Returns a line for the service manager's status.
    pub(super) async fn reload(&mut self) -> String {
        let current = self.handle.config();
        let file = current.file.clone();
        tracing::info!(config = %file.display(), "reloading the config (SIGHUP)");
        let loaded = tokio::task::spawn_blocking(move || Config::load(&file)).await;
        let config = match loaded {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::error!(error = %crate::error::chain(&e), "reload refused: the new config is not valid; still running the previous one");
                return "running; last reload refused: invalid config (see the log)".into();
            }
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "reload failed; still running the previous one");
                return "running; last reload failed (see the log)".into();
            }
        };
        for (what, changed) in [
            ("state_dir", config.state_dir != current.state_dir),
            ("[store]", config.store != current.store),
            (
                "[admin] listen",
                config.admin_listen != current.admin_listen,
            ),
            ("log_format", config.log_format != current.log_format),
            ("max_per_host", config.max_per_host != current.max_per_host),
        ] {
            if changed {
                tracing::warn!(
                    key = what,
                    "this setting changed but takes effect only at the next restart"
                );
            }
        }
        let config = Arc::new(config);
        match self.apply(&config).await {
            Ok(()) => {
                tracing::info!(
                    sources = config.sources.len(),
                    targets = config.targets.len(),
                    "config reloaded"
                );
                format!(
                    "running: {} sources, {} targets (reloaded)",
                    config.sources.len(),
                    config.targets.len()
                )
            }
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "reload partly applied: some targets could not start; fix the config and reload again");
                "running; last reload partly failed (see the log)".into()
            }
        }
    }

    /// Makes the running tasks match `config`: starts what is new, restarts what
    /// changed, stops what is gone, leaves the rest alone.
    /// The first error is a target's if one failed to start, else the sources'.
    ///
    /// In a cluster, only the sources and targets this instance holds run here.
    pub(super) async fn apply(&mut self, config: &Arc<Config>) -> Result<(), DaemonError> {
        self.handle.set_config(config.clone());
        let held = |name: &String, mine: Option<&std::collections::BTreeSet<String>>| {
            mine.is_none_or(|m| m.contains(name))
        };
        let targets: BTreeMap<String, Arc<Target>> = (config.targets.iter())
            .filter(|(n, _)| held(n, self.held.as_ref().map(Held::running_targets).as_ref()))
            .map(|(n, t)| (n.clone(), t.clone()))
            .collect();
        let sources: BTreeMap<String, Arc<Source>> = (config.sources.iter())
            .filter(|(n, _)| held(n, self.held.as_ref().map(Held::running_sources).as_ref()))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let targets = self.apply_targets(config, &targets);
        let sources = self.apply_sources(config, &sources).await;
        targets.and(sources)
    }

    /// The target workers' part of [`Running::apply`]; a target whose worker cannot
    /// start is skipped (the first such error is returned), the others go on.
    fn apply_targets(
        &mut self,
        config: &Config,
        wanted: &BTreeMap<String, Arc<Target>>,
    ) -> Result<(), DaemonError> {
        let handle = &self.handle;
        let mut first_error = None;
        for name in gone(&self.targets, wanted) {
            if let Some(old) = self.targets.remove(&name) {
                if config.targets.contains_key(&name) {
                    tracing::info!(target_name = %name, "target handed to another instance of the cluster: its worker here stops after in-flight deliveries");
                } else {
                    tracing::info!(target_name = %name, "target removed: its worker stops after in-flight deliveries; pending ones wait until it is configured again");
                }
                old.stop.cancel();
                handle.metrics.forget_target(&name);
            }
        }
        for (name, target) in wanted {
            // Unchanged settings (`Target`'s equality): the running worker stays.
            if let Some(old) = self.targets.get(name) {
                if old.target == *target {
                    continue;
                }
            }
            let stop = self.shutdown.child_token();
            let worker = match TargetWorker::new(
                target.clone(),
                handle.store.clone(),
                handle.wakes.of(name),
                stop.clone(),
                config.shutdown_grace,
            ) {
                Ok(w) => w.with_metrics(handle.metrics.clone()),
                Err(e) => {
                    tracing::error!(target_name = %name, error = %crate::error::chain(&e), "cannot start the target's worker");
                    first_error.get_or_insert(DaemonError::Http(e));
                    continue;
                }
            };
            // A changed target's old worker finishes its in-flight attempts and writes
            // their acknowledgements before the new one loads the outbox: no delivery
            // is in two workers' hands. A worker whose stop came while it waited (a
            // shutdown, or a later reload that replaced it too) starts no attempt: its
            // run checks before each one, so a burst of reloads ends with one worker
            // running, and a shutdown with none starting anything.
            let previous = self.targets.remove(name).map(|old| {
                tracing::info!(target_name = %name, "target changed: restarting its worker");
                old.stop.cancel();
                old.done
            });
            let done = self.tracker.spawn(async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                worker.run().await;
            });
            self.targets.insert(
                name.clone(),
                RunningTarget {
                    target: target.clone(),
                    stop,
                    done,
                },
            );
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The source loops' part of [`Running::apply`].
    async fn apply_sources(
        &mut self,
        config: &Config,
        wanted: &BTreeMap<String, Arc<Source>>,
    ) -> Result<(), DaemonError> {
        let handle = &self.handle;
        for name in gone(&self.sources, wanted) {
            if let Some(old) = self.sources.remove(&name) {
                if config.sources.contains_key(&name) {
                    tracing::info!(source = %name, "source handed to another instance of the cluster: it is no longer polled here");
                } else {
                    tracing::info!(source = %name, "source removed: it is no longer polled; its stored state is kept until `pollhook forget {name}`");
                }
                old.stop.cancel();
                handle.remove_source(&name);
                handle.metrics.forget_source(&name);
            }
        }
        // New or changed settings (`Source`'s equality); the others keep running.
        let changed: Vec<_> = wanted
            .values()
            .filter(|s| handle.source(&s.name).is_none_or(|r| r.source != **s))
            .cloned()
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        // One fetcher (and so one connection pool) for the sources started together;
        // OAuth2 tokens carry over from the sources running before.
        let fetcher = match Fetcher::new(&config.sources) {
            Ok(f) => f
                .with_max_per_host(config.max_per_host)
                .with_shared(handle.fetch_shared.clone()),
            Err(e) => return Err(DaemonError::Http(e)),
        };
        let poller = Poller::new(handle.store.clone(), fetcher, handle.wakes.clone());
        // Items held, for status and metrics: one read for all sources, not one each
        // (a start with thousands of sources would otherwise queue thousands of reads).
        let stored: std::collections::HashMap<String, crate::store::SourceState> = match blocking(
            &handle.store,
            |s| s.sources(),
        )
        .await
        {
            Ok(list) => list.into_iter().collect(),
            Err(e) => {
                tracing::error!(error = %crate::error::chain(&e), "cannot read the stored sources; item counts show 0 until each source polls");
                Default::default()
            }
        };
        for source in changed {
            let name = source.name.clone();
            if let Some(old) = self.sources.remove(&name) {
                tracing::info!(source = %name, "source changed: restarting its schedule");
                // A poll of the old settings cut off here commits nothing; one already
                // committing makes the new loop's first commit conflict and retry.
                old.stop.cancel();
            }
            let items = stored.get(&name).map_or(0, |s| s.items);
            handle.metrics.set_items(&name, items);
            let (running, requests) = RunningSource::new(source.clone(), poller.clone());
            handle.set_source(running, items);
            let stop = self.shutdown.child_token();
            self.tracker.spawn(
                SourceLoop {
                    source,
                    poller: poller.clone(),
                    handle: handle.clone(),
                    requests,
                    stop: stop.clone(),
                    metrics: Box::new(crate::metrics::SourceMetrics::new(&name)),
                }
                .run(),
            );
            self.sources.insert(name, RunningLoop { stop });
        }
        Ok(())
    }
}

/// The names running now that `wanted` no longer has.
fn gone<A, B>(running: &BTreeMap<String, A>, wanted: &BTreeMap<String, B>) -> Vec<String> {
    running
        .keys()
        .filter(|n| !wanted.contains_key(*n))
        .cloned()
        .collect()
}
