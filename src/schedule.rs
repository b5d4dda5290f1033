//! When a source polls next: fixed intervals with ±10% jitter, or cron
//! expressions with crontab(5) semantics evaluated in UTC.
//!
//! Pure: no clock reads and no randomness except [`random_unit`]; callers pass
//! `now` and a random number in [0, 1).
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

use chrono::{DateTime, TimeDelta, Utc};
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    expr: String,
    /// Two schedules when both day fields are restricted: crontab(5) fires when
    /// either matches, the `cron` crate only when both do.
    schedules: Vec<cron::Schedule>,
}

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Upper end of `*` and `a/n`; only day-of-week differs (7 duplicates 0).
    star_max: u32,
    names: &'static [&'static str],
    hint: &'static str,
}

const fn field(name: &'static str, min: u32, max: u32) -> Field {
    Field {
        name,
        min,
        max,
        star_max: max,
        names: &[],
        hint: "",
    }
}
const SECOND: Field = field("second", 0, 59);
const MINUTE: Field = field("minute", 0, 59);
const HOUR: Field = field("hour", 0, 23);
const DOM: Field = field("day-of-month", 1, 31);
const MONTH: Field = Field {
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    hint: " (names jan-dec also work)",
    ..field("month", 1, 12)
};
const DOW: Field = Field {
    star_max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    hint: " (0 and 7 are Sunday)",
    ..field("day-of-week", 0, 7)
};

impl Field {
    fn syntax(&self, text: &str, reason: String) -> ScheduleError {
        let names = match self.names {
            [first, .., last] => format!(" or name {first}-{last}"),
            _ => String::new(),
        };
        ScheduleError::Syntax {
            field: self.name,
            text: text.to_string(),
            reason,
            expected: format!(
                "`*`, a number {}-{}{names}, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of these",
                self.min, self.max
            ),
        }
    }

    fn value(&self, tok: &str, text: &str) -> Result<u32, ScheduleError> {
        let v = if !tok.is_empty() && tok.bytes().all(|b| b.is_ascii_digit()) {
            // Only digits, so parsing fails only on overflow, which is out of range anyway.
            tok.parse().unwrap_or(u32::MAX)
        } else if let Some(i) = self.names.iter().position(|n| n.eq_ignore_ascii_case(tok)) {
            self.min + i as u32
        } else if tok.is_empty() {
            return Err(self.syntax(text, "a value is missing around `,`, `-` or `/`".into()));
        } else {
            return Err(self.syntax(text, format!("`{tok}` is not a number")));
        };
        if v < self.min || v > self.max {
            return Err(ScheduleError::OutOfRange {
                field: self.name,
                value: tok.to_string(),
                min: self.min,
                max: self.max,
                hint: self.hint,
            });
        }
        Ok(v)
    }

    /// The set of matching values as a bitmask (bit v = value v; max is 59).
    fn parse(&self, text: &str) -> Result<u64, ScheduleError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            let (base, step) = match item.split_once('/') {
                None => (item, 1),
                Some((base, s)) => match s.parse::<u32>() {
                    Ok(n) if n > 0 => (base, n),
                    _ => {
                        return Err(
                            self.syntax(text, format!("step `{s}` must be a number 1 or more"))
                        )
                    }
                },
            };
            let (lo, hi) = if base == "*" || base == "?" {
                (self.min, self.star_max)
            } else if let Some((a, b)) = base.split_once('-') {
                let (lo, hi) = (self.value(a, text)?, self.value(b, text)?);
                if lo > hi {
                    // Suggest the wrapped-around list; for weekdays 7 covers Sunday.
                    let (top, bottom) = (self.max, self.min.max(self.max - self.star_max));
                    let suggest = match hi {
                        h if h < bottom => format!("{lo}-{top}"),
                        h if h == bottom => format!("{lo}-{top},{h}"),
                        h => format!("{lo}-{top},{bottom}-{h}"),
                    };
                    return Err(ScheduleError::Descending {
                        field: self.name,
                        range: base.to_string(),
                        suggest,
                        hint: self.hint,
                    });
                }
                (lo, hi)
            } else {
                let v = self.value(base, text)?;
                let open = item.contains('/').then_some(self.star_max);
                (v, open.map_or(v, |top| top.max(v)))
            };
            for v in (lo..=hi).step_by(step as usize) {
                bits |= 1 << v;
            }
        }
        Ok(bits)
    }
}

/// `*` when every value in min..=max is set (keeps `cron::Schedule::source` readable), else a list.
fn render(bits: u64, min: u32, max: u32) -> String {
    let values: Vec<String> = (min..=max)
        .filter(|v| bits & (1 << v) != 0)
        .map(|v| v.to_string())
        .collect();
    if values.len() == (max - min + 1) as usize {
        "*".into()
    } else {
        values.join(",")
    }
}

fn macro_fields(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "hourly" => "0 * * * *",
        "daily" | "midnight" => "0 0 * * *",
        "weekly" => "0 0 * * 0",
        "monthly" => "0 0 1 * *",
        "yearly" | "annually" => "0 0 1 1 *",
        _ => return None,
    })
}

impl CronSchedule {
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        let trimmed = expr.trim();
        let text = match trimmed.strip_prefix('@') {
            Some(name) => {
                macro_fields(name).ok_or_else(|| ScheduleError::UnknownMacro(trimmed.into()))?
            }
            None => trimmed,
        };
        let mut fields: Vec<&str> = text.split_whitespace().collect();
        match fields.len() {
            5 => fields.insert(0, "0"),
            6 => {}
            found => {
                return Err(ScheduleError::FieldCount {
                    expr: expr.into(),
                    found,
                })
            }
        }
        let at = |i: usize, spec: &Field| spec.parse(fields[i]);
        let (sec, min, hour) = (at(0, &SECOND)?, at(1, &MINUTE)?, at(2, &HOUR)?);
        let (dom, month, dow) = (at(3, &DOM)?, at(4, &MONTH)?, at(5, &DOW)?);
        // Fold Sunday-as-7 onto 0, then shift to the cron crate's 1 = Sunday.
        let dow = ((dow | dow >> 7) & 0x7f) << 1;
        let head = [(sec, 0, 59), (min, 0, 59), (hour, 0, 23)].map(|(b, lo, hi)| render(b, lo, hi));
        let (dom, month, dow) = (render(dom, 1, 31), render(month, 1, 12), render(dow, 1, 7));
        let build = |dom: &str, dow: &str| {
            format!("{} {dom} {month} {dow}", head.join(" "))
                .parse::<cron::Schedule>()
                .map_err(|e| ScheduleError::Library {
                    expr: expr.into(),
                    reason: e.to_string(),
                })
        };
        let restricted = |s: &str| !(s.starts_with('*') || s.starts_with('?'));
        let schedules = if restricted(fields[3]) && restricted(fields[5]) {
            vec![build(&dom, "*")?, build("*", &dow)?]
        } else {
            vec![build(&dom, &dow)?]
        };
        let parsed = CronSchedule {
            expr: expr.into(),
            schedules,
        };
        // Without a year field every expression repeats within a 28-year
        // calendar cycle, so one that fires at all fires between 1970 and 2100.
        match parsed.next_after(DateTime::UNIX_EPOCH) {
            Some(_) => Ok(parsed),
            None => Err(ScheduleError::NeverFires(expr.into())),
        }
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// first fire time strictly after `t`
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedules
            .iter()
            .filter_map(|s| s.after(&t).next())
            .min()
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
    pub fn cron(expr: &str) -> Result<Schedule, ScheduleError> {
        CronSchedule::parse(expr).map(Schedule::Cron)
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

/// a number in [0,1) from std's RandomState hasher (no rand crate); good enough for jitter.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // Every RandomState gets fresh keys (random per thread, bumped per call),
    // so even an empty hash differs from call to call.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// Rows of `expr | after | fire times`; weekdays are spelled out so rows check real dates.
    fn check(rows: &str) {
        for row in rows.lines().filter(|r| !r.trim().is_empty()) {
            let [expr, after, want] = row.split('|').map(str::trim).collect::<Vec<_>>()[..] else {
                panic!("bad row {row}")
            };
            let s = Schedule::cron(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            let n = want.split(", ").count();
            let fmt = |t: &DateTime<Utc>| match t.second() {
                0 => t.format("%a %F %R").to_string(),
                _ => t.format("%a %F %T").to_string(),
            };
            let got: Vec<_> = s.upcoming(at(after), n).iter().map(fmt).collect();
            assert_eq!(got.join(", "), want, "for `{expr}` after {after}");
        }
    }

    /// Rows of `expr | text the error message must contain`.
    fn check_err(rows: &str) {
        for row in rows.lines().filter(|r| !r.trim().is_empty()) {
            let (expr, want) = row.split_once('|').unwrap();
            let e = CronSchedule::parse(expr.trim())
                .expect_err(expr)
                .to_string();
            assert!(e.contains(want.trim()), "for `{expr}`: {e}");
        }
    }

    // 2026-11-26 is a Thursday, 2026-11-30 a Monday.
    #[test]
    fn weekday_numbers_and_names_follow_crontab() {
        check(
            "
            0 9 * * 1       | 2026-11-26T19:00:00Z | Mon 2026-11-30 09:00, Mon 2026-12-07 09:00
            0 9 * * 0       | 2026-11-26T19:00:00Z | Sun 2026-11-29 09:00
            0 9 * * 7       | 2026-11-26T19:00:00Z | Sun 2026-11-29 09:00
            0 9 * * sun     | 2026-11-26T19:00:00Z | Sun 2026-11-29 09:00
            0 9 * * MON     | 2026-11-26T19:00:00Z | Mon 2026-11-30 09:00
            0 9 * * Fri,tue | 2026-11-26T19:00:00Z | Fri 2026-11-27 09:00, Tue 2026-12-01 09:00
            0 9 * * mon-wed | 2026-11-26T19:00:00Z | Mon 2026-11-30 09:00, Tue 2026-12-01 09:00, Wed 2026-12-02 09:00
            ",
        );
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
        for (d, name) in days.iter().enumerate() {
            let s = Schedule::cron(&format!("0 0 * * {d}")).unwrap();
            for t in s.upcoming(at("2026-11-26T19:00:00Z"), 3) {
                assert_eq!(t.format("%a").to_string(), *name, "dow {d} fired on {t}");
            }
        }
    }

    #[test]
    fn weekday_ranges_and_steps() {
        // `1/2` runs to Saturday (Mon, Wed, Fri); `1-7/3` reaches Sunday as 7.
        check(
            "
            0 12 * * 1-5  | 2026-11-27T13:00:00Z | Mon 2026-11-30 12:00, Tue 2026-12-01 12:00
            0 0 * * 5-7   | 2026-11-26T19:00:00Z | Fri 2026-11-27 00:00, Sat 2026-11-28 00:00, Sun 2026-11-29 00:00
            0 0 * * 5-7   | 2026-11-29T01:00:00Z | Fri 2026-12-04 00:00
            0 0 * * */2   | 2026-11-26T19:00:00Z | Sat 2026-11-28 00:00, Sun 2026-11-29 00:00, Tue 2026-12-01 00:00
            0 0 * * */2   | 2026-12-01T01:00:00Z | Thu 2026-12-03 00:00, Sat 2026-12-05 00:00
            0 0 * * 1/2   | 2026-11-26T19:00:00Z | Fri 2026-11-27 00:00, Mon 2026-11-30 00:00, Wed 2026-12-02 00:00
            0 0 * * 1-7/3 | 2026-11-26T19:00:00Z | Sun 2026-11-29 00:00, Mon 2026-11-30 00:00, Thu 2026-12-03 00:00
            0 0 * * 6-7   | 2026-11-26T19:00:00Z | Sat 2026-11-28 00:00, Sun 2026-11-29 00:00, Sat 2026-12-05 00:00
            ",
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Row 4: an impossible day-of-month leaves the weekday half of the OR (month still
        // applies). Row 5: `*/2` starts with `*`, so it is unrestricted and both must match.
        check(
            "
            0 0 1 * 1    | 2026-11-26T19:00:00Z | Mon 2026-11-30 00:00, Tue 2026-12-01 00:00, Mon 2026-12-07 00:00
            0 0 1 * *    | 2026-11-26T19:00:00Z | Tue 2026-12-01 00:00, Fri 2027-01-01 00:00
            0 0 ? * 1    | 2026-11-26T19:00:00Z | Mon 2026-11-30 00:00, Mon 2026-12-07 00:00
            0 0 30 2 mon | 2026-11-26T19:00:00Z | Mon 2027-02-01 00:00
            0 0 1 * */2  | 2026-11-26T19:00:00Z | Tue 2026-12-01 00:00, Thu 2027-04-01 00:00
            ",
        );
    }

    #[test]
    fn other_fields_and_macros() {
        check(
            "
            */15 * * * *     | 2026-11-26T19:07:30Z | Thu 2026-11-26 19:15, Thu 2026-11-26 19:30
            */15 * * * *     | 2026-11-26T19:45:00Z | Thu 2026-11-26 20:00
            */10 * * * * *   | 2026-11-26T19:00:03Z | Thu 2026-11-26 19:00:10, Thu 2026-11-26 19:00:20
            30 0 9 * * mon   | 2026-11-26T19:00:00Z | Mon 2026-11-30 09:00:30
            5/20 10-11 * * * | 2026-11-26T19:00:00Z | Fri 2026-11-27 10:05, Fri 2026-11-27 10:25
            0 0-12/6 * * *   | 2026-11-26T19:00:00Z | Fri 2026-11-27 00:00, Fri 2026-11-27 06:00
            0 0 1 jan,JUL *  | 2026-11-26T19:00:00Z | Fri 2027-01-01 00:00, Thu 2027-07-01 00:00
            0 0 1 */5 *      | 2026-11-26T19:00:00Z | Fri 2027-01-01 00:00, Tue 2027-06-01 00:00
            0 0 29 2 *       | 2026-11-26T19:00:00Z | Tue 2028-02-29 00:00
            @hourly          | 2026-11-26T19:00:00Z | Thu 2026-11-26 20:00
            @daily           | 2026-11-26T19:00:00Z | Fri 2026-11-27 00:00
            @midnight        | 2026-11-26T19:00:00Z | Fri 2026-11-27 00:00
            @weekly          | 2026-11-26T19:00:00Z | Sun 2026-11-29 00:00, Sun 2026-12-06 00:00
            @monthly         | 2026-11-26T19:00:00Z | Tue 2026-12-01 00:00
            @yearly          | 2026-11-26T19:00:00Z | Fri 2027-01-01 00:00
            @annually        | 2026-11-26T19:00:00Z | Fri 2027-01-01 00:00
            ",
        );
    }

    #[test]
    fn next_after_is_strict_and_expr_is_kept() {
        let c = CronSchedule::parse("  0  9 * *   1 ").unwrap();
        assert_eq!(c.expr(), "  0  9 * *   1 ");
        let mon = at("2026-11-30T09:00:00Z");
        assert_eq!(c.next_after(mon), Some(at("2026-12-07T09:00:00Z")));
        assert_eq!(c.next_after(at("2026-11-30T08:59:59.999Z")), Some(mon));
    }

    #[test]
    fn error_messages() {
        let e = CronSchedule::parse("0 9 * *").unwrap_err();
        assert!(
            matches!(e, ScheduleError::FieldCount { found: 4, .. }),
            "{e:?}"
        );
        let dow8 = CronSchedule::parse("0 9 * * 8").unwrap_err().to_string();
        assert_eq!(
            dow8,
            "day-of-week value 8 is out of range 0-7 (0 and 7 are Sunday)"
        );
        check_err(
            "
            0 9 * *             | `0 9 * *` has 4 fields; expected 5 (`minute hour day-of-month month day-of-week`
            0 0 0 1 1 * 2027    | has 7 fields
                                | has 0 fields
            60 * * * *          | minute value 60 is out of range 0-59
            0 0 0 * *           | day-of-month value 0 is out of range 1-31
            0 0 1 13 *          | month value 13 is out of range 1-12 (names jan-dec also work)
            99999999999 * * * * | value 99999999999 is out of range
            a b c d e           | minute field `a`: `a` is not a number; expected `*`, a number 0-59, a range
            0 0 * * monday      | a number 0-7 or name sun-sat
            0 0 * * sat-sun     | day-of-week range `sat-sun` runs backwards; crontab(5) ranges go from low to high (0 and 7 are Sunday), so write `6-7` instead
            0 0 * * 5-1         | write `5-7,1`
            0 22-2 * * *        | hour range `22-2` runs backwards; crontab(5) ranges go from low to high, so write `22-23,0-2`
            0 0 10-1 * *        | write `10-31,1`
            */0 * * * *         | step `0` must be a number 1 or more
            1,,2 * * * *        | a value is missing
            @reboot             | unknown cron macro `@reboot`; use one of @hourly
            0 0 30 2 *          | `0 0 30 2 *` never fires
            0 0 31 4,6,9,11 *   | never fires
            ",
        );
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

    const MIN: Duration = Duration::from_secs(60);
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
