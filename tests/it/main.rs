//! Integration tests: real HTTP servers on 127.0.0.1 (a sample API the tests change and
//! a receiver that verifies every signature), a real sled database in a temp dir, and
//! the daemon run in-process or as the built binary.
//!
//! - `support`: the harness (servers, config, daemon start/stop).
//! - `admin`: the admin API: health, status, metrics, replay, poll now, dry runs.
//! - `admin_hostile`: the admin API against hostile clients: bad names, web pages,
//!   idle connections, its own errors, concurrent dry runs.
//! - `flow`: baseline, created/updated/deleted, ignored fields, event filters.
//! - `health`: health events: a failing source and a target not accepting, reported
//!   once each and their recoveries, across a restart.
//! - `delivery`: retries keep one id, per-item order, isolation, 410, dead letters.
//! - `faults`: failed polls change nothing (no false deletions), body cap.
//! - `service`: the binary under a service manager: notify protocol, SIGHUP, JSON logs,
//!   the operator's commands.
//! - `sources`: pagination, conditional requests, auth, feeds, transforms, commands,
//!   Retry-After, backoff and per-host limits, against `shaped_api`.
//! - `reload`: a new config applied to a running daemon.
//! - `shaping`: each target's `types`, `filter` and `body`; the README's chat recipes
//!   against receivers that check what each service documents.
//! - `lifecycle`: start-up order, shutdown bounds (after reload bursts, a stuck flush, a
//!   second SIGTERM), a failed store stopping the daemon, paths relative to the config.
//! - `monitoring`: the Grafana dashboard and the Prometheus alert rules of
//!   `examples/monitoring` name only metrics and labels pollhook exports; the dashboard
//!   imports as is.
//! - `migrate`: `migrate-store` moving a sled installation into PostgreSQL (runs in
//!   `it_pg` only).
//! - `process`: the binary: restart after kill -9, clean SIGTERM, secrets never logged,
//!   `check` and the demo.
//! - `systemd`: the unit file: `systemd-analyze verify` and `security` (skipped where
//!   `systemd-analyze` is missing), the stop timeout, the directories systemd hands over.
//! - `tls`: server certificates verified by default for sources and targets; `ca_file`
//!   for a private CA; client certificates for servers that require them (mutual TLS).
//! - `proxy`: `proxy` on sources and targets (HTTP forwarding, HTTPS through CONNECT,
//!   credentials kept out of the logs), the environment's proxy variables and
//!   `proxy = "none"`, against `forward_proxy`, a recording test proxy.

// First, so that its `harness!` is in scope in every module after it.
#[macro_use]
mod support;

mod admin;
mod admin_hostile;
mod delivery;
mod faults;
mod flow;
mod forward_proxy;
mod health;
mod lifecycle;
mod migrate;
mod monitoring;
mod process;
mod proxy;
mod reload;
mod service;
mod shaped_api;
mod shaping;
mod sources;
mod systemd;
mod tls;
