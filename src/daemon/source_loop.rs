//! One source's schedule loop: waits for the next poll time (or a "poll now" from the
//! admin API), polls, records the outcome in the status and metrics, repeats.
//!
//! Never two polls of one source at once; ticks missed while a poll ran are skipped, not
//! made up. A failed poll is logged and counted and the loop goes on (invariant 3: it
//! changed nothing). Failures in a row back off exponentially (the schedule's period,
//! doubled each time, up to `max_backoff`), a `Retry-After` from a 429 or 503 is waited
//! out, and a success returns to the schedule.
//!
//! The loop keeps the last good response's `ETag`/`Last-Modified` and sends them as
//! conditions, so an unchanged resource costs a 304 and nothing else.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::config::Source;
use crate::health::SourceHealth;
use crate::jitter::random_unit;
use crate::metrics::{PollOutcome, SourceMetrics};
use crate::poll::{Conditions, PollError, PollReport, Poller};
use crate::running::{Handle, PollNow, PollRequests};
use crate::schedule::Schedule;
use crate::store::Work;

pub(super) struct SourceLoop {
    pub source: Arc<Source>,
    pub poller: Poller,
    pub handle: Arc<Handle>,
    pub requests: PollRequests,
    pub stop: CancellationToken,
    /// Boxed: the loop's future stays small (see `a_waiting_source_loop_is_small`).
    pub metrics: Box<SourceMetrics>,
}

impl SourceLoop {
    pub async fn run(mut self) {
        let s = self.source.clone();
        let mut scheduled = s.schedule.first(Utc::now(), random_unit());
        let mut conditions: Option<Conditions> = None;
        let mut failures: u32 = 0;
        let mut health = SourceHealth::default();
        loop {
            self.handle
                .update_status(&s.name, |st| st.next_poll = Some(scheduled));
            let wait = (scheduled - Utc::now()).to_std().unwrap_or_default();
            let asked: Option<PollNow> = tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => None,
                Some(reply) = self.requests.recv() => Some(reply),
            };
            if !self.handle.store.holds(Work::Source, &s.name) {
                // This instance's lease on the source lapsed (it was paused, or cannot
                // reach the database): no poll, whose commit would be refused anyway,
                // until the next lease round stops this loop or renews the lease.
                if let Some(reply) = asked {
                    let _ = reply.send(Err(format!("source {} is not held by this instance right now (its lease lapsed); try again, or ask another instance", s.name)));
                }
                scheduled = s.schedule.next(scheduled, Utc::now(), random_unit());
                continue;
            }
            // The poll and the health update are boxed: a loop spends nearly all its
            // time waiting, and its future is as large as the largest thing it awaits.
            // Inline, every idle source held a poll's state (about 10 KB; 98 MB for
            // 10,000 sources); boxed, it is allocated for the poll only.
            let (result, error) = tokio::select! {
                _ = self.stop.cancelled() => return,
                done = Box::pin(self.poll_once(conditions.as_ref())) => done,
            };
            Box::pin(health.after_poll(&self.handle, &s.name, s.fail_after, error.as_deref()))
                .await;
            let now = Utc::now();
            let wait_at_least = match &result {
                Ok((_, found)) => {
                    failures = 0;
                    conditions = found.clone();
                    None
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let backoff = backoff(&s.schedule, failures, s.max_backoff);
                    // Retry-After is honoured up to max_backoff: past it the next poll
                    // asks again and is told again.
                    let asked_for = e.retry_after().map(|d| d.min(s.max_backoff));
                    Some(asked_for.map_or(backoff, |a| a.max(backoff)))
                }
            };
            if let Some(reply) = asked {
                // The asker may have given up waiting; that is fine.
                let _ = reply.send(
                    result
                        .map(|(r, _)| r)
                        .map_err(|e| crate::error::chain(&e).to_string()),
                );
            } else {
                scheduled = s.schedule.next(scheduled, now, random_unit());
            }
            if let Some(wait) = wait_at_least {
                let earliest = now + chrono::TimeDelta::from_std(wait).unwrap_or_default();
                while scheduled < earliest {
                    scheduled = s.schedule.next(scheduled, earliest, random_unit());
                }
                if failures > 1 || wait > period(&s.schedule) {
                    tracing::info!(source = %s.name, failures, next_poll = %scheduled.to_rfc3339(), "backing off after failed polls");
                }
            }
        }
    }

    /// One poll, recorded in the status and metrics; with its error as logged and shown
    /// (a source's errors are redacted where they are made).
    async fn poll_once(
        &self,
        conditions: Option<&Conditions>,
    ) -> (
        Result<(PollReport, Option<Conditions>), PollError>,
        Option<String>,
    ) {
        let s = &self.source;
        let started = Instant::now();
        let result = self.poller.poll_conditional(s, conditions).await;
        let took = started.elapsed();
        let outcome = log_outcome(&s.name, &result, took.as_millis() as u64);
        let error = result
            .as_ref()
            .err()
            .map(|e| crate::error::chain(e).to_string());
        self.metrics
            .poll_done(&self.handle.metrics, took.as_secs_f64(), outcome);
        self.handle
            .record_poll(&s.name, outcome, error.clone(), Utc::now(), took);
        (result, error)
    }
}

/// Logs how a poll ended, and says it as the outcome that metrics and the status record.
fn log_outcome(
    source: &str,
    result: &Result<(PollReport, Option<Conditions>), PollError>,
    took_ms: u64,
) -> PollOutcome {
    match result {
        Ok((r, _)) if r.not_modified => {
            tracing::debug!(source = %source, took_ms, "not modified (304)");
            PollOutcome::NotModified
        }
        Ok((
            PollReport {
                held_back: Some(h), ..
            },
            _,
        )) => {
            tracing::warn!(
                source = %source, deletions = h.deletions, held = h.held, seen = h.seen,
                needed = h.needed, took_ms,
                "the poll would delete more items than deletion_guard allows at once, so nothing was committed; the deletions are committed when {} polls in a row see the same (a one-off bad answer deletes nothing)",
                h.needed
            );
            PollOutcome::HeldBack {
                deletions: h.deletions,
            }
        }
        Ok((r, _)) => {
            if r.truncated {
                tracing::warn!(source = %source, pages = r.pages, "the page walk stopped at max_pages; items on later pages were not seen, so nothing was deleted (raise max_pages if the API has more pages)");
            }
            tracing::info!(
                source = %source, items = r.items, created = r.created, updated = r.updated,
                deleted = r.deleted, events = r.events, first = r.first, baseline = r.baseline,
                pages = r.pages, same_body = r.same_body, took_ms, "polled"
            );
            PollOutcome::Ok {
                items: r.items,
                created: r.created,
                updated: r.updated,
                deleted: r.deleted,
            }
        }
        Err(e) => {
            tracing::warn!(source = %source, error = %crate::error::chain(e), "poll failed; nothing changed, next poll on schedule");
            PollOutcome::Error
        }
    }
}

/// The base of the backoff: an interval source's interval; a minute for cron sources,
/// whose next tick after the backoff is the next poll.
fn period(schedule: &Schedule) -> std::time::Duration {
    match schedule {
        Schedule::Interval(d) => *d,
        Schedule::Cron(_) => std::time::Duration::from_secs(60),
    }
}

/// How long after the `failures`-th failure in a row the next poll may come: the
/// schedule's period, doubled for each failure after the first, at most `max`. The
/// first failure waits one period, as if nothing had happened.
fn backoff(schedule: &Schedule, failures: u32, max: std::time::Duration) -> std::time::Duration {
    let doublings = failures.saturating_sub(1).min(32);
    period(schedule)
        .saturating_mul(1u32 << doublings.min(31))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The size of the future `f` returns, without making one.
    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every source's loop lives as long as the daemon, nearly always waiting: what its
    /// future holds while it waits, 10,000 sources hold.
    #[test]
    fn a_waiting_source_loop_is_small() {
        let size = future_size(SourceLoop::run);
        assert!(size <= 1024, "a source loop's future is {size} bytes");
    }

    #[test]
    fn backoff_doubles_from_the_period_up_to_the_cap() {
        let s = Schedule::Interval(Duration::from_secs(60));
        let max = Duration::from_secs(3600);
        let waits: Vec<u64> = (1..=9).map(|n| backoff(&s, n, max).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(&s, u32::MAX, max), max);
    }
}
