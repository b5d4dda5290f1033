//! The command line: parses arguments, then runs a command. `main.rs` only sets up
//! logging and calls [`Cli::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{redact_url, Config};

/// Turns pull-only HTTP APIs into signed webhooks: polls sources, diffs what changed,
/// delivers every change to your targets, retrying until they accept.
#[derive(Debug, Parser)]
#[command(name = "pollhook", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll every source on its schedule and deliver the changes.
    Run(ConfigArg),
    /// Validate the config; print each source with its next poll times, and each target.
    Check(ConfigArg),
    /// Run a self-contained demo on 127.0.0.1: a changing sample API, a verifying
    /// receiver, and pollhook between them. Ctrl-C stops it.
    Demo {
        /// Stop by itself after this long (e.g. "30s"); default: run until Ctrl-C.
        #[arg(long = "for", value_parser = crate::config::parse_duration)]
        run_for: Option<std::time::Duration>,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(
        long,
        short,
        env = "POLLHOOK_CONFIG",
        default_value = "/etc/pollhook/config.toml"
    )]
    pub config: PathBuf,
}

impl Cli {
    /// Runs the command; errors are printed by the caller.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(c) => {
                // Handlers first: a SIGTERM during start-up then stops cleanly too.
                let token = CancellationToken::new();
                crate::daemon::cancel_on_signals(token.clone());
                let config = Config::load(&c.config)?;
                crate::daemon::run(config, token).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Check(c) => {
                let config = Config::load(&c.config)?;
                print!("{}", describe(&config));
                Ok(ExitCode::SUCCESS)
            }
            Command::Demo { run_for } => {
                let token = CancellationToken::new();
                crate::daemon::cancel_on_signals(token.clone());
                if let Some(d) = run_for {
                    let t = token.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        t.cancel();
                    });
                }
                crate::demo::run(token).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// What `pollhook check` prints for a valid config. Never includes secrets: URLs are
/// redacted, secrets and header values are not shown.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", config.file.display());
    let _ = writeln!(out, "state_dir: {}", config.state_dir.display());
    let _ = writeln!(out, "\nsources ({}):", config.sources.len());
    let now = Utc::now();
    for s in config.sources.values() {
        let _ = writeln!(
            out,
            "  {}: {} {}, {}, items at {:?}, id at {:?} -> {}",
            s.name,
            s.method,
            redact_url(&s.url),
            s.schedule_text(),
            s.items,
            s.id,
            s.targets.join(", ")
        );
        let next: Vec<String> = s
            .schedule
            .upcoming(now, 3)
            .iter()
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
            .collect();
        let _ = writeln!(out, "    next polls: {}", next.join(", "));
    }
    let _ = writeln!(out, "\ntargets ({}):", config.targets.len());
    for t in config.targets.values() {
        let retry: Vec<String> = t
            .retry
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect();
        let _ = writeln!(
            out,
            "  {}: POST {}, signature {}, timeout {}, retry [{}]",
            t.name,
            redact_url(&t.url),
            t.signer.scheme(),
            humantime::format_duration(t.timeout),
            retry.join(", ")
        );
    }
    out
}
