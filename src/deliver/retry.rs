//! What to do after a delivery attempt: a classification of the outcome and the retry
//! policy, both pure so they can be tested alone.
//!
//! Only 2xx is success. 3xx is a failure (redirects are not followed: a webhook that
//! moved is a config problem). `410 Gone` stops retrying that delivery. Everything else,
//! and every transport error, is retried on the target's schedule with ±20% jitter;
//! a `Retry-After` on 429/503 is honoured when it asks for longer than the schedule,
//! capped at [`RETRY_AFTER_CAP`] or the schedule's longest delay, whichever is longer
//! (a target must not park a delivery for a week, nor be hammered when it asks for calm).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::http::retry_after;

/// The longest wait a `Retry-After` can impose, unless the schedule has longer delays.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// Worth another attempt.
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The target asked never to be sent this again (410).
    Gone { error: String },
}

impl Outcome {
    /// Classifies an HTTP response. `value` is its raw `Retry-After` header, if any.
    pub fn from_status(status: u16, value: Option<&str>, now: DateTime<Utc>) -> Outcome {
        match status {
            200..=299 => Outcome::Delivered,
            410 => Outcome::Gone {
                error: "HTTP 410 Gone: the target asked not to receive this again".into(),
            },
            _ => Outcome::Failed {
                error: match status {
                    300..=399 => format!("HTTP {status}: redirects are not followed; point the target url at the final address"),
                    _ => format!("HTTP {status}"),
                },
                retry_after: retry_after(status, value, now),
            },
        }
    }

    /// Whether another attempt could succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

/// What the worker does next with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Ack,
    RetryIn(Duration),
    Bury,
}

/// A target's retry schedule, borrowed from its config (no copy per attempt).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy<'a> {
    /// Delays before attempt 2, 3, …
    pub delays: &'a [Duration],
}

impl RetryPolicy<'_> {
    /// Decides after attempt number `attempt` (1 for the first) ended with `outcome`.
    /// `rand` in [0, 1) picks the jitter.
    pub fn decide(&self, attempt: u32, outcome: &Outcome, rand: f64) -> Decision {
        let retry_after = match outcome {
            Outcome::Delivered => return Decision::Ack,
            Outcome::Gone { .. } => return Decision::Bury,
            Outcome::Failed { retry_after, .. } => *retry_after,
        };
        let Some(base) = self.delays.get(attempt.saturating_sub(1) as usize) else {
            return Decision::Bury;
        };
        let jittered = base.mul_f64(0.8 + 0.4 * rand.clamp(0.0, 1.0));
        let cap = self
            .delays
            .iter()
            .max()
            .copied()
            .unwrap_or_default()
            .max(RETRY_AFTER_CAP);
        let delay = match retry_after {
            Some(ra) if ra > jittered => ra.min(cap.max(jittered)),
            _ => jittered,
        };
        Decision::RetryIn(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-26T18:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn failed(retry_after: Option<Duration>) -> Outcome {
        Outcome::Failed {
            error: "x".into(),
            retry_after,
        }
    }

    const DELAYS: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(300)];

    fn policy() -> RetryPolicy<'static> {
        RetryPolicy { delays: &DELAYS }
    }

    #[test]
    fn classifies_statuses() {
        assert_eq!(Outcome::from_status(200, None, now()), Outcome::Delivered);
        assert_eq!(Outcome::from_status(204, None, now()), Outcome::Delivered);
        assert!(Outcome::from_status(301, None, now()).is_retryable());
        assert!(Outcome::from_status(500, None, now()).is_retryable());
        assert!(Outcome::from_status(400, None, now()).is_retryable());
        assert!(matches!(
            Outcome::from_status(410, None, now()),
            Outcome::Gone { .. }
        ));
        assert_eq!(
            Outcome::from_status(429, Some("7"), now()),
            Outcome::Failed {
                error: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        // Retry-After only counts on 429 and 503.
        assert_eq!(
            Outcome::from_status(500, Some("7"), now()),
            Outcome::Failed {
                error: "HTTP 500".into(),
                retry_after: None
            }
        );
    }

    #[test]
    fn follows_the_schedule_with_jitter_then_buries() {
        let p = policy();
        assert_eq!(p.decide(1, &Outcome::Delivered, 0.5), Decision::Ack);
        assert_eq!(
            p.decide(1, &failed(None), 0.5),
            Decision::RetryIn(Duration::from_secs(5))
        );
        assert_eq!(
            p.decide(1, &failed(None), 0.0),
            Decision::RetryIn(Duration::from_secs(4))
        );
        assert_eq!(
            p.decide(2, &failed(None), 0.999_999),
            Decision::RetryIn(Duration::from_secs(300).mul_f64(0.8 + 0.4 * 0.999_999))
        );
        assert_eq!(p.decide(3, &failed(None), 0.5), Decision::Bury);
        assert_eq!(
            p.decide(1, &Outcome::Gone { error: "g".into() }, 0.5),
            Decision::Bury
        );
        let none = RetryPolicy { delays: &[] };
        assert_eq!(none.decide(1, &failed(None), 0.5), Decision::Bury);
    }

    #[test]
    fn retry_after_wins_only_when_longer_and_is_capped() {
        let p = policy();
        let d = |ra: u64| p.decide(1, &failed(Some(Duration::from_secs(ra))), 0.5);
        assert_eq!(d(1), Decision::RetryIn(Duration::from_secs(5)));
        assert_eq!(d(60), Decision::RetryIn(Duration::from_secs(60)));
        assert_eq!(d(100_000), Decision::RetryIn(RETRY_AFTER_CAP));
        let long = RetryPolicy {
            delays: &[Duration::from_secs(5), Duration::from_secs(7200)],
        };
        assert_eq!(
            long.decide(1, &failed(Some(Duration::from_secs(100_000))), 0.5),
            Decision::RetryIn(Duration::from_secs(7200))
        );
    }
}
