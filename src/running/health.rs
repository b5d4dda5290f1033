//! Whether the store has failed for good: the first fatal error, recorded once, which
//! stops the daemon and makes it not ready.

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

/// The first fatal store error: what was being done, and sled's error.
#[derive(Debug, Clone)]
pub struct Failure {
    pub operation: String,
    pub error: String,
}

/// Whether the store has failed for good; cancels `stop` when it does.
pub(crate) struct Health {
    failure: OnceLock<Failure>,
    stop: CancellationToken,
}

impl Health {
    pub(crate) fn new(stop: CancellationToken) -> Health {
        Health {
            failure: OnceLock::new(),
            stop,
        }
    }

    /// The first fatal error, if one happened.
    pub(crate) fn failure(&self) -> Option<&Failure> {
        self.failure.get()
    }

    pub(crate) fn report(&self, operation: impl FnOnce() -> String, error: &sled::Error) {
        let failure = Failure {
            operation: operation(),
            // sled's own words; "the state database failed" is said by the caller.
            error: error.to_string(),
        };
        if self.failure.set(failure).is_ok() {
            tracing::error!(error = %crate::error::chain(error), "the state database failed; pollhook stops so that the service manager restarts it");
            self.stop.cancel();
        }
    }
}
