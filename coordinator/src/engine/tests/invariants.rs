//! `Run::check_invariants`: quiet on every run the engine made, and loud, naming the counter,
//! on a run with any counter corrupted.

use std::panic::{AssertUnwindSafe, catch_unwind};

use sluice_proto::{EventKind, JobState};

use super::{FAN, at, ev, event, spawning, start};
use crate::engine::{Input, Run};

/// A run with a bit of everything: a parent waiting for children (one held by its
/// `max_parallel`), a job running, a dependent blocked.
fn busy_run() -> Run {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b", "c"], 1);
    run.apply(ev(&event(&run, "other", 1, EventKind::Started, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "fan.a", 1, EventKind::Started, 2)), at(2)).unwrap();
    run
}

/// The message `check_invariants` panics with, if it does.
fn complaint(run: &Run) -> Option<String> {
    let caught = catch_unwind(AssertUnwindSafe(|| run.check_invariants())).err()?;
    caught.downcast_ref::<String>().cloned().or_else(|| caught.downcast_ref::<&str>().map(|text| text.to_string()))
}

#[test]
fn runs_the_engine_made_pass() {
    let mut run = busy_run();
    assert_eq!(complaint(&run), None);
    assert_eq!(run.job("fan.c").unwrap().state, JobState::Blocked, "held by max_parallel");
    run.apply(Input::Cancel, at(3)).unwrap();
    assert_eq!(complaint(&run), None);
    run.apply(Input::Rerun { only: None, spec: None }, at(4)).unwrap();
    assert_eq!(complaint(&run), None);
}

/// A way to break a run's state, in place.
type Corruption = fn(&mut Run);

#[test]
fn every_corrupted_counter_is_named() {
    let corruptions: [(&str, Corruption); 11] = [
        ("unfinished jobs", |run| run.unfinished += 1),
        ("failed jobs", |run| run.failed_jobs += 1),
        ("jobs in flight", |run| run.in_flight -= 1),
        ("needs not completed", |run| *run.pending_needs.get_mut("join").unwrap() = 0),
        ("unfinished children", |run| *run.pending_children.get_mut("fan").unwrap() += 1),
        ("children in flight", |run| *run.in_flight_children.get_mut("fan").unwrap() -= 1),
        ("children counted and listed differ", |run| run.jobs.get_mut("fan").unwrap().children = 2),
        ("ready but neither queued nor held", |run| run.held.clear()),
        ("held twice", |run| run.held.get_mut("fan").unwrap().push_back("fan.c".into())),
        ("held before what it needs completed", |run| {
            run.held.entry(String::new()).or_default().push_back("join".into())
        }),
        ("more children in flight than their parent's max_parallel", |run| {
            let job = run.jobs.get_mut("fan.c").unwrap();
            job.state = JobState::Queued;
            run.in_flight += 1;
            *run.in_flight_children.get_mut("fan").unwrap() += 1;
            run.held.clear();
        }),
    ];
    for (counter, corrupt) in corruptions {
        let mut run = busy_run();
        corrupt(&mut run);
        let said = complaint(&run).unwrap_or_else(|| panic!("corrupting {counter:?} went unnoticed"));
        assert!(said.contains(counter), "corrupting {counter:?} was reported as: {said}");
    }
}

#[test]
fn a_job_started_before_its_needs_completed_is_caught() {
    let (mut run, _) = start(super::DIAMOND);
    let d = run.jobs.get_mut("d").unwrap();
    d.state = JobState::Completed;
    run.unfinished -= 1;
    let said = complaint(&run).expect("noticed");
    assert!(said.contains("`d` is completed before what it needs completed"), "{said}");
}
