//! Durable state: per-source snapshots and the outbox of deliveries.
//!
//! The rest of pollhook talks to the [`Store`] trait and never names sled. The one
//! operation that matters most is [`Store::commit_poll`]: a poll's new snapshot, its
//! events and one delivery per subscribed target are written in one transaction and
//! flushed to disk before it returns (DESIGN invariant 1), so a change is either still
//! undetected after a crash (and the next poll finds it again, with the same event id)
//! or already queued for every target. A poll with more events than one commit holds
//! stages them in chunks first and has them moved to the outbox once its snapshot commit
//! is durable (see [`PollCommit::chunk`]).
//!
//! Every call blocks: async code calls it through `spawn_blocking`.

mod pg;
mod records;
mod sled_forget;
mod sled_outbox;
mod sled_pack;
mod sled_snapshot;
mod sled_stage;
mod sled_store;
mod state_dir;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::diff::Seen;
use crate::event::Event;
use crate::health::HealthRecord;

pub use pg::{
    throwaway, ClusterView, Held, ImportReport, ImportedSource, ImportedTarget, Instance, Lease,
    PgStore, TICKS,
};
pub use records::{Delivery, DeliveryStatus, SourceState, TargetStats};
pub use sled_store::SledStore;
pub use state_dir::{new_database_warning, MARKER_FILE};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database's lock is held (sled reports this only as text, kept in `reason`).
    #[error("cannot open the state database in {path}: another pollhook daemon, or a `pollhook` operator command, holds its lock ({reason}). Stop the other process, or give this one another state_dir")]
    Open { path: String, reason: String },
    /// The file system refused access to the state_dir or a file in it.
    #[error("cannot open the state database: permission denied on {path} (or a file in it). Check its owner and mode (`ls -lan {path}`): everything in the state_dir must belong to the user pollhook runs as, e.g. after a run as root, or under a systemd unit with DynamicUser= whose StateDirectory= does not manage this directory")]
    OpenDenied {
        path: String,
        #[source]
        error: std::io::Error,
    },
    /// A file-system failure around the database that is not damage to it.
    #[error("cannot open the state database: cannot {action} {path}")]
    OpenIo {
        action: &'static str,
        path: String,
        #[source]
        error: std::io::Error,
    },
    /// sled refused the database's files: corruption, a missing or truncated file.
    #[error("the state database in {path} is damaged and cannot be opened (files there: {files}). Restore that directory from a backup, or move it aside (`mv {path} {path}.damaged`), delete {} and start afresh, losing its pending deliveries and snapshots: every source then records a new baseline at its first poll (no events for items that already exist). sled reported", state_dir::marker_for(.path))]
    Damaged {
        path: String,
        files: String,
        #[source]
        error: Box<sled::Error>,
    },
    /// The state_dir's marker file names another database than the one found.
    #[error("the state database in {path} is not the one this state_dir held: {marker} names database {expected}, but {found}. It is empty or was replaced, and opening it would make every source record a new baseline and strand the pending deliveries of the old one. Restore {path} from a backup, or delete {marker} to start with this database as it is, a new empty one if there is none (every source records a new baseline at its first poll; no events for items that already exist)")]
    Replaced {
        path: String,
        marker: String,
        expected: String,
        found: String,
    },
    /// A snapshot record's page lives in a file under `db/blobs` that is gone.
    #[error("source {source_name}: cannot read its snapshot record (bucket {bucket}): a file under {db}/blobs is missing (sled keeps large pages there, and the page holds this record and possibly those of other sources). The state database is damaged: run `pollhook forget {source_name}` to start this source afresh (its next poll records a new baseline; a source whose records shared the page fails the same way and can be forgotten the same way), restore the state_dir from a backup, or stop pollhook, move the database aside (`mv {db} {db}.damaged`), delete {} and start afresh, losing its pending deliveries and snapshots (every source records a new baseline)", state_dir::marker_for(.db))]
    MissingBlob {
        source_name: String,
        bucket: String,
        db: String,
        #[source]
        error: Box<sled::Error>,
    },
    /// sled refused an operation without being broken (a missing tree, an unsupported
    /// operation): a bug in pollhook rather than damage.
    #[error("state database error")]
    Db(#[source] sled::Error),
    /// The blocking task running a store operation panicked (a bug) or was cancelled.
    #[error("the {task} stopped")]
    Stopped {
        /// "store task", "open task", "acknowledgement task".
        task: &'static str,
        #[source]
        error: tokio::task::JoinError,
    },
    /// sled itself failed: an I/O error (a full disk, a file it may not write), corruption
    /// or a bug it reports. sled 0.34 keeps such an error and fails every later call, so
    /// the store is unusable until the process restarts (see [`StoreError::is_fatal`]).
    #[error("the state database failed")]
    Failed(#[source] sled::Error),
    /// PostgreSQL refused or failed an operation, or could not be reached. Not fatal:
    /// the operation is retried, on a new connection.
    #[error("the PostgreSQL store at {db} failed while {doing}; pollhook retries it (is the database up and reachable from here?)")]
    Postgres {
        db: String,
        doing: String,
        #[source]
        error: tokio_postgres::Error,
    },
    /// PostgreSQL did not answer in time. Not fatal: retried, on a new connection.
    #[error("the PostgreSQL store at {db} did not answer within {} while {doing}; pollhook retries it (is the database overloaded or cut off?)", humantime::format_duration(*.limit))]
    PostgresTimeout {
        db: String,
        doing: String,
        limit: std::time::Duration,
    },
    /// This instance does not hold the lease of the source or target it wrote for (it
    /// lost it: paused or cut off past its lease, another instance took over): the
    /// write is refused, and the daemon stops the work at its next lease round.
    #[error("instance {instance} no longer holds the lease of {kind} {name} (another instance may have taken it over); the write was refused and nothing changed")]
    NotHeld {
        kind: &'static str,
        name: String,
        instance: String,
    },
    /// A poll of several commits on PostgreSQL lost its transaction between two of them
    /// (the connection dropped, the database restarted): nothing of it was written.
    #[error("source {source_name}: the PostgreSQL store lost this poll's transaction before its last commit (the connection dropped or the database restarted); nothing of the poll was written, and the next poll starts over")]
    PollLost { source_name: String },
    /// TLS to PostgreSQL failed: the server offers none, or its certificate is not one
    /// the sslmode accepts. Retried like any failed connection, but it lasts until the
    /// config or the database's certificate changes, so the message says which.
    #[error("cannot connect to the PostgreSQL store at {db} with sslmode={sslmode}: {problem}. To fix: {advice}")]
    PostgresTls {
        db: String,
        sslmode: crate::config::SslMode,
        /// What is wrong, rustls's reason included.
        problem: String,
        advice: String,
    },
    /// `[store]` names something the store cannot use.
    #[error("[store] postgres = {db}: {reason}")]
    PostgresConfig { db: String, reason: String },
    /// The database's tables are of a newer release.
    #[error("the PostgreSQL store at {db} has schema version {found}, newer than this pollhook knows ({known}): a newer release has upgraded it. Run that release (or newer) on every instance")]
    PostgresNewer {
        db: String,
        found: usize,
        known: usize,
    },
    /// An import ([`PgStore::import`]) was refused: the database already holds state,
    /// which a copy would mix with another installation's.
    #[error("the PostgreSQL store at {db} already holds pollhook state ({holds}), and migrate-store copies only into an empty database: nothing was copied. Create a new, empty database (`createdb -O USER NAME`) and name it in [store], or, if what this one holds is not wanted, drop it and create it again empty (every instance stopped), then run migrate-store again")]
    ImportNotEmpty { db: String, holds: String },
    /// An import was refused: pollhook instances are running on the database.
    #[error("pollhook instances are running on the PostgreSQL store at {db}: {instances}; nothing was copied. Stop every pollhook instance that uses this database (and the daemon on the state_dir, if any), then run migrate-store again")]
    ImportInUse { db: String, instances: String },
    /// An import's copy into PostgreSQL failed; its transaction was rolled back.
    #[error("copying into the PostgreSQL store at {db} failed while {doing}; the copy was rolled back and nothing was written. Fix the cause, then run migrate-store again")]
    ImportFailed {
        db: String,
        doing: String,
        #[source]
        error: tokio_postgres::Error,
    },
    /// An import's copy into PostgreSQL did not finish in time; it was rolled back.
    #[error("copying into the PostgreSQL store at {db} did not finish within {} (it was {doing}); the copy was rolled back and nothing was written. Is the database overloaded or cut off?", humantime::format_duration(*.limit))]
    ImportTimedOut {
        db: String,
        doing: String,
        limit: std::time::Duration,
    },
    /// An import could not read what it copies; nothing was written.
    #[error("cannot read {from} to copy it; nothing was copied")]
    ImportRead {
        /// The store read, as [`Store::describe`] names it.
        from: String,
        #[source]
        error: Box<StoreError>,
    },
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("source {source_name} changed while this poll ran (expected generation {expected}, found {found}); the poll is dropped and the next one starts from the new state")]
    Conflict {
        source_name: String,
        expected: u64,
        found: u64,
    },
}

impl StoreError {
    /// Whether the store is broken for good: every later call fails too, and only a
    /// restart (after the cause, such as a full disk, is fixed) helps. The daemon stops
    /// on such an error instead of retrying it forever.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Failed(_))
    }
}

/// Everything one commit of a poll writes, in one transaction: all of a poll's changes,
/// or, for a poll with more than [`crate::poll::CHUNK`] events, a chunk of its events
/// (`events_only`) or its last chunk with the snapshot changes.
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
    /// Items the source holds after this commit.
    pub item_count: u64,
    /// Events of a poll with more than [`crate::poll::CHUNK`], staged ahead of the
    /// commit that writes its snapshot: nothing reaches the outbox, the generation is
    /// checked as for any commit, and the source's state stays as it is.
    pub events_only: bool,
    /// This commit's place among its poll's commits. A poll of one commit (chunk 0, not
    /// `events_only`) writes its deliveries in its transaction. A poll of several stages
    /// each chunk's events, the last one's with the snapshot, and the store moves them to
    /// the outbox only once that commit is durable: no event of a poll that never
    /// committed is delivered, and a crash after it loses none (the store finishes the
    /// move when it next opens).
    pub chunk: u32,
    /// What the items came in, kept to recognise an answer of another shape.
    pub collection: Option<crate::extract::Collection>,
    /// Detection time, unix milliseconds (the deliveries' first attempt time).
    pub now_ms: i64,
    /// Wakes the source's targets. A store that moves a large poll's staged events to
    /// the outbox in several transactions calls it after each, so delivery starts on the
    /// first chunk while the rest moves; the caller wakes them after the commit anyway.
    pub queued: Queued,
}

/// The wake-up a [`PollCommit`] carries (see its `queued`); by default, nothing.
#[derive(Clone, Default)]
pub struct Queued(Option<Arc<dyn Fn() + Send + Sync>>);

impl Queued {
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Queued {
        Queued(Some(Arc::new(wake)))
    }

    pub fn call(&self) {
        if let Some(wake) = &self.0 {
            wake();
        }
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Queued(wake)"
        } else {
            "Queued(none)"
        })
    }
}

/// The two kinds of work an instance of a cluster holds leases on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// Polling a source (and committing its polls).
    Source,
    /// Sending a target's deliveries (and recording their outcomes).
    Target,
}

/// What the daemon needs from durable storage.
pub trait Store: Send + Sync + 'static {
    /// Whether this process may act on `name` now: poll the source, or send the
    /// target's next delivery. Always, but for a member of a cluster whose lease on it
    /// is gone or about to be (see `pg/lease.rs`).
    fn holds(&self, _kind: Work, _name: &str) -> bool {
        true
    }

    /// The cluster's instances and leases; None for a store of one node (sled).
    fn cluster(&self) -> Result<Option<ClusterView>, StoreError> {
        Ok(None)
    }

    /// A source's commit generation and item count (zero values before its first poll).
    fn source_state(&self, source: &str) -> Result<SourceState, StoreError>;

    /// The items a source held after its last committed poll.
    fn snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError>;

    /// Writes a poll's snapshot changes, events and deliveries atomically and durably.
    /// Returns the generation now stored. A commit without changes writes nothing unless
    /// the source had never committed (the baseline).
    fn commit_poll(&self, commit: PollCommit) -> Result<u64, StoreError>;

    /// A poll that failed between two of its commits (a stored item that does not
    /// parse) will not make the next: a store that keeps a poll's commits in one open
    /// transaction (PostgreSQL) ends it now, so its locks do not wait for the source's
    /// next poll.
    fn abandon_poll(&self, _source: &str) {}

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

    /// Number of pending deliveries per target (those with any), from [`Store::target_stats`].
    fn pending_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        Ok(self
            .target_stats()?
            .into_iter()
            .filter(|(_, s)| s.pending > 0)
            .map(|(target, s)| (target, s.pending))
            .collect())
    }

    /// Pending deliveries, optionally of one target, in outbox order (by target, then
    /// detection order), at most `limit`. The mirror of [`Store::dead`].
    fn outbox(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError>;

    /// Every delivery of one event, pending or dead, to any target: the pending ones
    /// first, each group by target then sequence. Scans both trees (an operator action,
    /// not for hot paths).
    fn find_event(&self, event_id: &str) -> Result<Vec<(DeliveryStatus, Delivery)>, StoreError>;

    /// Moves dead deliveries back to the outbox, for another round of attempts: those of
    /// `target` if given, of event `event_id` if given (both `None`: every dead delivery).
    ///
    /// Each goes back as a fresh delivery: a new sequence number, so it is queued after
    /// everything already pending (a running target worker picks it up with its next
    /// load), no attempts, due at `now_ms`, no last error; the same event id, type,
    /// source, item, detection time and body bytes. Being queued anew, a replayed
    /// delivery goes after the later events of its item that are still pending or were
    /// already delivered: a receiver may see an item's old state after its newer one.
    ///
    /// Moves are atomic in batches (a crash leaves each delivery in exactly one of the
    /// two trees) and flushed before returning. Returns the deliveries as now queued, so
    /// the caller knows which targets to wake.
    fn replay_dead(
        &self,
        target: Option<&str>,
        event_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Drops a source's stored snapshot, so its next poll is a first poll again (a new
    /// baseline, no events). Its generation goes up by one, never back: event ids hash
    /// it, so events after the forget never reuse an id of an event before it, and a
    /// poll that read the state before the forget fails its commit with a conflict
    /// instead of writing a partial snapshot. Pending and dead deliveries of the source
    /// are not touched. Atomic and flushed. Returns whether the source had any state.
    fn forget_source(&self, source: &str) -> Result<bool, StoreError>;

    /// The health record of `subject` (a [`crate::health::Subject`] key); the default
    /// (healthy) when none is stored.
    fn health(&self, subject: &str) -> Result<HealthRecord, StoreError>;

    /// Replaces `subject`'s health record `read` with `next` and queues `events` (each
    /// with its targets, as a poll's commit does) in one atomic, durable write. Writes
    /// nothing and returns false if the stored record is no longer `read`: whoever wrote
    /// it meanwhile (another instance, after a takeover) decided, and the caller reads
    /// again. So one transition queues its event once, whoever sees it.
    fn update_health(
        &self,
        subject: &str,
        read: &HealthRecord,
        next: &HealthRecord,
        events: Vec<(Event, Arc<[String]>)>,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// When `target`'s first pending delivery in outbox order was detected (unix ms);
    /// None when nothing is pending. One read.
    fn oldest_pending(&self, target: &str) -> Result<Option<i64>, StoreError>;

    /// Every source with stored state, sorted by name.
    fn sources(&self) -> Result<Vec<(String, SourceState)>, StoreError>;

    /// Queue sizes of every target that has pending or dead deliveries. Costs a scan of
    /// the keys of the outbox and the dead letters plus one record read per target, in
    /// proportion to the deliveries queued (about 2 µs each): nothing for a healthy
    /// queue, a fraction of a second per metrics scrape for a backlog of 100,000s.
    fn target_stats(&self) -> Result<BTreeMap<String, TargetStats>, StoreError>;

    /// Writes everything to disk.
    fn flush(&self) -> Result<(), StoreError>;

    /// Where the state is, for messages: "the sled database in /var/lib/pollhook/db".
    fn describe(&self) -> String;
}

/// The store shared by the daemon's tasks.
pub type SharedStore = std::sync::Arc<dyn Store>;

/// Runs blocking store calls off the async workers: `f` on a blocking thread. `f` may
/// fail with any error a store error converts into (the admin API's and the operator
/// commands' operations fail with their own); a task that panicked or was cancelled is
/// a store error too.
pub async fn blocking<T, E, F>(store: &SharedStore, f: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, E> + Send + 'static,
{
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|error| StoreError::Stopped {
            task: "store task",
            error,
        })?
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_contract;
#[cfg(test)]
mod tests_damage;
#[cfg(test)]
mod tests_import;
#[cfg(test)]
mod tests_pg;
#[cfg(test)]
mod tests_staged;
