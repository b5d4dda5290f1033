//! The running daemon as the rest of the process sees it: the daemon starts it and keeps
//! it up to date, the admin API reads it, and neither imports the other. A [`Handle`]
//! holds the store, the metrics, the config running now, each source's latest
//! [`SourceStatus`] (which the CLI builds too when no daemon runs), and each source as it
//! runs: a [`RunningSource`] (`source.rs`), whose `poll_now` asks its loop to poll.
//! `health.rs` keeps the first fatal store error, which makes the daemon not ready.
//!
//! Locks here are std mutexes held only to copy or update a few fields, never across an
//! `.await`.

mod health;
mod source;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Source};
use crate::metrics::{Metrics, PollOutcome};
use crate::poll::Wakes;
use crate::store::SharedStore;
pub use health::Failure;
pub(crate) use health::Health;
pub use source::{PollNow, PollNowError, PollRequests, RunningSource};

/// What `/v1/sources` shows of one source.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    /// The URL without credentials or query.
    pub url: String,
    pub schedule: String,
    /// When the last poll of this run ended.
    pub last_poll: Option<DateTime<Utc>>,
    /// `ok` or `error`; none before the first poll of this run.
    pub last_outcome: Option<String>,
    /// The last failed poll's error (kept after later successes, with its time).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_duration_ms: Option<u64>,
    pub next_poll: Option<DateTime<Utc>>,
    /// Items held after the last committed poll.
    pub items: u64,
    /// Failed polls in a row (0 after a success).
    pub consecutive_failures: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    /// In a cluster: the instance holding the source's lease, which polls it (none
    /// while no live instance holds it; always none for a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl SourceStatus {
    /// The status of `source` as configured now, holding `items` (as stored), with the
    /// polls of this run in `history` (none for a source not yet run).
    pub fn new(source: &Source, items: u64, history: Option<SourceStatus>) -> SourceStatus {
        SourceStatus {
            name: source.name.clone(),
            url: source.location(),
            schedule: source.schedule_text(),
            items,
            ..history.unwrap_or_default()
        }
    }

    /// A poll ended at `at` after `took_ms`, with `outcome` (and, for a failed poll,
    /// `error`).
    fn record_poll(
        &mut self,
        outcome: PollOutcome,
        error: Option<String>,
        at: DateTime<Utc>,
        took_ms: u64,
    ) {
        self.last_poll = Some(at);
        self.last_outcome = Some(outcome.label().into());
        self.last_duration_ms = Some(took_ms);
        match outcome {
            PollOutcome::Error => {
                self.last_error = error;
                self.last_error_at = Some(at);
                self.consecutive_failures += 1;
                self.polls_failed += 1;
            }
            PollOutcome::Ok { items, .. } => {
                self.items = items as u64;
                self.succeeded();
            }
            PollOutcome::NotModified | PollOutcome::HeldBack { .. } => self.succeeded(),
        }
    }

    fn succeeded(&mut self) {
        self.consecutive_failures = 0;
        self.polls_ok += 1;
    }
}

/// The running daemon, shared with the admin API.
pub struct Handle {
    pub store: SharedStore,
    pub metrics: Arc<Metrics>,
    pub wakes: Wakes,
    /// OAuth2 tokens and per-host turns, kept across reloads.
    pub fetch_shared: crate::source::Shared,
    ready: AtomicBool,
    /// Set by the daemon: a failed store makes the daemon not ready.
    health: Option<Arc<Health>>,
    config: Mutex<Arc<Config>>,
    sources: Mutex<BTreeMap<String, RunningSource>>,
    status: Mutex<BTreeMap<String, SourceStatus>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere while holding it; these maps stay
    // consistent (every update is a single insert or field write).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handle {
    pub fn new(store: SharedStore, metrics: Arc<Metrics>, config: Arc<Config>) -> Handle {
        Handle {
            store,
            metrics,
            wakes: Wakes::default(),
            fetch_shared: crate::source::Shared::default(),
            ready: AtomicBool::new(false),
            health: None,
            config: Mutex::new(config),
            sources: Mutex::new(BTreeMap::new()),
            status: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whose failures make this handle not ready.
    pub(crate) fn with_health(mut self, health: Arc<Health>) -> Handle {
        self.health = Some(health);
        self
    }

    /// Store open and working, config loaded, sources and targets started, not stopping.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.health.as_ref().is_none_or(|h| h.failure().is_none())
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The config the daemon runs now.
    pub fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    pub(crate) fn set_config(&self, config: Arc<Config>) {
        *lock(&self.config) = config;
    }

    /// A configured source as it runs now.
    pub fn source(&self, name: &str) -> Option<RunningSource> {
        lock(&self.sources).get(name).cloned()
    }

    pub(crate) fn set_source(&self, running: RunningSource, items: u64) {
        let s = &running.source;
        let mut status = lock(&self.status);
        // A restarted source (its settings changed) keeps the polls of this run.
        let history = status.remove(&s.name);
        status.insert(s.name.clone(), SourceStatus::new(s, items, history));
        lock(&self.sources).insert(s.name.clone(), running);
    }

    pub(crate) fn remove_source(&self, name: &str) {
        lock(&self.sources).remove(name);
        lock(&self.status).remove(name);
    }

    /// Every configured source's status, by name.
    pub fn statuses(&self) -> Vec<SourceStatus> {
        lock(&self.status).values().cloned().collect()
    }

    /// A poll of source `name` ended: shown in its status (its loop counts it in the
    /// metrics).
    pub(crate) fn record_poll(
        &self,
        name: &str,
        outcome: PollOutcome,
        error: Option<String>,
        at: DateTime<Utc>,
        took: Duration,
    ) {
        self.update_status(name, |st| {
            st.record_poll(outcome, error, at, took.as_millis() as u64)
        });
    }

    /// Updates one source's status, if it is still configured.
    pub(crate) fn update_status(&self, name: &str, f: impl FnOnce(&mut SourceStatus)) {
        if let Some(s) = lock(&self.status).get_mut(name) {
            f(s);
        }
    }
}
