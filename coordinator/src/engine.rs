//! The DAG engine: a deterministic state machine for one run. Events in, effects out; no
//! I/O, no clock reads (time arrives as an argument), no randomness.
//!
//! The shell ([`crate::service`]) executes the `Save` effects in list order, waits until all
//! are durable, then publishes the `Dispatch` effects: state is always written before it is
//! acted on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::{REDELIVERIES_KEPT, truncate_error};
use sluice_proto::spec::OnFailure;
use sluice_proto::{
    AttemptRecord, DeadLetter, EventKind, JobEvent, JobMessage, JobRecord, JobState, RunId, RunRecord, RunState,
    SCHEMA_VERSION, Window, WorkflowSpec,
};

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Write a job record (KV `sluice-jobs`).
    SaveJob(JobRecord),
    /// Write the run record (KV `sluice-runs`).
    SaveRun(RunRecord),
    /// Publish a job to its pool, after every save before it is durable.
    Dispatch(JobMessage),
    /// Keep a job whose attempts are over in the dead-letter stream.
    DeadLetter(DeadLetter),
    /// Remove a cancelled job's message from its pool, so no worker starts it.
    Withdraw { run_id: RunId, pool: String, job: String },
    /// Tell workers to stop every running job of a cancelled run.
    StopRun(RunId),
}

/// Why a user's request about a run was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("run {run_id} already finished: {state}")]
    Finished { run_id: RunId, state: &'static str },
    #[error("run {run_id} is still running; retry works on finished runs (or name a failed job with --job)")]
    StillRunning { run_id: RunId },
    #[error("run {run_id} succeeded: nothing to retry (name a job with --job to run it again)")]
    NothingToRetry { run_id: RunId },
    #[error("run {run_id} has no job `{job}`")]
    UnknownJob { run_id: RunId, job: String },
    #[error("job `{job}` is {state}; only finished jobs can run again")]
    InFlight { job: String, state: &'static str },
}

/// Why an event changed nothing. Not an error: duplicates and stale events are expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("event for job `{0}`, which this run does not have")]
    UnknownJob(String),
    #[error("job `{job}` is already {state}")]
    AlreadyFinished { job: String, state: &'static str },
    #[error("job `{job}` attempt {attempt} already seen")]
    Duplicate { job: String, attempt: u32 },
    #[error("job `{job}` event from generation {event}, current is {current}")]
    StaleGeneration { job: String, event: u32, current: u32 },
}

/// A run could not be rebuilt from its stored records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("run {run_id} cannot be restored: {reason}")]
pub struct RestoreError {
    pub run_id: RunId,
    pub reason: String,
}

/// Everything a new run needs, already validated.
#[derive(Debug)]
pub struct NewRun {
    pub id: RunId,
    pub spec: WorkflowSpec,
    pub spec_yaml: String,
    pub window: Window,
    pub params: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// One run's state. Owned by the coordinator's single event loop.
#[derive(Clone, Debug)]
pub struct Run {
    record: RunRecord,
    spec: Arc<WorkflowSpec>,
    jobs: HashMap<String, JobRecord>,
    /// Derived from the spec: who needs each job.
    dependents: HashMap<String, Vec<String>>,
    /// Jobs not yet terminal; the run ends when this reaches zero.
    unfinished: usize,
    /// Jobs that failed finally; any makes the run fail.
    failed_jobs: usize,
    /// Per job, how many of the jobs it needs have not completed: a job is queued when
    /// this reaches zero, without rescanning its needs on every completion.
    pending_needs: HashMap<String, usize>,
}

impl Run {
    /// A new run: every job `blocked`, then those that need nothing `queued` and dispatched.
    /// Effects save every job record before the run record, so a stored run record means
    /// all its jobs are stored too.
    pub fn start(new: NewRun, now: DateTime<Utc>) -> (Self, Vec<Effect>) {
        let order = new.spec.topological_order();
        let record = RunRecord {
            schema_version: SCHEMA_VERSION,
            id: new.id,
            workflow: new.spec.name.clone(),
            spec_yaml: new.spec_yaml,
            window: new.window,
            params: new.params,
            state: RunState::Running,
            created_at: now,
            finished_at: None,
            idempotency_key: new.idempotency_key,
            error: None,
            traceparent: new.traceparent,
            tracestate: new.tracestate,
            jobs: order.clone(),
        };
        let jobs = order.iter().map(|name| (name.clone(), blank_job(new.id, name))).collect();
        let mut run = Self::assemble(record, Arc::new(new.spec), jobs);
        let roots: Vec<String> =
            order.iter().filter(|name| run.spec.jobs[name.as_str()].needs.is_empty()).cloned().collect();
        let dispatches: Vec<Effect> = roots.iter().map(|name| Effect::Dispatch(run.mark_queued(name, now))).collect();
        // Blocked jobs are saved too, so `status` lists every job from the start.
        let mut effects: Vec<Effect> = order.iter().map(|name| Effect::SaveJob(run.jobs[name].clone())).collect();
        effects.push(Effect::SaveRun(run.record.clone()));
        effects.extend(dispatches);
        (run, effects)
    }

    /// Rebuilds a run from stored records after a restart, and returns the effects that
    /// finish whatever a crash interrupted (a dependent not yet queued, a run not yet ended).
    /// Missing job records are recreated as `blocked`.
    pub fn restore(
        record: RunRecord,
        mut stored: HashMap<String, JobRecord>,
        now: DateTime<Utc>,
    ) -> Result<(Self, Vec<Effect>), RestoreError> {
        let spec = WorkflowSpec::parse(&record.spec_yaml)
            .map_err(|error| RestoreError { run_id: record.id, reason: error.to_string() })?;
        let jobs = spec
            .topological_order()
            .into_iter()
            .map(|name| {
                let job = stored.remove(&name).unwrap_or_else(|| blank_job(record.id, &name));
                (name, job)
            })
            .collect();
        let mut run = Self::assemble(record, Arc::new(spec), jobs);
        let mut effects = Vec::new();
        if run.record.state == RunState::Running {
            let order = run.record.jobs.clone();
            for name in &order {
                if run.jobs[name].state == JobState::Blocked {
                    run.unblock(name, now, &mut effects);
                }
            }
            run.finish_if_done(now, &mut effects);
        }
        Ok((run, effects))
    }

    fn assemble(record: RunRecord, spec: Arc<WorkflowSpec>, jobs: HashMap<String, JobRecord>) -> Self {
        let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
        for (name, job) in &spec.jobs {
            for need in &job.needs {
                dependents.entry(need.clone()).or_default().push(name.clone());
            }
        }
        let unfinished = jobs.values().filter(|job| !job.state.is_terminal()).count();
        let failed_jobs = jobs.values().filter(|job| job.state == JobState::Failed).count();
        let pending_needs = spec
            .jobs
            .iter()
            .map(|(name, job)| {
                let completed =
                    |need: &String| jobs.get(need.as_str()).is_some_and(|need| need.state == JobState::Completed);
                (name.clone(), job.needs.iter().filter(|need| !completed(need)).count())
            })
            .collect();
        Self { record, spec, jobs, dependents, unfinished, failed_jobs, pending_needs }
    }

    pub fn id(&self) -> RunId {
        self.record.id
    }

    pub fn record(&self) -> &RunRecord {
        &self.record
    }

    pub fn job(&self, name: &str) -> Option<&JobRecord> {
        self.jobs.get(name)
    }

    pub fn is_finished(&self) -> bool {
        self.record.state.is_terminal()
    }

    /// Jobs in `queued` state: after a restart the shell checks each was really published.
    pub fn queued_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.record.jobs.iter().filter_map(|name| self.jobs.get(name)).filter(|job| job.state == JobState::Queued)
    }

    /// Applies one job event. Handling the same event twice changes nothing the second time.
    pub fn apply(&mut self, event: &JobEvent, now: DateTime<Utc>) -> Result<Vec<Effect>, Ignored> {
        let job = self.jobs.get_mut(&event.job).ok_or_else(|| Ignored::UnknownJob(event.job.clone()))?;
        if event.generation < job.generation {
            return Err(Ignored::StaleGeneration {
                job: event.job.clone(),
                event: event.generation,
                current: job.generation,
            });
        }
        if event.kind == EventKind::Started && record_redelivery(job, event) {
            return Ok(vec![Effect::SaveJob(job.clone())]);
        }
        if job.state.is_terminal() {
            return Err(Ignored::AlreadyFinished { job: event.job.clone(), state: job.state.as_str() });
        }
        let finished_before =
            job.attempt_history.iter().any(|attempt| attempt.attempt == event.attempt && attempt.finished_at.is_some());
        if event.kind != EventKind::Started && finished_before {
            return Err(Ignored::Duplicate { job: event.job.clone(), attempt: event.attempt });
        }
        let mut effects = Vec::new();
        match event.kind {
            EventKind::Started => self.started(event)?,
            EventKind::Succeeded => self.succeeded(event, now, &mut effects),
            EventKind::Failed => self.failed(event, now, &mut effects),
        }
        effects.insert(0, Effect::SaveJob(self.jobs[&event.job].clone()));
        self.finish_if_done(now, &mut effects);
        Ok(effects)
    }

    fn started(&mut self, event: &JobEvent) -> Result<(), Ignored> {
        let job = self.jobs.get_mut(&event.job).expect("checked by apply");
        // An older attempt's late start, or this attempt's start seen again.
        if event.attempt < job.attempts || job.attempt_history.iter().any(|attempt| attempt.attempt == event.attempt) {
            return Err(Ignored::Duplicate { job: event.job.clone(), attempt: event.attempt });
        }
        job.state = JobState::Running;
        job.attempts = event.attempt;
        job.retry_at = None;
        job.started_at.get_or_insert(event.at);
        job.attempt_history.push(AttemptRecord {
            attempt: event.attempt,
            started_at: event.at,
            finished_at: None,
            error: None,
            worker: event.worker.clone(),
            redelivered_to: Vec::new(),
        });
        Ok(())
    }

    fn succeeded(&mut self, event: &JobEvent, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let job = self.jobs.get_mut(&event.job).expect("checked by apply");
        close_attempt(job, event, None);
        job.state = JobState::Completed;
        job.error = None;
        job.retry_at = None;
        job.finished_at = Some(event.at);
        self.unfinished -= 1;
        let dependents = self.dependents.get(&event.job).cloned().unwrap_or_default();
        for dependent in dependents {
            let pending = self.pending_needs.get_mut(&dependent).expect("every job has a count");
            *pending -= 1;
            if *pending == 0 {
                self.unblock(&dependent, now, effects);
            }
        }
    }

    fn failed(&mut self, event: &JobEvent, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let error = truncate_error(event.error.as_deref().unwrap_or("failed without a message"), ERROR_TEXT_MAX_BYTES);
        let job = self.jobs.get_mut(&event.job).expect("checked by apply");
        close_attempt(job, event, Some(error.clone()));
        job.error = Some(error);
        if let Some(retry_at) = event.retry_at {
            job.state = JobState::Retrying;
            job.retry_at = Some(retry_at);
            return;
        }
        job.state = JobState::Failed;
        job.retry_at = None;
        job.finished_at = Some(event.at);
        self.unfinished -= 1;
        self.failed_jobs += 1;
        effects.push(Effect::DeadLetter(DeadLetter {
            schema_version: SCHEMA_VERSION,
            job: self.dispatch_message(&event.job),
            reason: self.jobs[&event.job].error.clone().unwrap_or_default(),
            attempts: self.jobs[&event.job].attempt_history.clone(),
            dead_at: event.at,
        }));
        let reason = format!("skipped: job `{}` failed", event.job);
        match self.spec.on_failure {
            // Nothing new starts; what is in flight may finish.
            OnFailure::Stop => {
                let order = self.record.jobs.clone();
                for name in &order {
                    if self.jobs[name].state == JobState::Blocked {
                        self.skip(name, &reason, now, effects);
                    }
                }
            }
            OnFailure::Continue => self.skip_downstream(&event.job, &reason, now, effects),
        }
    }

    /// Skips every blocked job that needs `from`, directly or not.
    fn skip_downstream(&mut self, from: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let mut stack = self.dependents.get(from).cloned().unwrap_or_default();
        while let Some(name) = stack.pop() {
            if self.jobs[&name].state == JobState::Blocked {
                self.skip(&name, reason, now, effects);
                stack.extend(self.dependents.get(&name).cloned().unwrap_or_default());
            }
        }
    }

    /// Queues `name` once every job it needs has completed. Skips it when a job it needs
    /// can no longer complete, or (with `on_failure: stop`) once the run has a failure.
    fn unblock(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.jobs[name].state != JobState::Blocked {
            return;
        }
        let stopped_need = self.spec.jobs[name].needs.iter().find(|need| {
            matches!(self.jobs[need.as_str()].state, JobState::Failed | JobState::Skipped | JobState::Cancelled)
        });
        if let Some(need) = stopped_need {
            let reason = format!("skipped: job `{need}` did not complete");
            self.skip(name, &reason, now, effects);
        } else if self.failed_jobs > 0 && self.spec.on_failure == OnFailure::Stop {
            self.skip(name, "skipped: another job of the run failed", now, effects);
        } else if self.pending_needs[name] == 0 {
            self.queue(name, now, effects);
        }
    }

    /// `sluice cancel`: queued jobs are withdrawn, running ones told to stop, and the run
    /// ends `cancelled` at once (late events of its jobs change nothing).
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, Refused> {
        if self.record.state.is_terminal() {
            return Err(Refused::Finished { run_id: self.record.id, state: self.record.state.as_str() });
        }
        let mut saves = Vec::new();
        let mut actions = Vec::new();
        for name in self.record.jobs.clone() {
            let state = self.jobs[&name].state;
            if state.is_terminal() {
                continue;
            }
            if matches!(state, JobState::Queued | JobState::Retrying) {
                let pool = self.spec.pool_of(&self.spec.jobs[&name]);
                actions.push(Effect::Withdraw { run_id: self.record.id, pool, job: name.clone() });
            }
            let job = self.jobs.get_mut(&name).expect("name comes from the run");
            job.state = JobState::Cancelled;
            job.finished_at = Some(now);
            job.retry_at = None;
            job.error = Some("cancelled by a user".to_owned());
            saves.push(Effect::SaveJob(job.clone()));
        }
        self.unfinished = 0;
        self.record.state = RunState::Cancelled;
        self.record.finished_at = Some(now);
        saves.push(Effect::SaveRun(self.record.clone()));
        saves.extend(actions);
        saves.push(Effect::StopRun(self.record.id));
        Ok(saves)
    }

    /// `sluice retry` and dead-letter replays: runs again the jobs that did not complete
    /// (or `only` and what needs it), each in a new generation with fresh attempts, keeping
    /// completed work. The run is `running` again and can still succeed.
    pub fn rerun(&mut self, only: Option<&str>, now: DateTime<Utc>) -> Result<Vec<Effect>, Refused> {
        let run_id = self.record.id;
        let mut selected: Vec<String> = match only {
            Some(job) => {
                let record = self.jobs.get(job).ok_or_else(|| Refused::UnknownJob { run_id, job: job.to_owned() })?;
                if !record.state.is_terminal() {
                    return Err(Refused::InFlight { job: job.to_owned(), state: record.state.as_str() });
                }
                vec![job.to_owned()]
            }
            None if !self.record.state.is_terminal() => return Err(Refused::StillRunning { run_id }),
            None => {
                let unfinished: Vec<String> = self
                    .record
                    .jobs
                    .iter()
                    .filter(|name| self.jobs[*name].state != JobState::Completed)
                    .cloned()
                    .collect();
                if unfinished.is_empty() {
                    return Err(Refused::NothingToRetry { run_id });
                }
                unfinished
            }
        };
        // Everything downstream of what runs again runs again too.
        let mut stack = selected.clone();
        while let Some(name) = stack.pop() {
            for dependent in self.dependents.get(&name).cloned().unwrap_or_default() {
                if !selected.contains(&dependent) {
                    selected.push(dependent.clone());
                    stack.push(dependent);
                }
            }
        }
        if let Some(busy) = selected.iter().find(|name| !self.jobs[*name].state.is_terminal()) {
            return Err(Refused::InFlight { job: busy.clone(), state: self.jobs[busy].state.as_str() });
        }
        let order: Vec<String> = self.record.jobs.iter().filter(|name| selected.contains(name)).cloned().collect();
        for name in &order {
            let job = self.jobs.get_mut(name).expect("name comes from the run");
            if job.state == JobState::Failed {
                self.failed_jobs -= 1;
            }
            job.state = JobState::Blocked;
            job.generation += 1;
            job.attempt_offset = job.attempts;
            job.error = None;
            job.retry_at = None;
            job.queued_at = None;
            job.started_at = None;
            job.finished_at = None;
            self.unfinished += 1;
        }
        for name in &order {
            let pending = self.spec.jobs[name]
                .needs
                .iter()
                .filter(|need| self.jobs[need.as_str()].state != JobState::Completed)
                .count();
            self.pending_needs.insert(name.clone(), pending);
        }
        self.record.state = RunState::Running;
        self.record.finished_at = None;
        self.record.error = None;
        let mut effects = Vec::new();
        for name in &order {
            if self.pending_needs[name] == 0 {
                let message = self.mark_queued(name, now);
                effects.push(Effect::Dispatch(message));
            }
        }
        let mut saves: Vec<Effect> = order.iter().map(|name| Effect::SaveJob(self.jobs[name].clone())).collect();
        saves.push(Effect::SaveRun(self.record.clone()));
        saves.extend(effects);
        Ok(saves)
    }

    fn queue(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let message = self.mark_queued(name, now);
        effects.push(Effect::SaveJob(self.jobs[name].clone()));
        effects.push(Effect::Dispatch(message));
    }

    fn mark_queued(&mut self, name: &str, now: DateTime<Utc>) -> JobMessage {
        let job = self.jobs.get_mut(name).expect("name comes from the spec");
        job.state = JobState::Queued;
        job.queued_at = Some(now);
        self.dispatch_message(name)
    }

    fn skip(&mut self, name: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let job = self.jobs.get_mut(name).expect("name comes from the spec");
        job.state = JobState::Skipped;
        job.error = Some(reason.to_owned());
        job.finished_at = Some(now);
        self.unfinished -= 1;
        effects.push(Effect::SaveJob(job.clone()));
    }

    fn finish_if_done(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.unfinished > 0 || self.record.state.is_terminal() {
            return;
        }
        let mut failed: Vec<&str> =
            self.jobs.values().filter(|job| job.state == JobState::Failed).map(|job| job.name.as_str()).collect();
        failed.sort_unstable();
        let all_completed = failed.is_empty() && self.jobs.values().all(|job| job.state == JobState::Completed);
        self.record.state = if all_completed { RunState::Succeeded } else { RunState::Failed };
        self.record.error = match failed.as_slice() {
            [] => None,
            [one] => Some(format!("job `{one}` failed")),
            [first, second] => Some(format!("jobs `{first}` and `{second}` failed")),
            [first, second, rest @ ..] => Some(format!("jobs `{first}`, `{second}` and {} more failed", rest.len())),
        };
        self.record.finished_at = Some(now);
        effects.push(Effect::SaveRun(self.record.clone()));
    }

    /// The message that runs job `name` (for the first dispatch, and for re-publishing one a
    /// crash may have lost).
    pub fn dispatch_message(&self, name: &str) -> JobMessage {
        let spec = &self.spec.jobs[name];
        let job = &self.jobs[name];
        JobMessage {
            schema_version: SCHEMA_VERSION,
            run_id: self.record.id,
            workflow: self.record.workflow.clone(),
            job: name.to_owned(),
            kind: spec.run.clone(),
            command: spec.command.clone(),
            config: spec.config.clone().unwrap_or(serde_json::Value::Null),
            window: self.record.window,
            params: self.record.params.clone(),
            pool: self.spec.pool_of(spec),
            attempt_offset: job.attempt_offset,
            generation: job.generation,
            retry: self.spec.retry_of(spec),
            timeout_ms: self
                .spec
                .timeout_of(spec)
                .map(|timeout| u64::try_from(timeout.as_duration().as_millis()).unwrap_or(u64::MAX)),
            permanent_exit_codes: spec.permanent_exit_codes.clone(),
        }
    }
}

fn blank_job(run_id: RunId, name: &str) -> JobRecord {
    JobRecord {
        schema_version: SCHEMA_VERSION,
        run_id,
        name: name.to_owned(),
        state: JobState::Blocked,
        attempts: 0,
        attempt_offset: 0,
        generation: 0,
        queued_at: None,
        started_at: None,
        finished_at: None,
        retry_at: None,
        error: None,
        attempt_history: Vec::new(),
    }
}

/// Notes that an attempt already started was delivered to another worker too. Returns
/// whether that is news (a repeat of the same start changes nothing).
fn record_redelivery(job: &mut JobRecord, event: &JobEvent) -> bool {
    let Some(attempt) = job.attempt_history.iter_mut().find(|attempt| attempt.attempt == event.attempt) else {
        return false;
    };
    if attempt.worker == event.worker
        || attempt.redelivered_to.contains(&event.worker)
        || attempt.redelivered_to.len() >= REDELIVERIES_KEPT
    {
        return false;
    }
    attempt.redelivered_to.push(event.worker.clone());
    true
}

/// Marks the attempt the event is about as finished (adding it if its start was never seen).
fn close_attempt(job: &mut JobRecord, event: &JobEvent, error: Option<String>) {
    job.attempts = job.attempts.max(event.attempt);
    match job.attempt_history.iter_mut().rev().find(|attempt| attempt.attempt == event.attempt) {
        Some(attempt) => {
            attempt.finished_at = Some(event.at);
            attempt.error = error;
        }
        None => job.attempt_history.push(AttemptRecord {
            attempt: event.attempt,
            started_at: event.at,
            finished_at: Some(event.at),
            error,
            worker: event.worker.clone(),
            redelivered_to: Vec::new(),
        }),
    }
}

#[cfg(test)]
mod tests;
