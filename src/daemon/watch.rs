//! The daemon's view of the store's health: every store call of every task (source loops,
//! target workers, the admin API) goes through [`Watched`], which reports the first fatal
//! error ([`StoreError::is_fatal`]) to [`Health`]. The daemon then stops: sled 0.34 fails
//! every call after an I/O error until the process restarts, so retrying would only keep
//! a daemon alive that can do nothing while `/readyz` and the watchdog said all was well.
//!
//! One wrapper instead of a check at each call site: a task cannot forget to report, and
//! the code that owns the calls (poller, admin) does not need to know about shutdown.

use std::collections::{BTreeMap, HashMap};

use crate::diff::Seen;
use crate::running::Health;
use crate::store::{
    Delivery, DeliveryStatus, PollCommit, SharedStore, SourceState, Store, StoreError, TargetStats,
};

/// A store whose fatal errors stop the daemon.
pub(super) struct Watched {
    inner: SharedStore,
    health: std::sync::Arc<Health>,
}

impl Watched {
    pub(super) fn new(inner: SharedStore, health: std::sync::Arc<Health>) -> Watched {
        Watched { inner, health }
    }

    fn check<T>(
        &self,
        result: Result<T, StoreError>,
        operation: impl FnOnce() -> String,
    ) -> Result<T, StoreError> {
        // `StoreError::is_fatal` is exactly this variant.
        if let Err(StoreError::Failed(e)) = &result {
            self.health.report(operation, e);
        }
        result
    }
}

// Every required method delegates through `check`; the provided ones (`ack`,
// `pending_counts`) are the trait's, over these.
impl Store for Watched {
    fn holds(&self, kind: crate::store::Work, name: &str) -> bool {
        self.inner.holds(kind, name)
    }

    fn cluster(&self) -> Result<Option<crate::store::ClusterView>, StoreError> {
        self.inner.cluster()
    }

    fn source_state(&self, source: &str) -> Result<SourceState, StoreError> {
        self.check(self.inner.source_state(source), || {
            format!("reading the state of source {source}")
        })
    }

    fn snapshot(&self, source: &str) -> Result<HashMap<String, Seen>, StoreError> {
        self.check(self.inner.snapshot(source), || {
            format!("reading the stored items of source {source}")
        })
    }

    fn commit_poll(&self, commit: PollCommit) -> Result<u64, StoreError> {
        let source = commit.source.clone();
        self.check(self.inner.commit_poll(commit), || {
            format!("committing a poll of source {source}")
        })
    }

    fn abandon_poll(&self, source: &str) {
        self.inner.abandon_poll(source)
    }

    fn health(&self, subject: &str) -> Result<crate::health::HealthRecord, StoreError> {
        self.check(self.inner.health(subject), || {
            format!("reading the health of {subject}")
        })
    }

    fn update_health(
        &self,
        subject: &str,
        read: &crate::health::HealthRecord,
        next: &crate::health::HealthRecord,
        events: Vec<(crate::event::Event, std::sync::Arc<[String]>)>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.check(
            self.inner
                .update_health(subject, read, next, events, now_ms),
            || format!("recording the health of {subject}"),
        )
    }

    fn oldest_pending(&self, target: &str) -> Result<Option<i64>, StoreError> {
        self.check(self.inner.oldest_pending(target), || {
            format!("reading the oldest pending delivery of target {target}")
        })
    }

    fn pending(
        &self,
        target: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.check(self.inner.pending(target, after, limit), || {
            format!("reading pending deliveries of target {target}")
        })
    }

    fn delivery(&self, target: &str, seq: u64) -> Result<Option<Delivery>, StoreError> {
        self.check(self.inner.delivery(target, seq), || {
            format!("reading a delivery of target {target}")
        })
    }

    fn ack_many(&self, target: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.check(self.inner.ack_many(target, seqs), || {
            format!("recording acknowledgements of target {target}")
        })
    }

    fn reschedule(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        next_at_ms: i64,
        last_error: &str,
    ) -> Result<(), StoreError> {
        self.check(
            self.inner
                .reschedule(target, seq, attempts, next_at_ms, last_error),
            || format!("recording a failed attempt of target {target}"),
        )
    }

    fn bury(
        &self,
        target: &str,
        seq: u64,
        attempts: u32,
        last_error: &str,
    ) -> Result<(), StoreError> {
        self.check(self.inner.bury(target, seq, attempts, last_error), || {
            format!("moving a dead delivery of target {target}")
        })
    }

    fn dead(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.check(self.inner.dead(target, limit), || {
            "reading dead deliveries".into()
        })
    }

    fn outbox(&self, target: Option<&str>, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        self.check(self.inner.outbox(target, limit), || {
            "reading pending deliveries".into()
        })
    }

    fn find_event(&self, event_id: &str) -> Result<Vec<(DeliveryStatus, Delivery)>, StoreError> {
        self.check(self.inner.find_event(event_id), || {
            format!("looking up event {event_id}")
        })
    }

    fn replay_dead(
        &self,
        target: Option<&str>,
        event_id: Option<&str>,
        now_ms: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.check(self.inner.replay_dead(target, event_id, now_ms), || {
            "replaying dead deliveries".into()
        })
    }

    fn forget_source(&self, source: &str) -> Result<bool, StoreError> {
        self.check(self.inner.forget_source(source), || {
            format!("forgetting source {source}")
        })
    }

    fn sources(&self) -> Result<Vec<(String, SourceState)>, StoreError> {
        self.check(self.inner.sources(), || "reading the stored sources".into())
    }

    fn target_stats(&self) -> Result<BTreeMap<String, TargetStats>, StoreError> {
        self.check(self.inner.target_stats(), || {
            "reading the queue sizes".into()
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.check(self.inner.flush(), || "flushing to disk".into())
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
