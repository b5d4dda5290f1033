//! Time zones: naming one, placing the wall-clock times a cron expression
//! matches at UTC instants across daylight-saving changes (the rules are in
//! the parent module's doc), and showing an instant as local time.

use super::{CronSchedule, ScheduleError};
use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::{GapInfo, Tz};

impl CronSchedule {
    /// `t` for people: RFC 3339 in UTC, and in a zone the local time first,
    /// e.g. `2026-03-29T03:00:00+02:00 (2026-03-29T01:00:00Z)`.
    pub fn format_time(&self, t: DateTime<Utc>) -> String {
        let utc = t.to_rfc3339_opts(SecondsFormat::Secs, true);
        if self.tz == Tz::UTC {
            return utc;
        }
        let local = t.with_timezone(&self.tz);
        format!(
            "{} ({utc})",
            local.to_rfc3339_opts(SecondsFormat::Secs, false)
        )
    }

    /// When wall-clock time `wall` happens: the instant the clock first reaches
    /// it, and the instants that fire for it (none, one, or both passes of a
    /// repeated time).
    fn occurrences(
        &self,
        wall: NaiveDateTime,
    ) -> (Option<DateTime<Utc>>, [Option<DateTime<Utc>>; 2]) {
        match self.tz.from_local_datetime(&wall) {
            LocalResult::Single(t) => {
                let t = t.with_timezone(&Utc);
                (Some(t), [Some(t), None])
            }
            LocalResult::Ambiguous(first, second) => {
                let (first, second) = (first.with_timezone(&Utc), second.with_timezone(&Utc));
                (
                    Some(first),
                    [Some(first), (!self.fixed_time).then_some(second)],
                )
            }
            LocalResult::None => {
                // In a gap, so the zone has a transition after it and `end` exists;
                // skipping the time is the harmless answer if it ever did not.
                let end = GapInfo::new(&wall, &self.tz)
                    .and_then(|gap| gap.end)
                    .map(|t| t.with_timezone(&Utc));
                (end, [end.filter(|_| self.fixed_time), None])
            }
        }
    }

    /// first fire time strictly after `t`
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let offset = self.tz.offset_from_utc_datetime(&t.naive_utc()).fix();
        let wall = t.naive_utc().checked_add_offset(offset)?;
        // Wall-clock fire times come in order, and the instant the clock first
        // reaches each never decreases, so the scan stops at the first one not
        // reached before the best instant so far. Only second passes through a
        // repeated hour are out of order (02:00 CET comes after 02:20 CEST): when
        // `t` is in a first pass, a wildcard job's second passes of the wall
        // times up to `t`'s are still ahead, so its scan starts an overlap earlier.
        let from = match self.tz.from_local_datetime(&wall) {
            LocalResult::Ambiguous(first, second) if !self.fixed_time && first == t => {
                wall - (second - first)
            }
            _ => wall,
        };
        let mut best: Option<DateTime<Utc>> = None;
        let mut cursor = from;
        while let Some(wall) = self.wall_after(cursor) {
            let (first, fires) = self.occurrences(wall);
            for fire in fires.into_iter().flatten().filter(|f| *f > t) {
                best = Some(best.map_or(fire, |b| b.min(fire)));
            }
            if first.is_some_and(|f| best.is_some_and(|b| f >= b)) {
                break;
            }
            cursor = wall;
        }
        best
    }
}

/// The IANA zone called `name` (`Europe/Berlin`, `America/New_York`, `UTC`);
/// names are case-sensitive, as in tzdb and `TZ`.
pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse().map_err(|_| {
        let hint = match chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name.trim()))
        {
            Some(tz) => format!("did you mean `{}`?", tz.name()),
            None => {
                "use an IANA zone name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
                    .into()
            }
        };
        ScheduleError::UnknownTimezone {
            name: name.into(),
            hint,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::tests::{at, check_in, MIN};
    use crate::schedule::Schedule;
    use chrono::{Datelike, NaiveDate, TimeDelta, Timelike, Weekday};
    use chrono_tz::America::{New_York, Santiago};
    use chrono_tz::Asia::Tokyo;
    use chrono_tz::Australia::Lord_Howe;
    use chrono_tz::Europe::Berlin;

    fn instants(list: &[&str]) -> Vec<DateTime<Utc>> {
        list.iter().map(|s| at(s)).collect()
    }

    // Europe/Berlin, Sunday 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z).
    #[test]
    fn berlin_spring_gap_runs_fixed_time_jobs_once_at_its_end() {
        // Row 5: 02:00 and 03:00 both land on 03:00 and make one poll.
        check_in(
            Berlin,
            "
            30 2 * * *   | 2026-03-27T12:00:00Z | Sat 2026-03-28 02:30+01:00, Sun 2026-03-29 03:00+02:00, Mon 2026-03-30 02:30+02:00
            0 2 * * *    | 2026-03-28T12:00:00Z | Sun 2026-03-29 03:00+02:00, Mon 2026-03-30 02:00+02:00
            59 2 * * 0   | 2026-03-28T12:00:00Z | Sun 2026-03-29 03:00+02:00, Sun 2026-04-05 02:59+02:00
            0,30 2 * * * | 2026-03-28T12:00:00Z | Sun 2026-03-29 03:00+02:00, Mon 2026-03-30 02:00+02:00
            0 2,3 * * *  | 2026-03-28T12:00:00Z | Sun 2026-03-29 03:00+02:00, Mon 2026-03-30 02:00+02:00, Mon 2026-03-30 03:00+02:00
            0 3 * * *    | 2026-03-28T12:00:00Z | Sun 2026-03-29 03:00+02:00, Mon 2026-03-30 03:00+02:00
            ",
        );
        let s = Schedule::cron_in("30 2 * * *", Berlin).unwrap();
        let (before, jump) = (at("2026-03-29T00:59:59Z"), at("2026-03-29T01:00:00Z"));
        assert_eq!(s.first(before, 0.5), jump);
        assert_eq!(s.next(jump, jump, 0.5), at("2026-03-30T00:30:00Z"));
    }

    // Europe/Berlin, Sunday 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z),
    // so 02:00-02:59 happens twice.
    #[test]
    fn berlin_autumn_overlap_runs_fixed_time_jobs_once() {
        // Rows 4-6 start before, between and after the two passes of 02:30.
        check_in(
            Berlin,
            "
            30 2 * * *   | 2026-10-24T12:00:00Z | Sun 2026-10-25 02:30+02:00, Mon 2026-10-26 02:30+01:00
            0,30 2 * * * | 2026-10-24T12:00:00Z | Sun 2026-10-25 02:00+02:00, Sun 2026-10-25 02:30+02:00, Mon 2026-10-26 02:00+01:00
            0 2 * * 0    | 2026-10-24T12:00:00Z | Sun 2026-10-25 02:00+02:00, Sun 2026-11-01 02:00+01:00
            30 2 * * *   | 2026-10-25T00:15:00Z | Sun 2026-10-25 02:30+02:00
            30 2 * * *   | 2026-10-25T00:45:00Z | Mon 2026-10-26 02:30+01:00
            30 2 * * *   | 2026-10-25T01:15:00Z | Mon 2026-10-26 02:30+01:00
            ",
        );
        // A poll at the first 02:30 that ends in the second pass does not poll again at 02:30 CET.
        let s = Schedule::cron_in("30 2 * * *", Berlin).unwrap();
        let first_pass = at("2026-10-25T00:30:00Z");
        let in_second_pass = at("2026-10-25T01:20:00Z");
        assert_eq!(
            s.next(first_pass, in_second_pass, 0.5),
            at("2026-10-26T01:30:00Z")
        );
    }

    #[test]
    fn wildcard_jobs_fire_at_every_real_matching_instant_in_berlin() {
        let hourly = Schedule::cron_in("0 * * * *", Berlin).unwrap();
        // Spring: 00:00 CET, 01:00 CET, (no 02:00), 03:00 CEST, 04:00 CEST.
        assert_eq!(
            hourly.upcoming(at("2026-03-28T22:30:00Z"), 4),
            instants(&[
                "2026-03-28T23:00:00Z",
                "2026-03-29T00:00:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T02:00:00Z",
            ])
        );
        // Autumn: 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET.
        assert_eq!(
            hourly.upcoming(at("2026-10-24T22:30:00Z"), 4),
            instants(&[
                "2026-10-24T23:00:00Z",
                "2026-10-25T00:00:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T02:00:00Z",
            ])
        );
        // Rows 3-4: a wildcard minute makes `*/30 2` a wildcard job, so the gap has no
        // ticks. Rows 5-6: from inside the first and the second pass of 02:00-02:59.
        // Rows 7-8: `*/2` is a wildcard hour and repeats 02:00, `0-23/2` does not.
        check_in(
            Berlin,
            "
            @hourly       | 2026-03-28T22:30:00Z | Sun 2026-03-29 00:00+01:00, Sun 2026-03-29 01:00+01:00, Sun 2026-03-29 03:00+02:00
            @hourly       | 2026-10-24T23:30:00Z | Sun 2026-10-25 02:00+02:00, Sun 2026-10-25 02:00+01:00, Sun 2026-10-25 03:00+01:00
            */30 2 * * *  | 2026-03-28T12:00:00Z | Mon 2026-03-30 02:00+02:00, Mon 2026-03-30 02:30+02:00
            */30 2 * * *  | 2026-10-24T12:00:00Z | Sun 2026-10-25 02:00+02:00, Sun 2026-10-25 02:30+02:00, Sun 2026-10-25 02:00+01:00, Sun 2026-10-25 02:30+01:00, Mon 2026-10-26 02:00+01:00
            */20 * * * *  | 2026-10-25T00:10:00Z | Sun 2026-10-25 02:20+02:00, Sun 2026-10-25 02:40+02:00, Sun 2026-10-25 02:00+01:00, Sun 2026-10-25 02:20+01:00, Sun 2026-10-25 02:40+01:00, Sun 2026-10-25 03:00+01:00
            */20 * * * *  | 2026-10-25T01:10:00Z | Sun 2026-10-25 02:20+01:00
            0 */2 * * *   | 2026-10-24T21:30:00Z | Sun 2026-10-25 00:00+02:00, Sun 2026-10-25 02:00+02:00, Sun 2026-10-25 02:00+01:00, Sun 2026-10-25 04:00+01:00
            0 0-23/2 * * * | 2026-10-24T21:30:00Z | Sun 2026-10-25 00:00+02:00, Sun 2026-10-25 02:00+02:00, Sun 2026-10-25 04:00+01:00
            ",
        );
    }

    // America/New_York: 2026-03-08 02:00 EST becomes 03:00 EDT (07:00Z);
    // 2026-11-01 02:00 EDT becomes 01:00 EST (06:00Z), repeating 01:00-01:59.
    #[test]
    fn new_york_changes_on_its_own_dates() {
        // Row 3: Europe's 2026-03-29 change means nothing here.
        check_in(
            New_York,
            "
            30 2 * * *  | 2026-03-07T00:00:00Z | Sat 2026-03-07 02:30-05:00, Sun 2026-03-08 03:00-04:00, Mon 2026-03-09 02:30-04:00
            30 1 * * *  | 2026-10-31T00:00:00Z | Sat 2026-10-31 01:30-04:00, Sun 2026-11-01 01:30-04:00, Mon 2026-11-02 01:30-05:00
            30 2 * * *  | 2026-03-28T00:00:00Z | Sat 2026-03-28 02:30-04:00, Sun 2026-03-29 02:30-04:00
            30 1 * * 0  | 2026-10-31T00:00:00Z | Sun 2026-11-01 01:30-04:00, Sun 2026-11-08 01:30-05:00
            ",
        );
        let hourly = Schedule::cron_in("0 * * * *", New_York).unwrap();
        // 01:00 EST, (no 02:00), 03:00 EDT, 04:00 EDT.
        assert_eq!(
            hourly.upcoming(at("2026-03-08T05:30:00Z"), 3),
            instants(&[
                "2026-03-08T06:00:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-08T08:00:00Z",
            ])
        );
        // 01:00 EDT, 01:00 EST, 02:00 EST.
        assert_eq!(
            hourly.upcoming(at("2026-11-01T04:30:00Z"), 3),
            instants(&[
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z",
            ])
        );
    }

    #[test]
    fn zone_without_dst_is_a_fixed_offset() {
        check_in(
            Tokyo,
            "
            30 2 * * *  | 2026-03-28T00:00:00Z | Sun 2026-03-29 02:30+09:00, Mon 2026-03-30 02:30+09:00
            0 * * * *   | 2026-10-24T16:30:00Z | Sun 2026-10-25 02:00+09:00, Sun 2026-10-25 03:00+09:00
            ",
        );
        let daily = Schedule::cron_in("30 2 * * *", Tokyo).unwrap();
        let fires = daily.upcoming(at("2026-01-01T00:00:00Z"), 366);
        assert_eq!(fires[0], at("2026-01-01T17:30:00Z"));
        assert!(
            fires.windows(2).all(|w| w[1] - w[0] == TimeDelta::days(1)),
            "{fires:?}"
        );
    }

    #[test]
    fn utc_zone_is_the_old_behaviour() {
        for expr in [
            "0 9 * * 1",
            "*/15 * * * *",
            "*/10 * * * * *",
            "0 0 1 * 1",
            "5/20 10-11 * * *",
            "0 0 29 2 *",
            "@hourly",
            "@weekly",
        ] {
            let c = CronSchedule::parse(expr).unwrap();
            assert_eq!(c.timezone(), Tz::UTC);
            assert_eq!(CronSchedule::parse_in(expr, Tz::UTC).unwrap(), c);
            // What `next_after` was before time zones: the crate's own UTC search.
            let before = |t| c.schedules.iter().filter_map(|s| s.after(&t).next()).min();
            let mut t = at("2026-01-01T00:00:00.250Z");
            while t < at("2028-01-01T00:00:00Z") {
                assert_eq!(c.next_after(t), before(t), "`{expr}` after {t}");
                t += TimeDelta::minutes(7 * 60 + 13);
            }
        }
    }

    #[test]
    fn day_fields_match_the_local_date() {
        // Local midnight in Tokyo is 15:00Z the day before.
        check_in(
            Tokyo,
            "
            0 0 1 * 1 | 2026-11-26T19:00:00Z | Mon 2026-11-30 00:00+09:00, Tue 2026-12-01 00:00+09:00, Mon 2026-12-07 00:00+09:00
            ",
        );
        // Friday 22:00 in New York is Saturday 03:00Z; Thursday the 31st is a Friday in UTC.
        check_in(
            New_York,
            "
            0 22 * * 5  | 2026-11-26T19:00:00Z | Fri 2026-11-27 22:00-05:00, Fri 2026-12-04 22:00-05:00
            0 22 31 * 5 | 2026-12-20T00:00:00Z | Fri 2026-12-25 22:00-05:00, Thu 2026-12-31 22:00-05:00, Fri 2027-01-01 22:00-05:00
            ",
        );
        let friday = Schedule::cron_in("0 22 * * 5", New_York).unwrap();
        assert_eq!(
            friday.first(at("2026-11-26T19:00:00Z"), 0.5),
            at("2026-11-28T03:00:00Z")
        );
        // The 25th or a Sunday, on a day that is both and has 02:30 twice: one poll.
        check_in(
            Berlin,
            "
            30 2 25 * 0 | 2026-10-20T00:00:00Z | Sun 2026-10-25 02:30+02:00, Sun 2026-11-01 02:30+01:00
            ",
        );
    }

    #[test]
    fn first_and_next_in_a_zone_skip_missed_ticks() {
        let daily = Schedule::cron_in("30 2 * * *", Berlin).unwrap();
        let saturday = at("2026-03-28T01:30:00Z");
        // Down from Saturday's poll until Monday noon: Sunday's and Monday's are not made up.
        assert_eq!(
            daily.next(saturday, at("2026-03-30T10:00:00Z"), 0.7),
            at("2026-03-31T00:30:00Z")
        );
        // Finished before its slot (clock skew): still strictly after the slot.
        assert_eq!(
            daily.next(saturday, at("2026-03-28T01:29:00Z"), 0.0),
            at("2026-03-29T01:00:00Z")
        );
        assert_eq!(
            daily.first(at("2026-03-29T00:30:00Z"), 0.9),
            at("2026-03-29T01:00:00Z")
        );
        let hourly = Schedule::cron_in("0 * * * *", New_York).unwrap();
        let first_one_am = at("2026-11-01T05:00:00Z");
        assert_eq!(
            hourly.next(first_one_am, at("2026-11-01T06:30:00Z"), 0.5),
            at("2026-11-01T07:00:00Z")
        );
    }

    #[test]
    fn parse_timezone_takes_iana_names() {
        assert_eq!(parse_timezone("Europe/Berlin"), Ok(Berlin));
        assert_eq!(parse_timezone("America/New_York"), Ok(New_York));
        assert_eq!(parse_timezone("UTC"), Ok(Tz::UTC));
        let suggest =
            "use an IANA zone name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\"";
        for (name, hint) in [
            ("europe/berlin", "did you mean `Europe/Berlin`?"),
            (" America/New_York", "did you mean `America/New_York`?"),
            ("utc", "did you mean `UTC`?"),
            ("Berlin", suggest),
            ("CEST", suggest),
            ("+02:00", suggest),
            ("", suggest),
        ] {
            let e = parse_timezone(name).unwrap_err();
            assert_eq!(e.to_string(), format!("unknown time zone `{name}`; {hint}"));
        }
    }

    #[test]
    fn format_time_shows_the_wall_clock_and_utc() {
        let t = at("2026-03-29T01:00:00Z");
        let berlin = Schedule::cron_in("30 2 * * *", Berlin).unwrap();
        assert_eq!(
            berlin.format_time(t),
            "2026-03-29T03:00:00+02:00 (2026-03-29T01:00:00Z)"
        );
        let new_york = Schedule::cron_in("0 * * * *", New_York).unwrap();
        assert_eq!(
            new_york.format_time(at("2026-11-01T06:00:00Z")),
            "2026-11-01T01:00:00-05:00 (2026-11-01T06:00:00Z)"
        );
        assert_eq!(
            Schedule::cron("30 2 * * *").unwrap().format_time(t),
            "2026-03-29T01:00:00Z"
        );
        assert_eq!(
            Schedule::Interval(MIN).format_time(t),
            "2026-03-29T01:00:00Z"
        );
    }

    /// Successive `next` calls, each finishing on time, from `start` until `end`.
    fn fires(s: &Schedule, start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut out = vec![s.first(start, 0.5)];
        while let Some(&t) = out.last().filter(|t| **t < end) {
            let n = s.next(t, t, 0.5);
            assert!(n > t, "{s:?}: {n} after {t}");
            out.push(n);
        }
        out
    }

    // Two years in zones that change on different dates: northern and southern
    // hemisphere, at midnight (Santiago), by 30 minutes (Lord Howe), or never.
    #[test]
    fn two_years_of_fires_neither_skip_nor_double_a_day() {
        let zones = [Tz::UTC, Berlin, New_York, Santiago, Lord_Howe, Tokyo];
        let (start, end) = (at("2026-01-01T00:00:00Z"), at("2028-01-01T00:00:00Z"));
        // Fixed minute and hour: exactly one fire on each local day the day fields allow.
        type Days = fn(NaiveDate) -> bool;
        let daily: [(&str, Days); 6] = [
            ("30 2 * * *", |_| true),
            ("0 0 * * *", |_| true),
            ("30 23 * * *", |_| true),
            ("45 1 * * 0-4", |d| d.weekday().num_days_from_sunday() <= 4),
            ("0 3 * * 0", |d| d.weekday() == Weekday::Sun),
            ("15 2 1,15 * 0", |d| {
                d.day() == 1 || d.day() == 15 || d.weekday() == Weekday::Sun
            }),
        ];
        // Dates well inside the two years in every zone.
        let inside = |d: &NaiveDate| {
            (NaiveDate::from_ymd_opt(2026, 1, 3).unwrap()
                ..NaiveDate::from_ymd_opt(2027, 12, 29).unwrap())
                .contains(d)
        };
        for tz in zones {
            for (expr, allowed) in daily {
                let s = Schedule::cron_in(expr, tz).unwrap();
                let days: Vec<NaiveDate> = fires(&s, start, end)
                    .iter()
                    .map(|t| t.with_timezone(&tz).date_naive())
                    .filter(inside)
                    .collect();
                assert!(
                    days.windows(2).all(|w| w[0] < w[1]),
                    "`{expr}` in {tz} fired twice on a day: {days:?}"
                );
                let want: Vec<NaiveDate> = NaiveDate::from_ymd_opt(2026, 1, 1)
                    .unwrap()
                    .iter_days()
                    .take_while(|d| d.year() < 2028)
                    .filter(|d| inside(d) && allowed(*d))
                    .collect();
                assert_eq!(days, want, "`{expr}` in {tz}");
            }
            // Wildcard jobs fire at every real instant whose wall clock matches, found
            // here by stepping through real time (all offsets are whole quarter hours):
            // both passes of a repeated hour, no catch-up at a gap's end.
            for (expr, minutes) in [("0 * * * *", [0, 0]), ("*/30 * * * *", [0, 30])] {
                let s = Schedule::cron_in(expr, tz).unwrap();
                let got: Vec<_> = fires(&s, start, end)
                    .into_iter()
                    .filter(|t| *t < end)
                    .collect();
                let want: Vec<_> =
                    std::iter::successors(Some(start), |t| Some(*t + TimeDelta::minutes(15)))
                        .skip(1)
                        .take_while(|t| *t < end)
                        .filter(|t| minutes.contains(&t.with_timezone(&tz).minute()))
                        .collect();
                assert_eq!(got, want, "`{expr}` in {tz}");
            }
        }
    }
}
