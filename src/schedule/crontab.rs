//! crontab(5) expressions: the field syntax, the macros, and their translation
//! into `cron` crate schedules that match naive wall-clock times. The rules
//! (weekday numbering, steps, the day-of-month/day-of-week OR) are in the
//! parent module's doc; when those wall-clock times happen in a zone is
//! `zone`'s business.

use super::{CronSchedule, ScheduleError};
use chrono::{DateTime, NaiveDateTime};
use chrono_tz::Tz;

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
    /// An expression whose fields are UTC wall-clock times.
    pub fn parse(expr: &str) -> Result<Self, ScheduleError> {
        Self::parse_in(expr, Tz::UTC)
    }

    /// An expression whose fields are wall-clock times in `tz`.
    pub fn parse_in(expr: &str, tz: Tz) -> Result<Self, ScheduleError> {
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
            tz,
            fixed_time: restricted(fields[1]) && restricted(fields[2]),
        };
        // Without a year field every expression repeats within a 28-year
        // calendar cycle, so one that fires at all fires between 1970 and 2100.
        match parsed.wall_after(DateTime::UNIX_EPOCH.naive_utc()) {
            Some(_) => Ok(parsed),
            None => Err(ScheduleError::NeverFires(expr.into())),
        }
    }

    /// The first wall-clock time strictly after `wall` that the fields match.
    pub(super) fn wall_after(&self, wall: NaiveDateTime) -> Option<NaiveDateTime> {
        let wall = wall.and_utc();
        self.schedules
            .iter()
            .filter_map(|s| s.after(&wall).next())
            .min()
            .map(|t| t.naive_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::{at, check_in};
    use crate::schedule::Schedule;

    /// `check_in` for UTC.
    fn check(rows: &str) {
        check_in(Tz::UTC, rows);
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
}
