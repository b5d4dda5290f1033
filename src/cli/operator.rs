//! The operator's commands: `status`, `deliveries`, `replay`, `poll`, `forget`. Each
//! goes through the running daemon's admin API, or opens the store when no daemon runs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;

use super::client::{api_path, Backend, NoDatabase, Refused};
use crate::admin::ops::{self, DeliveryQuery, DeliveryView, ForgetResponse, ReplayRequest};
use crate::admin::{
    DeliveriesResponse, PollRequest, PollResponse, SourcesResponse, TargetsResponse,
};
use crate::config::Config;
use crate::poll::Poller;
use crate::source::Fetcher;
use crate::store::{blocking, SharedStore};

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

/// Runs a store operation on a blocking thread, turning its error into anyhow.
async fn on_store<T, F>(store: &SharedStore, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn crate::store::Store) -> Result<T, ops::OpError> + Send + 'static,
{
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || f(&*store)).await??)
}

/// `pollhook status`.
pub async fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let backend = Backend::connect(config).await?;
    let now_ms = Utc::now().timestamp_millis();
    let (sources, targets) = match &backend {
        Backend::Daemon { .. } => {
            let s: SourcesResponse = backend.get(&api_path(&["sources"], &[])).await?;
            let t: TargetsResponse = backend.get(&api_path(&["targets"], &[])).await?;
            (s.sources, t.targets)
        }
        Backend::Store(store) => {
            let stored = blocking(store, |s| s.sources()).await?;
            let sources = config
                .sources
                .values()
                .map(|s| crate::daemon::SourceStatus {
                    name: s.name.clone(),
                    url: s.location(),
                    schedule: s.schedule_text(),
                    items: stored
                        .iter()
                        .find(|(n, _)| *n == s.name)
                        .map(|(_, st)| st.items)
                        .unwrap_or(0),
                    ..Default::default()
                })
                .collect();
            let configured = ops::configured_targets(config);
            let targets = on_store(store, move |s| ops::targets(s, &configured, now_ms)).await?;
            (sources, targets)
        }
    };
    if json {
        let v = serde_json::json!({
            "daemon": backend.is_daemon(),
            "sources": sources,
            "targets": targets,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    use std::fmt::Write as _;
    match &backend {
        Backend::Daemon { base, .. } => {
            let _ = writeln!(out, "daemon: running (admin API {base})");
        }
        Backend::Store(_) => {
            let _ = writeln!(
                out,
                "daemon: not running (read from the store in {}; poll times are known only to a running daemon)",
                config.state_dir.display()
            );
        }
    }
    let _ = writeln!(out, "\nsources ({}):", sources.len());
    let _ = writeln!(
        out,
        "  {:<20} {:>8}  {:<20}  {:<7} {:<20}  LAST ERROR",
        "NAME", "ITEMS", "LAST POLL", "RESULT", "NEXT POLL"
    );
    for s in &sources {
        let error = match (&s.last_error, s.consecutive_failures) {
            (Some(e), n) if n > 0 => format!("{e} ({n} in a row)"),
            (Some(e), _) => format!("{e} (at {}; recovered since)", when(s.last_error_at)),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {:>8}  {:<20}  {:<7} {:<20}  {}",
            s.name,
            s.items,
            when(s.last_poll),
            s.last_outcome.as_deref().unwrap_or("-"),
            when(s.next_poll),
            error
        );
    }
    let _ = writeln!(out, "\ntargets ({}):", targets.len());
    let _ = writeln!(
        out,
        "  {:<20} {:>8} {:>8}  {:<16}  URL",
        "NAME", "PENDING", "DEAD", "OLDEST PENDING"
    );
    for t in &targets {
        let _ = writeln!(
            out,
            "  {:<20} {:>8} {:>8}  {:<16}  {}",
            t.name,
            t.pending,
            t.dead,
            age(t.oldest_pending_age_seconds),
            t.url.as_deref().unwrap_or("(not in the config)")
        );
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// `pollhook deliveries`.
pub async fn deliveries(config: &Config, q: DeliveryQuery, json: bool) -> anyhow::Result<ExitCode> {
    if let Some(t) = &q.target {
        ops::check_name("target", t)?;
    }
    let backend = Backend::connect(config).await?;
    let list: Vec<DeliveryView> = match &backend {
        Backend::Daemon { .. } => {
            let limit = q.limit.map(|l| l.to_string());
            let query: Vec<(&str, &str)> = [
                ("status", q.status.as_deref()),
                ("target", q.target.as_deref()),
                ("limit", limit.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
            let r: DeliveriesResponse = backend.get(&api_path(&["deliveries"], &query)).await?;
            r.deliveries
        }
        Backend::Store(store) => on_store(store, move |s| ops::deliveries(s, &q)).await?,
    };
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
    let r: ops::ReplayResponse = match &backend {
        Backend::Daemon { .. } => {
            backend
                .send(
                    Method::POST,
                    &api_path(&["deliveries", "replay"], &[]),
                    &req,
                )
                .await?
        }
        Backend::Store(store) => {
            let now = Utc::now().timestamp_millis();
            let configured = ops::configured_targets(config);
            on_store(store, move |s| ops::replay(s, &req, &configured, now)).await?
        }
    };
    for d in &r.deliveries {
        println!("replayed {} ({}) to {}", d.event_id, d.event_type, d.target);
    }
    println!(
        "{} deliveries put back in the queue with fresh attempts{}",
        r.replayed,
        if backend.is_daemon() {
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
    let response: PollResponse = match &backend {
        Backend::Daemon { .. } => {
            let path = api_path(&["sources", name, "poll"], &[]);
            match backend
                .send(Method::POST, &path, &PollRequest { dry_run })
                .await
            {
                Ok(r) => {
                    if dry_run {
                        eprintln!("(dry run by the running daemon, with its loaded config: reload it to try edits)");
                    }
                    r
                }
                Err(e)
                    if dry_run && e.downcast_ref::<Refused>().is_some_and(|r| r.status == 404) =>
                {
                    // Not in the daemon's config (yet): tried here against nothing
                    // stored, since the daemon holds the store. A source removed from
                    // the daemon's config may still have stored items; they are not seen.
                    eprintln!("(source {name} is not in the running daemon's config: every item shows as created)");
                    local_poll(config, source, None, dry_run).await?
                }
                Err(e) => return Err(e),
            }
        }
        Backend::Store(store) => local_poll(config, source, Some(store.clone()), dry_run).await?,
    };
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

/// A poll in this process: against the store when given, else against nothing stored.
async fn local_poll(
    config: &Config,
    source: &std::sync::Arc<crate::config::Source>,
    store: Option<SharedStore>,
    dry_run: bool,
) -> anyhow::Result<PollResponse> {
    let (store, _scratch) = match store {
        Some(s) => (s, None),
        None => {
            // An empty store in a temporary directory: the diff base is "nothing seen".
            let dir = tempdir()?;
            let s: SharedStore = std::sync::Arc::new(crate::store::SledStore::open(&dir.0)?);
            (s, Some(dir))
        }
    };
    let poller = Poller::new(
        store,
        Fetcher::new(&config.sources)?,
        crate::poll::Wakes::default(),
    );
    if dry_run {
        let (report, events) = poller
            .dry_run(source)
            .await
            .with_context(|| format!("poll of {} failed", source.name))?;
        return Ok(PollResponse {
            source: source.name.clone(),
            dry_run,
            report,
            events,
        });
    }
    let report = poller
        .poll(source)
        .await
        .with_context(|| format!("poll of {} failed", source.name))?;
    if report.events > 0 {
        eprintln!("(no daemon runs: the queued deliveries are sent when it starts)");
    }
    Ok(PollResponse {
        source: source.name.clone(),
        dry_run,
        report,
        events: Vec::new(),
    })
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

fn tempdir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "pollhook-dry-run-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(TempDir(dir))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let backend = Backend::connect(config).await?;
    let r: ForgetResponse = match &backend {
        Backend::Daemon { .. } => {
            let path = api_path(&["sources", name, "state"], &[]);
            backend.send(Method::DELETE, &path, &()).await?
        }
        Backend::Store(store) => {
            let n = name.to_string();
            let forgotten = on_store(store, move |s| Ok(s.forget_source(&n)?)).await?;
            if !forgotten && !config.sources.contains_key(name) {
                bail!(
                    "no source {name} in {} and no stored state of it in {}: nothing to forget (is the name right? `pollhook status` lists the sources)",
                    config.file.display(),
                    config.state_dir.display()
                );
            }
            ForgetResponse {
                source: name.to_string(),
                forgotten,
            }
        }
    };
    if r.forgotten {
        println!("forgot the stored state of source {name}");
    } else {
        println!("source {name} had no stored state; nothing changed");
    }
    Ok(ExitCode::SUCCESS)
}
