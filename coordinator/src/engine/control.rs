//! What users ask of a run: cancel it, run again what did not complete (retry, replay), or
//! end a job by hand (mark).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sluice_proto::limits::REQUESTED_BY_MAX_BYTES;
use sluice_proto::messages::truncate_start;
use sluice_proto::spawn::parent_of;
use sluice_proto::spec::OnFailure;
use sluice_proto::{JobState, Mark, MarkAs, RequestId, RunState};

use super::transitions::Transitions;
use super::{Effect, NewSpec, Refused, Run};

/// The jobs a rerun touches.
#[derive(Debug, Default)]
struct Plan {
    /// Run again from scratch, in a new generation.
    run: BTreeSet<String>,
    /// Parents that wait again for their children.
    wait: BTreeSet<String>,
    /// Every job looked at (`run`, `wait`, and completed children left as they are).
    seen: BTreeSet<String>,
}

impl Run {
    /// `sluice cancel`: queued jobs are withdrawn, running ones told to stop, and the run
    /// ends `cancelled` at once (late events of its jobs change nothing).
    pub(super) fn cancel(&mut self, now: DateTime<Utc>) -> Result<Vec<Effect>, Refused> {
        if self.record.state.is_terminal() {
            return Err(Refused::Finished { run_id: self.record.id, state: self.record.state.as_str() });
        }
        let mut saves = Vec::new();
        for name in self.all_paths() {
            if self.jobs[&name].state.is_terminal() {
                continue;
            }
            self.transition(&name, |job| job.cancel(now));
            saves.push(self.save(&name));
        }
        self.held.clear();
        self.record.state = RunState::Cancelled;
        self.record.finished_at = Some(now);
        self.note_run_finished();
        saves.push(Effect::SaveRun(Box::new(self.record.clone())));
        saves.push(Effect::Withdraw(self.record.id));
        saves.push(Effect::StopRun(self.record.id));
        Ok(saves)
    }

    /// `sluice retry` and dead-letter replays: runs again the jobs that did not complete
    /// (or `only` and what needs it), each in a new generation with fresh attempts, keeping
    /// completed work. A job that spawned children is not run again itself: its children
    /// that did not complete are, and it waits for them again. The run is `running` again
    /// and can still succeed. A refusal changes nothing.
    pub(super) fn rerun(
        &mut self,
        only: Option<&str>,
        spec: Option<NewSpec>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, Refused> {
        let targets = self.rerun_targets(only)?;
        let plan = self.plan(targets, only.is_some());
        self.check_plan(&plan)?;
        if let Some(new) = spec {
            let problems = self.spec.rerun_changes(&new.spec, |name| plan.run.contains(name));
            if !problems.is_empty() {
                return Err(Refused::SpecChange { problems });
            }
            // What runs again is dispatched from the new spec; what does not is the same in both.
            self.spec = new.spec;
            self.record.spec_hash = Some(new.hash);
        }
        let order: Vec<String> = self.all_paths().into_iter().filter(|name| plan.seen.contains(name)).collect();
        // The jobs whose attempts were over: the ones that may have dead letters.
        let dead: Vec<String> =
            order.iter().filter(|name| self.jobs[*name].state == JobState::Failed).cloned().collect();
        let saves = self.reset(&plan, &order);
        self.record.state = RunState::Running;
        self.record.finished_at = None;
        self.record.error = None;
        let mut effects = Vec::new();
        for name in &order {
            if plan.run.contains(name)
                && self.on_success(name)
                && self.pending_needs.get(name).copied().unwrap_or(0) == 0
            {
                self.ready(name, now, &mut effects);
            }
        }
        // Then the jobs of other rules, which may run on what finished without completing or
        // be skipped (`on_failure` with nothing failed). After the others: deciding one may
        // finish a parent and so start what needs it, which must not be started twice.
        for name in &order {
            if plan.run.contains(name) && !self.on_success(name) {
                self.unblock(name, now, &mut effects);
            }
        }
        for name in order.iter().rev() {
            if plan.wait.contains(name) && self.pending_children.get(name).copied().unwrap_or(0) == 0 {
                self.finish_parent(name, now, &mut effects);
            }
        }
        // Written in this order so a crash at any point leaves a store that restores to a
        // run that can go on: the run record first (a run `running` again with its jobs as
        // they were just ends again), then the jobs from the last in dependency order to the
        // first (a dependent is reset before what it needs, children before their parent),
        // then what the rerun queued.
        let mut all = vec![Effect::SaveRun(Box::new(self.record.clone()))];
        all.extend(saves.iter().rev().map(|name| self.save(name)));
        if !dead.is_empty() {
            // A whole-run retry runs every failed job again: one purge covers them.
            let jobs = only.is_some().then_some(dead);
            all.push(Effect::ResolveDeadLetters { run_id: self.record.id, jobs });
        }
        all.extend(effects);
        self.finish_if_done(now, &mut all);
        Ok(all)
    }

    /// Where a rerun starts: `only` (which must be finished), or every workflow job that did
    /// not complete of a finished run.
    fn rerun_targets(&self, only: Option<&str>) -> Result<Vec<String>, Refused> {
        let run_id = self.record.id;
        match only {
            Some(job) => {
                let record = self.jobs.get(job).ok_or_else(|| Refused::UnknownJob { run_id, job: job.to_owned() })?;
                if !record.state.is_terminal() {
                    return Err(Refused::InFlight { job: job.to_owned(), state: record.state.as_str() });
                }
                Ok(vec![job.to_owned()])
            }
            None if !self.record.state.is_terminal() => Err(Refused::StillRunning { run_id }),
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
                Ok(unfinished)
            }
        }
    }

    /// Everything a rerun of `todo` touches. Everything downstream of a finished job runs
    /// again too, and its ancestors wait again (a job still waiting has neither started
    /// dependents nor finished ancestors).
    fn plan(&self, mut todo: Vec<String>, only: bool) -> Plan {
        let mut plan = Plan::default();
        while let Some(name) = todo.pop() {
            if !plan.seen.insert(name.clone()) {
                continue;
            }
            let job = &self.jobs[&name];
            if job.state.is_terminal() {
                todo.extend(self.dependents.get(&name).cloned().unwrap_or_default());
                if let Some(parent) = parent_of(&name) {
                    todo.push(parent.to_owned());
                }
            }
            if job.children > 0 {
                // A finished parent's unfinished children run again; a parent still waiting
                // keeps its other children as they are.
                if job.state.is_terminal() {
                    let children = self.children_of.get(&name).map(Vec::as_slice).unwrap_or_default();
                    todo.extend(
                        children.iter().filter(|child| self.jobs[*child].state != JobState::Completed).cloned(),
                    );
                }
                plan.wait.insert(name);
            } else if only || job.state != JobState::Completed || parent_of(&name).is_none() {
                plan.run.insert(name);
            }
        }
        plan
    }

    /// Refuses a plan that would leave a job waiting for ever, or touch a job in flight.
    fn check_plan(&self, plan: &Plan) -> Result<(), Refused> {
        // A job cannot run (or wait for its children) again while a job it needs stays
        // unfinished. In dependency order, so the refusal names the first such job.
        let touched = |name: &&String| plan.run.contains(name.as_str()) || plan.wait.contains(name.as_str());
        for name in self.all_paths().iter().filter(touched) {
            // A job of another rule than `on_success` needs only what it needs finished.
            let on_success = self.on_success(name);
            let blocking = self.definition(name).needs.iter().find(|need| {
                let state = self.jobs[need.as_str()].state;
                let done = if on_success { state == JobState::Completed } else { state.is_terminal() };
                !done && !plan.run.contains(need.as_str()) && !plan.wait.contains(need.as_str())
            });
            if let Some(need) = blocking {
                return Err(Refused::NeedsFirst { job: name.clone(), need: need.clone() });
            }
        }
        let busy = plan.run.iter().chain(&plan.wait).find(|name| {
            let state = self.jobs[*name].state;
            !state.is_terminal() && state != JobState::Waiting
        });
        match busy {
            Some(busy) => Err(Refused::InFlight { job: busy.clone(), state: self.jobs[busy].state.as_str() }),
            None => Ok(()),
        }
    }

    /// Moves every job of the plan to its new state, in `order`, and recounts what the
    /// workflow jobs among them need. Returns the jobs changed, in that order.
    fn reset(&mut self, plan: &Plan, order: &[String]) -> Vec<String> {
        let mut changed = Vec::new();
        for name in order {
            if plan.run.contains(name) {
                self.transition(name, |job| job.reset_for_rerun());
            } else if plan.wait.contains(name) {
                self.transition(name, |job| job.wait_again());
            } else {
                continue;
            }
            changed.push(name.clone());
        }
        // A held entry of a job that runs again is stale: the job is held again (or queued)
        // when it is ready in its new generation.
        for queue in self.held.values_mut() {
            queue.retain(|name| !plan.run.contains(name));
        }
        self.held.retain(|_, queue| !queue.is_empty());
        for name in order {
            if let Some(job) = self.spec.jobs.get(name) {
                let pending =
                    job.needs.iter().filter(|need| self.jobs[need.as_str()].state != JobState::Completed).count();
                self.pending_needs.insert(name.clone(), pending);
            }
        }
        changed
    }
}

impl Run {
    /// `sluice mark`: ends workflow job `path` by hand as if it had succeeded (its output
    /// `output`) or been skipped, and lets the run go on exactly as if it had ended that way:
    /// what needs it is decided again, and so is every job skipped only because of it (or,
    /// with `on_failure: stop`, because of a failure this mark removed). A run that failed
    /// runs again, or ends at once with its new outcome. A refusal changes nothing.
    ///
    /// Applied again for the same `request_id` (a crash before the answer was stored), it
    /// finishes what the first application began instead of refusing.
    pub(super) fn mark(
        &mut self,
        path: &str,
        as_: MarkAs,
        output: Option<serde_json::Value>,
        by: String,
        request_id: Option<RequestId>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Effect>, Refused> {
        let run_id = self.record.id;
        if self.record.state == RunState::Cancelled {
            return Err(Refused::MarkCancelled { run_id });
        }
        let job = self.jobs.get(path).ok_or_else(|| Refused::UnknownJob { run_id, job: path.to_owned() })?;
        let again = request_id.is_some() && job.marked.as_ref().is_some_and(|mark| mark.request_id == request_id);
        let was = job.state;
        if !again {
            check_markable(path, job, as_, self.spec.jobs.contains_key(path))?;
        }
        let was_finished = self.record.state.is_terminal();
        if !again {
            let mark = Mark { as_, by: truncate_start(&by, REQUESTED_BY_MAX_BYTES).into_owned(), at: now, request_id };
            self.transition(path, |job| job.mark(mark, output, now));
        }
        let mut effects = Vec::new();
        if !again {
            match as_ {
                MarkAs::Succeeded => self.on_completed(path, now, &mut effects),
                MarkAs::Skipped => {
                    for dependent in self.dependents.get(path).cloned().unwrap_or_default() {
                        self.need_finished(&dependent, now, &mut effects);
                    }
                }
            }
        }
        // Decided again: what was skipped only because this job or a failure stopped it.
        let undone = self.skipped_because_of(path, as_);
        for name in &undone {
            self.transition(name, |job| job.unskip());
        }
        // A held entry of a job skipped since is stale; the job is held again if it must be.
        for queue in self.held.values_mut() {
            queue.retain(|name| !undone.contains(name));
        }
        self.held.retain(|_, queue| !queue.is_empty());
        if was_finished {
            self.record.state = RunState::Running;
            self.record.finished_at = None;
            self.record.error = None;
        }
        for name in &undone {
            // Deciding one before it may have started it already (a cascade).
            if !self.is_held(name) {
                self.unblock(name, now, &mut effects);
            }
        }
        // In the order a crash can stop anywhere in: the run record (one running again with
        // its jobs as they were just ends again), the jobs decided again from the last to the
        // first, the marked job, then what the mark started (saved again in place, so a crash
        // may leave one skipped while the mark stands: the redelivered request finishes it).
        let mut all = Vec::new();
        if was_finished {
            all.push(Effect::SaveRun(Box::new(self.record.clone())));
        }
        all.extend(undone.iter().rev().map(|name| self.save(name)));
        all.push(self.save(path));
        all.extend(effects);
        if !again && matches!(was, JobState::Queued | JobState::Retrying) {
            all.push(Effect::WithdrawJob { run_id, job: path.to_owned() });
        }
        if was == JobState::Failed || again {
            all.push(Effect::ResolveDeadLetters { run_id, jobs: Some(vec![path.to_owned()]) });
        }
        self.fill_slots(now, &mut all);
        self.finish_if_done(now, &mut all);
        Ok(all)
    }

    /// The skipped workflow jobs to decide again after `path` was marked, in dependency
    /// order: those skipped downstream of it (after a success mark: they skipped because it
    /// did not complete), and, with `on_failure: stop`, once no failure is left, every one the
    /// failure policy skipped. Jobs marked by hand, and parents (whose children stay as they
    /// are), keep their state.
    fn skipped_because_of(&self, path: &str, as_: MarkAs) -> Vec<String> {
        let decidable = |name: &str| {
            self.jobs.get(name).is_some_and(|job| {
                job.state == JobState::Skipped && job.marked.is_none() && job.children == 0 && name != path
            })
        };
        let mut chosen = BTreeSet::new();
        if self.failed_jobs == 0 && self.spec.on_failure == OnFailure::Stop {
            chosen.extend(self.record.jobs.iter().filter(|name| decidable(name)).cloned());
        } else if as_ == MarkAs::Succeeded {
            let mut todo = self.dependents.get(path).cloned().unwrap_or_default();
            while let Some(name) = todo.pop() {
                if decidable(&name) && chosen.insert(name.clone()) {
                    todo.extend(self.dependents.get(&name).cloned().unwrap_or_default());
                }
            }
        }
        self.record.jobs.iter().filter(|name| chosen.contains(*name)).cloned().collect()
    }
}

/// Whether `job` (at `path`) may be marked `as_`; `in_workflow` when the workflow defines it.
fn check_markable(path: &str, job: &sluice_proto::JobRecord, as_: MarkAs, in_workflow: bool) -> Result<(), Refused> {
    let job_name = || path.to_owned();
    if !in_workflow {
        return Err(Refused::NotMarkable {
            job: job_name(),
            why: "it is a spawned child; retry it (`sluice retry RUN --job PATH`) instead",
        });
    }
    match job.state {
        JobState::Completed => Err(Refused::AlreadySucceeded {
            job: job_name(),
            by: job.marked.as_ref().map(|mark| format!(" (marked by {})", mark.by)).unwrap_or_default(),
        }),
        JobState::Skipped if as_ == MarkAs::Skipped => Err(Refused::AlreadySkipped { job: job_name() }),
        JobState::Running => Err(Refused::MarkRunning { job: job_name() }),
        JobState::Waiting => {
            Err(Refused::NotMarkable { job: job_name(), why: "it is waiting for the children it spawned" })
        }
        JobState::Cancelled => Err(Refused::NotMarkable { job: job_name(), why: "it was cancelled" }),
        _ if job.children > 0 => Err(Refused::NotMarkable {
            job: job_name(),
            why: "it spawned children, which stay as they are; retry it (`sluice retry RUN --job JOB`) instead",
        }),
        _ => Ok(()),
    }
}
