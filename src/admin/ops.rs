//! The operator's operations on the store, shared by the admin API (in the daemon) and
//! the CLI (when no daemon runs and it opens the store itself), with the JSON shapes
//! both speak. Blocking: they call the store directly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::running::SourceStatus;
use crate::store::{Delivery, DeliveryStatus, Store, StoreError};

/// The most deliveries one listing returns.
pub const MAX_LIMIT: usize = 10_000;

/// One delivery as listed: what an operator needs, not the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub item_id: String,
    pub target: String,
    /// `pending` or `dead`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt: Option<DateTime<Utc>>,
    /// When the change was detected.
    pub detected_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl DeliveryView {
    pub fn new(d: &Delivery, status: DeliveryStatus) -> DeliveryView {
        let pending = status == DeliveryStatus::Pending;
        DeliveryView {
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            source: d.source.clone(),
            item_id: d.item_id.clone(),
            target: d.target.clone(),
            status: if pending { "pending" } else { "dead" }.to_string(),
            attempts: d.attempts,
            next_attempt: pending
                .then(|| DateTime::from_timestamp_millis(d.next_at_ms))
                .flatten(),
            detected_at: DateTime::from_timestamp_millis(d.created_ms),
            last_error: d.last_error.clone(),
        }
    }
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeliveryQuery {
    /// `pending`, `dead`, or none for both (pending first).
    pub status: Option<String>,
    pub target: Option<String>,
    pub limit: Option<usize>,
}

/// A request that cannot be served as asked: the message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Refuses a `kind` ("source" or "target") name that breaks the config's name rule,
/// before it reaches the store (whose keys are built from names).
pub fn check_name(kind: &str, name: &str) -> Result<(), OpError> {
    if crate::config::valid_name(name) {
        return Ok(());
    }
    Err(OpError::BadRequest(format!(
        "{name:?} is not a valid {kind} name: {}; check it against the config",
        crate::config::NAME_RULE
    )))
}

/// Pending and/or dead deliveries, oldest first within each.
pub fn deliveries(store: &dyn Store, q: &DeliveryQuery) -> Result<Vec<DeliveryView>, OpError> {
    let limit = q.limit.unwrap_or(100).min(MAX_LIMIT);
    let (pending, dead) = match q.status.as_deref() {
        None | Some("") | Some("all") => (true, true),
        Some("pending") => (true, false),
        Some("dead") => (false, true),
        Some(other) => {
            return Err(OpError::BadRequest(format!(
                "status {other:?} is not one of pending, dead"
            )))
        }
    };
    let target = q.target.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = target {
        check_name("target", t)?;
    }
    let mut out = Vec::new();
    if pending {
        for d in store.outbox(target, limit)? {
            out.push(DeliveryView::new(&d, DeliveryStatus::Pending));
        }
    }
    if dead && out.len() < limit {
        for d in store.dead(target, limit - out.len())? {
            out.push(DeliveryView::new(&d, DeliveryStatus::Dead));
        }
    }
    Ok(out)
}

/// `POST /v1/deliveries/replay`: one event (`{"event": "evt_…"}`) or every dead
/// delivery (`{"status": "dead"}`, optionally of one target).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub event: Option<String>,
    pub status: Option<String>,
    pub target: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplayResponse {
    /// Deliveries put back in the queue, with fresh attempts.
    pub replayed: usize,
    /// Deliveries of the event that were still pending (they stay as they are).
    pub already_pending: usize,
    pub deliveries: Vec<DeliveryView>,
}

/// Moves dead deliveries back to the outbox with fresh attempts; the caller wakes the
/// targets of the returned deliveries. A replayed delivery is queued after every
/// delivery pending now, so it may reach its target after later changes of its item.
/// Only deliveries to `configured` targets are replayed: another target's would wait
/// in the outbox with no worker to send them.
pub fn replay(
    store: &dyn Store,
    req: &ReplayRequest,
    configured: &BTreeMap<String, String>,
    now_ms: i64,
) -> Result<ReplayResponse, OpError> {
    let target = req.target.as_deref().filter(|t| !t.is_empty());
    if let Some(t) = target {
        check_name("target", t)?;
        if !configured.contains_key(t) {
            return Err(OpError::BadRequest(format!(
                "target {t:?} is not in the config; configure it (and reload) before replaying to it"
            )));
        }
    }
    let targets: Vec<&str> = match target {
        Some(t) => vec![t],
        None => configured.keys().map(String::as_str).collect(),
    };
    let (event, already_pending) = match (req.event.as_deref(), req.status.as_deref()) {
        (Some(event), None) => {
            let found: Vec<_> = store
                .find_event(event)?
                .into_iter()
                .filter(|(_, d)| target.is_none_or(|t| d.target == t))
                .collect();
            if found.is_empty() {
                return Err(OpError::NotFound(format!(
                    "no pending or dead delivery of event {event}{}: it was delivered (delivered events are not kept) or the id is wrong",
                    target.map(|t| format!(" to target {t}")).unwrap_or_default()
                )));
            }
            let pending = found
                .iter()
                .filter(|(s, _)| *s == DeliveryStatus::Pending)
                .count();
            (Some(event), pending)
        }
        (None, Some("dead")) => (None, 0),
        _ => {
            return Err(OpError::BadRequest(
                "send {\"event\": \"evt_…\"} to replay one event, or {\"status\": \"dead\"} (with an optional \"target\") to replay dead deliveries".into(),
            ))
        }
    };
    let mut moved = Vec::new();
    for t in targets {
        moved.extend(store.replay_dead(Some(t), event, now_ms)?);
    }
    Ok(response(moved, already_pending))
}

fn response(moved: Vec<Delivery>, already_pending: usize) -> ReplayResponse {
    ReplayResponse {
        replayed: moved.len(),
        already_pending,
        deliveries: moved
            .iter()
            .map(|d| DeliveryView::new(d, DeliveryStatus::Pending))
            .collect(),
    }
}

/// One target at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    pub name: String,
    /// The URL without credentials or query; none for a target no longer configured
    /// that still holds deliveries.
    pub url: Option<String>,
    pub pending: u64,
    pub dead: u64,
    /// Age of the oldest pending delivery, seconds.
    pub oldest_pending_age_seconds: Option<f64>,
    /// In a cluster: the instance holding the target's lease, which sends its
    /// deliveries (none while no live instance holds it; always none for a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

/// The configured targets' names and URLs (without credentials), for [`targets`].
pub fn configured_targets(config: &Config) -> BTreeMap<String, String> {
    config
        .targets
        .iter()
        .map(|(name, t)| (name.clone(), t.display_url.clone()))
        .collect()
}

/// Every configured target (name → URL, from [`configured_targets`]), and every other
/// one that holds deliveries.
pub fn targets(
    store: &dyn Store,
    configured: &BTreeMap<String, String>,
    now_ms: i64,
) -> Result<Vec<TargetView>, OpError> {
    let stats = store.target_stats()?;
    let cluster = store.cluster()?;
    let cluster = cluster.as_ref();
    let mut names: Vec<&String> = configured.keys().chain(stats.keys()).collect();
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|name| {
            let s = stats.get(name).cloned().unwrap_or_default();
            TargetView {
                holder: cluster
                    .and_then(|c| c.holder("target", name))
                    .map(str::to_string),
                name: name.clone(),
                url: configured.get(name).cloned(),
                pending: s.pending,
                dead: s.dead,
                oldest_pending_age_seconds: s
                    .oldest_pending_ms
                    .map(|t| (now_ms - t).max(0) as f64 / 1000.0),
            }
        })
        .collect())
}

/// Every configured source: the statuses of those running here (`local`), and, in a
/// cluster, the others as stored, each with its holder.
pub fn sources(
    store: &dyn Store,
    configured: &BTreeMap<String, std::sync::Arc<crate::config::Source>>,
    local: Vec<SourceStatus>,
) -> Result<Vec<SourceStatus>, OpError> {
    let Some(cluster) = store.cluster()? else {
        return Ok(local);
    };
    let mut by_name: BTreeMap<String, SourceStatus> =
        local.into_iter().map(|s| (s.name.clone(), s)).collect();
    let missing = configured.keys().any(|n| !by_name.contains_key(n));
    let stored: BTreeMap<String, u64> = if missing {
        store
            .sources()?
            .into_iter()
            .map(|(n, s)| (n, s.items))
            .collect()
    } else {
        BTreeMap::new()
    };
    for (name, source) in configured {
        by_name
            .entry(name.clone())
            .or_insert_with(|| {
                SourceStatus::new(source, stored.get(name).copied().unwrap_or(0), None)
            })
            .holder = cluster.holder("source", name).map(str::to_string);
    }
    Ok(by_name.into_values().collect())
}

/// What `forget` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForgetResponse {
    pub source: String,
    /// Whether the source had stored state.
    pub forgotten: bool,
}

/// Drops a source's stored state ([`Store::forget_source`]). A name that is neither
/// `configured` nor stored is a mistake, not a no-op: `NotFound` with `unknown`, which
/// tells the caller's user where the name was looked for and how to list the sources.
pub fn forget(
    store: &dyn Store,
    name: &str,
    configured: bool,
    unknown: String,
) -> Result<ForgetResponse, OpError> {
    check_name("source", name)?;
    let forgotten = store.forget_source(name)?;
    if !forgotten && !configured {
        return Err(OpError::NotFound(unknown));
    }
    Ok(ForgetResponse {
        source: name.to_string(),
        forgotten,
    })
}
