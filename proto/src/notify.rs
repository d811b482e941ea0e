//! Notifications: what a workflow asks to be told (`notify:` rules naming operator-defined
//! targets), the notice the coordinator keeps in its outbox stream until it is delivered,
//! the JSON body each target is POSTed (with a Slack-compatible `text`), and the delivery
//! status `sluice status` shows. Pure: the coordinator decides and delivers.
//!
//! Targets are named by the operator (`sluice coordinator --notify-targets FILE`), never
//! written by submitters: a URL in a workflow would let anyone who can submit make the
//! coordinator call anything it can reach.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::RunId;
use crate::limits::{NOTIFY_ERROR_MAX_BYTES, NOTIFY_FAILED_JOBS_MAX, NOTIFY_RULES_MAX};
use crate::messages::{RunRecord, SCHEMA_VERSION, Versioned, truncate_error};
use crate::spec::check_name;
use crate::state::RunState;
use crate::window::Window;

/// What a notification is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// The run ended `failed`.
    Failed,
    /// The run ended `succeeded`.
    Succeeded,
    /// A job's attempts are over: it is in the dead-letter stream.
    DeadLetter,
    /// The schedule dropped ticks by its catch-up policy (missed while no coordinator ran).
    ScheduleMissed,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 4] = [Self::Failed, Self::Succeeded, Self::DeadLetter, Self::ScheduleMissed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Succeeded => "succeeded",
            Self::DeadLetter => "dead_letter",
            Self::ScheduleMissed => "schedule_missed",
        }
    }
}

impl fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `notify:` entry of a workflow: tell `target` of these events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyRule {
    /// A target the coordinator's `--notify-targets` file names.
    pub target: String,
    pub on: Vec<NotifyEvent>,
}

/// Problems with a workflow's `notify:` rules (names, counts, repeats); whether each
/// target exists is the coordinator's to say ([`unknown_targets`]).
pub fn check_rules(rules: &[NotifyRule]) -> Vec<String> {
    let mut problems = Vec::new();
    if rules.len() > NOTIFY_RULES_MAX {
        problems.push(format!("notify: {} rules; the limit is {NOTIFY_RULES_MAX}", rules.len()));
    }
    for (index, rule) in rules.iter().enumerate() {
        if let Err(problem) = check_name("notify target", &rule.target) {
            problems.push(format!("notify[{index}]: {problem}"));
        }
        if rule.on.is_empty() {
            let events: Vec<&str> = NotifyEvent::ALL.iter().map(|event| event.as_str()).collect();
            problems.push(format!("notify[{index}]: `on` is empty: name events ({})", events.join(", ")));
        }
        if rules[..index].iter().any(|earlier| earlier.target == rule.target) {
            problems
                .push(format!("notify[{index}]: target `{}` is listed twice: put its events in one rule", rule.target));
        }
    }
    problems
}

/// The targets rules name that are not in `known`, in rule order: a validation error at
/// submission (the refusal lists the targets there are).
pub fn unknown_targets<'a>(rules: &'a [NotifyRule], known: &dyn Fn(&str) -> bool) -> Vec<&'a str> {
    rules.iter().map(|rule| rule.target.as_str()).filter(|target| !known(target)).collect()
}

/// The targets to tell of `event`, in rule order.
pub fn targets_of(rules: &[NotifyRule], event: NotifyEvent) -> impl Iterator<Item = &str> {
    rules.iter().filter(move |rule| rule.on.contains(&event)).map(|rule| rule.target.as_str())
}

/// A job a failed run's notice names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedJob {
    pub job: String,
    /// Its last error, the end kept ([`NOTIFY_ERROR_MAX_BYTES`]).
    pub error: String,
    pub attempts: u32,
}

/// One event for one target, kept in the outbox stream until it is delivered: MessagePack
/// there, and (with `text` and `links`, [`Body`]) the JSON a target receives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub schema_version: u32,
    /// The idempotency key: the same for every delivery of this event to this target
    /// (header `Idempotency-Key`), different for every other. Derived from stored facts, so
    /// a coordinator that re-announces after a crash derives the same one.
    pub id: String,
    pub event: NotifyEvent,
    pub target: String,
    pub workflow: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// The run's state when the notice was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    /// `manual`, `schedule:<name>` or `backfill:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// `failed`: the jobs that failed, the first [`NOTIFY_FAILED_JOBS_MAX`]; `dead_letter`:
    /// the job.
    #[serde(default)]
    pub failed_jobs: Vec<FailedJob>,
    #[serde(default)]
    pub failed_jobs_omitted: u32,
    /// `dead_letter`: the job's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// `schedule_missed`: ticks dropped in this pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_ticks: Option<u64>,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl Versioned for Notice {
    const WHAT: &'static str = "notice";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

/// Ids: `<run_id>.<target>.<event>.<discriminator>`, so a run's statuses share the prefix
/// `<run_id>.` (KV `sluice-notifications`); schedules use `_schedule.<workflow>.…`.
impl Notice {
    /// A notice of `event` for `target` with nothing else set ([`Notice::of_run`] adds
    /// the run's fields).
    pub fn new(id: String, event: NotifyEvent, target: &str, workflow: &str, at: DateTime<Utc>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            id,
            event,
            target: target.to_owned(),
            workflow: workflow.to_owned(),
            run_id: None,
            window: None,
            state: None,
            origin: None,
            failed_jobs: Vec::new(),
            failed_jobs_omitted: 0,
            pool: None,
            skipped_ticks: None,
            at,
        }
    }

    /// With the run's id, window, state and origin.
    pub fn of_run(self, record: &RunRecord) -> Self {
        Self {
            run_id: Some(record.id),
            window: Some(record.window),
            state: Some(record.state),
            origin: Some(record.origin.clone()),
            ..self
        }
    }

    /// A run that ended: a run ends at most once per `finished_at` (a rerun ends again later).
    pub fn run_finished_id(run_id: &RunId, target: &str, event: NotifyEvent, finished_at: DateTime<Utc>) -> String {
        format!("{run_id}.{target}.{event}.{}", finished_at.timestamp_millis())
    }

    /// A dead letter: a job's generation is dead-lettered at most once.
    pub fn dead_letter_id(run_id: &RunId, target: &str, job: &str, generation: u32) -> String {
        format!("{run_id}.{target}.dead_letter.{generation}.{job}")
    }

    /// Ticks a schedule dropped in the pass that started from `handled_until` (a pass whose
    /// record write lost derives the same id on the next).
    pub fn schedule_missed_id(workflow: &str, target: &str, handled_until: DateTime<Utc>) -> String {
        format!("_schedule.{workflow}.{target}.schedule_missed.{}", handled_until.timestamp_millis())
    }

    /// The jobs a failed run's notice lists, from (path, last error, attempts): the first
    /// [`NOTIFY_FAILED_JOBS_MAX`], errors cut to their end; returns them and how many were
    /// left out.
    pub fn failed_jobs<'a>(jobs: impl Iterator<Item = (&'a str, &'a str, u32)>) -> (Vec<FailedJob>, u32) {
        let mut listed = Vec::new();
        let mut omitted = 0u32;
        for (job, error, attempts) in jobs {
            if listed.len() < NOTIFY_FAILED_JOBS_MAX {
                listed.push(FailedJob {
                    job: job.to_owned(),
                    error: truncate_error(error, NOTIFY_ERROR_MAX_BYTES),
                    attempts,
                });
            } else {
                omitted = omitted.saturating_add(1);
            }
        }
        (listed, omitted)
    }

    /// One line a person reads (Slack renders `<url|label>` as a link).
    pub fn text(&self, run_link: Option<&str>) -> String {
        let run = match (&self.run_id, run_link) {
            (Some(_), Some(link)) => format!("<{link}|run {}>", self.short_run()),
            (Some(_), None) => format!("run {}", self.short_run()),
            (None, _) => String::new(),
        };
        let window = self.window.map(|window| format!(" for {window}")).unwrap_or_default();
        let jobs = |jobs: &[FailedJob]| {
            jobs.iter().map(|job| format!("`{}` ({})", job.job, first_line(&job.error))).collect::<Vec<_>>().join(", ")
        };
        match self.event {
            NotifyEvent::Failed => {
                let mut text = format!(":x: `{}` {run}{window} failed", self.workflow);
                if !self.failed_jobs.is_empty() {
                    text.push_str(": ");
                    text.push_str(&jobs(&self.failed_jobs));
                }
                if self.failed_jobs_omitted > 0 {
                    text.push_str(&format!(" and {} more", self.failed_jobs_omitted));
                }
                text
            }
            NotifyEvent::Succeeded => format!(":white_check_mark: `{}` {run}{window} succeeded", self.workflow),
            NotifyEvent::DeadLetter => format!(
                ":warning: `{}` {run}{window}: job {} is dead-lettered{}",
                self.workflow,
                jobs(&self.failed_jobs),
                self.pool.as_ref().map(|pool| format!(" (pool `{pool}`)")).unwrap_or_default()
            ),
            NotifyEvent::ScheduleMissed => format!(
                ":hourglass: schedule `{}` dropped {} missed tick(s) by its catch-up policy",
                self.workflow,
                self.skipped_ticks.unwrap_or(0)
            ),
        }
    }

    fn short_run(&self) -> String {
        self.run_id.map(|id| id.to_string()).unwrap_or_default()
    }
}

fn first_line(text: &str) -> &str {
    text.lines().find(|line| !line.trim().is_empty()).unwrap_or("").trim()
}

/// Links a notice carries when the operator configured where the UI is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// The JSON a target is POSTed: the notice's fields, `text` for Slack-compatible
/// receivers, and `links`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Body<'a> {
    #[serde(flatten)]
    pub notice: &'a Notice,
    pub text: String,
    pub links: Links,
}

impl<'a> Body<'a> {
    /// `ui_url` is the UI's base (`https://sluice.example.com`); a run's page is
    /// `<ui_url>/runs/<run_id>`.
    pub fn new(notice: &'a Notice, ui_url: Option<&str>) -> Self {
        let run = match (ui_url, notice.run_id) {
            (Some(base), Some(id)) => Some(format!("{}/runs/{id}", base.trim_end_matches('/'))),
            _ => None,
        };
        Self { notice, text: notice.text(run.as_deref()), links: Links { run } }
    }
}

/// Where a notice's delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; another attempt follows.
    Pending,
    /// The target answered 2xx.
    Delivered,
    /// No attempt follows: the target refused it for good (a 4xx other than 408 and 429),
    /// it is unknown now, or the attempts ran out.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }
}

/// A notice's delivery, in KV `sluice-notifications` under its id (written by the
/// coordinator's notifier only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyStatus {
    pub schema_version: u32,
    pub id: String,
    pub event: NotifyEvent,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<RunId>,
    pub state: DeliveryState,
    /// The last HTTP status the target answered (none when it could not be reached).
    #[serde(default)]
    pub status_code: Option<u16>,
    /// HTTP attempts made.
    pub attempts: u32,
    pub last_at: DateTime<Utc>,
    /// Why the last attempt did not deliver it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Versioned for NotifyStatus {
    const WHAT: &'static str = "notification status";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

impl NotifyStatus {
    /// The first record of `notice`'s delivery, before any attempt.
    pub fn pending(notice: &Notice, at: DateTime<Utc>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            id: notice.id.clone(),
            event: notice.event,
            target: notice.target.clone(),
            run_id: notice.run_id,
            state: DeliveryState::Pending,
            status_code: None,
            attempts: 0,
            last_at: at,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn failed_notice() -> Notice {
        let (failed_jobs, failed_jobs_omitted) =
            Notice::failed_jobs([("load", "exit status 3\nstack…", 2), ("report", "timeout", 1)].into_iter());
        let run_id = RunId::new();
        let at = utc("2024-03-11T10:00:00Z");
        let id = Notice::run_finished_id(&run_id, "data-team", NotifyEvent::Failed, at);
        Notice {
            run_id: Some(run_id),
            window: Some(
                Window::new(utc("2024-03-10T00:00:00Z").fixed_offset(), utc("2024-03-11T00:00:00Z").fixed_offset())
                    .unwrap(),
            ),
            state: Some(RunState::Failed),
            origin: Some("manual".into()),
            failed_jobs,
            failed_jobs_omitted,
            ..Notice::new(id, NotifyEvent::Failed, "data-team", "daily", at)
        }
    }

    #[test]
    fn rules_are_checked_for_names_events_and_repeats() {
        let yaml = "- {target: data-team, on: [failed, dead_letter]}\n- {target: 'bad name', on: []}\n- {target: data-team, on: [succeeded]}\n";
        let rules: Vec<NotifyRule> = serde_saphyr::from_str(yaml).unwrap();
        let problems = check_rules(&rules);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("notify[1]: notify target name `bad name`"), "{problems:?}");
        assert!(problems[1].contains("notify[1]: `on` is empty"), "{problems:?}");
        assert!(problems[2].contains("target `data-team` is listed twice"), "{problems:?}");
        let unknown_event = serde_saphyr::from_str::<Vec<NotifyRule>>("- {target: t, on: [exploded]}\n").unwrap_err();
        assert!(unknown_event.to_string().contains("exploded"), "{unknown_event}");
    }

    #[test]
    fn targets_of_an_event_and_unknown_targets_follow_the_rules() {
        let rules: Vec<NotifyRule> =
            serde_saphyr::from_str("- {target: a, on: [failed]}\n- {target: b, on: [failed, succeeded]}\n").unwrap();
        assert_eq!(targets_of(&rules, NotifyEvent::Failed).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(targets_of(&rules, NotifyEvent::Succeeded).collect::<Vec<_>>(), ["b"]);
        assert!(targets_of(&rules, NotifyEvent::DeadLetter).next().is_none());
        assert_eq!(unknown_targets(&rules, &|name| name == "a"), ["b"]);
    }

    #[test]
    fn a_failed_runs_body_names_its_jobs_and_links_to_the_run() {
        let notice = failed_notice();
        let body = serde_json::to_value(Body::new(&notice, Some("https://sluice.example.com/"))).unwrap();
        let run_id = notice.run_id.unwrap();
        assert_eq!(body["event"], "failed");
        assert_eq!(body["state"], "failed");
        assert_eq!(body["workflow"], "daily");
        assert_eq!(body["run_id"], run_id.to_string());
        assert_eq!(body["window"]["start"], "2024-03-10T00:00:00Z");
        assert_eq!(body["failed_jobs"][0]["job"], "load");
        assert_eq!(body["failed_jobs"][0]["attempts"], 2);
        let link = format!("https://sluice.example.com/runs/{run_id}");
        assert_eq!(body["links"]["run"], link.as_str());
        assert_eq!(
            body["text"],
            format!(
                ":x: `daily` <{link}|run {run_id}> for 2024-03-10T00:00:00Z..2024-03-11T00:00:00Z failed: `load` (exit status 3), `report` (timeout)"
            )
        );
        let unlinked = serde_json::to_value(Body::new(&notice, None)).unwrap();
        assert_eq!(unlinked["links"], serde_json::json!({}));
    }

    #[test]
    fn a_long_list_of_failed_jobs_is_cut_and_counted() {
        let errors: Vec<(String, String)> = (0..NOTIFY_FAILED_JOBS_MAX + 3)
            .map(|i| (format!("j{i}"), "x".repeat(NOTIFY_ERROR_MAX_BYTES * 2)))
            .collect();
        let (listed, omitted) =
            Notice::failed_jobs(errors.iter().map(|(job, error)| (job.as_str(), error.as_str(), 1)));
        assert_eq!((listed.len(), omitted), (NOTIFY_FAILED_JOBS_MAX, 3));
        assert!(listed.iter().all(|job| job.error.len() <= NOTIFY_ERROR_MAX_BYTES + "…".len()));
        let mut notice = failed_notice();
        (notice.failed_jobs, notice.failed_jobs_omitted) = (listed, omitted);
        assert!(notice.text(None).ends_with(" and 3 more"), "{}", notice.text(None));
    }

    #[test]
    fn ids_differ_by_event_target_and_occurrence_and_are_stable() {
        let run = RunId::new();
        let at = utc("2024-03-11T10:00:00Z");
        let failed = Notice::run_finished_id(&run, "t", NotifyEvent::Failed, at);
        assert_eq!(failed, Notice::run_finished_id(&run, "t", NotifyEvent::Failed, at));
        assert_ne!(failed, Notice::run_finished_id(&run, "u", NotifyEvent::Failed, at));
        assert_ne!(failed, Notice::run_finished_id(&run, "t", NotifyEvent::Succeeded, at));
        assert_ne!(failed, Notice::run_finished_id(&run, "t", NotifyEvent::Failed, at + chrono::Duration::seconds(1)));
        assert_ne!(Notice::dead_letter_id(&run, "t", "a.b", 1), Notice::dead_letter_id(&run, "t", "a.b", 2));
        assert!(failed.starts_with(&format!("{run}.")));
        assert!(Notice::schedule_missed_id("daily", "t", at).starts_with("_schedule.daily."));
    }

    #[test]
    fn notices_and_statuses_round_trip_through_messagepack() {
        let notice = failed_notice();
        let bytes = crate::encode(&notice).unwrap();
        assert_eq!(crate::decode::<Notice>(&bytes).unwrap(), notice);
        let status = NotifyStatus::pending(&notice, notice.at);
        assert_eq!(crate::decode::<NotifyStatus>(&crate::encode(&status).unwrap()).unwrap(), status);
    }
}
