//! `proxy`: the forward proxy a source's or target's requests go through.
//!
//! Without the key, a source or target uses the proxy the environment names
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, and their lowercase forms), as
//! reqwest and curl do; `"none"` turns proxies off for it; a URL sends every request
//! through that proxy, HTTPS by `CONNECT`. The URL may carry credentials
//! (`http://user:password@proxy:3128`), which reqwest sends as `Proxy-Authorization:
//! Basic`: they are secrets, never shown ([`ProxyUrl::shown`] has no user and password)
//! and listed by [`ProxyUrl::secrets`] for the redactors.

use std::fmt;

use reqwest::Url;

use super::store::percent_decode;

/// The word of `proxy` that turns proxies off.
pub const NO_PROXY: &str = "none";

/// How a source or target reaches its server.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ProxySetting {
    /// No `proxy` key: the environment's proxy variables, read when the client is built.
    #[default]
    Environment,
    /// `proxy = "none"`: straight to the server, whatever the environment says.
    Off,
    /// Every request through this proxy (boxed: reqwest's proxy is large, and most
    /// sources have none).
    Via(Box<ProxyUrl>),
}

/// A checked proxy URL: `http` or `https`, a host, nothing after the port.
#[derive(Clone)]
pub struct ProxyUrl {
    /// As configured, credentials and all.
    url: Url,
    /// `http://proxy.internal:3128`: no user, no password.
    shown: String,
    /// What the HTTP clients are given; built from `url` at load, so that building a
    /// client cannot fail on it later.
    proxy: reqwest::Proxy,
}

// Equal URLs give equal proxies; reqwest's type cannot be compared.
impl PartialEq for ProxyUrl {
    fn eq(&self, other: &ProxyUrl) -> bool {
        self.url == other.url
    }
}

// Debug never shows the credentials (invariant 6).
impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl ProxySetting {
    /// The explicit proxy, if there is one.
    pub fn url(&self) -> Option<&ProxyUrl> {
        match self {
            ProxySetting::Via(p) => Some(p.as_ref()),
            _ => None,
        }
    }

    /// The setting in words, for `pollhook check`; `None` for the default.
    pub fn describe(&self) -> Option<String> {
        match self {
            ProxySetting::Environment => None,
            ProxySetting::Off => Some("no proxy".to_string()),
            ProxySetting::Via(p) => Some(format!("via proxy {}", p.shown)),
        }
    }

    /// `builder` with this setting: the environment's proxies are reqwest's default.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        match self {
            ProxySetting::Environment => builder,
            ProxySetting::Off => builder.no_proxy(),
            ProxySetting::Via(p) => builder.proxy(p.proxy.clone()),
        }
    }
}

impl ProxyUrl {
    /// The proxy without credentials, as every message shows it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The values that would give the credentials away: the URL whole, the password
    /// as written and percent-decoded, and `user:password` decoded (whose base64 is the
    /// `Proxy-Authorization` header). The user beside a password is not a secret alone,
    /// as in a database URL (but never shown either); a user without a password is the
    /// credential itself (a token), and is. Nothing without credentials.
    pub fn secrets(&self) -> Vec<String> {
        let user = percent_decode(self.url.username());
        let whole = self.url.to_string();
        match self.url.password() {
            None if user.is_empty() => Vec::new(),
            None => vec![
                whole,
                self.url.username().to_string(),
                format!("{user}:"),
                user,
            ],
            Some(password) => {
                let decoded = percent_decode(password);
                vec![
                    whole,
                    password.to_string(),
                    format!("{user}:{decoded}"),
                    decoded,
                ]
            }
        }
    }
}

/// `text` (trimmed, `${VAR}`s already expanded) as a proxy setting. The error never
/// quotes the text: it may hold the proxy's password.
pub fn parse(text: &str) -> Result<ProxySetting, String> {
    let text = text.trim();
    if text == NO_PROXY {
        return Ok(ProxySetting::Off);
    }
    const FORM: &str = "write it as http://host:port (user:password@ before the host if the proxy needs them), \"none\" for no proxy, or remove the key to use HTTPS_PROXY/HTTP_PROXY from the environment";
    if text.is_empty() {
        return Err(format!("is empty: {FORM}"));
    }
    let Some((scheme, _)) = text.split_once("://") else {
        return Err(format!("not a proxy URL: {FORM}"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {}
        "socks4" | "socks4a" | "socks5" | "socks5h" => {
            return Err(format!(
                "{scheme}:// proxies are not supported (pollhook is built without SOCKS): use an HTTP proxy, http://host:port, which tunnels HTTPS with CONNECT"
            ))
        }
        _ => return Err(format!("{scheme}:// is not a proxy scheme: {FORM}")),
    }
    // url's messages name the problem ("invalid port number"), never the text.
    let url = Url::parse(text).map_err(|e| format!("not a valid proxy URL ({e}): {FORM}"))?;
    let Some(host) = url.host_str() else {
        return Err(format!("names no host: {FORM}"));
    };
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "a proxy URL has nothing after the host and port (no path or query): {FORM}"
        ));
    }
    let shown = match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    };
    let proxy = reqwest::Proxy::all(url.as_str())
        .map_err(|_| format!("{shown} is not a proxy URL reqwest can use: {FORM}"))?;
    Ok(ProxySetting::Via(Box::new(ProxyUrl { url, shown, proxy })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(text: &str) -> ProxyUrl {
        match parse(text) {
            Ok(ProxySetting::Via(p)) => *p,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn proxy_urls_and_the_word_none() {
        assert_eq!(parse("none"), Ok(ProxySetting::Off));
        assert_eq!(parse(" none\n"), Ok(ProxySetting::Off));
        assert_eq!(
            via("http://proxy.internal:3128").shown(),
            "http://proxy.internal:3128"
        );
        assert_eq!(
            via("http://proxy.internal:3128/").shown(),
            "http://proxy.internal:3128"
        );
        assert_eq!(
            via("https://proxy.internal").shown(),
            "https://proxy.internal"
        );
        assert_eq!(via("HTTP://[::1]:3128").shown(), "http://[::1]:3128");
        assert_eq!(ProxySetting::Off.describe().as_deref(), Some("no proxy"));
        assert_eq!(ProxySetting::Environment.describe(), None);
    }

    #[test]
    fn credentials_are_never_shown_and_are_all_secrets() {
        let p = via("http://pollhook:s%3Acret@proxy.internal:3128");
        assert_eq!(p.shown(), "http://proxy.internal:3128");
        let shown = format!(
            "{p:?} {:?}",
            ProxySetting::Via(Box::new(p.clone())).describe()
        );
        assert!(
            !shown.contains("pollhook") && !shown.contains("cret"),
            "{shown}"
        );
        let secrets = p.secrets();
        for s in ["s%3Acret", "s:cret", "pollhook:s:cret"] {
            assert!(
                secrets.iter().any(|x| x == s),
                "{s} missing from {secrets:?}"
            );
        }
        // The header reqwest sends is the base64 of the decoded pair, which a
        // redactor made of these secrets takes out.
        let header = "Basic cG9sbGhvb2s6czpjcmV0";
        let r = crate::redact::Redactor::new(&secrets);
        assert_eq!(r.redact(header), "Basic <redacted>");
        // A user alone is a token; without credentials nothing is secret.
        let token = via("http://tok-5678@proxy.internal:3128").secrets();
        assert!(token.iter().any(|s| s == "tok-5678:"), "{token:?}");
        assert!(via("http://proxy.internal:3128").secrets().is_empty());
    }

    #[test]
    fn bad_proxy_urls_say_what_to_write_without_quoting_them() {
        for (text, says) in [
            ("", "is empty"),
            ("proxy.internal:3128", "not a proxy URL"),
            ("socks5://user:pw-1234@proxy:1080", "not supported"),
            ("socks5h://proxy:1080", "without SOCKS"),
            ("ftp://proxy:21", "ftp:// is not a proxy scheme"),
            ("http://user:pw-1234@proxy:99999", "not a valid proxy URL"),
            ("http://", "not a valid proxy URL"),
            (
                "http://user:pw-1234@proxy:3128/path",
                "nothing after the host",
            ),
            ("http://proxy:3128?x=1", "nothing after the host"),
            ("None", "not a proxy URL"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.contains("http://host:port"), "{text:?}: {err}");
            assert!(!err.contains("pw-1234"), "{text:?}: {err}");
        }
    }
}
