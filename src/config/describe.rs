//! What `pollhook check` shows of a loaded config.

use chrono::Utc;

use super::{ClientIdentity, Config, ProxySetting, StoreConfig};

/// What `pollhook check` prints for a valid config. Never includes secrets: URLs are
/// redacted (the store's by [`super::PostgresConfig::display`], a proxy's without user
/// and password), secrets and header values are not shown.
pub fn describe(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", config.file.display());
    let _ = writeln!(out, "state_dir: {}", config.state_dir.display());
    let _ = match &config.store {
        StoreConfig::Sled => writeln!(out, "store: sled in {}", config.state_dir.display()),
        StoreConfig::Postgres(pg) => writeln!(
            out,
            "store: PostgreSQL at {} (lease {}{})",
            pg.display,
            humantime::format_duration(pg.lease),
            pg.instance
                .as_ref()
                .map(|name| format!(", instance {name}"))
                .unwrap_or_default()
        ),
    };
    let _ = writeln!(out, "\nsources ({}):", config.sources.len());
    let now = Utc::now();
    for s in config.sources.values() {
        let _ = writeln!(
            out,
            "  {}: {}, {}, items at {:?}, id at {:?} -> {}",
            s.name,
            match s.http() {
                Some(r) => format!("{} {}", r.method, r.display_url),
                None => s.location(),
            },
            s.schedule_text(),
            s.items,
            s.id,
            s.targets.join(", ")
        );
        let next: Vec<String> = s
            .schedule
            .upcoming(now, 3)
            .iter()
            .map(|t| s.schedule.format_time(*t))
            .collect();
        let _ = writeln!(out, "    next polls: {}", next.join(", "));
        if let Some(reach) = reach(&s.proxy, s.client_identity.as_ref()) {
            let _ = writeln!(out, "    {reach}");
        }
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
            t.display_url,
            t.signer.scheme(),
            humantime::format_duration(t.timeout),
            retry.join(", ")
        );
        if let Some(reach) = reach(&t.proxy, t.client_identity.as_ref()) {
            let _ = writeln!(out, "    {reach}");
        }
        if let Some(takes) = takes(&t.accepts, &t.content_type) {
            let _ = writeln!(out, "    {takes}");
        }
    }
    let h = &config.health;
    let _ = writeln!(
        out,
        "\nhealth: events to {}; a source fails after {} failed polls in a row (unless it sets fail_after), a target when its oldest pending delivery is older than {}",
        match h.routes.targets() {
            [] => "no target".to_string(),
            t => t.join(", "),
        },
        h.fail_after,
        humantime::format_duration(h.target_alert_after)
    );
    out
}

/// What a target takes and the body it is sent, in words; `None` for every event as
/// its envelope.
fn takes(a: &crate::route::Accepts, content_type: &reqwest::header::HeaderValue) -> Option<String> {
    let mut parts = Vec::new();
    if !a.types.is_empty() {
        let globs: Vec<&str> = a.types.iter().map(|g| g.as_str()).collect();
        parts.push(format!("types {}", globs.join(", ")));
    }
    if let Some(f) = &a.filter {
        parts.push(format!("filter {:?}", f.program()));
    }
    if let Some(b) = &a.body {
        parts.push(format!(
            "body {:?} as {}",
            b.program(),
            content_type.to_str().unwrap_or("?")
        ));
    }
    (!parts.is_empty()).then(|| format!("takes {}", parts.join("; ")))
}

/// A source's or target's proxy and client certificate in words (the proxy without
/// credentials), or `None` when it has neither setting.
fn reach(proxy: &ProxySetting, identity: Option<&ClientIdentity>) -> Option<String> {
    let parts: Vec<String> = proxy
        .describe()
        .into_iter()
        .chain(identity.map(|id| {
            format!(
                "client certificate {} (key {})",
                id.cert_file.display(),
                id.key_file.display()
            )
        }))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}
