//! pollhook's own events: a source whose polls keep failing, a target that has stopped
//! accepting, and their recoveries, delivered like any other event (through the outbox:
//! signed, retried, durable, with stable ids) to the `[health] targets`.
//!
//! What each source and target is (failing or not, since when, failures in a row) lives
//! in the store, beside the events it makes: a record is replaced only if it is still the
//! one its writer read, in the transaction that queues the event, so on sled and on
//! PostgreSQL alike one `failing` is sent per episode, whichever instance sees it, a
//! restart or a takeover neither repeats it nor forgets it, and its `recovered` follows.
//!
//! The decisions ([`after_poll`], [`after_check`]) are pure; [`SourceHealth`] and
//! [`watch_targets`] read and write the store around them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::event::Event;
use crate::route::Routes;
use crate::running::Handle;
use crate::store::{blocking, Work};

pub const SOURCE_FAILING: &str = "pollhook.source.failing";
pub const SOURCE_RECOVERED: &str = "pollhook.source.recovered";
pub const TARGET_FAILING: &str = "pollhook.target.failing";
pub const TARGET_RECOVERED: &str = "pollhook.target.recovered";

/// The `source` of every health event's envelope and delivery.
pub const ORIGIN: &str = "pollhook";

/// A source or target, as its health record is keyed: `source:<name>`, `target:<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject<'a> {
    Source(&'a str),
    Target(&'a str),
}

impl Subject<'_> {
    pub fn key(&self) -> String {
        match self {
            Subject::Source(name) => format!("source:{name}"),
            Subject::Target(name) => format!("target:{name}"),
        }
    }
}

/// What the store keeps of one source's or target's health. The default (nothing
/// stored) is healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// A source's failed polls in a row (0 for a target).
    #[serde(default)]
    pub failures: u32,
    /// When the first of those failed polls ended, or when the target started failing;
    /// unix milliseconds.
    #[serde(default)]
    pub since_ms: Option<i64>,
    /// `failing` was sent (or would have been, with no health targets) and `recovered`
    /// not yet.
    #[serde(default)]
    pub failing: bool,
    /// Episodes of failing so far: the `failing` and `recovered` of one episode carry
    /// its number, which makes their ids.
    #[serde(default)]
    pub episode: u64,
    /// A source's last poll error, as logged (secrets taken out where it was made).
    #[serde(default)]
    pub last_error: Option<String>,
}

impl HealthRecord {
    /// The record as stored: its JSON, whose bytes a store compares to see whether the
    /// record is still the one read.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of integers, booleans and strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(key: &str, bytes: &[u8]) -> Result<HealthRecord, crate::store::StoreError> {
        serde_json::from_slice(bytes).map_err(|e| crate::store::StoreError::Corrupt {
            key: format!("health/{key}"),
            reason: e.to_string(),
        })
    }
}

/// A change of a source's or target's health that makes an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Failing,
    Recovered {
        /// When it started failing (unix ms).
        since_ms: i64,
    },
}

/// What a poll's outcome (`error`: None for a good poll) does to a source's `record`:
/// the record to store and the event to send, or None when nothing is to be written (a
/// good poll of a healthy source: the usual case, which costs no store call).
pub fn after_poll(
    record: &HealthRecord,
    error: Option<&str>,
    fail_after: u32,
    now_ms: i64,
) -> Option<(HealthRecord, Option<Transition>)> {
    match error {
        None if record.failures == 0 && !record.failing => None,
        None => {
            let transition = record.failing.then(|| Transition::Recovered {
                since_ms: record.since_ms.unwrap_or(now_ms),
            });
            let next = HealthRecord {
                episode: record.episode,
                ..HealthRecord::default()
            };
            Some((next, transition))
        }
        Some(error) => {
            let mut next = record.clone();
            next.failures = next.failures.saturating_add(1);
            next.since_ms = next.since_ms.or(Some(now_ms));
            next.last_error = Some(error.to_string());
            let mut transition = None;
            if !next.failing && next.failures >= fail_after.max(1) {
                next.failing = true;
                next.episode += 1;
                transition = Some(Transition::Failing);
            }
            Some((next, transition))
        }
    }
}

/// What a look at a target's oldest pending delivery (`oldest_ms`, detected then; None
/// when nothing is pending) does to its `record`. It is failing once that delivery is
/// older than `alert_after`, and recovered once it has drained: nothing pending, or
/// nothing older than a tenth of `alert_after` (so a target hovering at the threshold
/// does not flap).
pub fn after_check(
    record: &HealthRecord,
    oldest_ms: Option<i64>,
    alert_after: Duration,
    now_ms: i64,
) -> Option<(HealthRecord, Option<Transition>)> {
    let age_ms = oldest_ms.map(|at| now_ms.saturating_sub(at));
    let limit_ms = alert_after.as_millis() as i64;
    if !record.failing {
        if age_ms.is_some_and(|age| age > limit_ms) {
            let next = HealthRecord {
                failing: true,
                since_ms: Some(now_ms),
                episode: record.episode + 1,
                ..HealthRecord::default()
            };
            return Some((next, Some(Transition::Failing)));
        }
        return None;
    }
    if age_ms.is_none_or(|age| age <= limit_ms / 10) {
        let next = HealthRecord {
            episode: record.episode,
            ..HealthRecord::default()
        };
        let since_ms = record.since_ms.unwrap_or(now_ms);
        return Some((next, Some(Transition::Recovered { since_ms })));
    }
    None
}

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The event of `transition` of `subject` in `record` (as stored after it), detected at
/// `now_ms`; `oldest_ms` is a target's oldest pending delivery.
pub fn event(
    subject: Subject<'_>,
    transition: &Transition,
    record: &HealthRecord,
    previous: &HealthRecord,
    oldest_ms: Option<i64>,
    now_ms: i64,
) -> Event {
    let (event_type, data) = match (subject, transition) {
        (Subject::Source(name), Transition::Failing) => (
            SOURCE_FAILING,
            json!({
                "source": name,
                "error": record.last_error,
                "failures": record.failures,
                "failing_since": record.since_ms.map(rfc3339),
            }),
        ),
        (Subject::Source(name), Transition::Recovered { since_ms }) => (
            SOURCE_RECOVERED,
            json!({
                "source": name,
                "failing_since": rfc3339(*since_ms),
                "down_seconds": (now_ms - since_ms).max(0) / 1000,
                "failures": previous.failures,
            }),
        ),
        (Subject::Target(name), Transition::Failing) => (
            TARGET_FAILING,
            json!({
                "target": name,
                "oldest_pending_since": oldest_ms.map(rfc3339),
                "oldest_pending_age_seconds": oldest_ms.map(|at| (now_ms - at).max(0) / 1000),
            }),
        ),
        (Subject::Target(name), Transition::Recovered { since_ms }) => (
            TARGET_RECOVERED,
            json!({
                "target": name,
                "failing_since": rfc3339(*since_ms),
                "down_seconds": (now_ms - since_ms).max(0) / 1000,
            }),
        ),
    };
    let key = subject.key();
    let id = crate::event::health_event_id(&key, record.episode, event_type);
    let body = serde_json::to_vec(&json!({
        "id": id,
        "type": event_type,
        "timestamp": rfc3339(now_ms),
        "source": ORIGIN,
        "data": data,
    }))
    .unwrap_or_default();
    Event {
        id,
        event_type: event_type.to_string(),
        source: ORIGIN.to_string(),
        item_id: key,
        body,
    }
}

/// Routes `event` to `routes`; a health target whose `filter` or `body` fails on it is
/// skipped with a warning (the transition is recorded all the same: a broken program
/// must not make pollhook forget that a source is failing).
fn routed(routes: &Routes, event: Event) -> Vec<(Event, Arc<[String]>)> {
    let mut out = Vec::new();
    if let Err(e) = routes.route(event.clone(), &mut out) {
        tracing::warn!(error = %crate::error::chain(&e), "a health target's filter or body failed on a health event; that target does not get it (fix the program and reload)");
        out.clear();
        let skip = e.target.clone();
        let names: Vec<String> = routes
            .targets()
            .iter()
            .filter(|t| **t != skip)
            .cloned()
            .collect();
        // One target fewer each time: ends.
        return routed(&routes.only(&names), event);
    }
    out
}

/// Writes `next` over `read` for `subject`, with the event of `transition` routed to
/// the health targets (without `exclude`). Ok(false): the record changed meanwhile.
async fn write(
    handle: &Handle,
    subject: Subject<'_>,
    read: &HealthRecord,
    next: &HealthRecord,
    transition: Option<&Transition>,
    oldest_ms: Option<i64>,
    now_ms: i64,
) -> Result<bool, crate::store::StoreError> {
    let config = handle.config();
    let exclude = match subject {
        Subject::Target(t) => Some(t),
        Subject::Source(_) => None,
    };
    let routes = match exclude {
        Some(t) => config.health.routes.without(t),
        None => config.health.routes.clone(),
    };
    let events = transition
        .map(|t| routed(&routes, event(subject, t, next, read, oldest_ms, now_ms)))
        .unwrap_or_default();
    let key = subject.key();
    let (read, next) = (read.clone(), next.clone());
    let queued: Vec<String> = events.iter().flat_map(|(_, t)| t.iter().cloned()).collect();
    let written = blocking(&handle.store, move |s| {
        s.update_health(&key, &read, &next, events, now_ms)
    })
    .await?;
    if written {
        for t in queued {
            handle.wakes.wake(&t);
        }
    }
    Ok(written)
}

/// A source loop's view of its source's health: the record as last read or written,
/// kept so that a good poll of a healthy source costs nothing.
#[derive(Default)]
pub struct SourceHealth {
    known: Option<HealthRecord>,
}

impl SourceHealth {
    /// Records a poll of `source` that ended with `error` (None: good): counts failures
    /// in a row, and sends `failing` when they reach `fail_after`, `recovered` at the
    /// next good poll. A store error is logged and the next poll tries again.
    pub async fn after_poll(
        &mut self,
        handle: &Handle,
        source: &str,
        fail_after: u32,
        error: Option<&str>,
    ) {
        // Twice: the record may have changed since it was read (another instance held
        // the source meanwhile); then it is read again and decided anew.
        for _ in 0..2 {
            let read = match self.known.clone() {
                Some(r) => r,
                None => match read_record(handle, Subject::Source(source)).await {
                    Some(r) => r,
                    None => return,
                },
            };
            let now_ms = Utc::now().timestamp_millis();
            let Some((next, transition)) = after_poll(&read, error, fail_after, now_ms) else {
                handle.metrics.set_source_failing(source, read.failing);
                self.known = Some(read);
                return;
            };
            let subject = Subject::Source(source);
            match write(
                handle,
                subject,
                &read,
                &next,
                transition.as_ref(),
                None,
                now_ms,
            )
            .await
            {
                Ok(true) => {
                    log_transition(subject, transition.as_ref(), &next);
                    handle.metrics.set_source_failing(source, next.failing);
                    self.known = Some(next);
                    return;
                }
                Ok(false) => self.known = None,
                Err(e) => {
                    tracing::error!(source = %source, error = %crate::error::chain(&e), "cannot record the source's health; the next poll tries again");
                    self.known = None;
                    return;
                }
            }
        }
    }
}

async fn read_record(handle: &Handle, subject: Subject<'_>) -> Option<HealthRecord> {
    let key = subject.key();
    match blocking(&handle.store, move |s| s.health(&key)).await {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(subject = %subject.key(), error = %crate::error::chain(&e), "cannot read health state; trying again later");
            None
        }
    }
}

fn log_transition(subject: Subject<'_>, transition: Option<&Transition>, record: &HealthRecord) {
    match (subject, transition) {
        (Subject::Source(s), Some(Transition::Failing)) => {
            tracing::warn!(source = %s, failures = record.failures, "source is failing: health event {SOURCE_FAILING} queued")
        }
        (Subject::Source(s), Some(Transition::Recovered { .. })) => {
            tracing::info!(source = %s, "source recovered: health event {SOURCE_RECOVERED} queued")
        }
        (Subject::Target(t), Some(Transition::Failing)) => {
            tracing::warn!(target_name = %t, "target is failing (its oldest pending delivery is older than health.target_alert_after): health event {TARGET_FAILING} queued")
        }
        (Subject::Target(t), Some(Transition::Recovered { .. })) => {
            tracing::info!(target_name = %t, "target recovered: health event {TARGET_RECOVERED} queued")
        }
        (_, None) => {}
    }
}

/// How often [`watch_targets`] looks: a tenth of `target_alert_after`, between 100 ms
/// and 30 s.
pub fn check_every(alert_after: Duration) -> Duration {
    (alert_after / 10).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

/// Until `stop`: looks at each target this instance sends for, every
/// [`check_every`], and records when it starts and stops failing. Reads the config
/// running at each round, so a reload applies at the next.
pub async fn watch_targets(handle: Arc<Handle>, stop: tokio_util::sync::CancellationToken) {
    loop {
        let config = handle.config();
        let alert_after = config.health.target_alert_after;
        let targets: Vec<String> = config.targets.keys().cloned().collect();
        for target in targets {
            if stop.is_cancelled() {
                return;
            }
            check_target(&handle, &target, alert_after).await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check_every(alert_after)) => {}
        }
    }
}

async fn check_target(handle: &Handle, target: &str, alert_after: Duration) {
    if !handle.store.holds(Work::Target, target) {
        // Another instance of the cluster looks at it; its failing is shown there.
        handle.metrics.set_target_failing(target, false);
        return;
    }
    let subject = Subject::Target(target);
    for _ in 0..2 {
        let t = target.to_string();
        let key = subject.key();
        let read = blocking(&handle.store, move |s| {
            Ok::<_, crate::store::StoreError>((s.health(&key)?, s.oldest_pending(&t)?))
        })
        .await;
        let (read, oldest_ms) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(target_name = %target, error = %crate::error::chain(&e), "cannot read the target's health; trying again later");
                return;
            }
        };
        let now_ms = Utc::now().timestamp_millis();
        let Some((next, transition)) = after_check(&read, oldest_ms, alert_after, now_ms) else {
            handle.metrics.set_target_failing(target, read.failing);
            return;
        };
        let t = transition.as_ref();
        match write(handle, subject, &read, &next, t, oldest_ms, now_ms).await {
            Ok(true) => {
                log_transition(subject, t, &next);
                handle.metrics.set_target_failing(target, next.failing);
                return;
            }
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(target_name = %target, error = %crate::error::chain(&e), "cannot record the target's health; trying again later");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn a_source_fails_after_fail_after_polls_in_a_row_once_and_recovers_once() {
        let mut r = HealthRecord::default();
        assert_eq!(
            after_poll(&r, None, 3, 0),
            None,
            "healthy and good: no write"
        );
        let mut sent = Vec::new();
        for (i, error) in [
            Some("boom"),
            Some("boom"),
            Some("bang"),
            Some("bang"),
            None,
            None,
        ]
        .into_iter()
        .enumerate()
        {
            let now = i as i64 * MIN;
            if let Some((next, t)) = after_poll(&r, error, 3, now) {
                sent.extend(t);
                r = next;
            }
            if i == 3 {
                assert_eq!(r.failures, 4);
                assert_eq!(r.since_ms, Some(0), "the first failure");
                assert_eq!(r.last_error.as_deref(), Some("bang"));
                assert!(r.failing);
            }
        }
        assert_eq!(
            sent,
            [Transition::Failing, Transition::Recovered { since_ms: 0 }]
        );
        assert_eq!(
            r,
            HealthRecord {
                episode: 1,
                ..HealthRecord::default()
            }
        );
    }

    #[test]
    fn failures_that_do_not_reach_fail_after_are_forgotten_at_the_next_good_poll() {
        let (r, t) = after_poll(&HealthRecord::default(), Some("x"), 2, 5).unwrap();
        assert_eq!((r.failures, r.failing, t), (1, false, None));
        let (r, t) = after_poll(&r, None, 2, 6).unwrap();
        assert_eq!((r, t), (HealthRecord::default(), None));
    }

    #[test]
    fn a_target_fails_when_its_oldest_delivery_is_too_old_and_recovers_when_drained() {
        let hour = Duration::from_secs(3600);
        let r = HealthRecord::default();
        assert_eq!(after_check(&r, None, hour, 0), None);
        assert_eq!(
            after_check(&r, Some(0), hour, 60 * MIN),
            None,
            "exactly at the limit"
        );
        let (r, t) = after_check(&r, Some(0), hour, 61 * MIN).unwrap();
        assert_eq!(
            (r.failing, r.episode, t),
            (true, 1, Some(Transition::Failing))
        );
        assert_eq!(after_check(&r, Some(0), hour, 90 * MIN), None, "no repeat");
        // A newer delivery is now the oldest, but not yet young enough: still failing.
        assert_eq!(after_check(&r, Some(80 * MIN), hour, 90 * MIN), None);
        let (r2, t) = after_check(&r, Some(85 * MIN), hour, 90 * MIN).unwrap();
        assert_eq!(t, Some(Transition::Recovered { since_ms: 61 * MIN }));
        assert!(!r2.failing);
        let (_, t) = after_check(&r, None, hour, 90 * MIN).unwrap();
        assert!(matches!(t, Some(Transition::Recovered { .. })));
    }

    #[test]
    fn events_have_the_documented_shape_and_ids_per_episode() {
        let failing = HealthRecord {
            failures: 3,
            since_ms: Some(0),
            failing: true,
            episode: 2,
            last_error: Some("https://api.example.com/x: status 500".into()),
        };
        let e = event(
            Subject::Source("gh"),
            &Transition::Failing,
            &failing,
            &failing,
            None,
            2 * MIN,
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(v["type"], SOURCE_FAILING);
        assert_eq!(v["id"], e.id.as_str());
        assert_eq!(v["source"], "pollhook");
        assert_eq!(v["timestamp"], "1970-01-01T00:02:00Z");
        assert_eq!(v["data"]["source"], "gh");
        assert_eq!(v["data"]["failures"], 3);
        assert_eq!(v["data"]["failing_since"], "1970-01-01T00:00:00Z");
        assert_eq!(v["data"]["error"], "https://api.example.com/x: status 500");
        assert_eq!(e.item_id, "source:gh");
        let healthy = HealthRecord {
            episode: 2,
            ..HealthRecord::default()
        };
        let r = event(
            Subject::Source("gh"),
            &Transition::Recovered { since_ms: 0 },
            &healthy,
            &failing,
            None,
            10 * MIN,
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], SOURCE_RECOVERED);
        assert_eq!(v["data"]["down_seconds"], 600);
        assert_eq!(v["data"]["failures"], 3);
        // The same episode and transition: the same id, whoever builds it, whenever.
        let again = event(
            Subject::Source("gh"),
            &Transition::Failing,
            &failing,
            &failing,
            None,
            9 * MIN,
        );
        assert_eq!(again.id, e.id);
        assert_ne!(r.id, e.id);
        let next = HealthRecord {
            episode: 3,
            ..failing.clone()
        };
        assert_ne!(
            event(
                Subject::Source("gh"),
                &Transition::Failing,
                &next,
                &next,
                None,
                0
            )
            .id,
            e.id
        );
        assert_ne!(
            event(
                Subject::Target("gh"),
                &Transition::Failing,
                &failing,
                &failing,
                Some(0),
                0
            )
            .id,
            e.id
        );
    }

    #[test]
    fn the_readmes_chat_body_for_health_events_says_what_failed() {
        let readme = include_str!("../README.md");
        let block = &readme[readme.find("[targets.ops-chat]").expect("the recipe")..];
        let line = block
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("body = '"))
            .unwrap();
        let program = &line["body = '".len()..line.len() - 1];
        let body = crate::transform::Transform::compile(program).unwrap();
        let failing = HealthRecord {
            failures: 3,
            since_ms: Some(0),
            failing: true,
            episode: 1,
            last_error: Some("status 503".into()),
        };
        let text = |e: Event| {
            let v = body
                .apply(serde_json::from_slice(&e.body).unwrap())
                .unwrap();
            v["text"].as_str().unwrap().to_string()
        };
        let e = event(
            Subject::Source("gh"),
            &Transition::Failing,
            &failing,
            &failing,
            None,
            0,
        );
        assert_eq!(text(e), "pollhook.source.failing: gh (status 503)");
        let healthy = HealthRecord::default();
        let t = Transition::Recovered { since_ms: 0 };
        let e = event(Subject::Target("app"), &t, &healthy, &failing, None, 0);
        assert_eq!(text(e), "pollhook.target.recovered: app");
    }
}
