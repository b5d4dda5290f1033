//! When a source polls next: fixed intervals with ±10% jitter, or cron
//! expressions with crontab(5) semantics, read as wall-clock times in UTC or in
//! a named IANA time zone.
//!
//! Pure: no clock reads and no randomness; callers pass `now` and a random number in
//! [0, 1) ([`crate::jitter::random_unit`]).
//!
//! Cron expressions are crontab(5) — `minute hour day-of-month month
//! day-of-week`, optionally preceded by a seconds field — or one of the macros
//! `@hourly @daily @midnight @weekly @monthly @yearly @annually`. Every field is
//! parsed here and handed to the `cron` crate as explicit lists, because that
//! crate numbers weekdays 1 = Sunday, rejects 0, and requires both day fields
//! to match where crontab(5) fires when either does. Choices where crontab(5)
//! is silent or implementations differ:
//! - `a/n` means `a-MAX/n`. For day-of-week MAX is 6, so Sunday only comes in
//!   via 0: `*/2` is Sun,Tue,Thu,Sat and `1/2` is Mon,Wed,Fri.
//! - Names are the three-letter English ones (`sun`..`sat`, `jan`..`dec`), any
//!   case. Ranges must ascend: `sat-sun` is rejected with a hint to write `6-7`.
//! - `?` is accepted as `*` in any field.
//! - A day field is "restricted" unless it starts with `*` or `?` (as in Vixie
//!   cron), so `0 0 1 * */2` means "the 1st, if it is Sun/Tue/Thu/Sat".
//! - An expression that can never fire (`0 0 30 2 *`) is rejected by `parse`.
//!   The `cron` crate knows no year after 2100; past that, `first`/`next` fall
//!   back to one day later instead of panicking.
//!
//! In a time zone the fields match local wall-clock time, days begin at local
//! midnight, and every result is still a UTC instant, strictly after the one
//! before. Daylight-saving changes follow cronie (and Vixie cron 4), which sort
//! jobs by whether the minute or the hour field starts with `*` (or `?`):
//! - Fixed-time jobs (neither starts with `*`: `30 2 * * *`, `@daily`, `0 1,13 * * *`)
//!   fire once per matching wall-clock time. One in a skipped hour fires at the
//!   first instant after the gap (`30 2` on a 02:00→03:00 night runs at 03:00);
//!   one in a repeated hour fires at its first occurrence only. A daily or
//!   weekly poll is thus neither lost nor doubled. Several times in one gap
//!   (`0,30 2 * * *`), or one in the gap plus one at its end (`0 2,3 * * *`),
//!   make a single poll: results never repeat an instant.
//! - Wildcard jobs (`0 * * * *`, `*/15 * * * *`, `@hourly`, `0 */2 * * *`) fire at
//!   every real instant whose wall clock matches: none inside a gap (the hour
//!   does not exist; the next real hour is polled as usual) and both times in a
//!   repeated hour. Their point is a steady rhythm in real time, and an extra
//!   poll an hour after the last one is harmless, where a catch-up at the gap's
//!   end would only land next to the regular tick.

mod crontab;
mod zone;

pub use zone::parse_timezone;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use chrono_tz::Tz;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    Interval(Duration),
    Cron(CronSchedule),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cron expression `{expr}` has {found} fields; expected 5 (`minute hour day-of-month month day-of-week`, e.g. `*/15 * * * *`), 6 (a leading seconds field, then those 5), or a macro such as @daily")]
    FieldCount { expr: String, found: usize },
    #[error("unknown cron macro `{0}`; use one of @hourly, @daily, @midnight, @weekly, @monthly, @yearly, @annually")]
    UnknownMacro(String),
    #[error("{field} value {value} is out of range {min}-{max}{hint}")]
    OutOfRange {
        field: &'static str,
        value: String,
        min: u32,
        max: u32,
        hint: &'static str,
    },
    #[error("{field} range `{range}` runs backwards; crontab(5) ranges go from low to high{hint}, so write `{suggest}` instead")]
    Descending {
        field: &'static str,
        range: String,
        suggest: String,
        hint: &'static str,
    },
    #[error("{field} field `{text}`: {reason}; expected {expected}")]
    Syntax {
        field: &'static str,
        text: String,
        reason: String,
        expected: String,
    },
    #[error("cron expression `{0}` never fires (like February 30th); check the day-of-month and month fields")]
    NeverFires(String),
    #[error("cron expression `{expr}` was rejected by the cron library: {reason}")]
    Library { expr: String, reason: String },
    #[error("unknown time zone `{name}`; {hint}")]
    UnknownTimezone { name: String, hint: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    expr: String,
    /// Two schedules when both day fields are restricted: crontab(5) fires when
    /// either matches, the `cron` crate only when both do. They are evaluated on
    /// naive wall-clock times (written as UTC), never in `tz` itself: the crate
    /// drops times in a gap and returns times in an overlap twice.
    schedules: Vec<cron::Schedule>,
    /// The zone whose wall clock the fields describe.
    tz: Tz,
    /// Neither the minute nor the hour field starts with `*`: such a job fires
    /// once per wall-clock time across daylight-saving changes (see the module doc).
    fixed_time: bool,
}

impl CronSchedule {
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone whose wall clock the fields describe (`Tz::UTC` unless one was named).
    pub fn timezone(&self) -> Tz {
        self.tz
    }
}

const NS: i128 = 1_000_000_000;

/// Interval arithmetic runs in i128 nanoseconds so no interval or date can overflow it.
fn to_ns(t: DateTime<Utc>) -> i128 {
    i128::from(t.timestamp()) * NS + i128::from(t.timestamp_subsec_nanos())
}

fn from_ns(ns: i128) -> DateTime<Utc> {
    i64::try_from(ns.div_euclid(NS))
        .ok()
        .and_then(|s| DateTime::from_timestamp(s, ns.rem_euclid(NS) as u32))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A zero interval would never advance; config rejects anything under 100 ms, and this
/// floor keeps a caller that skipped validation from spinning.
fn interval_ns(d: Duration) -> i128 {
    i128::try_from(d.as_nanos())
        .unwrap_or(i128::MAX)
        .max(NS / 10)
}

/// Callers promise [0,1); clamp anyway so a bad value cannot push jitter past ±10%.
fn unit(rand: f64) -> f64 {
    if rand.is_finite() {
        rand.clamp(0.0, 1.0)
    } else {
        0.5
    }
}

/// Only reachable past the cron crate's year-2100 horizon: poll daily rather than never.
fn beyond_horizon(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_add_signed(TimeDelta::days(1))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Schedule {
    /// A cron schedule whose fields are UTC wall-clock times.
    pub fn cron(expr: &str) -> Result<Schedule, ScheduleError> {
        CronSchedule::parse(expr).map(Schedule::Cron)
    }

    /// A cron schedule whose fields are wall-clock times in `tz`.
    pub fn cron_in(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        CronSchedule::parse_in(expr, tz).map(Schedule::Cron)
    }

    /// A poll time for `pollhook check`: see [`CronSchedule::format_time`]; intervals use UTC.
    pub fn format_time(&self, t: DateTime<Utc>) -> String {
        match self {
            Schedule::Interval(_) => t.to_rfc3339_opts(SecondsFormat::Secs, true),
            Schedule::Cron(c) => c.format_time(t),
        }
    }

    /// when the first poll after start-up happens. Interval: now + interval * 0.1 * rand
    /// (spreads start-ups so many sources don't fire at once, but poll soon); Cron: next fire after now.
    pub fn first(&self, now: DateTime<Utc>, rand: f64) -> DateTime<Utc> {
        match self {
            Schedule::Interval(d) => {
                from_ns(to_ns(now) + (interval_ns(*d) as f64 * 0.1 * unit(rand)) as i128)
            }
            Schedule::Cron(c) => c.next_after(now).unwrap_or_else(|| beyond_horizon(now)),
        }
    }

    /// the next poll after a poll that was scheduled for `scheduled` and finished at `now`.
    /// Interval: scheduled + interval*(0.9 + 0.2*rand), pushed forward by whole intervals
    /// until it is after `now` (missed ticks are skipped, never burst).
    /// Cron: next fire strictly after max(scheduled, now).
    pub fn next(&self, scheduled: DateTime<Utc>, now: DateTime<Utc>, rand: f64) -> DateTime<Utc> {
        match self {
            Schedule::Interval(d) => {
                let i = interval_ns(*d);
                let jittered = (i as f64 * (0.9 + 0.2 * unit(rand))) as i128;
                let (t, now) = (to_ns(scheduled).saturating_add(jittered), to_ns(now));
                // Skip in one step: an overrun of days must not cost a loop iteration per tick.
                from_ns(if t > now {
                    t
                } else {
                    t.saturating_add(((now - t) / i + 1).saturating_mul(i))
                })
            }
            Schedule::Cron(c) => {
                let base = scheduled.max(now);
                c.next_after(base).unwrap_or_else(|| beyond_horizon(base))
            }
        }
    }

    /// the next `n` times without jitter (for `pollhook check`).
    pub fn upcoming(&self, now: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        match self {
            Schedule::Interval(d) => {
                let i = interval_ns(*d);
                (1..=n as i128)
                    .map(|k| from_ns(to_ns(now).saturating_add(i.saturating_mul(k))))
                    .collect()
            }
            Schedule::Cron(c) => std::iter::successors(c.next_after(now), |t| c.next_after(*t))
                .take(n)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! `at`, `check_in` and `MIN` are shared with the tests in `crontab` and `zone`.

    use super::*;
    use crate::jitter::random_unit;
    use chrono::Timelike;

    pub(super) fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Rows of `expr | after | fire times`, with the fields read in `tz`: `after`
    /// is UTC, and each fire time is local with its offset (none in UTC), so a row
    /// pins the wall clock and the instant. Weekdays are spelled out so rows check
    /// real dates.
    pub(super) fn check_in(tz: Tz, rows: &str) {
        for row in rows.lines().filter(|r| !r.trim().is_empty()) {
            let [expr, after, want] = row.split('|').map(str::trim).collect::<Vec<_>>()[..] else {
                panic!("bad row {row}")
            };
            let s = Schedule::cron_in(expr, tz).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let n = want.split(", ").count();
            let fmt = |t: &DateTime<Utc>| {
                let local = t.with_timezone(&tz);
                let time = if local.second() == 0 {
                    "%a %F %R"
                } else {
                    "%a %F %T"
                };
                let offset = if tz == Tz::UTC { "" } else { "%:z" };
                local.format(&format!("{time}{offset}")).to_string()
            };
            let got: Vec<_> = s.upcoming(at(after), n).iter().map(fmt).collect();
            assert_eq!(got.join(", "), want, "for `{expr}` in {tz} after {after}");
        }
    }

    #[test]
    fn cron_next_skips_missed_ticks() {
        let s = Schedule::cron("0 * * * *").unwrap();
        let nine = at("2026-11-26T09:00:00Z");
        let noon = at("2026-11-26T12:00:00Z");
        assert_eq!(s.next(nine, at("2026-11-26T11:30:00Z"), 0.7), noon);
        // Finished before its slot (clock skew): still strictly after the slot.
        let ten = at("2026-11-26T10:00:00Z");
        assert_eq!(s.next(nine, at("2026-11-26T08:59:00Z"), 0.0), ten);
        assert_eq!(s.first(nine, 0.9), ten);
    }

    #[test]
    fn cron_past_the_crate_horizon_does_not_panic() {
        let s = Schedule::cron("0 0 * * *").unwrap();
        let (late, day_later) = (at("2101-01-01T00:00:00Z"), at("2101-01-02T00:00:00Z"));
        assert_eq!(s.next(late, late, 0.5), day_later);
        assert_eq!(s.first(late, 0.5), day_later);
        assert!(s.upcoming(late, 3).is_empty());
    }

    pub(super) const MIN: Duration = Duration::from_secs(60);
    const TEN: &str = "2026-11-26T10:00:00Z";

    #[test]
    fn interval_next_jitters_within_ten_percent() {
        let (s, t) = (Schedule::Interval(MIN), at(TEN));
        assert_eq!(s.next(t, t, 0.5), at("2026-11-26T10:01:00Z"));
        assert_eq!(s.next(t, t, 0.0), at("2026-11-26T10:00:54Z"));
        let (lo, hi) = (at("2026-11-26T10:00:54Z"), at("2026-11-26T10:01:06Z"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r), "{r}");
            let n = s.next(t, t, r);
            assert!(lo <= n && n < hi, "{n} for rand {r}");
            seen.insert(n);
        }
        assert!(
            seen.len() > 1000,
            "random_unit looks stuck: {} distinct",
            seen.len()
        );
        for bad in [f64::NAN, f64::INFINITY, -3.0, 7.0] {
            let n = s.next(t, t, bad);
            assert!(lo <= n && n <= hi, "{n} for rand {bad}");
        }
    }

    #[test]
    fn interval_overrun_skips_ticks_without_burst() {
        let (s, sched, now) = (Schedule::Interval(MIN), at(TEN), at("2026-11-26T10:05:30Z"));
        for r in [0.0, 0.1, 0.25, 0.5, 0.75, 0.9999] {
            let n = s.next(sched, now, r);
            assert!(
                n > now && n < now + TimeDelta::seconds(66),
                "{n} for rand {r}"
            );
            let off = (n - sched).num_milliseconds().rem_euclid(60_000);
            assert!(
                off <= 6_000 || off >= 54_000,
                "{n} is off the minute grid for rand {r}"
            );
        }
        // Landing exactly on `now` is not after it.
        let (five, six) = (at("2026-11-26T10:05:00Z"), at("2026-11-26T10:06:00Z"));
        assert_eq!(s.next(sched, five, 0.5), six);
        let (one, two) = (at("2026-11-26T10:01:00Z"), at("2026-11-26T10:02:00Z"));
        assert_eq!(s.next(sched, one, 0.5), two);
    }

    #[test]
    fn interval_first_is_soon() {
        let (s, now) = (Schedule::Interval(MIN), at(TEN));
        assert_eq!(s.first(now, 0.0), now);
        assert_eq!(s.first(now, 0.5), at("2026-11-26T10:00:03Z"));
        for _ in 0..500 {
            let f = s.first(now, random_unit());
            assert!(now <= f && f <= now + TimeDelta::seconds(6), "{f}");
        }
    }

    #[test]
    fn upcoming_is_strictly_increasing() {
        let (m, now) = (TimeDelta::minutes(1), at(TEN));
        let got = Schedule::Interval(MIN).upcoming(now, 3);
        assert_eq!(got, [now + m, now + m * 2, now + m * 3]);
        let got = Schedule::cron("*/20 * * * *").unwrap().upcoming(now, 3);
        assert_eq!(got.len(), 3);
        assert!(
            got[0] > now && got.windows(2).all(|w| w[0] < w[1]),
            "{got:?}"
        );
        assert!(Schedule::Interval(MIN).upcoming(now, 0).is_empty());
    }

    #[test]
    fn degenerate_intervals_do_not_spin_or_panic() {
        let (zero, now) = (Schedule::Interval(Duration::ZERO), at(TEN));
        let tenth = TimeDelta::milliseconds(100);
        assert_eq!(zero.upcoming(now, 2), [now + tenth, now + tenth * 2]);
        let n = zero.next(at("2000-01-01T00:00:00Z"), now, 0.5);
        assert!(n > now && n <= now + tenth, "{n}");
        let huge = Schedule::Interval(Duration::MAX);
        assert_eq!(huge.next(now, now, 0.5), DateTime::<Utc>::MAX_UTC);
        assert!(huge.first(now, 0.5) > now);
        assert_eq!(huge.upcoming(now, 2).len(), 2);
    }
}
