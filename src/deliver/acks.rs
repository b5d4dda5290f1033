//! A target worker's acknowledgements: the deliveries its target accepted, removed from
//! the outbox in batches, so one store write (and one wake-up of a blocking thread) serves
//! many deliveries.
//!
//! A delivery is acknowledged only after its target's 2xx (invariant 1). Losing a batch
//! (a crash before it lands, a store error at shutdown) repeats those deliveries, as an
//! unflushed single write would; it never loses one.
use std::time::Duration;

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::store::{SharedStore, StoreError};

/// Acknowledgements written in one store call at most, and how long the first of a
/// batch may wait for others. A crash loses at most these (they are sent again).
const ACK_BATCH: usize = 512;
const ACK_DELAY: Duration = Duration::from_millis(20);

/// Acknowledged deliveries not yet being written, gathered by a target's senders.
#[derive(Debug, Default)]
pub struct Acked {
    seqs: Vec<u64>,
    /// When the oldest of `seqs` arrived: they are written once they are ACK_BATCH or
    /// have waited ACK_DELAY.
    since: Option<Instant>,
}

impl Acked {
    /// Records that a delivery was acknowledged by its target. True when the worker is
    /// to look: the first one (whose wait starts now) or a full batch.
    pub fn push(&mut self, seq: u64) -> bool {
        self.seqs.push(seq);
        let first = self.since.is_none();
        self.since.get_or_insert_with(Instant::now);
        first || self.seqs.len() == ACK_BATCH
    }

    /// A batch whose write failed, due again in a second, not in ACK_DELAY: a failing
    /// store is not hammered (or the log flooded) fifty times a second.
    pub fn again(&mut self, seqs: Vec<u64>) {
        self.seqs.extend(seqs);
        self.since = Some(Instant::now() + Duration::from_secs(1));
    }
}

/// Writes one worker's acknowledgements: while one batch is written, the next gathers.
pub struct AckWriter {
    store: SharedStore,
    target: String,
    /// The batch being written, at most one at a time.
    writing: Option<AckBatch>,
}

/// A batch of acknowledgements being written; on failure, the error and the batch.
type AckBatch = JoinHandle<AckResult>;
type AckResult = Result<(), (StoreError, Vec<u64>)>;

impl AckWriter {
    pub fn new(store: SharedStore, target: String) -> AckWriter {
        AckWriter {
            store,
            target,
            writing: None,
        }
    }

    /// Starts writing the `acked` deliveries when they are due and no other batch is
    /// being written.
    pub fn start_if_due(&mut self, acked: &mut Acked) {
        let waited = acked.since.is_some_and(|t| t + ACK_DELAY <= Instant::now());
        if self.writing.is_none() && (acked.seqs.len() >= ACK_BATCH || waited) {
            let seqs = std::mem::take(&mut acked.seqs);
            self.writing = Some(self.write(seqs));
            acked.since = None;
        }
    }

    /// When the `acked` deliveries are due; none while a batch is being written (its end
    /// wakes the worker).
    pub fn due(&self, acked: &Acked) -> Option<Instant> {
        acked
            .since
            .filter(|_| self.writing.is_none())
            .map(|t| t + ACK_DELAY)
    }

    /// Resolves when the batch being written has landed (never when there is none), with
    /// the batch if it failed (for [`Acked::again`]). Cancel-safe: until the batch ends,
    /// the write stays in `writing`.
    pub async fn written(&mut self) -> Option<Vec<u64>> {
        let Some(batch) = self.writing.as_mut() else {
            return std::future::pending().await;
        };
        let result = joined(batch.await);
        self.writing = None;
        let (e, seqs) = result.err()?;
        tracing::error!(target_name = %self.target, error = %crate::error::chain(&e), "cannot record acknowledgements; retrying in 1s");
        Some(seqs)
    }

    /// At shutdown: waits for the batch being written, then writes what is left.
    pub async fn close(mut self, mut acked: Acked) {
        if let Some(batch) = self.writing.take() {
            if let Err((_, seqs)) = joined(batch.await) {
                acked.seqs.extend(seqs);
            }
        }
        if !acked.seqs.is_empty() {
            let seqs = std::mem::take(&mut acked.seqs);
            if let Err((e, _)) = joined(self.write(seqs).await) {
                tracing::error!(target_name = %self.target, error = %crate::error::chain(&e), "cannot record acknowledgements at shutdown; they will be sent again");
            }
        }
    }

    /// Starts writing a batch of acknowledgements.
    fn write(&self, seqs: Vec<u64>) -> AckBatch {
        let store = self.store.clone();
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || match store.ack_many(&target, &seqs) {
            Ok(()) => Ok(()),
            Err(e) => Err((e, seqs)),
        })
    }
}

/// How a batch's write ended; a write task that stopped (it panicked) is an error too.
fn joined(ended: Result<AckResult, JoinError>) -> AckResult {
    ended.unwrap_or_else(|error| {
        let stopped = StoreError::Stopped {
            task: "acknowledgement task",
            error,
        };
        Err((stopped, Vec::new()))
    })
}
