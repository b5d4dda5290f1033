//! A source as the daemon runs it now, and "poll now": a request its schedule loop takes
//! between polls (never two polls at once), answered with the poll's report.
//!
//! The handshake: each request is a oneshot sender queued on the loop's channel (room for
//! [`QUEUED`]); the loop polls when it takes one and sends the result back. The asker
//! waits a bounded time for room in the queue and again for the answer, so a wedged
//! source can hold neither an admin request nor its connection forever.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::Source;
use crate::poll::{PollReport, Poller};

/// A request to poll a source now, answered with the poll's report or its error.
pub type PollNow = oneshot::Sender<Result<PollReport, String>>;

/// What a source's loop takes its poll-now requests from.
pub type PollRequests = mpsc::Receiver<PollNow>;

/// Poll-now requests waiting for one source's loop at most.
const QUEUED: usize = 8;

/// A source as the daemon runs it now: its settings, the poller built for them, and the
/// way to reach its loop.
#[derive(Clone)]
pub struct RunningSource {
    pub source: Arc<Source>,
    pub poller: Poller,
    requests: mpsc::Sender<PollNow>,
}

/// Why [`RunningSource::poll_now`] has no report.
#[derive(Debug, thiserror::Error)]
pub enum PollNowError {
    /// The loop is gone: a reload or shutdown stopped it.
    #[error("source {0} is stopping (reload or shutdown); try again")]
    Stopping(String),
    /// No room in the loop's queue within the wait.
    #[error("source {0} has too many poll requests waiting; try again later")]
    Busy(String),
    /// The loop stopped with the request queued.
    #[error("source {0} stopped before polling (reload or shutdown)")]
    StoppedBeforePolling(String),
    /// The poll ran and failed; its error.
    #[error("{0}")]
    Failed(String),
    /// No answer within the wait.
    #[error("no answer from source {name}'s poll within {wait:?}")]
    NoAnswer { name: String, wait: Duration },
}

impl RunningSource {
    /// `source` run with `poller`, and the requests its loop is to take.
    pub fn new(source: Arc<Source>, poller: Poller) -> (RunningSource, PollRequests) {
        let (requests, taken) = mpsc::channel(QUEUED);
        let running = RunningSource {
            source,
            poller,
            requests,
        };
        (running, taken)
    }

    /// Asks the source's loop to poll now and waits for the poll's report.
    pub async fn poll_now(&self) -> Result<PollReport, PollNowError> {
        let name = || self.source.name.clone();
        // A poll may take its whole timeout, and this one may wait for the poll in
        // progress.
        let wait = self.source.timeout * 2 + Duration::from_secs(30);
        let (tx, rx) = oneshot::channel();
        match tokio::time::timeout(wait, self.requests.send(tx)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(PollNowError::Stopping(name())),
            Err(_) => return Err(PollNowError::Busy(name())),
        }
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(report))) => Ok(report),
            Ok(Ok(Err(e))) => Err(PollNowError::Failed(e)),
            Ok(Err(_)) => Err(PollNowError::StoppedBeforePolling(name())),
            Err(_) => Err(PollNowError::NoAnswer { name: name(), wait }),
        }
    }
}
