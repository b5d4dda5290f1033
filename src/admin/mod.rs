//! The admin API: JSON over HTTP for operators and their tools, on `[admin] listen`
//! (127.0.0.1:9187 unless configured; no authentication, so loopback by default).
//!
//! - `GET /healthz`: the process answers.
//! - `GET /readyz`: 200 once the store is open and the config loaded, 503 otherwise.
//! - `GET /metrics`: Prometheus text format (see [`crate::metrics`]).
//! - `GET /v1/sources`, `GET /v1/targets`: status at a glance.
//! - `GET /v1/deliveries?status=pending|dead&target=&limit=`: the outbox and dead letters.
//! - `POST /v1/deliveries/replay`: dead deliveries back in the queue.
//! - `POST /v1/sources/{name}/poll` (`{"dry_run": true}` to commit nothing).
//! - `DELETE /v1/sources/{name}/state`: what `pollhook forget` does.
//!
//! Store calls run on blocking threads; a failing request is an error response, never
//! a stopped server.

pub mod ops;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::daemon::Handle;
use crate::poll::PollReport;
use crate::store::{blocking, Store, StoreError};
use ops::{DeliveryQuery, ForgetResponse, OpError, ReplayRequest};

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Arc<Handle>,
    stop: CancellationToken,
) {
    let app = router(handle);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the admin API stopped");
    }
}

/// The routes, for [`serve`] and tests.
pub fn router(handle: Arc<Handle>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/sources", get(sources))
        .route("/v1/targets", get(targets))
        .route("/v1/deliveries", get(deliveries))
        .route("/v1/deliveries/replay", post(replay))
        .route("/v1/sources/{name}/poll", post(poll))
        .route("/v1/sources/{name}/state", delete(forget))
        .with_state(handle)
}

/// An error response: `{"error": "…"}` with a status that says whose fault it is.
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
        ApiError(status, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// Runs an operation on the store off the async workers.
async fn on_store<T, F>(h: &Handle, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, OpError> + Send + 'static,
{
    let store = h.store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

async fn readyz(State(h): State<Arc<Handle>>) -> Response {
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

async fn metrics(State(h): State<Arc<Handle>>) -> Result<Response, ApiError> {
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
    pub sources: Vec<crate::daemon::SourceStatus>,
}

async fn sources(State(h): State<Arc<Handle>>) -> ApiResult<SourcesResponse> {
    Ok(Json(SourcesResponse {
        sources: h.statuses(),
    }))
}

/// `GET /v1/targets`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TargetsResponse {
    pub targets: Vec<ops::TargetView>,
}

async fn targets(State(h): State<Arc<Handle>>) -> ApiResult<TargetsResponse> {
    let configured = ops::configured_targets(&h.config());
    let targets = on_store(&h, move |s| {
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
    State(h): State<Arc<Handle>>,
    Query(q): Query<DeliveryQuery>,
) -> ApiResult<DeliveriesResponse> {
    let deliveries = on_store(&h, move |s| ops::deliveries(s, &q)).await?;
    Ok(Json(DeliveriesResponse { deliveries }))
}

async fn replay(State(h): State<Arc<Handle>>, body: Bytes) -> ApiResult<ops::ReplayResponse> {
    let req: ReplayRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not a replay request: {e}"),
        )
    })?;
    let configured = ops::configured_targets(&h.config());
    let wakes = h.wakes.clone();
    let response = on_store(&h, move |s| {
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

async fn poll(
    State(h): State<Arc<Handle>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<PollResponse> {
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
    let Some(running) = h.source(&name) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no source {name:?} in the running config"),
        ));
    };
    // A poll may take its whole timeout, and a real one may wait for the poll in progress.
    let wait = running.source.timeout * 2 + Duration::from_secs(30);
    let failed = |e: String| ApiError(StatusCode::BAD_GATEWAY, e);
    if req.dry_run {
        let (report, events) = running
            .poller
            .dry_run(&running.source)
            .await
            .map_err(|e| failed(e.to_string()))?;
        return Ok(Json(PollResponse {
            source: name,
            dry_run: true,
            report,
            events,
        }));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    match tokio::time::timeout(wait, running.poll_now.send(tx)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("source {name} is stopping (reload or shutdown); try again"),
            ))
        }
        Err(_) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("source {name} has too many poll requests waiting; try again later"),
            ))
        }
    }
    let report = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(Ok(report))) => report,
        Ok(Ok(Err(e))) => return Err(failed(e)),
        Ok(Err(_)) => {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("source {name} stopped before polling (reload or shutdown)"),
            ))
        }
        Err(_) => {
            return Err(ApiError(
                StatusCode::GATEWAY_TIMEOUT,
                format!("no answer from source {name}'s poll within {wait:?}"),
            ))
        }
    };
    Ok(Json(PollResponse {
        source: name,
        dry_run: false,
        report,
        events: Vec::new(),
    }))
}

async fn forget(
    State(h): State<Arc<Handle>>,
    Path(name): Path<String>,
) -> ApiResult<ForgetResponse> {
    let n = name.clone();
    let forgotten = on_store(&h, move |s| Ok(s.forget_source(&n)?)).await?;
    if forgotten {
        tracing::info!(source = %name, "stored state forgotten; its next poll (if configured) is a first poll");
    }
    Ok(Json(ForgetResponse {
        source: name,
        forgotten,
    }))
}
