//! Connections to PostgreSQL, and the runtime that drives them.
//!
//! The [`super::Store`] trait blocks, and is called from blocking threads (and, in
//! tests, from anywhere). A [`Runner`] owns a small tokio runtime of its own: each call
//! runs as a task there, under a time limit, while the caller waits on a channel, so a
//! store call never starts a runtime inside another and never outlives its limit.
//!
//! Connections are kept in a small pool. One goes back to the pool only when the
//! operation that used it succeeded: after an error or a timeout it may sit in a broken
//! transaction or wait on an answer that never comes, so it is closed and the next
//! operation connects afresh (with the same limit), which is how a lost connection or
//! a restarted database is retried.
//!
//! Every connection is made with the pool's TLS (`tls.rs`); a connection that fails for
//! TLS fails with what the operator has to change, not as a lost database.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::Client;

use super::tls::Tls;
use super::Fail;
use crate::store::StoreError;

/// Idle connections kept at most.
const IDLE: usize = 8;

/// Where to connect, and the pool.
pub(super) struct Pool {
    config: tokio_postgres::Config,
    /// The database as shown in messages: host, port and name, never the password.
    pub(super) shown: String,
    tls: Tls,
    idle: Mutex<Vec<Client>>,
}

/// A connection taken from the pool; [`Conn::done`] returns it, and dropping it
/// instead closes it.
pub(super) struct Conn {
    client: Client,
    pool: Arc<Pool>,
}

impl Pool {
    /// `config`'s sslmode must be `tls.pg_mode()`.
    pub(super) fn new(config: tokio_postgres::Config, shown: String, tls: Tls) -> Pool {
        Pool {
            config,
            shown,
            tls,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection, or a new one.
    pub(super) async fn conn(self: &Arc<Pool>) -> Result<Conn, Fail> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|c| !c.is_closed())
        };
        let client = match idle {
            Some(c) => c,
            None => {
                let (client, connection) = self
                    .config
                    .connect(self.tls.connect.clone())
                    .await
                    .map_err(|e| match self.tls.failure(&self.shown, &e) {
                        Some(tls) => Fail::Store(tls),
                        None => Fail::Pg(e),
                    })?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %crate::error::chain(&e), "a PostgreSQL connection ended");
                    }
                });
                client
            }
        };
        Ok(Conn {
            client,
            pool: self.clone(),
        })
    }
}

impl Conn {
    /// The operation succeeded: the connection may serve another.
    pub(super) fn done(self) {
        let Conn { client, pool } = self;
        let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < IDLE && !client.is_closed() {
            idle.push(client);
        }
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Runs store operations on the store's own runtime, each under a time limit.
pub(super) struct Runner {
    /// Taken only by `drop`.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    pub(super) pool: Arc<Pool>,
    limit: Duration,
}

impl Runner {
    pub(super) fn new(pool: Pool, limit: Duration) -> Result<Runner, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pollhook-pg")
            .enable_all()
            .build()?;
        Ok(Runner {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            pool: Arc::new(pool),
            limit,
        })
    }

    /// Runs `op` (built from the pool) and waits for it, at most the time limit.
    /// `doing` says what it was, for the error: "committing a poll of source s".
    pub(super) fn run<T, F, Fut>(
        &self,
        doing: impl FnOnce() -> String,
        op: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Pool>) -> Fut,
        Fut: Future<Output = Result<T, Fail>> + Send + 'static,
    {
        let answer = self.spawn(self.limit, op(self.pool.clone()));
        self.answer(answer, doing, self.limit)
    }

    /// Runs `op` under `limit` while this thread feeds it parts through a channel:
    /// `feed` sends them (it stops early when the channel is closed, that is when `op`
    /// has failed), and `op` receives them in one task, so that they can go into one
    /// transaction without all of them being in memory at once. When `feed` fails, the
    /// channel closes without `op` having what it waits for; its failure is waited
    /// for (so that its transaction is rolled back) and `feed`'s error returned.
    pub(super) fn run_fed<T, P, F, Fut>(
        &self,
        doing: impl FnOnce() -> String,
        limit: Duration,
        op: F,
        feed: impl FnOnce(&tokio::sync::mpsc::Sender<P>) -> Result<(), StoreError>,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        P: Send + 'static,
        F: FnOnce(Arc<Pool>, tokio::sync::mpsc::Receiver<P>) -> Fut,
        Fut: Future<Output = Result<T, Fail>> + Send + 'static,
    {
        // Two parts ahead at most: memory holds a part being read, one sent, one written.
        let (parts, received) = tokio::sync::mpsc::channel(2);
        let answer = self.spawn(limit, op(self.pool.clone(), received));
        let fed = feed(&parts);
        drop(parts);
        let result = self.answer(answer, doing, limit);
        fed.and(result)
    }

    /// Starts `fut` on the runtime under `limit`; its outcome comes on the channel.
    fn spawn<T, Fut>(
        &self,
        limit: Duration,
        fut: Fut,
    ) -> std::sync::mpsc::Receiver<Result<Result<T, Fail>, tokio::time::error::Elapsed>>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, Fail>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(tokio::time::timeout(limit, fut).await);
        });
        rx
    }

    /// Waits for the outcome of a task [`Runner::spawn`] started, as a store error
    /// naming the database and what was being done.
    fn answer<T>(
        &self,
        rx: std::sync::mpsc::Receiver<Result<Result<T, Fail>, tokio::time::error::Elapsed>>,
        doing: impl FnOnce() -> String,
        limit: Duration,
    ) -> Result<T, StoreError> {
        let db = || self.pool.shown.clone();
        match rx.recv() {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(Fail::Pg(error)))) => Err(StoreError::Postgres {
                db: db(),
                doing: doing(),
                error,
            }),
            Ok(Ok(Err(Fail::Store(e)))) => Err(e),
            Ok(Ok(Err(Fail::Newer { found, known }))) => Err(StoreError::PostgresNewer {
                db: db(),
                found,
                known,
            }),
            Ok(Err(_)) => Err(StoreError::PostgresTimeout {
                db: db(),
                doing: doing(),
                limit,
            }),
            // The task was dropped without an answer: the runtime is shutting down.
            Err(_) => Err(StoreError::PostgresTimeout {
                db: db(),
                doing: doing(),
                limit: Duration::ZERO,
            }),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Not `drop`: dropping a runtime blocks, which panics inside async code, and the
        // last handle of a store may go from anywhere.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
