//! The sled implementation of [`Store`]. sled is pinned to 0.34 (the 1.0 alphas are a
//! different engine); its calls block, so async code reaches them via `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::records::{
    decode_delivery, decode_record, encode_delivery, encode_staged, prefix, split_delivery_key_ref,
    stage_part_key,
};
use super::sled_outbox::{delivery_key, Retry};
use super::sled_pack::pack;
use super::sled_snapshot::SnapshotWrite;
use super::state_dir;
use super::{Delivery, DeliveryStatus, PollCommit, SourceState, Store, StoreError, TargetStats};
use crate::diff::Seen;
use crate::health::HealthRecord;

/// Dead deliveries moved back to the outbox per transaction by `replay_dead`. Each batch
/// is atomic; sled holds a transaction's writes in memory until it commits, so a replay of
/// every dead letter is cut into batches rather than made one huge transaction.
pub(super) const REPLAY_BATCH: usize = 1_000;

#[cfg(test)]
thread_local! {
    /// Tests: the process dies after a commit's transaction, before its staged events move.
    pub(super) static DIE_BEFORE_APPLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// How long `open` waits for a directory lock that is still held.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The state database in one directory.
pub struct SledStore {
    pub(super) db: sled::Db,
    /// The database directory (`state_dir/db`), for messages.
    pub(super) path: std::path::PathBuf,
    pub(super) sources: sled::Tree,
    /// The snapshot tree: `snap-v1`, or the one named under `snap-tree` in `meta-v1`
    /// after a forget had to rebuild it (see `sled_forget.rs`). Commits and reads hold it
    /// shared; that rebuild holds it alone.
    pub(super) snap: std::sync::RwLock<sled::Tree>,
    pub(super) meta: sled::Tree,
    pub(super) outbox: sled::Tree,
    pub(super) dead: sled::Tree,
    /// Events of a large poll on their way to the outbox (see `commit_poll`).
    pub(super) stage: sled::Tree,
    /// Health records (see `health`), by subject key.
    pub(super) health: sled::Tree,
    /// Held from drawing outbox sequence numbers until the transaction that uses them
    /// has committed. A target's worker loads the deliveries above the last sequence it
    /// has; without this, two commits racing could land a lower sequence after the
    /// worker had read past it, and that delivery would wait for the next restart.
    pub(super) enqueue: std::sync::Mutex<()>,
    /// Held over every read-modify-write of a batch's state (see `sled_outbox.rs`): a
    /// target's acknowledgements and its failed attempts are written by different tasks.
    pub(super) batch_states: std::sync::Mutex<()>,
}

/// sled's error as a [`StoreError`]: I/O errors, corruption and reported bugs leave sled
/// failing every later call (0.34 keeps the first such error globally), so they are
/// [`StoreError::Failed`]; the rest (a missing tree, an unsupported operation) are not.
pub(super) fn db_err(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(_) | sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => {
            StoreError::Failed(e)
        }
        sled::Error::CollectionNotFound(_) | sled::Error::Unsupported(_) => StoreError::Db(e),
    }
}

/// A failed transaction: the store error it aborted with, or sled's own.
pub(super) fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => db_err(e),
    }
}

/// Up to `limit` dead deliveries, of one target or all, in key order.
fn list_dead(
    tree: &sled::Tree,
    target: Option<&str>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let iter = match target {
        Some(t) => tree.scan_prefix(prefix(t)),
        None => tree.iter(),
    };
    let mut out = Vec::new();
    for kv in iter.take(limit) {
        let (k, v) = kv.map_err(db_err)?;
        out.push(decode_delivery(&k, &v)?);
    }
    Ok(out)
}

impl SledStore {
    /// Opens (or creates) the database in `dir`/db. sled locks the directory, so a
    /// second process on the same `state_dir` fails here with a clear message.
    ///
    /// The marker file [`super::MARKER_FILE`] ties the state_dir to its database (see
    /// `state_dir.rs`): with the marker present, a missing, empty or other database is
    /// refused ([`StoreError::Replaced`]) rather than silently started afresh. Without
    /// it, a new database is created with a warning, and one from a release before the
    /// marker is adopted.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| state_dir::io_error("create", dir, e))?;
        let db_dir = dir.join("db");
        let marker = state_dir::read_marker(dir)?;
        let existed = state_dir::holds_files(&db_dir);
        if let (Some(expected), false) = (&marker, existed) {
            // Refused before sled would create a new database there.
            return Err(state_dir::replaced(
                dir,
                expected,
                "there is no database there (the directory is missing or empty)".into(),
            ));
        }
        let config = sled::Config::new()
            .path(&db_dir)
            // sled's default page cache is 1 GiB; pollhook's working set is the outbox
            // head and one source's snapshot at a time, so memory stays bounded.
            .cache_capacity(64 * 1024 * 1024)
            .segment_size(state_dir::segment_size(&db_dir));
        // The 500 ms background flush stays: commit_poll flushes explicitly where
        // durability matters, acks may be repeated after a crash (at least once).
        //
        // sled's IO threads hold the directory lock for a moment after the last handle
        // is dropped, so a restart in the same process (or right after the previous
        // process exited) may find it still taken: wait a little before concluding that
        // another pollhook owns the directory. sled reports this only as text.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(state_dir::open_error(&db_dir, e)),
            }
        };
        let open_err = |e| state_dir::open_error(&db_dir, e);
        let tree = |name: &str| db.open_tree(name).map_err(open_err);
        let meta = tree(state_dir::META_TREE)?;
        let store = SledStore {
            sources: tree("sources-v1")?,
            snap: std::sync::RwLock::new(tree(&snap_tree_name(&meta).map_err(open_err)?)?),
            outbox: tree("outbox-v1")?,
            dead: tree("dead-v1")?,
            stage: tree("stage-v1")?,
            health: tree("health-v1")?,
            meta,
            enqueue: std::sync::Mutex::new(()),
            batch_states: std::sync::Mutex::new(()),
            path: db_dir.clone(),
            db,
        };
        state_dir::check_marker(
            &state_dir::Opened {
                state_dir: dir,
                db_dir: &db_dir,
                existed,
                db: &store.db,
                meta: &store.meta,
                sources: &store.sources,
            },
            marker,
        )?;
        store.recover_staged()?;
        Ok(store)
    }

    /// CRC32 over every tree, for tests that must see any write at all.
    #[cfg(test)]
    pub(crate) fn checksum(&self) -> u32 {
        // Guard against checksumming a fresh empty database at a wrong path.
        assert!(self.db.tree_names().iter().any(|n| &n[..] == b"sources-v1"));
        self.db.checksum().expect("checksum")
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(db_err)
    }

    /// The snapshot tree, shared.
    pub(super) fn snap(&self) -> std::sync::RwLockReadGuard<'_, sled::Tree> {
        // A poisoned lock guards a tree handle that is never left half-changed.
        self.snap.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What a commit writes to the stage: the removal of chunks a poll that never
    /// committed left (at a poll's first commit), and this commit's events if it stages.
    fn stage_batch(&self, c: &PollCommit, staging: bool) -> Result<sled::Batch, StoreError> {
        let mut stage = sled::Batch::default();
        if c.chunk == 0 {
            for key in self.stage.scan_prefix(prefix(&c.source)).keys() {
                stage.remove(key.map_err(db_err)?);
            }
        }
        if staging && !c.events.is_empty() {
            for (part, bytes) in encode_staged(&c.events, c.now_ms).into_iter().enumerate() {
                stage.insert(stage_part_key(&c.source, c.chunk, part as u32), pack(bytes));
            }
        }
        Ok(stage)
    }

    /// The deliveries a commit that does not stage queues: one per event and target,
    /// under sequence numbers drawn now. The caller holds `enqueue` until they commit.
    fn outbox_batch(&self, c: &PollCommit, staging: bool) -> Result<sled::Batch, StoreError> {
        match staging {
            true => Ok(sled::Batch::default()),
            false => self.deliveries(&c.events, c.now_ms),
        }
    }
}

/// The key in `meta-v1` naming the snapshot tree, when it is not `snap-v1`.
pub(super) const SNAP_TREE_KEY: &[u8] = b"snap-tree";

/// The name of the snapshot tree recorded in `meta`.
pub(super) fn snap_tree_name(meta: &sled::Tree) -> Result<String, sled::Error> {
    Ok(match meta.get(SNAP_TREE_KEY)? {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None => "snap-v1".into(),
    })
}

pub(super) fn read_state(v: Option<sled::IVec>, source: &str) -> Result<SourceState, StoreError> {
    match v {
        None => Ok(SourceState::default()),
        Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
            key: format!("sources/{source}"),
            reason: e.to_string(),
        }),
    }
}

impl Store for SledStore {
    fn source_state(&self, source: &str) -> Result<SourceState, StoreError> {
        read_state(self.sources.get(source).map_err(db_err)?, source)
    }

    fn snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError> {
        self.read_snapshot(source)
    }

    fn commit_poll(&self, c: PollCommit) -> Result<u64, StoreError> {
        let mut before = self.source_state(&c.source)?;
        if before.staged > 0 {
            // The events of the previous commit are still staged (it failed after its
            // transaction): they go first, in detection order.
            self.apply_staged(&c.source, &c.queued)?;
            before.staged = 0;
        }
        // A poll of more than one commit stages every chunk of events, the last one
        // with the snapshot; they reach the outbox only after that commit, so no event
        // of a poll that never committed is ever delivered.
        let staging = c.events_only || c.chunk > 0;
        let changed = !(c.upserts.is_empty() && c.removals.is_empty() && c.events.is_empty());
        if !changed && before.initialized && !staging {
            // An unchanged poll writes nothing.
            return Ok(before.generation);
        }
        let write = SnapshotWrite::new(&before, &c);
        let stage = self.stage_batch(&c, staging)?;
        // Held until the transaction has committed (see `enqueue`), not through the
        // flush, so concurrent commits still share flushes. A poisoned lock guards
        // nothing but ordering, so it is taken over.
        let enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
        let outbox = self.outbox_batch(&c, staging)?;
        let expected = c.expected_generation;
        let source = c.source.as_str();
        let snap = self.snap();
        let trees = (&self.sources, &*snap, &self.outbox, &self.stage);
        let result = trees.transaction(|(sources, snap, outbox_tx, stage_tx)| {
            let abort = ConflictableTransactionError::Abort;
            let current = read_state(sources.get(source)?, source).map_err(abort)?;
            if current.generation != expected || current.initialized != before.initialized {
                return Err(abort(StoreError::Conflict {
                    source_name: source.to_string(),
                    expected,
                    found: current.generation,
                }));
            }
            stage_tx.apply_batch(&stage)?;
            if c.events_only {
                // Events staged ahead of the poll's snapshot commit: the state stays.
                return Ok(expected);
            }
            write.apply(snap)?;
            outbox_tx.apply_batch(&outbox)?;
            let next = SourceState {
                generation: if changed { expected + 1 } else { expected },
                initialized: true,
                items: c.item_count,
                buckets: write.buckets,
                collection: c.collection.or(current.collection),
                staged: if staging { c.chunk + 1 } else { 0 },
            };
            // A struct of integers and bools always serialises.
            let bytes = serde_json::to_vec(&next).unwrap_or_default();
            sources.insert(source.as_bytes(), bytes)?;
            Ok(next.generation)
        });
        drop(enqueue);
        let generation = result.map_err(tx_err)?;
        if c.events_only {
            // Nothing is visible yet: the commit of the snapshot flushes this too.
            return Ok(generation);
        }
        // Durable before anyone may deliver: a crash after this point redelivers, a crash
        // before it re-detects (DESIGN invariant 1).
        self.db.flush().map_err(db_err)?;
        #[cfg(test)]
        if DIE_BEFORE_APPLY.get() {
            return Ok(generation);
        }
        if staging {
            self.apply_staged(&c.source, &c.queued)?;
        }
        Ok(generation)
    }

    fn pending(
        &self,
        target: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        for stored in self.walk(Some(target), after).take(limit) {
            out.push(stored?.delivery()?);
        }
        Ok(out)
    }

    fn delivery(&self, target: &str, seq: u64) -> Result<Option<Delivery>, StoreError> {
        self.pending_delivery(target, seq)
    }

    fn ack_many(&self, target: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.remove_acked(target, seqs)
    }

    fn reschedule(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        next_at_ms: i64,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let retry = Retry {
            attempts,
            next_at_ms,
            last_error: last_error.to_string(),
        };
        self.record_retry(target, seq, retry)
    }

    fn bury(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        self.move_to_dead(target, seq, attempts, last_error)
    }

    fn dead(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        list_dead(&self.dead, target, limit)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(db_err)
    }

    fn describe(&self) -> String {
        format!("the sled database in {}", self.path.display())
    }

    fn outbox(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::new();
        for stored in self.walk(target, None).take(limit) {
            out.push(stored?.delivery()?);
        }
        Ok(out)
    }

    fn find_event(&self, event_id: &str) -> Result<Vec<(DeliveryStatus, Delivery)>, StoreError> {
        // Only headers are parsed; bodies are copied for matches only.
        let mut out = Vec::new();
        for stored in self.walk(None, None) {
            let stored = stored?;
            let record = stored.record()?;
            if record.event_id() == event_id {
                out.push((DeliveryStatus::Pending, record.into_delivery()));
            }
        }
        for kv in self.dead.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let record = decode_record(&k, &v)?;
            if record.event_id() == event_id {
                out.push((DeliveryStatus::Dead, record.into_delivery()));
            }
        }
        Ok(out)
    }

    fn replay_dead(
        &self,
        target: Option<&str>,
        event_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        // The keys to move are chosen outside the transactions; a transaction moves a key
        // only if it is still dead when it commits (another replay may have taken it).
        let iter = match target {
            Some(t) => self.dead.scan_prefix(prefix(t)),
            None => self.dead.iter(),
        };
        let mut keys = Vec::new();
        for kv in iter {
            let (k, v) = kv.map_err(db_err)?;
            let wanted = match event_id {
                Some(id) => decode_record(&k, &v)?.event_id() == id,
                None => true,
            };
            if wanted {
                keys.push(k);
            }
        }
        let mut replayed = Vec::with_capacity(keys.len());
        for batch in keys.chunks(REPLAY_BATCH) {
            // Drawn outside the transaction, whose closure sled may run more than once.
            // In dead-letter order, so replayed deliveries of a target keep their order;
            // after every sequence already drawn, so the target's worker, which loads
            // the sequences above the ones it has, picks them up. Unused ids (a batch
            // whose delivery another replay took) are gaps, which are harmless.
            let enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
            let seqs = batch
                .iter()
                .map(|_| self.db.generate_id().map_err(db_err))
                .collect::<Result<Vec<u64>, StoreError>>()?;
            let moved = (&self.dead, &self.outbox)
                .transaction(|(dead, outbox)| {
                    let mut moved = Vec::with_capacity(batch.len());
                    for (key, seq) in batch.iter().zip(&seqs) {
                        let Some(v) = dead.remove(key.clone())? else {
                            continue;
                        };
                        let old = decode_delivery(key, &v)
                            .map_err(ConflictableTransactionError::Abort)?;
                        // A fresh delivery of the same event: the same bytes, which are
                        // the bytes stored with the event.
                        let d = Delivery {
                            seq: *seq,
                            attempts: 0,
                            next_at_ms: now_ms,
                            last_error: None,
                            ..old
                        };
                        outbox.insert(delivery_key(&d.target, d.seq), encode_delivery(&d))?;
                        moved.push(d);
                    }
                    Ok(moved)
                })
                .map_err(tx_err)?;
            drop(enqueue);
            replayed.extend(moved);
        }
        if !replayed.is_empty() {
            // Durable before the caller wakes the workers.
            self.db.flush().map_err(db_err)?;
        }
        Ok(replayed)
    }

    fn forget_source(&self, source: &str) -> Result<bool, StoreError> {
        self.forget(source)
    }

    fn sources(&self) -> Result<Vec<(String, SourceState)>, StoreError> {
        // sled orders keys bytewise, which for UTF-8 is the order of the names.
        let mut out = Vec::new();
        for kv in self.sources.iter() {
            let (k, v) = kv.map_err(db_err)?;
            let name = std::str::from_utf8(&k).map_err(|_| StoreError::Corrupt {
                key: format!("sources/{}", String::from_utf8_lossy(&k)),
                reason: "source name is not UTF-8".into(),
            })?;
            out.push((name.to_string(), read_state(Some(v), name)?));
        }
        Ok(out)
    }

    fn health(&self, subject: &str) -> Result<HealthRecord, StoreError> {
        match self.health.get(subject.as_bytes()).map_err(db_err)? {
            Some(v) => HealthRecord::decode(subject, &v),
            None => Ok(HealthRecord::default()),
        }
    }

    fn update_health(
        &self,
        subject: &str,
        read: &HealthRecord,
        next: &HealthRecord,
        events: Vec<(crate::event::Event, std::sync::Arc<[String]>)>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (read, next) = (read.encode(), next.encode());
        let healthy = HealthRecord::default().encode();
        // Held until the transaction has committed (see `enqueue`).
        let enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
        let outbox = self.deliveries(&events, now_ms)?;
        let result = (&self.health, &self.outbox).transaction(|(health, outbox_tx)| {
            let stored = health.get(subject.as_bytes())?;
            let current = stored.as_deref().unwrap_or(&healthy);
            if current != read.as_slice() {
                return Ok(false);
            }
            health.insert(subject.as_bytes(), next.as_slice())?;
            outbox_tx.apply_batch(&outbox)?;
            Ok(true)
        });
        drop(enqueue);
        let written = result.map_err(tx_err)?;
        if written {
            // Durable before anyone may deliver, as a poll's commit.
            self.db.flush().map_err(db_err)?;
        }
        Ok(written)
    }

    fn oldest_pending(&self, target: &str) -> Result<Option<i64>, StoreError> {
        match self.walk(Some(target), None).next() {
            None => Ok(None),
            Some(stored) => Ok(Some(stored?.record()?.created_ms())),
        }
    }

    fn target_stats(&self) -> Result<BTreeMap<String, TargetStats>, StoreError> {
        // Cost: a scan of the outbox and the keys of the dead letters (sled's iterator
        // still steps over the values, but only batch indexes and states are decoded),
        // plus one header parse per target for its oldest pending delivery. It grows
        // with the deliveries queued, not with sources or items.
        let mut out: BTreeMap<String, TargetStats> = BTreeMap::new();
        for stored in self.walk(None, None) {
            let stored = stored?;
            let stats = match out.get_mut(&stored.target) {
                Some(stats) => stats,
                None => out.entry(stored.target.clone()).or_default(),
            };
            stats.pending += 1;
            if stats.oldest_pending_ms.is_none() {
                // The first delivery of a target is its oldest in outbox order.
                stats.oldest_pending_ms = Some(stored.record()?.created_ms());
            }
        }
        for k in self.dead.iter().keys() {
            let k = k.map_err(db_err)?;
            let (target, _) = split_delivery_key_ref(&k)?;
            // Keys come grouped by target, but a lookup by &str allocates nothing.
            match out.get_mut(&*target) {
                Some(stats) => stats.dead += 1,
                None => out.entry(target.into_owned()).or_default().dead += 1,
            }
        }
        Ok(out)
    }
}
