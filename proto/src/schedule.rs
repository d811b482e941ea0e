//! Schedules: when a workflow runs by itself (`schedule:` in its YAML), which window each
//! run processes, and what happens to ticks missed while nothing was running. Pure: the
//! clock is an argument, so daylight-saving days and outages are tested without waiting.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, LocalResult, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::cron::Cron;
use crate::window::{Window, parse_zone};

/// Ticks missed by less than this still count as on time (the scheduler looks every second).
pub const ON_TIME_GRACE: Duration = Duration::from_secs(60);
/// With `catchup: all`, at most this many missed ticks run (the most recent ones).
pub const CATCHUP_ALL_MAX: usize = 100;
/// Most ticks walked one by one in a pass; past this (a long outage of a very frequent
/// schedule) planning jumps to the most recent ticks.
const TICKS_SCANNED_MAX: usize = 100_000;

fn on_time_grace() -> ChronoDuration {
    ChronoDuration::from_std(ON_TIME_GRACE).unwrap_or_default()
}

/// `schedule:` in a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Five fields (or six, with seconds first), in `timezone`.
    pub cron: String,
    /// IANA zone the cron expression and the window follow; default: the workflow's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The window each run processes, relative to its tick (default `yesterday`).
    #[serde(default = "default_window")]
    pub window: String,
    /// What happens to ticks missed while no coordinator ran (default `latest`).
    #[serde(default)]
    pub catchup: Catchup,
}

fn default_window() -> String {
    "yesterday".into()
}

/// Missed ticks: none run, only the most recent one, or all of them (at most
/// [`CATCHUP_ALL_MAX`], the most recent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    None,
    #[default]
    Latest,
    All,
}

impl Catchup {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latest => "latest",
            Self::All => "all",
        }
    }
}

/// A window relative to a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelativeWindow {
    /// The calendar day before the tick's, in the zone.
    Yesterday,
    /// The tick's calendar day.
    Today,
    /// The hour before the tick's hour.
    PreviousHour,
    /// The span of time just before the tick: `last 7d`, `last 6h`, `last 30m`.
    Last(Duration),
}

impl FromStr for RelativeWindow {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        match trimmed {
            "yesterday" => return Ok(Self::Yesterday),
            "today" => return Ok(Self::Today),
            "previous_hour" => return Ok(Self::PreviousHour),
            _ => {}
        }
        if let Some(span) = trimmed.strip_prefix("last ") {
            let duration: crate::HumanDuration =
                span.trim().parse().map_err(|error| format!("window `{trimmed}`: {error}"))?;
            if duration.as_duration().is_zero() {
                return Err(format!("window `{trimmed}` is empty"));
            }
            return Ok(Self::Last(duration.as_duration()));
        }
        Err(format!(
            "window `{}`: write yesterday, today, previous_hour, or last N (last 7d, last 6h, last 30m)",
            trimmed.chars().take(60).collect::<String>()
        ))
    }
}

impl RelativeWindow {
    /// The window a run fired at `tick` processes, in `zone`.
    pub fn at(self, tick: DateTime<Utc>, zone: Tz) -> Window {
        let local = tick.with_timezone(&zone);
        let (start, end) = match self {
            Self::Yesterday => {
                let day = Window::day(local.date_naive().pred_opt().unwrap_or(local.date_naive()), zone);
                return day;
            }
            Self::Today => return Window::day(local.date_naive(), zone),
            Self::PreviousHour => {
                let hour = local.naive_local().with_minute(0).and_then(|time| time.with_second(0));
                let hour = hour.and_then(|time| time.with_nanosecond(0)).unwrap_or(local.naive_local());
                let end = match zone.from_local_datetime(&hour) {
                    LocalResult::Single(time) | LocalResult::Ambiguous(time, _) => time.with_timezone(&Utc),
                    LocalResult::None => tick,
                };
                (end - ChronoDuration::hours(1), end)
            }
            Self::Last(span) => (tick - ChronoDuration::from_std(span).unwrap_or_default(), tick),
        };
        Window { start: start.with_timezone(&zone).fixed_offset(), end: end.with_timezone(&zone).fixed_offset() }
    }
}

/// A schedule ready to evaluate.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub cron: Cron,
    pub zone: Tz,
    pub window: RelativeWindow,
    pub catchup: Catchup,
}

impl Schedule {
    /// Checks a `schedule:` section; `workflow_zone` is the workflow's `timezone`.
    pub fn from_spec(spec: &ScheduleSpec, workflow_zone: Option<&str>) -> Result<Self, String> {
        // Decision 12: windows follow the workflow's zone and ticks the schedule's; two
        // different zones would give scheduled runs other days than backfills and audits.
        if let (Some(schedule), Some(workflow)) = (spec.timezone.as_deref(), workflow_zone)
            && schedule != workflow
        {
            return Err(format!(
                "timezone `{schedule}` differs from the workflow's timezone `{workflow}`: set the zone once (the workflow's `timezone:` is also the schedule's)"
            ));
        }
        let cron: Cron = spec.cron.parse().map_err(|error: crate::cron::CronError| error.to_string())?;
        let zone_name = spec.timezone.as_deref().or(workflow_zone).unwrap_or("UTC");
        let zone = parse_zone(zone_name).map_err(|error| error.to_string())?;
        let window = spec.window.parse()?;
        if cron.next_after(zone, Utc::now()).is_none() {
            return Err(format!("cron `{}` never fires", spec.cron));
        }
        Ok(Self { cron, zone, window, catchup: spec.catchup })
    }

    /// What to fire at `now`, given that every tick up to `last` was handled.
    pub fn plan(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> TickPlan {
        let on_time_from = now - on_time_grace();
        let keep = match self.catchup {
            Catchup::None | Catchup::Latest => 1,
            Catchup::All => CATCHUP_ALL_MAX,
        };
        let mut missed: VecDeque<DateTime<Utc>> = VecDeque::new();
        let mut on_time = Vec::new();
        let mut skipped = 0;
        let mut cursor = last;
        let mut scanned = 0;
        let mut previous = last;
        while let Some(tick) = self.cron.next_after(self.zone, cursor) {
            if tick > now {
                break;
            }
            if scanned == TICKS_SCANNED_MAX {
                // Too many missed ticks to walk one by one: jump to just before the most
                // recent ones (by the schedule's own period) and drop the rest.
                let period = (cursor - previous).max(ChronoDuration::seconds(1));
                let span = i32::try_from(keep + 2).unwrap_or(i32::MAX);
                let jump = now - on_time_grace() - period * span;
                if jump <= cursor {
                    break;
                }
                // Jumped-over ticks are not counted: `skipped` is a lower bound then.
                skipped += missed.len();
                missed.clear();
                cursor = jump;
                scanned = 0;
                continue;
            }
            scanned += 1;
            previous = cursor;
            cursor = tick;
            if tick >= on_time_from {
                on_time.push(tick);
            } else {
                missed.push_back(tick);
                if missed.len() > keep {
                    missed.pop_front();
                    skipped += 1;
                }
            }
        }
        if self.catchup == Catchup::None {
            skipped += missed.len();
            missed.clear();
        }
        let handled_until = now.max(last);
        let mut fire: Vec<DateTime<Utc>> = missed.into_iter().collect();
        fire.extend(on_time);
        TickPlan { fire, skipped, handled_until }
    }

    /// The next tick after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.next_after(self.zone, after)
    }

    /// The windows this schedule's ticks process that start on the local days `from` to
    /// `to` (both included, in its zone), oldest first, each once: an audit grid's columns.
    /// `None` when there are more than `max`, or when finding them would look at more than
    /// [`TICKS_SCANNED_MAX`] ticks (a minutely cron over a year).
    pub fn windows_on_days(&self, from: chrono::NaiveDate, to: chrono::NaiveDate, max: usize) -> Option<Vec<Window>> {
        let first = Window::day(from, self.zone).start.to_utc();
        let end = Window::day(to, self.zone).end.to_utc();
        // A window starts at or before its tick, and ends at most a day after it (`today`),
        // or a span before it (`last 30d`): ticks after `end` plus that lead start no window
        // in the range.
        let span = match self.window {
            RelativeWindow::Last(span) => ChronoDuration::from_std(span).unwrap_or(ChronoDuration::MAX),
            _ => ChronoDuration::zero(),
        };
        let last_tick = end.checked_add_signed(span.max(ChronoDuration::days(2)))?;
        let mut windows: Vec<Window> = Vec::new();
        let mut cursor = first - ChronoDuration::seconds(1);
        let mut scanned = 0;
        while let Some(tick) = self.next_after(cursor) {
            if tick > last_tick {
                break;
            }
            scanned += 1;
            if scanned > TICKS_SCANNED_MAX {
                return None;
            }
            cursor = tick;
            let window = self.window.at(tick, self.zone);
            let day = window.start.with_timezone(&self.zone).date_naive();
            if day < from || day > to || windows.last().is_some_and(|last| *last == window) {
                continue;
            }
            windows.push(window);
            if windows.len() > max {
                return None;
            }
        }
        windows.sort_by_key(|window| (window.start, window.end));
        windows.dedup();
        Some(windows)
    }
}

/// The outcome of [`Schedule::plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickPlan {
    /// Ticks to run, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed ticks the catch-up policy drops.
    pub skipped: usize,
    /// Every tick up to here is handled once `fire` has run.
    pub handled_until: DateTime<Utc>,
}

impl fmt::Display for Catchup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn schedule(cron: &str, zone: &str, window: &str, catchup: Catchup) -> Schedule {
        let spec = ScheduleSpec { cron: cron.into(), timezone: Some(zone.into()), window: window.into(), catchup };
        Schedule::from_spec(&spec, None).unwrap()
    }

    fn day(text: &str) -> chrono::NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn an_audits_columns_are_the_windows_the_ticks_process() {
        // Hourly, the hour before: the spring-forward day has 23 hours.
        let hourly = schedule("5 * * * *", "Europe/Berlin", "previous_hour", Catchup::None);
        let windows = hourly.windows_on_days(day("2024-03-30"), day("2024-03-31"), 2_000).unwrap();
        assert_eq!(windows.len(), 24 + 23);
        assert_eq!(windows[0].to_string(), "2024-03-30T00:00:00+01:00..2024-03-30T01:00:00+01:00");
        assert_eq!(windows[46].to_string(), "2024-03-31T23:00:00+02:00..2024-04-01T00:00:00+02:00");
        assert!(windows.windows(2).all(|pair| pair[0].end == pair[1].start), "contiguous, oldest first");

        // Daily at 02:30 for yesterday: one day each, the first day's from the second day's tick.
        let daily = schedule("30 2 * * *", "America/New_York", "yesterday", Catchup::None);
        let days: Vec<String> = daily
            .windows_on_days(day("2024-03-01"), day("2024-03-03"), 2_000)
            .unwrap()
            .iter()
            .map(|window| window.start.format("%Y-%m-%d %z").to_string())
            .collect();
        assert_eq!(days, ["2024-03-01 -0500", "2024-03-02 -0500", "2024-03-03 -0500"]);

        // Weekly over the last 7 days: the windows that start in the range, however far
        // their ticks are past it.
        let weekly = schedule("0 6 * * 1", "UTC", "last 7d", Catchup::None);
        let windows = weekly.windows_on_days(day("2024-03-01"), day("2024-03-14"), 2_000).unwrap();
        let starts: Vec<String> = windows.iter().map(|window| window.start.to_rfc3339()).collect();
        assert_eq!(starts, ["2024-03-04T06:00:00+00:00", "2024-03-11T06:00:00+00:00"]);

        // Too many to show, or to look at, is none: the caller says to narrow the range.
        assert!(hourly.windows_on_days(day("2024-01-01"), day("2024-12-31"), 2_000).is_none());
        let minutely = schedule("* * * * *", "UTC", "last 1m", Catchup::None);
        assert!(minutely.windows_on_days(day("2024-01-01"), day("2024-12-31"), usize::MAX).is_none());
    }

    #[test]
    fn windows_relative_to_the_tick_follow_the_zone() {
        let zone: Tz = "America/Los_Angeles".parse().unwrap();
        // 2024-03-11 02:30 PDT, the day after spring forward.
        let tick = utc("2024-03-11T09:30:00Z");
        let window = |text: &str| text.parse::<RelativeWindow>().unwrap().at(tick, zone).to_string();
        assert_eq!(window("yesterday"), "2024-03-10T00:00:00-08:00..2024-03-11T00:00:00-07:00");
        assert_eq!(window("today"), "2024-03-11T00:00:00-07:00..2024-03-12T00:00:00-07:00");
        assert_eq!(window("previous_hour"), "2024-03-11T01:00:00-07:00..2024-03-11T02:00:00-07:00");
        assert_eq!(window("last 7d"), "2024-03-04T01:30:00-08:00..2024-03-11T02:30:00-07:00");
        assert!("last week".parse::<RelativeWindow>().unwrap_err().contains("last week"));
        assert!("tomorrow".parse::<RelativeWindow>().unwrap_err().contains("write yesterday"));
    }

    #[test]
    fn on_time_ticks_fire_and_missed_ones_follow_the_catchup_policy() {
        let last = utc("2024-03-01T00:00:00Z");
        // Down from 00:00 to 05:00:30; an hourly schedule missed 01:00..04:00, 05:00 is on time.
        let now = utc("2024-03-01T05:00:30Z");
        let none = schedule("0 * * * *", "UTC", "previous_hour", Catchup::None).plan(last, now);
        assert_eq!(none.fire, [utc("2024-03-01T05:00:00Z")]);
        assert_eq!(none.skipped, 4);
        let latest = schedule("0 * * * *", "UTC", "previous_hour", Catchup::Latest).plan(last, now);
        assert_eq!(latest.fire, [utc("2024-03-01T04:00:00Z"), utc("2024-03-01T05:00:00Z")]);
        assert_eq!(latest.skipped, 3);
        let all = schedule("0 * * * *", "UTC", "previous_hour", Catchup::All).plan(last, now);
        assert_eq!(all.fire.len(), 5);
        assert_eq!(all.handled_until, now);
        // Nothing is due twice: planning again from where the last plan ended fires nothing.
        assert!(schedule("0 * * * *", "UTC", "previous_hour", Catchup::All).plan(now, now).fire.is_empty());
    }

    #[test]
    fn catchup_all_is_bounded_to_the_most_recent_ticks() {
        let plan = schedule("* * * * *", "UTC", "last 1m", Catchup::All)
            .plan(utc("2024-03-01T00:00:00Z"), utc("2024-03-02T00:00:00Z"));
        // 23:59 and 00:00 are within the on-time grace; 100 of the 1,438 missed before run.
        assert_eq!(plan.fire.len(), CATCHUP_ALL_MAX + 2);
        assert_eq!(plan.fire.last(), Some(&utc("2024-03-02T00:00:00Z")));
        assert_eq!(plan.skipped, 24 * 60 - CATCHUP_ALL_MAX - 2);
    }

    #[test]
    fn after_a_very_long_outage_the_most_recent_ticks_still_run() {
        // Every second for two days: far more ticks than are walked one by one.
        let last = utc("2024-03-01T00:00:00Z");
        let now = utc("2024-03-03T00:00:00Z");
        let latest = schedule("* * * * * *", "UTC", "last 1s", Catchup::Latest).plan(last, now);
        let missed: Vec<_> = latest.fire.iter().filter(|tick| **tick < now - on_time_grace()).collect();
        assert_eq!(missed, [&utc("2024-03-02T23:58:59Z")], "the most recent missed tick");
        assert_eq!(latest.handled_until, now);
        let all = schedule("* * * * * *", "UTC", "last 1s", Catchup::All).plan(last, now);
        let missed: Vec<_> = all.fire.iter().filter(|tick| **tick < now - on_time_grace()).collect();
        assert_eq!(missed.len(), CATCHUP_ALL_MAX);
        assert_eq!(missed.last(), Some(&&utc("2024-03-02T23:58:59Z")));
    }

    #[test]
    fn a_daily_0230_schedule_fires_once_on_each_dst_transition_day() {
        let s = schedule("30 2 * * *", "America/Los_Angeles", "yesterday", Catchup::All);
        let spring = s.plan(utc("2024-03-10T00:00:00Z"), utc("2024-03-11T00:00:00Z"));
        assert_eq!(spring.fire, [utc("2024-03-10T10:00:00Z")], "03:00 PDT, when the clock jumps");
        let fall = s.plan(utc("2024-11-03T00:00:00Z"), utc("2024-11-04T00:00:00Z"));
        assert_eq!(fall.fire, [utc("2024-11-03T10:30:00Z")], "02:30 PST, once");
        assert_eq!(
            RelativeWindow::Yesterday.at(fall.fire[0], s.zone).to_string(),
            "2024-11-02T00:00:00-07:00..2024-11-03T00:00:00-07:00"
        );
    }
}
