//! `pollhook demo`: the whole bridge on one machine with nothing but loopback. A sample
//! API whose items change every few seconds, a receiver that verifies each webhook's
//! signature, and pollhook between them, configured through the same TOML path a real
//! deployment uses. The pieces are public so tests and the fault harness reuse them.

pub mod api;
pub mod receiver;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::sign::Scheme;
use api::SampleApi;
use receiver::Receiver;

/// The demo's signing secret (Standard Webhooks format). Not a real secret.
pub const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Serves `app` on an ephemeral port of 127.0.0.1 until `shutdown`; returns the address.
pub async fn serve_loopback(
    app: axum::Router,
    shutdown: CancellationToken,
    what: &'static str,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %crate::error::chain(&e), "{what} stopped");
        }
    });
    Ok(addr)
}

/// Runs the demo until `shutdown`, printing each webhook the receiver gets to stdout.
pub async fn run(shutdown: CancellationToken) -> anyhow::Result<()> {
    let api = SampleApi::start(shutdown.clone()).await?;
    let receiver =
        Receiver::start(Scheme::Standard, vec![DEMO_SECRET.into()], shutdown.clone()).await?;
    for (id, name) in [("1", "apple"), ("2", "banana"), ("3", "cherry")] {
        api.set(id, json!({"name": name, "stock": 10}));
    }
    let state_dir = std::env::temp_dir().join(format!("pollhook-demo-{}", std::process::id()));
    let config = demo_config(&api.url(), &receiver.url(), &state_dir)?;
    println!("sample API   {}", api.url());
    println!("receiver     {}", receiver.url());
    println!("state        {}", state_dir.display());
    println!("pollhook polls every 2s; the API changes every 3s. Ctrl-C stops.\n");
    println!("status   event type       item   verified  event id");

    let mut feed = receiver.subscribe();
    let printer = tokio::spawn(async move {
        while let Ok(r) = feed.recv().await {
            println!(
                "{:<8} {:<16} {:<6} {:<9} {}",
                r.status,
                r.event_type,
                r.item_id,
                if r.verified { "yes" } else { "NO" },
                r.id
            );
        }
    });
    let changer = tokio::spawn(change_items(api.clone(), shutdown.clone()));
    let result = crate::daemon::run(config, shutdown.clone()).await;
    changer.abort();
    printer.abort();
    let _ = std::fs::remove_dir_all(&state_dir);
    result?;
    Ok(())
}

fn demo_config(api: &str, receiver: &str, state_dir: &std::path::Path) -> anyhow::Result<Config> {
    let text = format!(
        r#"
state_dir = {state:?}
shutdown_grace = "2s"

# Any free port: the log says which.
[admin]
listen = "127.0.0.1:0"

# Both ends run in this process: a proxy from the environment (HTTP_PROXY) must not
# carry their requests.
[targets.receiver]
url = "{receiver}"
secret = "{DEMO_SECRET}"
retry = ["1s", "2s", "5s"]
proxy = "none"

[sources.demo]
url = "{api}"
proxy = "none"
interval = "2s"
items = "/items"
id = "/id"
baseline = false
"#,
        state = state_dir.display().to_string(),
    );
    Ok(Config::parse(&text, &PathBuf::from("demo.toml"), &|_| {
        None
    })?)
}

/// Changes the sample API's items every 3 seconds in a fixed cycle: update, create,
/// delete, so every kind of event shows up within a few seconds.
async fn change_items(api: SampleApi, shutdown: CancellationToken) {
    let fruits = [
        "damson",
        "elderberry",
        "fig",
        "grape",
        "kiwi",
        "lemon",
        "mango",
    ];
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
        let items = api.items();
        match n % 3 {
            0 => {
                if let Some((id, item)) = items.iter().next() {
                    let stock = item["stock"].as_i64().unwrap_or(0) - 1;
                    api.set(id, json!({"name": item["name"], "stock": stock}));
                }
            }
            1 => {
                let id = (items
                    .keys()
                    .filter_map(|k| k.parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
                    + 1)
                .to_string();
                api.set(
                    &id,
                    json!({"name": fruits[n / 3 % fruits.len()], "stock": 5}),
                );
            }
            _ => {
                if items.len() > 2 {
                    if let Some(id) = items.keys().nth(1) {
                        api.remove(id);
                    }
                }
            }
        }
        n += 1;
    }
}
