//! Each change of a job's state: a method on the record that sets exactly its fields and
//! asserts the states it may come from, and [`Run::transition`], which moves the counters.

use chrono::{DateTime, Utc};
use sluice_proto::limits::EARLIER_ATTEMPTS_REPORTED_MAX;
use sluice_proto::messages::{REDELIVERIES_KEPT, bounded_found_later, bounded_worker};
use sluice_proto::spawn::parent_of;
use sluice_proto::{AttemptRecord, EarlierAttempt, EventKind, JobRecord, JobState, Mark, MarkAs};

use super::{Run, observed};

/// The error of an attempt whose worker never reported its end: a later attempt of the job
/// (or JetStream's last-delivery advisory) shows the worker stopped, so it is closed as lost.
pub(crate) const WORKER_LOST: &str = "worker lost";

/// How an attempt ended, as its worker (or JetStream) reported it.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttemptEnd<'a> {
    pub attempt: u32,
    /// When it ended.
    pub at: DateTime<Utc>,
    /// When it began, if the report says (a worker's outcome does; its start may be lost).
    pub started_at: Option<DateTime<Utc>>,
    pub worker: &'a str,
    /// The hash of the spec the run dispatched the attempt with.
    pub spec_hash: Option<&'a str>,
}

/// The transitions of a job record. Each sets `state` and exactly the fields listed.
pub(super) trait Transitions {
    /// `blocked` → `queued`: `queued_at`.
    fn queue(&mut self, now: DateTime<Utc>);
    /// `queued`/`running`/`retrying` → `running`: `attempts`, `retry_at`, `started_at` (the
    /// first), a new attempt in `attempt_history`.
    fn start_attempt(&mut self, attempt: u32, at: DateTime<Utc>, worker: &str, spec_hash: Option<&str>);
    /// Attempt succeeded, no children → `completed`: the attempt closed, `error`,
    /// `retry_at`, `output`, `finished_at`.
    fn succeed(&mut self, end: &AttemptEnd<'_>, output: Option<serde_json::Value>);
    /// Attempt succeeded with `children` → `waiting`: the attempt closed, `error`,
    /// `retry_at`, `output`, `children`.
    fn wait_for_children(&mut self, end: &AttemptEnd<'_>, output: Option<serde_json::Value>, children: u32);
    /// Attempt failed, another due at `retry_at` → `retrying`: the attempt closed, `error`,
    /// `retry_at`.
    fn retry_later(&mut self, end: &AttemptEnd<'_>, error: String, retry_at: DateTime<Utc>);
    /// Attempt failed, none follows → `failed`: the attempt closed, `error`, `retry_at`,
    /// `finished_at`.
    fn fail(&mut self, end: &AttemptEnd<'_>, error: String);
    /// `waiting` → `completed`, every child completed: `finished_at`.
    fn complete_children(&mut self, now: DateTime<Utc>);
    /// `waiting` → `failed`, some child did not complete: `error`, `finished_at`.
    fn fail_children(&mut self, error: String, now: DateTime<Utc>);
    /// `blocked` (or `waiting` again for what it needs) → `skipped`: `error` (why),
    /// `finished_at`.
    fn skip(&mut self, reason: String, now: DateTime<Utc>);
    /// Any unfinished state → `cancelled`: `error`, `retry_at`, `finished_at`.
    fn cancel(&mut self, now: DateTime<Utc>);
    /// Finished → `blocked` in a new generation with fresh attempts: `generation`,
    /// `attempt_offset`, and `error`, `retry_at`, `queued_at`, `started_at`, `finished_at`,
    /// `output` cleared.
    fn reset_for_rerun(&mut self);
    /// Finished or `waiting` → `waiting` for its children again: `error`, `finished_at`.
    fn wait_again(&mut self);
    /// `failed`, `skipped`, `blocked`, `queued` or `retrying` → `completed` or `skipped` by a
    /// user's hand (`sluice mark`): `marked`, `output` (the one given, for a success),
    /// `error`, `retry_at`, `finished_at`.
    fn mark(&mut self, mark: Mark, output: Option<serde_json::Value>, now: DateTime<Utc>);
    /// `skipped` → `blocked` in the same generation (it never started in it), to be decided
    /// again after a mark: `error`, `finished_at`.
    fn unskip(&mut self);
}

fn assert_attempt_may_end(job: &JobRecord) {
    debug_assert!(job.state.is_in_flight(), "job `{}` ends an attempt while {}", job.name, job.state.as_str());
}

impl Transitions for JobRecord {
    fn queue(&mut self, now: DateTime<Utc>) {
        debug_assert_eq!(self.state, JobState::Blocked, "job `{}` queued", self.name);
        self.state = JobState::Queued;
        self.queued_at = Some(now);
    }

    fn start_attempt(&mut self, attempt: u32, at: DateTime<Utc>, worker: &str, spec_hash: Option<&str>) {
        debug_assert!(self.state.is_in_flight(), "job `{}` starts while {}", self.name, self.state.as_str());
        debug_assert!(attempt >= self.attempts, "job `{}` starts attempt {attempt} after {}", self.name, self.attempts);
        self.state = JobState::Running;
        self.attempts = attempt;
        self.retry_at = None;
        self.started_at.get_or_insert(at);
        close_lost_attempts(self, attempt, at);
        self.push_attempt(AttemptRecord {
            attempt,
            started_at: at,
            finished_at: None,
            error: None,
            worker: bounded_worker(worker).into_owned(),
            redelivered_to: Vec::new(),
            spec_hash: spec_hash.map(str::to_owned),
            found_later: None,
        });
    }

    fn succeed(&mut self, end: &AttemptEnd<'_>, output: Option<serde_json::Value>) {
        assert_attempt_may_end(self);
        self.state = JobState::Completed;
        close_attempt(self, end, None);
        self.error = None;
        self.retry_at = None;
        self.output = output;
        self.finished_at = Some(end.at);
    }

    fn wait_for_children(&mut self, end: &AttemptEnd<'_>, output: Option<serde_json::Value>, children: u32) {
        assert_attempt_may_end(self);
        debug_assert!(children > 0, "job `{}` waits for no children", self.name);
        self.state = JobState::Waiting;
        close_attempt(self, end, None);
        self.error = None;
        self.retry_at = None;
        self.output = output;
        self.children = children;
    }

    fn retry_later(&mut self, end: &AttemptEnd<'_>, error: String, retry_at: DateTime<Utc>) {
        assert_attempt_may_end(self);
        self.state = JobState::Retrying;
        close_attempt(self, end, Some(error.clone()));
        self.error = Some(error);
        self.retry_at = Some(retry_at);
    }

    fn fail(&mut self, end: &AttemptEnd<'_>, error: String) {
        assert_attempt_may_end(self);
        self.state = JobState::Failed;
        close_attempt(self, end, Some(error.clone()));
        self.error = Some(error);
        self.retry_at = None;
        self.finished_at = Some(end.at);
    }

    fn complete_children(&mut self, now: DateTime<Utc>) {
        debug_assert_eq!(self.state, JobState::Waiting, "job `{}` completes its children", self.name);
        self.state = JobState::Completed;
        self.finished_at = Some(now);
    }

    fn fail_children(&mut self, error: String, now: DateTime<Utc>) {
        debug_assert_eq!(self.state, JobState::Waiting, "job `{}` fails by its children", self.name);
        self.state = JobState::Failed;
        self.error = Some(error);
        self.finished_at = Some(now);
    }

    fn skip(&mut self, reason: String, now: DateTime<Utc>) {
        debug_assert!(
            matches!(self.state, JobState::Blocked | JobState::Waiting),
            "job `{}` skipped while {}",
            self.name,
            self.state.as_str()
        );
        self.state = JobState::Skipped;
        self.error = Some(reason);
        self.finished_at = Some(now);
    }

    fn cancel(&mut self, now: DateTime<Utc>) {
        debug_assert!(!self.state.is_terminal(), "job `{}` cancelled while {}", self.name, self.state.as_str());
        self.state = JobState::Cancelled;
        self.error = Some("cancelled by a user".to_owned());
        self.retry_at = None;
        self.finished_at = Some(now);
    }

    fn reset_for_rerun(&mut self) {
        debug_assert!(self.state.is_terminal(), "job `{}` runs again while {}", self.name, self.state.as_str());
        self.state = JobState::Blocked;
        self.generation += 1;
        self.attempt_offset = self.attempts;
        self.error = None;
        self.retry_at = None;
        self.queued_at = None;
        self.started_at = None;
        self.finished_at = None;
        self.output = None;
        self.marked = None;
    }

    fn wait_again(&mut self) {
        debug_assert!(
            self.state.is_terminal() || self.state == JobState::Waiting,
            "job `{}` waits again while {}",
            self.name,
            self.state.as_str()
        );
        debug_assert!(self.children > 0, "job `{}` waits again for no children", self.name);
        self.state = JobState::Waiting;
        self.error = None;
        self.finished_at = None;
    }

    fn mark(&mut self, mark: Mark, output: Option<serde_json::Value>, now: DateTime<Utc>) {
        debug_assert!(
            matches!(
                self.state,
                JobState::Failed | JobState::Skipped | JobState::Blocked | JobState::Queued | JobState::Retrying
            ),
            "job `{}` marked while {}",
            self.name,
            self.state.as_str()
        );
        self.state = match mark.as_ {
            MarkAs::Succeeded => JobState::Completed,
            MarkAs::Skipped => JobState::Skipped,
        };
        self.output = if mark.as_ == MarkAs::Succeeded { output } else { None };
        self.error = None;
        self.retry_at = None;
        self.finished_at = Some(now);
        self.marked = Some(mark);
    }

    fn unskip(&mut self) {
        debug_assert_eq!(self.state, JobState::Skipped, "job `{}` decided again", self.name);
        self.state = JobState::Blocked;
        self.error = None;
        self.finished_at = None;
    }
}

/// Marks the attempt `end` is about as finished (adding it if its start was never seen: a
/// worker's outcome says when the attempt began). Sets `attempts`, `started_at` (the first)
/// and that attempt in `attempt_history`.
fn close_attempt(job: &mut JobRecord, end: &AttemptEnd<'_>, error: Option<String>) {
    job.attempts = job.attempts.max(end.attempt);
    let started_at = end.started_at.unwrap_or(end.at);
    job.started_at.get_or_insert(started_at);
    close_lost_attempts(job, end.attempt, end.at);
    match job.attempt_history.iter_mut().rev().find(|attempt| attempt.attempt == end.attempt) {
        Some(attempt) => {
            attempt.finished_at = Some(end.at);
            attempt.error = error;
            // A worker's outcome (it says when it began) for an attempt another worker started.
            let worker = bounded_worker(end.worker);
            if end.started_at.is_some()
                && attempt.worker != worker
                && !attempt.redelivered_to.iter().any(|seen| *seen == worker)
                && attempt.redelivered_to.len() < REDELIVERIES_KEPT
            {
                attempt.redelivered_to.push(worker.into_owned());
            }
        }
        None => job.push_attempt(AttemptRecord {
            attempt: end.attempt,
            started_at,
            finished_at: Some(end.at),
            error,
            worker: bounded_worker(end.worker).into_owned(),
            redelivered_to: Vec::new(),
            spec_hash: end.spec_hash.map(str::to_owned),
            found_later: None,
        }),
    }
}

/// Closes every attempt before `later` still open in the history as [`WORKER_LOST`] at `at`:
/// the job moved on to a later attempt, so no outcome of those will come. Otherwise they would
/// show no end for ever.
fn close_lost_attempts(job: &mut JobRecord, later: u32, at: DateTime<Utc>) {
    for attempt in
        job.attempt_history.iter_mut().filter(|record| record.attempt < later && record.finished_at.is_none())
    {
        // Workers' clocks differ: an end is never shown before its start.
        attempt.finished_at = Some(at.max(attempt.started_at));
        attempt.error = Some(WORKER_LOST.to_owned());
    }
}

/// Records an attempt of a job that had already ended (`completed`, `failed`, `skipped`,
/// `cancelled` or `waiting`) when it was reported: a start of an attempt after the last one
/// on record, or the outcome of such an attempt (or of one whose start was lost). The state
/// and the job's outcome stay as they are; the attempt's `error` says its result was not
/// applied. Returns whether the history changed.
pub(super) fn record_late_attempt(job: &mut JobRecord, kind: EventKind, report: &AttemptEnd<'_>) -> bool {
    let AttemptEnd { attempt, at, started_at, worker, spec_hash } = *report;
    let ended = format!("the job had already ended ({})", job.state.as_str());
    if let Some(record) = job.attempt_history.iter_mut().find(|record| record.attempt == attempt) {
        // The attempt that ended the job is closed; one still open ran beside or after it.
        if kind == EventKind::Started || record.finished_at.is_some() {
            return false;
        }
        record.finished_at = Some(at.max(record.started_at));
        record.error = Some(format!("{} after {ended}: not applied", kind.as_str()));
        return true;
    }
    if attempt <= job.attempts || (kind != EventKind::Started && started_at.is_none()) {
        return false;
    }
    let (started, finished, error) = match kind {
        // A cancelled job's worker stops what it runs, and does not report it.
        EventKind::Started if job.state == JobState::Cancelled => {
            (at, Some(at), Some(format!("started after {ended}: stopped")))
        }
        EventKind::Started => (at, None, None),
        kind => (started_at.unwrap_or(at), Some(at), Some(format!("{} after {ended}: not applied", kind.as_str()))),
    };
    job.attempts = attempt;
    job.push_attempt(AttemptRecord {
        attempt,
        started_at: started,
        finished_at: finished.map(|finished| finished.max(started)),
        error,
        worker: bounded_worker(worker).into_owned(),
        redelivered_to: Vec::new(),
        spec_hash: spec_hash.map(str::to_owned),
        found_later: None,
    });
    true
}

/// Records what attempt `later` found of earlier attempts of the job (its event's `earlier`)
/// in their `found_later`, each cut by [`bounded_found_later`]; at most
/// [`EARLIER_ATTEMPTS_REPORTED_MAX`] are read, and reports on attempts that are not earlier,
/// or no longer in the history, are ignored. Returns whether the history changed.
pub(super) fn record_found_later(job: &mut JobRecord, later: u32, earlier: &[EarlierAttempt]) -> bool {
    let mut changed = false;
    for report in earlier.iter().take(EARLIER_ATTEMPTS_REPORTED_MAX).filter(|report| report.attempt < later) {
        let Some(record) = job.attempt_history.iter_mut().find(|record| record.attempt == report.attempt) else {
            continue;
        };
        let found = bounded_found_later(&report.found);
        if record.found_later.as_deref() != Some(found.as_str()) {
            record.found_later = Some(found);
            changed = true;
        }
    }
    changed
}

/// The attempt JetStream's last-delivery advisory ends: the latest on record if it never
/// reported, otherwise the one after the last on record (its start was never stored).
pub(super) fn exhausted_attempt(job: &JobRecord, attempt_offset: u32) -> u32 {
    match job.attempt_history.last() {
        Some(last) if last.finished_at.is_none() && last.attempt == job.attempts && job.attempts > attempt_offset => {
            last.attempt
        }
        _ => job.attempts.max(attempt_offset).saturating_add(1),
    }
}

/// Notes that an attempt already started was delivered to `worker` too. Returns whether
/// that is news (a repeat of the same start changes nothing). The state stays as it is.
pub(super) fn note_redelivery(job: &mut JobRecord, attempt: u32, worker: &str) -> bool {
    let Some(attempt) = job.attempt_history.iter_mut().find(|record| record.attempt == attempt) else {
        return false;
    };
    let worker = bounded_worker(worker);
    if attempt.worker == worker
        || attempt.redelivered_to.iter().any(|seen| *seen == worker)
        || attempt.redelivered_to.len() >= REDELIVERIES_KEPT
    {
        return false;
    }
    attempt.redelivered_to.push(worker.into_owned());
    true
}

impl Run {
    /// Applies one transition to job `path` and moves every counter its state change moves.
    pub(super) fn transition<R>(&mut self, path: &str, change: impl FnOnce(&mut JobRecord) -> R) -> R {
        let job = self.jobs.get_mut(path).expect("path comes from the run");
        let old = job.state;
        let result = change(job);
        let new = job.state;
        observed::of_transition(path, old, job, &mut self.observed);
        self.count_state_change(path, old, new);
        result
    }

    /// Keeps the counters true when job `path` goes from `old` to `new`.
    fn count_state_change(&mut self, path: &str, old: JobState, new: JobState) {
        // A child's parent is its path's prefix (names hold no dots): no copy per change.
        let parent = parent_of(path);
        match (old.is_in_flight(), new.is_in_flight()) {
            (false, true) => {
                self.in_flight += 1;
                count_child(&mut self.in_flight_children, parent, true);
            }
            (true, false) => {
                self.in_flight -= 1;
                count_child(&mut self.in_flight_children, parent, false);
            }
            _ => {}
        }
        match (old.is_terminal(), new.is_terminal()) {
            (false, true) => {
                self.unfinished -= 1;
                count_child(&mut self.pending_children, parent, false);
            }
            (true, false) => {
                self.unfinished += 1;
                count_child(&mut self.pending_children, parent, true);
            }
            _ => {}
        }
        if (old == JobState::Failed) != (new == JobState::Failed) && !self.failure_judged_by_parent(path) {
            if new == JobState::Failed {
                self.failed_jobs += 1;
            } else {
                self.failed_jobs -= 1;
            }
        }
    }
}

/// One more (`up`) or one fewer child of `parent` in `counts`; the key is copied only the
/// first time a parent is counted. Nothing for a workflow job (no parent).
fn count_child(counts: &mut std::collections::HashMap<String, usize>, parent: Option<&str>, up: bool) {
    let Some(parent) = parent else { return };
    match counts.get_mut(parent) {
        Some(count) if up => *count += 1,
        Some(count) => {
            debug_assert!(*count > 0, "a count of `{parent}`'s children below zero");
            *count -= 1;
        }
        None => {
            debug_assert!(up, "a count of `{parent}`'s children below zero");
            if up {
                counts.insert(parent.to_owned(), 1);
            }
        }
    }
}
