//! What follows a job's end: dependents unblocked or skipped, parents finished, held jobs
//! given the slots `max_parallel` frees, and the run ended once nothing is left.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::truncate_error;
use sluice_proto::spawn::parent_of;
use sluice_proto::spec::{OnFailure, When};
use sluice_proto::{JobState, RunState};

use super::transitions::Transitions;
use super::trigger::{Trigger, trigger};
use super::{Effect, Run, group_of};

impl Run {
    /// A job completed (its state already says so): what needs it may start, and its parent
    /// may be done.
    pub(super) fn on_completed(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        debug_assert_eq!(self.jobs[path].state, JobState::Completed, "`{path}` completed");
        let dependents = self.dependents.get(path).cloned().unwrap_or_default();
        for dependent in dependents {
            let pending = self.pending_needs.get_mut(&dependent).expect("every job has a count");
            *pending -= 1;
            // An `on_success` job is decided only once all it needs completed (or one cannot);
            // the others whenever something they need finishes.
            if *pending > 0 && self.on_success(&dependent) {
                continue;
            }
            self.need_finished(&dependent, now, effects);
        }
        self.child_finished(path, now, effects);
    }

    /// Decides `dependent` after a job it needs finished: a parent waiting again (a rerun of
    /// what it needs) finishes once its rule lets it and its children are done; any other
    /// job is decided by [`Run::unblock`].
    pub(super) fn need_finished(&mut self, dependent: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.jobs[dependent].state == JobState::Waiting && self.is_ready(dependent) {
            if self.pending_children.get(dependent).copied().unwrap_or(0) == 0 {
                self.finish_parent(dependent, now, effects);
            }
        } else {
            self.unblock(dependent, now, effects);
        }
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
    /// parent that is not waiting (already finished by a child's completion), or that waits
    /// again for a job it needs (a rerun of it), is left alone; the completion of what it
    /// needs finishes it (see [`Run::on_completed`]).
    pub(super) fn finish_parent(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.jobs.get(path).is_none_or(|job| job.state != JobState::Waiting) {
            return;
        }
        if !self.is_ready(path) {
            // What it needs is not all done, or (another rule than `on_success`) its rule now
            // says skip: a parent waiting again whose needs ended otherwise than when it ran
            // is skipped, as an `on_success` one is when a need it waits for fails.
            if matches!(self.trigger_of(path), Trigger::Skip(_)) {
                self.unblock(path, now, effects);
            }
            return;
        }
        let Some(error) = self.children_error(path) else {
            self.transition(path, |job| job.complete_children(now));
            self.on_completed(path, now, effects);
            effects.push(self.save(path));
            return;
        };
        self.transition(path, |job| job.fail_children(error, now));
        effects.push(self.save(path));
        self.after_failure(path, now, effects);
    }

    /// Why a parent whose children all finished fails: how many did not complete, naming the
    /// first. `None` when they all completed, or no more failed than its `max_child_failures`.
    fn children_error(&self, path: &str) -> Option<String> {
        let children = self.children_of.get(path).map(Vec::as_slice).unwrap_or_default();
        let mut unfinished = children.iter().filter(|child| self.jobs[child.as_str()].state != JobState::Completed);
        let first = &self.jobs[unfinished.next()?.as_str()];
        let failed = 1 + unfinished.count();
        let tolerated = self.definition(path).max_child_failures;
        if tolerated.is_some_and(|tolerated| failed <= tolerated as usize) {
            return None;
        }
        let error = format!(
            "{failed} of {} children did not complete{}; first: `{}` {}{}",
            children.len(),
            tolerated.map(|tolerated| format!(" (max_child_failures: {tolerated})")).unwrap_or_default(),
            first.name,
            first.state.as_str(),
            first.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default()
        );
        Some(truncate_error(&error, ERROR_TEXT_MAX_BYTES))
    }

    /// The run's failure policy, after `path` failed finally.
    pub(super) fn after_failure(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.failure_judged_by_parent(path) {
            // Children have no dependents: only the parent's count moves.
            self.child_finished(path, now, effects);
            return;
        }
        let reason = format!("skipped: job `{path}` failed");
        match self.spec.on_failure {
            // Nothing new starts; what is in flight may finish. Only the first failure needs
            // the scan: after it, `unblock` skips whatever becomes ready, and what a rerun
            // made blocked again is skipped with the failure it needs.
            OnFailure::Stop if self.failed_jobs == 1 => {
                for name in self.all_paths() {
                    self.skip(&name, &reason, now, effects);
                }
            }
            OnFailure::Stop | OnFailure::Continue => self.skip_downstream(path, &reason, now, effects),
        }
        self.child_finished(path, now, effects);
    }

    /// Skips every blocked job that needs `from`, directly or not.
    fn skip_downstream(&mut self, from: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        for dependent in self.dependents.get(from).cloned().unwrap_or_default() {
            self.skip(&dependent, reason, now, effects);
        }
    }

    /// Whether `path` has not started in its generation: blocked, or a parent waiting again
    /// (a rerun) for what it needs. Only these are skipped.
    fn not_started(&self, path: &str) -> bool {
        match self.jobs[path].state {
            JobState::Blocked => true,
            JobState::Waiting => !self.is_ready(path),
            _ => false,
        }
    }

    /// Whether `path`'s rule lets it start: for `on_success` (children included), every job
    /// it needs has completed (counted, not scanned); for the others, [`trigger`] says run.
    pub(super) fn is_ready(&self, path: &str) -> bool {
        if self.on_success(path) {
            self.pending_needs.get(path).copied().unwrap_or(0) == 0
        } else {
            self.trigger_of(path) == Trigger::Run
        }
    }

    /// Whether `path` runs only when all it needs succeeded (the default `when`). Only such
    /// jobs are skipped for what happens elsewhere (a need that cannot complete, the
    /// failure policy); the others wait for what they need and follow their own rule.
    pub(super) fn on_success(&self, path: &str) -> bool {
        matches!(self.definition(path).when, When::OnSuccess | When::Unknown(_))
    }

    /// What `path`'s rule says, from the states of the jobs it needs.
    pub(super) fn trigger_of(&self, path: &str) -> Trigger {
        let definition = self.definition(path);
        trigger(&definition.when, definition.needs.iter().map(|need| (need.as_str(), self.jobs[need.as_str()].state)))
    }

    /// Skips `name` if it has not started, and with it every such job that needs it,
    /// directly or not: none of them can run any more, and none must wait for ever. A job
    /// with another rule than `on_success` is not skipped for that: it is decided by its
    /// rule instead (a cleanup runs once what it needs is finished, however it ended).
    fn skip(&mut self, name: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.skip_from(name, false, reason, now, effects);
    }

    /// Skips `name` for `reason`, which its own rule gave, and cascades as [`Run::skip`].
    fn skip_own(&mut self, name: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        self.skip_from(name, true, reason, now, effects);
    }

    fn skip_from(&mut self, name: &str, decided: bool, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let mut stack = vec![(name.to_owned(), decided)];
        while let Some((name, decided)) = stack.pop() {
            let why = if decided || self.on_success(&name) {
                if !self.not_started(&name) {
                    continue;
                }
                reason.to_owned()
            } else {
                if !matches!(self.jobs[&name].state, JobState::Blocked | JobState::Waiting) {
                    continue;
                }
                match self.trigger_of(&name) {
                    Trigger::Wait => continue,
                    Trigger::Run => {
                        self.begin(&name, now, effects);
                        continue;
                    }
                    Trigger::Skip(why) => why,
                }
            };
            self.transition(&name, |job| job.skip(why, now));
            effects.push(self.save(&name));
            stack.extend(self.dependents.get(&name).into_iter().flatten().map(|dependent| (dependent.clone(), false)));
            self.child_finished(&name, now, effects);
        }
    }

    /// Decides `name` by its rule if it has not started: queued (or held) when the rule is
    /// met, skipped when it can no longer be, left to wait otherwise. With `on_failure:
    /// stop`, an `on_success` job is skipped once the run has a failure.
    pub(super) fn unblock(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if !self.not_started(name) {
            return;
        }
        let on_success = self.on_success(name);
        match self.trigger_of(name) {
            Trigger::Skip(reason) => self.skip_own(name, &reason, now, effects),
            _ if on_success && self.failed_jobs > 0 && self.spec.on_failure == OnFailure::Stop => {
                self.skip_own(name, "skipped: another job of the run failed", now, effects)
            }
            Trigger::Wait => {}
            // Counted readiness happens once per job; a job of another rule may be decided
            // again (a failure's scan), so it is started only if not already held.
            Trigger::Run if on_success => {
                if self.jobs[name].state == JobState::Blocked {
                    self.ready(name, now, effects);
                }
            }
            Trigger::Run => self.begin(name, now, effects),
        }
    }

    /// Starts a job whose rule is met: a blocked one is queued (or held, once); a parent
    /// waiting again is finished once its children are.
    fn begin(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        match self.jobs[name].state {
            JobState::Blocked if !self.is_held(name) => self.ready(name, now, effects),
            JobState::Waiting if self.pending_children.get(name).copied().unwrap_or(0) == 0 => {
                self.finish_parent(name, now, effects)
            }
            _ => {}
        }
    }

    /// Whether `name` waits in its group's queue for a `max_parallel` slot (a scan of the
    /// group: only for the few workflow jobs with a `when`, never for children).
    pub(super) fn is_held(&self, name: &str) -> bool {
        self.held.get(group_of(name)).is_some_and(|queue| queue.iter().any(|held| held == name))
    }

    /// A job free to start: queued now, or held until a `max_parallel` slot frees up.
    pub(super) fn ready(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
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
    pub(super) fn fill_slots(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
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

    fn queue(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let generation = self.transition(name, |job| {
            job.queue(now);
            job.generation
        });
        effects.push(self.save(name));
        effects.push(Effect::Dispatch { run_id: self.record.id, job: name.to_owned(), generation });
    }

    /// Whether every job completed or was skipped by intent rather than for a failure: by
    /// its own rule (`on_failure` with nothing failed), by a user's mark, or because what it
    /// needs was skipped so (in dependency order). A job skipped for a failure, or by the
    /// failure policy, means the run did not do all it should have.
    fn nothing_missed(&self) -> bool {
        let mut intended: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for name in &self.record.jobs {
            let job = &self.jobs[name.as_str()];
            let fine = match job.state {
                JobState::Completed => true,
                JobState::Skipped if job.marked.is_some() => true,
                JobState::Skipped if !self.on_success(name) => matches!(self.trigger_of(name), Trigger::Skip(_)),
                // Skipped as an `on_success` job: fine only if what it needs ended fine and
                // one of them was skipped by intent (not the failure policy's scan).
                JobState::Skipped => {
                    let needs = &self.definition(name).needs;
                    needs.iter().all(|need| intended.contains(need.as_str()))
                        && needs.iter().any(|need| self.jobs[need.as_str()].state == JobState::Skipped)
                }
                _ => false,
            };
            if !fine {
                return false;
            }
            intended.insert(name.as_str());
        }
        // Children are never skipped by intent (they have no rule and cannot be marked); a
        // failed one is fine when its parent judged it and completed anyway.
        self.jobs.iter().filter(|(_, job)| job.parent.is_some()).all(|(path, job)| match job.state {
            JobState::Completed => true,
            JobState::Failed => {
                self.failure_judged_by_parent(path)
                    && parent_of(path).is_some_and(|parent| self.jobs[parent].state == JobState::Completed)
            }
            _ => false,
        })
    }

    /// Ends the run once no job is left unfinished: `succeeded` if every job completed (or
    /// was skipped by intent, see [`Run::nothing_missed`]), else `failed`, naming the failed
    /// workflow jobs.
    pub(super) fn finish_if_done(&mut self, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
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
        let succeeded = failed.is_empty() && self.nothing_missed();
        self.record.state = if succeeded { RunState::Succeeded } else { RunState::Failed };
        self.record.error = match failed.as_slice() {
            [] => None,
            [one] => Some(format!("job `{one}` failed")),
            [first, second] => Some(format!("jobs `{first}` and `{second}` failed")),
            [first, second, rest @ ..] => Some(format!("jobs `{first}`, `{second}` and {} more failed", rest.len())),
        };
        self.record.finished_at = Some(now);
        self.note_run_finished();
        effects.push(Effect::SaveRun(Box::new(self.record.clone())));
    }
}
