//! A source's snapshot buckets (see `records.rs` for the layout): reading them back, and
//! writing a commit's changes: which buckets it touches, and the rewrite of each inside
//! the commit's transaction, or of all of them when the source has outgrown its bucket
//! count.

use std::collections::{BTreeMap, HashMap};

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::records::{
    bucket_key, bucket_of, buckets_for, decode_bucket, encode_bucket, Entry, MAX_PER_BUCKET,
};
use super::records::{prefix, to_seen};
use super::sled_pack::{pack, unpack};
use super::sled_store::{db_err, SledStore};
use super::{PollCommit, SourceState, StoreError};
use crate::diff::Seen;

impl SledStore {
    /// [`super::Store::snapshot`].
    pub(super) fn read_snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError> {
        let snap = self.snap();
        let mut out = HashMap::new();
        let mut last = None;
        for kv in snap.scan_prefix(prefix(source)) {
            let (k, v) = kv.map_err(|e| self.snap_read_err(source, last.as_deref(), e))?;
            last = Some(k.clone());
            let v = unpack(v, || bucket_name(&k))?;
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

    /// A failed read of `source`'s snapshot records, the scan having read up to `last`.
    /// sled 0.34 keeps a page larger than a quarter of a log segment (128 KiB) in a
    /// file of its own under `db/blobs`; if that file is gone, reading the page fails
    /// with a bare "No such file or directory", which is named here for what it is.
    pub(super) fn snap_read_err(
        &self,
        source: &str,
        last: Option<&[u8]>,
        e: sled::Error,
    ) -> StoreError {
        let missing =
            matches!(&e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound);
        if !missing {
            return db_err(e);
        }
        let bucket = match last.and_then(|k| k.get(k.len().checked_sub(4)?..)) {
            Some(b) => format!("after {}", u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            None => "0 or the first one stored".into(),
        };
        StoreError::MissingBlob {
            source_name: source.to_string(),
            bucket,
            db: self.path.display().to_string(),
            error: Box::new(e),
        }
    }
}

/// A bucket's key as an error names it.
fn bucket_name(key: &[u8]) -> String {
    format!("snap-v1/{}", String::from_utf8_lossy(key))
}

/// What one commit changes in one bucket: items written, ids removed.
type BucketChange<'a> = (Vec<(&'a str, Entry<'a>)>, Vec<&'a str>);

/// The snapshot writes of one commit, planned before its transaction.
pub(super) struct SnapshotWrite<'a> {
    source: &'a str,
    old_buckets: u32,
    /// The source's bucket count after the commit.
    pub(super) buckets: u32,
    /// Every bucket is rewritten under the new count.
    rebucket: bool,
    /// What changes in each touched bucket (upserts borrowed from the commit); the
    /// buckets themselves are read inside the transaction.
    touched: BTreeMap<u32, BucketChange<'a>>,
}

impl<'a> SnapshotWrite<'a> {
    /// The writes of `c` on a source in state `before`. The bucket count is set by the
    /// first commit and raised when a source has grown to more than [`MAX_PER_BUCKET`]
    /// items a bucket (all its buckets are then rewritten once). The commit's generation
    /// check makes sure `before` is still the state it builds on.
    pub(super) fn new(before: &SourceState, c: &'a PollCommit) -> SnapshotWrite<'a> {
        let old_buckets = before.buckets.max(1);
        let buckets = if !before.initialized {
            buckets_for(c.item_count)
        } else if c.item_count > u64::from(old_buckets) * MAX_PER_BUCKET {
            buckets_for(c.item_count).max(old_buckets)
        } else {
            old_buckets
        };
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
        SnapshotWrite {
            source: &c.source,
            old_buckets,
            buckets,
            rebucket: before.initialized && buckets != old_buckets,
            touched,
        }
    }

    /// Writes the changes into `snap`, inside the commit's transaction.
    pub(super) fn apply(
        &self,
        snap: &TransactionalTree,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        if self.rebucket {
            return self.rebucket(snap);
        }
        let abort = ConflictableTransactionError::Abort;
        for (bucket, (upserts, removals)) in &self.touched {
            let key = bucket_key(self.source, *bucket);
            let old = match snap.get(&key)? {
                Some(v) => Some(unpack(v, || bucket_name(&key)).map_err(abort)?),
                None => None,
            };
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
                snap.insert(key, pack(encode_bucket(items.into_iter())))?;
            }
        }
        Ok(())
    }

    /// Every bucket read, the changes applied, and the items written again under the new
    /// bucket count.
    fn rebucket(
        &self,
        snap: &TransactionalTree,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        let abort = ConflictableTransactionError::Abort;
        let mut olds = Vec::new();
        for b in 0..self.old_buckets {
            let key = bucket_key(self.source, b);
            if let Some(v) = snap.get(&key)? {
                let v = unpack(v, || bucket_name(&key)).map_err(abort)?;
                olds.push((key, v));
            }
        }
        let mut items: BTreeMap<&str, Entry<'_>> = BTreeMap::new();
        for (key, v) in &olds {
            decode_bucket(key, v, &mut items).map_err(abort)?;
            snap.remove(key.as_slice())?;
        }
        for (upserts, removals) in self.touched.values() {
            items.extend(upserts.iter().copied());
            for id in removals {
                items.remove(id);
            }
        }
        let mut regrouped: BTreeMap<u32, Vec<(&str, Entry<'_>)>> = BTreeMap::new();
        for (id, e) in items {
            regrouped
                .entry(bucket_of(id, self.buckets))
                .or_default()
                .push((id, e));
        }
        for (b, entries) in regrouped {
            snap.insert(
                bucket_key(self.source, b),
                pack(encode_bucket(entries.into_iter())),
            )?;
        }
        Ok(())
    }
}
