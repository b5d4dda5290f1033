//! The admin API: JSON over HTTP for operators and their tools, on `[admin] listen`
//! (127.0.0.1:9187 unless configured; no authentication, so loopback by default).
//!
//! - `GET /healthz`: the process answers.
//! - `GET /readyz`: 200 once the store is open and the config loaded, 503 otherwise.
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
//! - `GET /v1/sources`, `GET /v1/targets`: status at a glance.
//! - `GET /v1/deliveries?status=pending|dead&target=&limit=`: the outbox and dead letters.
//! - `POST /v1/deliveries/replay`: dead deliveries back in the queue.
//! - `POST /v1/sources/{name}/poll` (`{"dry_run": true}` to commit nothing; one dry run
//!   per source at a time, its answer streamed).
//! - `DELETE /v1/sources/{name}/state`: what `pollhook forget` does.
//!
//! Every error, the server's own (unknown route, wrong method, URI or body too large,
//! bad query) included, is `{"error": "…"}`. Names in paths and queries follow the
//! config's name rule ([`crate::config::valid_name`]) or get a 400 before anything else.
//!
//! The API has no authentication, so it keeps web pages out (`guard.rs`): a request
//! must name an allowed `Host`, carry no foreign `Origin`, and send JSON if it sends a
//! body. `server.rs` accepts its connections: at most a few hundred at once, idle ones
//! closed, so that no client can take the descriptors polls and deliveries need.
//! `dry_run.rs` streams dry runs, one per source at a time.
//!
//! Store calls run on blocking threads; a failing request is an error response, never
//! a stopped server.

mod dry_run;
mod guard;
pub mod ops;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::poll::PollReport;
use crate::running::{Handle, PollNowError, RunningSource};
use crate::store::{blocking, StoreError};
use ops::{DeliveryQuery, ForgetResponse, OpError, ReplayRequest};
pub use server::{serve, serve_with, Limits};

/// The largest request body the API reads: its requests are small JSON objects.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a request body may take to arrive once its headers have.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share: the running daemon, and the dry runs in progress.
struct Admin {
    handle: Arc<Handle>,
    dry_runs: dry_run::InProgress,
}

type AdminState = State<Arc<Admin>>;

/// The routes, for [`serve`] and tests.
pub fn router(handle: Arc<Handle>) -> Router {
    let admin = Arc::new(Admin {
        handle,
        dry_runs: dry_run::InProgress::default(),
    });
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/sources", get(sources))
        .route("/v1/cluster", get(cluster))
        .route("/v1/targets", get(targets))
        .route("/v1/deliveries", get(deliveries))
        .route("/v1/deliveries/replay", post(replay))
        .route("/v1/sources/{name}/poll", post(poll))
        .route("/v1/sources/{name}/state", delete(forget))
        .fallback(not_found)
        // After the routes: it applies to those already added.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            guard::check,
        ))
        .with_state(admin)
}

/// An error response: `{"error": "…"}` with a status that says whose fault it is.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        let status = match e {
            OpError::BadRequest(_) => StatusCode::BAD_REQUEST,
            OpError::NotFound(_) => StatusCode::NOT_FOUND,
            OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, crate::error::chain(&e).to_string())
    }
}

impl From<PollNowError> for ApiError {
    fn from(e: PollNowError) -> ApiError {
        let status = match e {
            PollNowError::Stopping(_)
            | PollNowError::Busy(_)
            | PollNowError::StoppedBeforePolling(_) => StatusCode::SERVICE_UNAVAILABLE,
            PollNowError::Failed(_) => StatusCode::BAD_GATEWAY,
            PollNowError::NoAnswer { .. } => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError(status, crate::error::chain(&e).to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            crate::error::chain(&e).to_string(),
        )
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The routes, for the 404 and 405 answers.
const ROUTES: &str = "GET /healthz, GET /readyz, GET /metrics, GET /v1/sources, GET /v1/targets, GET /v1/deliveries, POST /v1/deliveries/replay, POST /v1/sources/<name>/poll, DELETE /v1/sources/<name>/state";

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}; the admin API has {ROUTES}",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {} (the Allow header says what is); the admin API has {ROUTES}",
            uri.path()
        ),
    )
}

/// A source name from the path, checked against the config's name rule.
struct SourceName(String);

impl<S: Send + Sync> FromRequestParts<S> for SourceName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the source name in {} cannot be read: {}",
                        parts.uri.path(),
                        e.body_text()
                    ),
                )
            })?;
        ops::check_name("source", &name)?;
        Ok(SourceName(name))
    }
}

/// A request body, read within [`BODY_TIMEOUT`] and at most [`MAX_BODY`] bytes.
struct RequestBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let path = req.uri().path().to_string();
        match tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(req, state)).await {
            Ok(Ok(body)) => Ok(RequestBody(body)),
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body to {path} is over {} KiB; the admin API takes small JSON objects such as {{\"dry_run\": true}}",
                    MAX_BODY / 1024
                ),
            )),
            Ok(Err(e)) => Err(ApiError(
                e.status(),
                format!("the request body to {path} could not be read: {}", e.body_text()),
            )),
            Err(_) => Err(ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body to {path} did not arrive within {BODY_TIMEOUT:?}"
                ),
            )),
        }
    }
}

async fn readyz(State(a): AdminState) -> Response {
    let h = &a.handle;
    if h.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready"})),
        )
            .into_response()
    }
}

async fn metrics(State(a): AdminState) -> Result<Response, ApiError> {
    let h = &a.handle;
    let stats = blocking(&h.store, |s| s.target_stats()).await?;
    let targets: Vec<String> = h.config().targets.keys().cloned().collect();
    let text = h
        .metrics
        .encode(&targets, &stats, Utc::now().timestamp_millis());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /v1/sources`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SourcesResponse {
    pub sources: Vec<crate::running::SourceStatus>,
}

async fn sources(State(a): AdminState) -> ApiResult<SourcesResponse> {
    let h = &a.handle;
    let (config, local) = (h.config(), h.statuses());
    let sources = blocking(&h.store, move |s| ops::sources(s, &config.sources, local)).await?;
    Ok(Json(SourcesResponse { sources }))
}

/// `GET /v1/cluster`: the instances and leases (`cluster` is null for a single node).
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterResponse {
    pub cluster: Option<crate::store::ClusterView>,
}

async fn cluster(State(a): AdminState) -> ApiResult<ClusterResponse> {
    let cluster = blocking(&a.handle.store, |s| s.cluster()).await?;
    Ok(Json(ClusterResponse { cluster }))
}

/// `GET /v1/targets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TargetsResponse {
    pub targets: Vec<ops::TargetView>,
}

async fn targets(State(a): AdminState) -> ApiResult<TargetsResponse> {
    let h = &a.handle;
    let configured = ops::configured_targets(&h.config());
    let targets = blocking(&h.store, move |s| {
        ops::targets(s, &configured, Utc::now().timestamp_millis())
    })
    .await?;
    Ok(Json(TargetsResponse { targets }))
}

/// `GET /v1/deliveries`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeliveriesResponse {
    pub deliveries: Vec<ops::DeliveryView>,
}

async fn deliveries(
    State(a): AdminState,
    query: Result<Query<DeliveryQuery>, QueryRejection>,
) -> ApiResult<DeliveriesResponse> {
    let Query(q) = query.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the query string of /v1/deliveries cannot be read ({}); it takes status=pending|dead, target=<name> and limit=<number>",
                e.body_text()
            ),
        )
    })?;
    let deliveries = blocking(&a.handle.store, move |s| ops::deliveries(s, &q)).await?;
    Ok(Json(DeliveriesResponse { deliveries }))
}

async fn replay(
    State(a): AdminState,
    RequestBody(body): RequestBody,
) -> ApiResult<ops::ReplayResponse> {
    let h = &a.handle;
    let req: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not a replay request: {e}"),
        )
    })?;
    let configured = ops::configured_targets(&h.config());
    let wakes = h.wakes.clone();
    let response = blocking(&h.store, move |s| -> Result<_, OpError> {
        let r = ops::replay(s, &req, &configured, Utc::now().timestamp_millis())?;
        // Woken on the blocking thread, as soon as the replay is stored: a client that
        // hangs up meanwhile must not leave the deliveries waiting for some later wake.
        for d in &r.deliveries {
            wakes.wake(&d.target);
        }
        Ok(r)
    })
    .await?;
    if response.replayed > 0 {
        tracing::info!(replayed = response.replayed, "dead deliveries replayed");
    }
    Ok(Json(response))
}

/// `POST /v1/sources/{name}/poll`'s body (optional).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PollRequest {
    /// Fetch and diff, print what would be emitted, commit nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a poll found; on a dry run, with the events it would have emitted.
#[derive(Debug, Serialize, Deserialize)]
pub struct PollResponse {
    pub source: String,
    pub dry_run: bool,
    pub report: PollReport,
    /// The event envelopes a dry run would emit (empty for a real poll).
    #[serde(default)]
    pub events: Vec<serde_json::Value>,
}

/// The running source `name`; a configured one whose loop has not started yet (the
/// daemon answers while it starts and reloads) is waited for, a few seconds at most.
async fn started(h: &Handle, name: &str) -> Option<RunningSource> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(r) = h.source(name) {
            return Some(r);
        }
        if !h.config().sources.contains_key(name) || tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn poll(
    State(a): AdminState,
    SourceName(name): SourceName,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let h = &a.handle;
    let req: PollRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PollRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not a poll request: {e}"),
            )
        })?
    };
    let Some(running) = started(h, &name).await else {
        if h.config().sources.contains_key(&name) {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("source {name} is configured but not running on this instance: in a cluster another instance may hold it (ask that one), or this daemon is still starting or reloading (try again in a moment)"),
            ));
        }
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no source {name:?} in the running config"),
        ));
    };
    if req.dry_run {
        let Some(slot) = a.dry_runs.start(&name) else {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("a dry run of source {name} is already running; wait for its answer, then try again"),
            ));
        };
        return dry_run::respond(&running, slot).await;
    }
    let report = running.poll_now().await?;
    Ok(Json(PollResponse {
        source: name,
        dry_run: false,
        report,
        events: Vec::new(),
    })
    .into_response())
}

async fn forget(State(a): AdminState, SourceName(name): SourceName) -> ApiResult<ForgetResponse> {
    let configured = a.handle.config().sources.contains_key(&name);
    let unknown = format!("no source {name} in the running config and no stored state of it: nothing to forget (GET /v1/sources lists the configured sources)");
    let n = name.clone();
    let response = blocking(&a.handle.store, move |s| {
        ops::forget(s, &n, configured, unknown)
    })
    .await?;
    if response.forgotten {
        tracing::info!(source = %name, "stored state forgotten; its next poll (if configured) is a first poll");
    }
    Ok(Json(response))
}
