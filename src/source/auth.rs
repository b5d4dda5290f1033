//! The `Authorization` header of a source's requests: a bearer token, basic
//! credentials, or an OAuth2 client-credentials token (RFC 6749 §4.4) fetched from the
//! token endpoint, cached until shortly before it expires, and fetched again once when
//! the API answers 401. Header values are marked sensitive; tokens and secrets never
//! reach a log or an error message (invariant 6): the fetcher takes the configured
//! secrets and the access token held now ([`Tokens::access_token`]) out of every error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE, USER_AGENT};
use reqwest::Url;

use super::{send_error, FetchError};
use crate::config::{redact_url, Auth, HttpRequest, OAuth2, Source};
use crate::http::user_agent;

/// A token is refreshed this long before the end its endpoint gave it (or a tenth of
/// its life, if shorter), so a request never leaves with one about to expire.
const EARLY: Duration = Duration::from_secs(60);
/// A token endpoint that gives no `expires_in`: reuse the token until a 401.
const NO_EXPIRY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most of a token endpoint's answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

#[derive(Clone)]
struct Token {
    header: HeaderValue,
    /// The access token itself, for taking it out of error text.
    secret: String,
    refresh_at: Instant,
    /// The settings it was fetched with: a reload that changes them gets a new one.
    settings: OAuth2,
}

/// OAuth2 tokens per source.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Mutex<HashMap<String, Token>>>);

/// Whether a 401 may be cured by fetching a new token.
pub(super) fn refreshable(req: &HttpRequest) -> bool {
    matches!(req.auth, Some(Auth::OAuth2(_)))
}

fn sensitive(text: &str) -> Result<HeaderValue, FetchError> {
    let mut v = HeaderValue::from_str(text).map_err(|_| FetchError::Token {
        url: String::new(),
        detail: "the credential has characters HTTP headers do not allow".into(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Tokens {
    /// The header value for `auth`; with `fresh`, an OAuth2 token is fetched anew.
    pub(super) async fn authorization(
        &self,
        client: &reqwest::Client,
        source: &Source,
        auth: &Auth,
        fresh: bool,
    ) -> Result<HeaderValue, FetchError> {
        match auth {
            Auth::Bearer(t) => sensitive(&format!("Bearer {t}")),
            Auth::Basic { username, password } => {
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                sensitive(&format!("Basic {pair}"))
            }
            Auth::OAuth2(o) => {
                if !fresh {
                    if let Some(h) = self.cached(&source.name, o) {
                        return Ok(h);
                    }
                }
                let (secret, lifetime) = request_token(client, source, o).await?;
                let header = sensitive(&format!("Bearer {secret}"))?;
                let refresh_at = Instant::now() + lifetime.saturating_sub(EARLY.min(lifetime / 10));
                let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
                map.insert(
                    source.name.clone(),
                    Token {
                        header: header.clone(),
                        secret,
                        refresh_at,
                        settings: o.clone(),
                    },
                );
                Ok(header)
            }
        }
    }

    /// The OAuth2 access token `source` holds now, if any.
    pub(super) fn access_token(&self, source: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(source).map(|t| t.secret.clone())
    }

    fn cached(&self, source: &str, o: &OAuth2) -> Option<HeaderValue> {
        // A poisoned lock means a panic while inserting; the map is intact.
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let t = map.get(source)?;
        (t.settings == *o && Instant::now() < t.refresh_at).then(|| t.header.clone())
    }
}

/// Asks the token endpoint for a client-credentials token: the client authenticates
/// with HTTP Basic (RFC 6749 §2.3.1, which every server must accept). Returns the
/// access token and its lifetime.
async fn request_token(
    client: &reqwest::Client,
    source: &Source,
    o: &OAuth2,
) -> Result<(String, Duration), FetchError> {
    let url = redact_url(&o.token_url);
    let fail = |detail: String| FetchError::Token {
        url: url.clone(),
        detail,
    };
    // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        form_encode(&[("", &o.client_id)]).trim_start_matches('='),
        form_encode(&[("", &o.client_secret)]).trim_start_matches('=')
    ));
    let mut form = vec![("grant_type", "client_credentials".to_string())];
    if !o.scopes.is_empty() {
        form.push(("scope", o.scopes.join(" ")));
    }
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut resp = client
        .post(o.token_url.clone())
        .header(
            reqwest::header::AUTHORIZATION,
            sensitive(&format!("Basic {basic}"))?,
        )
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, user_agent())
        .timeout(source.timeout)
        .body(form_encode(&form))
        .send()
        .await
        .map_err(|e| fail(send_error(&e, source)))?;
    let status = resp.status();
    let mut body = Vec::new();
    let read_failed = |e: reqwest::Error| {
        // Not e.to_string(): reqwest's Display includes the URL, query and all.
        fail(send_error(&e, source))
    };
    while let Some(chunk) = resp.chunk().await.map_err(read_failed)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_TOKEN_RESPONSE {
            return Err(fail("the token response is too large".into()));
        }
    }
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        // RFC 6749 §5.2: `error` is a code such as invalid_client; it holds no secret.
        let code = parsed
            .get("error")
            .and_then(|e| e.as_str())
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(fail(format!(
            "HTTP {}{code}; check client_id, client_secret and scopes",
            status.as_u16()
        )));
    }
    let Some(token) = parsed.get("access_token").and_then(|t| t.as_str()) else {
        return Err(fail("the response has no access_token".into()));
    };
    let lifetime = parsed
        .get("expires_in")
        .and_then(|e| e.as_u64().or_else(|| e.as_str()?.parse().ok()))
        .map(Duration::from_secs)
        // A year at most: a huge expires_in must not overflow the clock arithmetic.
        .map_or(NO_EXPIRY, |d| d.min(NO_EXPIRY));
    Ok((token.to_string(), lifetime))
}

/// `application/x-www-form-urlencoded` text of `pairs`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    // Url's query serializer is exactly the form encoder; this base is never sent.
    let mut u = Url::parse("http://form.invalid/").expect("a valid constant URL");
    u.query_pairs_mut().extend_pairs(pairs);
    u.query().unwrap_or_default().to_string()
}
