//! The DAG engine: a deterministic state machine for one run. Events in, effects out; no
//! I/O, no clock reads (time arrives as an argument), no randomness.
//!
//! The shell ([`crate::service`]) executes the `Save` effects in list order, waits until all
//! are durable, then publishes the `Dispatch` effects: state is always written before it is
//! acted on.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::{REDELIVERIES_KEPT, truncate_error};
use sluice_proto::spawn::{CHILD_DEPTH_MAX, SpawnError, child_path, depth_of, parent_of};
use sluice_proto::spec::OnFailure;
use sluice_proto::{
    AttemptRecord, DeadLetter, EventKind, JobEvent, JobMessage, JobRecord, JobSpec, JobState, RunId, RunRecord,
    RunState, SCHEMA_VERSION, Window, WorkflowSpec,
};

/// What the shell must do, in order.
///
/// Small on purpose (a job's save and dispatch name the job; the shell reads the record
/// with [`Run::job`] and builds the message with [`Run::dispatch_message`] when it
/// gets to them, a chunk at a time): a spawn of 100,000 children yields 200,000 effects at
/// once. The shell may apply several events before carrying out their effects together; it
/// then writes each record's latest state at the place of its last save, which keeps the
/// order that matters (a spawning parent after its children) as long as a spawn's effects
/// are carried out on their own, which the shell does.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Write a job's record as it is now (KV `sluice-jobs`).
    SaveJob { run_id: RunId, job: String },
    /// Write the run record (KV `sluice-runs`).
    SaveRun(Box<RunRecord>),
    /// Publish this generation of a job to its pool ([`Run::dispatch_message`] builds the
    /// message), after every save before it is durable.
    Dispatch { run_id: RunId, job: String, generation: u32 },
    /// Keep a job whose attempts are over in the dead-letter stream.
    DeadLetter(Box<DeadLetter>),
    /// Remove every queued message and scheduled retry of a cancelled run, so no worker
    /// starts its jobs.
    Withdraw(RunId),
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
    #[error("job `{job}` needs `{need}`, which did not complete: retry `{need}` (or the whole run) instead")]
    NeedsFirst { job: String, need: String },
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
    /// Every job by path: workflow jobs by name, children as `<parent>.<name>`.
    jobs: HashMap<String, JobRecord>,
    /// Each parent's children, in the order they were spawned (by name after a restart).
    children_of: HashMap<String, Vec<String>>,
    /// Derived from the spec: who needs each workflow job.
    dependents: HashMap<String, Vec<String>>,
    /// Jobs not yet terminal; the run ends when this reaches zero.
    unfinished: usize,
    /// Jobs that failed finally; any makes the run fail.
    failed_jobs: usize,
    /// Per workflow job, how many of the jobs it needs have not completed: a job is queued
    /// when this reaches zero, without rescanning its needs on every completion.
    pending_needs: HashMap<String, usize>,
    /// Per waiting parent, how many of its children are not finished.
    pending_children: HashMap<String, usize>,
    /// Jobs queued, running or retrying (what `max_parallel` of the run limits).
    in_flight: usize,
    /// The same, per parent, for its children (what a job's `max_parallel` limits).
    in_flight_children: HashMap<String, usize>,
    /// Jobs ready to go but over a `max_parallel` limit, first come first served, grouped
    /// by parent ("" for workflow jobs) so a full parent does not hold up the others.
    held: BTreeMap<String, VecDeque<String>>,
}

/// The group a held job waits in: its parent, or "" for a workflow job.
fn group_of(path: &str) -> &str {
    parent_of(path).unwrap_or("")
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
        let mut dispatches = Vec::new();
        for name in &order {
            if run.pending_needs[name] == 0 {
                run.ready(name, now, &mut dispatches);
            }
        }
        // Blocked jobs are saved too, so `status` lists every job from the start.
        let mut effects: Vec<Effect> = order.iter().map(|name| run.save(name)).collect();
        effects.push(Effect::SaveRun(Box::new(run.record.clone())));
        effects.extend(dispatches.into_iter().filter(|effect| matches!(effect, Effect::Dispatch { .. })));
        (run, effects)
    }

    /// Rebuilds a run from stored records after a restart, and returns the effects that
    /// finish whatever a crash interrupted (a dependent not yet queued, a parent whose
    /// children all finished, a run not yet ended). Missing workflow job records are
    /// recreated as `blocked`; children whose parent's record does not list them (a spawn a
    /// crash cut short) are left out: the parent's event is applied again.
    pub fn restore(
        record: RunRecord,
        mut stored: HashMap<String, JobRecord>,
        now: DateTime<Utc>,
    ) -> Result<(Self, Vec<Effect>), RestoreError> {
        let spec = WorkflowSpec::parse(&record.spec_yaml)
            .map_err(|error| RestoreError { run_id: record.id, reason: error.to_string() })?;
        let mut jobs: HashMap<String, JobRecord> = spec
            .topological_order()
            .into_iter()
            .map(|name| {
                let job = stored.remove(&name).unwrap_or_else(|| blank_job(record.id, &name));
                (name, job)
            })
            .collect();
        let mut children: Vec<JobRecord> = stored.into_values().filter(|job| job.parent.is_some()).collect();
        children.sort_by(|a, b| depth_of(&a.name).cmp(&depth_of(&b.name)).then_with(|| a.name.cmp(&b.name)));
        for child in children {
            let parent = child.parent.as_deref().unwrap_or_default();
            let spawned = jobs.get(parent).is_some_and(|parent| parent.children > 0);
            if child.definition.is_some() && spawned && parent_of(&child.name) == Some(parent) {
                jobs.insert(child.name.clone(), child);
            }
        }
        let mut run = Self::assemble(record, Arc::new(spec), jobs);
        let mut effects = Vec::new();
        if run.record.state == RunState::Running {
            for name in run.all_paths() {
                match run.jobs[&name].state {
                    JobState::Blocked => run.unblock(&name, now, &mut effects),
                    JobState::Waiting if run.pending_children.get(&name) == Some(&0) => {
                        run.finish_parent(&name, now, &mut effects)
                    }
                    _ => {}
                }
            }
            run.fill_slots(now, &mut effects);
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
        let mut children_of: HashMap<String, Vec<String>> = HashMap::new();
        // Children are the jobs with a definition of their own.
        let mut child_paths: Vec<&String> =
            jobs.iter().filter(|(_, job)| job.definition.is_some()).map(|(path, _)| path).collect();
        child_paths.sort();
        for path in child_paths {
            children_of.entry(group_of(path).to_owned()).or_default().push(path.clone());
        }
        let unfinished = jobs.values().filter(|job| !job.state.is_terminal()).count();
        let failed_jobs = jobs.values().filter(|job| job.state == JobState::Failed).count();
        let in_flight = jobs.values().filter(|job| job.state.is_in_flight()).count();
        let mut in_flight_children: HashMap<String, usize> = HashMap::new();
        let mut pending_children: HashMap<String, usize> = HashMap::new();
        for job in jobs.values() {
            if let Some(parent) = &job.parent {
                if job.state.is_in_flight() {
                    *in_flight_children.entry(parent.clone()).or_default() += 1;
                }
                if !job.state.is_terminal() {
                    *pending_children.entry(parent.clone()).or_default() += 1;
                }
            }
        }
        for (name, job) in &jobs {
            if job.state == JobState::Waiting {
                pending_children.entry(name.clone()).or_default();
            }
        }
        let pending_needs = spec
            .jobs
            .iter()
            .map(|(name, job)| {
                let completed =
                    |need: &String| jobs.get(need.as_str()).is_some_and(|need| need.state == JobState::Completed);
                (name.clone(), job.needs.iter().filter(|need| !completed(need)).count())
            })
            .collect();
        Self {
            record,
            spec,
            jobs,
            children_of,
            dependents,
            unfinished,
            failed_jobs,
            pending_needs,
            pending_children,
            in_flight,
            in_flight_children,
            held: BTreeMap::new(),
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

    /// Jobs in `queued` state: after a restart the shell checks each was really published.
    pub fn queued_jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values().filter(|job| job.state == JobState::Queued)
    }

    /// Whether `event` is a success that spawned children this run has not taken yet: the
    /// shell then reads them from `sluice.spawns.…` and passes them to [`Run::apply_with`].
    pub fn wants_children(&self, event: &JobEvent) -> bool {
        event.kind == EventKind::Succeeded
            && event.spawned > 0
            && self.jobs.get(&event.job).is_some_and(|job| {
                event.generation == job.generation
                    && !job.state.is_terminal()
                    && job.state != JobState::Waiting
                    && !job.attempt_history.iter().any(|a| a.attempt == event.attempt && a.finished_at.is_some())
            })
    }

    /// Applies one job event. Handling the same event twice changes nothing the second time.
    pub fn apply(&mut self, event: &JobEvent, now: DateTime<Utc>) -> Result<Vec<Effect>, Ignored> {
        self.apply_with(event, Spawned::default(), now)
    }

    /// [`Run::apply`] with the children a `succeeded` event announced (`event.spawned`).
    pub fn apply_with(
        &mut self,
        event: &JobEvent,
        children: Spawned,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, Ignored> {
        let job = self.jobs.get_mut(&event.job).ok_or_else(|| Ignored::UnknownJob(event.job.clone()))?;
        if event.generation < job.generation {
            return Err(Ignored::StaleGeneration {
                job: event.job.clone(),
                event: event.generation,
                current: job.generation,
            });
        }
        // The same attempt on another worker (JetStream can repeat a delivery after a crash):
        // noted from its start, or from its outcome when the attempt already ended (in case
        // the start was lost).
        let repeats_finished = event.kind != EventKind::Started
            && event.started_at.is_some()
            && job
                .attempt_history
                .iter()
                .any(|attempt| attempt.attempt == event.attempt && attempt.finished_at.is_some());
        if (event.kind == EventKind::Started || repeats_finished) && record_redelivery(job, event) {
            return Ok(vec![self.save(&event.job)]);
        }
        if job.state.is_terminal() || job.state == JobState::Waiting {
            return Err(Ignored::AlreadyFinished { job: event.job.clone(), state: job.state.as_str() });
        }
        let finished_before =
            job.attempt_history.iter().any(|attempt| attempt.attempt == event.attempt && attempt.finished_at.is_some());
        if event.kind != EventKind::Started && finished_before {
            return Err(Ignored::Duplicate { job: event.job.clone(), attempt: event.attempt });
        }
        // Children's records must be durable before the parent's record that counts them.
        let mut effects = Vec::new();
        let mut after = Vec::new();
        match event.kind {
            EventKind::Started => self.started(event)?,
            EventKind::Succeeded => self.succeeded(event, children, now, &mut effects, &mut after),
            EventKind::Failed => self.failed(event, now, &mut after),
        }
        let spawned = self.jobs[&event.job].children > 0 && event.kind == EventKind::Succeeded;
        effects.push(self.save(&event.job));
        // Appending to the shorter list: a spawn's `after` holds 200,000 effects.
        if effects.len() <= after.len() {
            after.splice(0..0, effects);
            effects = after;
        } else {
            effects.extend(after);
        }
        if spawned {
            // The shell keeps only the last write of each record: the parent's must follow
            // every child's, so a stored parent that counts children means they are stored.
            effects.push(self.save(&event.job));
        }
        self.fill_slots(now, &mut effects);
        self.finish_if_done(now, &mut effects);
        Ok(effects)
    }

    /// Changes a job's state, keeping every counter true.
    fn set_state(&mut self, path: &str, state: JobState) {
        let job = self.jobs.get_mut(path).expect("path comes from the run");
        let old = std::mem::replace(&mut job.state, state);
        // A child's parent is its path's prefix (names hold no dots): no copy per change.
        let parent = parent_of(path);
        match (old.is_in_flight(), state.is_in_flight()) {
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
        match (old.is_terminal(), state.is_terminal()) {
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
        match (old == JobState::Failed, state == JobState::Failed) {
            (false, true) => self.failed_jobs += 1,
            (true, false) => self.failed_jobs -= 1,
            _ => {}
        }
    }

    fn started(&mut self, event: &JobEvent) -> Result<(), Ignored> {
        let job = self.jobs.get_mut(&event.job).expect("checked by apply");
        // An older attempt's late start, or this attempt's start seen again.
        if event.attempt < job.attempts || job.attempt_history.iter().any(|attempt| attempt.attempt == event.attempt) {
            return Err(Ignored::Duplicate { job: event.job.clone(), attempt: event.attempt });
        }
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
        self.set_state(&event.job, JobState::Running);
        Ok(())
    }

    fn succeeded(
        &mut self,
        event: &JobEvent,
        children: Spawned,
        now: DateTime<Utc>,
        before: &mut Vec<Effect>,
        effects: &mut Vec<Effect>,
    ) {
        let path = event.job.as_str();
        let count = children.read;
        let spawn_problem = if event.spawned == 0 {
            None
        } else if count != event.spawned as usize {
            Some(format!(
                "the job spawned {} children but {} could be read from the spawn stream",
                event.spawned, count
            ))
        } else if depth_of(path) + 1 > CHILD_DEPTH_MAX {
            Some(SpawnError::TooDeep.to_string())
        } else {
            children.problem.as_ref().map(ToString::to_string)
        };
        if let Some(problem) = spawn_problem {
            let failure = JobEvent { kind: EventKind::Failed, error: Some(problem), retry_at: None, ..event.clone() };
            return self.failed(&failure, now, effects);
        }
        let job = self.jobs.get_mut(path).expect("checked by apply");
        close_attempt(job, event, None);
        job.error = None;
        job.retry_at = None;
        job.output = event.output.clone();
        if count == 0 {
            job.finished_at = Some(event.at);
            return self.complete(path, now, effects);
        }
        job.children = event.spawned;
        let run_id = self.record.id;
        let mut paths = Vec::with_capacity(count);
        for (name, definition) in children.children {
            let child_path = child_path(path, &name);
            let mut record = blank_job(run_id, &child_path);
            record.parent = Some(path.to_owned());
            record.definition = Some(definition);
            self.jobs.insert(child_path.clone(), record);
            self.unfinished += 1;
            paths.push(child_path);
        }
        self.pending_children.insert(path.to_owned(), paths.len());
        self.children_of.insert(path.to_owned(), paths);
        self.set_state(path, JobState::Waiting);
        // By index, one path copied at a time: a spawn's paths are not cloned all at once.
        for index in 0..count {
            let child = self.children_of[path][index].clone();
            self.unblock(&child, now, effects);
        }
        // Queued and skipped children were saved as they changed; held ones are saved here.
        // Each child is saved once, and all before the parent (see `apply_with`).
        for child in &self.children_of[path] {
            if self.jobs[child].state == JobState::Blocked {
                before.push(self.save(child));
            }
        }
    }

    /// A job's work (and its children's) is done: it completes, and what needs it may start.
    fn complete(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.set_state(path, JobState::Completed);
        let dependents = self.dependents.get(path).cloned().unwrap_or_default();
        for dependent in dependents {
            let pending = self.pending_needs.get_mut(&dependent).expect("every job has a count");
            *pending -= 1;
            if *pending == 0 {
                self.unblock(&dependent, now, effects);
            }
        }
        self.child_finished(path, now, effects);
    }

    /// A job reached a terminal state: if it is a child, its parent may be done.
    fn child_finished(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let Some(parent) = parent_of(path) else { return };
        if self.jobs.get(parent).is_some_and(|job| job.state == JobState::Waiting)
            && self.pending_children.get(parent) == Some(&0)
        {
            let parent = parent.to_owned();
            self.finish_parent(&parent, now, effects);
        }
    }

    /// Every child of a waiting parent finished: it completes if they all completed. A
    /// parent that is not waiting (already finished by a child's completion) is left alone.
    fn finish_parent(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.jobs.get(path).is_none_or(|job| job.state != JobState::Waiting) {
            return;
        }
        let children = self.children_of.get(path).cloned().unwrap_or_default();
        let unfinished: Vec<&String> =
            children.iter().filter(|child| self.jobs[child.as_str()].state != JobState::Completed).collect();
        let job = self.jobs.get_mut(path).expect("path comes from the run");
        job.finished_at = Some(now);
        if unfinished.is_empty() {
            self.complete(path, now, effects);
            effects.push(self.save(path));
            return;
        }
        let first = &self.jobs[unfinished[0].as_str()];
        let error = format!(
            "{} of {} children did not complete; first: `{}` {}{}",
            unfinished.len(),
            children.len(),
            first.name,
            first.state.as_str(),
            first.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default()
        );
        let error = truncate_error(&error, ERROR_TEXT_MAX_BYTES);
        self.jobs.get_mut(path).expect("path comes from the run").error = Some(error);
        self.set_state(path, JobState::Failed);
        effects.push(self.save(path));
        self.after_failure(path, now, effects);
    }

    fn failed(&mut self, event: &JobEvent, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let error = truncate_error(event.error.as_deref().unwrap_or("failed without a message"), ERROR_TEXT_MAX_BYTES);
        let job = self.jobs.get_mut(&event.job).expect("checked by apply");
        close_attempt(job, event, Some(error.clone()));
        job.error = Some(error);
        if let Some(retry_at) = event.retry_at {
            job.retry_at = Some(retry_at);
            self.set_state(&event.job, JobState::Retrying);
            return;
        }
        job.retry_at = None;
        job.finished_at = Some(event.at);
        self.set_state(&event.job, JobState::Failed);
        effects.push(Effect::DeadLetter(Box::new(DeadLetter {
            schema_version: SCHEMA_VERSION,
            job: self.dispatch_message(&event.job),
            reason: self.jobs[&event.job].error.clone().unwrap_or_default(),
            attempts: self.jobs[&event.job].attempt_history.clone(),
            dead_at: event.at,
        })));
        self.after_failure(&event.job, now, effects);
    }

    /// The run's failure policy, after `path` failed finally.
    fn after_failure(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let reason = format!("skipped: job `{path}` failed");
        match self.spec.on_failure {
            // Nothing new starts; what is in flight may finish. Only the first failure needs
            // the scan: after it, `unblock` skips whatever becomes ready.
            OnFailure::Stop if self.failed_jobs == 1 => {
                for name in self.all_paths() {
                    if self.jobs[&name].state == JobState::Blocked {
                        self.skip(&name, &reason, now, effects);
                    }
                }
            }
            OnFailure::Stop => {}
            OnFailure::Continue => self.skip_downstream(path, &reason, now, effects),
        }
        self.child_finished(path, now, effects);
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
        let stopped_need = self.definition(name).needs.iter().find(|need| {
            matches!(self.jobs[need.as_str()].state, JobState::Failed | JobState::Skipped | JobState::Cancelled)
        });
        if let Some(need) = stopped_need {
            let reason = format!("skipped: job `{need}` did not complete");
            self.skip(name, &reason, now, effects);
        } else if self.failed_jobs > 0 && self.spec.on_failure == OnFailure::Stop {
            self.skip(name, "skipped: another job of the run failed", now, effects);
        } else if self.pending_needs.get(name).copied().unwrap_or(0) == 0 {
            self.ready(name, now, effects);
        }
    }

    /// A job free to start: queued now, or held until a `max_parallel` slot frees up.
    fn ready(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.has_slot(name) {
            self.queue(name, now, effects);
        } else {
            self.held.entry(group_of(name).to_owned()).or_default().push_back(name.to_owned());
        }
    }

    /// Whether the run's and the parent's `max_parallel` allow one more job in flight.
    fn has_slot(&self, name: &str) -> bool {
        let run_room = self.spec.max_parallel.is_none_or(|limit| self.in_flight < limit as usize);
        let parent_room = parent_of(name).is_none_or(|parent| {
            self.definition(parent)
                .max_parallel
                .is_none_or(|limit| self.in_flight_children.get(parent).copied().unwrap_or(0) < limit as usize)
        });
        run_room && parent_room
    }

    /// Queues held jobs while limits allow.
    fn fill_slots(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.held.is_empty() {
            return;
        }
        let groups: Vec<String> = self.held.keys().cloned().collect();
        for group in groups {
            while let Some(front) = self.held.get(&group).and_then(|queue| queue.front()).cloned() {
                if self.jobs.get(&front).is_none_or(|job| job.state != JobState::Blocked) {
                    self.held.get_mut(&group).map(VecDeque::pop_front);
                    continue;
                }
                if !self.has_slot(&front) {
                    break;
                }
                self.held.get_mut(&group).map(VecDeque::pop_front);
                self.queue(&front, now, effects);
            }
            if self.held.get(&group).is_some_and(VecDeque::is_empty) {
                self.held.remove(&group);
            }
        }
    }

    /// `sluice cancel`: queued jobs are withdrawn, running ones told to stop, and the run
    /// ends `cancelled` at once (late events of its jobs change nothing).
    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, Refused> {
        if self.record.state.is_terminal() {
            return Err(Refused::Finished { run_id: self.record.id, state: self.record.state.as_str() });
        }
        let mut saves = Vec::new();
        for name in self.all_paths() {
            let state = self.jobs[&name].state;
            if state.is_terminal() {
                continue;
            }
            self.set_state(&name, JobState::Cancelled);
            let job = self.jobs.get_mut(&name).expect("name comes from the run");
            job.finished_at = Some(now);
            job.retry_at = None;
            job.error = Some("cancelled by a user".to_owned());
            saves.push(self.save(&name));
        }
        self.held.clear();
        self.record.state = RunState::Cancelled;
        self.record.finished_at = Some(now);
        saves.push(Effect::SaveRun(Box::new(self.record.clone())));
        saves.push(Effect::Withdraw(self.record.id));
        saves.push(Effect::StopRun(self.record.id));
        Ok(saves)
    }

    /// `sluice retry` and dead-letter replays: runs again the jobs that did not complete
    /// (or `only` and what needs it), each in a new generation with fresh attempts, keeping
    /// completed work. A job that spawned children is not run again itself: its children
    /// that did not complete are, and it waits for them again. The run is `running` again
    /// and can still succeed.
    pub fn rerun(&mut self, only: Option<&str>, now: DateTime<Utc>) -> Result<Vec<Effect>, Refused> {
        let run_id = self.record.id;
        let mut todo: Vec<String> = match only {
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
        // `run`: run again from scratch; `wait`: parents waiting again for their children.
        let mut run: HashSet<String> = HashSet::new();
        let mut wait: HashSet<String> = HashSet::new();
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            // Everything downstream of a finished job runs again too, and its ancestors wait
            // again (a job still waiting has neither started dependents nor finished ancestors).
            if self.jobs[&name].state.is_terminal() {
                todo.extend(self.dependents.get(&name).cloned().unwrap_or_default());
                if let Some(parent) = parent_of(&name) {
                    todo.push(parent.to_owned());
                }
            }
            if self.jobs[&name].children > 0 {
                // A finished parent's unfinished children run again; a parent still waiting
                // keeps its other children as they are.
                if self.jobs[&name].state.is_terminal() {
                    let children = self.children_of.get(&name).cloned().unwrap_or_default();
                    todo.extend(children.into_iter().filter(|child| self.jobs[child].state != JobState::Completed));
                }
                wait.insert(name);
            } else if only.is_some() || self.jobs[&name].state != JobState::Completed || parent_of(&name).is_none() {
                run.insert(name);
            }
        }
        // A job cannot run again while a job it needs stays unfinished (it would wait for ever).
        // In dependency order, so the refusal names the first such job.
        for name in self.all_paths().iter().filter(|name| run.contains(name.as_str())) {
            let blocking = self.definition(name).needs.iter().find(|need| {
                self.jobs[need.as_str()].state != JobState::Completed
                    && !run.contains(need.as_str())
                    && !wait.contains(need.as_str())
            });
            if let Some(need) = blocking {
                return Err(Refused::NeedsFirst { job: name.clone(), need: need.clone() });
            }
        }
        if let Some(busy) = run.iter().chain(&wait).find(|name| {
            let state = self.jobs[*name].state;
            !state.is_terminal() && state != JobState::Waiting
        }) {
            return Err(Refused::InFlight { job: busy.clone(), state: self.jobs[busy].state.as_str() });
        }
        let order: Vec<String> = self.all_paths().into_iter().filter(|name| seen.contains(name)).collect();
        let mut saves = Vec::new();
        for name in &order {
            if run.contains(name) {
                self.set_state(name, JobState::Blocked);
                let job = self.jobs.get_mut(name).expect("name comes from the run");
                job.generation += 1;
                job.attempt_offset = job.attempts;
                job.error = None;
                job.retry_at = None;
                job.queued_at = None;
                job.started_at = None;
                job.finished_at = None;
                job.output = None;
            } else if wait.contains(name) {
                self.set_state(name, JobState::Waiting);
                let job = self.jobs.get_mut(name).expect("name comes from the run");
                job.error = None;
                job.finished_at = None;
            } else {
                continue;
            }
            saves.push(name.clone());
        }
        for name in &order {
            if let Some(job) = self.spec.jobs.get(name) {
                let pending =
                    job.needs.iter().filter(|need| self.jobs[need.as_str()].state != JobState::Completed).count();
                self.pending_needs.insert(name.clone(), pending);
            }
        }
        self.record.state = RunState::Running;
        self.record.finished_at = None;
        self.record.error = None;
        let mut effects = Vec::new();
        for name in &order {
            if run.contains(name) && self.pending_needs.get(name).copied().unwrap_or(0) == 0 {
                self.ready(name, now, &mut effects);
            }
        }
        for name in order.iter().rev() {
            if wait.contains(name) && self.pending_children.get(name).copied().unwrap_or(0) == 0 {
                self.finish_parent(name, now, &mut effects);
            }
        }
        let mut all: Vec<Effect> = saves.iter().map(|name| self.save(name)).collect();
        all.push(Effect::SaveRun(Box::new(self.record.clone())));
        all.extend(effects);
        self.finish_if_done(now, &mut all);
        Ok(all)
    }

    fn queue(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.set_state(name, JobState::Queued);
        let job = self.jobs.get_mut(name).expect("name comes from the run");
        job.queued_at = Some(now);
        let generation = job.generation;
        effects.push(self.save(name));
        effects.push(Effect::Dispatch { run_id: self.record.id, job: name.to_owned(), generation });
    }

    fn skip(&mut self, name: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.set_state(name, JobState::Skipped);
        let job = self.jobs.get_mut(name).expect("name comes from the run");
        job.error = Some(reason.to_owned());
        job.finished_at = Some(now);
        effects.push(self.save(name));
        self.child_finished(name, now, effects);
    }

    fn finish_if_done(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.unfinished > 0 || self.record.state.is_terminal() {
            return;
        }
        let mut failed: Vec<&str> = self
            .record
            .jobs
            .iter()
            .filter(|name| self.jobs[name.as_str()].state == JobState::Failed)
            .map(String::as_str)
            .collect();
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
        effects.push(Effect::SaveRun(Box::new(self.record.clone())));
    }

    /// The message that runs job `name` (for the first dispatch, and for re-publishing one a
    /// crash may have lost).
    pub fn dispatch_message(&self, name: &str) -> JobMessage {
        let spec = self.definition(name);
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
        parent: None,
        definition: None,
        children: 0,
        output: None,
    }
}

/// One more (`up`) or one fewer child of `parent` in `counts`; the key is copied only the
/// first time a parent is counted. Nothing for a workflow job (no parent).
fn count_child(counts: &mut HashMap<String, usize>, parent: Option<&str>, up: bool) {
    let Some(parent) = parent else { return };
    match counts.get_mut(parent) {
        Some(count) if up => *count += 1,
        Some(count) => *count -= 1,
        None if up => {
            counts.insert(parent.to_owned(), 1);
        }
        None => {}
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

/// Marks the attempt the event is about as finished (adding it if its start was never seen:
/// a worker's outcome says when the attempt began).
fn close_attempt(job: &mut JobRecord, event: &JobEvent, error: Option<String>) {
    job.attempts = job.attempts.max(event.attempt);
    let started_at = event.started_at.unwrap_or(event.at);
    job.started_at.get_or_insert(started_at);
    match job.attempt_history.iter_mut().rev().find(|attempt| attempt.attempt == event.attempt) {
        Some(attempt) => {
            attempt.finished_at = Some(event.at);
            attempt.error = error;
            // A worker's outcome (it says when it began) for an attempt another worker started.
            if event.started_at.is_some()
                && attempt.worker != event.worker
                && !attempt.redelivered_to.contains(&event.worker)
                && attempt.redelivered_to.len() < REDELIVERIES_KEPT
            {
                attempt.redelivered_to.push(event.worker.clone());
            }
        }
        None => job.attempt_history.push(AttemptRecord {
            attempt: event.attempt,
            started_at,
            finished_at: Some(event.at),
            error,
            worker: event.worker.clone(),
            redelivered_to: Vec::new(),
        }),
    }
}

mod spawned;
pub use spawned::Spawned;

#[cfg(test)]
mod tests;
