//! The operator's commands: `status`, `deliveries`, `replay`, `poll`, `forget`. Each
//! asks its [`Backend`] (the running daemon, or the store when no daemon runs) and
//! prints the answer.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};

use super::backend::{local_poll, Backend, NoDatabase};
use crate::admin::ops::{self, DeliveryQuery, ReplayRequest};
use crate::admin::PollResponse;
use crate::config::Config;
use crate::store::ClusterView;

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) => humantime::format_duration(std::time::Duration::from_secs(s as u64)).to_string(),
    }
}

/// `pollhook status`.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let backend = Backend::connect(config).await?;
    let sources = backend.sources().await?;
    let targets = backend.targets().await?;
    let cluster = backend.cluster().await?;
    if json {
        let v = serde_json::json!({
            "daemon": backend.daemon().is_some(),
            "cluster": cluster,
            "sources": sources,
            "targets": targets,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    use std::fmt::Write as _;
    match backend.daemon() {
        Some(base) => {
            let _ = writeln!(out, "daemon: running (admin API {base})");
        }
        None => {
            let store = match &config.store {
                crate::config::StoreConfig::Sled => {
                    format!("the store in {}", config.state_dir.display())
                }
                crate::config::StoreConfig::Postgres(pg) => {
                    format!("the PostgreSQL database {}", pg.display)
                }
            };
            let _ = writeln!(
                out,
                "daemon: not running here (read from {store}; poll times are known only to a running daemon)"
            );
        }
    }
    if let Some(c) = &cluster {
        cluster_lines(&mut out, c);
    }
    let _ = writeln!(out, "\nsources ({}):", sources.len());
    let _ = writeln!(
        out,
        "  {:<20} {:>8}  {:<20}  {:<7} {:<20}  {}LAST ERROR",
        "NAME",
        "ITEMS",
        "LAST POLL",
        "RESULT",
        "NEXT POLL",
        if cluster.is_some() {
            "HOLDER            "
        } else {
            ""
        }
    );
    for s in &sources {
        let error = match (&s.last_error, s.consecutive_failures) {
            (Some(e), n) if n > 0 => format!("{e} ({n} in a row)"),
            (Some(e), _) => format!("{e} (at {}; recovered since)", when(s.last_error_at)),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:>8}  {:<20}  {:<7} {:<20}  {}{}",
            s.name,
            s.items,
            when(s.last_poll),
            s.last_outcome.as_deref().unwrap_or("-"),
            when(s.next_poll),
            holder(cluster.is_some(), s.holder.as_deref()),
            error
        );
    }
    let _ = writeln!(out, "\ntargets ({}):", targets.len());
    let _ = writeln!(
        out,
        "  {:<20} {:>8} {:>8}  {:<16}  {}URL",
        "NAME",
        "PENDING",
        "DEAD",
        "OLDEST PENDING",
        if cluster.is_some() {
            "HOLDER            "
        } else {
            ""
        }
    );
    for t in &targets {
        let _ = writeln!(
            out,
            "  {:<20} {:>8} {:>8}  {:<16}  {}{}",
            t.name,
            t.pending,
            t.dead,
            age(t.oldest_pending_age_seconds),
            holder(cluster.is_some(), t.holder.as_deref()),
            t.url.as_deref().unwrap_or("(not in the config)")
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The cluster's members, for `status`.
fn cluster_lines(out: &mut String, c: &ClusterView) {
    use std::fmt::Write as _;
    let alive = c.instances.iter().filter(|i| i.alive).count();
    let _ = writeln!(
        out,
        "cluster: {alive} live instance{} (this answer from {})",
        if alive == 1 { "" } else { "s" },
        c.instance
            .as_deref()
            .unwrap_or("the database, read directly")
    );
    let _ = writeln!(
        out,
        "  {:<30} {:<6} {:>8}  {:>8} {:>8}",
        "INSTANCE", "ALIVE", "RENEWED", "SOURCES", "TARGETS"
    );
    for i in &c.instances {
        let held = |kind: &str| {
            c.leases
                .iter()
                .filter(|l| {
                    l.kind == kind
                        && l.holder.as_deref() == Some(&*i.name)
                        && l.expires_in_secs > 0.0
                })
                .count()
        };
        let _ = writeln!(
            out,
            "  {:<30} {:<6} {:>7.1}s  {:>8} {:>8}",
            i.name,
            if i.alive { "yes" } else { "no" },
            i.renewed_secs_ago,
            held("source"),
            held("target")
        );
    }
}

/// A HOLDER cell: in a cluster, the instance or "(none)"; nothing for a single node.
fn holder(cluster: bool, holder: Option<&str>) -> String {
    match (cluster, holder) {
        (false, _) => String::new(),
        (true, h) => format!("{:<18}", h.unwrap_or("(none)")),
    }
}

/// `pollhook deliveries`.
pub async fn deliveries(config: &Config, q: DeliveryQuery, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(t) = &q.target {
        ops::check_name("target", t)?;
    }
    let list = Backend::connect(config).await?.deliveries(q).await?;
    let mut stdout = std::io::stdout().lock();
    if json {
        for d in &list {
            writeln!(stdout, "{}", serde_json::to_string(d)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        writeln!(stdout, "no deliveries match")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        stdout,
        "{:<40} {:<28} {:<16} {:<8} {:>8}  {:<20}  LAST ERROR",
        "EVENT", "TYPE", "TARGET", "STATUS", "ATTEMPTS", "NEXT ATTEMPT"
    )?;
    for d in &list {
        writeln!(
            stdout,
            "{:<40} {:<28} {:<16} {:<8} {:>8}  {:<20}  {}",
            d.event_id,
            d.event_type,
            d.target,
            d.status,
            d.attempts,
            when(d.next_attempt),
            d.last_error.as_deref().unwrap_or("-")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `pollhook replay`.
pub async fn replay(config: &Config, req: ReplayRequest) -> anyhow::Result<ExitCode> {
    if let Some(t) = &req.target {
        ops::check_name("target", t)?;
    }
    let backend = Backend::connect(config).await?;
    let r = backend.replay(req).await?;
    for d in &r.deliveries {
        println!("replayed {} ({}) to {}", d.event_id, d.event_type, d.target);
    }
    println!(
        "{} deliveries put back in the queue with fresh attempts{}",
        r.replayed,
        if backend.daemon().is_some() {
            ""
        } else {
            "; they are sent when the daemon starts"
        }
    );
    if r.already_pending > 0 {
        println!(
            "{} deliveries of this event are still pending; they keep their retry schedule",
            r.already_pending
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `pollhook poll <source> [--dry-run]`.
pub async fn poll(config: &Config, name: &str, dry_run: bool) -> anyhow::Result<ExitCode> {
    ops::check_name("source", name)?;
    let Some(source) = config.sources.get(name) else {
        let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
        bail!(
            "no source {name:?} in {}; sources: {}",
            config.file.display(),
            known.join(", ")
        );
    };
    let backend = match Backend::connect(config).await {
        Ok(b) => b,
        // Nothing stored yet: a dry run diffs against nothing.
        Err(e) if dry_run && e.is::<NoDatabase>() => {
            let response = local_poll(config, source, None, true).await?;
            return print_poll(name, source, &response, dry_run);
        }
        Err(e) => return Err(e),
    };
    let response = backend.poll(source, dry_run).await?;
    print_poll(name, source, &response, dry_run)
}

/// Prints a poll's events as JSON lines on stdout and its summary on stderr.
fn print_poll(
    name: &str,
    source: &crate::config::Source,
    response: &PollResponse,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    for e in &response.events {
        writeln!(stdout, "{}", serde_json::to_string(e)?)?;
    }
    let r = &response.report;
    eprintln!(
        "{name}: {} items, {} created, {} updated, {} deleted, {} events{}",
        r.items,
        r.created,
        r.updated,
        r.deleted,
        r.events,
        if dry_run {
            " (dry run: nothing committed or sent)"
        } else {
            ""
        }
    );
    if dry_run && r.first && source.baseline {
        eprintln!("(first poll: with baseline = true the daemon records these items silently)");
    }
    Ok(ExitCode::SUCCESS)
}

/// `pollhook forget <source>`.
pub async fn forget(config: &Config, name: &str, yes: bool) -> anyhow::Result<ExitCode> {
    ops::check_name("source", name)?;
    if !yes {
        let configured = if config.sources.contains_key(name) {
            "It is still in the config: its next poll starts over as a first poll."
        } else {
            "It is not in the config."
        };
        eprint!(
            "Forget the stored items of source {name}? Pending deliveries stay. {configured} [y/N] "
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing changed");
            return Ok(ExitCode::FAILURE);
        }
    }
    let r = Backend::connect(config).await?.forget(name).await?;
    if r.forgotten {
        println!("forgot the stored state of source {name}");
    } else {
        println!("source {name} had no stored state; nothing changed");
    }
    Ok(ExitCode::SUCCESS)
}
