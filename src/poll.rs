//! One poll of one source, start to finish: fetch, parse, extract, diff against the
//! stored snapshot, build events, commit, wake the targets.
//!
//! A poll that fails at any step before the commit changes nothing and emits nothing
//! (invariant 3): the error is returned, the stored snapshot stays as it was, and the next
//! poll compares against it again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::config::{redact_url, Source};
use crate::diff::{ChangeKind, DiffError, Differ};
use crate::event;
use crate::extract::{extract_each, EachError, ExtractError};
use crate::source::{FetchError, Fetcher};
use crate::store::{blocking, PollCommit, SharedStore, StoreError};

/// Why a poll failed. Nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url}: response is not valid JSON: {error}")]
    Json { url: String, error: String },
    #[error("{url}: {error}")]
    Extract { url: String, error: ExtractError },
    #[error("{url}: the response has no items but {previous} were held; refusing to treat them all as deleted (set allow_empty = true on this source if an empty list is real)")]
    SuddenlyEmpty { url: String, previous: usize },
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a poll found.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PollReport {
    /// Items in the response.
    pub items: usize,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    /// Events queued (after the source's `events` filter; none on a baseline).
    pub events: usize,
    /// This was the source's first committed poll.
    pub first: bool,
    /// This poll recorded the first snapshot silently (`baseline = true`).
    pub baseline: bool,
}

/// What a poll would commit, before committing it.
pub struct Plan {
    pub commit: PollCommit,
    pub report: PollReport,
}

/// Polls sources and commits what they changed.
#[derive(Clone)]
pub struct Poller {
    store: SharedStore,
    fetcher: Fetcher,
    /// Per target: wakes its worker after a commit queued deliveries for it.
    wakes: Wakes,
}

/// One [`Notify`] per target name, for the life of the process: whoever queues
/// deliveries for a target (a poll's commit, a replay) wakes its worker through it, and
/// a worker restarted by a reload listens on the same one.
#[derive(Clone, Default)]
pub struct Wakes(Arc<Mutex<HashMap<String, Arc<Notify>>>>);

impl Wakes {
    /// The wake-up of `target`'s worker.
    pub fn of(&self, target: &str) -> Arc<Notify> {
        // A poisoned lock means a panic while inserting into a map; the map is intact.
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(target.to_string()).or_default().clone()
    }

    /// Wakes `target`'s worker (or its next one, if none is running now).
    pub fn wake(&self, target: &str) {
        self.of(target).notify_one();
    }
}

impl Poller {
    pub fn new(store: SharedStore, fetcher: Fetcher, wakes: Wakes) -> Poller {
        Poller {
            store,
            fetcher,
            wakes,
        }
    }

    /// Polls `source` once and commits the result.
    pub async fn poll(&self, source: &Arc<Source>) -> Result<PollReport, PollError> {
        let Plan { commit, report } = self.plan(source, Utc::now()).await?;
        if report.events > 0 || commit.upserts.len() + commit.removals.len() > 0 || report.first {
            blocking(&self.store, move |s| s.commit_poll(commit)).await?;
        }
        if report.events > 0 {
            for t in &source.targets {
                self.wakes.wake(t);
            }
        }
        Ok(report)
    }

    /// Fetches `source` and works out what a commit would write, committing nothing.
    pub async fn plan(&self, source: &Arc<Source>, now: DateTime<Utc>) -> Result<Plan, PollError> {
        let body = self.fetcher.fetch(source).await?;
        let source = source.clone();
        let store = self.store.clone();
        // Parsing, extraction and diff are CPU work on possibly large documents, and the
        // snapshot read blocks: all of it runs off the async workers.
        tokio::task::spawn_blocking(move || plan_response(&*store, &source, &body, now))
            .await
            .map_err(|e| StoreError::Db(format!("poll task stopped: {e}")))?
    }
}

/// Works out what a poll that got `body` would commit: parse, extract, diff against the
/// stored snapshot, build events. Blocking (store reads, CPU work on the document).
pub fn plan_response(
    store: &dyn crate::store::Store,
    source: &Source,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Plan, PollError> {
    let url = redact_url(&source.url);
    let state = store.source_state(&source.name)?;
    let previous = store.snapshot(&source.name)?;
    // Items are diffed as they are parsed: memory holds the changed items, not the
    // whole document.
    let baseline = !state.initialized && source.baseline;
    let emit: &[ChangeKind] = if baseline { &[] } else { &source.events };
    let mut differ = Differ::new(&previous, &source.ignore).keep_only(emit);
    let count = extract_each(body, &source.items, &source.id, &mut |item| {
        differ.push(item)
    })
    .map_err(|e| match e {
        EachError::Json(e) => PollError::Json {
            url: url.clone(),
            error: e.to_string(),
        },
        EachError::Extract(error) => PollError::Extract {
            url: url.clone(),
            error,
        },
        EachError::Stopped(e) => PollError::Diff(e),
    })?;
    if count == 0 && !previous.is_empty() && !source.allow_empty {
        return Err(PollError::SuddenlyEmpty {
            url,
            previous: previous.len(),
        });
    }
    let d = differ.finish()?;
    let mut report = PollReport {
        items: count,
        first: !state.initialized,
        baseline,
        ..PollReport::default()
    };
    let generation = state.generation + 1;
    let mut events = Vec::new();
    (report.created, report.updated, report.deleted) = (d.created, d.updated, d.deleted);
    // Every event of a poll goes to the same targets: one shared list, not a copy each.
    let targets: Arc<[String]> = source.targets.clone().into();
    for change in &d.changes {
        events.push((
            event::build(&source.name, generation, change, now),
            targets.clone(),
        ));
    }
    report.events = events.len();
    Ok(Plan {
        commit: PollCommit {
            source: source.name.clone(),
            expected_generation: state.generation,
            upserts: d.upserts,
            removals: d.removals,
            events,
            item_count: count as u64,
            now_ms: now.timestamp_millis(),
        },
        report,
    })
}
