//! The configuration: one TOML file read and validated completely at load.
//!
//! `raw` holds the file as written; `validate` turns it into [`Config`], whose values are
//! ready to use (parsed URLs, durations, schedules, signers). Every problem found is
//! reported at once, each with the file, the line and the key, because an operator fixing
//! a config at 3 a.m. should not have to run `pollhook check` once per typo.

mod ca;
mod describe;
mod identity;
mod locate;
mod proxy;
mod raw;
mod request;
mod secrets;
mod store;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Url;

use crate::diff::ChangeKind;
use crate::schedule::Schedule;
use crate::sign::Signer;

pub use ca::CaBundle;
pub use describe::describe;
pub use identity::ClientIdentity;
pub use locate::{KeyPath, Locator};
pub use proxy::{ProxySetting, ProxyUrl};
use raw::RawConfig;
pub use request::{
    Auth, Format, HttpRequest, Mode, OAuth2, Origin, PageStyle, Pagination, DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_PAGES,
};
pub use secrets::store_secrets;
pub(crate) use store::VERIFY_CA_NEEDS_CA;
pub use store::{PostgresConfig, SslMode, StoreConfig, DEFAULT_LEASE, MAX_LEASE, MIN_LEASE};
use validate::Validator;
pub use validate::{valid_name, NAME_RULE};
pub use values::{
    display_url, env_values, expand_env, parse_duration, parse_size, redact_url,
    without_credentials,
};

/// Default retry delays (Svix's schedule): before attempt 2, 3, … 8.
pub const DEFAULT_RETRY: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Default cap on a response body, per source (`max_body`).
pub const DEFAULT_MAX_BODY: u64 = 16 * 1024 * 1024;
/// Default cap on the items of one poll, per source (`max_items`): a poll holds about
/// 3 KB of memory an item (README, "Memory").
pub const DEFAULT_MAX_ITEMS: u64 = 250_000;
const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TARGET_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// Requests in flight to one host at once unless `max_per_host` says otherwise.
pub const DEFAULT_MAX_PER_HOST: usize = 4;
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    /// Where the sled database lives.
    pub state_dir: PathBuf,
    /// Where the state is kept (`[store]`): sled in `state_dir` by default, or
    /// PostgreSQL. Read at start: a reload does not move the state.
    pub store: StoreConfig,
    /// How long SIGTERM waits for in-flight deliveries.
    pub shutdown_grace: Duration,
    /// Where the admin API listens (`[admin] listen`); `None` when turned off.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Further `Host` names the admin API answers to (`[admin] allowed_hosts`), for a
    /// reverse proxy in front of it; lowercase. Loopback and the listen address always are.
    pub admin_allowed_hosts: Vec<String>,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// Polls in flight to one host at once, across sources.
    pub max_per_host: usize,
    pub targets: BTreeMap<String, Arc<Target>>,
    pub sources: BTreeMap<String, Arc<Source>>,
    /// `[health]`: where pollhook's own events go.
    pub health: Health,
}

/// `[health]`, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// The targets of health events (none by default), with what each takes.
    pub routes: crate::route::Routes,
    /// Failed polls in a row before a source counts as failing, unless it sets its own.
    pub fail_after: u32,
    /// How old a target's oldest pending delivery may be before it counts as failing.
    pub target_alert_after: Duration,
}

pub const DEFAULT_FAIL_AFTER: u32 = 3;
pub const DEFAULT_TARGET_ALERT_AFTER: Duration = Duration::from_secs(3600);

/// The admin API's address unless `[admin] listen` says otherwise.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9187";

/// `log_format`: plain lines for people and journald, or one JSON object per line for
/// log shippers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `log_format` of the config at `path`, or text when the file does not say or
/// cannot be read; for setting up logging before the config is loaded and validated.
pub fn peek_log_format(path: &Path) -> LogFormat {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let table: toml::Table = toml::from_str(&text).unwrap_or_default();
    match table.get("log_format").and_then(|v| v.as_str()) {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Where webhooks go and how they are signed and retried.
///
/// Equal targets deliver exactly alike: a reload restarts a target's worker only when its
/// new settings are not equal to those it runs with. Every field counts, secrets and the
/// CA file's content too.
#[derive(PartialEq)]
pub struct Target {
    pub name: String,
    pub url: Url,
    /// How `url` is shown in messages and status: as written in the config, `${VAR}`s
    /// unexpanded, without credentials and query (see [`display_url`]).
    pub display_url: String,
    /// The target's secret values (signing secrets, `${VAR}` values, header values),
    /// for taking them out of error text.
    pub redactor: crate::redact::Redactor,
    pub signer: Signer,
    /// Total time for one attempt.
    pub timeout: Duration,
    /// Delays before attempt 2, 3, …; after the last, a failing delivery is dead.
    pub retry: Vec<Duration>,
    pub headers: HeaderMap,
    /// Deliveries in flight to this target at once.
    pub max_in_flight: usize,
    /// `ca_file` as resolved against the config file's directory, if set.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file`, trusted in addition to the built-in roots.
    pub ca: CaBundle,
    /// The events it takes (`types`, `filter`) and the body it is sent (`body`).
    pub accepts: crate::route::Accepts,
    /// The `Content-Type` of every request (`content_type`, default application/json).
    pub content_type: HeaderValue,
    /// `proxy`: the environment's proxy variables (the default), none, or this proxy.
    pub proxy: ProxySetting,
    /// `client_cert` and `client_key`, read and checked at load, for servers that ask
    /// for a client certificate (mutual TLS).
    pub client_identity: Option<ClientIdentity>,
}

/// An API to poll and how to read its items.
///
/// Equal sources poll exactly alike: a reload restarts a source's loop only when its new
/// settings are not equal to those it runs with. Every field counts, secrets, the
/// transform's program and the CA file's content too.
#[derive(Clone, PartialEq)]
pub struct Source {
    pub name: String,
    /// The HTTP request (or command) that gets the document.
    pub origin: Origin,
    /// How further pages are found, for paginated APIs.
    pub pagination: Option<Pagination>,
    /// How the body is read: JSON, or a feed.
    pub format: Format,
    /// A jq program applied to each parsed document before `items` and `id`.
    pub transform: Option<crate::transform::Transform>,
    /// Items, or the whole document as one item.
    pub mode: Mode,
    /// The prefix of event types (`<event_type>.created`); the name by default.
    pub event_type: String,
    /// The longest wait between polls of a failing source.
    pub max_backoff: Duration,
    pub schedule: Schedule,
    /// Total time for one request, connect to last byte.
    pub timeout: Duration,
    /// A body larger than this fails the poll.
    pub max_body: u64,
    /// A poll that finds more items than this fails (memory is per item).
    pub max_items: u64,
    /// JSON Pointer to the collection of items.
    pub items: String,
    /// JSON Pointer to the id inside each array item.
    pub id: String,
    /// Pointers inside an item whose changes alone emit nothing.
    pub ignore: Vec<String>,
    /// Which kinds of change become events.
    pub events: Vec<ChangeKind>,
    /// Names of the targets that receive this source's events.
    pub targets: Vec<String>,
    /// Those targets with the events each takes and the body each is sent.
    pub routes: crate::route::Routes,
    /// Failed polls in a row before it counts as failing (`fail_after`, else
    /// `[health] fail_after`).
    pub fail_after: u32,
    /// First poll records silently.
    pub baseline: bool,
    /// An empty list after a non-empty one is accepted.
    pub allow_empty: bool,
    /// How many deletions one poll may commit without the next polls confirming them.
    pub deletion_guard: DeletionGuard,
    /// `ca_file` as resolved against the config file's directory, if set.
    pub ca_file: Option<PathBuf>,
    /// The certificates read from `ca_file`, trusted in addition to the built-in roots.
    pub ca: CaBundle,
    /// `proxy`, as for targets; its OAuth2 token requests go the same way.
    pub proxy: ProxySetting,
    /// `client_cert` and `client_key`, as for targets; shown to the token endpoint too.
    pub client_identity: Option<ClientIdentity>,
}

/// `[sources.<name>.deletion_guard]`: a poll that would delete more than `share` of the
/// items a source holds (holding at least `min_items`) is held back, and committed only
/// when the next `confirm` polls in a row see the same deletions. A one-off bad answer
/// (a list cut short, an error page) then deletes nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeletionGuard {
    /// The share of held items a poll may delete at once; None turns the guard off.
    pub share: Option<f64>,
    /// Sources holding fewer items are not guarded.
    pub min_items: usize,
    /// Further polls in a row that must see the same deletions.
    pub confirm: u32,
}

impl Default for DeletionGuard {
    fn default() -> DeletionGuard {
        DeletionGuard {
            share: Some(0.5),
            min_items: 20,
            confirm: 2,
        }
    }
}

impl DeletionGuard {
    /// Whether a poll deleting `deletions` of `held` items needs confirming.
    pub fn holds_back(&self, deletions: usize, held: usize) -> bool {
        match self.share {
            Some(share) => held >= self.min_items && deletions as f64 > share * held as f64,
            None => false,
        }
    }
}

// Debug never shows secrets: URLs lose credentials and query (the proxy's too), headers
// show names only, a client certificate its files.
impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("url", &self.display_url)
            .field("signer", &self.signer)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_in_flight", &self.max_in_flight)
            .field("ca_file", &self.ca_file)
            .field("ca_certificates", &self.ca.len())
            .field("accepts", &self.accepts)
            .field("content_type", &self.content_type)
            .field("proxy", &self.proxy)
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .field("pagination", &self.pagination)
            .field("format", &self.format)
            .field("transform", &self.transform)
            .field("mode", &self.mode)
            .field("event_type", &self.event_type)
            .field("max_backoff", &self.max_backoff)
            .field("schedule", &self.schedule_text())
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .field("max_items", &self.max_items)
            .field("items", &self.items)
            .field("id", &self.id)
            .field("ignore", &self.ignore)
            .field("events", &self.events)
            .field("targets", &self.targets)
            .field("routes", &self.routes)
            .field("fail_after", &self.fail_after)
            .field("baseline", &self.baseline)
            .field("allow_empty", &self.allow_empty)
            .field("deletion_guard", &self.deletion_guard)
            .field("ca_file", &self.ca_file)
            .field("ca_certificates", &self.ca.len())
            .field("proxy", &self.proxy)
            .field("client_identity", &self.client_identity)
            .finish()
    }
}

impl Source {
    /// Where the document comes from, for messages: the URL as written (`${VAR}`s not
    /// expanded) without credentials or query, or the command's program.
    pub fn location(&self) -> String {
        match &self.origin {
            Origin::Http(r) => r.display_url.clone(),
            Origin::Command(argv) => {
                format!("command {}", argv.first().map(String::as_str).unwrap_or(""))
            }
        }
    }

    /// The HTTP request, for HTTP sources.
    pub fn http(&self) -> Option<&HttpRequest> {
        match &self.origin {
            Origin::Http(r) => Some(r),
            Origin::Command(_) => None,
        }
    }

    /// The schedule in words: `every 1m ±10%` or `cron "*/5 * * * *" (UTC)`.
    pub fn schedule_text(&self) -> String {
        match &self.schedule {
            Schedule::Interval(d) => format!("every {} ±10%", humantime::format_duration(*d)),
            Schedule::Cron(c) => format!("cron \"{}\" ({})", c.expr(), c.timezone().name()),
        }
    }
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `error`, not `source`: the message shows the cause once; as the error's source too,
    // `{:#}` would print it twice.
    #[error("cannot read config file {}: {error} (pass --config FILE or set POLLHOOK_CONFIG)", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Syntax {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    #[error("{}", format_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// The problems found, for tests and tools; a read or syntax error is one problem.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid { problems, .. } => problems.clone(),
            other => vec![Problem {
                key: String::new(),
                line: None,
                message: other.to_string(),
            }],
        }
    }
}

fn format_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} problem{} in {}:",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        path.display()
    );
    for p in problems {
        let line = p.line.map(|l| format!(":{l}")).unwrap_or_default();
        let key = if p.key.is_empty() {
            String::new()
        } else {
            format!(" {}:", p.key)
        };
        out.push_str(&format!("\n  {}{line}:{key} {}", path.display(), p.message));
    }
    out
}

impl Config {
    /// Reads and validates `path`, taking `${VAR}` and `secret_env` from the process
    /// environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Config::parse(&text, path, &|name| std::env::var(name).ok())
    }

    /// Validates config `text` as if read from `path` (relative paths in it, and the
    /// default `state_dir`, resolve against `path`'s directory, made absolute from the
    /// working directory now, so they mean the same whatever the working directory is
    /// later), with `env` as the environment.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let locator = Locator::new(text);
        let mut unknown = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(toml::Deserializer::new(text), |p| {
            unknown.push(ignored_path(&p))
        })
        .map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: syntax_message(text, &e),
        })?;
        let mut v = Validator {
            locator: &locator,
            problems: Vec::new(),
            env,
            base: config_dir(path),
        };
        for key in unknown {
            v.problem(&key, "unknown key (check its spelling; `pollhook check` lists the keys each table takes in the README)");
        }
        let config = v.config(raw, path);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            v.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems: v.problems,
            })
        }
    }
}

/// The directory of the config file at `path`, absolute (`std::path::absolute` does not
/// touch the file system and keeps symlinks as written; if the working directory is
/// gone it cannot help, and the relative directory is kept).
fn config_dir(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or(Path::new(""));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The parser's message; for the few errors it leaves without one (a control character,
/// a value cut off at the end of the file), a description of what to look for. The
/// parser's own Display is not used: it quotes the line, which may hold a secret.
fn syntax_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    if !message.is_empty() {
        return message.to_string();
    }
    let column = e
        .span()
        .map(|s| {
            let start = s.start.min(text.len());
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            text[line_start..start].chars().count() + 1
        })
        .unwrap_or(1);
    format!("TOML syntax error at column {column}: a value is missing or unfinished, or there is a character TOML does not allow (control characters are not allowed anywhere, even in comments)")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> KeyPath {
    use serde_ignored::Path as P;
    match p {
        P::Root => KeyPath::root(),
        P::Seq { parent, index } => ignored_path(parent).index(*index),
        P::Map { parent, key } => ignored_path(parent).key(key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

#[cfg(test)]
mod tests;
