//! The admin API's HTTP server: its own accept loop over hyper, because `axum::serve`
//! has no limits. Without them, a thousand idle connections took every file descriptor
//! of the process: polls failed with "Too many open files" and `/healthz` hung. So:
//!
//! - at most [`Limits::max_connections`] connections are open at once. When one more
//!   comes, the connection idle longest (no request or response in progress) is closed
//!   to make room, as nginx reuses idle keep-alive connections: a client that holds
//!   connections without using them cannot lock others out. When every connection is
//!   busy, the new one is closed at once;
//! - a connection must send a request's headers within [`Limits::header_timeout`] of
//!   opening, or of its previous answer (hyper's header read timeout, which covers idle
//!   keep-alive connections too), else it is closed;
//! - a request head is at most [`MAX_HEAD`] bytes (hyper answers 431 without a body
//!   beyond that, the one error that is not JSON: it never reaches the API).
//!
//! At shutdown the listener is closed at once; requests in progress get the config's
//! `shutdown_grace` to finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::guard::LocalAddr;
use crate::running::Handle;

/// The largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 64 * 1024;

/// How many connections the admin API holds, and how long it waits for requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once (default 256): a few descriptors' worth of the
    /// process's limit, which start-up raises (see [`crate::limits`]).
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, from opening or
    /// from its previous answer (default 10 s).
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, handle: Arc<Handle>, stop: CancellationToken) {
    serve_with(listener, handle, stop, Limits::default()).await
}

/// [`serve`] with other limits (tests use short ones).
pub async fn serve_with(
    listener: TcpListener,
    handle: Arc<Handle>,
    stop: CancellationToken,
    limits: Limits,
) {
    let grace = handle.config().shutdown_grace;
    let app = TowerToHyperService::new(super::router(handle));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD);
    let open = Arc::new(Connections::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to be freed rather
                    // than spin. The listener stays.
                    tracing::warn!(error = %crate::error::chain(&e), "the admin API cannot accept a connection; retrying in 100 ms");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let mut admission = open.admit();
        // Connections closed to make room take a moment to go (a burst of new ones
        // outruns them): wait for them a little rather than refuse.
        let deadline = Instant::now() + Duration::from_secs(1);
        while matches!(admission, Admission::Full) && Instant::now() < deadline {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
            admission = open.admit();
        }
        let conn = match admission {
            Admission::Admitted(conn) => conn,
            // Dropped: closed at once, its descriptor freed.
            Admission::Busy => {
                open.lock()
                    .refused(open.max, "every connection is busy with a request");
                continue;
            }
            Admission::Full => {
                open.lock().refused(
                    open.max,
                    "connections closed to make room have not gone yet",
                );
                continue;
            }
        };
        let local = stream.local_addr().ok();
        tasks.spawn(connection(
            http.clone(),
            stream,
            local,
            app.clone(),
            conn,
            stop.clone(),
        ));
    }
    drop(listener);
    // Connections saw `stop` too: idle ones are closed, busy ones finish their request.
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "admin requests still in progress after shutdown_grace; closing their connections"
        );
    }
    // Dropping the set aborts whatever is left.
}

/// Serves one connection until it ends, is evicted to make room, or the server stops.
async fn connection(
    http: http1::Builder,
    stream: TcpStream,
    local: Option<std::net::SocketAddr>,
    app: TowerToHyperService<axum::Router>,
    conn: Conn,
    stop: CancellationToken,
) {
    let conn = Arc::new(conn);
    let close = conn.close.clone();
    let tracked = conn.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        if let Some(addr) = local {
            req.extensions_mut().insert(LocalAddr(addr));
        }
        let busy = tracked.busy();
        let answer = app.call(req);
        async move {
            let response = answer.await?;
            // Busy until the body is sent: a streamed answer is work in progress.
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let served = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %crate::error::chain(&e), "admin connection ended");
            }
            return;
        }
        _ = close.cancelled() => {}
        _ = stop.cancelled() => {}
    }
    // Closes an idle connection now; lets a request in progress finish first.
    served.as_mut().graceful_shutdown();
    loop {
        tokio::select! {
            _ = served.as_mut() => return,
            // A connection that had sent part of a request head is idle too, and hyper
            // waits for the rest: it is dropped instead.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if !conn.is_busy() {
                    return;
                }
            }
        }
    }
}

/// The open connections, for eviction.
struct Connections {
    max: usize,
    state: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    open: HashMap<u64, Entry>,
    /// When a connection was last refused for lack of room, for a warning now and then.
    last_warning: Option<Instant>,
    refused: u64,
}

struct Entry {
    /// Requests in progress (their answers included).
    busy: usize,
    /// When the connection opened or last finished an answer.
    idle_since: Instant,
    /// Asked to close to make room; no longer counted against the limit.
    closing: bool,
    close: CancellationToken,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max: max.max(1),
            state: Mutex::new(Registry::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        // A poisoned lock only means a panic elsewhere while holding it; each update
        // leaves the registry consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room for a new connection: made by closing the longest-idle one if needed.
    fn admit(self: &Arc<Self>) -> Admission {
        let mut r = self.lock();
        // Connections asked to close hold a descriptor until they do: at most as many
        // again as the limit.
        if r.open.len() >= 2 * self.max {
            return Admission::Full;
        }
        let counted = r.open.values().filter(|e| !e.closing).count();
        if counted >= self.max {
            let idlest = r
                .open
                .values_mut()
                .filter(|e| !e.closing && e.busy == 0)
                .min_by_key(|e| e.idle_since);
            match idlest {
                Some(e) => {
                    e.closing = true;
                    e.close.cancel();
                }
                None => return Admission::Busy,
            }
        }
        let id = r.next_id;
        r.next_id += 1;
        let close = CancellationToken::new();
        r.open.insert(
            id,
            Entry {
                busy: 0,
                idle_since: Instant::now(),
                closing: false,
                close: close.clone(),
            },
        );
        Admission::Admitted(Conn {
            id,
            close,
            registry: self.clone(),
        })
    }
}

/// Whether a new connection may stay.
enum Admission {
    Admitted(Conn),
    /// Every connection has a request in progress.
    Busy,
    /// Too many connections are still closing.
    Full,
}

impl Registry {
    /// Counts a connection refused for lack of room; warns at most every 10 s.
    fn refused(&mut self, limit: usize, why: &str) {
        self.refused += 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|t| now - t > Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.refused,
                limit,
                why,
                "admin API connections refused at once: no room"
            );
            self.last_warning = Some(now);
            self.refused = 0;
        }
    }
}

/// A connection's place among the open ones; freed when dropped.
struct Conn {
    id: u64,
    close: CancellationToken,
    registry: Arc<Connections>,
}

impl Conn {
    fn busy(self: &Arc<Self>) -> Busy {
        if let Some(e) = self.registry.lock().open.get_mut(&self.id) {
            e.busy += 1;
        }
        Busy(self.clone())
    }

    fn is_busy(&self) -> bool {
        self.registry
            .lock()
            .open
            .get(&self.id)
            .is_some_and(|e| e.busy > 0)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.lock().open.remove(&self.id);
    }
}

/// A request in progress on a connection, until its answer is sent or dropped.
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(e) = self.0.registry.lock().open.get_mut(&self.0.id) {
            e.busy = e.busy.saturating_sub(1);
            e.idle_since = Instant::now();
        }
    }
}

/// An answer's body that keeps its connection busy until it is sent.
struct Tracked {
    body: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
