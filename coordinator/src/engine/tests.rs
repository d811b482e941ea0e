//! Engine tests: examples of each input here; each transition and the invariant checks in
//! `tests/`, and the simulation over random runs in `tests/simulation.rs`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use sluice_proto::limits::ATTEMPT_FOUND_LATER_MAX_BYTES;
use sluice_proto::{
    ChildSpec, EarlierAttempt, EventKind, JobEvent, JobRecord, JobState, MarkAs, RequestId, RunId, RunState, Window,
    WorkflowSpec,
};

use super::transitions::WORKER_LOST;
use super::*;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(i64::from(second))
}

fn start(yaml: &str) -> (Run, Vec<Effect>) {
    start_with_id(yaml, RunId::new())
}

fn start_with_id(yaml: &str, id: RunId) -> (Run, Vec<Effect>) {
    let spec = WorkflowSpec::parse(yaml).unwrap();
    let window = Window::parse("2024-02-29", sluice_proto::window::parse_zone("UTC").unwrap(), at(0)).unwrap();
    let new = NewRun {
        id,
        spec,
        spec_yaml: yaml.to_owned(),
        spec_hash: WorkflowSpec::hash(yaml),
        window,
        params: BTreeMap::new(),
        idempotency_key: None,
        origin: sluice_proto::messages::ORIGIN_MANUAL.into(),
        traceparent: None,
        tracestate: None,
    };
    Run::start(new, at(0))
}

fn event(run: &Run, job: &str, attempt: u32, kind: EventKind, second: u32) -> JobEvent {
    let mut event = JobEvent::new(run.id(), job, attempt, 0, kind, "w1", at(second));
    event.error = (kind == EventKind::Failed).then(|| "boom".to_owned());
    event
}

fn children(names: &[&str]) -> Vec<ChildSpec> {
    names.iter().map(|name| ChildSpec::new(*name, "noop")).collect()
}

/// A success of `job` that spawned `kids`.
fn spawning(run: &mut Run, job: &str, kids: &[&str], second: u32) -> Vec<Effect> {
    let mut success = event(run, job, 1, EventKind::Succeeded, second);
    success.spawned = kids.len() as u32;
    let asked = run.apply(Input::Event(success.clone()), at(second)).unwrap();
    assert_eq!(asked, [Effect::ReadChildren(Box::new(success.clone()))], "the engine asks for the children");
    read(run, success, children(kids), second).unwrap()
}

/// The answer to an [`Effect::ReadChildren`] for `success`.
fn read(run: &mut Run, success: JobEvent, kids: Vec<ChildSpec>, second: u32) -> Result<Vec<Effect>, NotApplied> {
    let input = Input::ChildrenRead { event: Box::new(success), children: Spawned::from_children(kids) };
    run.apply(input, at(second))
}

/// A job event as an input.
fn ev(event: &JobEvent) -> Input {
    Input::Event(event.clone())
}

fn rerun(job: &str) -> Input {
    Input::Rerun { only: Some(job.to_owned()), spec: None }
}

fn saved(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::SaveJob { job, .. } => Some(job.clone()),
            _ => None,
        })
        .collect()
}

fn dispatched(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Dispatch { job, .. } => Some(job.clone()),
            _ => None,
        })
        .collect()
}

const DIAMOND: &str = "name: d\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n  c: { run: noop, needs: [a] }\n  d: { run: noop, needs: [b, c] }\n";

#[test]
fn start_saves_only_the_run_record_saying_what_it_queued_then_dispatches_roots() {
    const TWO_ROOTS: &str =
        "name: t\njobs:\n  late: { run: noop, needs: [a] }\n  a: { run: noop }\n  z: { run: noop }\n";
    let (run, effects) = start(TWO_ROOTS);
    let kinds: Vec<&str> = effects
        .iter()
        .map(|effect| match effect {
            Effect::SaveJob { .. } => "job",
            Effect::SaveRun(_) => "run",
            Effect::Dispatch { .. } => "dispatch",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["run", "dispatch", "dispatch"], "no job record until a job leaves its first state");
    assert_eq!(dispatched(&effects), ["a", "z"]);
    let record = run.record();
    assert_eq!(record.jobs, ["a", "late", "z"]);
    assert_eq!(record.queued_at_start.as_deref(), Some("5"), "jobs 0 and 2 queued: bits 1 and 4");
    let first: Vec<(String, JobState)> =
        (0..3).filter_map(|index| record.first_state(index)).map(|job| (job.name, job.state)).collect();
    assert_eq!(
        first,
        [("a".into(), JobState::Queued), ("late".into(), JobState::Blocked), ("z".into(), JobState::Queued)]
    );
    assert_eq!(record.first_state(0).unwrap().queued_at, Some(record.created_at));
    assert_eq!(run.job("late").unwrap().state, JobState::Blocked);
}

#[test]
fn a_run_restored_from_its_record_alone_has_its_roots_queued_and_dispatches_nothing_again() {
    let (run, _) = start(DIAMOND);
    let (restored, effects) = Run::restore(run.record().clone(), run.spec().clone(), HashMap::new(), at(5)).unwrap();
    assert_eq!(restored.job("a").unwrap().state, JobState::Queued);
    assert_eq!(restored.job("a").unwrap().queued_at, Some(run.record().created_at));
    assert_eq!(restored.job("d").unwrap().state, JobState::Blocked);
    // The shell's recovery re-publishes a queued job only if its message never reached the pool.
    assert!(dispatched(&effects).is_empty(), "{effects:?}");
    assert!(saved(&effects).is_empty(), "{effects:?}");
}

#[test]
fn diamond_joins_only_after_both_branches() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let effects = run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["b", "c"]);
    run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
    let effects = run.apply(ev(&event(&run, "c", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["d"]);
    let effects = run.apply(ev(&event(&run, "d", 1, EventKind::Succeeded, 5)), at(5)).unwrap();
    assert!(
        effects.iter().any(|effect| matches!(effect, Effect::SaveRun(record) if record.state == RunState::Succeeded))
    );
    assert!(run.is_finished());
}

#[test]
fn a_final_failure_skips_what_is_blocked_and_fails_the_run() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "b", 1, EventKind::Failed, 2)), at(2)).unwrap();
    assert_eq!(run.job("d").unwrap().state, JobState::Skipped);
    assert_eq!(run.record().state, RunState::Running, "c is still in flight");
    let effects = run.apply(ev(&event(&run, "c", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.record().state, RunState::Failed);
    assert_eq!(run.record().error.as_deref(), Some("job `b` failed"));
    assert_eq!(run.job("b").unwrap().attempt_history[0].error.as_deref(), Some("boom"));
}

#[test]
fn a_retrying_failure_keeps_the_run_going_and_records_each_attempt() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut failure = event(&run, "a", 1, EventKind::Failed, 2);
    failure.retry_at = Some(at(12));
    run.apply(ev(&failure), at(2)).unwrap();
    assert_eq!(run.job("a").unwrap().state, JobState::Retrying);
    run.apply(ev(&event(&run, "a", 2, EventKind::Started, 12)), at(12)).unwrap();
    run.apply(ev(&event(&run, "a", 2, EventKind::Succeeded, 13)), at(13)).unwrap();
    let job = run.job("a").unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.attempt_history.len(), 2);
    assert_eq!(job.started_at, Some(at(1)));
    assert_eq!(run.record().state, RunState::Succeeded);
}

#[test]
fn a_retry_the_worker_left_to_the_coordinator_is_scheduled_once_as_the_next_attempt() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut failure = event(&run, "a", 1, EventKind::Failed, 2);
    failure.retry_at = Some(at(3600));
    failure.schedule_retry = true;
    let effects = run.apply(ev(&failure), at(2)).unwrap();
    let scheduled: Vec<&Effect> =
        effects.iter().filter(|effect| matches!(effect, Effect::ScheduleRetry { .. })).collect();
    assert_eq!(
        scheduled,
        [&Effect::ScheduleRetry { run_id: run.id(), job: "a".into(), generation: 0, after_attempt: 1, at: at(3600) }]
    );
    // Saved before it is published: the outbox writes saves first, and a crash in between
    // is caught by the recovery of `retrying` jobs.
    assert!(matches!(effects.first(), Some(Effect::SaveJob { .. })), "{effects:?}");
    assert_eq!(run.job("a").unwrap().state, JobState::Retrying);
    assert_eq!(run.job("a").unwrap().retry_at, Some(at(3600)));
    assert_eq!(run.jobs_in(JobState::Retrying).map(|job| job.name.as_str()).collect::<Vec<_>>(), ["a"]);
    // Its message: the next attempt, the policy counting from the series' start.
    let message = run.retry_message("a", 1);
    assert_eq!((message.attempt_offset, message.retry_base()), (1, 0));
    // The same event again schedules nothing more.
    assert!(run.apply(ev(&failure), at(2)).is_err());
    // A retry the worker waits out with a NAK is not the coordinator's to schedule.
    let (mut other, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    other.apply(ev(&event(&other, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut naked = event(&other, "a", 1, EventKind::Failed, 2);
    naked.retry_at = Some(at(12));
    let effects = other.apply(ev(&naked), at(2)).unwrap();
    assert!(!effects.iter().any(|effect| matches!(effect, Effect::ScheduleRetry { .. })), "{effects:?}");
}

#[test]
fn duplicates_and_stale_events_are_ignored() {
    let (mut run, _) = start(DIAMOND);
    let started = event(&run, "a", 1, EventKind::Started, 1);
    run.apply(ev(&started), at(1)).unwrap();
    assert!(matches!(run.apply(ev(&started), at(1)), Err(NotApplied::Ignored(Ignored::Duplicate { .. }))));
    let done = event(&run, "a", 1, EventKind::Succeeded, 2);
    run.apply(ev(&done), at(2)).unwrap();
    assert!(matches!(run.apply(ev(&done), at(2)), Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))));
    assert!(matches!(
        run.apply(ev(&event(&run, "zz", 1, EventKind::Started, 3)), at(3)),
        Err(NotApplied::Ignored(Ignored::UnknownJob(_)))
    ));
}

fn final_failure(run: &Run, job: &str, attempt: u32, second: u32) -> JobEvent {
    event(run, job, attempt, EventKind::Failed, second)
}

/// An attempt whose `started` event was lost: its outcome says when it began, and `status`
/// shows that start, not the time it ended.
#[test]
fn an_attempt_without_its_start_is_recorded_from_its_outcome() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n");
    let mut done = event(&run, "a", 1, EventKind::Succeeded, 5);
    done.started_at = Some(at(3));
    let effects = run.apply(ev(&done), at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["b"]);
    let a = run.job("a").unwrap();
    assert_eq!(a.state, JobState::Completed);
    assert_eq!((a.started_at, a.finished_at), (Some(at(3)), Some(at(5))));
    let attempt = &a.attempt_history[0];
    assert_eq!((attempt.attempt, attempt.started_at, attempt.finished_at), (1, at(3), Some(at(5))));
    assert_eq!(attempt.worker, "w1");
}

/// The same attempt run by a second worker (JetStream repeated a delivery after a crash) is
/// recorded from its outcome when its start was lost.
#[test]
fn a_repeated_attempt_on_another_worker_is_recorded_from_its_outcome() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    let mut first = event(&run, "a", 1, EventKind::Succeeded, 5);
    first.started_at = Some(at(4));
    run.apply(ev(&first), at(5)).unwrap();
    let mut again = first.clone();
    again.worker = "w2".into();
    assert!(!saved(&run.apply(ev(&again), at(6)).unwrap()).is_empty(), "the repeat is saved");
    assert_eq!(run.job("a").unwrap().attempt_history[0].redelivered_to, ["w2"]);
    assert!(run.apply(ev(&again), at(7)).is_err(), "seen once, a repeat changes nothing");
}

#[test]
fn a_final_failure_is_dead_lettered_with_every_attempt() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let effects = run.apply(ev(&final_failure(&run, "a", 1, 2)), at(2)).unwrap();
    let letter = effects
        .iter()
        .find_map(|effect| match effect {
            Effect::DeadLetter(letter) => Some(letter),
            _ => None,
        })
        .expect("a dead letter");
    assert_eq!(letter.job.job, "a");
    assert_eq!(letter.reason, "boom");
    assert_eq!(letter.attempts.len(), 1);
}

const TWO_BRANCHES: &str = "name: b\non_failure: continue\njobs:\n  a: { run: noop }\n  a2: { run: noop, needs: [a] }\n  a3: { run: noop, needs: [a2] }\n  b: { run: noop }\n  b2: { run: noop, needs: [b] }\n";

#[test]
fn on_failure_continue_lets_independent_branches_finish() {
    let (mut run, _) = start(TWO_BRANCHES);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    assert_eq!(run.job("a2").unwrap().state, JobState::Skipped);
    assert_eq!(run.job("a3").unwrap().state, JobState::Skipped, "skips go all the way down");
    let effects = run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["b2"], "the other branch goes on");
    run.apply(ev(&event(&run, "b2", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
}

#[test]
fn on_failure_stop_starts_nothing_new() {
    let yaml = TWO_BRANCHES.replace("on_failure: continue\n", "");
    let (mut run, _) = start(&yaml);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    assert_eq!(run.job("b2").unwrap().state, JobState::Skipped);
    let effects = run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.record().state, RunState::Failed);
}

#[test]
fn cancel_withdraws_queued_jobs_stops_running_ones_and_ends_the_run() {
    let (mut run, _) = start(TWO_BRANCHES);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let effects = run.apply(Input::Cancel, at(2)).unwrap();
    assert!(effects.contains(&Effect::Withdraw(run.id())), "the run's queued messages (b's) are withdrawn");
    assert!(effects.contains(&Effect::StopRun(run.id())), "workers are told to stop the run's running jobs (a)");
    assert_eq!(run.record().state, RunState::Cancelled);
    assert!(run.record().jobs.iter().all(|name| run.job(name).unwrap().state == JobState::Cancelled));
    // a's worker finished before it heard of the cancel: on record, not applied.
    let late = run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert!(late.iter().any(|effect| matches!(effect, Effect::SaveJob { job, .. } if job == "a")));
    assert_eq!(run.job("a").unwrap().state, JobState::Cancelled);
    assert_eq!(
        attempt_end(&run, "a", 1),
        (Some(at(3)), Some("succeeded after the job had already ended (cancelled): not applied".to_owned()))
    );
    assert!(matches!(
        run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 3)), at(3)),
        Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))
    ));
    assert!(matches!(run.apply(Input::Cancel, at(4)), Err(NotApplied::Refused(Refused::Finished { .. }))));
}

#[test]
fn retry_reruns_what_did_not_complete_in_a_new_generation() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    run.apply(ev(&final_failure(&run, "c", 1, 3)), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    assert!(matches!(run.apply(rerun("zz"), at(4)), Err(NotApplied::Refused(Refused::UnknownJob { .. }))));
    let effects = run.apply(Input::Rerun { only: None, spec: None }, at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["c"], "completed work is kept");
    let c = run.job("c").unwrap();
    assert_eq!((c.state, c.generation, c.attempt_offset), (JobState::Queued, 1, 1));
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
    assert_eq!(run.record().state, RunState::Running);
    // An event of the old generation changes nothing; the new attempt is number 2.
    assert!(matches!(
        run.apply(ev(&final_failure(&run, "c", 1, 5)), at(5)),
        Err(NotApplied::Ignored(Ignored::StaleGeneration { .. }))
    ));
    let mut started = event(&run, "c", 2, EventKind::Started, 6);
    started.generation = 1;
    run.apply(ev(&started), at(6)).unwrap();
    let mut done = event(&run, "c", 2, EventKind::Succeeded, 7);
    done.generation = 1;
    let effects = run.apply(ev(&done), at(7)).unwrap();
    assert_eq!(dispatched(&effects), ["d"]);
    let mut d_done = event(&run, "d", 1, EventKind::Succeeded, 8);
    d_done.generation = 1;
    run.apply(ev(&d_done), at(8)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
    assert!(matches!(
        run.apply(Input::Rerun { only: None, spec: None }, at(9)),
        Err(NotApplied::Refused(Refused::NothingToRetry { .. }))
    ));
    let again = run.apply(rerun("b"), at(9)).unwrap();
    assert_eq!(dispatched(&again), ["b"], "one job and what needs it run again");
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
}

#[test]
fn retry_refuses_a_running_run() {
    let (mut run, _) = start(DIAMOND);
    assert!(matches!(
        run.apply(Input::Rerun { only: None, spec: None }, at(1)),
        Err(NotApplied::Refused(Refused::StillRunning { .. }))
    ));
    assert!(matches!(run.apply(rerun("a"), at(1)), Err(NotApplied::Refused(Refused::InFlight { .. }))));
}

#[test]
fn the_same_attempt_delivered_to_another_worker_is_recorded_once() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut elsewhere = event(&run, "a", 1, EventKind::Started, 2);
    elsewhere.worker = "w2".into();
    let effects = run.apply(ev(&elsewhere), at(2)).unwrap();
    assert_eq!(effects.len(), 1, "only the job record is saved");
    assert_eq!(run.job("a").unwrap().attempt_history[0].redelivered_to, ["w2"]);
    assert!(run.apply(ev(&elsewhere), at(2)).is_err(), "handling it again changes nothing");
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    let mut late = event(&run, "a", 1, EventKind::Started, 4);
    late.worker = "w3".into();
    run.apply(ev(&late), at(4)).unwrap();
    assert_eq!(run.job("a").unwrap().attempt_history[0].redelivered_to, ["w2", "w3"], "recorded after completion too");
    assert_eq!(run.job("a").unwrap().state, JobState::Completed);
}

#[test]
fn a_redelivered_start_or_failure_of_a_finished_attempt_changes_nothing() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    let started = event(&run, "a", 1, EventKind::Started, 1);
    run.apply(ev(&started), at(1)).unwrap();
    let mut failure = event(&run, "a", 1, EventKind::Failed, 2);
    failure.retry_at = Some(at(12));
    run.apply(ev(&failure), at(2)).unwrap();
    let before = run.job("a").unwrap().clone();
    assert!(matches!(run.apply(ev(&started), at(3)), Err(NotApplied::Ignored(Ignored::Duplicate { .. }))));
    assert!(matches!(run.apply(ev(&failure), at(3)), Err(NotApplied::Ignored(Ignored::Duplicate { .. }))));
    assert_eq!(run.job("a").unwrap(), &before);
    assert_eq!(before.state, JobState::Retrying);
}

#[test]
fn restore_finishes_what_a_crash_interrupted() {
    let (mut run, _) = start(DIAMOND);
    let effects = run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    // Crash after saving `a` but before saving b and c as queued.
    let mut stored: HashMap<String, JobRecord> = HashMap::new();
    for name in ["a", "b", "c", "d"] {
        let mut job = run.job(name).unwrap().clone();
        if name != "a" {
            job.state = JobState::Blocked;
        }
        stored.insert(name.into(), job);
    }
    assert!(dispatched(&effects).len() == 2);
    let (restored, effects) = Run::restore(run.record().clone(), run.spec().clone(), stored, at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["b", "c"]);
    assert_eq!(restored.jobs_in(JobState::Queued).count(), 2);
}

// ---- children ----

const FAN: &str = "name: f\non_failure: continue\njobs:\n  fan: { run: noop, max_parallel: 2 }\n  join: { run: noop, needs: [fan] }\n  other: { run: noop }\n";

#[test]
fn a_parent_waits_for_its_children_within_its_max_parallel_then_its_dependents_start() {
    let (mut run, _) = start(FAN);
    let effects = spawning(&mut run, "fan", &["a", "b", "c"], 1);
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting);
    assert_eq!(dispatched(&effects), ["fan.a", "fan.b"], "max_parallel 2 holds the third");
    assert_eq!(run.job("fan.c").unwrap().state, JobState::Blocked);
    let effects = run.apply(ev(&event(&run, "fan.a", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["fan.c"]);
    run.apply(ev(&event(&run, "fan.b", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.job("join").unwrap().state, JobState::Blocked);
    let effects = run.apply(ev(&event(&run, "fan.c", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
    assert_eq!(dispatched(&effects), ["join"]);
}

#[test]
fn a_failed_child_fails_its_parent_and_retry_reruns_only_that_child() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b"], 1);
    run.apply(ev(&event(&run, "other", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    let effects = run.apply(ev(&event(&run, "fan.a", 1, EventKind::Failed, 2)), at(2)).unwrap();
    assert!(effects.iter().any(|effect| matches!(effect, Effect::DeadLetter(letter) if letter.job.job == "fan.a")));
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting, "b is still running");
    run.apply(ev(&event(&run, "fan.b", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    let fan = run.job("fan").unwrap();
    assert_eq!(fan.state, JobState::Failed);
    assert!(fan.error.as_deref().unwrap().starts_with("1 of 2 children did not complete; first: `fan.a` failed"));
    assert_eq!(run.job("join").unwrap().state, JobState::Skipped);
    assert_eq!(run.record().state, RunState::Failed);

    let effects = run.apply(Input::Rerun { only: None, spec: None }, at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["fan.a"], "fan is not run again, b stays completed");
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting);
    let mut again = event(&run, "fan.a", 2, EventKind::Succeeded, 5);
    again.generation = 1;
    let effects = run.apply(ev(&again), at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["join"]);
    let mut join = event(&run, "join", 1, EventKind::Succeeded, 6);
    join.generation = 1;
    run.apply(ev(&join), at(6)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
}

const TOLERANT: &str = "name: t\njobs:\n  fan: { run: noop, max_child_failures: 1 }\n  join: { run: noop, needs: [fan] }\n  other: { run: noop }\n";

#[test]
fn a_parent_with_max_child_failures_completes_despite_that_many_and_the_run_succeeds() {
    // `on_failure: stop` (the default): a judged child's failure must not stop the run.
    let (mut run, _) = start(TOLERANT);
    spawning(&mut run, "fan", &["a", "b", "c"], 1);
    let effects = run.apply(ev(&event(&run, "fan.a", 1, EventKind::Failed, 2)), at(2)).unwrap();
    assert!(effects.iter().any(|effect| matches!(effect, Effect::DeadLetter(letter) if letter.job.job == "fan.a")));
    assert_eq!(run.job("other").unwrap().state, JobState::Queued, "nothing is skipped for a judged failure");
    run.apply(ev(&event(&run, "fan.b", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    let effects = run.apply(ev(&event(&run, "fan.c", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
    assert_eq!(dispatched(&effects), ["join"]);
    run.apply(ev(&event(&run, "join", 1, EventKind::Succeeded, 5)), at(5)).unwrap();
    run.apply(ev(&event(&run, "other", 1, EventKind::Succeeded, 6)), at(6)).unwrap();
    assert_eq!(run.job("fan.a").unwrap().state, JobState::Failed, "the failed child stays on record");
    assert_eq!(run.record().state, RunState::Succeeded);
    assert_eq!(run.record().error, None);
}

#[test]
fn a_parent_fails_once_more_children_fail_than_max_child_failures_and_then_the_policy_applies() {
    let (mut run, _) = start(TOLERANT);
    spawning(&mut run, "fan", &["a", "b", "c"], 1);
    run.apply(ev(&event(&run, "fan.a", 1, EventKind::Failed, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "fan.b", 1, EventKind::Failed, 3)), at(3)).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting, "c is still running");
    run.apply(ev(&event(&run, "fan.c", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    let fan = run.job("fan").unwrap();
    assert_eq!(fan.state, JobState::Failed);
    assert!(
        fan.error
            .as_deref()
            .unwrap()
            .starts_with("2 of 3 children did not complete (max_child_failures: 1); first: `fan.a` failed"),
        "{:?}",
        fan.error
    );
    assert_eq!(run.job("join").unwrap().state, JobState::Skipped);
    run.apply(ev(&event(&run, "other", 1, EventKind::Succeeded, 5)), at(5)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    assert_eq!(run.record().error.as_deref(), Some("job `fan` failed"));

    let effects = run.apply(Input::Rerun { only: None, spec: None }, at(6)).unwrap();
    let mut again = dispatched(&effects);
    again.sort();
    assert_eq!(again, ["fan.a", "fan.b"], "only the failed children run again");
}

#[test]
fn children_that_cannot_be_read_or_are_invalid_fail_the_parent_clearly() {
    let (mut run, _) = start(FAN);
    let mut success = event(&run, "fan", 1, EventKind::Succeeded, 1);
    success.spawned = 3;
    read(&mut run, success, children(&["a", "b"]), 1).unwrap();
    let fan = run.job("fan").unwrap();
    assert_eq!(fan.state, JobState::Failed);
    assert_eq!(fan.error.as_deref(), Some("the job spawned 3 children but 2 could be read from the spawn stream"));

    let (mut run, _) = start(FAN);
    let mut success = event(&run, "fan", 1, EventKind::Succeeded, 1);
    success.spawned = 2;
    read(&mut run, success, children(&["a", "a"]), 1).unwrap();
    assert!(run.job("fan").unwrap().error.as_deref().unwrap().contains("two children are named `a`"));
}

#[test]
fn restore_keeps_a_waiting_parent_and_its_children_and_drops_a_half_written_spawn() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b", "c"], 1);
    run.apply(ev(&event(&run, "fan.a", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    // What the store holds: each record as the engine saves it (a child with its definition).
    let stored: HashMap<String, JobRecord> = run
        .all_paths()
        .into_iter()
        .map(|path| {
            let record = run.job(&path).unwrap().clone();
            (path, record)
        })
        .collect();
    let (restored, effects) = Run::restore(run.record().clone(), run.spec().clone(), stored.clone(), at(3)).unwrap();
    assert!(dispatched(&effects).is_empty(), "b and c are queued already: {effects:?}");
    assert_eq!(restored.all_paths(), ["fan", "fan.a", "fan.b", "fan.c", "join", "other"]);

    // The parent's record still says `running`: its children were being written.
    let mut half = stored;
    half.get_mut("fan").unwrap().state = JobState::Running;
    half.get_mut("fan").unwrap().children = 0;
    let (restored, _) = Run::restore(run.record().clone(), run.spec().clone(), half, at(3)).unwrap();
    assert!(restored.job("fan.a").is_none());
}

#[test]
fn retry_of_a_job_whose_need_did_not_complete_is_refused_clearly() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    assert_eq!(run.job("b").unwrap().state, JobState::Skipped);
    assert_eq!(
        run.apply(rerun("b"), at(2)),
        Err(NotApplied::Refused(Refused::NeedsFirst { job: "b".into(), need: "a".into() }))
    );
    assert!(run.apply(rerun("a"), at(2)).is_ok(), "retrying the need itself runs it and what needs it");
}

#[test]
fn a_failed_child_can_be_retried_while_its_siblings_still_run() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b"], 1);
    run.apply(ev(&event(&run, "fan.b", 1, EventKind::Started, 2)), at(2)).unwrap();
    run.apply(ev(&final_failure(&run, "fan.a", 1, 2)), at(2)).unwrap();
    let effects = run.apply(rerun("fan.a"), at(3)).unwrap();
    assert_eq!(dispatched(&effects), ["fan.a"]);
    assert_eq!(run.job("fan.b").unwrap().state, JobState::Running, "the sibling is left alone");
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting);
}

#[test]
fn retrying_a_completed_child_that_spawned_finishes_each_parent_once() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["c"], 1);
    spawning(&mut run, "fan.c", &["g"], 2);
    run.apply(ev(&event(&run, "fan.c.g", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
    run.apply(ev(&event(&run, "join", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    run.apply(ev(&event(&run, "other", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
    // fan.c has nothing unfinished: it completes at once, then fan, then join runs again.
    let effects = run.apply(rerun("fan.c"), at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["join"]);
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
}

// ---- the inputs that replaced the shell's peeking and inventing ----

#[test]
fn a_spawning_success_asks_for_its_children_and_changes_nothing_until_they_come() {
    let (mut run, _) = start(FAN);
    let mut success = event(&run, "fan", 1, EventKind::Succeeded, 1);
    success.spawned = 2;
    let before = run.job("fan").unwrap().clone();
    let asked = run.apply(ev(&success), at(1)).unwrap();
    assert_eq!(asked, [Effect::ReadChildren(Box::new(success.clone()))]);
    assert_eq!(run.job("fan").unwrap(), &before, "nothing changes before the children are read");
    read(&mut run, success.clone(), children(&["a", "b"]), 1).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting);
    // Delivered again once its children are taken: ignored, not asked for again.
    assert!(matches!(run.apply(ev(&success), at(2)), Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))));
    assert!(matches!(
        read(&mut run, success, children(&["a", "b"]), 2),
        Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))
    ));
}

fn exhausted(job: &str, generation: u32, attempt_offset: u32, deliveries: u64) -> Input {
    Input::DeliveriesExhausted {
        job: job.to_owned(),
        generation,
        attempt_offset,
        deliveries,
        reason: format!("JetStream gave up after {deliveries} deliveries"),
    }
}

#[test]
fn exhausted_deliveries_fail_the_attempt_jetstream_gave_up_on_and_dead_letter_the_job() {
    let (mut run, _) = start(DIAMOND);
    let mut failed = event(&run, "a", 1, EventKind::Failed, 2);
    failed.retry_at = Some(at(3));
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    run.apply(ev(&failed), at(2)).unwrap();
    // Attempt 2 never got its start stored: the deliveries that failed are not attempts.
    let effects = run.apply(exhausted("a", 0, 0, 7), at(5)).unwrap();
    let a = run.job("a").unwrap();
    assert_eq!(a.state, JobState::Failed);
    assert_eq!(a.attempts, 2, "the attempt after the last on record, not offset + deliveries");
    let last = a.attempt_history.last().unwrap();
    assert_eq!((last.attempt, last.worker.as_str(), last.finished_at), (2, "jetstream", Some(at(5))));
    assert_eq!(a.error.as_deref(), Some("JetStream gave up after 7 deliveries"));
    assert!(effects.iter().any(|effect| matches!(effect, Effect::DeadLetter(letter) if letter.job.job == "a")));
    assert_eq!(run.record().state, RunState::Failed, "b, c and d are skipped");
    assert!(matches!(
        run.apply(exhausted("a", 0, 0, 7), at(6)),
        Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))
    ));
    run.apply(Input::Rerun { only: None, spec: None }, at(7)).unwrap();
    assert!(matches!(
        run.apply(exhausted("a", 0, 0, 3), at(8)),
        Err(NotApplied::Ignored(Ignored::StaleGeneration { .. }))
    ));
}

// ---- reruns: what the simulation found ----

#[test]
fn a_rerun_writes_the_run_record_first_then_its_jobs_from_the_last() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    let effects = run.apply(Input::Rerun { only: None, spec: None }, at(2)).unwrap();
    assert!(matches!(&effects[0], Effect::SaveRun(record) if record.state == RunState::Running));
    // A crash after any prefix leaves dependents reset before what they need (`a` is saved
    // again as it is queued; the shell writes each record's last save).
    assert_eq!(saved(&effects), ["d", "c", "b", "a", "a"]);
    assert_eq!(dispatched(&effects), ["a"]);
}

#[test]
fn with_on_failure_stop_a_rerun_job_skipped_for_another_failure_skips_what_needs_it() {
    let yaml = "name: s
jobs:
  a: { run: noop }
  b: { run: noop, needs: [a] }
  c: { run: noop, needs: [b] }
  f: { run: noop }
";
    let (mut run, _) = start(yaml);
    for (job, second) in [("a", 1), ("b", 2), ("c", 3)] {
        run.apply(ev(&event(&run, job, 1, EventKind::Succeeded, second)), at(second)).unwrap();
    }
    run.apply(ev(&final_failure(&run, "f", 1, 4)), at(4)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    run.apply(rerun("a"), at(5)).unwrap();
    let mut again = event(&run, "a", 2, EventKind::Succeeded, 6);
    again.generation = 1;
    run.apply(ev(&again), at(6)).unwrap();
    assert_eq!(run.job("b").unwrap().state, JobState::Skipped, "f failed: nothing new starts");
    assert_eq!(run.job("c").unwrap().state, JobState::Skipped, "and c does not wait for ever");
    assert_eq!(run.record().state, RunState::Failed);
}

const PARENT_DOWNSTREAM: &str = "name: p
jobs:
  a: { run: noop }
  p: { run: noop, needs: [a] }
  d: { run: noop, needs: [p] }
";

#[test]
fn a_parent_downstream_of_a_rerun_waits_for_what_it_needs_before_it_completes() {
    let (mut run, _) = start(PARENT_DOWNSTREAM);
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    spawning(&mut run, "p", &["c"], 2);
    run.apply(ev(&event(&run, "p.c", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    run.apply(ev(&event(&run, "d", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);

    let effects = run.apply(rerun("a"), at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["a"], "d waits for p, which waits for a");
    assert_eq!(run.job("p").unwrap().state, JobState::Waiting);
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
    let mut again = event(&run, "a", 2, EventKind::Succeeded, 6);
    again.generation = 1;
    let effects = run.apply(ev(&again), at(6)).unwrap();
    assert_eq!(run.job("p").unwrap().state, JobState::Completed, "its children are still complete");
    assert_eq!(dispatched(&effects), ["d"]);
}

#[test]
fn a_rerun_whose_waiting_parent_needs_an_unfinished_job_is_refused() {
    let (mut run, _) = start(PARENT_DOWNSTREAM);
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    spawning(&mut run, "p", &["c"], 2);
    run.apply(Input::Cancel, at(3)).unwrap();
    assert_eq!(run.job("p.c").unwrap().state, JobState::Cancelled);
    run.apply(rerun("a"), at(4)).unwrap();
    run.apply(Input::Cancel, at(5)).unwrap();
    assert_eq!(run.job("a").unwrap().state, JobState::Cancelled);
    assert_eq!(
        run.apply(rerun("p.c"), at(6)),
        Err(NotApplied::Refused(Refused::NeedsFirst { job: "p".into(), need: "a".into() }))
    );
}

/// The observations of a diamond whose `b` fails once, is retried, and succeeds; `c` is
/// started by two workers (a redelivery); the run ends `succeeded` 10 s after it began.
#[test]
fn a_run_notes_each_attempt_end_first_start_job_end_and_its_own_end_once() {
    let yaml = DIAMOND.replace("b: { run: noop, needs: [a] }", "b: { run: noop, needs: [a], pool: gpu }");
    let (mut run, _) = start(&yaml);
    assert!(run.take_observed().is_empty(), "starting notes nothing");
    let a = event(&run, "a", 1, EventKind::Started, 1);
    run.apply(ev(&a), at(1)).unwrap();
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    let noted = run.take_observed();
    assert_eq!(
        noted,
        [
            Observed::Started { path: "a".into(), waited: std::time::Duration::from_secs(1) },
            Observed::AttemptEnded { path: "a".into(), outcome: AttemptOutcome::Succeeded },
            Observed::JobFinished { path: "a".into(), state: JobState::Completed },
        ]
    );
    assert!(run.take_observed().is_empty(), "taken once");
    // b fails, another attempt follows; then it succeeds.
    run.apply(ev(&event(&run, "b", 1, EventKind::Started, 3)), at(3)).unwrap();
    let mut failure = event(&run, "b", 1, EventKind::Failed, 4);
    failure.retry_at = Some(at(5));
    run.apply(ev(&failure), at(4)).unwrap();
    run.apply(ev(&event(&run, "b", 2, EventKind::Started, 5)), at(5)).unwrap();
    run.apply(ev(&event(&run, "b", 2, EventKind::Succeeded, 6)), at(6)).unwrap();
    // c is redelivered to a second worker while it runs; the repeat of its start changes nothing.
    let c = event(&run, "c", 1, EventKind::Started, 3);
    run.apply(ev(&c), at(3)).unwrap();
    assert!(run.apply(ev(&c), at(3)).is_err());
    let mut again = c.clone();
    again.worker = "w2".into();
    run.apply(ev(&again), at(4)).unwrap();
    run.apply(ev(&event(&run, "c", 1, EventKind::Succeeded, 7)), at(7)).unwrap();
    let noted = run.take_observed();
    let ended = |path: &str| -> Vec<AttemptOutcome> {
        noted
            .iter()
            .filter_map(|o| match o {
                Observed::AttemptEnded { path: p, outcome } if p == path => Some(*outcome),
                _ => None,
            })
            .collect()
    };
    assert_eq!(ended("b"), [AttemptOutcome::Retrying, AttemptOutcome::Succeeded]);
    assert_eq!(ended("c"), [AttemptOutcome::Succeeded]);
    let starts = noted.iter().filter(|o| matches!(o, Observed::Started { .. })).count();
    assert_eq!(starts, 2, "one first start each of b and c, none for b's retry: {noted:?}");
    assert_eq!(noted.iter().filter(|o| matches!(o, Observed::Redelivered { path } if path == "c")).count(), 1);
    assert_eq!(run.pool_of("b"), "gpu");
    assert_eq!(run.pool_of("c"), "default");
    run.apply(ev(&event(&run, "d", 1, EventKind::Started, 8)), at(8)).unwrap();
    run.apply(ev(&event(&run, "d", 1, EventKind::Succeeded, 10)), at(10)).unwrap();
    let noted = run.take_observed();
    assert_eq!(
        noted.last(),
        Some(&Observed::RunFinished { state: RunState::Succeeded, took: std::time::Duration::from_secs(10) })
    );
    let finished = noted.iter().filter(|o| matches!(o, Observed::JobFinished { .. })).count();
    assert_eq!(finished, 1, "d alone finished in these inputs");
}

#[test]
fn a_cancel_notes_each_job_cancelled_and_the_run_cancelled_but_no_attempt() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    run.take_observed();
    run.apply(Input::Cancel, at(3)).unwrap();
    let noted = run.take_observed();
    let cancelled =
        noted.iter().filter(|o| matches!(o, Observed::JobFinished { state: JobState::Cancelled, .. })).count();
    assert_eq!(cancelled, 4, "{noted:?}");
    assert!(!noted.iter().any(|o| matches!(o, Observed::AttemptEnded { .. })), "{noted:?}");
    assert_eq!(
        noted.last(),
        Some(&Observed::RunFinished { state: RunState::Cancelled, took: std::time::Duration::from_secs(3) })
    );
}

#[test]
fn a_final_failure_and_a_mark_are_told_apart() {
    let (mut run, _) = start(FIXABLE);
    run.apply(ev(&event(&run, "extract", 1, EventKind::Failed, 2)), at(2)).unwrap();
    let noted = run.take_observed();
    assert!(noted.contains(&Observed::AttemptEnded { path: "extract".into(), outcome: AttemptOutcome::Failed }));
    assert!(noted.contains(&Observed::JobFinished { path: "extract".into(), state: JobState::Failed }));
    let mark =
        Input::Mark { job: "load".into(), as_: MarkAs::Succeeded, output: None, by: "u".into(), request_id: None };
    let _ = run.apply(mark, at(3));
    let noted = run.take_observed();
    assert!(!noted.iter().any(|o| matches!(o, Observed::AttemptEnded { .. })), "a mark is no attempt: {noted:?}");
}

mod invariants;
mod simulation;
mod transitions;

/// Attempt `attempt` of `job` in the history: (finished_at, error).
fn attempt_end(run: &Run, job: &str, attempt: u32) -> (Option<DateTime<Utc>>, Option<String>) {
    let record = run.job(job).unwrap().attempt_history.iter().find(|record| record.attempt == attempt).unwrap();
    (record.finished_at, record.error.clone())
}

#[test]
fn a_redelivered_start_closes_the_open_attempt_before_it_as_worker_lost() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut again = event(&run, "a", 2, EventKind::Started, 7);
    again.worker = "w2".into();
    run.apply(ev(&again), at(8)).unwrap();
    assert_eq!(attempt_end(&run, "a", 1), (Some(at(7)), Some(WORKER_LOST.to_owned())));
    assert_eq!(attempt_end(&run, "a", 2), (None, None), "the new attempt is open");
    run.apply(ev(&event(&run, "a", 2, EventKind::Succeeded, 9)), at(9)).unwrap();
    assert_eq!(attempt_end(&run, "a", 1).1.as_deref(), Some(WORKER_LOST), "kept after the outcome");
    assert_eq!(attempt_end(&run, "a", 2), (Some(at(9)), None));
}

#[test]
fn what_a_later_attempt_found_of_a_lost_one_is_recorded_in_the_lost_one() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "a", 2, EventKind::Started, 7)), at(7)).unwrap();
    let mut success = event(&run, "a", 2, EventKind::Succeeded, 9);
    let long = format!("its Job sluice-a-1 had succeeded{}", "!".repeat(2 * ATTEMPT_FOUND_LATER_MAX_BYTES));
    success.earlier = vec![
        EarlierAttempt { attempt: 1, found: long.clone() },
        // Not earlier, or not on record: nothing to put it in.
        EarlierAttempt { attempt: 2, found: "itself".into() },
        EarlierAttempt { attempt: 9, found: "a later one".into() },
    ];
    let effects = run.apply(ev(&success), at(9)).unwrap();
    assert!(saved(&effects).contains(&"a".to_owned()), "{effects:?}");
    let history = &run.job("a").unwrap().attempt_history;
    let found = history[0].found_later.as_deref().unwrap();
    assert!(found.len() <= ATTEMPT_FOUND_LATER_MAX_BYTES && found.starts_with("its Job sluice-a-1"), "{found}");
    assert_eq!(history[0].error.as_deref(), Some(WORKER_LOST), "the lost attempt still says it was lost");
    assert_eq!(history[1].found_later, None);
    assert_eq!(run.job("a").unwrap().state, JobState::Completed);
    let before = run.job("a").unwrap().clone();
    assert!(run.apply(ev(&success), at(10)).is_err(), "a repeat is ignored");
    assert_eq!(run.job("a").unwrap(), &before, "and changes nothing");
}

#[test]
fn a_later_attempts_outcome_closes_the_open_attempt_but_not_a_finished_one() {
    let (mut run, _) = start(DIAMOND);
    let mut failed = event(&run, "a", 1, EventKind::Failed, 2);
    failed.retry_at = Some(at(3));
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    run.apply(ev(&failed), at(2)).unwrap();
    run.apply(ev(&event(&run, "a", 2, EventKind::Started, 4)), at(4)).unwrap();
    // Attempt 3's start was lost; its outcome (saying when it began) is the first word of it.
    let mut third = event(&run, "a", 3, EventKind::Succeeded, 9);
    third.started_at = Some(at(6));
    run.apply(ev(&third), at(9)).unwrap();
    assert_eq!(attempt_end(&run, "a", 1), (Some(at(2)), Some("boom".to_owned())), "a reported end stays");
    assert_eq!(attempt_end(&run, "a", 2), (Some(at(9)), Some(WORKER_LOST.to_owned())));
    assert_eq!(attempt_end(&run, "a", 3), (Some(at(9)), None));
}

#[test]
fn exhausted_deliveries_end_the_attempt_on_record_that_never_reported() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    run.apply(exhausted("a", 0, 0, 3), at(5)).unwrap();
    let a = run.job("a").unwrap();
    assert_eq!((a.attempts, a.attempt_history.len()), (1, 1), "three deliveries, one attempt on record");
    assert_eq!(attempt_end(&run, "a", 1), (Some(at(5)), Some("JetStream gave up after 3 deliveries".to_owned())));
}

#[test]
fn an_attempt_that_ran_after_its_job_ended_is_on_record_and_changes_nothing_else() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut success = event(&run, "a", 1, EventKind::Succeeded, 2);
    success.started_at = Some(at(1));
    run.apply(ev(&success), at(2)).unwrap();
    // A redelivery during an outage ran it again before attempt 1's outcome was stored.
    let mut again = event(&run, "a", 2, EventKind::Started, 3);
    again.worker = "w2".into();
    let effects = run.apply(ev(&again), at(3)).unwrap();
    assert!(dispatched(&effects).is_empty());
    let mut failure = event(&run, "a", 2, EventKind::Failed, 4);
    (failure.worker, failure.started_at) = ("w2".into(), Some(at(3)));
    run.apply(ev(&failure), at(4)).unwrap();
    let a = run.job("a").unwrap();
    assert_eq!((a.state, a.attempts, a.output.clone()), (JobState::Completed, 2, None));
    assert_eq!(
        attempt_end(&run, "a", 2),
        (Some(at(4)), Some("failed after the job had already ended (completed): not applied".to_owned()))
    );
    // Its repeats change nothing; nor does an attempt whose start was lost that says nothing of when it began.
    assert!(matches!(run.apply(ev(&failure), at(5)), Err(NotApplied::Ignored(_))));
    assert!(matches!(
        run.apply(ev(&event(&run, "a", 3, EventKind::Failed, 5)), at(5)),
        Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))
    ));
    // One whose start was lost, reported by its outcome, is on record too.
    let mut lost_start = event(&run, "a", 3, EventKind::Succeeded, 6);
    lost_start.started_at = Some(at(5));
    run.apply(ev(&lost_start), at(6)).unwrap();
    assert_eq!(run.job("a").unwrap().attempts, 3);
    assert_eq!(run.record().state, RunState::Running, "b and c run on a's first success");
}

#[test]
fn the_late_outcome_of_an_attempt_closed_as_worker_lost_still_counts() {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Started, 1)), at(1)).unwrap();
    let mut again = event(&run, "a", 2, EventKind::Started, 3);
    again.worker = "w2".into();
    run.apply(ev(&again), at(3)).unwrap();
    // The first worker was only slow: its success ends the job, as before attempt 2 began.
    let mut success = event(&run, "a", 1, EventKind::Succeeded, 4);
    success.started_at = Some(at(1));
    run.apply(ev(&success), at(4)).unwrap();
    assert_eq!(run.job("a").unwrap().state, JobState::Completed);
    assert_eq!(attempt_end(&run, "a", 1), (Some(at(4)), None), "the real outcome replaces `worker lost`");
}

const FIXABLE: &str = "name: f\njobs:\n  extract: { run: exec, command: [python3, extract.py] }\n  load: { run: exec, needs: [extract], command: [python3, load.py] }\n";

fn respec(yaml: &str) -> NewSpec {
    NewSpec { spec: Arc::new(WorkflowSpec::parse(yaml).unwrap()), hash: WorkflowSpec::hash(yaml) }
}

#[test]
fn a_retry_with_a_new_spec_runs_what_runs_again_from_it_and_each_attempt_names_its_spec() {
    let (mut run, _) = start(FIXABLE);
    let first_hash = WorkflowSpec::hash(FIXABLE);
    run.apply(ev(&event(&run, "extract", 1, EventKind::Started, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "extract", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "load", 1, EventKind::Started, 3)), at(3)).unwrap();
    run.apply(ev(&final_failure(&run, "load", 1, 4)), at(4)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    let fixed = FIXABLE.replace("load.py]", "load.py, --fixed]");
    let effects = run.apply(Input::Rerun { only: None, spec: Some(respec(&fixed)) }, at(5)).unwrap();
    let message = effects
        .iter()
        .find_map(|effect| match effect {
            Effect::Dispatch { job, .. } if job == "load" => Some(run.dispatch_message(job)),
            _ => None,
        })
        .expect("load is dispatched again");
    assert_eq!(message.command.unwrap(), ["python3", "load.py", "--fixed"]);
    assert_eq!(run.record().spec_hash.as_deref(), Some(WorkflowSpec::hash(&fixed).as_str()));
    assert!(
        effects
            .iter()
            .any(|effect| matches!(effect, Effect::SaveRun(record) if record.spec_hash == run.record().spec_hash))
    );
    let again = JobEvent { generation: 1, ..event(&run, "load", 2, EventKind::Started, 6) };
    run.apply(ev(&again), at(6)).unwrap();
    let load = run.job("load").unwrap();
    let hashes: Vec<Option<&str>> = load.attempt_history.iter().map(|attempt| attempt.spec_hash.as_deref()).collect();
    assert_eq!(hashes, [Some(first_hash.as_str()), Some(WorkflowSpec::hash(&fixed).as_str())]);
}

#[test]
fn a_new_spec_that_changes_a_job_that_does_not_run_again_is_refused_and_changes_nothing() {
    let (mut run, _) = start(FIXABLE);
    run.apply(ev(&event(&run, "extract", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    run.apply(ev(&final_failure(&run, "load", 1, 4)), at(4)).unwrap();
    let before = (run.record().clone(), run.job("load").unwrap().clone());
    let changed = FIXABLE.replace("extract.py]", "extract.py, --again]");
    let refused = run.apply(Input::Rerun { only: None, spec: Some(respec(&changed)) }, at(5));
    let Err(NotApplied::Refused(Refused::SpecChange { problems })) = refused else { panic!("{refused:?}") };
    assert_eq!(problems, ["it changes job `extract`, which does not run again"]);
    assert_eq!((run.record().clone(), run.job("load").unwrap().clone()), before);
    // Retrying `extract` too, the same spec is taken.
    let effects =
        run.apply(Input::Rerun { only: Some("extract".into()), spec: Some(respec(&changed)) }, at(6)).unwrap();
    assert_eq!(dispatched(&effects), ["extract"]);
    assert_eq!(run.dispatch_message("extract").command.unwrap(), ["python3", "extract.py", "--again"]);
}

// ---- `when:` rules ----

/// A chain whose end is followed by a cleanup that always runs and an alert on failure.
const CLEANUP: &str = "name: c\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n  notify: { run: noop, needs: [b], when: always }\n  alert: { run: noop, needs: [a, b], when: on_failure }\n";

fn final_state(run: &Run, job: &str) -> JobState {
    run.job(job).unwrap().state
}

#[test]
fn an_always_job_runs_after_a_failure_and_the_run_still_fails() {
    let (mut run, _) = start(CLEANUP);
    let effects = run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    assert_eq!(final_state(&run, "b"), JobState::Skipped, "the failure policy skips b");
    let mut started = dispatched(&effects);
    started.sort();
    assert_eq!(started, ["alert", "notify"], "both rules are met once a and b are finished");
    run.apply(ev(&event(&run, "notify", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "alert", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed, "the cleanup's success does not hide a's failure");
    assert_eq!(run.record().error.as_deref(), Some("job `a` failed"));
}

#[test]
fn an_on_failure_job_is_skipped_when_everything_succeeds_and_the_run_succeeds() {
    let (mut run, _) = start(CLEANUP);
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    let effects = run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["notify"]);
    let alert = run.job("alert").unwrap();
    assert_eq!(alert.state, JobState::Skipped);
    assert!(alert.error.as_deref().unwrap().contains("no job it needs failed"), "{:?}", alert.error);
    run.apply(ev(&event(&run, "notify", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded, "a rule's skip is not a failure");
}

#[test]
fn an_on_failure_job_waits_until_every_need_is_finished() {
    let yaml = "name: w\non_failure: continue\njobs:\n  a: { run: noop }\n  b: { run: noop }\n  alert: { run: noop, needs: [a, b], when: on_failure }\n";
    let (mut run, _) = start(yaml);
    let effects = run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    assert!(dispatched(&effects).is_empty(), "b still runs");
    assert_eq!(final_state(&run, "alert"), JobState::Blocked);
    let effects = run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["alert"]);
}

#[test]
fn a_retry_reruns_an_always_job_whose_need_failed_and_stays_failed() {
    let (mut run, _) = start(CLEANUP);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "notify", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "alert", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    // `a` is finished, if failed: an always job may run again without it.
    let effects = run.apply(rerun("notify"), at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["notify"]);
}

// ---- marks ----

fn mark(job: &str, as_: MarkAs, output: Option<serde_json::Value>) -> Input {
    Input::Mark { job: job.into(), as_, output, by: "alice".into(), request_id: Some(RequestId::new()) }
}

/// DIAMOND with `b` failed for good and `c` completed: the run failed, `d` was skipped.
fn failed_diamond() -> Run {
    let (mut run, _) = start(DIAMOND);
    run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 1)), at(1)).unwrap();
    run.apply(ev(&final_failure(&run, "b", 1, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "c", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    assert_eq!(final_state(&run, "d"), JobState::Skipped);
    run
}

#[test]
fn a_failed_job_marked_succeeded_lets_what_needs_it_run_and_the_run_succeed() {
    let mut run = failed_diamond();
    let output = serde_json::json!({"rows": 7});
    let effects = run.apply(mark("b", MarkAs::Succeeded, Some(output.clone())), at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["d"]);
    assert_eq!(run.record().state, RunState::Running, "the failed run runs again");
    assert!(matches!(effects.first(), Some(Effect::SaveRun(record)) if record.state == RunState::Running));
    assert!(effects.contains(&Effect::ResolveDeadLetters { run_id: run.id(), jobs: Some(vec!["b".into()]) }));
    let b = run.job("b").unwrap();
    assert_eq!((b.state, b.output.as_ref(), b.error.as_deref()), (JobState::Completed, Some(&output), None));
    let marked = b.marked.as_ref().unwrap();
    assert_eq!((marked.as_, marked.by.as_str(), marked.at), (MarkAs::Succeeded, "alice", at(4)));
    assert_eq!(b.attempt_history.len(), 1, "the failed attempt stays on record");
    run.apply(ev(&event(&run, "d", 1, EventKind::Succeeded, 5)), at(5)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
}

#[test]
fn with_on_failure_stop_a_mark_of_the_only_failure_runs_everything_the_policy_skipped() {
    let yaml = TWO_BRANCHES.replace("on_failure: continue\n", "");
    let (mut run, _) = start(&yaml);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "b", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    let effects = run.apply(mark("a", MarkAs::Succeeded, None), at(3)).unwrap();
    assert_eq!(dispatched(&effects), ["a2", "b2"], "a's dependent and the branch the policy stopped");
    assert_eq!(final_state(&run, "a3"), JobState::Blocked);
}

#[test]
fn a_job_marked_skipped_skips_what_needs_it_and_the_run_succeeds() {
    let (mut run, _) = start(CLEANUP);
    run.apply(ev(&final_failure(&run, "a", 1, 1)), at(1)).unwrap();
    run.apply(ev(&event(&run, "notify", 1, EventKind::Succeeded, 2)), at(2)).unwrap();
    run.apply(ev(&event(&run, "alert", 1, EventKind::Succeeded, 3)), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    let effects = run.apply(mark("a", MarkAs::Skipped, None), at(4)).unwrap();
    assert_eq!(final_state(&run, "a"), JobState::Skipped);
    assert_eq!(final_state(&run, "b"), JobState::Skipped, "b behaves as for a skipped need");
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.record().state, RunState::Succeeded, "nothing failed any more: skips by intent");
}

#[test]
fn a_queued_job_marked_succeeded_is_withdrawn_and_its_dependents_start() {
    let (mut run, _) = start(DIAMOND);
    let effects = run.apply(mark("a", MarkAs::Succeeded, None), at(1)).unwrap();
    assert!(effects.contains(&Effect::WithdrawJob { run_id: run.id(), job: "a".into() }));
    assert_eq!(dispatched(&effects), ["b", "c"]);
    assert!(
        matches!(
            run.apply(ev(&event(&run, "a", 1, EventKind::Succeeded, 2)), at(2)),
            Err(NotApplied::Ignored(Ignored::AlreadyFinished { .. }))
        ),
        "the report of a worker that had taken it already changes nothing"
    );
}

#[test]
fn marks_that_cannot_apply_are_refused_and_change_nothing() {
    let (mut run, _) = start(FAN);
    run.apply(ev(&event(&run, "other", 1, EventKind::Started, 1)), at(1)).unwrap();
    spawning(&mut run, "fan", &["x"], 2);
    let refused = |run: &mut Run, input| match run.apply(input, at(3)) {
        Err(NotApplied::Refused(refused)) => refused,
        other => panic!("not refused: {other:?}"),
    };
    assert!(matches!(refused(&mut run, mark("zz", MarkAs::Succeeded, None)), Refused::UnknownJob { .. }));
    assert!(matches!(refused(&mut run, mark("other", MarkAs::Succeeded, None)), Refused::MarkRunning { .. }));
    assert!(matches!(refused(&mut run, mark("fan", MarkAs::Skipped, None)), Refused::NotMarkable { .. }));
    assert!(matches!(refused(&mut run, mark("fan.x", MarkAs::Succeeded, None)), Refused::NotMarkable { .. }));
    run.apply(ev(&event(&run, "other", 1, EventKind::Succeeded, 4)), at(4)).unwrap();
    let message = refused(&mut run, mark("other", MarkAs::Succeeded, None)).to_string();
    assert!(message.contains("already succeeded"), "{message}");
    run.apply(Input::Cancel, at(5)).unwrap();
    assert!(matches!(refused(&mut run, mark("join", MarkAs::Succeeded, None)), Refused::MarkCancelled { .. }));
}

#[test]
fn a_mark_applied_again_after_a_crash_finishes_what_it_began() {
    let mut run = failed_diamond();
    let stored: HashMap<String, JobRecord> =
        ["a", "b", "c", "d"].iter().map(|name| (name.to_string(), run.job(name).unwrap().clone())).collect();
    let input = mark("b", MarkAs::Succeeded, None);
    let Input::Mark { request_id, .. } = &input else { unreachable!() };
    let request_id = *request_id;
    run.apply(input, at(4)).unwrap();
    // The crash left the run record and b's record written, d's not (d still skipped).
    let mut stored = stored;
    stored.insert("b".into(), run.job("b").unwrap().clone());
    let (mut restored, _) = Run::restore(run.record().clone(), run.spec().clone(), stored, at(5)).unwrap();
    assert_eq!(final_state(&restored, "d"), JobState::Skipped);
    let again = Input::Mark { job: "b".into(), as_: MarkAs::Succeeded, output: None, by: "alice".into(), request_id };
    let effects = restored.apply(again, at(6)).unwrap();
    assert_eq!(dispatched(&effects), ["d"], "the same request finishes the mark");
    let other = restored.apply(mark("b", MarkAs::Succeeded, None), at(7));
    assert!(matches!(other, Err(NotApplied::Refused(Refused::AlreadySucceeded { .. }))), "{other:?}");
}

/// Decision 15: a child cannot name an image, resources or env; it runs with its workflow
/// job's.
#[test]
fn a_pod_jobs_children_run_with_its_image_resources_and_env() {
    let yaml = "name: p\njobs:\n  fan:\n    run: pod\n    image: ghcr.io/acme/fan:1\n    resources: {limits: {cpu: 1}}\n    env: {MODE: full}\n";
    let (mut run, _) = start(yaml);
    let mut success = event(&run, "fan", 1, EventKind::Succeeded, 1);
    success.spawned = 1;
    run.apply(Input::Event(success.clone()), at(1)).unwrap();
    read(&mut run, success, vec![ChildSpec::new("a", "pod")], 1).unwrap();
    let parent = run.dispatch_message("fan");
    let child = run.dispatch_message("fan.a");
    assert_eq!(child.image.as_deref(), Some("ghcr.io/acme/fan:1"));
    assert_eq!((child.resources, child.env), (parent.resources, parent.env));
    assert_eq!(child.kind, "pod");
}
