//! The systemd unit, `systemd/pollhook.service`, checked the way an operator would meet it:
//!
//! - `systemd-analyze verify` accepts it (no unknown keys, no unparsable values, every
//!   executable present), with `ExecStart` pointed at the binary cargo built;
//! - `systemd-analyze security --offline=true` rates its exposure at 2.0 or lower, so a
//!   sandbox setting dropped by mistake fails the build;
//! - `TimeoutStopSec` leaves room for the default `shutdown_grace`, so a plain
//!   `systemctl stop` never ends in SIGKILL;
//! - the directories systemd hands over ($STATE_DIRECTORY, $CREDENTIALS_DIRECTORY) reach
//!   the config as systemd/README.md says.
//!
//! The first two need `systemd-analyze` (systemd 250 or newer for `--offline`); where it
//! is missing they print a note and pass, because CI machines and containers often lack
//! systemd. Each test takes well under a second.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pollhook::config::{parse_duration, Config};
use pollhook::sign::{Scheme, Signer};

use crate::process::BIN;
use crate::support::SECRET;

/// What `systemd-analyze security` may rate the unit at most (0 = fully sandboxed,
/// 10 = unprotected; systemd calls up to 2.0 "OK" and below 1.0 "SAFE"). The unit
/// measured 1.1 with systemd 252.
const MAX_EXPOSURE: f64 = 2.0;

/// The path the unit's `ExecStart` names, as installed by the Debian package.
const INSTALLED_BINARY: &str = "/usr/bin/pollhook";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/pollhook.service")
}

fn unit_text() -> String {
    let path = unit_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The value of `key` in `[section]`; the last assignment wins, as in systemd for the
/// single-valued settings asked about here. Comments and blank lines are skipped.
fn setting(unit: &str, section: &str, key: &str) -> Option<String> {
    let mut current = "";
    let mut value = None;
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name;
            continue;
        }
        if current != section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            if k.trim() == key {
                value = Some(v.trim().to_string());
            }
        }
    }
    value
}

/// A systemd time span: `30s`, `1min 30s`, `infinity`, or a bare number of seconds.
fn time_span(text: &str) -> Duration {
    if text == "infinity" {
        return Duration::MAX;
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Duration::from_secs(secs);
    }
    parse_duration(text).unwrap_or_else(|e| panic!("unit time span {text:?}: {e}"))
}

/// Runs `systemd-analyze` with `args`; `None`, after a note, where it is not installed.
fn systemd_analyze(args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("note: systemd-analyze is not installed; skipping this check of the unit");
            None
        }
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

/// The unit as it would be installed, with `ExecStart` naming the binary cargo built
/// (verify checks that the executable exists), in a directory of its own.
fn unit_for_this_build(dir: &Path) -> PathBuf {
    let unit = unit_text();
    let prefix = format!("ExecStart={INSTALLED_BINARY} ");
    assert!(
        unit.lines().any(|l| l.starts_with(&prefix)),
        "the unit should start {INSTALLED_BINARY}, where the Debian package installs it"
    );
    let built = format!("ExecStart=\"{BIN}\" ");
    let rewritten: String = unit
        .lines()
        .map(|l| match l.strip_prefix(&prefix) {
            Some(rest) => format!("{built}{rest}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    let path = dir.join("pollhook.service");
    std::fs::write(&path, rewritten).expect("write the unit copy");
    path
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let unit = unit_for_this_build(dir.path());
    // No man page lookups or generators: they test the host, not the unit. Only this unit
    // decides the exit status.
    let Some(out) = systemd_analyze(&[
        "verify",
        "--man=no",
        "--generators=no",
        "--recursive-errors=no",
        unit.to_str().expect("UTF-8 temporary path"),
    ]) else {
        return;
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify prints a warning and still exits 0 for an unknown key or a value it cannot
    // parse (it ignores the setting, as systemd would), so any line about our unit fails.
    // Lines about the host's own units are its business.
    let ours: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("pollhook.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify rejected the unit ({}):\n{report}",
        out.status
    );
}

#[test]
fn unit_exposure_is_at_most_two() {
    let unit = unit_path();
    let Some(out) = systemd_analyze(&[
        "security",
        "--offline=true",
        "--no-pager",
        unit.to_str().expect("UTF-8 manifest path"),
    ]) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("--offline") {
        eprintln!(
            "note: this systemd-analyze has no --offline (systemd < 250); skipping: {stderr}"
        );
        return;
    }
    // "→ Overall exposure level for pollhook.service: 1.1 OK 🙂"
    let exposure = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.rsplit_once(": "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in the output ({}):\n{stdout}{stderr}",
                out.status
            )
        });
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE:.1}; the settings marked ✗ below cost it:\n{stdout}"
    );
}

#[test]
fn stop_timeout_exceeds_the_default_shutdown_grace() {
    // The default comes from the library: a config that leaves shutdown_grace unset
    // (README, "Top level": `shutdown_grace` defaults to "10s").
    let minimal = r#"
        [targets.t]
        url = "https://example.com/hook"
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        [sources.s]
        url = "https://example.com/items"
        interval = "1m"
        items = ""
        id = "/id"
    "#;
    let grace = Config::parse(minimal, Path::new("/etc/pollhook/config.toml"), &|_| None)
        .expect("minimal config")
        .shutdown_grace;

    let stop = setting(&unit_text(), "Service", "TimeoutStopSec")
        .expect("the unit sets TimeoutStopSec (systemd's 90s default is a host setting)");
    let stop = time_span(&stop);
    // After the grace pollhook still flushes the database and exits; five seconds is
    // ample for that, and a timeout closer to the grace would SIGKILL a clean stop.
    let room = Duration::from_secs(5);
    assert!(
        stop >= grace + room,
        "TimeoutStopSec ({stop:?}) must exceed the default shutdown_grace ({grace:?}) by at least {room:?}"
    );
}

#[test]
fn state_and_credentials_directories_reach_the_config() {
    let unit = unit_text();
    assert_eq!(
        setting(&unit, "Service", "StateDirectory").as_deref(),
        Some("pollhook")
    );

    // What systemd sets up for the service: $STATE_DIRECTORY from StateDirectory=, and a
    // credential loaded with LoadCredential=my-app:… (file contents end in a newline).
    let credentials = tempfile::tempdir().expect("temporary directory");
    let secret = SECRET;
    std::fs::write(credentials.path().join("my-app"), format!("{secret}\n")).unwrap();
    let credentials_dir = credentials.path().to_str().unwrap().to_string();
    let service_env = |name: &str| match name {
        "STATE_DIRECTORY" => Some("/var/lib/pollhook".to_string()),
        "CREDENTIALS_DIRECTORY" => Some(credentials_dir.clone()),
        _ => None,
    };
    // The config systemd/README.md shows: no state_dir, the secret from a credential.
    let text = r#"
        [targets.my-app]
        url = "https://example.com/hook"
        secret_file = "${CREDENTIALS_DIRECTORY}/my-app"
        [sources.s]
        url = "https://example.com/items"
        interval = "1m"
        items = ""
        id = "/id"
    "#;
    let path = Path::new("/etc/pollhook/config.toml");
    let config = Config::parse(text, path, &service_env).expect("config under systemd");
    assert_eq!(config.state_dir, PathBuf::from("/var/lib/pollhook"));
    assert_eq!(
        config.targets["my-app"].signer,
        Signer::new(Scheme::Standard, &[secret.to_string()]).unwrap(),
        "the target signs with the credential's contents"
    );

    // Outside the service (`pollhook check` in a shell) the variable is unset: an error
    // that names it, not a path starting "/my-app".
    let err = Config::parse(text, path, &|_| None).expect_err("no credentials directory");
    assert!(err.to_string().contains("CREDENTIALS_DIRECTORY"), "{err}");
}
