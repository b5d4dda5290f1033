//! What a source asks for and how: its HTTP request (query, body, auth) or command,
//! its pagination (`paginate`), and how its response becomes items (format, transform,
//! mode).
//! The types here are validated settings; `impl Validator` below builds them from
//! the raw file, reporting every problem with its key.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, Url};

use super::raw::{RawAuth, RawSource};
use super::validate::Validator;
use super::KeyPath;
use crate::redact::Redactor;
use crate::transform::Transform;

mod paginate;

pub use paginate::{PageStyle, Pagination, DEFAULT_MAX_PAGES};

/// Where a source's document comes from.
// One per source, built once: the size of the HTTP variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq)]
pub enum Origin {
    Http(HttpRequest),
    /// A program and its arguments; its stdout is the response.
    Command(Vec<String>),
}

/// One source's HTTP request, as sent for its first page.
#[derive(Clone, PartialEq)]
pub struct HttpRequest {
    /// The URL with `query` appended.
    pub url: Url,
    /// How `url` is shown in messages: the URL as written in the config, `${VAR}`s
    /// unexpanded, without credentials and query (see [`super::display_url`]).
    pub display_url: String,
    /// Every secret value of the request (auth, `${VAR}` values, header values,
    /// credential-like query values), for taking them out of error text.
    pub redactor: Redactor,
    pub method: Method,
    pub headers: HeaderMap,
    /// `body` or `json`, with its content type.
    pub body: Option<(Vec<u8>, &'static str)>,
    pub auth: Option<Auth>,
}

/// `[sources.<name>.auth]`. Secrets are resolved at load (value, `_env` or `_file`).
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Bearer(String),
    Basic { username: String, password: String },
    OAuth2(OAuth2),
}

/// OAuth2 client credentials (RFC 6749 §4.4): a token from `token_url`, cached until
/// shortly before it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuth2 {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
}

// Debug never shows secrets (invariant 6).
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Bearer(_) => f.write_str("Bearer(<secret>)"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}:<secret>)"),
            Auth::OAuth2(o) => write!(
                f,
                "OAuth2(token_url: {}, client_id: {}, scopes: {:?})",
                super::redact_url(&o.token_url),
                o.client_id,
                o.scopes
            ),
        }
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Http(r) => f
                .debug_struct("Http")
                .field("url", &r.display_url)
                .field("method", &r.method)
                .field("headers", &r.headers.keys().collect::<Vec<_>>())
                .field("body_bytes", &r.body.as_ref().map(|b| b.0.len()))
                .field("auth", &r.auth)
                .finish(),
            Origin::Command(argv) => f.debug_tuple("Command").field(&argv.first()).finish(),
        }
    }
}

/// `format`: how the response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    /// RSS, Atom or JSON Feed; each entry is an item (see [`crate::feed`]).
    Feed,
}

/// `mode`: what an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Items,
    /// The whole document (after `items` and `transform`) is one item.
    Document,
}

/// Default cap on the backoff of a failing source.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The parts of a source built here.
pub(super) struct Shape {
    pub origin: Option<Origin>,
    pub pagination: Option<Pagination>,
    pub format: Format,
    pub transform: Option<Transform>,
    pub mode: Mode,
    pub event_type: String,
    pub max_backoff: Duration,
}

impl Validator<'_> {
    /// Origin, pagination and response shape of source `name`.
    pub(super) fn shape(&mut self, key: &KeyPath, name: &str, s: &RawSource) -> Shape {
        let origin = match (&s.url, &s.command) {
            (Some(_), Some(_)) => {
                self.problem(&key.key("command"), "set either url or command, not both");
                None
            }
            (None, Some(argv)) => self.command(key, s, argv),
            _ => self.http_request(key, s),
        };
        let pagination = s.paginate.as_ref().and_then(|p| {
            if matches!(origin, Some(Origin::Command(_))) {
                self.problem(
                    &key.key("paginate"),
                    "a command source has no pages; remove [paginate] or use url",
                );
            }
            self.pagination(&key.key("paginate"), p)
        });
        let format = self.choice(
            &key.key("format"),
            s.format.as_deref(),
            &[
                ("json", Format::Json, "the default"),
                ("feed", Format::Feed, "RSS, Atom, JSON Feed"),
            ],
        );
        let transform = s.transform.as_deref().and_then(|program| {
            Transform::compile(program)
                .map_err(|e| {
                    self.problem(
                        &key.key("transform"),
                        format!("not a valid jq program: {e}"),
                    )
                })
                .ok()
        });
        let mode = self.choice(
            &key.key("mode"),
            s.mode.as_deref(),
            &[
                ("items", Mode::Items, "the default"),
                ("document", Mode::Document, "the whole document is one item"),
            ],
        );
        let counted = pagination.as_ref().and_then(|p| match p.style {
            PageStyle::Page { .. } => Some("page-number pagination, whose walk ends at the first page without items (a filtering transform could empty a page in the middle)"),
            PageStyle::Offset { .. } => Some("offset pagination, whose walk counts the items of each page to find the next offset and ends at a page with fewer than size_value (a filtering transform would skip items and end the walk early)"),
            _ => None,
        });
        if let (Some(_), Some(why)) = (&transform, counted) {
            // These walks read the end (and the offset) from the items a page held; a
            // transform that filters would change that count and cut the walk short,
            // turning the items of later pages into false deletions.
            self.problem(
                &key.key("transform"),
                format!("cannot be combined with {why}; use next or cursor pagination, or ignore/events to filter"),
            );
        }
        if mode == Mode::Document && pagination.is_some() {
            self.problem(
                &key.key("mode"),
                "mode = \"document\" takes one document; it cannot be combined with [paginate]",
            );
        }
        let event_type = match &s.event_type {
            None => name.to_string(),
            Some(t) => {
                let ok = !t.is_empty()
                    && t.len() <= 128
                    && t.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !ok {
                    self.problem(&key.key("event_type"), "must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit (events are typed \"<event_type>.created\")");
                }
                t.clone()
            }
        };
        let max_backoff = self.duration(
            &key.key("max_backoff"),
            s.max_backoff.as_deref(),
            DEFAULT_MAX_BACKOFF,
        );
        Shape {
            origin,
            pagination,
            format,
            transform,
            mode,
            event_type,
            max_backoff,
        }
    }

    fn command(&mut self, key: &KeyPath, s: &RawSource, argv: &[String]) -> Option<Origin> {
        let key = key.key("command");
        for (what, set) in [
            ("method", s.method.is_some()),
            ("headers", !s.headers.is_empty()),
            ("query", !s.query.is_empty()),
            ("body", s.body.is_some()),
            ("json", s.json.is_some()),
            ("auth", s.auth.is_some()),
            ("ca_file", s.ca_file.is_some()),
            ("proxy", s.proxy.is_some()),
            ("proxy_env", s.proxy_env.is_some()),
            ("proxy_file", s.proxy_file.is_some()),
            ("client_cert", s.client_cert.is_some()),
            ("client_key", s.client_key.is_some()),
        ] {
            if set {
                self.problem(
                    &key,
                    format!(
                        "{what} applies to HTTP sources only; a command source runs its program"
                    ),
                );
            }
        }
        match argv.first() {
            None => {
                self.problem(
                    &key,
                    "is empty; give the program and its arguments, e.g. [\"/usr/local/bin/list-things\", \"--json\"]",
                );
                None
            }
            Some(program) if program.trim().is_empty() => {
                self.problem(&key, "the program name is empty");
                None
            }
            Some(_) => Some(Origin::Command(argv.to_vec())),
        }
    }

    fn http_request(&mut self, key: &KeyPath, s: &RawSource) -> Option<Origin> {
        let mut url = self.url(&key.key("url"), s.url.as_deref());
        for (name, value) in &s.query {
            let Some(value) = self.expand(&key.key("query").key(name), value) else {
                continue;
            };
            if let Some(u) = url.as_mut() {
                u.query_pairs_mut().append_pair(name, &value);
            }
        }
        let body = match (&s.body, &s.json) {
            (Some(_), Some(_)) => {
                self.problem(&key.key("json"), "set either body or json, not both");
                None
            }
            (Some(b), None) => self
                .expand(&key.key("body"), b)
                .map(|b| (b.into_bytes(), "text/plain; charset=utf-8")),
            (None, Some(j)) => match serde_json::to_vec(j) {
                Ok(bytes) => Some((bytes, "application/json")),
                Err(e) => {
                    self.problem(&key.key("json"), format!("cannot be written as JSON: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        // A request with a body is a POST unless the config says otherwise.
        let default_method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let method = match s.method.as_deref() {
            None => Some(default_method),
            Some(m) => match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    self.problem(&key.key("method"), format!("{m:?} is not an HTTP method"));
                    None
                }
            },
        };
        let headers = self.headers(&key.key("headers"), &s.headers);
        let auth = s.auth.as_ref().and_then(|a| self.auth(&key.key("auth"), a));
        if auth.is_some() && headers.contains_key(reqwest::header::AUTHORIZATION) {
            self.problem(
                &key.key("headers"),
                "sets Authorization and [auth] is set too; keep one",
            );
        }
        let url = url?;
        let template = s.url.as_deref().unwrap_or_default();
        let redactor = super::secrets::source_redactor(s, &url, &headers, auth.as_ref(), self.env);
        Some(Origin::Http(HttpRequest {
            display_url: super::display_url(template, &url),
            redactor,
            url,
            method: method?,
            headers,
            body,
            auth,
        }))
    }

    /// A secret given as a value, an environment variable (`<name>_env`) or a file
    /// (`<name>_file`): exactly one.
    fn secret(
        &mut self,
        key: &KeyPath,
        name: &str,
        value: Option<&String>,
        env: Option<&String>,
        file: Option<&String>,
    ) -> Option<String> {
        match (value, env, file) {
            (Some(v), None, None) => self.expand(&key.key(name), v),
            (None, Some(var), None) => {
                self.secret_from_env(&key.key(&format!("{name}_env")), var, "")
            }
            (None, None, Some(f)) => self.secret_from_file(&key.key(&format!("{name}_file")), f),
            (None, None, None) => {
                self.problem(
                    key,
                    format!("missing {name}: set one of {name}, {name}_env or {name}_file"),
                );
                None
            }
            _ => {
                self.problem(
                    &key.key(name),
                    format!("set only one of {name}, {name}_env and {name}_file"),
                );
                None
            }
        }
    }

    fn auth(&mut self, key: &KeyPath, a: &RawAuth) -> Option<Auth> {
        let bearer = a.bearer.is_some() || a.bearer_env.is_some() || a.bearer_file.is_some();
        let kinds = [bearer, a.basic.is_some(), a.oauth2.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.problem(
                key,
                "set exactly one of bearer (or bearer_env, bearer_file), basic = { … } and oauth2 = { … }",
            );
            return None;
        }
        if bearer {
            let token = self.secret(
                key,
                "bearer",
                a.bearer.as_ref(),
                a.bearer_env.as_ref(),
                a.bearer_file.as_ref(),
            )?;
            if reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
                self.problem(key, "the bearer token has characters HTTP headers do not allow (a line break or non-ASCII); check the value or file");
                return None;
            }
            return Some(Auth::Bearer(token));
        }
        if let Some(b) = &a.basic {
            let key = key.key("basic");
            let Some(username) = b.username.as_ref().and_then(|u| self.expand(&key, u)) else {
                self.problem(&key.key("username"), "missing");
                return None;
            };
            let password = self.secret(
                &key,
                "password",
                b.password.as_ref(),
                b.password_env.as_ref(),
                b.password_file.as_ref(),
            )?;
            if username.contains(':') {
                self.problem(
                    &key.key("username"),
                    "may not contain ':' (basic auth separates username and password with it)",
                );
                return None;
            }
            return Some(Auth::Basic { username, password });
        }
        let o = a.oauth2.as_ref()?;
        let key = key.key("oauth2");
        let token_url = self.url(&key.key("token_url"), o.token_url.as_deref());
        let client_id = o.client_id.as_ref().and_then(|c| self.expand(&key, c));
        if client_id.is_none() {
            self.problem(&key.key("client_id"), "missing");
        }
        let client_secret = self.secret(
            &key,
            "client_secret",
            o.client_secret.as_ref(),
            o.client_secret_env.as_ref(),
            o.client_secret_file.as_ref(),
        );
        Some(Auth::OAuth2(OAuth2 {
            token_url: token_url?,
            client_id: client_id?,
            client_secret: client_secret?,
            scopes: o.scopes.clone(),
        }))
    }
}
