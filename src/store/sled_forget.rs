//! Forgetting a source: its snapshot records go, its state starts afresh with the
//! generation moved on. When the records cannot be read (sled keeps a large page in a
//! file under `db/blobs`, and that file is gone), sled cannot remove them either, since
//! it rewrites the page that holds them; the snapshot tree is then rebuilt without them.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::records::{bucket_key, prefix};
use super::sled_store::{db_err, read_state, tx_err, SledStore, SNAP_TREE_KEY};
use super::{SourceState, Store, StoreError};

impl SledStore {
    /// [`Store::forget_source`].
    pub(super) fn forget(&self, source: &str) -> Result<bool, StoreError> {
        // The source's buckets are 0..buckets of its stored state, read inside the
        // transaction (a commit racing this forget is either before or after it). Keys
        // found under its prefix beforehand are removed too, so no bucket a broken state
        // does not count can bring old items back.
        //
        // Events a commit left staged are queued first: forgetting drops what the source
        // holds, not what it has detected. Chunks of a poll that never committed go.
        if self.source_state(source)?.staged > 0 {
            self.apply_staged(source, &super::Queued::default())?;
        }
        let mut abandoned = sled::Batch::default();
        let mut staging = false;
        for key in self.stage.scan_prefix(prefix(source)).keys() {
            abandoned.remove(key.map_err(db_err)?);
            staging = true;
        }
        let snap = self.snap();
        let mut found: Vec<sled::IVec> = Vec::new();
        for k in snap.scan_prefix(prefix(source)).keys() {
            match k.map_err(|e| self.snap_read_err(source, found.last().map(|k| &k[..]), e)) {
                Ok(k) => found.push(k),
                Err(e @ StoreError::MissingBlob { .. }) => {
                    drop(snap);
                    return self.forget_unreadable(source, &abandoned, e);
                }
                Err(e) => return Err(e),
            }
        }
        let trees = (&self.sources, &*snap, &self.stage);
        let result = trees.transaction(|(sources, snap, stage)| {
            stage.apply_batch(&abandoned)?;
            let stored = sources.get(source.as_bytes())?;
            // A first poll still staging its chunks has no state yet, but its commit
            // must fail too: were the generation left at 0, its last commit would pass
            // and write every item, with the events of the chunks dropped here lost.
            let mut had = stored.is_some() || staging;
            let state = read_state(stored, source).map_err(ConflictableTransactionError::Abort)?;
            let counted = (0..state.buckets).map(|b| sled::IVec::from(bucket_key(source, b)));
            let keys: std::collections::BTreeSet<sled::IVec> =
                counted.chain(found.iter().cloned()).collect();
            for key in keys {
                had |= snap.remove(key)?.is_some();
            }
            if had {
                // The generation goes up, never back (see the trait): event ids after
                // the forget stay distinct from those before it, and a poll that read
                // the old state fails its commit instead of writing a partial snapshot.
                let reset = SourceState {
                    generation: state.generation + 1,
                    ..SourceState::default()
                };
                // A struct of integers and bools always serialises.
                let bytes = serde_json::to_vec(&reset).unwrap_or_default();
                sources.insert(source.as_bytes(), bytes)?;
            }
            Ok(had)
        });
        let had = result.map_err(tx_err)?;
        if had {
            self.db.flush().map_err(db_err)?;
        }
        Ok(had)
    }

    /// Forgets `source`, whose records in the snapshot tree cannot be read (`cause`), by
    /// copying every other source's records to a new snapshot tree, named in `meta-v1`
    /// in the transaction that resets the source. A source whose records cannot be read
    /// either (they shared the lost page) is not copied: its stored item count then makes
    /// its next poll refuse, naming `forget` for it too. Commits wait meanwhile.
    fn forget_unreadable(
        &self,
        source: &str,
        abandoned: &sled::Batch,
        cause: StoreError,
    ) -> Result<bool, StoreError> {
        let mut snap = self.snap.write().unwrap_or_else(|e| e.into_inner());
        let old_name = String::from_utf8_lossy(&snap.name()).into_owned();
        let rebuilt: u64 = (old_name.strip_prefix("snap-v1."))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let name = format!("snap-v1.{}", rebuilt + 1);
        let new = self.db.open_tree(&name).map_err(db_err)?;
        // Left by a rebuild that failed half-way, and never named in meta-v1.
        new.clear().map_err(db_err)?;
        let mut lost = Vec::new();
        for (other, _) in self.sources()? {
            if other == source {
                continue;
            }
            let mut batch = sled::Batch::default();
            let copied = snap.scan_prefix(prefix(&other)).try_for_each(|kv| {
                let (k, v) = kv?;
                batch.insert(k, v);
                Ok::<_, sled::Error>(())
            });
            match copied {
                Ok(()) => new.apply_batch(batch).map_err(db_err)?,
                Err(_) => lost.push(other),
            }
        }
        let trees = (&self.sources, &self.meta, &self.stage);
        let result = trees.transaction(|(sources, meta, stage)| {
            stage.apply_batch(abandoned)?;
            let state = read_state(sources.get(source.as_bytes())?, source)
                .map_err(ConflictableTransactionError::Abort)?;
            let reset = SourceState {
                generation: state.generation + 1,
                ..SourceState::default()
            };
            // A struct of integers and bools always serialises.
            sources.insert(
                source.as_bytes(),
                serde_json::to_vec(&reset).unwrap_or_default(),
            )?;
            meta.insert(SNAP_TREE_KEY, name.as_bytes())?;
            Ok(())
        });
        result.map_err(tx_err)?;
        self.db.flush().map_err(db_err)?;
        let old = std::mem::replace(&mut *snap, new);
        drop(snap);
        // Its pages that can be read are freed; the lost one is not there to free.
        let dropped = self.db.drop_tree(old.name());
        tracing::warn!(
            source = source,
            "forgot the source although its snapshot records cannot be read ({cause}); the snapshot tree {old_name} was rebuilt as {name} without them{}{}",
            match &dropped {
                Ok(_) => String::new(),
                Err(e) => format!(" (the old tree stays in the database's files: {e})"),
            },
            if lost.is_empty() {
                String::new()
            } else {
                format!("; the records of {} were in the lost page too: their next polls refuse until each is forgotten", lost.join(", "))
            },
            cause = crate::error::chain(&cause),
        );
        Ok(true)
    }
}
