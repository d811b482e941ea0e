//! What a run notes as it changes, for the shell's metrics: noted by the engine (it alone
//! sees each transition once), counted by the shell ([`crate::metrics`]). Notes are data,
//! not effects: nothing in them is carried out, and losing them loses only a count.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_proto::{JobRecord, JobState, RunState};

use super::Run;

/// One thing that happened in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// A job reached a final state (`completed`, `failed`, `cancelled`, `skipped`).
    JobFinished { path: String, state: JobState },
    /// A worker's attempt ended (or JetStream gave up on it).
    AttemptEnded { path: String, outcome: AttemptOutcome },
    /// An attempt was delivered to another worker (noted once per worker, as the record
    /// keeps them).
    Redelivered { path: String },
    /// The first attempt of a job's generation started, `waited` after the job was queued.
    Started { path: String, waited: Duration },
    /// The run ended, `took` after it was created.
    RunFinished { state: RunState, took: Duration },
}

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    /// It failed and another attempt follows.
    Retrying,
    /// It failed and none follows.
    Failed,
}

impl AttemptOutcome {
    /// Its label in `sluice_job_attempts_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
}

/// What a change of one job from `old` to `job.state` is worth noting: its end, its
/// attempt's end, its first start. Pure: the engine calls it from every transition.
pub fn of_transition(path: &str, old: JobState, job: &JobRecord, notes: &mut Vec<Observed>) {
    let new = job.state;
    if old.is_in_flight() {
        // Only an attempt's end leads from an in-flight state to these (a hand's mark sets
        // `marked`; a cancel leads to `cancelled`).
        let outcome = match new {
            JobState::Completed | JobState::Waiting if job.marked.is_none() => Some(AttemptOutcome::Succeeded),
            JobState::Retrying => Some(AttemptOutcome::Retrying),
            JobState::Failed => Some(AttemptOutcome::Failed),
            _ => None,
        };
        if let Some(outcome) = outcome {
            notes.push(Observed::AttemptEnded { path: path.to_owned(), outcome });
        }
    }
    if old == JobState::Queued
        && new != JobState::Queued
        && let (Some(queued), Some(started)) = (job.queued_at, job.started_at)
    {
        notes.push(Observed::Started { path: path.to_owned(), waited: between(queued, started) });
    }
    if !old.is_terminal() && new.is_terminal() {
        notes.push(Observed::JobFinished { path: path.to_owned(), state: new });
    }
}

/// The time from `from` to `to`; zero if clocks make it negative (a worker's clock behind
/// the coordinator's).
pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

impl Run {
    /// What was noted since the last call (the shell counts it).
    pub fn take_observed(&mut self) -> Vec<Observed> {
        std::mem::take(&mut self.observed)
    }

    /// Notes that the run has just ended (its state and `finished_at` set).
    pub(super) fn note_run_finished(&mut self) {
        let took = self.record.finished_at.map_or(Duration::ZERO, |end| between(self.record.created_at, end));
        self.observed.push(Observed::RunFinished { state: self.record.state, took });
    }
}
