//! The sled implementation of [`Store`]. sled is pinned to 0.34 (the 1.0 alphas are a
//! different engine); its calls block, so async code reaches them via `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use super::records::{
    bucket_key, bucket_of, buckets_for, decode_bucket, decode_delivery, delivery_key,
    encode_bucket, encode_delivery, encode_new_delivery, prefix, split_delivery_key, to_seen,
    Entry, MAX_PER_BUCKET,
};
use super::{Delivery, PollCommit, SourceState, Store, StoreError};
use crate::diff::Seen;

/// What one commit changes in one bucket: items written, ids removed.
type BucketChange<'a> = (Vec<(&'a str, Entry<'a>)>, Vec<&'a str>);

/// How long `open` waits for a directory lock that is still held.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The state database in one directory.
pub struct SledStore {
    db: sled::Db,
    sources: sled::Tree,
    snap: sled::Tree,
    outbox: sled::Tree,
    dead: sled::Tree,
}

fn db_err(e: sled::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `dir`. sled locks the directory, so a second
    /// process on the same `state_dir` fails here with a clear message.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let config = sled::Config::new()
            .path(dir.join("db"))
            // sled's default page cache is 1 GiB; pollhook's working set is the outbox
            // head and one source's snapshot at a time, so memory stays bounded.
            .cache_capacity(64 * 1024 * 1024);
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
                Err(e) => return Err(open_err(e.to_string())),
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(|e| open_err(e.to_string()));
        Ok(SledStore {
            sources: tree("sources-v1")?,
            snap: tree("snap-v1")?,
            outbox: tree("outbox-v1")?,
            dead: tree("dead-v1")?,
            db,
        })
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

    fn rewrite(&self, target: &str, seq: u64, f: impl Fn(&mut Delivery)) -> Result<(), StoreError> {
        let key = delivery_key(target, seq);
        // A delivery is only touched by its target's worker, so read-modify-write is safe;
        // it is gone if replay or forget removed it meanwhile, which is not an error.
        if let Some(v) = self.outbox.get(&key).map_err(db_err)? {
            let mut d = decode_delivery(&key, &v)?;
            f(&mut d);
            self.outbox
                .insert(key, encode_delivery(&d))
                .map_err(db_err)?;
        }
        Ok(())
    }
}

fn read_state(v: Option<sled::IVec>, source: &str) -> Result<SourceState, StoreError> {
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
        let mut out = HashMap::new();
        for kv in self.snap.scan_prefix(prefix(source)) {
            let (k, v) = kv.map_err(db_err)?;
            let mut entries: Vec<(&str, Entry<'_>)> = Vec::new();
            decode_bucket(&k, &v, &mut entries)?;
            out.extend(
                entries
                    .into_iter()
                    .map(|(id, e)| (id.to_string(), to_seen(e))),
            );
        }
        Ok(out)
    }

    fn commit_poll(&self, c: PollCommit) -> Result<u64, StoreError> {
        let changed = !(c.upserts.is_empty() && c.removals.is_empty() && c.events.is_empty());
        let before = self.source_state(&c.source)?;
        if !changed && before.initialized {
            // An unchanged poll writes nothing.
            return Ok(before.generation);
        }
        // The bucket count is set by the first commit and raised when a source has grown
        // to more than MAX_PER_BUCKET items a bucket (all its buckets are then rewritten
        // once). The generation check below makes sure `before` is still the state this
        // commit builds on.
        let old_buckets = before.buckets.max(1);
        let buckets = if !before.initialized {
            buckets_for(c.item_count)
        } else if c.item_count > u64::from(old_buckets) * MAX_PER_BUCKET {
            buckets_for(c.item_count).max(old_buckets)
        } else {
            old_buckets
        };
        let rebucket = before.initialized && buckets != old_buckets;
        // What changes in each touched bucket: upserts (borrowed from the commit) and
        // removals. The buckets themselves are read inside the transaction.
        let mut touched: BTreeMap<u32, BucketChange<'_>> = BTreeMap::new();
        for (id, seen) in &c.upserts {
            touched
                .entry(bucket_of(id, buckets))
                .or_default()
                .0
                .push((id, (&seen.hash, &seen.raw)));
        }
        for id in &c.removals {
            touched
                .entry(bucket_of(id, buckets))
                .or_default()
                .1
                .push(id);
        }
        let mut outbox = sled::Batch::default();
        for (event, targets) in &c.events {
            // Ids from generate_id increase across restarts, so outbox keys keep detection
            // order; gaps after a crash are harmless.
            let seq = self.db.generate_id().map_err(db_err)?;
            // Encoded once; every target's key shares the bytes.
            let record = sled::IVec::from(encode_new_delivery(event, c.now_ms));
            for target in targets.iter() {
                outbox.insert(delivery_key(target, seq), record.clone());
            }
        }
        let expected = c.expected_generation;
        let source = c.source.as_str();
        let result =
            (&self.sources, &self.snap, &self.outbox).transaction(|(sources, snap, outbox_tx)| {
                let abort = ConflictableTransactionError::Abort;
                let current = read_state(sources.get(source)?, source).map_err(abort)?;
                if current.generation != expected || current.initialized != before.initialized {
                    return Err(abort(StoreError::Conflict {
                        source_name: source.to_string(),
                        expected,
                        found: current.generation,
                    }));
                }
                if rebucket {
                    let mut olds = Vec::new();
                    for b in 0..old_buckets {
                        let key = bucket_key(source, b);
                        if let Some(v) = snap.get(&key)? {
                            olds.push((key, v));
                        }
                    }
                    let mut items: BTreeMap<&str, Entry<'_>> = BTreeMap::new();
                    for (key, v) in &olds {
                        decode_bucket(key, v, &mut items).map_err(abort)?;
                        snap.remove(key.as_slice())?;
                    }
                    for (upserts, removals) in touched.values() {
                        items.extend(upserts.iter().copied());
                        for id in removals {
                            items.remove(id);
                        }
                    }
                    let mut regrouped: BTreeMap<u32, Vec<(&str, Entry<'_>)>> = BTreeMap::new();
                    for (id, e) in items {
                        regrouped
                            .entry(bucket_of(id, buckets))
                            .or_default()
                            .push((id, e));
                    }
                    for (b, entries) in regrouped {
                        snap.insert(bucket_key(source, b), encode_bucket(entries.into_iter()))?;
                    }
                }
                for (bucket, (upserts, removals)) in touched.iter().filter(|_| !rebucket) {
                    let key = bucket_key(source, *bucket);
                    let old = snap.get(&key)?;
                    let mut items: BTreeMap<&str, Entry<'_>> = BTreeMap::new();
                    if let Some(old) = &old {
                        decode_bucket(&key, old, &mut items).map_err(abort)?;
                    }
                    items.extend(upserts.iter().copied());
                    for id in removals {
                        items.remove(id);
                    }
                    if items.is_empty() {
                        snap.remove(key)?;
                    } else {
                        snap.insert(key, encode_bucket(items.into_iter()))?;
                    }
                }
                outbox_tx.apply_batch(&outbox)?;
                let next = SourceState {
                    generation: if changed { expected + 1 } else { expected },
                    initialized: true,
                    items: c.item_count,
                    buckets,
                };
                // A struct of integers and bools always serialises.
                let bytes = serde_json::to_vec(&next).unwrap_or_default();
                sources.insert(source.as_bytes(), bytes)?;
                Ok(next.generation)
            });
        let generation = result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => db_err(e),
        })?;
        // Durable before anyone may deliver: a crash after this point redelivers, a crash
        // before it re-detects (DESIGN invariant 1).
        self.db.flush().map_err(db_err)?;
        Ok(generation)
    }

    fn pending(
        &self,
        target: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let start = match after {
            Some(seq) => match seq.checked_add(1) {
                Some(s) => delivery_key(target, s),
                None => return Ok(Vec::new()),
            },
            None => prefix(target),
        };
        let mut end = prefix(target);
        // The byte after 0x00 bounds every key of this target.
        if let Some(last) = end.last_mut() {
            *last = 1;
        }
        let mut out = Vec::new();
        for kv in self.outbox.range(start..end).take(limit) {
            let (k, v) = kv.map_err(db_err)?;
            out.push(decode_delivery(&k, &v)?);
        }
        Ok(out)
    }

    fn delivery(&self, target: &str, seq: u64) -> Result<Option<Delivery>, StoreError> {
        let key = delivery_key(target, seq);
        match self.outbox.get(&key).map_err(db_err)? {
            Some(v) => Ok(Some(decode_delivery(&key, &v)?)),
            None => Ok(None),
        }
    }

    fn ack_many(&self, target: &str, seqs: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for seq in seqs {
            batch.remove(delivery_key(target, *seq));
        }
        self.outbox.apply_batch(batch).map_err(db_err)
    }

    fn reschedule(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        next_at_ms: i64,
        last_error: &str,
    ) -> Result<(), StoreError> {
        self.rewrite(target, seq, |d| {
            d.attempts = attempts;
            d.next_at_ms = next_at_ms;
            d.last_error = Some(last_error.to_string());
        })
    }

    fn bury(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        let key = delivery_key(target, seq);
        let result = (&self.outbox, &self.dead).transaction(|(outbox, dead)| {
            let Some(v) = outbox.remove(key.as_slice())? else {
                return Ok(());
            };
            let mut d = decode_delivery(&key, &v).map_err(ConflictableTransactionError::Abort)?;
            d.attempts = attempts;
            d.last_error = Some(last_error.to_string());
            dead.insert(key.as_slice(), encode_delivery(&d))?;
            Ok(())
        });
        result.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => db_err(e),
        })
    }

    fn dead(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let iter = match target {
            Some(t) => self.dead.scan_prefix(prefix(t)),
            None => self.dead.iter(),
        };
        let mut out = Vec::new();
        for kv in iter.take(limit) {
            let (k, v) = kv.map_err(db_err)?;
            out.push(decode_delivery(&k, &v)?);
        }
        Ok(out)
    }

    fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut out = HashMap::new();
        for k in self.outbox.iter().keys() {
            let (target, _) = split_delivery_key(&k.map_err(db_err)?)?;
            *out.entry(target).or_insert(0) += 1;
        }
        Ok(out)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(db_err)
    }
}
