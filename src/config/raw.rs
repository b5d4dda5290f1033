//! The config file exactly as written: serde structs with every value still a string.
//! Durations, cron expressions, pointers and names are checked in `validate`, so that
//! one load reports every problem instead of stopping at the first.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `secret = "…"` or `secret = ["new", "old"]` (rotation, newest first).
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A byte size: `1048576` or `"16MiB"`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Default)]
pub struct RawConfig {
    pub state_dir: Option<String>,
    pub shutdown_grace: Option<String>,
    pub log_format: Option<String>,
    pub max_per_host: Option<i64>,
    pub admin: Option<RawAdmin>,
    pub store: Option<RawStore>,
    pub health: Option<RawHealth>,
    #[serde(default)]
    pub targets: BTreeMap<String, RawTarget>,
    #[serde(default)]
    pub sources: BTreeMap<String, RawSource>,
}

/// `[admin]`: the admin HTTP API.
#[derive(Deserialize, Default)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub allowed_hosts: Option<Vec<String>>,
}

/// `[health]`: where pollhook's own events go, and when a source or target is failing.
#[derive(Deserialize, Default)]
pub struct RawHealth {
    pub targets: Option<Vec<String>>,
    pub fail_after: Option<i64>,
    pub target_alert_after: Option<String>,
}

/// `[store]`: sled in state_dir without a postgres key, else PostgreSQL.
#[derive(Deserialize, Default)]
pub struct RawStore {
    pub postgres: Option<String>,
    pub postgres_env: Option<String>,
    pub postgres_file: Option<String>,
    pub lease: Option<String>,
    pub instance: Option<String>,
    pub ca_file: Option<String>,
}

// No Debug on raw structs: they hold secrets.
#[derive(Deserialize)]
pub struct RawTarget {
    pub url: Option<String>,
    pub secret: Option<OneOrMany>,
    pub secret_env: Option<OneOrMany>,
    pub secret_file: Option<OneOrMany>,
    pub signature: Option<String>,
    pub timeout: Option<String>,
    pub retry: Option<Vec<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub max_in_flight: Option<i64>,
    pub ca_file: Option<String>,
    pub types: Option<Vec<String>>,
    pub filter: Option<String>,
    pub body: Option<String>,
    pub content_type: Option<String>,
    // How the target is reached: its proxy and its client certificate.
    pub proxy: Option<String>,
    pub proxy_env: Option<String>,
    pub proxy_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Deserialize)]
pub struct RawSource {
    pub url: Option<String>,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub interval: Option<String>,
    pub cron: Option<String>,
    pub timeout: Option<String>,
    pub max_body: Option<RawSize>,
    pub max_items: Option<i64>,
    pub items: Option<String>,
    pub id: Option<String>,
    #[serde(default)]
    pub ignore: Vec<String>,
    pub events: Option<Vec<String>>,
    pub targets: Option<Vec<String>>,
    pub baseline: Option<bool>,
    pub allow_empty: Option<bool>,
    pub ca_file: Option<String>,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub body: Option<String>,
    pub json: Option<toml::Value>,
    pub auth: Option<RawAuth>,
    pub paginate: Option<RawPaginate>,
    pub max_backoff: Option<String>,
    pub format: Option<String>,
    pub transform: Option<String>,
    pub mode: Option<String>,
    pub event_type: Option<String>,
    pub timezone: Option<String>,
    pub deletion_guard: Option<RawDeletionGuard>,
    pub fail_after: Option<i64>,
    // How the source is reached: its proxy and its client certificate.
    pub proxy: Option<String>,
    pub proxy_env: Option<String>,
    pub proxy_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

/// `[sources.<name>.deletion_guard]`: how many deletions a poll may commit unconfirmed.
#[derive(Deserialize)]
pub struct RawDeletionGuard {
    pub share: Option<String>,
    pub min_items: Option<i64>,
    pub confirm: Option<i64>,
}

/// `[sources.<name>.auth]`: exactly one of bearer, basic, oauth2.
#[derive(Deserialize)]
pub struct RawAuth {
    pub bearer: Option<String>,
    pub bearer_env: Option<String>,
    pub bearer_file: Option<String>,
    pub basic: Option<RawBasic>,
    pub oauth2: Option<RawOAuth2>,
}

#[derive(Deserialize)]
pub struct RawBasic {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Deserialize)]
pub struct RawOAuth2 {
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `[sources.<name>.paginate]`: one style (next, cursor, page or offset) and its settings.
#[derive(Deserialize)]
pub struct RawPaginate {
    pub next: Option<String>,
    pub cursor: Option<String>,
    pub param: Option<String>,
    pub page: Option<String>,
    pub offset: Option<String>,
    pub start: Option<i64>,
    pub size: Option<String>,
    pub size_value: Option<i64>,
    pub max_pages: Option<i64>,
}
