//! The integration tests that define the delivery semantics, run on the PostgreSQL
//! store: the same files as `tests/it/`, built as another test binary, whose name
//! (`it_pg`) makes the harness ([`support::on_postgres`]) give each test a database of
//! its own on a throwaway PostgreSQL server (initdb in a temp dir, a free port, run as
//! a non-root user), and put it in the config's `[store]`.
//!
//! Where no PostgreSQL server can be started, each test says loudly that it is skipped;
//! with `POLLHOOK_REQUIRE_POSTGRES=1` (as `.ci/run` sets) that is a failure instead.
//!
//! The modules left out test sled itself (its files, its lock, damage to it) or what
//! does not touch the store (sources, TLS, systemd units).

#[macro_use]
#[path = "it/support.rs"]
mod support;

#[path = "it/admin.rs"]
mod admin;
#[path = "it/cluster.rs"]
mod cluster;
#[path = "it/delivery.rs"]
mod delivery;
#[path = "it/faults.rs"]
mod faults;
#[path = "it/flow.rs"]
mod flow;
#[path = "it/health.rs"]
mod health;
#[path = "it/migrate.rs"]
mod migrate;
#[path = "it/shaping.rs"]
mod shaping;
// Some of its helpers serve only the modules left out.
#[allow(dead_code)]
#[path = "it/process.rs"]
mod process;
#[path = "it/reload.rs"]
mod reload;
#[path = "it/service.rs"]
mod service;
