//! Cron expressions, evaluated on the wall clock of an IANA time zone.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six (a leading `second`),
//! each `*`, a value, a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of those; month
//! and weekday names (`jan`, `mon`) and the macros `@yearly`, `@monthly`, `@weekly`,
//! `@daily`, `@hourly`. When both day-of-month and day-of-week are restricted, a day matching
//! either fires (as in Vixie cron).
//!
//! Daylight saving, where wall-clock time jumps or repeats:
//! - a time that does not exist (skipped by a spring-forward jump) fires once, at the instant
//!   the clock jumps (a daily 02:30 job in Los Angeles runs at 03:00 PDT on that day);
//! - a time that occurs twice (a fall-back hour) fires once, at its first occurrence.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// How far ahead a next time is searched for (a `30 2 30 2 *` never fires).
const SEARCH_DAYS: i64 = 366 * 5;

/// A parsed cron expression.
#[derive(Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    seconds: Vec<u32>,
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days_of_month: [bool; 32],
    months: [bool; 13],
    days_of_week: [bool; 7],
    any_day_of_month: bool,
    any_day_of_week: bool,
}

impl fmt::Debug for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cron({:?})", self.text)
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a cron expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron `{text}`: {problem}")]
pub struct CronError {
    pub text: String,
    pub problem: String,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| CronError { text: text.chars().take(100).collect(), problem };
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(error("unknown macro: use @yearly, @monthly, @weekly, @daily or @hourly".into()));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => (vec![0], &fields[..]),
            6 => (values("second", fields[0], 0, 59, &[]).map_err(error)?, &fields[1..]),
            count => {
                return Err(error(format!(
                    "{count} fields; write 5 (minute hour day-of-month month day-of-week) or 6 (with seconds first)"
                )));
            }
        };
        let minutes = values("minute", rest[0], 0, 59, &[]).map_err(error)?;
        let hours = values("hour", rest[1], 0, 23, &[]).map_err(error)?;
        let mut days_of_month = [false; 32];
        for day in values("day-of-month", rest[2], 1, 31, &[]).map_err(error)? {
            days_of_month[day as usize] = true;
        }
        let mut months = [false; 13];
        for month in values("month", rest[3], 1, 12, &MONTHS).map_err(error)? {
            months[month as usize] = true;
        }
        let mut days_of_week = [false; 7];
        for day in values("day-of-week", rest[4], 0, 7, &WEEKDAYS).map_err(error)? {
            days_of_week[(day % 7) as usize] = true;
        }
        Ok(Self {
            text: text.trim().to_owned(),
            seconds,
            minutes,
            hours,
            days_of_month,
            months,
            days_of_week,
            any_day_of_month: rest[2] == "*" || rest[2] == "?",
            any_day_of_week: rest[4] == "*" || rest[4] == "?",
        })
    }
}

/// The sorted values one field allows.
fn values(what: &str, field: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, String> {
    let number = |text: &str| -> Result<u32, String> {
        let lower = text.to_ascii_lowercase();
        if let Some(index) = names.iter().position(|name| *name == lower) {
            // Month names count from 1, weekday names from 0.
            return Ok(index as u32 + if names.len() == 12 { 1 } else { 0 });
        }
        let value: u32 = text.parse().map_err(|_| format!("{what} `{text}` is not a number"))?;
        if value < min || value > max {
            return Err(format!("{what} {value} is out of range {min}-{max}"));
        }
        Ok(value)
    };
    let mut allowed = vec![false; max as usize + 1];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| format!("{what} step `{step}` is not a number"))?;
                if step == 0 {
                    return Err(format!("{what} step must be at least 1"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = match range {
            "*" | "?" => (min, max),
            _ => match range.split_once('-') {
                Some((low, high)) => (number(low)?, number(high)?),
                None if step > 1 => (number(range)?, max),
                None => {
                    let value = number(range)?;
                    (value, value)
                }
            },
        };
        if low > high {
            return Err(format!("{what} range {low}-{high} is backwards"));
        }
        for value in (low..=high).step_by(step as usize) {
            allowed[value as usize] = true;
        }
    }
    Ok((min..=max).filter(|value| allowed[*value as usize]).collect())
}

impl Cron {
    fn day_matches(&self, date: NaiveDate) -> bool {
        if !self.months[date.month() as usize] {
            return false;
        }
        let by_month = self.days_of_month[date.day() as usize];
        let by_week = self.days_of_week[date.weekday().num_days_from_sunday() as usize];
        match (self.any_day_of_month, self.any_day_of_week) {
            (true, true) => true,
            (true, false) => by_week,
            (false, true) => by_month,
            (false, false) => by_month || by_week,
        }
    }

    /// The first time this expression fires strictly after `after`, on `zone`'s wall clock.
    pub fn next_after(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.with_timezone(&zone).naive_local();
        let first_day = start.date();
        for offset in 0..SEARCH_DAYS {
            let date = first_day + Duration::days(offset);
            if !self.day_matches(date) {
                continue;
            }
            for &hour in &self.hours {
                if offset == 0 && hour < start.hour() {
                    continue;
                }
                for &minute in &self.minutes {
                    if offset == 0 && hour == start.hour() && minute < start.minute() {
                        continue;
                    }
                    for &second in &self.seconds {
                        let Some(local) = date.and_hms_opt(hour, minute, second) else { continue };
                        let instant = resolve(zone, local);
                        if instant > after {
                            return Some(instant);
                        }
                    }
                }
            }
        }
        None
    }

    /// Every time this expression fires in `(after, until]`, at most `limit` of them (the
    /// earliest), and whether there were more.
    pub fn between(
        &self,
        zone: Tz,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, bool) {
        let mut ticks = Vec::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(zone, cursor) {
            if next > until {
                return (ticks, false);
            }
            if ticks.len() == limit {
                return (ticks, true);
            }
            ticks.push(next);
            cursor = next;
        }
        (ticks, false)
    }
}

/// The instant a wall-clock time names: the first of two (fall back), or the instant the
/// clock jumps past a time that does not exist (spring forward).
fn resolve(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(time) | LocalResult::Ambiguous(time, _) => time.with_timezone(&Utc),
        LocalResult::None => {
            // Inside a gap: the first minute after it is the jump (gaps are whole minutes).
            let mut probe = local;
            for _ in 0..(24 * 60) {
                probe += Duration::minutes(1);
                let probe_minute = probe.with_second(0).unwrap_or(probe);
                if let Some(time) = zone.from_local_datetime(&probe_minute).earliest() {
                    return time.with_timezone(&Utc);
                }
            }
            zone.from_utc_datetime(&local).with_timezone(&Utc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn la() -> Tz {
        "America/Los_Angeles".parse().unwrap()
    }

    #[test]
    fn fields_ranges_steps_lists_and_names() {
        let cron: Cron = "*/15 9-17 * * mon-fri".parse().unwrap();
        // Friday 2024-03-01 17:50 UTC → next is Monday 09:00.
        assert_eq!(cron.next_after(chrono_tz::UTC, utc("2024-03-01T17:50:00Z")), Some(utc("2024-03-04T09:00:00Z")));
        assert_eq!(cron.next_after(chrono_tz::UTC, utc("2024-03-04T09:00:00Z")), Some(utc("2024-03-04T09:15:00Z")));
        let seconds: Cron = "*/2 * * * * *".parse().unwrap();
        assert_eq!(seconds.next_after(chrono_tz::UTC, utc("2024-03-01T00:00:01Z")), Some(utc("2024-03-01T00:00:02Z")));
        let daily: Cron = "@daily".parse().unwrap();
        assert_eq!(daily.next_after(chrono_tz::UTC, utc("2024-03-01T00:00:00Z")), Some(utc("2024-03-02T00:00:00Z")));
        let either: Cron = "0 0 1 * sun".parse().unwrap();
        // 2024-03-03 is a Sunday; 2024-04-01 the first of the month.
        assert_eq!(either.next_after(chrono_tz::UTC, utc("2024-03-01T12:00:00Z")), Some(utc("2024-03-03T00:00:00Z")));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (text, problem) in [
            ("* * *", "3 fields"),
            ("61 * * * *", "minute 61 is out of range 0-59"),
            ("* * * foo *", "month `foo` is not a number"),
            ("*/0 * * * *", "step must be at least 1"),
            ("5-1 * * * *", "backwards"),
            ("@often", "unknown macro"),
        ] {
            let error = text.parse::<Cron>().unwrap_err().to_string();
            assert!(error.contains(problem), "{text}: {error}");
        }
        let never: Cron = "0 0 30 2 *".parse().unwrap();
        assert_eq!(never.next_after(chrono_tz::UTC, utc("2024-01-01T00:00:00Z")), None);
    }

    #[test]
    fn a_0230_daily_job_in_los_angeles_across_both_dst_transitions() {
        let cron: Cron = "30 2 * * *".parse().unwrap();
        // Spring forward on 2024-03-10: 02:30 does not exist; it runs at 03:00 PDT (10:00Z).
        let (ticks, _) = cron.between(la(), utc("2024-03-09T00:00:00Z"), utc("2024-03-12T00:00:00Z"), 10);
        assert_eq!(ticks, [utc("2024-03-09T10:30:00Z"), utc("2024-03-10T10:00:00Z"), utc("2024-03-11T09:30:00Z")]);
        // Fall back on 2024-11-03: 02:30 happens once (PST), exactly one run that day.
        let (ticks, _) = cron.between(la(), utc("2024-11-02T00:00:00Z"), utc("2024-11-05T00:00:00Z"), 10);
        assert_eq!(ticks, [utc("2024-11-02T09:30:00Z"), utc("2024-11-03T10:30:00Z"), utc("2024-11-04T10:30:00Z")]);
    }

    #[test]
    fn a_time_that_occurs_twice_fires_once() {
        let cron: Cron = "30 1 * * *".parse().unwrap();
        // 01:30 occurs at 08:30Z (PDT) and 09:30Z (PST) on 2024-11-03: only the first fires.
        let (ticks, _) = cron.between(la(), utc("2024-11-03T00:00:00Z"), utc("2024-11-04T00:00:00Z"), 10);
        assert_eq!(ticks, [utc("2024-11-03T08:30:00Z")]);
        let hourly: Cron = "0 * * * *".parse().unwrap();
        let (ticks, _) = hourly.between(la(), utc("2024-11-03T07:30:00Z"), utc("2024-11-03T11:30:00Z"), 10);
        // 01:00 PDT (08Z), then 02:00 PST (10Z): the repeated 01:00 PST (09Z) is skipped.
        assert_eq!(ticks, [utc("2024-11-03T08:00:00Z"), utc("2024-11-03T10:00:00Z"), utc("2024-11-03T11:00:00Z")]);
    }

    #[test]
    fn between_is_bounded() {
        let cron: Cron = "* * * * *".parse().unwrap();
        let (ticks, more) = cron.between(chrono_tz::UTC, utc("2024-03-01T00:00:00Z"), utc("2024-03-02T00:00:00Z"), 5);
        assert_eq!(ticks.len(), 5);
        assert!(more);
    }
}
