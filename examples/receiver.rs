//! A minimal webhook receiver: verifies each request's signature with pollhook's own
//! `verify_request` and prints the event. A starting point for your own endpoint, and a target to
//! point a config at while trying pollhook out.
//!
//! ```text
//! cargo run --example receiver -- [--listen 127.0.0.1:8080] [--scheme standard|github|stripe] [--secret S]…
//! ```
//!
//! The secret defaults to `$WEBHOOK_SECRET`. With several `--secret` (rotation) a request
//! is accepted if any of them verifies it. Answers 204 to a verified request and 401 to
//! anything else, so pollhook retries what was not accepted.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use pollhook::sign::{verify_request, Scheme};

struct Settings {
    scheme: Scheme,
    secrets: Vec<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut scheme = Scheme::Standard;
    let mut secrets = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--scheme" => scheme = value()?.parse()?,
            "--secret" => secrets.push(value()?),
            other => bail!(
                "unknown argument {other:?}; see the comment at the top of examples/receiver.rs"
            ),
        }
    }
    if secrets.is_empty() {
        secrets
            .push(std::env::var("WEBHOOK_SECRET").context("pass --secret or set WEBHOOK_SECRET")?);
    }
    let settings = Arc::new(Settings { scheme, secrets });
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(settings);
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on http://{listen}/ for {scheme} signatures");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn receive(State(s): State<Arc<Settings>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = chrono::Utc::now().timestamp();
    // Verify the raw bytes before parsing anything; allow 5 minutes of clock skew.
    if let Err(e) = verify_request(s.scheme, &s.secrets, &headers, &body, now, 300) {
        println!("REJECTED ({e})");
        return StatusCode::UNAUTHORIZED;
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "{} {} item {} ({})",
        headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        event["type"].as_str().unwrap_or("?"),
        event["data"]["id"].as_str().unwrap_or("?"),
        event["timestamp"].as_str().unwrap_or("?"),
    );
    // Deduplicate on the id in a real receiver: delivery is at least once.
    StatusCode::NO_CONTENT
}
