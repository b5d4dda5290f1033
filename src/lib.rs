//! pollhook turns pull-only HTTP APIs into push: it polls sources on a schedule, diffs
//! what it sees against what it saw last (kept in sled), and delivers each change as a
//! signed webhook, retrying until the target accepts it.
//!
//! This library is the seam between the binary and its tests, not a stable public API:
//! its items are `pub` so that `main.rs`, the integration tests, the benchmarks and the
//! examples can drive the daemon in-process, and they change with the binary, without
//! semver promises.
//!
//! `docs/DESIGN.md` is the house plan: the flow, the numbered invariants that comments
//! cite ("invariant 4"), each with the tests that guard it, the storage layout and the
//! wire formats.
//!
//! The flow, one module a stage (data moves one way):
//!
//! ```text
//! config ─► daemon (schedule per source) ─► poll: source (fetch) ─► extract ─► diff
//!        ─► event (envelope, stable id) ─► store.commit_poll (one transaction)
//!        ─► deliver (worker per target: sign, POST, retry policy) ─► target
//! ```
//!
//! The poll path (`source`, `poll`) and the delivery path (`deliver`) stand side by side
//! over what they share, `http` and `jitter`, and neither imports the other; `admin`
//! reaches the running daemon through `running`, which the daemon fills in. No two
//! top-level modules import each other, directly or round a circle.
//!
//! - [`config`]: the TOML file, validated completely at load, and every key's default.
//! - [`schedule`]: intervals with jitter, cron with crontab(5) semantics in a time zone.
//! - [`jitter`]: the random number jitter is drawn from, for schedules and retries.
//! - [`http`]: what sources and targets share of HTTP: the `User-Agent`, a client's
//!   trusted CAs, proxy and client certificate, transport errors in words (with advice
//!   for certificates, the server's and the client's), `Retry-After` read and classified.
//! - [`source`]: getting a document: HTTP pages (query, body, auth incl. OAuth2,
//!   conditional requests, per-host turns, timeouts, a body cap) or a command's output.
//! - [`transform`]: the `transform` option, a jq program run on the response before
//!   extraction (jaq). Pure.
//! - [`extract`], [`diff`]: items and their ids; created/updated/deleted. Pure.
//! - [`feed`]: RSS, Atom and JSON Feed documents as a JSON array of entries with
//!   stable ids, for `format = "feed"` sources. Pure.
//! - [`event`]: the envelope and its stable id. Pure.
//! - [`redact`]: known secret values (and their encodings) out of error text. Pure.
//! - [`error`]: an error and its causes on one line, as every log line and status shows it.
//! - [`store`]: the `Store` trait, its sled and PostgreSQL implementations, and the copy
//!   from one to the other (`migrate-store`).
//! - [`poll`]: one poll, fetch (page walks) to commit.
//! - [`deliver`]: target workers, per-item order, retry policy.
//! - [`sign`]: Standard Webhooks, GitHub and Stripe signatures, and `verify`.
//! - [`daemon`]: wiring, signals, reloads, clean shutdown.
//! - [`running`]: the running daemon's handle (store, metrics, config, each source's
//!   status, poll now), started by the daemon and read by the admin API; the source
//!   status the CLI shows.
//! - [`admin`]: the admin HTTP API (health, status, replay, poll now) and the store
//!   operations it shares with the CLI.
//! - [`metrics`]: the Prometheus metrics `/metrics` serves.
//! - [`limits`]: the open-files limit, raised at start.
//! - [`malloc`]: glibc's allocator: two arenas, and freed memory given back after a burst.
//! - [`notify`]: the systemd notify protocol (ready, reloading, stopping, watchdog).
//! - [`cli`], [`demo`]: the command line (daemon and operator commands) and the
//!   offline demo.

pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod demo;
pub mod diff;
pub mod error;
pub mod event;
pub mod extract;
pub mod feed;
pub mod health;
pub mod http;
pub mod jitter;
pub mod limits;
pub mod malloc;
pub mod metrics;
pub mod notify;
pub mod poll;
pub mod redact;
pub mod route;
pub mod running;
pub mod schedule;
pub mod sign;
pub mod source;
pub mod store;
pub mod transform;
