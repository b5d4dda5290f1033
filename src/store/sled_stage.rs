//! A large poll's events on their way to the outbox (see [`super::PollCommit::chunk`]):
//! staged in `stage-v1` while the poll commits chunk by chunk, moved to the outbox once
//! its snapshot commit is durable, and after a crash either moved (the commit happened)
//! or dropped (it did not) when the store next opens.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::records::{decode_staged, stage_key};
use super::sled_outbox::OutboxWrite;
use super::sled_pack::unpack;
use super::sled_store::{db_err, read_state, tx_err, SledStore};
use super::{Queued, Store, StoreError};

impl SledStore {
    /// After a crash: moves the events of every committed large poll to the outbox, and
    /// drops those of polls that never committed (their next poll detects the changes
    /// again).
    pub(super) fn recover_staged(&self) -> Result<(), StoreError> {
        // The usual case, and the only one at every start: nothing staged, no scan of
        // the sources. (A state still counting chunks that were all moved is set right
        // by its source's next commit or forget, which move what is left: nothing.)
        if self.stage.is_empty() {
            return Ok(());
        }
        for (source, state) in self.sources()? {
            if state.staged > 0 {
                self.apply_staged(&source, &Queued::default())?;
            }
        }
        let mut abandoned = sled::Batch::default();
        let mut any = false;
        for key in self.stage.iter().keys() {
            abandoned.remove(key.map_err(db_err)?);
            any = true;
        }
        if any {
            self.stage.apply_batch(abandoned).map_err(db_err)?;
            self.db.flush().map_err(db_err)?;
        }
        Ok(())
    }

    /// Moves the events `source`'s last commit staged into the outbox, a chunk per
    /// transaction, in detection order, and records that none are left. Idempotent: a
    /// chunk is removed from the stage in the transaction that queues it. `queued` is
    /// called after each chunk's transaction: its deliveries may be sent before the
    /// move is flushed, since the stage already holds them durably (a crash moves them
    /// again, under the same event ids: at least once).
    pub(super) fn apply_staged(&self, source: &str, queued: &Queued) -> Result<(), StoreError> {
        let staged = self.source_state(source)?.staged;
        for chunk in 0..staged {
            // Its parts, in order (a chunk staged by an earlier release is one value,
            // under the chunk's key itself).
            let mut parts = Vec::new();
            for kv in self.stage.scan_prefix(stage_key(source, chunk)) {
                let (key, value) = kv.map_err(db_err)?;
                let value = unpack(value, || {
                    format!("stage-v1/{}", String::from_utf8_lossy(&key))
                })?;
                parts.push((key, value));
            }
            if parts.is_empty() {
                continue;
            }
            // Sequence numbers are drawn now, not when the chunk was staged: a target's
            // worker reads the outbox above the last sequence it has (see `enqueue`).
            let enqueue = self.enqueue.lock().unwrap_or_else(|e| e.into_inner());
            let mut outbox = OutboxWrite::new();
            for (key, value) in &parts {
                for (record, targets) in decode_staged(key, value)? {
                    let seq = self.db.generate_id().map_err(db_err)?;
                    let record = sled::IVec::from(record);
                    for target in targets {
                        outbox.push(target, seq, record.clone());
                    }
                }
            }
            let outbox = outbox.finish();
            let result = (&self.stage, &self.outbox).transaction(|(stage, outbox_tx)| {
                outbox_tx.apply_batch(&outbox)?;
                for (key, _) in &parts {
                    stage.remove(key)?;
                }
                Ok(())
            });
            drop(enqueue);
            result.map_err(tx_err)?;
            queued.call();
        }
        let result = self.sources.transaction(|sources| {
            let mut state = read_state(sources.get(source)?, source)
                .map_err(ConflictableTransactionError::Abort)?;
            if state.staged > 0 {
                state.staged = 0;
                // A struct of integers and bools always serialises.
                sources.insert(
                    source.as_bytes(),
                    serde_json::to_vec(&state).unwrap_or_default(),
                )?;
            }
            Ok(())
        });
        result.map_err(tx_err)?;
        self.db.flush().map_err(db_err)?;
        Ok(())
    }
}
