//! What keeps web pages (and stray requests) out of the admin API, which has no
//! authentication. A page in the operator's browser can send requests to 127.0.0.1:
//! a form or `fetch` with `text/plain` needs no CORS preflight, so without these checks
//! it could replay every dead delivery or trigger polls; and by DNS rebinding (its own
//! host name re-pointed at 127.0.0.1) it could even read the answers. So every request:
//!
//! 1. has a URI of at most [`MAX_URI`] bytes (414);
//! 2. names an allowed `Host` (421): `localhost`, a loopback IP, the IP the connection
//!    came in on (the listen address), or one of `[admin] allowed_hosts`. The port is
//!    not compared (a proxy may forward its own); a rebinding page's host is its own
//!    name, which is none of these. A request without `Host` (HTTP/1.0 health checkers;
//!    no browser sends one) is let through;
//! 3. carries no `Origin`, or one whose host is allowed (403): browsers send `Origin`
//!    with every cross-site POST and DELETE, forms included;
//! 4. if it is not a GET or HEAD: sends `Content-Type: application/json` whenever it
//!    has a body or names a type (415), a type a page cannot send cross-site without
//!    a preflight this API never answers. A POST without body or type (`curl -X POST`)
//!    is fine.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use super::{Admin, ApiError};

/// The longest request URI answered: paths hold names of at most 64 characters.
pub const MAX_URI: usize = 8 * 1024;

/// The local address of the connection a request came on, set by [`super::server`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalAddr(pub SocketAddr);

/// The middleware: refuses the request, or passes it on.
pub(super) async fn check(State(a): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    match refusal(&a, &req) {
        Some(e) => {
            tracing::debug!(method = %req.method(), path = %req.uri().path(), error = %e.1, "admin request refused");
            e.into_response()
        }
        None => next.run(req).await,
    }
}

fn refusal(a: &Admin, req: &Request) -> Option<ApiError> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI {
        return Some(ApiError(
            StatusCode::URI_TOO_LONG,
            format!(
                "the request URI is {uri_len} bytes, over the admin API's {} KiB (source and target names are at most 64 characters)",
                MAX_URI / 1024
            ),
        ));
    }
    let config = a.handle.config();
    let local = req.extensions().get::<LocalAddr>().map(|l| l.0.ip());
    let allowed = |host: &str| {
        host_allowed(
            host,
            local,
            config.admin_listen,
            &config.admin_allowed_hosts,
        )
    };
    let hosts = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string())
        .into_iter()
        // An absolute-form request target (`GET http://host/ HTTP/1.1`) names one too.
        .chain(req.uri().authority().map(|a| a.as_str().to_string()));
    for host in hosts {
        if !allowed(&host) {
            return Some(ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "the admin API does not answer to Host {host:?}: it answers to localhost, loopback addresses and its listen address; if a proxy forwards this name, add {:?} to [admin] allowed_hosts in {} (this check keeps DNS-rebinding web pages out)",
                    split_port(&host).to_ascii_lowercase(),
                    config.file.display()
                ),
            ));
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("\u{fffd}");
        let host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .filter(|rest| !rest.contains('/'));
        if !host.is_some_and(allowed) {
            return Some(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "requests from web pages are refused (Origin {origin:?}); the admin API is for the pollhook CLI, curl and monitoring. If a page on a host you trust must call it, add that host to [admin] allowed_hosts in {}",
                    config.file.display()
                ),
            ));
        }
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        let has_body = req.body().size_hint().exact() != Some(0);
        if let Some(e) =
            content_type_refusal(req.method(), req.uri().path(), req.headers(), has_body)
        {
            return Some(e);
        }
    }
    None
}

fn content_type_refusal(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    has_body: bool,
) -> Option<ApiError> {
    let given = headers.get(header::CONTENT_TYPE);
    let json = given
        .and_then(|t| t.to_str().ok())
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if json || (given.is_none() && !has_body) {
        return None;
    }
    let got = match given {
        Some(t) => format!("Content-Type {:?}", t.to_str().unwrap_or("\u{fffd}")),
        None => "a body without Content-Type".to_string(),
    };
    Some(ApiError(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("{method} {path} takes a JSON body with Content-Type: application/json, and got {got} (send no body at all, or JSON: this keeps web pages from sending requests)"),
    ))
}

/// `host` (a `Host` header value or an Origin's host, with or without port) is one the
/// admin API answers to.
fn host_allowed(
    host: &str,
    local: Option<IpAddr>,
    listen: Option<SocketAddr>,
    configured: &[String],
) -> bool {
    let name = split_port(host);
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    // An IPv6 address is bracketed in a Host, not in allowed_hosts.
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(&name);
    if bare == "localhost" || configured.iter().any(|c| c == bare) {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(ip) => {
            ip.is_loopback()
                || Some(ip) == local
                || listen.is_some_and(|l| l.ip() == ip && !ip.is_unspecified())
        }
        Err(_) => false,
    }
}

/// The host of `host[:port]`, `[v6][:port]` kept in brackets.
fn split_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(host: &str) -> bool {
        let local = Some("10.0.0.5".parse().unwrap());
        let listen = Some("0.0.0.0:9187".parse().unwrap());
        host_allowed(
            host,
            local,
            listen,
            &["admin.example.com".to_string(), "fd00::5".to_string()],
        )
    }

    #[test]
    fn hosts_that_are_allowed_and_hosts_that_are_not() {
        for ok in [
            "localhost",
            "LOCALHOST:9187",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9187",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9187",
            "10.0.0.5:9187",
            "admin.example.com",
            "Admin.Example.com:443",
            "[fd00::5]:9187",
        ] {
            assert!(allowed(ok), "{ok} should be allowed");
        }
        for bad in [
            "evil.example",
            "evil.example:9187",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "0.0.0.0:9187",
            "10.0.0.6",
            "[::2]:9187",
            "[fd00::6]",
            "",
            "admin.example.com.evil",
            "\u{fffd}",
        ] {
            assert!(!allowed(bad), "{bad} should be refused");
        }
    }

    #[test]
    fn a_body_needs_json_and_a_type_needs_to_be_json() {
        let headers = |t: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(t) = t {
                h.insert(header::CONTENT_TYPE, t.parse().unwrap());
            }
            h
        };
        let refused = |t: Option<&str>, body: bool| {
            content_type_refusal(&Method::POST, "/v1/x", &headers(t), body).map(|e| e.0)
        };
        assert_eq!(refused(Some("application/json"), true), None);
        assert_eq!(refused(Some("Application/JSON; charset=utf-8"), true), None);
        assert_eq!(refused(None, false), None);
        for (t, body) in [
            (Some("text/plain"), true),
            (Some("text/plain"), false),
            (Some("application/x-www-form-urlencoded"), false),
            (Some("multipart/form-data; boundary=x"), true),
            (None, true),
        ] {
            assert_eq!(
                refused(t, body),
                Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
                "{t:?} body {body}"
            );
        }
    }
}
