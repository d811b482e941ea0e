//! A run's creation from a submission and its rebuilding from stored records.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_proto::spawn::{depth_of, parent_of};
use sluice_proto::{JobRecord, JobState, RunId, RunRecord, RunState, SCHEMA_VERSION, WorkflowSpec};

use super::{Effect, NewRun, RestoreError, Run, group_of};

impl Run {
    /// A new run: every job `blocked`, then those that need nothing `queued` and dispatched.
    /// No job record is written: the run record says which jobs it queued
    /// (`queued_at_start`), so a job without a record is in the state the run began with
    /// (`RunRecord::first_state`), and its record is written when it leaves that state. The
    /// run record is written before any job is dispatched. (Writing 20,000 blocked or queued
    /// records first kept a big run's first job waiting ~0.4 s; docs/performance.md.)
    pub fn start(new: NewRun, now: DateTime<Utc>) -> (Self, Vec<Effect>) {
        let order = new.spec.topological_order();
        let record = RunRecord {
            schema_version: SCHEMA_VERSION,
            id: new.id,
            workflow: new.spec.name.clone(),
            spec_yaml: String::new(),
            spec_hash: Some(new.spec_hash),
            window: new.window,
            params: new.params,
            state: RunState::Running,
            created_at: now,
            finished_at: None,
            idempotency_key: new.idempotency_key,
            origin: new.origin,
            error: None,
            traceparent: new.traceparent,
            tracestate: new.tracestate,
            jobs: order.clone(),
            queued_at_start: None,
            cancelled_by: None,
        };
        let jobs = order.iter().map(|name| (name.clone(), blank_job(new.id, name))).collect();
        let mut run = Self::assemble(record, Arc::new(new.spec), jobs);
        let mut dispatches = Vec::new();
        for name in &order {
            if run.pending_needs[name] == 0 {
                run.ready(name, now, &mut dispatches);
            }
        }
        let queued = order.iter().enumerate().filter(|(_, name)| run.jobs[*name].state == JobState::Queued);
        run.record.queued_at_start = Some(RunRecord::queued_bitmap(order.len(), queued.map(|(index, _)| index)));
        let mut effects = vec![Effect::SaveRun(Box::new(run.record.clone()))];
        effects.extend(dispatches.into_iter().filter(|effect| matches!(effect, Effect::Dispatch { .. })));
        #[cfg(debug_assertions)]
        run.check_invariants();
        (run, effects)
    }

    /// Rebuilds a run from stored records after a restart, and returns the effects that
    /// finish whatever a crash interrupted (a dependent not yet queued, a parent whose
    /// children all finished, a run not yet ended). Missing workflow job records are
    /// recreated as `blocked`; children whose parent's record does not list them (a spawn a
    /// crash cut short) are left out: the parent's event is applied again.
    /// `spec` is the run's: the one its record names by hash (in `sluice-specs`), or the copy
    /// in a record from before specs were stored by hash.
    pub fn restore(
        record: RunRecord,
        spec: Arc<WorkflowSpec>,
        stored: HashMap<String, JobRecord>,
        now: DateTime<Utc>,
    ) -> Result<(Self, Vec<Effect>), RestoreError> {
        if spec.name != record.workflow {
            let reason = format!("its spec is of workflow `{}`, not `{}`", spec.name, record.workflow);
            return Err(RestoreError { run_id: record.id, reason });
        }
        let jobs = kept_records(&spec, &record, stored);
        let mut run = Self::assemble(record, spec, jobs);
        let mut effects = Vec::new();
        if run.record.state == RunState::Running {
            run.reconcile(now, &mut effects);
        }
        #[cfg(debug_assertions)]
        run.check_invariants();
        Ok((run, effects))
    }

    /// Finishes what a crash interrupted: parents whose children all finished first (what
    /// needs them may become ready), then every other job that is ready, each held or queued
    /// once.
    fn reconcile(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let paths = self.all_paths();
        for name in &paths {
            if self.jobs[name].state == JobState::Waiting && self.pending_children.get(name) == Some(&0) {
                self.finish_parent(name, now, effects);
            }
        }
        let held: BTreeSet<String> = self.held.values().flatten().cloned().collect();
        for name in &paths {
            if !held.contains(name) {
                self.unblock(name, now, effects);
            }
        }
        self.fill_slots(now, effects);
        self.finish_if_done(now, effects);
    }

    /// The run's state around its records: every counter derived from them.
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
        let in_flight = jobs.values().filter(|job| job.state.is_in_flight()).count();
        let (pending_children, in_flight_children) = count_children(&jobs);
        let pending_needs = spec
            .jobs
            .iter()
            .map(|(name, job)| {
                let completed =
                    |need: &String| jobs.get(need.as_str()).is_some_and(|need| need.state == JobState::Completed);
                (name.clone(), job.needs.iter().filter(|need| !completed(need)).count())
            })
            .collect();
        let mut run = Self {
            record,
            spec,
            jobs,
            children_of,
            dependents,
            unfinished,
            failed_jobs: 0,
            pending_needs,
            pending_children,
            in_flight,
            in_flight_children,
            held: BTreeMap::new(),
            observed: Vec::new(),
            #[cfg(debug_assertions)]
            inputs_unchecked: 0,
        };
        run.failed_jobs = run.count_failures();
        run
    }
}

/// The stored records a restored run keeps: every workflow job (blank when missing) and the
/// children their parents' records list, shallowest first.
fn kept_records(
    spec: &WorkflowSpec,
    record: &RunRecord,
    mut stored: HashMap<String, JobRecord>,
) -> HashMap<String, JobRecord> {
    // Where each workflow job is in the run record's list, for the state it began in.
    let index: HashMap<&str, usize> =
        record.jobs.iter().enumerate().map(|(index, name)| (name.as_str(), index)).collect();
    let mut jobs: HashMap<String, JobRecord> = spec
        .topological_order()
        .into_iter()
        .map(|name| {
            let job = stored.remove(&name).unwrap_or_else(|| {
                index
                    .get(name.as_str())
                    .and_then(|index| record.first_state(*index))
                    .unwrap_or_else(|| blank_job(record.id, &name))
            });
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
    jobs
}

/// Per parent: its children not finished (also for a `waiting` parent with none), and its
/// children in flight.
fn count_children(jobs: &HashMap<String, JobRecord>) -> (HashMap<String, usize>, HashMap<String, usize>) {
    let mut pending_children: HashMap<String, usize> = HashMap::new();
    let mut in_flight_children: HashMap<String, usize> = HashMap::new();
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
    for (name, job) in jobs {
        if job.state == JobState::Waiting {
            pending_children.entry(name.clone()).or_default();
        }
    }
    (pending_children, in_flight_children)
}

/// A job that has not started: `blocked`, no attempts, generation 0.
pub(super) fn blank_job(run_id: RunId, name: &str) -> JobRecord {
    JobRecord::blank(run_id, name)
}
