//! The HTTP words the poll path and the delivery path share: the `User-Agent` of every
//! request, how a client reaches a source's or target's server (trusted CAs, proxy,
//! client certificate), a transport error in words (with advice for a certificate that
//! is not trusted, or a client certificate asked for or refused), and the
//! `Retry-After` header, read and classified in one place.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::config::{CaBundle, ClientIdentity, ProxySetting, Source, Target};

/// The `User-Agent` of every request pollhook makes.
pub fn user_agent() -> &'static str {
    concat!("pollhook/", env!("CARGO_PKG_VERSION"))
}

/// Which end of pollhook a request went to, and how it was set up to reach it, for the
/// advice in its error message.
#[derive(Debug, Clone, Copy)]
pub struct Peer<'a> {
    /// `"source"` or `"target"`.
    what: &'static str,
    ca_file: Option<&'a Path>,
    /// `client_cert`, if one is configured.
    client_cert: Option<&'a Path>,
    /// The configured proxy, without credentials; `None` without one (the
    /// environment's, if any, is not known here).
    proxy: Option<&'a str>,
    /// A target's secrets, to take out of the message (a source's errors are redacted
    /// whole where they are made).
    secrets: Option<&'a crate::redact::Redactor>,
}

impl<'a> Peer<'a> {
    pub fn source(source: &'a Source) -> Peer<'a> {
        Peer {
            what: "source",
            ca_file: source.ca_file.as_deref(),
            client_cert: source
                .client_identity
                .as_ref()
                .map(|c| c.cert_file.as_path()),
            proxy: source.proxy.url().map(|p| p.shown()),
            secrets: None,
        }
    }

    pub fn target(target: &'a Target) -> Peer<'a> {
        Peer {
            what: "target",
            ca_file: target.ca_file.as_deref(),
            client_cert: target
                .client_identity
                .as_ref()
                .map(|c| c.cert_file.as_path()),
            proxy: target.proxy.url().map(|p| p.shown()),
            secrets: Some(&target.redactor),
        }
    }
}

/// `builder` with what a source or target configures of how it reaches its server:
/// the CAs of its `ca_file`, trusted in addition to the built-in roots (not instead of
/// them); its `proxy` (else the environment's); its client certificate.
pub fn reaching(
    builder: reqwest::ClientBuilder,
    ca: &CaBundle,
    proxy: &ProxySetting,
    identity: Option<&ClientIdentity>,
) -> reqwest::ClientBuilder {
    let mut builder = proxy.apply(builder);
    for cert in ca.iter() {
        builder = builder.add_root_certificate(cert.clone());
    }
    match identity {
        Some(id) => builder.identity(id.identity()),
        None => builder,
    }
}

/// A transport error in words, without the URL (it may carry a token) and, for a
/// target, without its secrets (a source's errors are redacted whole where they are
/// made). A server certificate that is not trusted, and a server that wants a client
/// certificate or refuses the one it was shown, say so first and name the fix.
pub fn describe_send_error(e: &reqwest::Error, timeout: Duration, peer: Peer<'_>) -> String {
    let text = describe_unredacted(e, timeout, peer);
    match peer.secrets {
        Some(secrets) => secrets.redact(&text),
        None => text,
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
        match peer.proxy {
            Some(proxy) => format!("connection through proxy {proxy} failed"),
            None => "connection failed".to_string(),
        }
    } else if e.is_body() || e.is_decode() {
        "response body failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(advice) = tls_error(s).and_then(|tls| tls_advice(tls, peer)) {
            return format!("{kind}: {advice}");
        }
        chain.push(s.to_string());
        source = s.source();
    }
    let mut msg = kind;
    for s in chain {
        msg.push_str(": ");
        msg.push_str(&s);
    }
    msg
}

/// The rustls error `e` is or wraps: rustls hands its errors to the I/O layer inside an
/// `io::Error` (which reqwest's connector wraps in another), whose `source()` skips
/// them, so they are looked for inside. (One rustls is built, reqwest's and ours;
/// tests/it/tls.rs fails if that changes and these errors stop being found.)
fn tls_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut e = e;
    loop {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        e = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

/// What a TLS failure means and what to do, for an operator who has just been paged;
/// `None` for failures that advice would not help.
fn tls_advice(e: &rustls::Error, peer: Peer<'_>) -> Option<String> {
    use rustls::{AlertDescription as Alert, CertificateError};
    let what = peer.what;
    match e {
        // No chain to a trusted root. Other reasons (expired, wrong name, revoked) are
        // not fixed by trusting another CA, so they get no ca_file advice.
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            let fix = match peer.ca_file {
                None => format!("set ca_file for this {what} to the PEM file of the CA that signed the server's certificate"),
                Some(path) => format!(
                    "ca_file {} is set but does not hold the CA that signed the server's certificate",
                    path.display()
                ),
            };
            Some(format!("TLS certificate not trusted (self-signed or unknown CA): {fix} ({e})"))
        }
        rustls::Error::InvalidCertificate(why) => {
            Some(format!("TLS certificate rejected: {why}"))
        }
        // The server's verdict on the client certificate, sent as an alert: TLS 1.3's
        // "certificate required" when none was sent, and the alerts a server sends for
        // one it does not accept (RFC 8446 §6.2).
        rustls::Error::AlertReceived(
            alert @ (Alert::CertificateRequired
            | Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::AccessDenied),
        ) => Some(match (peer.client_cert, alert) {
            (None, Alert::CertificateRequired) => format!(
                "the server requires a client certificate (mutual TLS) and this {what} has none: set client_cert and client_key to a certificate the server trusts and its key (TLS alert {alert:?})"
            ),
            (None, _) => format!(
                "the server refused the TLS connection (alert {alert:?}); if it requires a client certificate (mutual TLS), set client_cert and client_key for this {what}"
            ),
            (Some(cert), _) => format!(
                "the server refused the client certificate in {} (TLS alert {alert:?}): check that it is signed by a CA the server trusts, has not expired, and is the one the server expects for this {what}",
                cert.display()
            ),
        }),
        _ => None,
    }
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
