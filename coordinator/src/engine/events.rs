//! What workers and JetStream report about attempts: each report screened for repeats and
//! stale generations, then turned into its job's transition.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::truncate_error;
use sluice_proto::spawn::{CHILD_DEPTH_MAX, SpawnError, child_path, depth_of};
use sluice_proto::{DeadLetter, EventKind, JobEvent, JobRecord, JobSpec, JobState, SCHEMA_VERSION};

use super::lifecycle::blank_job;
use super::transitions::{
    AttemptEnd, Transitions, WORKER_LOST, note_redelivery, record_found_later, record_late_attempt,
};
use super::{Effect, Ignored, Observed, Run, Spawned};

/// The worker named in the attempt history when JetStream, not a worker, ended an attempt.
pub(super) const JETSTREAM_WORKER: &str = "jetstream";

/// One report about an attempt: a worker's event, or JetStream giving up on its message.
#[derive(Clone, Copy, Debug)]
struct Report<'a> {
    job: &'a str,
    generation: u32,
    kind: EventKind,
    attempt: u32,
    /// When the reported thing happened (the start, or the end).
    at: DateTime<Utc>,
    /// When the attempt began, if an outcome says.
    started_at: Option<DateTime<Utc>>,
    worker: &'a str,
    /// The hash of the spec the run dispatches with, for the attempt's record.
    spec_hash: Option<&'a str>,
}

impl<'a> Report<'a> {
    fn of(event: &'a JobEvent, spec_hash: Option<&'a str>) -> Self {
        Self {
            job: &event.job,
            generation: event.generation,
            kind: event.kind,
            attempt: event.attempt,
            at: event.at,
            started_at: event.started_at,
            worker: &event.worker,
            spec_hash,
        }
    }

    fn end(&self) -> AttemptEnd<'a> {
        AttemptEnd {
            attempt: self.attempt,
            at: self.at,
            started_at: self.started_at,
            worker: self.worker,
            spec_hash: self.spec_hash,
        }
    }
}

/// Whether the job's history holds `attempt` as finished. One closed as [`WORKER_LOST`] is not:
/// its worker may only have been slow, and its real outcome, when it comes, still counts.
fn finished(job: &JobRecord, attempt: u32) -> bool {
    job.attempt_history.iter().any(|record| {
        record.attempt == attempt && record.finished_at.is_some() && record.error.as_deref() != Some(WORKER_LOST)
    })
}

/// Whether `attempt` is one the history left out (between the first and the latest kept).
fn omitted(job: &JobRecord, attempt: u32) -> bool {
    job.attempts_omitted > 0
        && matches!(job.attempt_history.as_slice(), [first, second, ..] if attempt > first.attempt && attempt < second.attempt)
}

/// A failed attempt's next one: when, and whether this coordinator publishes it.
#[derive(Clone, Copy, Debug)]
struct Retry {
    at: DateTime<Utc>,
    /// The worker acknowledged the message: the retry is this coordinator's to schedule.
    scheduled: bool,
}

impl Run {
    /// A worker's event; `children` once read for a success that spawned some.
    pub(super) fn on_event(
        &mut self,
        event: JobEvent,
        children: Option<Spawned>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, Ignored> {
        let spec_hash = self.record.spec_hash.clone();
        let report = Report::of(&event, spec_hash.as_deref());
        if let Some(noted) = self.screen(&report)? {
            return Ok(noted);
        }
        if event.kind != EventKind::Started && !event.earlier.is_empty() {
            // Saved with the outcome's transition below.
            let job = self.jobs.get_mut(report.job).expect("screened: the job is in the run");
            record_found_later(job, event.attempt, &event.earlier);
        }
        match (event.kind, children) {
            (EventKind::Started, _) => {
                self.started(&report)?;
                Ok(self.settle(report.job, Vec::new(), Vec::new(), false, now))
            }
            (EventKind::Succeeded, None) if event.spawned > 0 => Ok(vec![Effect::ReadChildren(Box::new(event))]),
            (EventKind::Succeeded, Some(children)) if event.spawned > 0 => {
                Ok(self.spawn_succeeded(&report, &event, children, now))
            }
            (EventKind::Succeeded, _) => {
                let end = report.end();
                self.transition(report.job, |job| job.succeed(&end, event.output.clone()));
                let mut after = Vec::new();
                self.on_completed(report.job, now, &mut after);
                Ok(self.settle(report.job, Vec::new(), after, false, now))
            }
            (EventKind::Failed, _) => {
                let error = event.error.as_deref().unwrap_or("failed without a message");
                let retry = event.retry_at.map(|at| Retry { at, scheduled: event.schedule_retry });
                Ok(self.attempt_failed(&report, error, retry, now))
            }
        }
    }

    /// JetStream gave up on `job`'s message: its attempt `attempt` fails with no retry, as its
    /// worker would have reported.
    pub(super) fn on_deliveries_exhausted(
        &mut self,
        job: &str,
        generation: u32,
        attempt: u32,
        reason: String,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, Ignored> {
        let spec_hash = self.record.spec_hash.clone();
        let report = Report {
            job,
            generation,
            kind: EventKind::Failed,
            attempt,
            at: now,
            started_at: None,
            worker: JETSTREAM_WORKER,
            spec_hash: spec_hash.as_deref(),
        };
        if let Some(noted) = self.screen(&report)? {
            return Ok(noted);
        }
        Ok(self.attempt_failed(&report, &reason, None, now))
    }

    /// What a report changes before its kind matters: nothing (`Err`) when it is stale or a
    /// repeat; only a note (`Ok(Some)`) when it is the same attempt delivered to another
    /// worker (noted from its start, or from its outcome once the attempt ended, in case the
    /// start was lost); otherwise `Ok(None)` and the report goes on.
    fn screen(&mut self, report: &Report<'_>) -> Result<Option<Vec<Effect>>, Ignored> {
        let path = report.job;
        let job = self.jobs.get_mut(path).ok_or_else(|| Ignored::UnknownJob(path.to_owned()))?;
        if report.generation < job.generation {
            return Err(Ignored::StaleGeneration {
                job: path.to_owned(),
                event: report.generation,
                current: job.generation,
            });
        }
        let starts = report.kind == EventKind::Started;
        if omitted(job, report.attempt) {
            // A late report of an attempt the bounded history no longer holds: long over.
            return Err(Ignored::Duplicate { job: path.to_owned(), attempt: report.attempt });
        }
        let repeats_finished = !starts && report.started_at.is_some() && finished(job, report.attempt);
        if (starts || repeats_finished) && note_redelivery(job, report.attempt, report.worker) {
            self.observed.push(Observed::Redelivered { path: path.to_owned() });
            return Ok(Some(vec![self.save(path)]));
        }
        if job.state.is_terminal() || job.state == JobState::Waiting {
            // An attempt that ran although the job had ended (its redelivery came before the
            // outcome that ended it was stored): on record, though it changes nothing else.
            if record_late_attempt(job, report.kind, &report.end()) {
                return Ok(Some(vec![self.save(path)]));
            }
            return Err(Ignored::AlreadyFinished { job: path.to_owned(), state: job.state.as_str() });
        }
        if !starts && finished(job, report.attempt) {
            return Err(Ignored::Duplicate { job: path.to_owned(), attempt: report.attempt });
        }
        Ok(None)
    }

    fn started(&mut self, report: &Report<'_>) -> Result<(), Ignored> {
        let job = &self.jobs[report.job];
        // An older attempt's late start, or this attempt's start seen again.
        if report.attempt < job.attempts || job.attempt_history.iter().any(|attempt| attempt.attempt == report.attempt)
        {
            return Err(Ignored::Duplicate { job: report.job.to_owned(), attempt: report.attempt });
        }
        self.transition(report.job, |job| {
            job.start_attempt(report.attempt, report.at, report.worker, report.spec_hash)
        });
        Ok(())
    }

    /// The job's save, placed after `before` and before `after` (appending to the shorter
    /// list: a spawn's `after` holds 200,000 effects), then held jobs given free slots and
    /// the run ended if nothing is left. A spawning parent is saved once more after its last
    /// child: the shell keeps only the last write of each record, and the parent's must follow
    /// every child's, so a stored parent that counts children means they are stored.
    fn settle(
        &mut self,
        path: &str,
        mut before: Vec<Effect>,
        mut after: Vec<Effect>,
        spawned: bool,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        before.push(self.save(path));
        let mut effects = if before.len() <= after.len() {
            after.splice(0..0, before);
            after
        } else {
            before.extend(after);
            before
        };
        if spawned {
            // Right after the last child's save, not at the end: a parent whose children were
            // all skipped at once has finished, and what needs it (an `always` job) may be
            // queued in this input; that must be stored after the parent it follows.
            let children = |effect: &Effect| matches!(effect, Effect::SaveJob { job, .. } if sluice_proto::spawn::parent_of(job) == Some(path));
            let at = effects.iter().rposition(children).map_or(effects.len(), |last| last + 1);
            effects.insert(at, self.save(path));
        }
        self.fill_slots(now, &mut effects);
        self.finish_if_done(now, &mut effects);
        effects
    }

    /// An attempt failed: another is due at `retry.at` (published by this coordinator as a
    /// message schedule when the worker asked for it), or the job fails finally and is
    /// dead-lettered.
    fn attempt_failed(
        &mut self,
        report: &Report<'_>,
        error: &str,
        retry: Option<Retry>,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        let error = truncate_error(error, ERROR_TEXT_MAX_BYTES);
        let end = report.end();
        let mut after = Vec::new();
        match retry {
            Some(Retry { at, scheduled }) => {
                self.transition(report.job, |job| job.retry_later(&end, error, at));
                if scheduled {
                    after.push(self.schedule_retry(report.job, report.attempt, at));
                }
            }
            None => {
                self.transition(report.job, |job| job.fail(&end, error));
                after.push(self.dead_letter(report.job, report.at));
                self.after_failure(report.job, now, &mut after);
            }
        }
        self.settle(report.job, Vec::new(), after, false, now)
    }

    /// The effect that publishes attempt `attempt + 1` of `path` as a message schedule.
    pub(super) fn schedule_retry(&self, path: &str, attempt: u32, at: DateTime<Utc>) -> Effect {
        let generation = self.jobs[path].generation;
        Effect::ScheduleRetry { run_id: self.record.id, job: path.to_owned(), generation, after_attempt: attempt, at }
    }

    fn dead_letter(&self, path: &str, at: DateTime<Utc>) -> Effect {
        let job = &self.jobs[path];
        Effect::DeadLetter(Box::new(DeadLetter {
            schema_version: SCHEMA_VERSION,
            job: self.dispatch_message(path),
            reason: job.error.clone().unwrap_or_default(),
            attempts: job.attempt_history.clone(),
            dead_at: at,
            attempts_omitted: job.attempts_omitted,
        }))
    }

    /// A success that spawned children: the job waits for them, or fails when they cannot
    /// all be taken.
    fn spawn_succeeded(
        &mut self,
        report: &Report<'_>,
        event: &JobEvent,
        children: Spawned,
        now: DateTime<Utc>,
    ) -> Vec<Effect> {
        if let Some(problem) = spawn_problem(event, &children) {
            return self.attempt_failed(report, &problem, None, now);
        }
        let end = report.end();
        self.transition(report.job, |job| job.wait_for_children(&end, event.output.clone(), event.spawned));
        let mut before = Vec::new();
        let mut after = Vec::new();
        self.add_children(report.job, children.children, now, &mut before, &mut after);
        self.settle(report.job, before, after, true, now)
    }

    /// Creates a record per child of `parent` and queues (or holds) each. Queued and skipped
    /// children are saved in `effects` as they change; held ones in `before`. Each child is
    /// saved once, and all before the parent (see [`Run::settle`]).
    fn add_children(
        &mut self,
        parent: &str,
        children: Vec<(String, Arc<JobSpec>)>,
        now: DateTime<Utc>,
        before: &mut Vec<Effect>,
        effects: &mut Vec<Effect>,
    ) {
        let run_id = self.record.id;
        let mut paths = Vec::with_capacity(children.len());
        for (name, definition) in children {
            let path = child_path(parent, &name);
            let mut record = blank_job(run_id, &path);
            record.parent = Some(parent.to_owned());
            record.definition = Some(definition);
            self.jobs.insert(path.clone(), record);
            self.unfinished += 1;
            paths.push(path);
        }
        let count = paths.len();
        self.pending_children.insert(parent.to_owned(), count);
        self.children_of.insert(parent.to_owned(), paths);
        // By index, one path copied at a time: a spawn's paths are not cloned all at once.
        for index in 0..count {
            let child = self.children_of[parent][index].clone();
            self.unblock(&child, now, effects);
        }
        for child in &self.children_of[parent] {
            if self.jobs[child].state == JobState::Blocked {
                before.push(self.save(child));
            }
        }
    }
}

/// Why the children `event` announced cannot all be taken, if they cannot.
fn spawn_problem(event: &JobEvent, children: &Spawned) -> Option<String> {
    let count = children.read;
    if count != event.spawned as usize {
        Some(format!("the job spawned {} children but {} could be read from the spawn stream", event.spawned, count))
    } else if depth_of(&event.job) + 1 > CHILD_DEPTH_MAX {
        Some(SpawnError::TooDeep.to_string())
    } else {
        children.problem.as_ref().map(ToString::to_string)
    }
}
