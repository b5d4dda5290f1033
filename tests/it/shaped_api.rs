//! An API on 127.0.0.1 that behaves like the awkward real ones, for `sources.rs`:
//! paginated in each style (offsets as PostgREST and Jira take them), conditional (ETag / Last-Modified, counting 304s),
//! authenticated (bearer, basic, OAuth2 with a token endpoint whose tokens expire fast),
//! rate limited (429 with Retry-After), feeds, POST bodies, redirects, a 401 that echoes
//! the credentials it got, JSON behind a byte order mark, and a request log to check
//! what pollhook sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One request as the API saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
}

#[derive(Default)]
struct ApiState {
    /// The items every paginated route serves, in order.
    items: Vec<Value>,
    /// Page size of the paginated routes.
    per_page: usize,
    /// Pages with this number (1-based) answer 500.
    fail_page: Option<usize>,
    log: Vec<Seen>,
    not_modified: u64,
    /// The version of `/etag`'s document; its ETag is `"v<version>"`.
    version: u64,
    /// The feed `/feed` serves.
    feed: (String, String),
    /// `/limited` answers 429 with this Retry-After (seconds) while set.
    rate_limited: Option<u64>,
    /// Tokens issued by `/token`, with their expiry.
    tokens: Vec<(String, Instant)>,
    token_lifetime_secs: u64,
    /// Requests to `/token`.
    token_requests: u64,
    /// Requests in flight to `/slow`, and the most at once.
    in_flight: usize,
    max_in_flight: usize,
    /// Where `/moved` redirects to (302).
    redirect_to: String,
}

#[derive(Clone)]
pub struct ShapedApi {
    state: Arc<Mutex<ApiState>>,
    pub addr: SocketAddr,
}

impl ShapedApi {
    pub async fn start(shutdown: CancellationToken) -> ShapedApi {
        let state = Arc::new(Mutex::new(ApiState {
            per_page: 2,
            token_lifetime_secs: 3600,
            ..ApiState::default()
        }));
        let app = Router::new().fallback(any(route)).with_state(state.clone());
        let addr = pollhook::demo::serve_loopback(app, shutdown, "shaped API")
            .await
            .unwrap();
        ShapedApi { state, addr }
    }

    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap()
    }

    /// Items `{"id": "i<n>", "v": v}` for n in `ids`.
    pub fn set_items(&self, ids: impl IntoIterator<Item = usize>, v: u64) {
        self.lock().items = ids
            .into_iter()
            .map(|n| json!({"id": format!("i{n}"), "v": v}))
            .collect();
    }

    pub fn set_per_page(&self, n: usize) {
        self.lock().per_page = n;
    }

    pub fn fail_page(&self, page: Option<usize>) {
        self.lock().fail_page = page;
    }

    pub fn log(&self) -> Vec<Seen> {
        self.lock().log.clone()
    }

    pub fn requests_to(&self, path: &str) -> usize {
        self.lock().log.iter().filter(|s| s.path == path).count()
    }

    /// When each request to `path` arrived.
    pub fn requests_times(&self, path: &str) -> Vec<Instant> {
        self.lock()
            .log
            .iter()
            .filter(|s| s.path == path)
            .map(|s| s.at)
            .collect()
    }

    pub fn not_modified(&self) -> u64 {
        self.lock().not_modified
    }

    pub fn bump_version(&self) {
        self.lock().version += 1;
    }

    /// `/moved` answers 302 with `Location: location`.
    pub fn redirect(&self, location: &str) {
        self.lock().redirect_to = location.to_string();
    }

    pub fn set_feed(&self, content_type: &str, body: &str) {
        self.lock().feed = (content_type.to_string(), body.to_string());
    }

    pub fn rate_limit(&self, retry_after: Option<u64>) {
        self.lock().rate_limited = retry_after;
    }

    pub fn set_token_lifetime(&self, secs: u64) {
        self.lock().token_lifetime_secs = secs;
    }

    pub fn token_requests(&self) -> u64 {
        self.lock().token_requests
    }

    /// Revokes every token issued (the next API call with one answers 401).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }
}

const OAUTH_CLIENT: &str = "pollhook-client";
const OAUTH_SECRET: &str = "s3cr3t-client-secret";
pub const BEARER: &str = "static-bearer-token";

/// The port the request was sent to, from its Host header.
fn uri_port(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit(':').next())
        .unwrap_or("")
        .to_string()
}

/// Query parameter `name` as a number, `default` when absent or not one.
fn number_or(query: &BTreeMap<String, String>, name: &str, default: usize) -> usize {
    query
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn json_response(v: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn route(
    State(state): State<Arc<Mutex<ApiState>>>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    {
        let mut s = state.lock().unwrap();
        s.log.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            headers: headers.clone(),
            body: body.to_vec(),
            at: Instant::now(),
        });
    }
    if path == "/slow" {
        {
            let mut s = state.lock().unwrap();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        state.lock().unwrap().in_flight -= 1;
        return json_response(json!({"items": []}));
    }
    let mut s = state.lock().unwrap();
    let page_of = |s: &ApiState, page: usize| -> Vec<Value> {
        s.items
            .iter()
            .skip((page - 1) * s.per_page)
            .take(s.per_page)
            .cloned()
            .collect()
    };
    let pages = |s: &ApiState| s.items.len().div_ceil(s.per_page.max(1)).max(1);
    let number = |q: &BTreeMap<String, String>, name: &str| -> usize {
        q.get(name).and_then(|p| p.parse().ok()).unwrap_or(1)
    };
    match path.as_str() {
        // RFC 8288 Link headers, as GitHub sends them.
        "/link" | "/next" | "/pages" => {
            let page = number(&query, "page");
            if s.fail_page == Some(page) {
                return (StatusCode::INTERNAL_SERVER_ERROR, "page failed").into_response();
            }
            if path == "/pages" {
                if let Some(n) = query.get("per_page").and_then(|p| p.parse().ok()) {
                    s.per_page = n;
                }
                return json_response(json!({"data": page_of(&s, page)}));
            }
            let last = pages(&s);
            let next = (page < last).then(|| format!("/{}?page={}", &path[1..], page + 1));
            if path == "/link" {
                let mut r = json_response(json!(page_of(&s, page)));
                if let Some(n) = next {
                    let value = format!(
                        "<http://{}{n}>; rel=\"next\", <http://{}/link?page={last}>; rel=\"last\"",
                        headers
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or(""),
                        headers
                            .get("host")
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or("")
                    );
                    r.headers_mut().insert("link", value.parse().unwrap());
                }
                return r;
            }
            json_response(json!({"items": page_of(&s, page), "links": {"next": next}}))
        }
        // A first page whose next page is on another origin (same port, other name).
        "/foreign" => json_response(json!({
            "items": page_of(&s, 1),
            "links": {"next": format!("http://localhost:{}/next?page=2", uri_port(&headers))}
        })),
        // A cursor: the index of the next item, base64-looking to show it is opaque.
        "/cursor" => {
            let start: usize = query
                .get("cursor")
                .and_then(|c| c.strip_prefix("c-"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let page = start / s.per_page.max(1) + 1;
            if s.fail_page == Some(page) {
                return (StatusCode::INTERNAL_SERVER_ERROR, "page failed").into_response();
            }
            let items: Vec<Value> = s
                .items
                .iter()
                .skip(start)
                .take(s.per_page)
                .cloned()
                .collect();
            let end = start + items.len();
            let next = (end < s.items.len()).then(|| format!("c-{end}"));
            json_response(json!({"results": items, "meta": {"next_cursor": next}}))
        }
        // Item offsets, as PostgREST (`offset` and `limit`, a bare array) and Jira
        // (`startAt` and `maxResults`, the page in an object with the total) take them.
        "/rows" | "/search" => {
            let (offset, limit) = match path.as_str() {
                "/rows" => ("offset", "limit"),
                _ => ("startAt", "maxResults"),
            };
            let start = number_or(&query, offset, 0);
            let limit = number_or(&query, limit, s.per_page).max(1);
            if s.fail_page == Some(start / limit + 1) {
                return (StatusCode::INTERNAL_SERVER_ERROR, "page failed").into_response();
            }
            let items: Vec<Value> = s.items.iter().skip(start).take(limit).cloned().collect();
            if path == "/rows" {
                return json_response(json!(items));
            }
            json_response(json!({
                "startAt": start, "maxResults": limit, "total": s.items.len(), "issues": items
            }))
        }
        "/etag" => {
            let etag = format!("\"v{}\"", s.version);
            let modified = "Wed, 25 Nov 2026 10:00:00 GMT";
            if headers
                .get("if-none-match")
                .is_some_and(|v| v.to_str().unwrap_or("") == etag)
            {
                s.not_modified += 1;
                return (StatusCode::NOT_MODIFIED, [("etag", etag)]).into_response();
            }
            let mut r = json_response(json!({"items": [{"id": "doc", "version": s.version}]}));
            r.headers_mut().insert("etag", etag.parse().unwrap());
            r.headers_mut()
                .insert("last-modified", modified.parse().unwrap());
            r
        }
        p if p == "/feed" || p.starts_with("/feeds/") => (
            [(axum::http::header::CONTENT_TYPE, s.feed.0.clone())],
            s.feed.1.clone(),
        )
            .into_response(),
        "/moved" => (
            StatusCode::FOUND,
            [(axum::http::header::LOCATION, s.redirect_to.clone())],
        )
            .into_response(),
        // What careless APIs do: a 401 that quotes the credentials it rejected.
        "/echo" => {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            let body = format!(
                "invalid credentials: Authorization: {}; X-Api-Key: {}; api_key={}",
                header("authorization"),
                header("x-api-key"),
                query.get("api_key").cloned().unwrap_or_default()
            );
            (StatusCode::UNAUTHORIZED, body).into_response()
        }
        // Windows tools and some .NET APIs start JSON with a UTF-8 byte order mark.
        "/bom" => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            format!("\u{feff}{}", json!({"items": s.items.clone()})),
        )
            .into_response(),
        "/limited" => match s.rate_limited {
            Some(secs) => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                "slow down",
            )
                .into_response(),
            None => json_response(json!({"items": s.items.clone()})),
        },
        "/bearer" => {
            let ok = headers
                .get("authorization")
                .is_some_and(|v| v.to_str().unwrap_or("") == format!("Bearer {BEARER}"));
            if ok {
                json_response(json!({"items": s.items.clone()}))
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        }
        "/basic" => {
            use base64::Engine;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("alice:pa55:word")
            );
            if headers
                .get("authorization")
                .is_some_and(|v| v.to_str().unwrap_or("") == want)
            {
                json_response(json!({"items": s.items.clone()}))
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        }
        // RFC 6749 §4.4: client credentials in HTTP Basic, a form body.
        "/token" => {
            use base64::Engine;
            s.token_requests += 1;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{OAUTH_CLIENT}:{OAUTH_SECRET}"))
            );
            let form = String::from_utf8_lossy(&body).to_string();
            let authorized = headers
                .get("authorization")
                .is_some_and(|v| v.to_str().unwrap_or("") == want);
            if method != Method::POST
                || !authorized
                || !form.contains("grant_type=client_credentials")
                || !form.contains("scope=read+items")
            {
                return (
                    StatusCode::UNAUTHORIZED,
                    json_response(json!({"error": "invalid_client"})),
                )
                    .into_response();
            }
            let token = format!("tok-{}", s.token_requests);
            let lifetime = s.token_lifetime_secs;
            s.tokens.push((
                token.clone(),
                Instant::now() + Duration::from_secs(lifetime),
            ));
            json_response(json!({
                "access_token": token, "token_type": "Bearer", "expires_in": lifetime
            }))
        }
        "/oauth-items" => {
            let now = Instant::now();
            let valid = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| s.tokens.iter().any(|(tok, exp)| tok == t && *exp > now));
            if valid {
                json_response(json!({"items": s.items.clone()}))
            } else {
                StatusCode::UNAUTHORIZED.into_response()
            }
        }
        // A GraphQL-style endpoint: POST with a JSON query.
        "/graphql" => {
            let q: Value = serde_json::from_slice(&body).unwrap_or_default();
            if method != Method::POST || q["query"].as_str().is_none() {
                return (StatusCode::BAD_REQUEST, "POST a query").into_response();
            }
            json_response(json!({"data": {"repository": {"issues": {"nodes": s.items.clone()}}}}))
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
