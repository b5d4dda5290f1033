//! The command line: parses arguments, then runs a command. `main.rs` only sets up
//! logging and calls [`Cli::run`].
//!
//! `backend` reaches pollhook's state, through the running daemon (`client`, its admin
//! API's client) or the store; `operator` holds the commands an operator runs against it;
//! `migrate` moves a sled `state_dir` into PostgreSQL (`migrate-store`).

mod backend;
mod client;
mod migrate;
mod operator;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{describe, Config};

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
    /// Sources and targets at a glance: last poll, errors, pending and dead deliveries.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List pending and dead deliveries, oldest first.
    Deliveries {
        #[command(flatten)]
        config: ConfigArg,
        /// Only these.
        #[arg(long, value_parser = ["pending", "dead"])]
        status: Option<String>,
        /// Only deliveries to this target.
        #[arg(long)]
        target: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead deliveries back in the queue with fresh attempts: one event's, or every
    /// dead one (of a target).
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// The event to replay (its dead deliveries, to every target or to --target).
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        event: Option<String>,
        /// Replay every dead delivery.
        #[arg(long)]
        dead: bool,
        /// Only deliveries to this target.
        #[arg(long)]
        target: Option<String>,
    },
    /// Poll one source now. With --dry-run: fetch and diff, print the events it would
    /// emit as JSON lines, commit and send nothing.
    Poll {
        #[command(flatten)]
        config: ConfigArg,
        source: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop a source's stored items (its next poll is a first poll again). Pending and
    /// dead deliveries stay.
    Forget {
        #[command(flatten)]
        config: ConfigArg,
        source: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Copy a single-node installation's state from its sled state_dir into the
    /// PostgreSQL database of the config's [store].
    ///
    /// Copies every source's state (its generation, so event ids stay the same) and
    /// stored items, and every pending and dead delivery (attempts, last error, body
    /// bytes, order per target), in one transaction: all of it or nothing. The first
    /// poll on PostgreSQL then finds the items it knows (no flood of created events),
    /// and the pending deliveries are sent from where they were.
    ///
    /// Refused while a daemon runs on the state_dir or an instance on the database,
    /// and into a database that already holds state (use a new, empty one). The
    /// state_dir is only read: it stays as a backup until you delete it.
    #[command(name = "migrate-store")]
    MigrateStore {
        #[command(flatten)]
        config: ConfigArg,
        /// The state_dir to copy from (default: the config's state_dir).
        #[arg(long, value_name = "DIR")]
        from: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
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
    /// How to write log lines: the daemon's config may ask for JSON. Read before the
    /// config is loaded (logging comes first), so a file that does not parse falls back
    /// to text and the load reports why.
    pub fn log_format(&self) -> crate::config::LogFormat {
        match &self.command {
            Command::Run(c) => crate::config::peek_log_format(&c.config),
            _ => crate::config::LogFormat::Text,
        }
    }

    /// Runs the command; errors are printed by the caller.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Run(c) => {
                // Handlers first: a SIGTERM during start-up then stops cleanly too.
                let token = CancellationToken::new();
                let signals = crate::daemon::install_signals(token.clone());
                let config = Config::load(&c.config)?;
                let options = crate::daemon::Options {
                    reload: Some(signals.reload),
                    notifier: crate::notify::Notifier::from_env(),
                    force: Some(signals.force),
                };
                crate::daemon::run_with(config, None, token, options).await?;
                Ok(ExitCode::SUCCESS)
            }
            Command::Status { config, json } => {
                operator::status(&Config::load(&config.config)?, json).await
            }
            Command::Deliveries {
                config,
                status,
                target,
                limit,
                json,
            } => {
                let q = crate::admin::ops::DeliveryQuery {
                    status,
                    target,
                    limit: Some(limit),
                };
                operator::deliveries(&Config::load(&config.config)?, q, json).await
            }
            Command::Replay {
                config,
                event,
                dead,
                target,
            } => {
                let req = crate::admin::ops::ReplayRequest {
                    event,
                    status: dead.then(|| "dead".to_string()),
                    target,
                };
                operator::replay(&Config::load(&config.config)?, req).await
            }
            Command::Poll {
                config,
                source,
                dry_run,
            } => operator::poll(&Config::load(&config.config)?, &source, dry_run).await,
            Command::Forget {
                config,
                source,
                yes,
            } => operator::forget(&Config::load(&config.config)?, &source, yes).await,
            Command::MigrateStore { config, from } => {
                migrate::migrate_store(&Config::load(&config.config)?, from).await
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut cmd = Cli::command();
                clap_complete::generate(shell, &mut cmd, "pollhook", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
            Command::Check(c) => {
                let config = Config::load(&c.config)?;
                print!("{}", describe(&config));
                Ok(ExitCode::SUCCESS)
            }
            Command::Demo { run_for } => {
                let token = CancellationToken::new();
                crate::daemon::install_signals(token.clone());
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
