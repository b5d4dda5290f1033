//! `[store]` checked: which database, its URL, the lease, the instance name and the CA
//! file, each problem at its key. No message here quotes the URL or anything read from
//! `postgres_env`/`postgres_file`: they hold the database password.

use url::Url;

use super::Validator;
use crate::config::raw::RawStore;
use crate::config::store::{self, DEFAULT_LEASE, MAX_LEASE, MIN_LEASE};
use crate::config::{KeyPath, PostgresConfig, SslMode, StoreConfig};

/// The keys that give the URL, one of which selects PostgreSQL.
const URL_KEYS: [&str; 3] = ["postgres", "postgres_env", "postgres_file"];

/// How a URL is written, for messages.
const URL_EXAMPLE: &str = "postgres://user@host:5432/pollhook";

impl Validator<'_> {
    /// `[store]`: sled without it or without a postgres key; else PostgreSQL with the
    /// URL from exactly one of `postgres`, `postgres_env` and `postgres_file`.
    pub(super) fn store(&mut self, raw: Option<RawStore>) -> StoreConfig {
        let key = KeyPath::root().key("store");
        let Some(raw) = raw else {
            return StoreConfig::Sled;
        };
        let given: Vec<&str> = URL_KEYS
            .into_iter()
            .zip([&raw.postgres, &raw.postgres_env, &raw.postgres_file])
            .filter(|(_, value)| value.is_some())
            .map(|(name, _)| name)
            .collect();
        if given.is_empty() {
            // lease, instance and ca_file alone would do nothing: a typo'd or
            // commented-out postgres key must not leave the operator on sled unawares.
            for (name, value) in [
                ("lease", &raw.lease),
                ("instance", &raw.instance),
                ("ca_file", &raw.ca_file),
            ] {
                if value.is_some() {
                    self.problem(&key.key(name), "applies to the PostgreSQL store only: set postgres, postgres_env or postgres_file as well, or remove it (without them the state is kept with sled in state_dir)");
                }
            }
            return StoreConfig::Sled;
        }
        if given.len() > 1 {
            self.problem(
                &key.key(given[1]),
                "set only one of postgres, postgres_env and postgres_file",
            );
        }
        let url = match given[..] {
            ["postgres"] => raw
                .postgres
                .as_deref()
                .and_then(|text| self.expand(&key.key("postgres"), text)),
            ["postgres_env"] => raw
                .postgres_env
                .as_deref()
                .and_then(|var| self.secret_from_env(&key.key("postgres_env"), var, "")),
            ["postgres_file"] => raw
                .postgres_file
                .as_deref()
                .and_then(|file| self.secret_from_file(&key.key("postgres_file"), file)),
            _ => None,
        };
        let checked = url.and_then(|url| {
            let url = url.trim().to_string();
            let (parsed, sslmode) = self.postgres_url(&key.key(given[0]), &url)?;
            Some((url, parsed, sslmode))
        });
        let lease = self.lease(&key.key("lease"), raw.lease.as_deref());
        let instance = self.instance(&key.key("instance"), raw.instance);
        let (_, ca) = self.ca_file(&key.key("ca_file"), raw.ca_file.as_deref());
        let ca = raw.ca_file.is_some().then_some(ca);
        // Without a URL there is a problem already; the placeholder is never used.
        let Some((url, parsed, sslmode)) = checked else {
            return StoreConfig::Sled;
        };
        match (sslmode, ca.is_some()) {
            (SslMode::Disable, true) => self.problem(
                &key.key("ca_file"),
                "sslmode=disable in the URL turns TLS off, so ca_file would not be used; remove one of them",
            ),
            // An operator who names a CA means the certificate to be checked; prefer
            // (the default) would leave it unused without a word.
            (SslMode::Prefer, true) => self.problem(
                &key.key("ca_file"),
                "sslmode=prefer (the default when the URL has none) does not verify the server's certificate, so ca_file would not be used; add sslmode=verify-full (or verify-ca) to the URL, or remove ca_file",
            ),
            (SslMode::VerifyCa, false) => {
                self.problem(&key.key(given[0]), store::VERIFY_CA_NEEDS_CA)
            }
            _ => {}
        }
        StoreConfig::Postgres(PostgresConfig {
            display: store::display(&parsed),
            url,
            lease,
            instance,
            ca,
            sslmode,
        })
    }

    /// A PostgreSQL URL (`postgres://` or `postgresql://`, a host, a database) and its
    /// `sslmode`. Problems are at `key`; none repeats the text.
    fn postgres_url(&mut self, key: &KeyPath, text: &str) -> Option<(Url, SslMode)> {
        if !text.contains("://") {
            let message = if text.contains('=') {
                format!("this looks like a key-value connection string (host=… dbname=…); write it as a URL instead, e.g. {URL_EXAMPLE}?sslmode=require (user, password, host, port and database in that order)")
            } else {
                format!("not a PostgreSQL URL: write it like {URL_EXAMPLE}")
            };
            self.problem(key, message);
            return None;
        }
        let url = match Url::parse(text) {
            Ok(url) => url,
            // url's messages name the problem ("invalid port number"), never the text.
            Err(e) => {
                self.problem(key, format!("not a valid URL: {e}; write it like {URL_EXAMPLE} (a password's special characters percent-encoded, '@' as %40)"));
                return None;
            }
        };
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            self.problem(
                key,
                format!(
                    "the URL's scheme is {:?}; a PostgreSQL URL starts with postgres:// or postgresql://",
                    url.scheme()
                ),
            );
            return None;
        }
        let mut ok = true;
        if url.host_str().is_none_or(str::is_empty) {
            self.problem(
                key,
                format!("the URL names no host: write it like {URL_EXAMPLE}"),
            );
            ok = false;
        }
        if url.path().trim_start_matches('/').is_empty() {
            self.problem(key, format!("name the database, e.g. {URL_EXAMPLE}"));
            ok = false;
        }
        let mut sslmode = SslMode::default();
        // Like libpq, a repeated parameter counts as its last value.
        for (name, value) in url.query_pairs() {
            if name == "sslmode" {
                match SslMode::parse(&value) {
                    Ok(mode) => sslmode = mode,
                    Err(e) => {
                        self.problem(key, e);
                        ok = false;
                    }
                }
            }
        }
        ok.then_some((url, sslmode))
    }

    /// `lease`: a duration from 2s to 10m, 15s when absent.
    fn lease(&mut self, key: &KeyPath, text: Option<&str>) -> std::time::Duration {
        let lease = self.duration(key, text, DEFAULT_LEASE);
        if lease < MIN_LEASE {
            self.problem(key, "must be at least 2s: a shorter lease hands an instance's work to another whenever it is slow for a moment");
            DEFAULT_LEASE
        } else if lease > MAX_LEASE {
            self.problem(
                key,
                "must be at most 10m: a dead instance's work waits this long before another takes it over",
            );
            DEFAULT_LEASE
        } else {
            lease
        }
    }

    /// `instance`: 1-64 letters, digits, '.', '_' or '-'.
    fn instance(&mut self, key: &KeyPath, name: Option<String>) -> Option<String> {
        let name = name?;
        let ok = (1..=64).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Some(name)
        } else {
            self.problem(
                key,
                "must be 1-64 characters of letters, digits, '.', '_' or '-' (without it, the instance is named by its host name and pid)",
            );
            None
        }
    }
}
