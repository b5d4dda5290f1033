//! Turning the config as written into a [`Config`]: every value checked, every problem
//! collected with its key and line, defaults filled in, secrets and CA files read.
//! The top level, targets and the checks both share are here; a source's steps are in
//! [`source`], its request and response shape in `request`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use super::raw::{self, RawConfig, RawTarget};
use super::{
    ca, expand_env, parse_duration, redact_url, CaBundle, Config, KeyPath, Locator, LogFormat,
    Problem, Target, DEFAULT_ADMIN_LISTEN, DEFAULT_GRACE, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_PER_HOST, DEFAULT_RETRY, DEFAULT_TARGET_TIMEOUT,
};
use crate::sign::{Scheme, Signer};

mod network;
mod source;
mod store;

/// The rule source and target names follow, as an operator reads it.
pub const NAME_RULE: &str = "names must be 1-64 characters of letters, digits, '_', '-' or '.', starting with a letter or digit";

/// Whether `name` may name a source or target ([`NAME_RULE`]). The admin API and the CLI
/// check the names they are given against it too, before they reach the store.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Collects problems while building a [`Config`]; values with problems get placeholders
/// so validation can go on and find the rest.
pub(super) struct Validator<'a> {
    pub(super) locator: &'a Locator,
    pub(super) problems: Vec<Problem>,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) base: PathBuf,
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, key: &KeyPath, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.to_string(),
            line: self.locator.line(key),
            message: message.into(),
        });
    }

    pub(super) fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let root = KeyPath::root();
        let state_dir = match &raw.state_dir {
            Some(dir) => self.base.join(dir),
            None => match (self.env)("STATE_DIRECTORY").filter(|s| !s.is_empty()) {
                // systemd may pass several directories separated by ':'; ours is the first.
                Some(dirs) => PathBuf::from(dirs.split(':').next().unwrap_or_default()),
                // Like a relative state_dir: next to the config file, not in whatever
                // directory pollhook was started from.
                None => self.base.join("pollhook-state"),
            },
        };
        let shutdown_grace = self.duration(
            &root.key("shutdown_grace"),
            raw.shutdown_grace.as_deref(),
            DEFAULT_GRACE,
        );
        let log_format = self.choice(
            &root.key("log_format"),
            raw.log_format.as_deref(),
            &[
                ("text", LogFormat::Text, "plain lines, the default"),
                ("json", LogFormat::Json, "one object per line"),
            ],
        );
        let admin_listen = self.admin_listen(raw.admin.as_ref());
        let admin_allowed_hosts = self.admin_allowed_hosts(raw.admin.as_ref());
        let store = self.store(raw.store);
        let max_per_host = match raw.max_per_host {
            None => DEFAULT_MAX_PER_HOST,
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(_) => {
                self.problem(&root.key("max_per_host"), "must be between 1 and 1024");
                DEFAULT_MAX_PER_HOST
            }
        };
        if raw.targets.is_empty() {
            self.problem(
                &root,
                "no targets: add a [targets.<name>] table with the url that receives the webhooks",
            );
        }
        if raw.sources.is_empty() {
            self.problem(
                &root,
                "no sources: add a [sources.<name>] table with the url to poll",
            );
        }
        let target_names: Vec<String> = raw.targets.keys().cloned().collect();
        let mut targets = BTreeMap::new();
        for (name, t) in raw.targets {
            let key = root.key("targets").key(&name);
            self.name(&key, &name);
            if let Some(t) = self.target(&key, &name, t) {
                targets.insert(name, Arc::new(t));
            }
        }
        let health = self.health(raw.health, &target_names, &targets);
        let mut sources = BTreeMap::new();
        for (name, s) in raw.sources {
            let key = root.key("sources").key(&name);
            self.name(&key, &name);
            if let Some(mut s) = self.source(&key, &name, s, &target_names) {
                s.routes = crate::route::Routes::new(&s.targets, |t| {
                    targets.get(t).map(|t: &Arc<Target>| &t.accepts)
                });
                if s.fail_after == 0 {
                    s.fail_after = health.fail_after;
                }
                sources.insert(name, Arc::new(s));
            }
        }
        Config {
            file: path.to_path_buf(),
            state_dir,
            store,
            shutdown_grace,
            admin_listen,
            admin_allowed_hosts,
            log_format,
            max_per_host,
            targets,
            sources,
            health,
        }
    }

    /// `[health]`: its targets must be configured ones.
    fn health(
        &mut self,
        raw: Option<raw::RawHealth>,
        target_names: &[String],
        targets: &BTreeMap<String, Arc<Target>>,
    ) -> super::Health {
        let raw = raw.unwrap_or_default();
        let key = KeyPath::root().key("health");
        let mut names: Vec<String> = Vec::new();
        for (i, t) in raw.targets.unwrap_or_default().into_iter().enumerate() {
            if !target_names.contains(&t) {
                self.problem(
                    &key.key("targets").index(i),
                    format!(
                        "unknown target {t:?} (known targets: {}); health events go to configured targets",
                        target_names.join(", ")
                    ),
                );
            } else if !names.contains(&t) {
                names.push(t);
            }
        }
        let fail_after = match raw.fail_after {
            None => super::DEFAULT_FAIL_AFTER,
            Some(n) if (1..=1_000_000).contains(&n) => n as u32,
            Some(_) => {
                self.problem(
                    &key.key("fail_after"),
                    "must be between 1 and 1000000 (failed polls in a row)",
                );
                super::DEFAULT_FAIL_AFTER
            }
        };
        let alert_key = key.key("target_alert_after");
        let target_alert_after = self.duration(
            &alert_key,
            raw.target_alert_after.as_deref(),
            super::DEFAULT_TARGET_ALERT_AFTER,
        );
        if target_alert_after < Duration::from_secs(1) {
            self.problem(&alert_key, "must be at least 1s");
        }
        super::Health {
            routes: crate::route::Routes::new(&names, |t| targets.get(t).map(|t| &t.accepts)),
            fail_after,
            target_alert_after,
        }
    }

    /// `[admin] listen`: an IP address and port (default 127.0.0.1:9187), `""` for off.
    fn admin_listen(&mut self, admin: Option<&raw::RawAdmin>) -> Option<SocketAddr> {
        let text = admin
            .and_then(|a| a.listen.as_deref())
            .unwrap_or(DEFAULT_ADMIN_LISTEN);
        if text.is_empty() {
            return None;
        }
        match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.problem(
                    &KeyPath::root().key("admin").key("listen"),
                    format!("{text:?} is not an IP address and port such as \"127.0.0.1:9187\" (use \"\" to turn the admin API off)"),
                );
                None
            }
        }
    }

    fn name(&mut self, key: &KeyPath, name: &str) {
        if !valid_name(name) {
            self.problem(
                key,
                format!("{NAME_RULE} (they appear in event types and database keys)"),
            );
        }
    }

    /// `[admin] allowed_hosts`: host names (or IP addresses) a proxy in front of the admin
    /// API forwards as `Host`, lowercased; no scheme, port or path.
    fn admin_allowed_hosts(&mut self, admin: Option<&raw::RawAdmin>) -> Vec<String> {
        let hosts = admin
            .and_then(|a| a.allowed_hosts.as_deref())
            .unwrap_or_default();
        let key = KeyPath::root().key("admin").key("allowed_hosts");
        let mut out = Vec::new();
        for host in hosts {
            let ok = !host.is_empty()
                && host.len() <= 253
                && (host.parse::<std::net::IpAddr>().is_ok()
                    || host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')));
            if ok {
                out.push(host.to_ascii_lowercase());
            } else {
                self.problem(&key, format!("{host:?} is not a host name such as \"admin.example.com\" (no scheme, port or path: the Host header's port is not compared)"));
            }
        }
        out
    }

    /// One of a few words: `options` are (word, value, what it means); the first is the
    /// default, used when the key is absent or (after a problem) wrong.
    pub(super) fn choice<T: Copy>(
        &mut self,
        key: &KeyPath,
        text: Option<&str>,
        options: &[(&str, T, &str)],
    ) -> T {
        // Every caller passes a constant list of at least one option.
        let default = options[0].1;
        let Some(text) = text else {
            return default;
        };
        if let Some((_, value, _)) = options.iter().find(|(word, _, _)| *word == text) {
            return *value;
        }
        let words: Vec<String> = options
            .iter()
            .map(|(word, _, means)| format!("\"{word}\" ({means})"))
            .collect();
        self.problem(key, format!("{text:?} is not one of {}", words.join(", ")));
        default
    }

    pub(super) fn duration(
        &mut self,
        key: &KeyPath,
        text: Option<&str>,
        default: Duration,
    ) -> Duration {
        match text.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(key, e);
                default
            }
        }
    }

    pub(super) fn expand(&mut self, key: &KeyPath, text: &str) -> Option<String> {
        match expand_env(text, self.env) {
            Ok(s) => Some(s),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    pub(super) fn url(&mut self, key: &KeyPath, text: Option<&str>) -> Option<Url> {
        let Some(text) = text else {
            self.problem(key, "missing: every target and source needs a url");
            return None;
        };
        let expanded = self.expand(key, text)?;
        match Url::parse(&expanded) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(u) => {
                self.problem(
                    key,
                    format!("{} is not an http(s) URL with a host", redact_url(&u)),
                );
                None
            }
            // The URL may hold a token, so the message names the problem, not the text.
            Err(e) => {
                self.problem(key, format!("not a valid URL: {e}"));
                None
            }
        }
    }

    pub(super) fn headers(&mut self, key: &KeyPath, raw: &BTreeMap<String, String>) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in raw {
            let hkey = key.key(name);
            let Ok(hname) = HeaderName::from_bytes(name.as_bytes()) else {
                self.problem(&hkey, "not a valid HTTP header name");
                continue;
            };
            let Some(value) = self.expand(&hkey, value) else {
                continue;
            };
            match HeaderValue::from_str(&value) {
                Ok(mut v) => {
                    // Marks the value as secret for anything that prints headers.
                    v.set_sensitive(true);
                    map.append(hname, v);
                }
                Err(_) => self.problem(&hkey, "header value has characters HTTP does not allow (control characters or non-ASCII)"),
            }
        }
        map
    }

    fn secrets(&mut self, key: &KeyPath, t: &RawTarget) -> Option<Vec<String>> {
        let given = [
            t.secret.is_some(),
            t.secret_env.is_some(),
            t.secret_file.is_some(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => {
                self.problem(key, "missing secret: set exactly one of secret, secret_env (an environment variable name) or secret_file (a path)");
                return None;
            }
            1 => {}
            _ => {
                self.problem(key, "set only one of secret, secret_env and secret_file");
                return None;
            }
        }
        let mut out = Vec::new();
        if let Some(s) = t.secret.clone() {
            out = s.into_vec();
        } else if let Some(names) = t.secret_env.clone() {
            let k = key.key("secret_env");
            for (i, name) in names.into_vec().into_iter().enumerate() {
                let which = format!(" (secret {})", i + 1);
                out.extend(self.secret_from_env(&k, &name, &which));
            }
        } else if let Some(files) = t.secret_file.clone() {
            let k = key.key("secret_file");
            for file in files.into_vec() {
                out.extend(self.secret_from_file(&k, &file));
            }
        }
        if out.is_empty() {
            None
        } else {
            Some(out)
        }
    }

    /// A secret in environment variable `var` (trimmed; unset or blank is a problem at
    /// `key`, naming the variable and `which` secret it is).
    pub(super) fn secret_from_env(
        &mut self,
        key: &KeyPath,
        var: &str,
        which: &str,
    ) -> Option<String> {
        match (self.env)(var).filter(|v| !v.trim().is_empty()) {
            Some(v) => Some(v.trim().to_string()),
            None => {
                self.problem(
                    key,
                    format!("environment variable {var}{which} is not set or empty"),
                );
                None
            }
        }
    }

    /// A secret in a file (`${VAR}` expanded, relative to the config file, trimmed; a
    /// missing or empty file is a problem at `key`). At most 64 KiB
    /// are read: `secret_file = "/dev/zero"` or a log file named by mistake must be a
    /// config error, not a load that eats memory and never ends.
    pub(super) fn secret_from_file(&mut self, key: &KeyPath, file: &str) -> Option<String> {
        use std::io::Read;
        const MAX_SECRET_FILE: u64 = 64 * 1024;
        let expanded = self.expand(key, file)?;
        let path = self.base.join(expanded);
        let mut bytes = Vec::new();
        // One byte more than allowed tells "too large" from "exactly the limit".
        let read = std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes));
        if let Err(e) = read {
            self.problem(key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
        if bytes.len() as u64 > MAX_SECRET_FILE {
            self.problem(
                key,
                format!(
                    "{} is larger than {} KiB, too large for a secret; point this key at a file that holds only the secret",
                    path.display(),
                    MAX_SECRET_FILE / 1024
                ),
            );
            return None;
        }
        match String::from_utf8(bytes) {
            Ok(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            Ok(_) => {
                self.problem(key, format!("{} is empty", path.display()));
                None
            }
            Err(_) => {
                self.problem(
                    key,
                    format!("cannot read {}: it is not UTF-8 text", path.display()),
                );
                None
            }
        }
    }

    /// `ca_file`: the path resolved like `secret_file`, and the certificates in it. A file
    /// that cannot be used is a problem; the placeholder is no extra roots.
    fn ca_file(&mut self, key: &KeyPath, file: Option<&str>) -> (Option<PathBuf>, CaBundle) {
        let Some(file) = file else {
            return (None, CaBundle::default());
        };
        let Some(expanded) = self.expand(key, file) else {
            return (None, CaBundle::default());
        };
        let path = self.base.join(expanded);
        match ca::load(&path) {
            Ok(ca) => (Some(path), ca),
            Err(e) => {
                self.problem(key, e);
                (Some(path), CaBundle::default())
            }
        }
    }

    fn target(&mut self, key: &KeyPath, name: &str, t: RawTarget) -> Option<Target> {
        let url = self.url(&key.key("url"), t.url.as_deref());
        let scheme = match t.signature.as_deref().map(str::parse::<Scheme>) {
            None => Some(Scheme::Standard),
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                self.problem(&key.key("signature"), e.to_string());
                None
            }
        };
        let secrets = self.secrets(key, &t);
        let signing = secrets.clone().unwrap_or_default();
        let signer = match (scheme, secrets) {
            (Some(scheme), Some(secrets)) => match Signer::new(scheme, &secrets) {
                Ok(s) => Some(s),
                Err(e) => {
                    let k = ["secret", "secret_env", "secret_file"]
                        .into_iter()
                        .zip([
                            t.secret.is_some(),
                            t.secret_env.is_some(),
                            t.secret_file.is_some(),
                        ])
                        .find(|(_, given)| *given)
                        .map_or(key.clone(), |(k, _)| key.key(k));
                    self.problem(&k, e.to_string());
                    None
                }
            },
            _ => None,
        };
        let timeout = self.duration(
            &key.key("timeout"),
            t.timeout.as_deref(),
            DEFAULT_TARGET_TIMEOUT,
        );
        let retry = match &t.retry {
            None => DEFAULT_RETRY.to_vec(),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, d)| self.duration(&key.key("retry").index(i), Some(d), Duration::ZERO))
                .collect(),
        };
        let headers = self.headers(&key.key("headers"), &t.headers);
        let (ca_file, ca) = self.ca_file(&key.key("ca_file"), t.ca_file.as_deref());
        let reach = self.reach(key, network::RawReach::of_target(&t));
        let max_in_flight = match t.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(n) if (1..=1024).contains(&n) => n as usize,
            Some(_) => {
                self.problem(&key.key("max_in_flight"), "must be between 1 and 1024");
                DEFAULT_MAX_IN_FLIGHT
            }
        };
        let (accepts, content_type) = self.accepts(key, &t, &headers);
        let url = url?;
        Some(Target {
            name: name.to_string(),
            display_url: super::display_url(t.url.as_deref().unwrap_or_default(), &url),
            redactor: super::secrets::target_redactor(&t, &url, &headers, &signing, self.env)
                .with(&reach.secrets),
            url,
            signer: signer?,
            timeout,
            retry,
            headers,
            max_in_flight,
            ca_file,
            ca,
            accepts,
            content_type,
            proxy: reach.proxy,
            client_identity: reach.client_identity,
        })
    }

    /// A target's `types`, `filter`, `body` and `content_type`.
    fn accepts(
        &mut self,
        key: &KeyPath,
        t: &RawTarget,
        headers: &HeaderMap,
    ) -> (crate::route::Accepts, HeaderValue) {
        let mut types = Vec::new();
        if let Some(list) = &t.types {
            if list.is_empty() {
                self.problem(
                    &key.key("types"),
                    "lists no event types, so nothing would be sent; remove the key to take every type",
                );
            }
            for (i, glob) in list.iter().enumerate() {
                match crate::route::TypeGlob::new(glob) {
                    Ok(g) => types.push(g),
                    Err(e) => self.problem(&key.key("types").index(i), e),
                }
            }
        }
        let mut program = |name: &str, text: Option<&str>| {
            let program = text?;
            crate::transform::Transform::compile(program)
                .map_err(|e| self.problem(&key.key(name), format!("not a valid jq program: {e}")))
                .ok()
        };
        let filter = program("filter", t.filter.as_deref());
        let body = program("body", t.body.as_deref());
        let text = t.content_type.as_deref().unwrap_or("application/json");
        let content_type = match HeaderValue::from_str(text) {
            Ok(v) if !text.trim().is_empty() => v,
            _ => {
                self.problem(
                    &key.key("content_type"),
                    "not a valid Content-Type value (e.g. \"application/json\" or \"text/plain; charset=utf-8\")",
                );
                HeaderValue::from_static("application/json")
            }
        };
        if headers.contains_key(reqwest::header::CONTENT_TYPE) {
            self.problem(
                &key.key("headers"),
                "sets Content-Type, which pollhook sets from content_type; use content_type = \"...\" instead",
            );
        }
        let accepts = crate::route::Accepts {
            types,
            filter,
            body,
            json: crate::route::is_json_content_type(text),
        };
        (accepts, content_type)
    }

    pub(super) fn pointer(&mut self, key: &KeyPath, p: &str) {
        if let Err(e) = crate::extract::validate_pointer(p) {
            self.problem(key, format!("{p:?} is not a JSON Pointer (RFC 6901): {e}; pointers look like \"/data/items\", or \"\" for the whole document"));
        }
    }
}
