//! Getting a source's document: one HTTP request per page with the source's method,
//! query, body, headers, auth and timeout, gzip decoded, the body read up to
//! `max_body` bytes; or a command's stdout. Anything but a complete 2xx body within the
//! cap is an error, so a bad response can never look like an empty list.
//!
//! - `auth`: bearer, basic and OAuth2 client-credentials tokens (cached, refreshed).
//! - `command`: sources that are programs.
//! - Conditional requests: a [`Validators`] pair (`ETag`, `Last-Modified`) is sent as
//!   `If-None-Match`/`If-Modified-Since`, and a 304 is [`Page::NotModified`].
//! - Politeness: at most `max_per_host` requests in flight to one host (a permit is
//!   held for a whole poll, all its pages), and `Retry-After` is reported with a 429
//!   or 503 so the source's next poll waits.
//! - Redirects are followed only within the origin (scheme, host, port) of the URL
//!   asked for, at most 5, and no `Referer` is sent: the source's headers (API keys,
//!   auth) and query must never reach another server. A redirect elsewhere fails the
//!   poll, naming both origins.
//! - Secrets out of errors: every [`FetchError`] of an HTTP fetch passes through the
//!   request's [`Redactor`](crate::redact::Redactor) and the OAuth2 token it used, so an
//!   API echoing the credential in a 401 body does not put it in logs and `last_error`.
//!   (A command source's config names no secrets, so its errors are not redacted.)
//! - A UTF-8 byte order mark before a JSON body is dropped (RFC 8259 §8.1 lets
//!   parsers ignore it; Windows tools and some .NET APIs write one).

mod auth;
mod command;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use reqwest::header::{
    HeaderMap, HeaderValue, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
    LINK, USER_AGENT,
};
use reqwest::{StatusCode, Url};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{redact_url, Format, HttpRequest, ProxySetting, Source, DEFAULT_MAX_PER_HOST};
use crate::http::{
    describe_send_error, reaching, retry_after, retry_after_value, user_agent, Peer,
};
use crate::redact::Redactor;
use auth::Tokens;

/// Redirects followed in one request at most.
const MAX_REDIRECTS: usize = 5;

/// Why a fetch failed. URLs in messages have credentials and query removed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{method} {url}: {detail}")]
    Request {
        method: String,
        url: String,
        detail: String,
    },
    #[error("{method} {url}: HTTP {status} (expected 2xx){body}")]
    Status {
        method: String,
        url: String,
        status: u16,
        /// The start of the response body, which often says why.
        body: String,
        /// How long a 429 or 503 asked us to wait.
        retry_after: Option<Duration>,
    },
    #[error("{method} {url}: response body is over max_body = {limit} bytes; raise max_body for this source if the API really returns that much")]
    TooLarge {
        method: String,
        url: String,
        limit: u64,
    },
    #[error("{url}: OAuth2 token request failed: {detail}")]
    Token { url: String, detail: String },
    #[error("{0}")]
    Command(String),
}

impl FetchError {
    /// The error with every secret `r` knows replaced, in every field.
    fn redacted(self, r: &Redactor) -> FetchError {
        if r.is_empty() {
            return self;
        }
        match self {
            FetchError::Request {
                method,
                url,
                detail,
            } => FetchError::Request {
                method,
                url: r.redact(&url),
                detail: r.redact(&detail),
            },
            FetchError::Status {
                method,
                url,
                status,
                body,
                retry_after,
            } => FetchError::Status {
                method,
                url: r.redact(&url),
                status,
                body: r.redact(&body),
                retry_after,
            },
            FetchError::TooLarge { method, url, limit } => FetchError::TooLarge {
                method,
                url: r.redact(&url),
                limit,
            },
            FetchError::Token { url, detail } => FetchError::Token {
                url: r.redact(&url),
                detail: r.redact(&detail),
            },
            FetchError::Command(text) => FetchError::Command(r.redact(&text)),
        }
    }

    /// The wait a 429 or 503 asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A response's cache validators, sent back on the next request of the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
}

impl Validators {
    fn from_headers(h: &HeaderMap) -> Option<Validators> {
        let v = Validators {
            etag: h.get(ETAG).cloned(),
            last_modified: h.get(LAST_MODIFIED).cloned(),
        };
        (v.etag.is_some() || v.last_modified.is_some()).then_some(v)
    }
}

/// One page as fetched.
#[derive(Debug)]
pub enum Page {
    Body {
        body: Vec<u8>,
        /// The `Link: <…>; rel="next"` target, resolved against the request URL.
        next: Option<Url>,
        validators: Option<Validators>,
    },
    /// 304: nothing changed since the validators were given.
    NotModified,
}

/// The HTTP clients sources are polled with: one shared by every source that trusts
/// only the built-in roots, uses the environment's proxy and has no client
/// certificate, and one for each other source, since a client's roots, proxy and
/// identity are fixed when it is built.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    /// Per source name, for the sources with a `ca_file`, a `proxy` or a `client_cert`.
    own: Arc<HashMap<String, reqwest::Client>>,
    shared: Shared,
    max_per_host: usize,
}

/// What fetchers share across a reload: OAuth2 tokens (a reload does not ask every
/// token endpoint again) and the per-host turns (sources started before and after a
/// reload still take turns at one host).
#[derive(Clone, Default)]
pub struct Shared {
    tokens: Tokens,
    hosts: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl Fetcher {
    /// Builds the clients for `sources`, once, before any poll.
    pub fn new(sources: &BTreeMap<String, Arc<Source>>) -> Result<Fetcher, reqwest::Error> {
        let mut own = HashMap::new();
        for source in sources.values().filter(|s| needs_own_client(s)) {
            let builder = reaching(
                client_builder(),
                &source.ca,
                &source.proxy,
                source.client_identity.as_ref(),
            );
            own.insert(source.name.clone(), builder.build()?);
        }
        Ok(Fetcher {
            client: client_builder().build()?,
            own: Arc::new(own),
            shared: Shared::default(),
            max_per_host: DEFAULT_MAX_PER_HOST,
        })
    }

    /// At most `n` requests in flight to one host (for hosts not seen before: a host's
    /// limit is set when its first poll runs).
    pub fn with_max_per_host(mut self, n: usize) -> Fetcher {
        self.max_per_host = n.max(1);
        self
    }

    /// Shares tokens and host turns with the fetchers of an earlier config.
    pub fn with_shared(mut self, shared: Shared) -> Fetcher {
        self.shared = shared;
        self
    }

    /// The client for `source`: its own if it has one (see [`needs_own_client`]), else
    /// the shared one. Its OAuth2 token requests take the same client.
    fn client(&self, source: &Source) -> &reqwest::Client {
        self.own.get(&source.name).unwrap_or(&self.client)
    }

    /// Waits for a turn at `source`'s host; the poll holds it until it has its pages.
    pub async fn host_permit(&self, source: &Source) -> Option<OwnedSemaphorePermit> {
        let host = source.http()?.url.host_str()?.to_ascii_lowercase();
        let semaphore = {
            // A poisoned lock means a panic while inserting into a map; it is intact.
            let mut hosts = self.shared.hosts.lock().unwrap_or_else(|e| e.into_inner());
            hosts
                .entry(host)
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_host)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }

    /// The output of a command source's program `argv`, at most `max_body` bytes.
    pub async fn run_command(
        &self,
        source: &Source,
        argv: &[String],
    ) -> Result<Vec<u8>, FetchError> {
        let out = command::run(argv, source.timeout, source.max_body).await?;
        Ok(without_bom(source, out))
    }

    /// One page of an HTTP source's request `req`: `url` (the first page's, or one
    /// pagination found), with `validators` sent as conditions when given. Errors have
    /// the request's secrets, and the OAuth2 token it used, replaced.
    pub async fn fetch(
        &self,
        source: &Source,
        req: &HttpRequest,
        url: &Url,
        validators: Option<&Validators>,
    ) -> Result<Page, FetchError> {
        match self.fetch_page(source, req, url, validators).await {
            Ok(Page::Body {
                body,
                next,
                validators,
            }) => Ok(Page::Body {
                body: without_bom(source, body),
                next,
                validators,
            }),
            Ok(page) => Ok(page),
            Err(e) => Err(e.redacted(&self.redactor(source, req))),
        }
    }

    async fn fetch_page(
        &self,
        source: &Source,
        req: &HttpRequest,
        url: &Url,
        validators: Option<&Validators>,
    ) -> Result<Page, FetchError> {
        let mut resp = self.send(source, req, url, validators, false).await?;
        if resp.status() == StatusCode::UNAUTHORIZED && auth::refreshable(req) {
            // The cached token may have been revoked or expired early: one fresh try.
            resp = self.send(source, req, url, validators, true).await?;
        }
        let method = req.method.to_string();
        let shown = shown_url(req, url);
        let status = resp.status();
        if status == StatusCode::NOT_MODIFIED && validators.is_some() {
            return Ok(Page::NotModified);
        }
        if !status.is_success() {
            let retry_after = retry_after(
                status.as_u16(),
                retry_after_value(resp.headers()),
                Utc::now(),
            );
            return Err(FetchError::Status {
                method,
                url: shown,
                status: status.as_u16(),
                body: snippet(&mut resp, &self.redactor(source, req)).await,
                retry_after,
            });
        }
        let next = next_link(resp.headers(), url);
        let found = Validators::from_headers(resp.headers());
        let body = read_capped(&mut resp, source, &method, &shown).await?;
        Ok(Page::Body {
            body,
            next,
            validators: found,
        })
    }

    /// The secrets of `req`, and the OAuth2 access token `source` holds now (the one
    /// the request used, even if it was fetched for this request).
    fn redactor(&self, source: &Source, req: &HttpRequest) -> Redactor {
        req.redactor
            .with(self.shared.tokens.access_token(&source.name))
    }

    async fn send(
        &self,
        source: &Source,
        req: &HttpRequest,
        url: &Url,
        validators: Option<&Validators>,
        fresh_token: bool,
    ) -> Result<reqwest::Response, FetchError> {
        let mut builder = self
            .client(source)
            .request(req.method.clone(), url.clone())
            .headers(req.headers.clone())
            .header(USER_AGENT, user_agent())
            .timeout(source.timeout);
        if let Some((body, content_type)) = &req.body {
            builder = builder
                .header(CONTENT_TYPE, *content_type)
                .body(body.clone());
        }
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                builder = builder.header(IF_NONE_MATCH, etag.clone());
            }
            if let Some(lm) = &v.last_modified {
                builder = builder.header(IF_MODIFIED_SINCE, lm.clone());
            }
        }
        if let Some(a) = &req.auth {
            let header = self
                .shared
                .tokens
                .authorization(self.client(source), source, a, fresh_token)
                .await?;
            builder = builder.header(reqwest::header::AUTHORIZATION, header);
        }
        builder.send().await.map_err(|e| FetchError::Request {
            method: req.method.to_string(),
            url: shown_url(req, url),
            detail: send_error(&e, source),
        })
    }
}

/// A transport error of a request of `source` in words ([`describe_send_error`]), with
/// the advice for a source.
fn send_error(e: &reqwest::Error, source: &Source) -> String {
    describe_send_error(e, source.timeout, Peer::source(source))
}

/// Whether `source` reaches its server otherwise than the shared client does: other
/// roots, another proxy, a client certificate.
fn needs_own_client(source: &Source) -> bool {
    !source.ca.is_empty()
        || source.proxy != ProxySetting::Environment
        || source.client_identity.is_some()
}

/// How `url` is shown: the config's template for the request's own URL, else (a
/// later page) without credentials and query; the redactor takes any `${VAR}` value
/// out of a page's path.
fn shown_url(req: &HttpRequest, url: &Url) -> String {
    if *url == req.url {
        req.display_url.clone()
    } else {
        redact_url(url)
    }
}

/// `body` without a leading UTF-8 byte order mark, for JSON sources.
fn without_bom(source: &Source, mut body: Vec<u8>) -> Vec<u8> {
    if source.format == Format::Json && body.starts_with(b"\xEF\xBB\xBF") {
        body.drain(..3);
    }
    body
}

/// Characters of an error response's body shown at most.
const SNIPPET: usize = 200;

/// A little of an error response's body, which often says why ("rate limit
/// exceeded"); never more than that, no control characters, and no known secret: an
/// API may echo the credential it rejected.
async fn snippet(resp: &mut reqwest::Response, redactor: &Redactor) -> String {
    // Read past the cut by the longest secret, so a secret that starts before the cut
    // is whole when it is replaced, not cut to a prefix that would stay visible.
    let read = SNIPPET + redactor.longest();
    let mut snippet = Vec::new();
    while snippet.len() < read {
        match resp.chunk().await {
            Ok(Some(c)) => snippet.extend_from_slice(&c),
            _ => break,
        }
    }
    snippet.truncate(read);
    let text: String = redactor
        .redact(&String::from_utf8_lossy(&snippet))
        .chars()
        .take(SNIPPET)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

async fn read_capped(
    resp: &mut reqwest::Response,
    source: &Source,
    method: &str,
    url: &str,
) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge {
        method: method.to_string(),
        url: url.to_string(),
        limit: source.max_body,
    };
    // With gzip, content-length is the compressed size; the streaming check below
    // counts decoded bytes, which is what memory pays for (a gzip bomb stops here).
    if resp
        .content_length()
        .is_some_and(|len| len > source.max_body)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = resp.chunk().await.map_err(|e| FetchError::Request {
            method: method.to_string(),
            url: url.to_string(),
            detail: send_error(&e, source),
        })?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if (body.len() + chunk.len()) as u64 > source.max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
}

/// The `rel="next"` target of RFC 8288 `Link` headers, resolved against `base`.
pub fn next_link(headers: &HeaderMap, base: &Url) -> Option<Url> {
    for value in headers.get_all(LINK) {
        let Ok(text) = value.to_str() else { continue };
        for link in split_links(text) {
            let Some((target, params)) = link
                .trim()
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
            else {
                continue;
            };
            let is_next = params.split(';').any(|p| {
                let Some((k, v)) = p.split_once('=') else {
                    return false;
                };
                k.trim().eq_ignore_ascii_case("rel")
                    && v.trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|r| r.eq_ignore_ascii_case("next"))
            });
            if is_next {
                return base.join(target.trim()).ok();
            }
        }
    }
    None
}

/// Splits a `Link` header at the commas between links, not those inside `<…>` or
/// quoted parameter values.
fn split_links(text: &str) -> Vec<&str> {
    let (mut out, mut start, mut in_uri, mut in_quote) = (Vec::new(), 0, false, false);
    for (i, c) in text.char_indices() {
        match c {
            '<' if !in_quote => in_uri = true,
            '>' if !in_quote => in_uri = false,
            '"' if !in_uri => in_quote = !in_quote,
            ',' if !in_uri && !in_quote => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Every source client has the same settings; only the trusted roots, the proxy and the
/// client certificate differ. The OAuth2 token requests use the same clients, so the
/// same redirect rule (and proxy, and certificate).
fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .gzip(true)
        // A Referer would carry the URL, query (api_key=…) and all, to the next server.
        .referer(false)
        .redirect(same_origin_redirects())
}

/// A redirect to another origin than the request's, refused.
#[derive(Debug, thiserror::Error)]
#[error("redirected from {from} to another origin, {to}; pollhook follows redirects only within the origin it asked (scheme, host and port), so the source's credentials never go elsewhere: point url at the final location")]
struct CrossOriginRedirect {
    from: String,
    to: String,
}

/// More redirects than [`MAX_REDIRECTS`].
#[derive(Debug, thiserror::Error)]
#[error("more than {MAX_REDIRECTS} redirects; point url at the final location")]
struct TooManyRedirects;

/// Follows a redirect only within the origin of the first URL, at most
/// [`MAX_REDIRECTS`] times. reqwest drops `Authorization` on a redirect to another
/// host, but not `X-Api-Key`, `Private-Token` or the query, so other origins are not
/// followed at all.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        let (from, to) = (first.origin(), attempt.url().origin());
        if from != to {
            let e = CrossOriginRedirect {
                from: from.ascii_serialization(),
                to: to.ascii_serialization(),
            };
            return attempt.error(e);
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(TooManyRedirects);
        }
        attempt.follow()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(value: &str) -> Option<String> {
        let mut h = HeaderMap::new();
        h.insert(LINK, HeaderValue::from_str(value).unwrap());
        let base = Url::parse("https://api.example.com/items?page=1").unwrap();
        next_link(&h, &base).map(|u| u.to_string())
    }

    #[test]
    fn link_headers_as_apis_write_them() {
        // GitHub's form.
        assert_eq!(
            link(
                r#"<https://api.example.com/items?page=2>; rel="next", <https://api.example.com/items?page=5>; rel="last""#
            ),
            Some("https://api.example.com/items?page=2".into())
        );
        // Relative target, unquoted rel, other relation types in the same value.
        assert_eq!(
            link(r#"</items?cursor=a,b>; rel="prev", </items?cursor=c%2Cd>; rel=next"#),
            Some("https://api.example.com/items?cursor=c%2Cd".into())
        );
        assert_eq!(
            link(r#"<https://x.example/2>; title="a, b"; rel="last next""#),
            Some("https://x.example/2".into())
        );
        assert_eq!(link(r#"<https://x.example/1>; rel="prev""#), None);
        assert_eq!(link("garbage"), None);
    }
}
