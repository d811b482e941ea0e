//! Every time a page shows is in one zone, named in the page's frame: UTC, or the zone the
//! `sluice_tz` cookie names (the page's script sets it to the browser's zone on request).

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// The cookie naming the zone pages are shown in.
pub const ZONE_COOKIE: &str = "sluice_tz";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone(Tz);

impl Zone {
    pub fn utc() -> Self {
        Self(Tz::UTC)
    }

    /// The cookie's zone; one that is not an IANA name is UTC.
    pub fn from_cookie(value: &str) -> Self {
        let decoded = value.replace("%2F", "/").replace("%2f", "/");
        Self(decoded.parse().unwrap_or(Tz::UTC))
    }

    pub fn name(&self) -> String {
        self.0.name().to_owned()
    }

    /// `2024-03-10 14:05:09`, in this zone.
    pub fn show(&self, time: DateTime<Utc>) -> String {
        time.with_timezone(&self.0).format("%Y-%m-%d %H:%M:%S").to_string()
    }

    /// `14:05:09.120`, in this zone: a log line's time.
    pub fn time_of_day(&self, time: DateTime<Utc>) -> String {
        time.with_timezone(&self.0).format("%H:%M:%S%.3f").to_string()
    }

    /// [`Zone::show`], or `-` when there is no time.
    pub fn maybe(&self, time: Option<DateTime<Utc>>) -> String {
        time.map(|time| self.show(time)).unwrap_or_else(|| "-".into())
    }
}

/// A duration as people read it: `850 ms`, `12.3 s`, `4 m 05 s`, `2 h 03 m`.
pub fn duration(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let millis = (to - from).num_milliseconds().max(0);
    match millis {
        0..1_000 => format!("{millis} ms"),
        1_000..60_000 => format!("{:.1} s", millis as f64 / 1000.0),
        60_000..3_600_000 => format!("{} m {:02} s", millis / 60_000, millis / 1000 % 60),
        _ => format!("{} h {:02} m", millis / 3_600_000, millis / 60_000 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_in_the_chosen_zone_and_a_bad_cookie_is_utc() {
        let at = DateTime::parse_from_rfc3339("2024-03-10T23:30:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(Zone::utc().show(at), "2024-03-10 23:30:00");
        let berlin = Zone::from_cookie("Europe%2FBerlin");
        assert_eq!(berlin.name(), "Europe/Berlin");
        assert_eq!(berlin.show(at), "2024-03-11 00:30:00");
        assert_eq!(Zone::from_cookie("Mars/Olympus"), Zone::utc());
        assert_eq!(Zone::utc().maybe(None), "-");
    }

    #[test]
    fn durations_read_naturally() {
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
        assert_eq!(duration(at(0), at(850)), "850 ms");
        assert_eq!(duration(at(0), at(12_340)), "12.3 s");
        assert_eq!(duration(at(0), at(245_000)), "4 m 05 s");
        assert_eq!(duration(at(0), at(7_380_000)), "2 h 03 m");
        assert_eq!(duration(at(10), at(0)), "0 ms");
    }
}
