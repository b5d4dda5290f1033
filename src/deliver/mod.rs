//! Delivery: one worker per target takes that target's deliveries from the outbox, signs
//! and POSTs them, and acknowledges, reschedules or buries each.
//!
//! Workers are independent tasks with their own HTTP client, so a slow or dead target
//! never delays another (invariant 5). Within a target, only the oldest unfinished
//! delivery of each item may be in flight or waiting for its retry; later deliveries of
//! that item wait behind it, other items go on (invariant 4). A delivery leaves the
//! outbox only after a 2xx (invariant 1), or moves to the dead letters after its last
//! retry or a 410.

mod acks;
mod queue;
mod refill;
pub mod retry;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::config::Target;
use crate::http::{describe_send_error, reaching, retry_after_value, user_agent, Peer};
use crate::jitter::random_unit;
use crate::metrics::Metrics;
use crate::sign::Scheme;
use crate::store::{blocking, SharedStore, Work};
use acks::{AckWriter, Acked};
use queue::{Queue, Ready};
use refill::Refill;
pub use retry::{Decision, Outcome, RetryPolicy};

/// How soon a worker whose cluster lease lapsed looks again whether it holds it.
const LEASE_RECHECK: Duration = Duration::from_millis(100);

/// Deliveries loaded from the outbox into a worker's memory at most. Bodies of
/// deliveries waiting for a retry are dropped from memory and read again when due, so
/// this bounds memory while letting thousands of failing items retry side by side.
const WINDOW: usize = 16_384;

/// Sends one target's webhooks until shutdown.
pub struct TargetWorker {
    target: Arc<Target>,
    store: SharedStore,
    client: reqwest::Client,
    /// Signalled when a commit queued deliveries for this target.
    wake: Arc<Notify>,
    shutdown: CancellationToken,
    /// How long in-flight attempts may finish after shutdown.
    grace: Duration,
    metrics: Option<Arc<Metrics>>,
}

/// The end of one attempt, settled in the book by its sender.
struct Finished {
    seq: u64,
    decision: Decision,
    attempts: u32,
    next_at_ms: i64,
}

impl TargetWorker {
    pub fn new(
        target: Arc<Target>,
        store: SharedStore,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<TargetWorker, reqwest::Error> {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(target.timeout.min(Duration::from_secs(10)))
            .timeout(target.timeout)
            .pool_max_idle_per_host(target.max_in_flight);
        // `ca_file`, `proxy`, `client_cert`: built into the client, so a change of any
        // of them is a changed target, whose worker a reload restarts with a new one.
        let client = reaching(
            builder,
            &target.ca,
            &target.proxy,
            target.client_identity.as_ref(),
        )
        .build()?;
        Ok(TargetWorker {
            target,
            store,
            client,
            wake,
            shutdown,
            grace,
            metrics: None,
        })
    }

    /// Counts every attempt in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> TargetWorker {
        self.metrics = Some(metrics);
        self
    }

    /// The worker loop: refill from the outbox, start senders for due deliveries, write
    /// acknowledgements, wait for the next thing to happen. Store errors are logged and
    /// retried; they never end the loop (a fatal one stops the daemon, which stops this
    /// worker like a shutdown).
    ///
    /// A sender sends one delivery after another (see [`Sender::run`]): it settles each
    /// attempt in the shared [`Book`] and takes the next due delivery itself, so the
    /// worker is not woken per attempt, only when a sender ends (nothing due for it),
    /// when acknowledgements are to be written, or when a sender's outcome makes a
    /// delivery due sooner than the worker last saw.
    pub async fn run(self) {
        let shared = Arc::new(Shared::default());
        let mut senders: JoinSet<()> = JoinSet::new();
        let mut acks = AckWriter::new(self.store.clone(), self.target.name.clone());
        let mut refill = Refill::new(self.store.clone(), self.target.name.clone());
        let mut alarm = Alarm::new();
        loop {
            let acks_due = {
                let mut book = lock(&shared.book);
                acks.start_if_due(&mut book.acked);
                refill.start_if_due(&book.queue);
                acks.due(&book.acked)
            };
            // No delivery starts after the stop: not in the iteration that noticed it late
            // (a load or a ready timer raced it), nor in a worker that only got here
            // after waiting for its predecessor (a reload) while the daemon shut down.
            if self.shutdown.is_cancelled() {
                break;
            }
            let next_due = self.start_due(&shared, &mut senders);
            // Wake for whichever comes first: the next due delivery, a read to retry, the
            // pending acknowledgements.
            alarm.set(
                [next_due, refill.retry_at(), acks_due]
                    .into_iter()
                    .flatten()
                    .min(),
            );
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                _ = self.wake.notified() => refill.request(),
                _ = shared.nudge.notified() => {}
                Some(ended) = senders.join_next() => {
                    self.ended(ended);
                    while let Some(ended) = senders.try_join_next() {
                        self.ended(ended);
                    }
                }
                failed = acks.written() => {
                    if let Some(seqs) = failed {
                        lock(&shared.book).acked.again(seqs);
                    }
                }
                () = refill.landed(&shared.book) => {}
                () = alarm.rings() => {}
            }
        }
        refill.close().await;
        self.drain(&mut senders).await;
        // What was acknowledged must be recorded before the daemon flushes and exits,
        // or a clean stop would repeat it.
        let acked = std::mem::take(&mut lock(&shared.book).acked);
        acks.close(acked).await;
    }

    /// Starts a sender for every due delivery there is room for. Returns when to look
    /// again: when the next one is due, if there is room left to start it then.
    fn start_due(&self, shared: &Arc<Shared>, senders: &mut JoinSet<()>) -> Option<Instant> {
        if !self.store.holds(Work::Target, &self.target.name) {
            // A member of a cluster whose lease on this target lapsed (paused, or cut off
            // from the database) sends nothing: another instance may hold it by now.
            return Some(Instant::now() + LEASE_RECHECK);
        }
        let now_ms = Utc::now().timestamp_millis();
        let mut book = lock(&shared.book);
        while senders.len() < self.target.max_in_flight {
            let Some(ready) = book.queue.take_due(now_ms) else {
                break;
            };
            senders.spawn(self.sender(shared).run(ready));
        }
        let next_due_ms = book.queue.next_due_ms();
        book.seen_due_ms = next_due_ms;
        next_due_ms
            .filter(|_| senders.len() < self.target.max_in_flight)
            .map(|at| {
                let wait = u64::try_from(at - now_ms).unwrap_or(0);
                Instant::now() + Duration::from_millis(wait)
            })
    }

    /// Clean stop: no new attempts; those in flight may finish within the grace period.
    /// Whatever is cut off stays pending for the next start (invariant 8).
    async fn drain(&self, senders: &mut JoinSet<()>) {
        let finishing = async {
            while let Some(ended) = senders.join_next().await {
                self.ended(ended);
            }
        };
        if tokio::time::timeout(self.grace, finishing).await.is_err() {
            tracing::warn!(target_name = %self.target.name, cut = senders.len(), "grace period over; unfinished deliveries stay pending for the next start");
            senders.abort_all();
        }
    }

    /// A sender ended: nothing was due for it, or it panicked. A panicked sender's
    /// delivery is still in the outbox and is sent again after a restart.
    fn ended(&self, ended: Result<(), tokio::task::JoinError>) {
        if let Err(e) = ended {
            if e.is_panic() {
                tracing::error!(target_name = %self.target.name, error = %crate::error::chain(&e), "delivery task failed");
            }
        }
    }

    fn sender(&self, shared: &Arc<Shared>) -> Sender {
        Sender {
            target: self.target.clone(),
            store: self.store.clone(),
            client: self.client.clone(),
            metrics: self.metrics.clone(),
            shared: shared.clone(),
            shutdown: self.shutdown.clone(),
        }
    }
}

/// What a target's worker and its senders share.
#[derive(Default)]
struct Shared {
    book: Mutex<Book>,
    /// Wakes the worker: acknowledgements to write, or a delivery due sooner.
    nudge: Notify,
}

/// A target's bookkeeping, under one lock held only to read or change it (never across
/// an await).
#[derive(Default)]
struct Book {
    queue: Queue,
    acked: Acked,
    /// When the next delivery was due as the worker last looked (ms): a sender whose
    /// outcome makes one due sooner wakes the worker, which may have room to start it.
    seen_due_ms: Option<i64>,
}

impl Book {
    /// A sender's attempt ended with `f`: records it, and takes the next delivery due at
    /// `now_ms` if the sender is to `go_on`. Also says whether the worker is to look:
    /// acknowledgements to write (the first of a batch, or a full one), the queue half
    /// empty (to read more), or a delivery due sooner than the worker last saw (a retry,
    /// or an item's next delivery, that it may have room to start then; a sender that
    /// finds nothing due ends, which wakes the worker too, so this is for one that went
    /// on with other work).
    fn settle(&mut self, f: Finished, go_on: bool, now_ms: i64) -> (Option<Ready>, bool) {
        let mut nudge = f.decision == Decision::Ack && self.acked.push(f.seq);
        self.queue
            .finish(f.seq, f.decision, f.attempts, f.next_at_ms);
        let next = if go_on {
            self.queue.take_due(now_ms)
        } else {
            None
        };
        nudge |= self.queue.len() + 1 == WINDOW / 2;
        let next_due = self.queue.next_due_ms();
        if let Some(due) = next_due {
            if self.seen_due_ms.is_none_or(|seen| due < seen) {
                nudge = true;
                self.seen_due_ms = Some(due);
            }
        }
        (next, nudge)
    }
}

/// The book, also if a sender panicked holding it: its bookkeeping is a few map
/// updates, each complete or not begun.
fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(|e| e.into_inner())
}

/// A worker's one timer, moved only when the next deadline changes: creating a timer
/// per turn of the loop costs more than the bookkeeping it waits for.
struct Alarm {
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl Alarm {
    fn new() -> Alarm {
        Alarm {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// Rings at `at`, or never when it is `None`.
    fn set(&mut self, at: Option<Instant>) {
        if at != self.armed {
            if let Some(at) = at {
                self.sleep.as_mut().reset(at);
            }
            self.armed = at;
        }
    }

    /// Resolves when the alarm rings (never when it is not set), and disarms it.
    async fn rings(&mut self) {
        if self.armed.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.armed = None;
    }
}

/// Sends a target's deliveries one after another, as its own task; a worker runs up to
/// `max_in_flight` of them.
struct Sender {
    target: Arc<Target>,
    store: SharedStore,
    client: reqwest::Client,
    metrics: Option<Arc<Metrics>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Sender {
    /// Sends `ready`, settles it in the book, and goes on with the next due delivery
    /// while there is one (and no stop, and the target's lease is held).
    async fn run(self, mut ready: Ready) {
        loop {
            let done = self.attempt(ready).await;
            match self.settle(done) {
                Some(next) => ready = next,
                None => return,
            }
        }
    }

    /// Records how an attempt ended, and takes the next due delivery.
    fn settle(&self, f: Finished) -> Option<Ready> {
        let go_on =
            !self.shutdown.is_cancelled() && self.store.holds(Work::Target, &self.target.name);
        let (next, nudge) = lock(&self.shared.book).settle(f, go_on, Utc::now().timestamp_millis());
        if nudge {
            self.shared.nudge.notify_one();
        }
        next
    }

    async fn attempt(&self, ready: Ready) -> Finished {
        let seq = ready.seq;
        let attempt_no = ready.attempts + 1;
        let body = match ready.body.clone() {
            Some(b) => b,
            None => match self.reload(seq).await {
                Some(b) => b,
                // Gone from the outbox (replayed or forgotten meanwhile): nothing to send.
                None => {
                    return Finished {
                        seq,
                        decision: Decision::Ack,
                        attempts: ready.attempts,
                        next_at_ms: 0,
                    }
                }
            },
        };
        let started = std::time::Instant::now();
        let outcome = self.send(&ready.event_id, body).await;
        let policy = RetryPolicy {
            delays: &self.target.retry,
        };
        let decision = policy.decide(attempt_no, &outcome, random_unit());
        let next_at_ms = match decision {
            Decision::RetryIn(d) => Utc::now().timestamp_millis() + d.as_millis() as i64,
            _ => 0,
        };
        self.record(
            &ready,
            attempt_no,
            &outcome,
            decision,
            next_at_ms,
            started.elapsed(),
        )
        .await;
        Finished {
            seq,
            decision,
            attempts: attempt_no,
            next_at_ms,
        }
    }

    async fn reload(&self, seq: u64) -> Option<Bytes> {
        let target = self.target.name.clone();
        loop {
            let t = target.clone();
            match blocking(&self.store, move |s| s.delivery(&t, seq)).await {
                Ok(d) => return d.map(|d| Bytes::from(d.body)),
                Err(e) => {
                    tracing::error!(target_name = %target, seq, error = %crate::error::chain(&e), "cannot read delivery; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn send(&self, event_id: &str, body: Bytes) -> Outcome {
        let t = &self.target;
        let mut req = self
            .client
            .post(t.url.clone())
            .headers(t.headers.clone())
            .header(CONTENT_TYPE, t.content_type.clone())
            .header(USER_AGENT, user_agent());
        // Every attempt gets a fresh timestamp and signature.
        for (name, value) in t.signer.headers(event_id, Utc::now().timestamp(), &body) {
            req = req.header(name, value);
        }
        if t.signer.scheme() != Scheme::Standard {
            // Receivers of every scheme can deduplicate on this id.
            req = req.header("webhook-id", event_id);
        }
        match req.body(body).send().await {
            Ok(resp) => Outcome::from_status(
                resp.status().as_u16(),
                retry_after_value(resp.headers()),
                Utc::now(),
            ),
            Err(e) => Outcome::Failed {
                error: describe_send_error(&e, t.timeout, Peer::target(t)),
                retry_after: None,
            },
        }
    }

    async fn record(
        &self,
        ready: &Ready,
        attempt_no: u32,
        outcome: &Outcome,
        decision: Decision,
        next_at: i64,
        took: Duration,
    ) {
        let t = &self.target;
        let error = match outcome {
            Outcome::Delivered => String::new(),
            Outcome::Failed { error, .. } | Outcome::Gone { error } => error.clone(),
        };
        if let Some(m) = &self.metrics {
            let label = match decision {
                Decision::Ack => "delivered",
                Decision::RetryIn(_) => "failed",
                Decision::Bury => "dead",
            };
            m.attempt_done(&t.name, took.as_secs_f64(), label);
        }
        match decision {
            Decision::Ack => {
                tracing::debug!(target_name = %t.name, event = %ready.event_id, attempt = attempt_no, took_ms = took.as_millis() as u64, "delivered")
            }
            Decision::RetryIn(d) => {
                tracing::warn!(target_name = %t.name, url = %t.display_url, event = %ready.event_id, attempt = attempt_no, error = %error, retry_in = %humantime::format_duration(Duration::from_secs(d.as_secs().max(1))), "delivery failed; will retry")
            }
            Decision::Bury => {
                tracing::error!(target_name = %t.name, url = %t.display_url, event = %ready.event_id, attempts = attempt_no, error = %error, "delivery is dead: no more retries (it stays in the database)")
            }
        }
        if decision == Decision::Ack {
            // Acknowledgements are written in batches by the worker.
            return;
        }
        let target = t.name.clone();
        let seq = ready.seq;
        // The outcome must reach the store: retry store errors rather than drop them, or
        // a failure would be forgotten and the delivery retried at once after a restart.
        loop {
            let (tg, err) = (target.clone(), error.clone());
            let result = blocking(&self.store, move |s| match decision {
                Decision::Ack => Ok(()),
                Decision::RetryIn(_) => s.reschedule(&tg, seq, attempt_no, next_at, &err),
                Decision::Bury => s.bury(&tg, seq, attempt_no, &err),
            })
            .await;
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(target_name = %target, seq, error = %crate::error::chain(&e), "cannot record delivery outcome; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::queue::tests::d;
    use super::*;

    fn done(seq: u64, decision: Decision, next_at_ms: i64) -> Finished {
        Finished {
            seq,
            decision,
            attempts: 1,
            next_at_ms,
        }
    }

    /// A sender goes on with the next due delivery without the worker; the worker is
    /// woken only when it has something to do.
    #[test]
    fn a_settled_attempt_takes_the_next_and_wakes_the_worker_only_when_needed() {
        let mut book = Book::default();
        for (seq, item) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            book.queue.push(d(seq, item, 0));
        }
        // The worker started a and b, and saw c due at 0.
        let (a, b) = (
            book.queue.take_due(0).unwrap(),
            book.queue.take_due(0).unwrap(),
        );
        book.seen_due_ms = book.queue.next_due_ms();
        // a's 2xx: its sender takes c; the first acknowledgement wakes the worker (its
        // batch's wait starts).
        let (next, nudge) = book.settle(done(a.seq, Decision::Ack, 0), true, 0);
        assert_eq!(next.map(|r| r.seq), Some(3));
        assert!(nudge);
        // b fails and retries at 5,000 ms; its sender goes on with d. The retry is due
        // later than what the worker saw: no wake.
        let retry = Decision::RetryIn(Duration::from_secs(5));
        let (next, nudge) = book.settle(done(b.seq, retry, 5_000), true, 0);
        assert_eq!(next.map(|r| r.seq), Some(4));
        assert!(
            !nudge,
            "the second acknowledgement or a later retry woke the worker"
        );
        // c's 2xx: nothing due now, the sender ends (which wakes the worker by itself).
        let (next, nudge) = book.settle(done(3, Decision::Ack, 0), true, 0);
        assert!(next.is_none() && !nudge);
        // The worker looked again and saw b due at 5,000. d fails and retries at 1,000,
        // before that: the worker, which may have room, is woken to start it in time.
        book.seen_due_ms = book.queue.next_due_ms();
        assert_eq!(book.seen_due_ms, Some(5_000));
        let (next, nudge) = book.settle(done(4, retry, 1_000), true, 0);
        assert!(next.is_none());
        assert!(
            nudge,
            "a retry due sooner than the worker knows did not wake it"
        );
        // At a stop (or a lapsed lease) the sender takes nothing more: b stays due.
        let d = book.queue.take_due(5_000).unwrap();
        assert_eq!(d.seq, 4);
        let (next, _) = book.settle(done(d.seq, Decision::Ack, 0), false, 5_000);
        assert!(next.is_none());
        assert_eq!(book.queue.take_due(5_000).map(|r| r.seq), Some(2));
    }
}
