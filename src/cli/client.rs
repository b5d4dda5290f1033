//! How an operator command reaches pollhook's state: through the admin API of the
//! running daemon (found from the config's `[admin] listen`), or, when no daemon
//! answers, by opening the store itself (sled allows one process at a time).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;
use crate::store::{SharedStore, SledStore, StoreError};

/// No daemon answered and there is no database at the config's `state_dir`.
#[derive(Debug, thiserror::Error)]
#[error("no pollhook daemon answers and there is no database in {} (state_dir). If the daemon runs under systemd with StateDirectory=, run this command with STATE_DIRECTORY=/var/lib/pollhook, or set state_dir in the config", .0.display())]
pub struct NoDatabase(pub std::path::PathBuf);

/// The path of an admin API request: `/v1/<segments…>?<query>`, each part
/// percent-encoded by the URL library (a name or value is never pasted in raw).
pub fn api_path(segments: &[&str], query: &[(&str, &str)]) -> String {
    // The base only carries the path; it is never requested.
    let mut url = reqwest::Url::parse("http://admin.invalid/v1").expect("a valid constant URL");
    if let Ok(mut path) = url.path_segments_mut() {
        path.extend(segments);
    }
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
}

/// The daemon answered, but not with a success.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

/// Where the state is read and changed.
pub enum Backend {
    /// A daemon answers at this base URL (`http://127.0.0.1:9187`).
    Daemon { base: String, http: reqwest::Client },
    /// No daemon runs: the store, opened by this process.
    Store(SharedStore),
}

impl Backend {
    /// The running daemon if its admin API answers, else the store.
    pub async fn connect(config: &Config) -> anyhow::Result<Backend> {
        if let Some(addr) = config.admin_listen {
            // A daemon listening on every address is reached on loopback.
            let ip = match addr.ip() {
                std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                    std::net::Ipv4Addr::LOCALHOST.into()
                }
                std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                    std::net::Ipv6Addr::LOCALHOST.into()
                }
                ip => ip,
            };
            let base = format!("http://{}", std::net::SocketAddr::new(ip, addr.port()));
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(600))
                .user_agent(crate::deliver::user_agent())
                .build()?;
            let probe = http
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if matches!(&probe, Ok(r) if r.status().is_success()) {
                return Ok(Backend::Daemon { base, http });
            }
        }
        // Opening creates a database where there is none: an operator command must not
        // do that (an empty store would answer "nothing pending" for a wrong path).
        if !config.state_dir.join("db").exists() {
            return Err(NoDatabase(config.state_dir.clone()).into());
        }
        let dir = config.state_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir)).await?;
        match store {
            Ok(s) => Ok(Backend::Store(Arc::new(s))),
            Err(StoreError::Open { path, reason }) => {
                let admin = match config.admin_listen {
                    Some(a) => format!("its admin API does not answer at {a}"),
                    None => "the admin API is off ([admin] listen = \"\")".to_string(),
                };
                bail!(
                    "cannot open the state database in {path}: {reason}\n\
                     If a pollhook daemon is running on this state_dir, {admin}; \
                     commands reach a running daemon only through the admin API."
                )
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a daemon answered.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Backend::Daemon { .. })
    }

    /// `GET path` from the daemon, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let Backend::Daemon { base, http } = self else {
            bail!("no daemon to ask");
        };
        let response = http.get(format!("{base}{path}")).send().await;
        decode(response, path).await
    }

    /// `POST path` (or `DELETE` with `delete`) with a JSON body, decoded.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let Backend::Daemon { base, http } = self else {
            bail!("no daemon to ask");
        };
        let response = http
            .request(method, format!("{base}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await;
        decode(response, path).await
    }
}

async fn decode<T: DeserializeOwned>(
    response: reqwest::Result<reqwest::Response>,
    path: &str,
) -> anyhow::Result<T> {
    let response = response.with_context(|| format!("the daemon did not answer {path}"))?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(Refused {
            status: status.as_u16(),
            message: format!("{message} (the daemon answered {status} to {path})"),
        }
        .into());
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("the daemon's answer to {path} is not what this pollhook expects (is it another version?)"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn api_paths_encode_names_and_values() {
        assert_eq!(super::api_path(&["sources"], &[]), "/v1/sources");
        assert_eq!(
            super::api_path(&["sources", "a b/c", "poll"], &[]),
            "/v1/sources/a%20b%2Fc/poll"
        );
        assert_eq!(
            super::api_path(&["deliveries"], &[("status", "dead"), ("target", "a&b")]),
            "/v1/deliveries?status=dead&target=a%26b"
        );
    }
}
