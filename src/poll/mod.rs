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

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Format, Mode, Origin, Source};
use crate::diff::DiffError;

use crate::extract::{Collection, ExtractError, Item};
use crate::source::{FetchError, Fetcher, Page, Validators};
use crate::store::{blocking, SharedStore, StoreError};

mod plan;
mod walk;

use walk::{read_page, PageRead};

pub use plan::{plan_fetched, plan_response, Plan, CHUNK};

/// Why a poll failed. Nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url}: response is not valid JSON")]
    Json {
        url: String,
        #[source]
        error: serde_json::Error,
    },
    #[error("{url}: response is not a feed")]
    Feed {
        url: String,
        #[source]
        error: crate::feed::FeedError,
    },
    #[error("{url}: transform failed")]
    Transform {
        url: String,
        #[source]
        error: crate::transform::TransformError,
    },
    #[error("{url}: {error}")]
    Extract { url: String, error: ExtractError },
    #[error("{url}: page {page} leads back to a page already fetched in this poll; the pagination settings may not match the API")]
    PageLoop { url: String, page: u32 },
    #[error("{url}: page {page} names a next page that is not a URL")]
    NextUrl {
        url: String,
        page: u32,
        #[source]
        error: url::ParseError,
    },
    #[error("{url}: page {page} names a next page on another origin ({next}); pollhook sends a source's credentials only to the scheme, host and port of its url, so the walk stops here")]
    ForeignPage {
        url: String,
        page: u32,
        next: String,
    },
    #[error("{url}: the pages of this walk total more than max_body = {limit} bytes (at page {page}); raise max_body, which caps a whole walk, if the API really returns that much")]
    WalkTooLarge { url: String, page: u32, limit: u64 },
    #[error("{url}: processing the response took longer than {} (a transform that never ends?); the poll is abandoned", humantime::format_duration(*.limit))]
    ProcessingTimeout {
        url: String,
        limit: std::time::Duration,
    },
    /// The blocking task that processed the response or committed the poll panicked
    /// (a bug) or was cancelled at shutdown.
    #[error("{url}: {task} failed")]
    Task {
        url: String,
        /// "processing the response" or "committing the poll".
        task: &'static str,
        #[source]
        error: tokio::task::JoinError,
    },
    #[error("{url}: the response has no items but {previous} were held; refusing to treat them all as deleted (set allow_empty = true on this source if an empty list is real)")]
    SuddenlyEmpty { url: String, previous: usize },
    /// The collection has another shape than the one the source holds: most likely an
    /// error answer sent with status 200 (`{"message": "API rate limit exceeded"}` read
    /// as an object of two items would delete every held item).
    #[error("{url}: {detail}; refusing the poll, which would report them all deleted (an error answer sent with status 200?). Nothing changed. If the API really changed its format, run `pollhook forget {source_name}` to start the source afresh")]
    ShapeChanged {
        url: String,
        source_name: String,
        /// What came and what was held.
        detail: String,
    },
    /// The store holds fewer items of the source than its last commit wrote: part of
    /// the snapshot is lost, and polling would report the missing items as created.
    #[error("source {source_name}: the state database holds {found} of the {stored} items its last commit stored (snapshot records in {state} are missing or cut short); refusing to poll, since every missing item would be reported as created. Restore the state_dir from a backup, or run `pollhook forget {source_name}` to start this source afresh (its next poll records a new baseline)")]
    SnapshotDamaged {
        source_name: String,
        found: usize,
        stored: u64,
        state: String,
    },
    #[error(transparent)]
    Diff(#[from] DiffError),
    /// More items than the source's `max_items`.
    #[error("{url}: the response holds more than max_items = {limit} items, and a poll holds memory for each (about 3 KB an item: see \"Memory\" in the README); refusing the poll, nothing changed. If the source really has that many, raise max_items on it, with the memory that takes")]
    TooManyItems { url: String, limit: u64 },
    #[error("source {source_name}: {error}")]
    Route {
        source_name: String,
        #[source]
        error: Box<crate::route::RouteError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PollError {
    /// How long the source asked us to wait (a 429 or 503 with `Retry-After`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            PollError::Fetch(e) => e.retry_after(),
            _ => None,
        }
    }
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
    /// The source answered 304 Not Modified: nothing was parsed, diffed or written.
    #[serde(default)]
    pub not_modified: bool,
    /// The body was byte for byte the one of the source's last committed poll (same
    /// SHA-256), and the stored state is still the one it left: nothing was parsed,
    /// diffed or written, as for a 304. `items` is the stored item count.
    #[serde(default)]
    pub same_body: bool,
    /// Pages fetched (1 without pagination).
    #[serde(default)]
    pub pages: u32,
    /// A page walk stopped at `max_pages`: the items seen were diffed, but nothing
    /// was deleted, since unseen items may be on the pages not fetched.
    #[serde(default)]
    pub truncated: bool,
    /// The poll would have deleted more items than the source's `deletion_guard`
    /// allows at once, so nothing was committed (see [`HeldBack`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back: Option<HeldBack>,
}

/// A poll held back by the deletion guard: it would have deleted `deletions` of the
/// `held` items. The same deletions seen by `needed` polls in a row are committed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldBack {
    pub deletions: usize,
    pub held: usize,
    /// Polls in a row that saw these deletions, this one included.
    pub seen: u32,
    /// Polls in a row that must see them before they are committed.
    pub needed: u32,
}

/// What the next poll compares with: the last committed response's validators (sent as
/// a conditional request), the SHA-256 of its body, and the source's stored generation
/// they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditions {
    /// None if the response had neither `ETag` nor `Last-Modified`.
    pub validators: Option<Validators>,
    /// The body's digest, for single-body JSON sources (see [`PollReport::same_body`]).
    pub digest: Option<BodyDigest>,
    pub generation: u64,
}

/// What fetching a source brought back, before the diff.
pub enum Fetched {
    /// One JSON body, extracted as it is parsed (the common case, and the cheapest).
    Body(Vec<u8>),
    /// Items taken from parsed documents: pages, feeds, transforms, documents.
    Items {
        items: Vec<Item>,
        pages: u32,
        /// Every page was fetched; only then may unseen items count as deleted.
        complete: bool,
        /// What the items came in (None for a document source's one item).
        collection: Option<Collection>,
    },
    /// 304 Not Modified.
    NotModified,
}

/// The SHA-256 of a response body.
pub type BodyDigest = [u8; 32];

/// A plan, or the finding that the body was the last committed one's.
enum Planned {
    Plan(Box<Plan>, Option<BodyDigest>),
    /// The body had the digest of the conditions and the source is still at their
    /// generation; it holds `items`.
    Same {
        items: u64,
    },
}

/// Polls sources and commits what they changed.
#[derive(Clone)]
pub struct Poller {
    store: SharedStore,
    fetcher: Fetcher,
    /// Per target: wakes its worker after a commit queued deliveries for it.
    wakes: Wakes,
    /// Per source: the mass deletion its last polls held back.
    holds: Arc<Mutex<HashMap<String, Hold>>>,
}

/// Deletions the guard held back: which (a digest of the ids) and how many polls in a
/// row have seen exactly these.
struct Hold {
    digest: [u8; 32],
    seen: u32,
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
            holds: Arc::default(),
        }
    }

    /// Polls `source` once and commits the result.
    pub async fn poll(&self, source: &Arc<Source>) -> Result<PollReport, PollError> {
        self.poll_conditional(source, None).await.map(|(r, _)| r)
    }

    /// [`Poller::poll`] with the conditions of the source's last good response. A 304
    /// counts only if the source's stored state is still the one they were saved with: a
    /// `forget` in between must get a full response, or the 304 would hide the items, so
    /// the request is then made again without them. A poll reads the stored state once:
    /// here after a 304, or when it plans. Returns this response's conditions once its
    /// poll is committed, so a failed commit never hides a change behind a later 304.
    pub async fn poll_conditional(
        &self,
        source: &Arc<Source>,
        conditions: Option<&Conditions>,
    ) -> Result<(PollReport, Option<Conditions>), PollError> {
        let mut conditions = conditions;
        let validators = conditions.and_then(|c| c.validators.as_ref());
        let (mut fetched, mut found) = self.fetch(source, validators).await?;
        if let (Fetched::NotModified, Some(c)) = (&fetched, conditions) {
            let name = source.name.clone();
            let state = blocking(&self.store, move |s| s.source_state(&name)).await?;
            if state.generation != c.generation {
                conditions = None;
                (fetched, found) = self.fetch(source, None).await?;
            }
        }
        if matches!(fetched, Fetched::NotModified) {
            return Ok((
                PollReport {
                    not_modified: true,
                    ..PollReport::default()
                },
                conditions.cloned(),
            ));
        }
        let last = conditions.and_then(|c| Some((c.digest?, c.generation)));
        let (plan, digest) = match self.plan_unless_same(source, fetched, last).await? {
            Planned::Plan(plan, digest) => (*plan, digest),
            Planned::Same { items } => {
                let report = PollReport {
                    items: usize::try_from(items).unwrap_or(usize::MAX),
                    pages: 1,
                    same_body: true,
                    ..PollReport::default()
                };
                // This response's validators, which may be new for the same body.
                let kept = conditions.map(|c| Conditions {
                    validators: found,
                    ..c.clone()
                });
                return Ok((report, kept));
            }
        };
        if let Some(held_back) = self.hold_back(source, &plan) {
            // Nothing is committed, and no conditions are kept: the next poll must get
            // the full answer again to confirm (or take back) these deletions.
            let report = PollReport {
                held_back: Some(held_back),
                events: 0,
                ..plan.report
            };
            return Ok((report, None));
        }
        let report = plan.report.clone();
        let generation = self.commit(source, plan).await?;
        let found = (found.is_some() || digest.is_some()).then_some(Conditions {
            validators: found,
            digest,
            generation,
        });
        Ok((report, found))
    }

    /// Commits `plan` (in chunks if it is large, see [`plan`]) on a blocking thread;
    /// returns the generation stored. Targets are woken there right after each commit
    /// that queued deliveries: if this future is dropped meanwhile (a reload, a
    /// shutdown), the commits still land, and their deliveries must not wait for some
    /// later wake. An unchanged poll makes no store call at all.
    async fn commit(&self, source: &Source, plan: Plan) -> Result<u64, PollError> {
        if !plan.writes() {
            return Ok(plan.generation_read());
        }
        let store = self.store.clone();
        let wakes = self.wakes.clone();
        let targets = source.targets.clone();
        let _turn = work_turn().await;
        tokio::task::spawn_blocking(move || {
            plan.commit_all(&*store, move || {
                for t in &targets {
                    wakes.wake(t);
                }
            })
        })
        .await
        .map_err(|error| PollError::Task {
            url: source.location(),
            task: "committing the poll",
            error,
        })?
    }

    /// Whether the deletion guard holds `plan` back: it deletes more than the source's
    /// guard allows, and fewer than `confirm` polls before it in a row saw exactly these
    /// deletions. A one-off bad answer (a truncated list) then deletes nothing; deletions
    /// that persist are committed by the poll that confirms them. Any other poll ends the
    /// run. Kept in memory: a restart or a reload of the source starts counting again.
    fn hold_back(&self, source: &Source, plan: &Plan) -> Option<HeldBack> {
        // A poisoned lock means a panic while updating a map entry; the map is intact.
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let deletions = plan.removals().len();
        if !source.deletion_guard.holds_back(deletions, plan.held) {
            holds.remove(&source.name);
            return None;
        }
        let mut digest = Sha256::new();
        for id in plan.removals() {
            digest.update(id.as_bytes());
            digest.update([0u8]);
        }
        let digest: [u8; 32] = digest.finalize().into();
        let hold = holds
            .entry(source.name.clone())
            .or_insert(Hold { digest, seen: 0 });
        if hold.digest != digest {
            *hold = Hold { digest, seen: 0 };
        }
        hold.seen += 1;
        let needed = source.deletion_guard.confirm + 1;
        if hold.seen >= needed {
            holds.remove(&source.name);
            return None;
        }
        Some(HeldBack {
            deletions,
            held: plan.held,
            seen: hold.seen,
            needed,
        })
    }

    /// Fetches `source` and works out what a commit would write, committing nothing.
    pub async fn plan(&self, source: &Arc<Source>, now: DateTime<Utc>) -> Result<Plan, PollError> {
        let (fetched, _) = self.fetch(source, None).await?;
        self.plan_fetched(source, fetched, now).await
    }

    /// What a poll of `source` would emit now, committing nothing: the report and the
    /// event envelopes. A first poll shows its items as created even with
    /// `baseline = true`: seeing them is the point of a dry run.
    pub async fn dry_run(&self, source: &Source) -> Result<(PollReport, Vec<Value>), PollError> {
        let plan = self.dry_plan(source).await?;
        let report = plan.report.clone();
        let events = plan
            .into_events()
            // The body is the envelope serde_json wrote, so it parses.
            .map(|e| e.map(|e| serde_json::from_slice(&e.body).unwrap_or(Value::Null)))
            .collect::<Result<_, _>>()?;
        Ok((report, events))
    }

    /// The plan of a dry run of `source`: as [`Poller::plan`], but a first poll shows
    /// its items as created even with `baseline = true`.
    pub async fn dry_plan(&self, source: &Source) -> Result<Plan, PollError> {
        let mut source = source.clone();
        source.baseline = false;
        self.plan(&Arc::new(source), Utc::now()).await
    }

    /// [`Poller::plan_fetched`], unless `fetched` is a single body with the digest of
    /// `last` and the source's stored generation is still `last`'s: then nothing is
    /// parsed or read but the source's state. One blocking call either way.
    async fn plan_unless_same(
        &self,
        source: &Arc<Source>,
        fetched: Fetched,
        last: Option<(BodyDigest, u64)>,
    ) -> Result<Planned, PollError> {
        let body = match fetched {
            Fetched::Body(body) => body,
            other => {
                let plan = self.plan_fetched(source, other, Utc::now()).await?;
                return Ok(Planned::Plan(Box::new(plan), None));
            }
        };
        let store = self.store.clone();
        let s = source.clone();
        cpu(source, move || {
            // On this thread, not an async worker: one pass over a body of up to max_body.
            let digest: BodyDigest = Sha256::digest(&body).into();
            if let Some((last, generation)) = last {
                if last == digest {
                    let state = store.source_state(&s.name)?;
                    if state.generation == generation {
                        return Ok(Planned::Same { items: state.items });
                    }
                }
            }
            let plan = plan_fetched(&*store, &s, Fetched::Body(body), Utc::now())?;
            Ok(Planned::Plan(Box::new(plan), Some(digest)))
        })
        .await
    }

    async fn plan_fetched(
        &self,
        source: &Arc<Source>,
        fetched: Fetched,
        now: DateTime<Utc>,
    ) -> Result<Plan, PollError> {
        let store = self.store.clone();
        // Parsing, extraction and diff are CPU work on possibly large documents, and the
        // snapshot read blocks: all of it runs off the async workers.
        let s = source.clone();
        cpu(source, move || plan_fetched(&*store, &s, fetched, now)).await
    }

    /// Gets the source's document(s): one request, a page walk, or a command.
    async fn fetch(
        &self,
        source: &Arc<Source>,
        validators: Option<&Validators>,
    ) -> Result<(Fetched, Option<Validators>), PollError> {
        // One turn at the host for the whole poll, every page of it; a single body is
        // processed after the turn is given back.
        let permit = self.fetcher.host_permit(source).await;
        let req = match &source.origin {
            Origin::Command(argv) => {
                let body = self.fetcher.run_command(source, argv).await?;
                return Ok((self.shape(source, body).await?, None));
            }
            Origin::Http(req) => req,
        };
        if let Some(p) = &source.pagination {
            return Ok((self.walk(source, req, p).await?, None));
        }
        let page = self
            .fetcher
            .fetch(source, req, &req.url, validators)
            .await?;
        drop(permit);
        match page {
            Page::NotModified => Ok((Fetched::NotModified, None)),
            Page::Body {
                body, validators, ..
            } => Ok((self.shape(source, body).await?, validators)),
        }
    }

    /// One body as [`Fetched`]: kept whole for the streaming path, else read now.
    async fn shape(&self, source: &Arc<Source>, body: Vec<u8>) -> Result<Fetched, PollError> {
        if streams(source) {
            return Ok(Fetched::Body(body));
        }
        let s = source.clone();
        let PageRead {
            items, collection, ..
        } = cpu(source, move || read_page(&s, &body, None)).await?;
        Ok(Fetched::Items {
            items,
            pages: 1,
            complete: true,
            collection,
        })
    }
}

/// How long the CPU work of a poll (parsing, transform, extraction, diff) may take:
/// the request timeout, but at least a minute, since a large document takes seconds.
fn processing_limit(source: &Source) -> std::time::Duration {
    source.timeout.max(std::time::Duration::from_secs(60))
}

/// The polls' blocking work in the process (parsing, diffing, committing) that may run
/// at once: twice the cores. Without a bound, the polls of thousands of sources that
/// come due together each took a blocking thread of their own (523 threads were
/// counted for 10,000 sources), with their memory and the switching between them, and
/// finished no sooner. Waiting for a turn queues in order; a poll holds one turn at a
/// time, so none waits on itself.
static WORK: std::sync::LazyLock<tokio::sync::Semaphore> = std::sync::LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(2 * cores)
});

/// A turn at [`WORK`].
async fn work_turn() -> tokio::sync::SemaphorePermit<'static> {
    WORK.acquire()
        .await
        .expect("the work semaphore is never closed")
}

/// Runs `f` on a blocking thread in a turn of [`WORK`], giving up after
/// [`processing_limit`]. A thread given up on (a transform that never ends) runs on
/// without the turn; the poll fails and the loop goes on.
async fn cpu<T, F>(source: &Source, f: F) -> Result<T, PollError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, PollError> + Send + 'static,
{
    let limit = processing_limit(source);
    let _turn = work_turn().await;
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(PollError::Task {
            url: source.location(),
            task: "processing the response",
            error,
        }),
        Err(_) => Err(PollError::ProcessingTimeout {
            url: source.location(),
            limit,
        }),
    }
}

/// Whether `source`'s single JSON body can be extracted while it is parsed.
fn streams(source: &Source) -> bool {
    source.format == Format::Json
        && source.transform.is_none()
        && source.mode == Mode::Items
        && source.pagination.is_none()
}

/// The item id of a `mode = "document"` source's one item.
pub const DOCUMENT_ID: &str = "document";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Source `s` of a config with one target, `options` added to the source.
    pub(super) fn source_with(options: &str) -> Arc<Source> {
        let text = format!(
            r#"
[targets.t]
url = "http://127.0.0.1:9/hooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sources.s]
url = "http://127.0.0.1:9/items"
interval = "1m"
targets = ["t"]
{options}
"#
        );
        let config = crate::config::Config::parse(
            &text,
            std::path::Path::new("/tmp/pollhook-test/config.toml"),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        config.sources["s"].clone()
    }

    fn source() -> Arc<Source> {
        source_with("")
    }

    /// Thousands of sources come due together; their parsing and diffing must not each
    /// take a blocking thread of its own. 64 polls' work at once runs at most
    /// twice-the-cores at a time, and all of it runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_polls_blocking_work_runs_a_few_at_a_time() {
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let source = source();
        let polls: Vec<_> = (0..64)
            .map(|i| {
                let source = source.clone();
                tokio::spawn(async move {
                    cpu(&source, move || {
                        let now = NOW.fetch_add(1, Ordering::SeqCst) + 1;
                        MOST.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                        NOW.fetch_sub(1, Ordering::SeqCst);
                        Ok(i)
                    })
                    .await
                })
            })
            .collect();
        let mut done = 0;
        for (i, poll) in polls.into_iter().enumerate() {
            assert_eq!(poll.await.unwrap().unwrap(), i);
            done += 1;
        }
        assert_eq!(done, 64);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let most = MOST.load(Ordering::SeqCst);
        assert!(
            most <= 2 * cores,
            "{most} polls' work ran at once, with {cores} cores"
        );
        assert!(most >= 2, "the work ran one at a time: {most}");
    }
}
