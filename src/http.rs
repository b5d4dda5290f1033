//! The HTTP words the poll path and the delivery path share: the `User-Agent` of every
//! request, a transport error in words (with advice for a certificate that is not
//! trusted), and the `Retry-After` header, read and classified in one place.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The `User-Agent` of every request pollhook makes.
pub fn user_agent() -> &'static str {
    concat!("pollhook/", env!("CARGO_PKG_VERSION"))
}

/// Which end of pollhook a request went to, for the advice in its error message.
#[derive(Debug, Clone, Copy)]
pub enum Peer<'a> {
    Source {
        ca_file: Option<&'a Path>,
    },
    /// A target, with its secrets to take out of the message.
    Target {
        ca_file: Option<&'a Path>,
        secrets: &'a crate::redact::Redactor,
    },
}

/// How rustls words a server certificate it rejected: `invalid peer certificate: <why>`.
///
/// This is matched as text because the typed way is closed to us: rustls is not a direct
/// dependency (reqwest does not re-export it), and a downcast to `rustls::Error` would
/// need one pinned to exactly the rustls reqwest uses. The wording has been the same since
/// rustls 0.20; tests/it/tls.rs fails if a reqwest or rustls upgrade changes it.
const REJECTED_CERTIFICATE: &str = "invalid peer certificate: ";

/// A transport error in words, without the URL (it may carry a token) and, for a
/// target, without its secrets (a source's errors are redacted whole where they are
/// made). A server certificate that is not trusted says so first and names the fix.
pub fn describe_send_error(e: &reqwest::Error, timeout: Duration, peer: Peer<'_>) -> String {
    let text = describe_unredacted(e, timeout, peer);
    match peer {
        Peer::Target { secrets, .. } => secrets.redact(&text),
        Peer::Source { .. } => text,
    }
}

fn describe_unredacted(e: &reqwest::Error, timeout: Duration, peer: Peer<'_>) -> String {
    if e.is_timeout() {
        return format!(
            "no response within {} (timeout)",
            humantime::format_duration(timeout)
        );
    }
    let kind = if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "response body failed"
    } else {
        "request failed"
    };
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    if let Some(why) = chain
        .iter()
        .find_map(|s| s.strip_prefix(REJECTED_CERTIFICATE))
    {
        return format!("{kind}: {}", certificate_advice(why, peer));
    }
    let mut msg = kind.to_string();
    for s in chain {
        msg.push_str(": ");
        msg.push_str(&s);
    }
    msg
}

/// What a rejected server certificate means and what to do, for an operator who has
/// just been paged. `why` is rustls's reason.
fn certificate_advice(why: &str, peer: Peer<'_>) -> String {
    let (what, ca_file) = match peer {
        Peer::Source { ca_file } => ("source", ca_file),
        Peer::Target { ca_file, .. } => ("target", ca_file),
    };
    // UnknownIssuer: no chain to a trusted root. Other reasons (expired, wrong name,
    // revoked) are not fixed by trusting another CA, so they get no ca_file advice.
    if !why.starts_with("UnknownIssuer") {
        return format!("TLS certificate rejected: {why}");
    }
    let fix = match ca_file {
        None => format!("set ca_file for this {what} to the PEM file of the CA that signed the server's certificate"),
        Some(path) => format!(
            "ca_file {} is set but does not hold the CA that signed the server's certificate",
            path.display()
        ),
    };
    format!("TLS certificate not trusted (self-signed or unknown CA): {fix} ({REJECTED_CERTIFICATE}{why})")
}

/// A response's `Retry-After` header as written, if it has one that is text.
pub fn retry_after_value(headers: &HeaderMap) -> Option<&str> {
    headers.get(RETRY_AFTER)?.to_str().ok()
}

/// How long a response with `status` and a `Retry-After` of `value` asks to be left
/// alone: only a 429 or 503 asks; a value that is neither seconds nor a date to come
/// asks nothing. Sources and targets both read it here.
pub fn retry_after(status: u16, value: Option<&str>, now: DateTime<Utc>) -> Option<Duration> {
    match status {
        429 | 503 => value.and_then(|v| parse_retry_after(v, now)),
        _ => None,
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`.
fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
    (at - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 18:01:00 GMT", now()),
            Some(Duration::from_secs(60))
        );
        // A date in the past or garbage means "no advice".
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 17:00:00 GMT", now()),
            None
        );
        assert_eq!(parse_retry_after("soon", now()), None);
    }
}
