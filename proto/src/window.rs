//! Time windows `[start, end)` a run processes, computed in the workflow's time zone and
//! rendered as RFC 3339 with offset.

use std::fmt;

use chrono::{DateTime, Days, FixedOffset, LocalResult, NaiveDate, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::limits::WINDOW_LAST_DAYS_MAX;

/// A half-open interval of time, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
}

/// A window that could not be read or makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "invalid window `{text}`: write a day (2024-03-01), `yesterday`, `today`, `last 7d`, DAY..DAY (2024-03-01..2024-03-07), or START..END in RFC 3339 (2024-03-01T00:00:00Z..2024-03-02T00:00:00Z)"
    )]
    Unreadable { text: String },
    #[error("invalid window `{text}`: {reason}")]
    NoSuchDay { text: String, reason: String },
    #[error(
        "invalid window `{text}`: a range is two days (2024-03-01..2024-03-07) or two RFC 3339 times (2024-03-01T00:00:00Z..2024-03-02T00:00:00Z), not a day and a time"
    )]
    MixedRange { text: String },
    #[error(
        "invalid window `{text}`: write `last Nd` with N whole days from 1 to {WINDOW_LAST_DAYS_MAX}, e.g. `last 7d`"
    )]
    BadLast { text: String },
    #[error("invalid window `{text}`: {part} `{value}` is not an RFC 3339 time such as 2024-03-01T00:00:00Z")]
    BadTime { text: String, part: &'static str, value: String },
    #[error("invalid window: end {end} is not after start {start}")]
    Empty { start: String, end: String },
    #[error("invalid window: the last day {to} is before the first day {from}")]
    BackwardDays { from: NaiveDate, to: NaiveDate },
    #[error("unknown time zone `{0}`: use an IANA name such as UTC, Europe/Berlin or America/Los_Angeles")]
    UnknownZone(String),
    #[error("{0}")]
    Range(String),
}

/// Reads an IANA time zone name.
pub fn parse_zone(name: &str) -> Result<Tz, WindowError> {
    name.parse::<Tz>().map_err(|_| WindowError::UnknownZone(name.chars().take(64).collect()))
}

impl Window {
    /// Builds a window, checking that it is not empty.
    pub fn new(start: DateTime<FixedOffset>, end: DateTime<FixedOffset>) -> Result<Self, WindowError> {
        if end <= start {
            return Err(WindowError::Empty { start: render(&start), end: render(&end) });
        }
        Ok(Self { start, end })
    }

    /// Reads what a user types after `--window`, relative to `now`, in zone `zone`: a day,
    /// `today`, `yesterday`, `last Nd` (the N whole days before today), DAY..DAY (both
    /// included) or START..END (RFC 3339 times, offsets kept).
    pub fn parse(text: &str, zone: Tz, now: DateTime<Utc>) -> Result<Self, WindowError> {
        let trimmed = text.trim();
        let shown = || trimmed.chars().take(120).collect::<String>();
        let today = now.with_timezone(&zone).date_naive();
        match trimmed {
            "today" => return Ok(Self::day(today, zone)),
            "yesterday" => return Ok(Self::day(today.pred_opt().unwrap_or(today), zone)),
            _ => {}
        }
        if let Some(count) = trimmed.strip_prefix("last") {
            let days = count
                .trim()
                .strip_suffix('d')
                .and_then(|digits| digits.parse::<u64>().ok())
                .filter(|days| (1..=WINDOW_LAST_DAYS_MAX).contains(days))
                .ok_or_else(|| WindowError::BadLast { text: shown() })?;
            let first =
                today.checked_sub_days(Days::new(days)).ok_or_else(|| WindowError::BadLast { text: shown() })?;
            return Ok(Self { start: local_midnight(first, zone), end: local_midnight(today, zone) });
        }
        if let Some((start, end)) = trimmed.split_once("..") {
            let (start, end) = (start.trim(), end.trim());
            return match (looks_like_day(start), looks_like_day(end)) {
                (true, true) => {
                    let (from, to) = (parse_day(start, &shown)?, parse_day(end, &shown)?);
                    if to < from {
                        return Err(WindowError::BackwardDays { from, to });
                    }
                    let after = to.checked_add_days(Days::new(1)).unwrap_or(to);
                    Ok(Self { start: local_midnight(from, zone), end: local_midnight(after, zone) })
                }
                (false, false) => {
                    let parse = |part, value: &str| {
                        DateTime::parse_from_rfc3339(value).map_err(|_| WindowError::BadTime {
                            text: shown(),
                            part,
                            value: value.chars().take(60).collect(),
                        })
                    };
                    Self::new(parse("start", start)?, parse("end", end)?)
                }
                _ => Err(WindowError::MixedRange { text: shown() }),
            };
        }
        if looks_like_day(trimmed) {
            return Ok(Self::day(parse_day(trimmed, &shown)?, zone));
        }
        Err(WindowError::Unreadable { text: shown() })
    }

    /// The calendar day `date` in `zone`: local midnight to the next local midnight (23 or
    /// 25 hours long on daylight-saving transition days).
    pub fn day(date: NaiveDate, zone: Tz) -> Self {
        let next = date.checked_add_days(Days::new(1)).unwrap_or(date);
        Self { start: local_midnight(date, zone), end: local_midnight(next, zone) }
    }

    /// The default window: the previous full day in `zone` as of `now`.
    pub fn previous_day(zone: Tz, now: DateTime<Utc>) -> Self {
        let today = now.with_timezone(&zone).date_naive();
        Self::day(today.pred_opt().unwrap_or(today), zone)
    }

    /// Consecutive windows covering the days `from` to `to` (both included) in `zone`:
    /// whole-day intervals (`1d`, `7d`) step over calendar days (so DST days stay whole),
    /// shorter ones over time. The last window ends with the range.
    pub fn range(
        from: NaiveDate,
        to: NaiveDate,
        interval: std::time::Duration,
        zone: Tz,
        max: usize,
    ) -> Result<Vec<Self>, WindowError> {
        let problem = |text: String| WindowError::Range(text);
        if to < from {
            return Err(problem(format!("--to {to} is before --from {from}")));
        }
        if interval.is_zero() {
            return Err(problem("the interval must be longer than 0s".into()));
        }
        let end = local_midnight(to.checked_add_days(Days::new(1)).unwrap_or(to), zone);
        let day = std::time::Duration::from_secs(24 * 3600);
        let mut windows = Vec::new();
        if interval.as_secs().is_multiple_of(day.as_secs()) && interval.subsec_nanos() == 0 {
            let step = interval.as_secs() / day.as_secs();
            let mut date = from;
            while date <= to {
                let next = date.checked_add_days(Days::new(step)).unwrap_or(to);
                let window = Self { start: local_midnight(date, zone), end: local_midnight(next, zone).min(end) };
                windows.push(window);
                if windows.len() > max {
                    return Err(problem(format!(
                        "more than {max} windows; use a longer --interval or a shorter range"
                    )));
                }
                date = next;
            }
        } else {
            let step = chrono::Duration::from_std(interval).map_err(|error| problem(error.to_string()))?;
            let mut start = local_midnight(from, zone);
            while start < end {
                let next = (start + step).min(end);
                windows.push(Self { start, end: next });
                if windows.len() > max {
                    return Err(problem(format!(
                        "more than {max} windows; use a longer --interval or a shorter range"
                    )));
                }
                start = next;
            }
        }
        Ok(windows)
    }

    pub fn start_rfc3339(&self) -> String {
        render(&self.start)
    }

    pub fn end_rfc3339(&self) -> String {
        render(&self.end)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start_rfc3339(), self.end_rfc3339())
    }
}

/// `YYYY-MM-DD` in shape (the digits may still name no day).
pub fn looks_like_day(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 10
        && bytes
            .iter()
            .enumerate()
            .all(|(i, byte)| if i == 4 || i == 7 { *byte == b'-' } else { byte.is_ascii_digit() })
}

/// A day as people give one (`--from`, a form's date): `YYYY-MM-DD`; the error says what is
/// wrong with anything else (for `what`, the flag or field).
pub fn day_of(what: &str, text: &str) -> Result<NaiveDate, String> {
    let text = text.trim();
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        if looks_like_day(text) {
            format!("{what}: {}", why_no_such_day(text))
        } else {
            format!("{what} `{text}` is not a day such as 2024-03-01")
        }
    })
}

/// A `YYYY-MM-DD` day; one that does not exist (2024-02-30) says why.
fn parse_day(day: &str, shown: &dyn Fn() -> String) -> Result<NaiveDate, WindowError> {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map_err(|_| WindowError::NoSuchDay { text: shown(), reason: why_no_such_day(day) })
}

/// Why a `YYYY-MM-DD` text names no day: the month, or how many days its month has.
pub fn why_no_such_day(day: &str) -> String {
    let field = |range: std::ops::Range<usize>| day.get(range).and_then(|digits| digits.parse::<u32>().ok());
    let (Some(year), Some(month), Some(date)) = (field(0..4), field(5..7), field(8..10)) else {
        return format!("{day} is not a day such as 2024-03-01");
    };
    let Some(first) = NaiveDate::from_ymd_opt(year as i32, month, 1) else {
        return format!("{day} does not exist: there is no month {month:02} (months are 01 to 12)");
    };
    let next = first.checked_add_months(chrono::Months::new(1)).unwrap_or(first);
    let length = (next - first).num_days();
    if date == 0 {
        return format!("{day} does not exist: days of a month start at 01");
    }
    format!("{day} does not exist: {} has {length} days", first.format("%B %Y"))
}

fn render(time: &DateTime<FixedOffset>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Local midnight of `date`; where midnight does not exist (a zone that springs forward at
/// 00:00) the first instant of the day that does.
fn local_midnight(date: NaiveDate, zone: Tz) -> DateTime<FixedOffset> {
    let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    let resolved = match zone.from_local_datetime(&midnight) {
        LocalResult::Single(time) | LocalResult::Ambiguous(time, _) => Some(time),
        LocalResult::None => (1..=4)
            .filter_map(|hour| date.and_hms_opt(hour, 0, 0))
            .find_map(|time| zone.from_local_datetime(&time).earliest()),
    };
    let time = resolved.unwrap_or_else(|| zone.from_utc_datetime(&midnight));
    time.fixed_offset()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-03-11T10:00:00Z").unwrap().to_utc()
    }

    #[test]
    fn a_day_is_local_midnight_to_midnight() {
        let window = Window::parse("2024-03-01", chrono_tz::UTC, now()).unwrap();
        assert_eq!(window.to_string(), "2024-03-01T00:00:00Z..2024-03-02T00:00:00Z");
    }

    #[test]
    fn yesterday_follows_the_zone_and_its_dst_day_is_23_hours() {
        let zone = parse_zone("America/Los_Angeles").unwrap();
        // 2024-03-10 is the spring-forward day in Los Angeles.
        let window = Window::parse("yesterday", zone, now()).unwrap();
        assert_eq!(window.to_string(), "2024-03-10T00:00:00-08:00..2024-03-11T00:00:00-07:00");
        assert_eq!((window.end - window.start).num_hours(), 23);
        assert_eq!(Window::previous_day(zone, now()), window);
    }

    #[test]
    fn today_and_explicit_ranges() {
        let today = Window::parse("today", chrono_tz::UTC, now()).unwrap();
        assert_eq!(today.start_rfc3339(), "2024-03-11T00:00:00Z");
        let range =
            Window::parse("2024-03-01T06:00:00+01:00..2024-03-01T07:00:00+01:00", chrono_tz::UTC, now()).unwrap();
        assert_eq!(range.end_rfc3339(), "2024-03-01T07:00:00+01:00");
    }

    #[test]
    fn ranges_of_days_and_hours_cover_both_dates() {
        let zone = parse_zone("America/Los_Angeles").unwrap();
        let from = NaiveDate::from_ymd_opt(2024, 3, 9).unwrap();
        let to = NaiveDate::from_ymd_opt(2024, 3, 11).unwrap();
        let days = Window::range(from, to, std::time::Duration::from_secs(86_400), zone, 100).unwrap();
        assert_eq!(days.len(), 3);
        assert_eq!(days[1].to_string(), "2024-03-10T00:00:00-08:00..2024-03-11T00:00:00-07:00");
        let weeks = Window::range(from, to, std::time::Duration::from_secs(2 * 86_400), zone, 100).unwrap();
        assert_eq!(weeks.len(), 2);
        assert_eq!(weeks[1].to_string(), "2024-03-11T00:00:00-07:00..2024-03-12T00:00:00-07:00");
        let hours = Window::range(to, to, std::time::Duration::from_secs(6 * 3600), chrono_tz::UTC, 100).unwrap();
        assert_eq!(hours.len(), 4);
        assert!(Window::range(to, from, std::time::Duration::from_secs(86_400), zone, 100).is_err());
        let error = Window::range(from, to, std::time::Duration::from_secs(60), zone, 100).unwrap_err();
        assert!(error.to_string().contains("more than 100 windows"));
    }

    #[test]
    fn a_range_of_days_includes_both_in_the_zone() {
        let zone = parse_zone("America/Los_Angeles").unwrap();
        let week = Window::parse("2024-03-04..2024-03-10", zone, now()).unwrap();
        assert_eq!(week.to_string(), "2024-03-04T00:00:00-08:00..2024-03-11T00:00:00-07:00");
        let one = Window::parse(" 2024-03-01 .. 2024-03-01 ", chrono_tz::UTC, now()).unwrap();
        assert_eq!(one, Window::parse("2024-03-01", chrono_tz::UTC, now()).unwrap());
        let backwards = Window::parse("2024-03-02..2024-03-01", chrono_tz::UTC, now()).unwrap_err();
        assert_eq!(backwards.to_string(), "invalid window: the last day 2024-03-01 is before the first day 2024-03-02");
    }

    #[test]
    fn a_range_of_a_day_and_a_time_is_refused() {
        for text in ["2024-03-01..2024-03-02T00:00:00Z", "2024-03-01T00:00:00Z..2024-03-02"] {
            let error = Window::parse(text, chrono_tz::UTC, now()).unwrap_err();
            assert!(matches!(error, WindowError::MixedRange { .. }), "{text}: {error}");
            assert!(error.to_string().contains("not a day and a time"), "{error}");
        }
    }

    #[test]
    fn last_n_days_are_the_whole_days_before_today_in_the_zone() {
        let zone = parse_zone("America/Los_Angeles").unwrap();
        // now() is 2024-03-11 03:00 in Los Angeles: today is the 11th.
        let week = Window::parse("last 7d", zone, now()).unwrap();
        assert_eq!(week.to_string(), "2024-03-04T00:00:00-08:00..2024-03-11T00:00:00-07:00");
        assert_eq!(Window::parse("last 1d", zone, now()).unwrap(), Window::previous_day(zone, now()));
        assert_eq!(Window::parse("last7d", zone, now()).unwrap(), week);
        for bad in ["last 0d", "last 7h", "last week", "last d", "last 99999d"] {
            let error = Window::parse(bad, zone, now()).unwrap_err();
            assert!(matches!(error, WindowError::BadLast { .. }), "{bad}: {error}");
        }
    }

    #[test]
    fn a_day_that_does_not_exist_says_so() {
        let error = Window::parse("2024-02-30", chrono_tz::UTC, now()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid window `2024-02-30`: 2024-02-30 does not exist: February 2024 has 29 days"
        );
        let error = Window::parse("2023-02-29..2023-03-01", chrono_tz::UTC, now()).unwrap_err();
        assert!(error.to_string().contains("2023-02-29 does not exist: February 2023 has 28 days"), "{error}");
        let error = Window::parse("2024-13-01", chrono_tz::UTC, now()).unwrap_err();
        assert!(error.to_string().contains("there is no month 13"), "{error}");
        let error = Window::parse("2024-04-00", chrono_tz::UTC, now()).unwrap_err();
        assert!(error.to_string().contains("start at 01"), "{error}");
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        let unreadable = Window::parse("last tuesday", chrono_tz::UTC, now()).unwrap_err();
        assert!(unreadable.to_string().contains("`last tuesday`"));
        let bad_end = Window::parse("2024-03-01T00:00:00Z..tomorrow", chrono_tz::UTC, now()).unwrap_err();
        assert!(bad_end.to_string().contains("end `tomorrow`"), "{bad_end}");
        let backwards = Window::parse("2024-03-02T00:00:00Z..2024-03-01T00:00:00Z", chrono_tz::UTC, now()).unwrap_err();
        assert!(matches!(backwards, WindowError::Empty { .. }));
        assert!(parse_zone("Mars/Olympus").is_err());
    }
}
