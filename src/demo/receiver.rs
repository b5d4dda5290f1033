//! A webhook receiver on 127.0.0.1 that verifies every signature with [`crate::sign::verify`]
//! and records every attempt. The demo prints from it; tests and the fault harness
//! switch its answers at runtime (status, delay, one failing item) and read its log.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::Utc;
use serde_json::Value;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;

use crate::sign::{verify_request, Scheme};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The `webhook-id` header.
    pub id: String,
    /// The envelope's `type`.
    pub event_type: String,
    /// The envelope's `data.id`.
    pub item_id: String,
    /// Whether the signature verified against the receiver's secrets.
    pub verified: bool,
    /// The status the receiver answered with.
    pub status: u16,
    /// The parsed body (`Null` if it was not JSON).
    pub body: Value,
    /// Unix milliseconds at arrival.
    pub at_ms: i64,
}

struct Inner {
    scheme: Scheme,
    secrets: Vec<String>,
    log: Mutex<Vec<Received>>,
    /// When each request came (unix ms), recorded before it is held or answered, so a
    /// request cut off by the sender's exit is counted too.
    arrivals: Mutex<Vec<i64>>,
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// Seconds for a Retry-After header on 429/503 answers; 0 sends none.
    retry_after: AtomicU64,
    fail_item: Mutex<Option<String>>,
    changed: Notify,
    feed: broadcast::Sender<Received>,
}

/// The running receiver.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Receiver {
    /// Starts on an ephemeral port, verifying `scheme` signatures with `secrets`.
    pub async fn start(
        scheme: Scheme,
        secrets: Vec<String>,
        shutdown: CancellationToken,
    ) -> std::io::Result<Receiver> {
        let inner = Arc::new(Inner {
            scheme,
            secrets,
            log: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            retry_after: AtomicU64::new(0),
            fail_item: Mutex::new(None),
            changed: Notify::new(),
            feed: broadcast::channel(1024).0,
        });
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(inner.clone());
        let addr = super::serve_loopback(app, shutdown, "receiver").await?;
        Ok(Receiver { inner, addr })
    }

    /// The URL to deliver to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.inner.log).clone()
    }

    /// Requests answered with 2xx.
    /// When every request arrived (unix ms), answered or not.
    pub fn arrivals(&self) -> Vec<i64> {
        lock(&self.inner.arrivals).clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Answer every request with `status` from now on.
    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Wait this long before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Send `Retry-After: <secs>` with 429 and 503 answers (None: send none).
    pub fn set_retry_after(&self, secs: Option<u64>) {
        self.inner
            .retry_after
            .store(secs.unwrap_or(0), Ordering::SeqCst);
    }

    /// Answer 500 to events of this item (None: stop).
    pub fn fail_item(&self, item: Option<&str>) {
        *lock(&self.inner.fail_item) = item.map(str::to_string);
    }

    /// A live feed of requests as they arrive.
    pub fn subscribe(&self) -> broadcast::Receiver<Received> {
        self.inner.feed.subscribe()
    }

    /// Waits until `pred` holds for the log, or `timeout` passes; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a request arriving in between still wakes us.
            changed.as_mut().enable();
            if pred(&lock(&self.inner.log)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return pred(&lock(&self.inner.log));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the log is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn hook(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Before the delay: when the request came, not when it was answered.
    let arrived = Utc::now();
    lock(&inner.arrivals).push(arrived.timestamp_millis());
    let delay = inner.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let now = Utc::now();
    let verified = verify_request(
        inner.scheme,
        &inner.secrets,
        &headers,
        &body,
        now.timestamp(),
        300,
    )
    .is_ok();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let item_id = parsed["data"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let failing = lock(&inner.fail_item).as_deref() == Some(item_id.as_str());
    let status = if !verified {
        401
    } else if failing {
        500
    } else {
        inner.status.load(Ordering::SeqCst)
    };
    let r = Received {
        id: header("webhook-id").unwrap_or_default(),
        event_type: parsed["type"].as_str().unwrap_or_default().to_string(),
        item_id,
        verified,
        status,
        body: parsed,
        at_ms: arrived.timestamp_millis(),
    };
    lock(&inner.log).push(r.clone());
    inner.changed.notify_waiters();
    let _ = inner.feed.send(r);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = inner.retry_after.load(Ordering::SeqCst);
    if retry_after > 0 && matches!(status, 429 | 503) {
        (code, [("retry-after", retry_after.to_string())]).into_response()
    } else {
        code.into_response()
    }
}
