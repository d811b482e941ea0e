//! Engine tests: examples, then a simulation over random DAGs with duplicated and
//! reordered events and crashes at random points between effects.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_proto::{
    ChildSpec, EventKind, JobEvent, JobRecord, JobState, RunId, RunRecord, RunState, SCHEMA_VERSION, Window,
    WorkflowSpec,
};

use super::*;

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(i64::from(second))
}

fn start(yaml: &str) -> (Run, Vec<Effect>) {
    let spec = WorkflowSpec::parse(yaml).unwrap();
    let window = Window::parse("2024-02-29", sluice_proto::window::parse_zone("UTC").unwrap(), at(0)).unwrap();
    let new = NewRun {
        id: RunId::new(),
        spec,
        spec_yaml: yaml.to_owned(),
        window,
        params: BTreeMap::new(),
        idempotency_key: None,
        traceparent: None,
        tracestate: None,
    };
    Run::start(new, at(0))
}

fn event(run: &Run, job: &str, attempt: u32, kind: EventKind, second: u32) -> JobEvent {
    JobEvent {
        schema_version: SCHEMA_VERSION,
        run_id: run.id(),
        job: job.to_owned(),
        attempt,
        generation: 0,
        kind,
        at: at(second),
        worker: "w1".into(),
        error: (kind == EventKind::Failed).then(|| "boom".to_owned()),
        retry_at: None,
        output: None,
        spawned: 0,
        started_at: None,
    }
}

fn children(names: &[&str]) -> Vec<ChildSpec> {
    names.iter().map(|name| ChildSpec::new(*name, "noop")).collect()
}

/// A success of `job` that spawned `kids`.
fn spawning(run: &mut Run, job: &str, kids: &[&str], second: u32) -> Vec<Effect> {
    let mut success = event(run, job, 1, EventKind::Succeeded, second);
    success.spawned = kids.len() as u32;
    assert!(run.wants_children(&success));
    run.apply_with(&success, Spawned::from_children(children(kids)), at(second)).unwrap()
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
fn start_saves_every_job_then_the_run_then_dispatches_roots() {
    let (run, effects) = start(DIAMOND);
    let kinds: Vec<&str> = effects
        .iter()
        .map(|effect| match effect {
            Effect::SaveJob { .. } => "job",
            Effect::SaveRun(_) => "run",
            Effect::Dispatch { .. } => "dispatch",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["job", "job", "job", "job", "run", "dispatch"]);
    assert_eq!(dispatched(&effects), ["a"]);
    assert_eq!(run.job("a").unwrap().state, JobState::Queued);
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
}

#[test]
fn diamond_joins_only_after_both_branches() {
    let (mut run, _) = start(DIAMOND);
    run.apply(&event(&run, "a", 1, EventKind::Started, 1), at(1)).unwrap();
    let effects = run.apply(&event(&run, "a", 1, EventKind::Succeeded, 2), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["b", "c"]);
    run.apply(&event(&run, "b", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
    let effects = run.apply(&event(&run, "c", 1, EventKind::Succeeded, 4), at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["d"]);
    let effects = run.apply(&event(&run, "d", 1, EventKind::Succeeded, 5), at(5)).unwrap();
    assert!(
        effects.iter().any(|effect| matches!(effect, Effect::SaveRun(record) if record.state == RunState::Succeeded))
    );
    assert!(run.is_finished());
}

#[test]
fn a_final_failure_skips_what_is_blocked_and_fails_the_run() {
    let (mut run, _) = start(DIAMOND);
    run.apply(&event(&run, "a", 1, EventKind::Succeeded, 1), at(1)).unwrap();
    run.apply(&event(&run, "b", 1, EventKind::Failed, 2), at(2)).unwrap();
    assert_eq!(run.job("d").unwrap().state, JobState::Skipped);
    assert_eq!(run.record().state, RunState::Running, "c is still in flight");
    let effects = run.apply(&event(&run, "c", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.record().state, RunState::Failed);
    assert_eq!(run.record().error.as_deref(), Some("job `b` failed"));
    assert_eq!(run.job("b").unwrap().attempt_history[0].error.as_deref(), Some("boom"));
}

#[test]
fn a_retrying_failure_keeps_the_run_going_and_records_each_attempt() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(&event(&run, "a", 1, EventKind::Started, 1), at(1)).unwrap();
    let mut failure = event(&run, "a", 1, EventKind::Failed, 2);
    failure.retry_at = Some(at(12));
    run.apply(&failure, at(2)).unwrap();
    assert_eq!(run.job("a").unwrap().state, JobState::Retrying);
    run.apply(&event(&run, "a", 2, EventKind::Started, 12), at(12)).unwrap();
    run.apply(&event(&run, "a", 2, EventKind::Succeeded, 13), at(13)).unwrap();
    let job = run.job("a").unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.attempt_history.len(), 2);
    assert_eq!(job.started_at, Some(at(1)));
    assert_eq!(run.record().state, RunState::Succeeded);
}

#[test]
fn duplicates_and_stale_events_are_ignored() {
    let (mut run, _) = start(DIAMOND);
    let started = event(&run, "a", 1, EventKind::Started, 1);
    run.apply(&started, at(1)).unwrap();
    assert!(matches!(run.apply(&started, at(1)), Err(Ignored::Duplicate { .. })));
    let done = event(&run, "a", 1, EventKind::Succeeded, 2);
    run.apply(&done, at(2)).unwrap();
    assert!(matches!(run.apply(&done, at(2)), Err(Ignored::AlreadyFinished { .. })));
    assert!(matches!(run.apply(&event(&run, "zz", 1, EventKind::Started, 3), at(3)), Err(Ignored::UnknownJob(_))));
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
    let effects = run.apply(&done, at(5)).unwrap();
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
    run.apply(&first, at(5)).unwrap();
    let mut again = first.clone();
    again.worker = "w2".into();
    assert!(!saved(&run.apply(&again, at(6)).unwrap()).is_empty(), "the repeat is saved");
    assert_eq!(run.job("a").unwrap().attempt_history[0].redelivered_to, ["w2"]);
    assert!(run.apply(&again, at(7)).is_err(), "seen once, a repeat changes nothing");
}

#[test]
fn a_final_failure_is_dead_lettered_with_every_attempt() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(&event(&run, "a", 1, EventKind::Started, 1), at(1)).unwrap();
    let effects = run.apply(&final_failure(&run, "a", 1, 2), at(2)).unwrap();
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
    run.apply(&final_failure(&run, "a", 1, 1), at(1)).unwrap();
    assert_eq!(run.job("a2").unwrap().state, JobState::Skipped);
    assert_eq!(run.job("a3").unwrap().state, JobState::Skipped, "skips go all the way down");
    let effects = run.apply(&event(&run, "b", 1, EventKind::Succeeded, 2), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["b2"], "the other branch goes on");
    run.apply(&event(&run, "b2", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
}

#[test]
fn on_failure_stop_starts_nothing_new() {
    let yaml = TWO_BRANCHES.replace("on_failure: continue\n", "");
    let (mut run, _) = start(&yaml);
    run.apply(&final_failure(&run, "a", 1, 1), at(1)).unwrap();
    assert_eq!(run.job("b2").unwrap().state, JobState::Skipped);
    let effects = run.apply(&event(&run, "b", 1, EventKind::Succeeded, 2), at(2)).unwrap();
    assert!(dispatched(&effects).is_empty());
    assert_eq!(run.record().state, RunState::Failed);
}

#[test]
fn cancel_withdraws_queued_jobs_stops_running_ones_and_ends_the_run() {
    let (mut run, _) = start(TWO_BRANCHES);
    run.apply(&event(&run, "a", 1, EventKind::Started, 1), at(1)).unwrap();
    let effects = run.cancel(at(2)).unwrap();
    assert!(effects.contains(&Effect::Withdraw(run.id())), "the run's queued messages (b's) are withdrawn");
    assert!(effects.contains(&Effect::StopRun(run.id())), "workers are told to stop the run's running jobs (a)");
    assert_eq!(run.record().state, RunState::Cancelled);
    assert!(run.record().jobs.iter().all(|name| run.job(name).unwrap().state == JobState::Cancelled));
    assert!(matches!(
        run.apply(&event(&run, "a", 1, EventKind::Succeeded, 3), at(3)),
        Err(Ignored::AlreadyFinished { .. })
    ));
    assert!(matches!(run.cancel(at(4)), Err(Refused::Finished { .. })));
}

#[test]
fn retry_reruns_what_did_not_complete_in_a_new_generation() {
    let (mut run, _) = start(DIAMOND);
    run.apply(&event(&run, "a", 1, EventKind::Succeeded, 1), at(1)).unwrap();
    run.apply(&event(&run, "b", 1, EventKind::Succeeded, 2), at(2)).unwrap();
    run.apply(&final_failure(&run, "c", 1, 3), at(3)).unwrap();
    assert_eq!(run.record().state, RunState::Failed);
    assert!(matches!(run.rerun(Some("zz"), at(4)), Err(Refused::UnknownJob { .. })));
    let effects = run.rerun(None, at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["c"], "completed work is kept");
    let c = run.job("c").unwrap();
    assert_eq!((c.state, c.generation, c.attempt_offset), (JobState::Queued, 1, 1));
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
    assert_eq!(run.record().state, RunState::Running);
    // An event of the old generation changes nothing; the new attempt is number 2.
    assert!(matches!(run.apply(&final_failure(&run, "c", 1, 5), at(5)), Err(Ignored::StaleGeneration { .. })));
    let mut started = event(&run, "c", 2, EventKind::Started, 6);
    started.generation = 1;
    run.apply(&started, at(6)).unwrap();
    let mut done = event(&run, "c", 2, EventKind::Succeeded, 7);
    done.generation = 1;
    let effects = run.apply(&done, at(7)).unwrap();
    assert_eq!(dispatched(&effects), ["d"]);
    let mut d_done = event(&run, "d", 1, EventKind::Succeeded, 8);
    d_done.generation = 1;
    run.apply(&d_done, at(8)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
    assert!(matches!(run.rerun(None, at(9)), Err(Refused::NothingToRetry { .. })));
    let again = run.rerun(Some("b"), at(9)).unwrap();
    assert_eq!(dispatched(&again), ["b"], "one job and what needs it run again");
    assert_eq!(run.job("d").unwrap().state, JobState::Blocked);
}

#[test]
fn retry_refuses_a_running_run() {
    let (mut run, _) = start(DIAMOND);
    assert!(matches!(run.rerun(None, at(1)), Err(Refused::StillRunning { .. })));
    assert!(matches!(run.rerun(Some("a"), at(1)), Err(Refused::InFlight { .. })));
}

#[test]
fn the_same_attempt_delivered_to_another_worker_is_recorded_once() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    run.apply(&event(&run, "a", 1, EventKind::Started, 1), at(1)).unwrap();
    let mut elsewhere = event(&run, "a", 1, EventKind::Started, 2);
    elsewhere.worker = "w2".into();
    let effects = run.apply(&elsewhere, at(2)).unwrap();
    assert_eq!(effects.len(), 1, "only the job record is saved");
    assert_eq!(run.job("a").unwrap().attempt_history[0].redelivered_to, ["w2"]);
    assert!(run.apply(&elsewhere, at(2)).is_err(), "handling it again changes nothing");
    run.apply(&event(&run, "a", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    let mut late = event(&run, "a", 1, EventKind::Started, 4);
    late.worker = "w3".into();
    run.apply(&late, at(4)).unwrap();
    assert_eq!(run.job("a").unwrap().attempt_history[0].redelivered_to, ["w2", "w3"], "recorded after completion too");
    assert_eq!(run.job("a").unwrap().state, JobState::Completed);
}

#[test]
fn a_redelivered_start_or_failure_of_a_finished_attempt_changes_nothing() {
    let (mut run, _) = start("name: r\njobs:\n  a: { run: noop }\n");
    let started = event(&run, "a", 1, EventKind::Started, 1);
    run.apply(&started, at(1)).unwrap();
    let mut failure = event(&run, "a", 1, EventKind::Failed, 2);
    failure.retry_at = Some(at(12));
    run.apply(&failure, at(2)).unwrap();
    let before = run.job("a").unwrap().clone();
    assert!(matches!(run.apply(&started, at(3)), Err(Ignored::Duplicate { .. })));
    assert!(matches!(run.apply(&failure, at(3)), Err(Ignored::Duplicate { .. })));
    assert_eq!(run.job("a").unwrap(), &before);
    assert_eq!(before.state, JobState::Retrying);
}

#[test]
fn restore_finishes_what_a_crash_interrupted() {
    let (mut run, _) = start(DIAMOND);
    let effects = run.apply(&event(&run, "a", 1, EventKind::Succeeded, 1), at(1)).unwrap();
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
    let (restored, effects) = Run::restore(run.record().clone(), stored, at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["b", "c"]);
    assert_eq!(restored.queued_jobs().count(), 2);
}

// ---- simulation ----

/// What the store and the streams hold in the simulation.
#[derive(Default)]
struct World {
    runs: HashMap<RunId, RunRecord>,
    jobs: HashMap<String, JobRecord>,
    /// (job, generation) → times published.
    published: HashMap<(String, u32), u32>,
    /// Jobs published and not yet picked up by the simulated worker.
    job_queue: Vec<String>,
    /// Events published and not yet acknowledged by the coordinator.
    event_queue: Vec<JobEvent>,
}

impl World {
    /// Executes effects as the shell does, stopping after `budget` of them (a crash).
    fn execute(&mut self, run: &Run, effects: &[Effect], budget: usize) -> bool {
        // As the shell does: the last write of each record, in the order of those writes,
        // then the dispatches.
        let saves = crate::store::saves_of(effects);
        let dispatches: Vec<&Effect> =
            effects.iter().filter(|effect| matches!(effect, Effect::Dispatch { .. })).collect();
        for (done, effect) in saves.iter().chain(dispatches.iter()).enumerate() {
            if done == budget {
                return false;
            }
            match effect {
                Effect::SaveJob { job, .. } => {
                    self.jobs.insert(job.clone(), run.job(job).expect("the engine saves its own jobs").clone());
                }
                Effect::SaveRun(run) => {
                    self.runs.insert(run.id, RunRecord::clone(run));
                }
                Effect::Dispatch { job, generation, .. } => self.publish(job, *generation),
                _ => {}
            }
        }
        true
    }

    fn publish(&mut self, job: &str, generation: u32) {
        *self.published.entry((job.to_owned(), generation)).or_default() += 1;
        self.job_queue.push(job.to_owned());
    }
}

fn dag_yaml(needs: &[Vec<usize>], max_parallel: Option<u32>) -> String {
    let mut yaml = String::from("name: sim\n");
    if let Some(limit) = max_parallel {
        yaml.push_str(&format!("max_parallel: {limit}\n"));
    }
    yaml.push_str("jobs:\n");
    for (i, deps) in needs.iter().enumerate() {
        let deps: Vec<String> = deps.iter().map(|d| format!("j{d}")).collect();
        yaml.push_str(&format!("  j{i}: {{ run: noop, needs: [{}] }}\n", deps.join(", ")));
    }
    yaml
}

fn needs_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1usize..25).prop_flat_map(|n| {
        (0..n).map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3))).collect::<Vec<_>>()
    })
}

fn simulate(needs: Vec<Vec<usize>>, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let max_parallel = if rng.random_range(0..2) == 0 { None } else { Some(rng.random_range(1..4u32)) };
    let yaml = dag_yaml(&needs, max_parallel);
    let (mut run, effects) = start(&yaml);
    let mut world = World::default();
    world.execute(&run, &effects, usize::MAX);
    let mut clock = 1u32;
    let mut started: HashSet<String> = HashSet::new();
    // What each job's worker spawned: the shell reads it from the spawn stream.
    let mut spawns: HashMap<String, Vec<ChildSpec>> = HashMap::new();
    for _step in 0..20_000 {
        if run.is_finished() {
            break;
        }
        clock += 1;
        let choice = rng.random_range(0..10);
        if choice < 4 && !world.job_queue.is_empty() {
            // A worker takes a job: it reports the start, and later the success, sometimes
            // with children (workflow jobs and their children, two levels at most).
            let job = world.job_queue.swap_remove(rng.random_range(0..world.job_queue.len()));
            prop_assert!(started.insert(job.clone()), "job {} started twice", job);
            world.event_queue.push(event(&run, &job, 1, EventKind::Started, clock));
            let mut success = event(&run, &job, 1, EventKind::Succeeded, clock + 1);
            if job.matches('.').count() < 2 && rng.random_range(0..3) == 0 {
                let kids: Vec<ChildSpec> =
                    (0..rng.random_range(1..5)).map(|i| ChildSpec::new(format!("c{i}"), "noop")).collect();
                success.spawned = kids.len() as u32;
                spawns.insert(job.clone(), kids);
            }
            world.event_queue.push(success);
        } else if !world.event_queue.is_empty() {
            // The coordinator handles some pending event (reordered), maybe crashing midway.
            let index = rng.random_range(0..world.event_queue.len());
            let incoming = world.event_queue[index].clone();
            let before: Vec<JobRecord> = run.all_paths().iter().map(|name| run.job(name).unwrap().clone()).collect();
            let kids = if run.wants_children(&incoming) { spawns[&incoming.job].clone() } else { Vec::new() };
            let outcome = run.apply_with(&incoming, Spawned::from_children(kids.clone()), at(clock));
            if let Ok(effects) = &outcome {
                for effect in effects {
                    if let Effect::Dispatch { job, .. } = effect {
                        let message = run.dispatch_message(job);
                        for need in &message.needs {
                            prop_assert_eq!(
                                run.job(need).unwrap().state,
                                JobState::Completed,
                                "dispatched {} before {}",
                                message.job,
                                need
                            );
                        }
                    }
                }
                // A spawning parent's last write must follow its children's last writes (the
                // shell keeps only the last write of each record; restore relies on the order).
                if !kids.is_empty() {
                    let order = saved(effects);
                    let last = |name: &str| order.iter().rposition(|saved| saved == name);
                    for kid in &kids {
                        let path = format!("{}.{}", incoming.job, kid.name);
                        prop_assert!(last(&incoming.job) > last(&path), "parent saved before child {}", path);
                    }
                }
            } else {
                let after: Vec<JobRecord> = run.all_paths().iter().map(|name| run.job(name).unwrap().clone()).collect();
                prop_assert_eq!(before, after, "an ignored event changed state");
            }
            let crash = rng.random_range(0..8) == 0;
            let effects = outcome.unwrap_or_default();
            let budget = if crash { rng.random_range(0..=effects.len()) } else { usize::MAX };
            if world.execute(&run, &effects, budget) {
                if rng.random_range(0..5) != 0 {
                    world.event_queue.swap_remove(index); // acked; otherwise redelivered later
                }
            } else {
                // Restart: rebuild from the store, then re-publish queued jobs whose message is
                // neither in the job queue nor already taken by the worker (the shell's lookup).
                let record = world.runs[&run.id()].clone();
                let (restored, effects) = Run::restore(record, world.jobs.clone(), at(clock))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                run = restored;
                world.execute(&run, &effects, usize::MAX);
                let lost: Vec<(String, u32)> = run
                    .queued_jobs()
                    .filter(|job| !world.job_queue.contains(&job.name) && !started.contains(&job.name))
                    .map(|job| (job.name.clone(), job.generation))
                    .collect();
                for (job, generation) in lost {
                    world.publish(&job, generation);
                }
            }
        }
        for (key, count) in &world.published {
            prop_assert!(*count <= 1, "{:?} dispatched {} times", key, count);
        }
        if let Some(limit) = max_parallel {
            let in_flight = run.all_paths().iter().filter(|name| run.job(name).unwrap().state.is_in_flight()).count();
            prop_assert!(in_flight <= limit as usize, "{} jobs in flight, max_parallel {}", in_flight, limit);
        }
    }
    prop_assert_eq!(run.record().state, RunState::Succeeded);
    prop_assert_eq!(world.runs[&run.id()].state, RunState::Succeeded);
    for name in run.all_paths() {
        prop_assert_eq!(world.jobs[&name].state, JobState::Completed);
    }
    for (parent, kids) in &spawns {
        if world.jobs[parent].children > 0 {
            for kid in kids {
                let path = format!("{parent}.{}", kid.name);
                prop_assert!(started.contains(&path), "child {} never ran", path);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_dags_with_duplicates_reordering_and_crashes_complete_exactly_once(needs in needs_strategy(), seed in any::<u64>()) {
        simulate(needs, seed)?;
    }
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
    let effects = run.apply(&event(&run, "fan.a", 1, EventKind::Succeeded, 2), at(2)).unwrap();
    assert_eq!(dispatched(&effects), ["fan.c"]);
    run.apply(&event(&run, "fan.b", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    assert_eq!(run.job("join").unwrap().state, JobState::Blocked);
    let effects = run.apply(&event(&run, "fan.c", 1, EventKind::Succeeded, 4), at(4)).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
    assert_eq!(dispatched(&effects), ["join"]);
}

#[test]
fn a_failed_child_fails_its_parent_and_retry_reruns_only_that_child() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b"], 1);
    run.apply(&event(&run, "other", 1, EventKind::Succeeded, 1), at(1)).unwrap();
    let effects = run.apply(&event(&run, "fan.a", 1, EventKind::Failed, 2), at(2)).unwrap();
    assert!(effects.iter().any(|effect| matches!(effect, Effect::DeadLetter(letter) if letter.job.job == "fan.a")));
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting, "b is still running");
    run.apply(&event(&run, "fan.b", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    let fan = run.job("fan").unwrap();
    assert_eq!(fan.state, JobState::Failed);
    assert!(fan.error.as_deref().unwrap().starts_with("1 of 2 children did not complete; first: `fan.a` failed"));
    assert_eq!(run.job("join").unwrap().state, JobState::Skipped);
    assert_eq!(run.record().state, RunState::Failed);

    let effects = run.rerun(None, at(4)).unwrap();
    assert_eq!(dispatched(&effects), ["fan.a"], "fan is not run again, b stays completed");
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting);
    let mut again = event(&run, "fan.a", 2, EventKind::Succeeded, 5);
    again.generation = 1;
    let effects = run.apply(&again, at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["join"]);
    let mut join = event(&run, "join", 1, EventKind::Succeeded, 6);
    join.generation = 1;
    run.apply(&join, at(6)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
}

#[test]
fn children_that_cannot_be_read_or_are_invalid_fail_the_parent_clearly() {
    let (mut run, _) = start(FAN);
    let mut success = event(&run, "fan", 1, EventKind::Succeeded, 1);
    success.spawned = 3;
    run.apply_with(&success, Spawned::from_children(children(&["a", "b"])), at(1)).unwrap();
    let fan = run.job("fan").unwrap();
    assert_eq!(fan.state, JobState::Failed);
    assert_eq!(fan.error.as_deref(), Some("the job spawned 3 children but 2 could be read from the spawn stream"));

    let (mut run, _) = start(FAN);
    let mut success = event(&run, "fan", 1, EventKind::Succeeded, 1);
    success.spawned = 2;
    run.apply_with(&success, Spawned::from_children(children(&["a", "a"])), at(1)).unwrap();
    assert!(run.job("fan").unwrap().error.as_deref().unwrap().contains("two children are named `a`"));
}

#[test]
fn restore_keeps_a_waiting_parent_and_its_children_and_drops_a_half_written_spawn() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b", "c"], 1);
    run.apply(&event(&run, "fan.a", 1, EventKind::Succeeded, 2), at(2)).unwrap();
    // What the store holds: each record as the engine saves it (a child with its definition).
    let stored: HashMap<String, JobRecord> = run
        .all_paths()
        .into_iter()
        .map(|path| {
            let record = run.job(&path).unwrap().clone();
            (path, record)
        })
        .collect();
    let (restored, effects) = Run::restore(run.record().clone(), stored.clone(), at(3)).unwrap();
    assert!(dispatched(&effects).is_empty(), "b and c are queued already: {effects:?}");
    assert_eq!(restored.all_paths(), ["fan", "fan.a", "fan.b", "fan.c", "join", "other"]);

    // The parent's record still says `running`: its children were being written.
    let mut half = stored;
    half.get_mut("fan").unwrap().state = JobState::Running;
    half.get_mut("fan").unwrap().children = 0;
    let (restored, _) = Run::restore(run.record().clone(), half, at(3)).unwrap();
    assert!(restored.job("fan.a").is_none());
}

#[test]
fn retry_of_a_job_whose_need_did_not_complete_is_refused_clearly() {
    let (mut run, _) = start(DIAMOND);
    run.apply(&final_failure(&run, "a", 1, 1), at(1)).unwrap();
    assert_eq!(run.job("b").unwrap().state, JobState::Skipped);
    assert_eq!(run.rerun(Some("b"), at(2)), Err(Refused::NeedsFirst { job: "b".into(), need: "a".into() }));
    assert!(run.rerun(Some("a"), at(2)).is_ok(), "retrying the need itself runs it and what needs it");
}

#[test]
fn a_failed_child_can_be_retried_while_its_siblings_still_run() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["a", "b"], 1);
    run.apply(&event(&run, "fan.b", 1, EventKind::Started, 2), at(2)).unwrap();
    run.apply(&final_failure(&run, "fan.a", 1, 2), at(2)).unwrap();
    let effects = run.rerun(Some("fan.a"), at(3)).unwrap();
    assert_eq!(dispatched(&effects), ["fan.a"]);
    assert_eq!(run.job("fan.b").unwrap().state, JobState::Running, "the sibling is left alone");
    assert_eq!(run.job("fan").unwrap().state, JobState::Waiting);
}

#[test]
fn retrying_a_completed_child_that_spawned_finishes_each_parent_once() {
    let (mut run, _) = start(FAN);
    spawning(&mut run, "fan", &["c"], 1);
    spawning(&mut run, "fan.c", &["g"], 2);
    run.apply(&event(&run, "fan.c.g", 1, EventKind::Succeeded, 3), at(3)).unwrap();
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
    run.apply(&event(&run, "join", 1, EventKind::Succeeded, 4), at(4)).unwrap();
    run.apply(&event(&run, "other", 1, EventKind::Succeeded, 4), at(4)).unwrap();
    assert_eq!(run.record().state, RunState::Succeeded);
    // fan.c has nothing unfinished: it completes at once, then fan, then join runs again.
    let effects = run.rerun(Some("fan.c"), at(5)).unwrap();
    assert_eq!(dispatched(&effects), ["join"]);
    assert_eq!(run.job("fan").unwrap().state, JobState::Completed);
}
