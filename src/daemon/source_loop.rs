//! One source's schedule loop: waits for the next poll time (or a "poll now" from the
//! admin API), polls, records the outcome in the status and metrics, repeats.
//!
//! Never two polls of one source at once; ticks missed while a poll ran are skipped, not
//! made up. A failed poll is logged and counted and the loop goes on (invariant 3: it
//! changed nothing).

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handle::{Handle, PollNow};
use crate::config::Source;
use crate::poll::{PollError, PollReport, Poller};
use crate::schedule::random_unit;

pub(super) struct SourceLoop {
    pub source: Arc<Source>,
    pub poller: Poller,
    pub handle: Arc<Handle>,
    pub requests: mpsc::Receiver<PollNow>,
    pub stop: CancellationToken,
}

impl SourceLoop {
    pub async fn run(mut self) {
        let s = self.source.clone();
        let mut scheduled = s.schedule.first(Utc::now(), random_unit());
        loop {
            self.handle
                .update_status(&s.name, |st| st.next_poll = Some(scheduled));
            let wait = (scheduled - Utc::now()).to_std().unwrap_or_default();
            let asked: Option<PollNow> = tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => None,
                Some(reply) = self.requests.recv() => Some(reply),
            };
            let result = tokio::select! {
                _ = self.stop.cancelled() => return,
                result = self.poll_once() => result,
            };
            if let Some(reply) = asked {
                // The asker may have given up waiting; that is fine.
                let _ = reply.send(result.map_err(|e| e.to_string()));
            } else {
                scheduled = s.schedule.next(scheduled, Utc::now(), random_unit());
            }
        }
    }

    async fn poll_once(&self) -> Result<PollReport, PollError> {
        let s = &self.source;
        let started = Instant::now();
        let result = self.poller.poll(s).await;
        let took = started.elapsed();
        let took_ms = took.as_millis() as u64;
        let now = Utc::now();
        match &result {
            Ok(r) => {
                tracing::info!(
                    source = %s.name, items = r.items, created = r.created, updated = r.updated,
                    deleted = r.deleted, events = r.events, first = r.first, baseline = r.baseline,
                    took_ms, "polled"
                );
                self.handle.metrics.poll_done(
                    &s.name,
                    took.as_secs_f64(),
                    Some((r.items, r.created, r.updated, r.deleted)),
                );
                self.handle.update_status(&s.name, |st| {
                    st.last_poll = Some(now);
                    st.last_outcome = Some("ok".into());
                    st.last_duration_ms = Some(took_ms);
                    st.items = r.items as u64;
                    st.consecutive_failures = 0;
                    st.polls_ok += 1;
                });
            }
            Err(e) => {
                tracing::warn!(source = %s.name, error = %e, "poll failed; nothing changed, next poll on schedule");
                self.handle
                    .metrics
                    .poll_done(&s.name, took.as_secs_f64(), None);
                self.handle.update_status(&s.name, |st| {
                    st.last_poll = Some(now);
                    st.last_outcome = Some("error".into());
                    st.last_error = Some(e.to_string());
                    st.last_error_at = Some(now);
                    st.last_duration_ms = Some(took_ms);
                    st.consecutive_failures += 1;
                    st.polls_failed += 1;
                });
            }
        }
        result
    }
}
