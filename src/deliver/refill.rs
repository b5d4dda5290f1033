//! A target worker's reads of its outbox, in the background: while one read is under
//! way, the worker goes on starting attempts from what it has loaded, so a slow read (a
//! database round trip, thousands of rows) never leaves its connections idle.
use tokio::task::JoinHandle;
use tokio::time::{Duration, Instant};

use super::queue::Queue;
use super::{lock, Book, WINDOW};
use crate::store::{blocking, Delivery, SharedStore, StoreError};

/// A read of the outbox under way, and how many deliveries it asked for.
type Read = (JoinHandle<Result<Vec<Delivery>, StoreError>>, usize);

/// When a worker reads more of its outbox: at its start (whatever a previous run left
/// pending), after a wake, and again while each read fills the window; never while the
/// queue is half full or more, never two reads at once, and not for a second after a
/// failed read.
pub struct Refill {
    store: SharedStore,
    target: String,
    /// A read is asked for: a commit may have queued deliveries not loaded yet.
    requested: bool,
    /// The last read filled the window, so more wait behind it.
    more: bool,
    /// After a failed read, the next is not tried before this.
    retry_at: Option<Instant>,
    reading: Option<Read>,
}

impl Refill {
    pub fn new(store: SharedStore, target: String) -> Refill {
        Refill {
            store,
            target,
            requested: true,
            more: false,
            retry_at: None,
            reading: None,
        }
    }

    /// A commit queued deliveries for this target. A wake during a read asks for
    /// another after it: the read may have started before that commit landed.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// When a failed read is to be tried again.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Starts reading the deliveries after those `queue` has loaded, up to the window,
    /// if it is time to.
    pub fn start_if_due(&mut self, queue: &Queue) {
        let may_read = self.retry_at.is_none_or(|at| at <= Instant::now());
        if self.reading.is_some()
            || !(self.requested || self.more)
            || !may_read
            || queue.len() >= WINDOW / 2
        {
            return;
        }
        let target = self.target.clone();
        let after = queue.loaded_upto();
        let limit = WINDOW - queue.len();
        let read = tokio::spawn({
            let store = self.store.clone();
            async move { blocking(&store, move |s| s.pending(&target, after, limit)).await }
        });
        self.reading = Some((read, limit));
        self.requested = false;
        self.retry_at = None;
    }

    /// Resolves when the read under way has landed (never when there is none), its
    /// deliveries added to the queue of `book`. Cancel-safe: until the read ends, it
    /// stays under way.
    pub async fn landed(&mut self, book: &std::sync::Mutex<Book>) {
        let Some((read, limit)) = self.reading.as_mut() else {
            return std::future::pending().await;
        };
        let limit = *limit;
        let result = read.await.unwrap_or_else(|error| {
            Err(StoreError::Stopped {
                task: "outbox read",
                error,
            })
        });
        self.reading = None;
        match result {
            Ok(batch) => {
                self.more = batch.len() == limit;
                let mut book = lock(book);
                for d in batch {
                    book.queue.push(d);
                }
            }
            Err(e) => {
                tracing::error!(target_name = %self.target, error = %crate::error::chain(&e), "cannot read pending deliveries; retrying in 1s");
                // Read again then, whatever asked for this one.
                self.requested = true;
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// At shutdown: lets the read under way end, so no store call outlives the worker.
    pub async fn close(mut self) {
        if let Some((read, _)) = self.reading.take() {
            let _ = read.await;
        }
    }
}
