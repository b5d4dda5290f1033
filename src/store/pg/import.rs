//! Copying another store's state into an empty PostgreSQL database (`pollhook
//! migrate-store`): every source's state and snapshot, every pending and dead delivery,
//! read through the [`Store`] trait, written in one transaction.
//!
//! What must carry over exactly, and why:
//!
//! - A source's generation: event ids hash it, so a change detected again after the
//!   move (one whose poll had not committed) gets the id it would have had, and later
//!   events never reuse an id of earlier ones. `initialized` too: a source that had
//!   recorded its baseline must not record another (no flood of created events, no
//!   silent swallowing either), and the item count and collection, which the next
//!   poll's checks compare with.
//! - The snapshot's fingerprints and bytes: the next poll diffs against them.
//! - The deliveries, with their sequence numbers: they keep each target's order, and
//!   an event's deliveries keep sharing one number across targets, as the outbox's
//!   sequence is shared. `pollhook_meta.next_seq` is raised above every one copied, so
//!   new commits queue after them.
//!
//! All or nothing: the copy is one transaction, so a failure (a lost connection, an
//! item PostgreSQL cannot hold) leaves the database as it was, empty. The source store
//! is read a part at a time on the caller's thread while the transaction's task writes
//! the previous part (`Runner::run_fed`): memory holds one source's snapshot (the trait
//! reads a snapshot whole) and a few batches, not the whole state. The tables are
//! locked for the transaction, and it goes ahead only if no instance is alive in
//! `pollhook_instances` and the tables hold no state: an import never mixes two
//! installations' state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{Receiver, Sender};
use tokio_postgres::Transaction;

use super::conn::Pool;
use super::{Fail, NewDeliveries, PgStore};
use crate::store::{Delivery, SourceState, Store, StoreError};

/// Items per insert.
const ITEM_BATCH: usize = 5_000;
/// Deliveries per insert (their bodies are a few KiB each).
const DELIVERY_BATCH: usize = 1_000;
/// How long the whole copy may take: the transaction's statements are each bounded
/// by [`STATEMENT_LIMIT`], this bounds the rest (a source store that reads slowly).
const IMPORT_LIMIT: Duration = Duration::from_secs(6 * 60 * 60);
/// How long one statement may run, and wait for a lock, before the copy fails.
const STATEMENT_LIMIT: &str = "5min";
const LOCK_LIMIT: &str = "10s";

/// What an import copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Every source, in name order.
    pub sources: Vec<ImportedSource>,
    /// Per target with any: pending and dead deliveries copied.
    pub targets: BTreeMap<String, ImportedTarget>,
    /// The database's next sequence number after the copy.
    pub next_seq: u64,
}

/// One source copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportedSource {
    pub name: String,
    /// Its state as copied (generation, initialized, item count, collection).
    pub state: SourceState,
    /// Snapshot items copied.
    pub items: u64,
}

/// One target's deliveries copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportedTarget {
    pub pending: u64,
    pub dead: u64,
}

impl ImportReport {
    /// Items copied, over all sources.
    pub fn items(&self) -> u64 {
        self.sources.iter().map(|s| s.items).sum()
    }
}

/// One part of the copy, from the reading thread to the writing task.
enum Part {
    Source(String, SourceState),
    Items {
        source: String,
        ids: Vec<String>,
        hashes: Vec<Vec<u8>>,
        raws: Vec<Vec<u8>>,
    },
    Deliveries {
        dead: bool,
        target: String,
        rows: NewDeliveries,
    },
    /// Everything was sent: commit.
    End,
}

impl PgStore {
    /// Copies everything `from` holds into this database, which must be empty, with no
    /// instance running on it: every source's state and snapshot, every pending and
    /// dead delivery (see the module's comment for what is kept exactly). One
    /// transaction: on any error nothing is written. `from` is only read.
    pub fn import(&self, from: &dyn Store) -> Result<ImportReport, StoreError> {
        // What is being done, for the error of the statement that fails.
        let step = Arc::new(Mutex::new(String::from("starting the copy")));
        let doing = step.clone();
        let result = self.runner.run_fed(
            move || lock(&doing).clone(),
            IMPORT_LIMIT,
            move |pool, parts| write(pool, parts, step),
            |parts| {
                read(from, parts).map_err(|error| StoreError::ImportRead {
                    from: from.describe(),
                    error: Box::new(error),
                })
            },
        );
        // The store's own words for these say "pollhook retries it", true of the
        // daemon's operations, not of a copy that ends here.
        result.map_err(|e| match e {
            StoreError::Postgres { db, doing, error } => {
                StoreError::ImportFailed { db, doing, error }
            }
            StoreError::PostgresTimeout { db, doing, limit } => {
                StoreError::ImportTimedOut { db, doing, limit }
            }
            e => e,
        })
    }
}

fn lock(step: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    // A poisoned lock guards a message only.
    step.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `part`; false when the writer has stopped (it failed, and says why).
fn send(parts: &Sender<Part>, part: Part) -> bool {
    parts.blocking_send(part).is_ok()
}

/// Reads `from` a part at a time and sends the parts, then [`Part::End`]. Returns
/// early, without error, when the writer stopped.
fn read(from: &dyn Store, parts: &Sender<Part>) -> Result<(), StoreError> {
    for (name, state) in from.sources()? {
        let snapshot = from.snapshot(&name)?;
        if !send(parts, Part::Source(name.clone(), state)) {
            return Ok(());
        }
        let mut items: Vec<_> = snapshot.into_iter().collect();
        // In id order, the table's order: the inserts touch its index in sequence.
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let (mut ids, mut hashes, mut raws) = (Vec::new(), Vec::new(), Vec::new());
            for (id, seen) in items.by_ref().take(ITEM_BATCH) {
                ids.push(id);
                hashes.push(seen.hash.to_vec());
                raws.push(seen.raw);
            }
            let source = name.clone();
            if !send(
                parts,
                Part::Items {
                    source,
                    ids,
                    hashes,
                    raws,
                },
            ) {
                return Ok(());
            }
        }
    }
    let targets = from.target_stats()?;
    for (target, stats) in &targets {
        if stats.pending > 0 {
            let mut after = None;
            loop {
                let page = from.pending(target, after, DELIVERY_BATCH)?;
                let Some(last) = page.last() else { break };
                after = Some(last.seq);
                let full = page.len() == DELIVERY_BATCH;
                if !send(parts, deliveries(false, target, page)?) {
                    return Ok(());
                }
                if !full {
                    break;
                }
            }
        }
        if stats.dead > 0 {
            // The trait has no pages of dead letters: one target's are read at once.
            let dead = from.dead(Some(target), usize::MAX)?;
            let mut dead = dead.into_iter().peekable();
            while dead.peek().is_some() {
                let batch: Vec<Delivery> = dead.by_ref().take(DELIVERY_BATCH).collect();
                if !send(parts, deliveries(true, target, batch)?) {
                    return Ok(());
                }
            }
        }
    }
    send(parts, Part::End);
    Ok(())
}

/// A batch of one target's deliveries as a part, refusing a sequence number that a
/// bigint cannot hold (no store draws one; a wrap would reorder the outbox).
fn deliveries(dead: bool, target: &str, batch: Vec<Delivery>) -> Result<Part, StoreError> {
    let mut rows = NewDeliveries::default();
    for d in batch {
        if i64::try_from(d.seq).is_err() {
            return Err(StoreError::Corrupt {
                key: format!(
                    "{}/{target}/{}",
                    if dead { "dead" } else { "outbox" },
                    d.seq
                ),
                reason: "the sequence number is beyond PostgreSQL's bigint".into(),
            });
        }
        rows.push(d);
    }
    Ok(Part::Deliveries {
        dead,
        target: target.to_string(),
        rows,
    })
}

/// The writing side: one transaction that checks the database may take the copy,
/// writes the parts as they come, raises the sequence and commits at [`Part::End`].
async fn write(
    pool: Arc<Pool>,
    mut parts: Receiver<Part>,
    step: Arc<Mutex<String>>,
) -> Result<ImportReport, Fail> {
    let at = |what: String| *lock(&step) = what;
    let mut conn = pool.conn().await?;
    let tx = conn.transaction().await?;
    at("locking its tables (is a pollhook instance still writing to it?)".into());
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{LOCK_LIMIT}'; SET LOCAL statement_timeout = '{STATEMENT_LIMIT}';
         LOCK TABLE pollhook_meta, pollhook_sources, pollhook_items, pollhook_outbox, pollhook_dead IN EXCLUSIVE MODE"
    ))
    .await?;
    at("checking that no instance runs on it and that it is empty".into());
    refuse_unless_empty(&tx, &pool.shown).await?;
    let mut report = ImportReport::default();
    let mut max_seq: Option<i64> = None;
    loop {
        // None: the reader failed before the end. Returning drops the transaction (a
        // rollback); the caller reports the reader's error, not this one.
        let Some(part) = parts.recv().await else {
            return Err(Fail::Store(StoreError::ImportRead {
                from: "the store copied from".into(),
                error: Box::new(StoreError::Corrupt {
                    key: "the copy".into(),
                    reason: "the reading stopped before the end".into(),
                }),
            }));
        };
        match part {
            Part::Source(name, state) => {
                at(format!("copying the state of source {name}"));
                let collection = state
                    .collection
                    .map(|c| serde_json::to_string(&c).unwrap_or_default());
                tx.execute(
                    "INSERT INTO pollhook_sources (name, generation, initialized, items, collection) VALUES ($1, $2, $3, $4, $5)",
                    &[&name, &(state.generation as i64), &state.initialized, &(state.items as i64), &collection],
                )
                .await?;
                report.sources.push(ImportedSource {
                    name,
                    state: SourceState {
                        buckets: 0,
                        staged: 0,
                        ..state
                    },
                    items: 0,
                });
            }
            Part::Items {
                source,
                ids,
                hashes,
                raws,
            } => {
                at(format!("copying the stored items of source {source}"));
                let n = tx
                    .execute(
                        "INSERT INTO pollhook_items (source, id, hash, raw) SELECT $1, * FROM unnest($2::text[], $3::bytea[], $4::bytea[])",
                        &[&source, &ids, &hashes, &raws],
                    )
                    .await?;
                if let Some(s) = report.sources.last_mut() {
                    s.items += n;
                }
            }
            Part::Deliveries { dead, target, rows } => {
                let (kind, table) = if dead {
                    ("dead", "pollhook_dead")
                } else {
                    ("pending", "pollhook_outbox")
                };
                at(format!("copying the {kind} deliveries of target {target}"));
                rows.insert(&tx, table).await?;
                max_seq = rows.seq.iter().copied().chain(max_seq).max();
                let copied = report.targets.entry(target).or_default();
                let n = rows.seq.len() as u64;
                if dead {
                    copied.dead += n;
                } else {
                    copied.pending += n;
                }
            }
            Part::End => break,
        }
    }
    at("raising its next sequence number above the deliveries copied".into());
    let above = max_seq.map_or(1, |s| s.saturating_add(1));
    let row = tx
        .query_one(
            "UPDATE pollhook_meta SET value = GREATEST(value, $1) WHERE key = 'next_seq' RETURNING value",
            &[&above],
        )
        .await?;
    report.next_seq = row.get::<_, i64>(0) as u64;
    at("committing the copy".into());
    tx.commit().await?;
    conn.done();
    Ok(report)
}

/// Refuses the copy unless the database is empty and no instance is alive on it.
async fn refuse_unless_empty(tx: &Transaction<'_>, db: &str) -> Result<(), Fail> {
    let live = tx
        .query(
            "SELECT name, extract(epoch FROM now() - renewed_at)::float8 FROM pollhook_instances WHERE expires_at > now() ORDER BY name",
            &[],
        )
        .await?;
    if !live.is_empty() {
        let instances: Vec<String> = live
            .iter()
            .map(|r| {
                let ago: f64 = r.get(1);
                format!("{} (renewed {ago:.0}s ago)", r.get::<_, String>(0))
            })
            .collect();
        return Err(Fail::Store(StoreError::ImportInUse {
            db: db.to_string(),
            instances: instances.join(", "),
        }));
    }
    let row = tx
        .query_one(
            "SELECT (SELECT count(*) FROM pollhook_sources), (SELECT count(*) FROM pollhook_items), \
             (SELECT count(*) FROM pollhook_outbox), (SELECT count(*) FROM pollhook_dead)",
            &[],
        )
        .await?;
    let what = [
        ("source", "sources"),
        ("stored item", "stored items"),
        ("pending delivery", "pending deliveries"),
        ("dead delivery", "dead deliveries"),
    ];
    let holds: Vec<String> = what
        .iter()
        .enumerate()
        .filter_map(|(i, (one, many))| {
            let n: i64 = row.get(i);
            (n > 0).then(|| format!("{n} {}", if n == 1 { one } else { many }))
        })
        .collect();
    if !holds.is_empty() {
        return Err(Fail::Store(StoreError::ImportNotEmpty {
            db: db.to_string(),
            holds: holds.join(", "),
        }));
    }
    Ok(())
}
