//! What follows a job's end: dependents unblocked or skipped, parents finished, held jobs
//! given the slots `max_parallel` frees, and the run ended once nothing is left.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::truncate_error;
use sluice_proto::spawn::parent_of;
use sluice_proto::spec::OnFailure;
use sluice_proto::{JobState, RunState};

use super::transitions::Transitions;
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
            if *pending > 0 {
                continue;
            }
            if self.jobs[&dependent].state == JobState::Waiting {
                // A parent waiting again (a rerun of what it needs) whose children are done.
                if self.pending_children.get(&dependent).copied().unwrap_or(0) == 0 {
                    self.finish_parent(&dependent, now, effects);
                }
            } else {
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
    /// parent that is not waiting (already finished by a child's completion), or that waits
    /// again for a job it needs (a rerun of it), is left alone; the completion of what it
    /// needs finishes it (see [`Run::on_completed`]).
    pub(super) fn finish_parent(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if self.jobs.get(path).is_none_or(|job| job.state != JobState::Waiting) {
            return;
        }
        if self.pending_needs.get(path).is_some_and(|pending| *pending > 0) {
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
    /// first. `None` when they all completed.
    fn children_error(&self, path: &str) -> Option<String> {
        let children = self.children_of.get(path).map(Vec::as_slice).unwrap_or_default();
        let mut unfinished = children.iter().filter(|child| self.jobs[child.as_str()].state != JobState::Completed);
        let first = &self.jobs[unfinished.next()?.as_str()];
        let error = format!(
            "{} of {} children did not complete; first: `{}` {}{}",
            1 + unfinished.count(),
            children.len(),
            first.name,
            first.state.as_str(),
            first.error.as_deref().map(|error| format!(": {error}")).unwrap_or_default()
        );
        Some(truncate_error(&error, ERROR_TEXT_MAX_BYTES))
    }

    /// The run's failure policy, after `path` failed finally.
    pub(super) fn after_failure(&mut self, path: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
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

    /// Whether every job `path` needs has completed.
    pub(super) fn is_ready(&self, path: &str) -> bool {
        self.pending_needs.get(path).copied().unwrap_or(0) == 0
    }

    /// Skips `name` if it has not started, and with it every such job that needs it,
    /// directly or not: none of them can run any more, and none must wait for ever.
    fn skip(&mut self, name: &str, reason: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        let mut stack = vec![name.to_owned()];
        while let Some(name) = stack.pop() {
            if !self.not_started(&name) {
                continue;
            }
            self.transition(&name, |job| job.skip(reason.to_owned(), now));
            effects.push(self.save(&name));
            stack.extend(self.dependents.get(&name).cloned().unwrap_or_default());
            self.child_finished(&name, now, effects);
        }
    }

    /// Queues `name` once every job it needs has completed. Skips it when a job it needs
    /// can no longer complete, or (with `on_failure: stop`) once the run has a failure.
    pub(super) fn unblock(&mut self, name: &str, now: DateTime<Utc>, effects: &mut Vec<Effect>) {
        if !self.not_started(name) {
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
        } else if self.is_ready(name) && self.jobs[name].state == JobState::Blocked {
            self.ready(name, now, effects);
        }
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

    /// Ends the run once no job is left unfinished: `succeeded` if every job completed,
    /// else `failed`, naming the failed workflow jobs.
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
}
