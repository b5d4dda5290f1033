//! The admin API's client, for the operator commands when a daemon runs: finds the
//! daemon from the config's `[admin] listen` and sends it requests.

use std::time::Duration;

use anyhow::Context;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;

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

/// A running daemon's admin API.
pub struct AdminClient {
    /// `http://127.0.0.1:9187`.
    base: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// The daemon at the config's `[admin] listen`, if its admin API answers.
    pub async fn find(config: &Config) -> anyhow::Result<Option<AdminClient>> {
        let Some(addr) = config.admin_listen else {
            return Ok(None);
        };
        // A daemon listening on every address is reached on loopback.
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
            ip => ip,
        };
        let base = format!("http://{}", std::net::SocketAddr::new(ip, addr.port()));
        // The admin API is this machine's (or the listen address the config names),
        // never behind the forward proxy HTTP_PROXY may name for the APIs pollhook polls.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(600))
            .user_agent(crate::http::user_agent())
            .build()?;
        let probe = http
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        Ok(
            matches!(&probe, Ok(r) if r.status().is_success())
                .then_some(AdminClient { base, http }),
        )
    }

    /// The base URL the daemon answers at.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, decoded.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await;
        decode(response, path).await
    }

    /// `method path` with a JSON body, decoded.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
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
