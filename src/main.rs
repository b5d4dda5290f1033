//! The `pollhook` binary: parse the command line, set up logging, run, and print any
//! error with its causes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use pollhook::config::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    pollhook::malloc::limit_arenas();
    let cli = pollhook::cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format() {
        // One object per line, the event's fields at the top level, for log shippers.
        LogFormat::Json => logs.json().flatten_event(true).init(),
        // Colours only on a terminal: journald and files get plain lines.
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    match pollhook::limits::raise_open_files() {
        Ok(Some((before, now))) if now > before => {
            tracing::debug!(
                before,
                now,
                "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
            );
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %pollhook::error::chain(&e), "cannot raise the open-files limit (RLIMIT_NOFILE); with many connections, polls may fail with \"Too many open files\"")
        }
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli.run());
    // A blocking thread still busy (a transform that never ends, given up on by its
    // poll) must not hold up the exit: the daemon has flushed the store by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
