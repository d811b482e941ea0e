//! [`Run::check_invariants`]: every counter the run keeps, derived again from the records
//! and compared, plus the rules that relate records to each other.

use std::collections::{BTreeMap, BTreeSet};

use sluice_proto::spawn::parent_of;
use sluice_proto::{JobState, RunState};

use super::{Run, group_of};

/// Per parent, derived from its children's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ChildCounts {
    unfinished: usize,
    in_flight: usize,
}

impl Run {
    /// Panics, naming the first difference, when a counter disagrees with the records or
    /// the records break a rule the engine keeps. Runs after inputs in debug builds (see
    /// [`super::CHECKED_JOBS_PER_INPUT_MAX`]) and at every step of the simulation; costs a
    /// few passes over the run's jobs.
    pub fn check_invariants(&self) {
        self.check_run_counters();
        self.check_children();
        self.check_needs();
        self.check_held();
        self.check_limits();
    }

    fn check_run_counters(&self) {
        let unfinished = self.jobs.values().filter(|job| !job.state.is_terminal()).count();
        let failed = self.count_failures();
        let in_flight = self.jobs.values().filter(|job| job.state.is_in_flight()).count();
        assert_eq!(self.unfinished, unfinished, "run {}: unfinished jobs", self.record.id);
        assert_eq!(self.failed_jobs, failed, "run {}: failed jobs", self.record.id);
        assert_eq!(self.in_flight, in_flight, "run {}: jobs in flight", self.record.id);
        if self.record.state == RunState::Running {
            assert!(self.unfinished > 0, "run {} is running with every job finished", self.record.id);
        }
        if self.record.state == RunState::Succeeded {
            assert_eq!(self.unfinished, 0, "run {} succeeded with jobs unfinished", self.record.id);
            assert_eq!(self.failed_jobs, 0, "run {} succeeded with jobs failed", self.record.id);
        }
    }

    /// Each parent's counts of unfinished and in-flight children, its list of children and
    /// its record's count of them agree; a waiting parent whose needs are done has children
    /// still unfinished.
    fn check_children(&self) {
        let mut derived: BTreeMap<&str, ChildCounts> = BTreeMap::new();
        for (path, job) in &self.jobs {
            let Some(parent) = job.parent.as_deref() else { continue };
            assert_eq!(parent_of(path), Some(parent), "child `{path}` names parent `{parent}`");
            assert!(self.jobs.contains_key(parent), "child `{path}` of a job the run does not have");
            let counts = derived.entry(parent).or_default();
            counts.unfinished += usize::from(!job.state.is_terminal());
            counts.in_flight += usize::from(job.state.is_in_flight());
        }
        let kept =
            |counts: &std::collections::HashMap<String, usize>, parent: &str| counts.get(parent).copied().unwrap_or(0);
        let parents: BTreeSet<&str> = derived
            .keys()
            .copied()
            .chain(self.pending_children.keys().map(String::as_str))
            .chain(self.in_flight_children.keys().map(String::as_str))
            .collect();
        for parent in parents {
            let counts = derived.get(parent).copied().unwrap_or_default();
            assert_eq!(kept(&self.pending_children, parent), counts.unfinished, "`{parent}`: unfinished children");
            assert_eq!(kept(&self.in_flight_children, parent), counts.in_flight, "`{parent}`: children in flight");
        }
        // The first offender by name, so a failure reads the same on every replay.
        let miscounted = self
            .children_of
            .iter()
            .filter(|(parent, children)| self.jobs[parent.as_str()].children as usize != children.len())
            .map(|(parent, _)| parent)
            .min();
        assert_eq!(miscounted, None, "children counted and listed differ");
        let idle = self
            .jobs
            .iter()
            .filter(|(path, job)| job.state == JobState::Waiting && self.is_ready(path))
            .filter(|(path, _)| kept(&self.pending_children, path) == 0)
            .map(|(path, _)| path)
            .min();
        assert_eq!(idle, None, "waits with every child finished");
    }

    /// Each workflow job's count of needs not completed is true, and no job is in flight or
    /// completed before its rule let it start (`on_success`: all it needs completed; the
    /// others: all it needs finished). A parent may wait for its children again while what
    /// it needs runs again; a job marked by hand may be ahead of what it needs.
    fn check_needs(&self) {
        for (name, spec) in &self.spec.jobs {
            let pending =
                spec.needs.iter().filter(|need| self.jobs[need.as_str()].state != JobState::Completed).count();
            assert_eq!(self.pending_needs.get(name).copied(), Some(pending), "`{name}`: needs not completed");
            let state = self.jobs[name.as_str()].state;
            // Begun by a worker: a job ended by hand (`sluice mark`) may be ahead of its needs.
            let began =
                state.is_in_flight() || (state == JobState::Completed && self.jobs[name.as_str()].marked.is_none());
            if began && self.record.state == RunState::Running {
                if self.on_success(name) {
                    assert_eq!(pending, 0, "`{name}` is {} before what it needs completed", state.as_str());
                } else {
                    let unfinished = spec.needs.iter().find(|need| !self.jobs[need.as_str()].state.is_terminal());
                    assert_eq!(
                        unfinished,
                        None,
                        "`{name}` is {} before what it needs finished: {:?}",
                        state.as_str(),
                        unfinished.map(|need| &self.jobs[need.as_str()])
                    );
                }
            }
        }
    }

    /// A held job that is still `blocked` is ready and held once, in its parent's group; in a
    /// running run, every ready `blocked` job is held.
    fn check_held(&self) {
        let mut live: BTreeSet<&str> = BTreeSet::new();
        for (group, queue) in &self.held {
            for name in queue {
                assert_eq!(group_of(name), group.as_str(), "`{name}` held in group `{group}`");
                if self.jobs.get(name.as_str()).is_some_and(|job| job.state == JobState::Blocked) {
                    assert!(self.is_ready(name), "`{name}` is held before what it needs completed");
                    assert!(live.insert(name.as_str()), "`{name}` held twice");
                }
            }
        }
        if self.record.state != RunState::Running {
            return;
        }
        let forgotten = self
            .jobs
            .iter()
            .filter(|(path, job)| job.state == JobState::Blocked && self.is_ready(path))
            .filter(|(path, _)| !live.contains(path.as_str()))
            .map(|(path, _)| path)
            .min();
        assert_eq!(forgotten, None, "ready but neither queued nor held");
    }

    /// No more jobs in flight than the run's `max_parallel`, nor children than their
    /// parent's.
    fn check_limits(&self) {
        if let Some(limit) = self.spec.max_parallel {
            assert!(self.in_flight <= limit as usize, "{} jobs in flight, max_parallel {limit}", self.in_flight);
        }
        let over = self
            .in_flight_children
            .iter()
            .filter(|(parent, in_flight)| {
                self.definition(parent).max_parallel.is_some_and(|limit| **in_flight > limit as usize)
            })
            .map(|(parent, _)| parent)
            .min();
        assert_eq!(over, None, "more children in flight than their parent's max_parallel");
    }
}
