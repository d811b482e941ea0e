//! Backfill planning, pure: which windows of a range get a run, given the runs already
//! recorded. The coordinator plans when it applies a `backfill_create` request; `sluice
//! audit` uses the same matching of windows to runs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::ids::RunId;
use crate::messages::{BackfillWindow, Rerun, RunRecord};
use crate::state::RunState;
use crate::window::Window;

/// A window's identity for matching: its exact start and end instants.
pub type WindowKey = (DateTime<Utc>, DateTime<Utc>);

pub fn key_of(window: &Window) -> WindowKey {
    (window.start.to_utc(), window.end.to_utc())
}

/// The newest run of each window; `runs` must be newest first.
pub fn latest_by_window(runs: &[RunRecord]) -> HashMap<WindowKey, &RunRecord> {
    let mut latest = HashMap::new();
    for run in runs {
        latest.entry(key_of(&run.window)).or_insert(run);
    }
    latest
}

/// Why a window needs no run under `rerun`, given the state of its newest run (if any).
pub fn skip_reason(rerun: Rerun, previous: Option<RunState>) -> Option<&'static str> {
    match (rerun, previous) {
        (_, Some(RunState::Running)) => Some("a run of this window is running"),
        (Rerun::Missing, Some(RunState::Succeeded)) => Some("already succeeded"),
        (Rerun::Failed, None) => Some("never ran"),
        (Rerun::Failed, Some(RunState::Succeeded)) => Some("already succeeded"),
        _ => None,
    }
}

/// The backfill's windows, each with a fresh run id (chosen now, so re-submitting a window
/// after a crash can never make a second run) or the reason it is skipped.
pub fn plan(windows: Vec<Window>, runs_newest_first: &[RunRecord], rerun: Rerun) -> Vec<BackfillWindow> {
    let latest = latest_by_window(runs_newest_first);
    windows
        .into_iter()
        .map(|window| {
            let previous = latest.get(&key_of(&window)).copied();
            let skip = skip_reason(rerun, previous.map(|run| run.state)).map(|reason| {
                format!("{reason}{}", previous.map(|run| format!(" (run {})", run.id)).unwrap_or_default())
            });
            BackfillWindow { window, run_id: RunId::new(), skip, state: None }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn day(d: u32) -> Window {
        let date = NaiveDate::from_ymd_opt(2024, 3, d).unwrap();
        Window::range(date, date, std::time::Duration::from_secs(24 * 3600), chrono_tz::UTC, 10).unwrap().remove(0)
    }

    fn run(window: Window, state: RunState) -> RunRecord {
        RunRecord {
            schema_version: crate::SCHEMA_VERSION,
            id: RunId::new(),
            workflow: "w".into(),
            spec_yaml: String::new(),
            spec_hash: None,
            window,
            params: Default::default(),
            state,
            created_at: Utc::now(),
            finished_at: None,
            idempotency_key: None,
            error: None,
            traceparent: None,
            tracestate: None,
            jobs: Vec::new(),
            origin: "manual".into(),
            queued_at_start: None,
            cancelled_by: None,
        }
    }

    #[test]
    fn each_rerun_policy_skips_what_it_should() {
        use RunState::*;
        let cases = [
            (Rerun::Missing, None, None),
            (Rerun::Missing, Some(Succeeded), Some("already succeeded")),
            (Rerun::Missing, Some(Failed), None),
            (Rerun::Missing, Some(Cancelled), None),
            (Rerun::Missing, Some(Running), Some("a run of this window is running")),
            (Rerun::Failed, None, Some("never ran")),
            (Rerun::Failed, Some(Succeeded), Some("already succeeded")),
            (Rerun::Failed, Some(Failed), None),
            (Rerun::All, Some(Succeeded), None),
            (Rerun::All, None, None),
            (Rerun::All, Some(Running), Some("a run of this window is running")),
        ];
        for (rerun, previous, expected) in cases {
            assert_eq!(skip_reason(rerun, previous), expected, "{rerun:?} after {previous:?}");
        }
    }

    #[test]
    fn the_newest_run_of_a_window_decides() {
        // Newest first: the failed run is newer than the success.
        let runs =
            vec![run(day(1), RunState::Failed), run(day(1), RunState::Succeeded), run(day(2), RunState::Succeeded)];
        let planned = plan(vec![day(1), day(2), day(3)], &runs, Rerun::Missing);
        assert_eq!(planned[0].skip, None, "the newest run of day 1 failed");
        assert!(planned[1].skip.as_deref().unwrap().starts_with("already succeeded (run "));
        assert_eq!(planned[2].skip, None);
        let ids: std::collections::HashSet<_> = planned.iter().map(|window| window.run_id).collect();
        assert_eq!(ids.len(), 3, "every window gets its own run id");
    }
}
