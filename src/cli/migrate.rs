//! `pollhook migrate-store`: moves a single-node installation's state from its sled
//! `state_dir` into the PostgreSQL database its config's `[store]` names, so that an
//! installation that outgrows one machine keeps its snapshots (no flood of created
//! events at the first poll on PostgreSQL) and its pending and dead deliveries.
//!
//! The copy itself is [`PgStore::import`]: one transaction into an empty database. This
//! file resolves what to copy where, refuses what would lose or mix state (no database
//! in the state_dir, a daemon holding it, a config without PostgreSQL), and tells the
//! operator what was copied and what to do next. The state_dir is only read.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::{Config, PostgresConfig, StoreConfig};
use crate::store::{ImportReport, PgStore, SledStore, StoreError};

/// `pollhook migrate-store [--from DIR]`.
pub async fn migrate_store(config: &Config, from: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let StoreConfig::Postgres(pg) = &config.store else {
        bail!(
            "{} names no PostgreSQL database: migrate-store copies a sled state_dir into the database of [store]. \
             Add `[store] postgres = \"postgres://…\"` (or postgres_env, postgres_file) to the config the instances will run with, and run migrate-store with it",
            config.file.display()
        );
    };
    let state_dir = from.unwrap_or_else(|| config.state_dir.clone());
    let db_dir = state_dir.join("db");
    // Opening creates a database where there is none: refused first, since an empty
    // copy would look like a successful migration of a wrong path.
    if !holds_files(&db_dir) {
        bail!(
            "there is no sled database in {} (the state_dir{}): nothing to migrate. \
             Name the state_dir that holds it with --from DIR (under systemd: /var/lib/pollhook)",
            db_dir.display(),
            if state_dir == config.state_dir {
                format!(" of {}", config.file.display())
            } else {
                " given with --from".to_string()
            }
        );
    }
    eprintln!(
        "Copying the state in {} into the PostgreSQL database {}.\n\
         No pollhook daemon may run on either while it copies: stop the one on this state_dir \
         (systemctl stop pollhook) and every instance on the database. Both are checked.",
        state_dir.display(),
        pg.display
    );

    let dir = state_dir.clone();
    let sled = tokio::task::spawn_blocking(move || SledStore::open(&dir))
        .await?
        .map_err(|e| match e {
            // Its own words say what holds the lock; what to do here is to stop it.
            StoreError::Open { .. } => anyhow::anyhow!(
                "{e}\nmigrate-store reads the state_dir only while no daemon runs on it: stop the daemon (systemctl stop pollhook), then run migrate-store again"
            ),
            e => anyhow::Error::new(e)
                .context(format!("cannot open the sled state_dir {}", state_dir.display())),
        })?;
    let sled = Arc::new(sled);
    let report = copy(pg, sled).await?;
    print!("{}", summary(&report, &state_dir, pg));
    Ok(ExitCode::SUCCESS)
}

/// Connects to the database and copies `sled` into it, off the async workers.
async fn copy(pg: &PostgresConfig, sled: Arc<SledStore>) -> anyhow::Result<ImportReport> {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<ImportReport> {
        let store = PgStore::connect(&pg)
            .with_context(|| format!("cannot open the PostgreSQL store at {}", pg.display))?;
        Ok(store.import(&*sled)?)
    })
    .await
    .context("the copy task stopped")?
}

/// What was copied, and what to do next.
fn summary(r: &ImportReport, state_dir: &Path, pg: &PostgresConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "copied {} into the PostgreSQL database {}:",
        state_dir.display(),
        pg.display
    );
    let _ = writeln!(
        out,
        "  sources: {} ({} stored items)",
        r.sources.len(),
        r.items()
    );
    for s in &r.sources {
        let _ = writeln!(
            out,
            "    {:<20} {:>8} items  generation {}{}",
            s.name,
            s.items,
            s.state.generation,
            if s.state.initialized {
                ""
            } else {
                "  (no poll committed yet)"
            }
        );
    }
    let _ = writeln!(out, "  targets: {}", r.targets.len());
    for (name, t) in &r.targets {
        let _ = writeln!(
            out,
            "    {:<20} {:>8} pending {:>8} dead",
            name, t.pending, t.dead
        );
    }
    if r.sources.is_empty() && r.targets.is_empty() {
        let _ = writeln!(
            out,
            "  (the state_dir held nothing: if that is unexpected, check that it is the one your daemon used)"
        );
    }
    let _ = writeln!(
        out,
        "{} was not changed: it is a backup of this state until you delete it. \
         Start pollhook with this config (one instance or several); do not run a daemon on the state_dir again, \
         or its pending deliveries would be sent a second time.",
        state_dir.display()
    );
    out
}

/// Whether `dir` exists and holds anything (sled creates its files at the first open).
fn holds_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut e| e.next().is_some())
}
