//! The DAG engine: a deterministic state machine for one run. One input in, effects out; no
//! I/O, no clock reads (time arrives as an argument), no randomness, no hash order in what
//! it returns.
//!
//! A run is created with [`Run::start`] or rebuilt with [`Run::restore`]; from then on every
//! change goes through [`Run::apply`] with an [`Input`]. The shell ([`crate::service`])
//! executes the `Save` effects in list order, waits until all are durable, then publishes the
//! `Dispatch` effects: state is always written before it is acted on. When the engine needs
//! something only the shell can fetch (a spawn's children), it asks with an effect and gets
//! the answer as another input. In debug builds applies end with [`Run::check_invariants`],
//! which re-derives every counter from the records (after every input for runs of up to
//! [`CHECKED_JOBS_PER_INPUT_MAX`] jobs; the simulation checks at every step).
//!
//! Files by concern: `lifecycle` (creation and restore), `events` (what workers and
//! JetStream report about attempts), `progress` (what follows: dependents, parents, limits,
//! the run's end), `trigger` (a job's `when:` rule, pure), `control` (cancel, rerun, mark),
//! `transitions` (each job state change and the counters it moves), `invariants`, `spawned`
//! (children as read).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_proto::spawn::parent_of;
use sluice_proto::{
    DeadLetter, JobEvent, JobMessage, JobRecord, JobSpec, JobState, MarkAs, RequestId, RunId, RunRecord,
    SCHEMA_VERSION, Window, WorkflowSpec,
};

mod control;
mod events;
mod invariants;
mod lifecycle;
mod observed;
mod progress;
mod spawned;
mod transitions;
mod trigger;

pub use observed::{AttemptOutcome, Observed};
pub use spawned::Spawned;

/// Everything that can change a run, once it exists.
#[derive(Debug)]
pub enum Input {
    /// A worker's report on an attempt (`started`, `succeeded`, `failed`). A success that
    /// announces children (`spawned > 0`) is answered with [`Effect::ReadChildren`] alone and
    /// changes nothing until its [`Input::ChildrenRead`] comes.
    Event(JobEvent),
    /// The children a success spawned, read as an [`Effect::ReadChildren`] asked, with that
    /// effect's event.
    ChildrenRead { event: Box<JobEvent>, children: Spawned },
    /// JetStream gave up on a job's message after `deliveries` deliveries (its workers kept
    /// dying before they could report): the attempt on record that never reported (or, if
    /// none is open, the next one) fails with `reason` and no attempt follows. Deliveries are
    /// not attempts (decision 8): `deliveries` is only for the reason.
    DeliveriesExhausted { job: String, generation: u32, attempt_offset: u32, deliveries: u64, reason: String },
    /// `sluice cancel`.
    Cancel,
    /// `sluice retry` (every job that did not complete, or `only` a job and what needs it) and
    /// dead-letter replays (`only` the dead-lettered job); with `spec`, the jobs that run
    /// again take their definitions from it (`--spec`).
    Rerun { only: Option<String>, spec: Option<NewSpec> },
    /// `sluice mark`: ends workflow job `job` by hand, as if it had succeeded (with
    /// `output`) or been skipped; `by` and `request_id` are recorded on it.
    Mark { job: String, as_: MarkAs, output: Option<serde_json::Value>, by: String, request_id: Option<RequestId> },
}

/// What the shell must do, in order.
///
/// Small on purpose (a job's save and dispatch name the job; the shell reads the record
/// with [`Run::job`] and builds the message with [`Run::dispatch_message`] when it
/// gets to them, a chunk at a time): a spawn of 100,000 children yields 200,000 effects at
/// once. The shell may apply several inputs before carrying out their effects together; it
/// then writes each record's latest state at the place of its last save, which keeps the
/// order that matters (a spawning parent after its children) as long as the effects of an
/// [`Input::ChildrenRead`] are carried out on their own, which the shell does.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Write a job's record as it is now (KV `sluice-jobs`).
    SaveJob { run_id: RunId, job: String },
    /// Write the run record (KV `sluice-runs`).
    SaveRun(Box<RunRecord>),
    /// Publish this generation of a job to its pool ([`Run::dispatch_message`] builds the
    /// message), after every save before it is durable.
    Dispatch { run_id: RunId, job: String, generation: u32 },
    /// Publish attempt `after_attempt + 1` of this generation of a job as a JetStream message
    /// schedule due `at` (on `sluice.retries.…`, turned into a job message when due), after
    /// the saves before it: a worker acknowledged the failed attempt and left the retry to
    /// the coordinator (decision 8). [`Run::retry_message`] builds the message.
    ScheduleRetry { run_id: RunId, job: String, generation: u32, after_attempt: u32, at: DateTime<Utc> },
    /// Keep a job whose attempts are over in the dead-letter stream.
    DeadLetter(Box<DeadLetter>),
    /// Remove every queued message and scheduled retry of a cancelled run, so no worker
    /// starts its jobs.
    Withdraw(RunId),
    /// Tell workers to stop every running job of a cancelled run.
    StopRun(RunId),
    /// Remove the queued message or scheduled retry of one job that was marked by hand, so
    /// no worker starts it (one a worker already took runs, and its report is ignored).
    WithdrawJob { run_id: RunId, job: String },
    /// Delete the dead letters of jobs that run again (`None`: every job of the run), after
    /// the saves that say so: a dead letter stands for a job whose attempts are over, and
    /// replaying one whose job has moved on would run finished work again.
    ResolveDeadLetters { run_id: RunId, jobs: Option<Vec<String>> },
    /// Read the children this success announced (`event.spawned` of them, from
    /// `sluice.spawns.…` of its run, job, generation and attempt) and apply them as
    /// [`Input::ChildrenRead`] with this event. Always the only effect of its input: first
    /// carry out the effects of earlier inputs, then the children's, on their own (a
    /// spawn's children are written before the parent that counts them).
    ReadChildren(Box<JobEvent>),
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
    #[error("job `{job}` needs `{need}`, which did not complete: retry `{need}` (or the whole run) instead")]
    NeedsFirst { job: String, need: String },
    #[error("the new spec may change only the definitions of the jobs that run again: {}", problems.join("; "))]
    SpecChange { problems: Vec<String> },
    #[error("run {run_id} was cancelled: nothing of it proceeds, so there is nothing to mark (retry it instead)")]
    MarkCancelled { run_id: RunId },
    #[error("job `{job}` already succeeded{by}: there is nothing to mark")]
    AlreadySucceeded { job: String, by: String },
    #[error("job `{job}` is already skipped")]
    AlreadySkipped { job: String },
    #[error("job `{job}` is running on a worker: wait for its attempt to end (or cancel the run first), then mark it")]
    MarkRunning { job: String },
    #[error("job `{job}` cannot be marked: {why}")]
    NotMarkable { job: String, why: &'static str },
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

/// Why an input changed nothing: an event [`Ignored`] (expected), or a user's request
/// [`Refused`] (the user is told why).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotApplied {
    #[error(transparent)]
    Ignored(#[from] Ignored),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// A run could not be rebuilt from its stored records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("run {run_id} cannot be restored: {reason}")]
pub struct RestoreError {
    pub run_id: RunId,
    pub reason: String,
}

/// A spec a rerun brings (`--spec`), parsed and validated, with its hash.
#[derive(Clone, Debug)]
pub struct NewSpec {
    pub spec: Arc<WorkflowSpec>,
    pub hash: String,
}

/// Everything a new run needs, already validated.
#[derive(Debug)]
pub struct NewRun {
    pub id: RunId,
    pub spec: WorkflowSpec,
    /// The YAML, which the shell stores under `spec_hash` before the run's records.
    pub spec_yaml: String,
    /// Its hash ([`WorkflowSpec::hash`]): what the run record names.
    pub spec_hash: String,
    pub window: Window,
    pub params: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
    /// `manual`, `schedule:<name>` or `backfill:<id>` (checked at intake).
    pub origin: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// One run's state. Owned by the coordinator's single event loop.
///
/// Every counter below is derived from `jobs` and kept true by [`Run::transition`];
/// [`Run::check_invariants`] derives them again and compares.
#[derive(Clone, Debug)]
pub struct Run {
    record: RunRecord,
    spec: Arc<WorkflowSpec>,
    /// Every job by path: workflow jobs by name, children as `<parent>.<name>`. Looked up,
    /// never iterated where the order would show (see [`Run::all_paths`]).
    jobs: HashMap<String, JobRecord>,
    /// Each parent's children, in the order they were spawned (by name after a restart).
    children_of: HashMap<String, Vec<String>>,
    /// Derived from the spec: who needs each workflow job, in the spec's order.
    dependents: HashMap<String, Vec<String>>,
    /// Jobs not yet terminal; the run ends when this reaches zero.
    unfinished: usize,
    /// Jobs that failed finally; any makes the run fail.
    failed_jobs: usize,
    /// Per workflow job, how many of the jobs it needs have not completed: a job is queued
    /// when this reaches zero, without rescanning its needs on every completion.
    pending_needs: HashMap<String, usize>,
    /// Per parent, how many of its children are not finished.
    pending_children: HashMap<String, usize>,
    /// Jobs queued, running or retrying (what `max_parallel` of the run limits).
    in_flight: usize,
    /// The same, per parent, for its children (what a job's `max_parallel` limits).
    in_flight_children: HashMap<String, usize>,
    /// Jobs ready to go but over a `max_parallel` limit, first come first served, grouped
    /// by parent ("" for workflow jobs) so a full parent does not hold up the others.
    /// Entries of jobs no longer `blocked` are stale and dropped when reached.
    held: BTreeMap<String, VecDeque<String>>,
    /// What happened since the shell last looked ([`Run::take_observed`]), for its metrics.
    observed: Vec<Observed>,
    /// Inputs applied since the last [`Run::check_invariants`].
    #[cfg(debug_assertions)]
    inputs_unchecked: usize,
}

/// Debug builds check a run's invariants after inputs while this many job records, on
/// average, are looked at per input (a check looks at every record).
pub const CHECKED_JOBS_PER_INPUT_MAX: usize = 64;

/// The group a held job waits in: its parent, or "" for a workflow job.
fn group_of(path: &str) -> &str {
    parent_of(path).unwrap_or("")
}

impl Run {
    /// Applies one input. Handling the same event twice changes nothing the second time; an
    /// input that changes nothing says why ([`NotApplied`]) and leaves the run as it was.
    pub fn apply(&mut self, input: Input, now: DateTime<Utc>) -> Result<Vec<Effect>, NotApplied> {
        let outcome = match input {
            Input::Event(event) => self.on_event(event, None, now).map_err(NotApplied::from),
            Input::ChildrenRead { event, children } => {
                self.on_event(*event, Some(children), now).map_err(NotApplied::from)
            }
            Input::DeliveriesExhausted { job, generation, attempt_offset, deliveries: _, reason } => {
                let attempt = self.jobs.get(&job).map_or(attempt_offset.saturating_add(1), |record| {
                    transitions::exhausted_attempt(record, attempt_offset)
                });
                self.on_deliveries_exhausted(&job, generation, attempt, reason, now).map_err(NotApplied::from)
            }
            Input::Cancel => self.cancel(now).map_err(NotApplied::from),
            Input::Rerun { only, spec } => self.rerun(only.as_deref(), spec, now).map_err(NotApplied::from),
            Input::Mark { job, as_, output, by, request_id } => {
                self.mark(&job, as_, output, by, request_id, now).map_err(NotApplied::from)
            }
        };
        #[cfg(debug_assertions)]
        self.check_invariants_now_and_then();
        outcome
    }

    /// [`Run::check_invariants`] after this input, if the checks since the last one stay
    /// within [`CHECKED_JOBS_PER_INPUT_MAX`] on average: after every input for a run of up to
    /// that many jobs, every `jobs / CHECKED_JOBS_PER_INPUT_MAX` inputs for a larger one (a
    /// full check after each of 20,000 inputs of a 10,000-child spawn would make the debug
    /// coordinator 30 times slower).
    #[cfg(debug_assertions)]
    fn check_invariants_now_and_then(&mut self) {
        self.inputs_unchecked += 1;
        if self.inputs_unchecked.saturating_mul(CHECKED_JOBS_PER_INPUT_MAX) >= self.jobs.len() {
            self.inputs_unchecked = 0;
            self.check_invariants();
        }
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

    /// Every job path: each workflow job in dependency order, followed by its subtree.
    pub fn all_paths(&self) -> Vec<String> {
        let mut paths = Vec::with_capacity(self.jobs.len());
        let mut stack: Vec<&String> = self.record.jobs.iter().rev().collect();
        while let Some(path) = stack.pop() {
            paths.push(path.clone());
            if let Some(children) = self.children_of.get(path.as_str()) {
                stack.extend(children.iter().rev());
            }
        }
        paths
    }

    /// Jobs in `state`, in [`Run::all_paths`] order. After a restart the shell checks that
    /// each `queued` job was really published and each `retrying` one's retry is on its way
    /// (a message waiting out a NAK delay, or a scheduled retry); a failed run's notice lists
    /// the `failed` ones.
    pub fn jobs_in(&self, state: JobState) -> impl Iterator<Item = &JobRecord> {
        self.all_paths().into_iter().filter_map(move |path| self.jobs.get(&path)).filter(move |job| job.state == state)
    }

    /// The pool job `path` runs in.
    pub fn pool_of(&self, path: &str) -> String {
        if self.jobs.contains_key(path) { self.spec.pool_of(self.definition(path)) } else { String::new() }
    }

    /// The spec the run dispatches with.
    pub fn spec(&self) -> &Arc<WorkflowSpec> {
        &self.spec
    }

    pub fn dispatch_message(&self, name: &str) -> JobMessage {
        let spec = self.definition(name);
        // Children cannot name an image, resources or env: they run with their workflow
        // job's (decision 15).
        let pod = self.definition(name.split('.').next().unwrap_or(name));
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
            retry_base: Some(job.attempt_offset),
            generation: job.generation,
            retry: self.spec.retry_of(spec),
            timeout_ms: self
                .spec
                .timeout_of(spec)
                .map(|timeout| u64::try_from(timeout.as_duration().as_millis()).unwrap_or(u64::MAX)),
            permanent_exit_codes: spec.permanent_exit_codes.clone(),
            needs: spec.needs.clone(),
            image: pod.image.clone(),
            resources: pod.resources.clone(),
            env: pod.env.clone(),
            // This coordinator reads event batches (`EventBatch`).
            batch_events: true,
        }
    }

    /// The message of a scheduled retry: the job's dispatch message whose first delivery is
    /// attempt `after_attempt + 1`, its retry policy still counting from the series' start.
    pub fn retry_message(&self, name: &str, after_attempt: u32) -> JobMessage {
        JobMessage { attempt_offset: after_attempt, ..self.dispatch_message(name) }
    }

    /// The effect that stores a job's record as it is now.
    fn save(&self, path: &str) -> Effect {
        Effect::SaveJob { run_id: self.record.id, job: path.to_owned() }
    }

    /// How a job is defined: by the workflow, or (a child) by the job that spawned it.
    fn definition(&self, path: &str) -> &JobSpec {
        match self.jobs.get(path).and_then(|job| job.definition.as_deref()) {
            Some(definition) => definition,
            None => &self.spec.jobs[path],
        }
    }

    /// Whether a final failure of `path` is its parent's to judge (the parent sets
    /// `max_child_failures`): it then neither counts against the run nor sets off
    /// `on_failure`; the parent does, if too many of its children fail.
    fn failure_judged_by_parent(&self, path: &str) -> bool {
        parent_of(path).is_some_and(|parent| {
            self.jobs.contains_key(parent) && self.definition(parent).max_child_failures.is_some()
        })
    }

    /// The failed jobs that count against the run (see [`Run::failure_judged_by_parent`]).
    fn count_failures(&self) -> usize {
        self.jobs
            .iter()
            .filter(|(path, job)| job.state == JobState::Failed && !self.failure_judged_by_parent(path))
            .count()
    }
}

#[cfg(test)]
mod tests;
