//! Durable state: per-source snapshots and the outbox of deliveries.
//!
//! The rest of pollhook talks to the [`Store`] trait and never names sled. The one
//! operation that matters most is [`Store::commit_poll`]: a poll's new snapshot, its
//! events and one delivery per subscribed target are written in one transaction and
//! flushed to disk before it returns (DESIGN invariant 1), so a change is either still
//! undetected after a crash (and the next poll finds it again, with the same event id)
//! or already queued for every target.
//!
//! Every call blocks: async code calls it through `spawn_blocking`.

mod records;
mod sled_store;

use std::collections::HashMap;
use std::sync::Arc;

use crate::diff::Seen;
use crate::event::Event;

pub use records::{Delivery, SourceState};
pub use sled_store::SledStore;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state database in {path}: {reason} (is another pollhook running with the same state_dir? check permissions on the directory)")]
    Open { path: String, reason: String },
    #[error("state database error: {0}")]
    Db(String),
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("source {source_name} changed while this poll ran (expected generation {expected}, found {found}); the poll is dropped and the next one starts from the new state")]
    Conflict {
        source_name: String,
        expected: u64,
        found: u64,
    },
}

/// Everything one successful poll writes, in one transaction.
#[derive(Debug, Default)]
pub struct PollCommit {
    pub source: String,
    /// The generation the poll read; the commit is refused if it changed meanwhile.
    pub expected_generation: u64,
    /// Items created or updated: written to the snapshot.
    pub upserts: Vec<(String, Seen)>,
    /// Items gone: removed from the snapshot.
    pub removals: Vec<String>,
    /// Events, each with the targets it goes to.
    pub events: Vec<(Event, Arc<[String]>)>,
    /// Items the source holds after this poll.
    pub item_count: u64,
    /// Detection time, unix milliseconds (the deliveries' first attempt time).
    pub now_ms: i64,
}

/// What the daemon needs from durable storage.
pub trait Store: Send + Sync + 'static {
    /// A source's commit generation and item count (zero values before its first poll).
    fn source_state(&self, source: &str) -> Result<SourceState, StoreError>;

    /// The items a source held after its last committed poll.
    fn snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError>;

    /// Writes a poll's snapshot changes, events and deliveries atomically and durably.
    /// Returns the generation now stored. A commit without changes writes nothing unless
    /// the source had never committed (the baseline).
    fn commit_poll(&self, commit: PollCommit) -> Result<u64, StoreError>;

    /// Pending deliveries of `target` with sequence numbers above `after`, oldest first.
    fn pending(
        &self,
        target: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// One pending delivery, if it is still queued.
    fn delivery(&self, target: &str, seq: u64) -> Result<Option<Delivery>, StoreError>;

    /// The target accepted it: remove it from the outbox.
    fn ack(&self, target: &str, seq: u64) -> Result<(), StoreError> {
        self.ack_many(target, &[seq])
    }

    /// The target accepted these: remove them from the outbox in one write.
    fn ack_many(&self, target: &str, seqs: &[u64]) -> Result<(), StoreError>;

    /// The attempt failed and another comes at `next_at_ms`.
    fn reschedule(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        next_at_ms: i64,
        last_error: &str,
    ) -> Result<(), StoreError>;

    /// No more attempts: move it from the outbox to the dead letters, where it stays.
    fn bury(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError>;

    /// Dead deliveries, optionally of one target, oldest first.
    fn dead(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Number of pending deliveries per target.
    fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError>;

    /// Writes everything to disk.
    fn flush(&self) -> Result<(), StoreError>;
}

/// The store shared by the daemon's tasks.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// Runs a blocking store call off the async workers.
pub async fn blocking<T, F>(store: &SharedStore, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| StoreError::Db(format!("store task stopped: {e}")))?
}

#[cfg(test)]
mod tests;
