//! A sample polling API on 127.0.0.1: a list of items that a caller (the demo, a test,
//! the fault harness) changes at will, with switchable faults. Serves
//! `GET /items` as `{"items": [{"id": …, …}, …]}`, and the same items as a bare
//! top-level array at `GET /array`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// How the API misbehaves, until set back to [`Fault::None`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer with this status and a short body.
    Status(u16),
    /// Answer 200 with a body that is not JSON.
    InvalidJson,
    /// Answer 200 with valid JSON cut off halfway.
    Truncated,
    /// Answer 200 with `{"items": []}`.
    Empty,
    /// Answer 200 with a document that lacks the items key.
    MissingItems,
    /// Wait this long before answering.
    Slow(Duration),
    /// Answer 302 pointing back at itself, forever.
    RedirectLoop,
    /// Answer 200 with the normal document padded to about this many bytes.
    Huge(usize),
    /// Answer 200 with these bytes and `Content-Encoding: gzip` (e.g. a gzip bomb).
    Gzip(bytes::Bytes),
    /// Answer 200 with this JSON body (an error object, a list cut short).
    Body(String),
}

struct ApiState {
    items: BTreeMap<String, Value>,
    fault: Fault,
    requests: u64,
}

/// The running sample API.
#[derive(Clone)]
pub struct SampleApi {
    state: Arc<Mutex<ApiState>>,
    addr: SocketAddr,
}

impl SampleApi {
    /// Starts serving on an ephemeral port until `shutdown`.
    pub async fn start(shutdown: CancellationToken) -> std::io::Result<SampleApi> {
        let state = Arc::new(Mutex::new(ApiState {
            items: BTreeMap::new(),
            fault: Fault::None,
            requests: 0,
        }));
        let app = Router::new()
            .route("/items", get(|s| list(s, false)))
            .route("/array", get(|s| list(s, true)))
            .with_state(state.clone());
        let addr = super::serve_loopback(app, shutdown, "sample API").await?;
        Ok(SampleApi { state, addr })
    }

    /// The URL to poll.
    pub fn url(&self) -> String {
        format!("http://{}/items", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        // A panic while holding this lock would be a bug in a test helper; the state
        // is still usable, so take it anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces item `id` (its `"id"` member is set to `id`).
    pub fn set(&self, id: &str, mut fields: Value) {
        if let Some(obj) = fields.as_object_mut() {
            obj.insert("id".into(), json!(id));
        }
        self.lock().items.insert(id.to_string(), fields);
    }

    /// Deletes item `id`.
    pub fn remove(&self, id: &str) {
        self.lock().items.remove(id);
    }

    /// The current items.
    pub fn items(&self) -> BTreeMap<String, Value> {
        self.lock().items.clone()
    }

    pub fn set_fault(&self, fault: Fault) {
        self.lock().fault = fault;
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }
}

/// The items, wrapped in `{"items": …}` or `bare` as the top-level array.
async fn list(State(state): State<Arc<Mutex<ApiState>>>, bare: bool) -> Response {
    let (fault, body) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        let items: Vec<&Value> = s.items.values().collect();
        let doc = if bare {
            json!(items)
        } else {
            json!({ "items": items })
        };
        (s.fault.clone(), doc.to_string())
    };
    let json = |b: String| ([(header::CONTENT_TYPE, "application/json")], b).into_response();
    match fault {
        Fault::None => json(body),
        Fault::Status(code) => (
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "simulated failure",
        )
            .into_response(),
        Fault::InvalidJson => json("<html>Service Unavailable</html>".into()),
        Fault::Truncated => json(body[..body.len() / 2].to_string()),
        Fault::Empty => json("{\"items\": []}".into()),
        Fault::MissingItems => json("{\"error\": \"maintenance\"}".into()),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            json(body)
        }
        Fault::RedirectLoop => (
            StatusCode::FOUND,
            [(header::LOCATION, "/items")],
            "see /items",
        )
            .into_response(),
        Fault::Huge(size) => {
            let pad = "x".repeat(size.saturating_sub(body.len()));
            json(format!("{{\"pad\": \"{pad}\", \"items\": []}}"))
        }
        Fault::Gzip(bytes) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            bytes,
        )
            .into_response(),
        Fault::Body(text) => json(text),
    }
}
