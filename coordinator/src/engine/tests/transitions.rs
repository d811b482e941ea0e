//! Each transition of a job record: the states it may come from, and exactly the fields it
//! sets.

use chrono::{DateTime, Utc};
use sluice_proto::{JobRecord, JobState, RunId};

use super::at;
use crate::engine::lifecycle::blank_job;
use crate::engine::transitions::{AttemptEnd, Transitions};

fn job(state: JobState) -> JobRecord {
    let mut job = blank_job(RunId::new(), "a");
    job.state = state;
    job
}

/// A job in `state` with one attempt behind it (started at 1, failed at 2, retrying at 9).
fn tried(state: JobState) -> JobRecord {
    let mut job = job(JobState::Blocked);
    job.queue(at(0));
    job.start_attempt(1, at(1), "w1", None);
    job.retry_later(&end(1, 2), "boom".into(), at(9));
    job.state = state;
    job
}

fn end(attempt: u32, second: u32) -> AttemptEnd<'static> {
    AttemptEnd { attempt, at: at(second), started_at: None, worker: "w1", spec_hash: None }
}

/// The names of the fields that differ between two records.
fn changed(before: &JobRecord, after: &JobRecord) -> Vec<&'static str> {
    let fields: [(&'static str, bool); 13] = [
        ("state", before.state != after.state),
        ("attempts", before.attempts != after.attempts),
        ("attempt_offset", before.attempt_offset != after.attempt_offset),
        ("generation", before.generation != after.generation),
        ("queued_at", before.queued_at != after.queued_at),
        ("started_at", before.started_at != after.started_at),
        ("finished_at", before.finished_at != after.finished_at),
        ("retry_at", before.retry_at != after.retry_at),
        ("error", before.error != after.error),
        ("attempt_history", before.attempt_history != after.attempt_history),
        ("children", before.children != after.children),
        ("output", before.output != after.output),
        ("parent or definition", before.parent != after.parent || before.definition != after.definition),
    ];
    assert_eq!(before.name, after.name, "no transition renames a job");
    fields.iter().filter(|(_, differs)| *differs).map(|(name, _)| *name).collect()
}

fn check(before: JobRecord, change: impl FnOnce(&mut JobRecord), to: JobState, fields: &[&str]) -> JobRecord {
    let mut after = before.clone();
    change(&mut after);
    assert_eq!(after.state, to);
    assert_eq!(changed(&before, &after), fields, "fields set going from {} to {}", before.state.as_str(), to.as_str());
    after
}

const NOW_SECOND: u32 = 20;

fn now() -> DateTime<Utc> {
    at(NOW_SECOND)
}

#[test]
fn queue_sets_the_state_and_when() {
    let after = check(job(JobState::Blocked), |job| job.queue(now()), JobState::Queued, &["state", "queued_at"]);
    assert_eq!(after.queued_at, Some(now()));
}

#[test]
fn start_attempt_records_the_attempt_and_clears_a_retry() {
    let mut queued = job(JobState::Blocked);
    queued.queue(at(0));
    let fields = ["state", "attempts", "started_at", "attempt_history"];
    let first = check(queued, |job| job.start_attempt(1, at(1), "w1", None), JobState::Running, &fields);
    assert_eq!(first.attempt_history[0].worker, "w1");
    let fields = ["state", "attempts", "retry_at", "attempt_history"];
    let second =
        check(tried(JobState::Retrying), |job| job.start_attempt(2, at(9), "w2", None), JobState::Running, &fields);
    assert_eq!(second.started_at, Some(at(1)), "the job's start is its first attempt's");
}

#[test]
fn succeed_closes_the_attempt_and_clears_the_last_error() {
    let mut running = tried(JobState::Retrying);
    running.start_attempt(2, at(9), "w1", None);
    let output = Some(serde_json::json!({"rows": 3}));
    let fields = ["state", "finished_at", "error", "attempt_history", "output"];
    let after = check(running, |job| job.succeed(&end(2, 10), output.clone()), JobState::Completed, &fields);
    assert_eq!(after.finished_at, Some(at(10)));
    assert_eq!(after.attempt_history[1].finished_at, Some(at(10)));
}

#[test]
fn wait_for_children_keeps_the_job_unfinished() {
    let mut running = job(JobState::Blocked);
    running.queue(at(0));
    running.start_attempt(1, at(1), "w1", None);
    let fields = ["state", "attempt_history", "children"];
    let after = check(running, |job| job.wait_for_children(&end(1, 3), None, 4), JobState::Waiting, &fields);
    assert_eq!((after.children, after.finished_at), (4, None));
}

#[test]
fn retry_later_and_fail_record_the_error() {
    let mut running = job(JobState::Blocked);
    running.queue(at(0));
    running.start_attempt(1, at(1), "w1", None);
    let fields = ["state", "retry_at", "error", "attempt_history"];
    check(running.clone(), |job| job.retry_later(&end(1, 2), "boom".into(), at(9)), JobState::Retrying, &fields);
    let fields = ["state", "finished_at", "error", "attempt_history"];
    let failed = check(running, |job| job.fail(&end(1, 2), "boom".into()), JobState::Failed, &fields);
    assert_eq!(failed.attempt_history[0].error.as_deref(), Some("boom"));
}

#[test]
fn an_attempt_whose_start_was_lost_is_added_when_it_ends() {
    let mut queued = job(JobState::Blocked);
    queued.queue(at(0));
    let ended = AttemptEnd { attempt: 1, at: at(5), started_at: Some(at(3)), worker: "w1", spec_hash: None };
    let fields = ["state", "attempts", "started_at", "finished_at", "attempt_history"];
    let after = check(queued, |job| job.succeed(&ended, None), JobState::Completed, &fields);
    assert_eq!(after.attempt_history[0].started_at, at(3));
}

#[test]
fn a_parent_completes_or_fails_by_its_children() {
    let waiting = tried(JobState::Waiting);
    check(waiting.clone(), |job| job.complete_children(now()), JobState::Completed, &["state", "finished_at"]);
    let fields = ["state", "finished_at", "error"];
    check(waiting, |job| job.fail_children("1 of 2 children".into(), now()), JobState::Failed, &fields);
}

#[test]
fn skip_and_cancel_say_why() {
    let fields = ["state", "finished_at", "error"];
    let skipped = check(job(JobState::Blocked), |job| job.skip("skipped: x".into(), now()), JobState::Skipped, &fields);
    assert_eq!(skipped.error.as_deref(), Some("skipped: x"));
    let fields = ["state", "finished_at", "retry_at", "error"];
    let cancelled = check(tried(JobState::Retrying), |job| job.cancel(now()), JobState::Cancelled, &fields);
    assert_eq!(cancelled.error.as_deref(), Some("cancelled by a user"));
}

#[test]
fn a_rerun_starts_a_new_generation_with_fresh_attempts() {
    let mut failed = tried(JobState::Failed);
    failed.finished_at = Some(at(3));
    failed.retry_at = None;
    let fields = ["state", "attempt_offset", "generation", "queued_at", "started_at", "finished_at", "error"];
    let after = check(failed, |job| job.reset_for_rerun(), JobState::Blocked, &fields);
    assert_eq!((after.generation, after.attempt_offset, after.attempts), (1, 1, 1));
    assert_eq!(after.attempt_history.len(), 1, "history is kept");

    let mut parent = tried(JobState::Failed);
    parent.children = 2;
    parent.finished_at = Some(at(3));
    check(parent, |job| job.wait_again(), JobState::Waiting, &["state", "finished_at", "error"]);
}

/// Every state is where some transition leads (the list above is complete).
#[test]
fn every_state_is_reached_by_a_transition() {
    let reached = [
        JobState::Blocked,   // reset_for_rerun
        JobState::Queued,    // queue
        JobState::Running,   // start_attempt
        JobState::Retrying,  // retry_later
        JobState::Waiting,   // wait_for_children, wait_again
        JobState::Completed, // succeed, complete_children
        JobState::Failed,    // fail, fail_children
        JobState::Cancelled, // cancel
        JobState::Skipped,   // skip
    ];
    for state in JobState::ALL {
        assert!(reached.contains(&state), "no transition leads to {}", state.as_str());
    }
}

#[cfg(debug_assertions)]
mod refused_from_states {
    use super::*;

    #[test]
    #[should_panic(expected = "queued")]
    fn queue_from_running() {
        job(JobState::Running).queue(now());
    }

    #[test]
    #[should_panic(expected = "starts while blocked")]
    fn start_from_blocked() {
        job(JobState::Blocked).start_attempt(1, now(), "w1", None);
    }

    #[test]
    #[should_panic(expected = "ends an attempt while waiting")]
    fn succeed_from_waiting() {
        tried(JobState::Waiting).succeed(&end(1, 3), None);
    }

    #[test]
    #[should_panic(expected = "ends an attempt while completed")]
    fn fail_from_completed() {
        tried(JobState::Completed).fail(&end(1, 3), "late".into());
    }

    #[test]
    #[should_panic(expected = "completes its children")]
    fn complete_children_from_running() {
        job(JobState::Running).complete_children(now());
    }

    #[test]
    #[should_panic(expected = "skipped")]
    fn skip_from_queued() {
        job(JobState::Queued).skip("x".into(), now());
    }

    #[test]
    #[should_panic(expected = "cancelled while completed")]
    fn cancel_from_completed() {
        job(JobState::Completed).cancel(now());
    }

    #[test]
    #[should_panic(expected = "runs again while running")]
    fn rerun_from_running() {
        job(JobState::Running).reset_for_rerun();
    }

    #[test]
    #[should_panic(expected = "waits again for no children")]
    fn wait_again_without_children() {
        job(JobState::Failed).wait_again();
    }
}
