//! The reliability harness: runs the real `pollhook` binary against a sample API that
//! changes all the time and receivers that verify every signature and record every
//! webhook, and attacks the invariants of docs/DESIGN.md: kill -9 at random instants,
//! receiver faults, source faults, churn, SIGTERM under load. Each scenario prints a
//! ledger (changes at the source, events delivered per target, lost, duplicated, dead)
//! and the run exits non-zero if an invariant broke.
//!
//! `cargo test` runs every scenario in its short mode (CI). The long mode gives the
//! figures in docs/RELIABILITY.md:
//!
//! ```text
//! cargo test --release --test chaos -- --long [scenario …]
//! ```
//!
//! Scenarios: crash-loop, receiver-faults, source-faults, churn, shutdown, cluster (three
//! instances on one PostgreSQL database; skipped, loudly, without a PostgreSQL server,
//! and failed instead under `POLLHOOK_REQUIRE_POSTGRES=1`).
//!
//! - `daemon`: starting, killing and measuring the pollhook process.
//! - `proxy`: a TCP proxy that can refuse, reset, black-hole or trickle connections.
//! - `world`: the sample API with a mutator that changes it continuously, and the
//!   ledger receivers that check what arrives.
//! - `scenarios`: the single-instance scenarios, and the list of all.
//! - `cluster`: the cluster scenario: kill -9 of random instances, one paused past its
//!   lease, a database restart, and how long each takeover took.

mod cluster;
mod daemon;
mod proxy;
mod scenarios;
mod world;

use std::process::ExitCode;

/// How hard to push: short runs in CI, long runs for the published figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Short,
    Long,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The test runner may ask for a list of tests; this binary has none to list.
    if args.iter().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let mode = if args.iter().any(|a| a == "--long") {
        Mode::Long
    } else {
        Mode::Short
    };
    // Other flags (--nocapture, --test-threads=…) are meant for libtest; words are
    // filters, as with `cargo test <filter>`.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let chosen: Vec<&scenarios::Scenario> = scenarios::ALL
        .iter()
        .filter(|s| filters.is_empty() || filters.iter().any(|f| s.name.contains(f.as_str())))
        .collect();
    if chosen.is_empty() {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for s in chosen {
        println!("\n== {} ({mode:?}) ==", s.name);
        let started = std::time::Instant::now();
        let ledger = runtime.block_on((s.run)(mode));
        print!("{ledger}");
        println!("{:<24}{:.1}s", "took", started.elapsed().as_secs_f64());
        if !ledger.violations.is_empty() {
            failed.push(s.name);
        } else if ledger.skipped.is_some() {
            skipped.push(s.name);
        }
    }
    if failed.is_empty() && !skipped.is_empty() {
        println!(
            "\nchaos: all scenarios passed but {}, SKIPPED (see above)",
            skipped.join(", ")
        );
        ExitCode::SUCCESS
    } else if failed.is_empty() {
        println!("\nchaos: all scenarios passed");
        ExitCode::SUCCESS
    } else {
        println!("\nchaos: invariants broken in {}", failed.join(", "));
        ExitCode::FAILURE
    }
}
