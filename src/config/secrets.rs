//! Which config values are secrets, for a [`Redactor`] per source and target: auth
//! credentials, signing secrets, every `${VAR}` value, header values (but for a few that
//! only negotiate content), the password of a URL and credential-like query values.
//! Built at load; errors built from outside text pass through it (invariant 6). The
//! PostgreSQL store's secrets are listed by [`store_secrets`], for the store's own
//! redactor.

use reqwest::header::HeaderMap;
use reqwest::Url;

use super::raw::{RawSource, RawTarget};
use super::{Auth, PostgresConfig};
use crate::redact::Redactor;

/// Headers whose values say how to talk, not who is talking: not treated as secrets, so
/// `application/json` stays readable in error messages.
const PLAIN_HEADERS: [&str; 7] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "cache-control",
    "content-type",
    "pragma",
    "user-agent",
];

/// Whether a query parameter named `name` carries a credential (`api_key`, `token`,
/// `access_token`, `sig`, `password`, …). Other query values (`state=open`) are not
/// secrets unless they came from `${VAR}`.
pub(super) fn credential_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "pass",
        "auth",
        "sig",
        "session",
        "credential",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The secret values of a source's request: its auth (the basic pair too, whose base64
/// is the header), every `${VAR}` value, header values, the URL's password and
/// credential-like query values.
pub(super) fn source_redactor(
    s: &RawSource,
    url: &Url,
    headers: &HeaderMap,
    auth: Option<&Auth>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Redactor {
    let mut secrets: Vec<String> = Vec::new();
    let written = s
        .url
        .iter()
        .chain(s.query.values())
        .chain(s.headers.values())
        .chain(s.body.iter());
    for text in written {
        secrets.extend(super::env_values(text, env));
    }
    secrets.extend(common(url, headers));
    match auth {
        None => {}
        Some(Auth::Bearer(token)) => secrets.push(token.clone()),
        Some(Auth::Basic { username, password }) => {
            secrets.push(password.clone());
            secrets.push(format!("{username}:{password}"));
        }
        Some(Auth::OAuth2(o)) => {
            secrets.push(o.client_secret.clone());
            // The token request's Basic pair, form-encoded first (RFC 6749 §2.3.1).
            secrets.push(format!(
                "{}:{}",
                form_value(&o.client_id),
                form_value(&o.client_secret)
            ));
            let token_url = s.auth.as_ref().and_then(|a| a.oauth2.as_ref());
            if let Some(template) = token_url.and_then(|o| o.token_url.as_deref()) {
                secrets.extend(super::env_values(template, env));
            }
        }
    }
    Redactor::new(secrets)
}

/// `value` as `application/x-www-form-urlencoded` writes it.
fn form_value(value: &str) -> String {
    // Url's query serializer is exactly the form encoder; this base is never sent.
    let mut u = Url::parse("http://form.invalid/").expect("a valid constant URL");
    u.query_pairs_mut().append_pair("", value);
    u.query()
        .unwrap_or_default()
        .trim_start_matches('=')
        .to_string()
}

/// The secret values of a target: its signing secrets (a `whsec_` secret also without
/// the prefix, the base64 the key is), `${VAR}` values of its url and headers, header
/// values, the URL's password and credential-like query values.
pub(super) fn target_redactor(
    t: &RawTarget,
    url: &Url,
    headers: &HeaderMap,
    signing: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Redactor {
    let mut secrets: Vec<String> = Vec::new();
    for text in t.url.iter().chain(t.headers.values()) {
        secrets.extend(super::env_values(text, env));
    }
    secrets.extend(common(url, headers));
    for secret in signing {
        secrets.push(secret.clone());
        secrets.extend(secret.strip_prefix("whsec_").map(String::from));
    }
    Redactor::new(secrets)
}

/// Header values but the plain ones, the URL's password and credential query values.
fn common(url: &Url, headers: &HeaderMap) -> Vec<String> {
    let mut secrets = Vec::new();
    for (name, value) in headers {
        if !PLAIN_HEADERS.contains(&name.as_str()) {
            secrets.extend(value.to_str().ok().map(String::from));
        }
    }
    secrets.extend(url.password().map(String::from));
    for (name, value) in url.query_pairs() {
        if credential_name(&name) {
            secrets.push(value.into_owned());
        }
    }
    secrets
}

/// The secret values of a PostgreSQL store's URL, for a [`Redactor`] over its
/// connection errors (`Redactor::new(store_secrets(pg))`): the whole URL (it may have
/// come from `postgres_env` or `postgres_file` whole, and holds the password anyway),
/// the password as written and percent-decoded (as the server gets it), and the values
/// of credential-like query parameters (`password`, `sslpassword`, …), decoded. Host,
/// user and database are not secrets: [`PostgresConfig::display`] shows them.
pub fn store_secrets(pg: &PostgresConfig) -> Vec<String> {
    let mut secrets = vec![pg.url.clone()];
    // The URL parsed at load; should it not now, the whole text still goes.
    if let Ok(url) = Url::parse(pg.url.trim()) {
        if let Some(password) = url.password() {
            secrets.push(password.to_string());
            secrets.push(super::store::percent_decode(password));
        }
        for (name, value) in url.query_pairs() {
            if credential_name(&name) {
                secrets.push(value.into_owned());
            }
        }
    }
    secrets.retain(|s| !s.is_empty());
    secrets.dedup();
    secrets
}
