//! How a source or target reaches its server, checked: its proxy (`proxy`, or the URL
//! from `proxy_env` or `proxy_file`) and its client certificate (`client_cert` with
//! `client_key`). No message here quotes a proxy URL: it may hold the proxy's password.

use super::Validator;
use crate::config::identity::{self, Which};
use crate::config::proxy;
use crate::config::raw::{RawSource, RawTarget};
use crate::config::{ClientIdentity, KeyPath, ProxySetting};

/// The keys of one source or target that say how it is reached, as written.
pub(super) struct RawReach<'a> {
    proxy: Option<&'a str>,
    proxy_env: Option<&'a str>,
    proxy_file: Option<&'a str>,
    client_cert: Option<&'a str>,
    client_key: Option<&'a str>,
}

impl<'a> RawReach<'a> {
    pub(super) fn of_source(s: &'a RawSource) -> RawReach<'a> {
        RawReach {
            proxy: s.proxy.as_deref(),
            proxy_env: s.proxy_env.as_deref(),
            proxy_file: s.proxy_file.as_deref(),
            client_cert: s.client_cert.as_deref(),
            client_key: s.client_key.as_deref(),
        }
    }

    pub(super) fn of_target(t: &'a RawTarget) -> RawReach<'a> {
        RawReach {
            proxy: t.proxy.as_deref(),
            proxy_env: t.proxy_env.as_deref(),
            proxy_file: t.proxy_file.as_deref(),
            client_cert: t.client_cert.as_deref(),
            client_key: t.client_key.as_deref(),
        }
    }
}

/// How a source or target reaches its server, validated.
pub(super) struct Reach {
    pub proxy: ProxySetting,
    pub client_identity: Option<ClientIdentity>,
    /// The proxy's credentials (and `${VAR}` values), for the redactor.
    pub secrets: Vec<String>,
}

impl Validator<'_> {
    /// The proxy and client certificate of the source or target at `key`; a problem
    /// leaves the default (the environment's proxy, no certificate) in its place.
    pub(super) fn reach(&mut self, key: &KeyPath, raw: RawReach<'_>) -> Reach {
        let mut secrets = Vec::new();
        let proxy = self.proxy(key, &raw, &mut secrets);
        let client_identity = self.client_identity(key, raw.client_cert, raw.client_key);
        Reach {
            proxy,
            client_identity,
            secrets,
        }
    }

    /// At most one of `proxy`, `proxy_env` (a variable holding the URL) and `proxy_file`
    /// (a file holding it); none is the environment's proxy variables.
    fn proxy(
        &mut self,
        key: &KeyPath,
        raw: &RawReach<'_>,
        secrets: &mut Vec<String>,
    ) -> ProxySetting {
        let given: Vec<&str> = [
            ("proxy", raw.proxy),
            ("proxy_env", raw.proxy_env),
            ("proxy_file", raw.proxy_file),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect();
        if given.len() > 1 {
            self.problem(
                &key.key(given[1]),
                "set only one of proxy, proxy_env and proxy_file",
            );
            return ProxySetting::Environment;
        }
        let (name, text) = match (raw.proxy, raw.proxy_env, raw.proxy_file) {
            (Some(t), _, _) => {
                secrets.extend(crate::config::env_values(t, self.env));
                ("proxy", self.expand(&key.key("proxy"), t))
            }
            (_, Some(var), _) => (
                "proxy_env",
                self.secret_from_env(&key.key("proxy_env"), var, ""),
            ),
            (_, _, Some(file)) => (
                "proxy_file",
                self.secret_from_file(&key.key("proxy_file"), file),
            ),
            (None, None, None) => return ProxySetting::Environment,
        };
        let Some(text) = text else {
            return ProxySetting::Environment;
        };
        match proxy::parse(&text) {
            Ok(setting) => {
                secrets.extend(setting.url().map(|p| p.secrets()).unwrap_or_default());
                setting
            }
            Err(e) => {
                self.problem(&key.key(name), e);
                ProxySetting::Environment
            }
        }
    }

    /// `client_cert` and `client_key`: both or neither, resolved like `ca_file`, read
    /// and checked to be a certificate and its key.
    fn client_identity(
        &mut self,
        key: &KeyPath,
        cert: Option<&str>,
        private_key: Option<&str>,
    ) -> Option<ClientIdentity> {
        let (cert, private_key) = match (cert, private_key) {
            (None, None) => return None,
            (Some(_), None) => {
                self.problem(
                    &key.key("client_cert"),
                    "needs client_key too: set client_key to the PEM file of the certificate's private key (or remove client_cert)",
                );
                return None;
            }
            (None, Some(_)) => {
                self.problem(
                    &key.key("client_key"),
                    "needs client_cert too: set client_cert to the PEM file of the client certificate (or remove client_key)",
                );
                return None;
            }
            (Some(c), Some(k)) => (c, k),
        };
        let cert_path = self.expand(&key.key("client_cert"), cert);
        let key_path = self.expand(&key.key("client_key"), private_key);
        let (cert_path, key_path) = (self.base.join(cert_path?), self.base.join(key_path?));
        match identity::load(&cert_path, &key_path) {
            Ok(id) => Some(id),
            Err((which, message)) => {
                let name = match which {
                    Which::Cert => "client_cert",
                    Which::Key => "client_key",
                };
                self.problem(&key.key(name), message);
                None
            }
        }
    }
}
