//! `[store]`: where pollhook keeps its state. Without it, a sled database in `state_dir`
//! (one instance); with a `postgres` URL, a PostgreSQL database that several instances
//! share, each holding its work under a lease (issue 12).
//!
//! The URL holds the database password, so it is kept apart from what may be shown:
//! [`PostgresConfig::display`] has the password and credential query values masked,
//! and Debug prints only that. The secrets the store must take out of connection errors
//! are listed by [`store_secrets`](super::store_secrets).

use std::fmt;
use std::time::Duration;

use url::Url;

use super::CaBundle;

/// `[store] lease` unless the config says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// The shortest `lease`: shorter, and an instance that stalls for a moment (a slow
/// query, a busy host) would lose its work to another while it still runs it.
pub const MIN_LEASE: Duration = Duration::from_secs(2);
/// The longest `lease`: a dead instance's sources wait this long before another polls them.
pub const MAX_LEASE: Duration = Duration::from_secs(10 * 60);

/// Where the state is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum StoreConfig {
    /// A sled database in `state_dir` (no `[store]`, or no postgres key in it).
    #[default]
    Sled,
    /// A PostgreSQL database (`[store] postgres`, `postgres_env` or `postgres_file`).
    Postgres(PostgresConfig),
}

/// `[store]` with a PostgreSQL URL, checked: a postgres:// or postgresql:// URL with a
/// host and a database name.
#[derive(Clone, PartialEq)]
pub struct PostgresConfig {
    /// The URL as given (`${VAR}`s expanded, surrounding whitespace trimmed), password
    /// and all: for connecting only, never for printing.
    pub url: String,
    /// The URL as it may be shown: the password replaced by `***`, credential-like query
    /// values (`password`, `sslpassword`, …) too, no fragment.
    pub display: String,
    /// How long an instance's hold on its work lasts without renewal: a dead instance's
    /// work waits this long before another takes it over. 2s to 10m, default 15s.
    pub lease: Duration,
    /// The name this instance shows in status; `None` leaves it to the store (host name
    /// and pid).
    pub instance: Option<String>,
    /// The certificates of `ca_file`, for verifying the database server's certificate.
    pub ca: Option<CaBundle>,
    /// The URL's `sslmode` (libpq's meaning; `prefer` when absent).
    pub sslmode: SslMode,
}

// Debug shows where, never the password: `display` stands in for the URL.
impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.display)
            .field("lease", &self.lease)
            .field("instance", &self.instance)
            .field("ca_certificates", &self.ca.as_ref().map(|ca| ca.len()))
            .field("sslmode", &self.sslmode)
            .finish()
    }
}

/// The URL's `sslmode`, as libpq reads it. `allow` (TLS only if the server insists) is
/// not offered: it protects nothing that `prefer` does not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, else plain (libpq's default).
    #[default]
    Prefer,
    /// TLS or no connection; the server's certificate is not checked.
    Require,
    /// TLS with a certificate signed by a trusted CA (`ca_file`).
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The modes by their word in a URL, in the order errors list them.
    pub const ALL: [(&'static str, SslMode); 5] = [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    /// The word a URL writes for this mode (`verify-full`).
    pub fn as_str(self) -> &'static str {
        SslMode::ALL
            .iter()
            .find(|(_, mode)| *mode == self)
            .map_or("prefer", |(word, _)| word)
    }

    /// The mode `word` names, or why it names none.
    pub(super) fn parse(word: &str) -> Result<SslMode, String> {
        if let Some((_, mode)) = SslMode::ALL.iter().find(|(w, _)| *w == word) {
            return Ok(*mode);
        }
        let words: Vec<&str> = SslMode::ALL.iter().map(|(w, _)| *w).collect();
        let hint = if word == "allow" {
            " (\"allow\" is not supported: use prefer, or disable)"
        } else {
            ""
        };
        Err(format!(
            "sslmode {word:?} in the URL is not one of {}{hint}",
            words.join(", ")
        ))
    }
}

/// Why `sslmode=verify-ca` without `ca_file` is refused, by the config check and by the
/// store: against the public roots, verify-ca would accept a certificate that any public
/// CA issued for any name (libpq refuses it with `sslrootcert=system` too).
pub(crate) const VERIFY_CA_NEEDS_CA: &str = "sslmode=verify-ca needs ca_file: against the \
    public CAs it would accept any certificate any of them issued, for any name. Set ca_file \
    to the CA that signed the database's certificate, or use sslmode=verify-full, which also \
    checks that the certificate names the host";

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What stands in for a password in [`PostgresConfig::display`].
const MASK: &str = "***";

/// `url` as it may be shown: user kept, password masked, host, port and path as they
/// are, query values of credential-like names masked, no fragment.
pub(super) fn display(url: &Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str(url.username());
        if url.password().is_some() {
            shown.push(':');
            shown.push_str(MASK);
        }
        shown.push('@');
    }
    shown.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in url.query_pairs() {
            if super::secrets::credential_name(&name) {
                query.append_pair(&name, MASK);
            } else {
                query.append_pair(&name, &value);
            }
        }
        shown.push('?');
        shown.push_str(&query.finish());
    }
    shown
}

/// `text` with each `%XX` replaced by the byte it encodes (a password as the server
/// gets it); bytes that are not UTF-8 become U+FFFD.
pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        // Two hex digits exactly: `from_str_radix` alone would take "+f".
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_masks_the_password_and_credential_query_values() {
        let u = Url::parse(
            "postgres://pollhook:s3cret@db.internal:5432/pollhook?sslmode=require&password=p2&application_name=x#frag",
        )
        .unwrap();
        assert_eq!(
            display(&u),
            "postgres://pollhook:***@db.internal:5432/pollhook?sslmode=require&password=***&application_name=x"
        );
        let u = Url::parse("postgresql://db/pollhook").unwrap();
        assert_eq!(display(&u), "postgresql://db/pollhook");
        let u = Url::parse("postgres://:pw@[::1]/pollhook").unwrap();
        assert_eq!(display(&u), "postgres://:***@[::1]/pollhook");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%3Fw0rd"), "p@ss?w0rd");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%+f"), "%+f");
        assert_eq!(percent_decode("%C3%A9t%C3%A9"), "été");
    }

    #[test]
    fn sslmode_words() {
        for (word, mode) in SslMode::ALL {
            assert_eq!(SslMode::parse(word), Ok(mode));
            assert_eq!(mode.as_str(), word);
        }
        assert!(SslMode::parse("allow")
            .unwrap_err()
            .contains("not supported"));
        assert!(
            SslMode::parse("Require").is_err(),
            "libpq's words are lowercase"
        );
    }
}
