//! The engine simulation: one run of a random DAG, driven by one seeded RNG, through workers
//! that retry, fail for good, spawn children and die (JetStream gives up on their messages),
//! users who cancel, retry, replay and mark jobs by hand, and a coordinator that handles inputs out of order and
//! twice and crashes between effects, then is restored from the store. Every step checks the
//! engine's invariants; a failure names the seed that replays it (`SLUICE_SIM_SEED`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_proto::spawn::parent_of;
use sluice_proto::{
    ChildSpec, EventKind, JobEvent, JobRecord, JobState, MarkAs, RequestId, RunId, RunRecord, RunState,
};

use super::{at, saved, start_with_id};
use crate::engine::{Effect, Input, Run, Spawned};

/// Steps one simulation may take; a run not finished by then is a liveness failure.
const STEPS_MAX: usize = 60_000;
/// Reruns (retries and replays) one simulation asks for at most.
const RERUNS_MAX: u32 = 3;
/// Marks one simulation asks for at most.
const MARKS_MAX: u32 = 2;

/// A job message in the jobs stream.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    job: String,
    generation: u32,
    attempt_offset: u32,
}

/// Where a spawn's children are in the spawn stream: (job, generation, attempt).
type SpawnKey = (String, u32, u32);

/// An input waiting in a stream for the coordinator.
#[derive(Clone, Debug)]
enum Pending {
    Event(JobEvent),
    Exhausted {
        job: String,
        generation: u32,
        attempt_offset: u32,
        deliveries: u64,
    },
    Cancel,
    Rerun(Option<String>),
    /// A user's mark of a job (the request id stays the same when it comes again).
    Mark {
        job: String,
        as_: MarkAs,
        request_id: RequestId,
    },
}

/// What the store and the streams hold. Ordered maps only: nothing here depends on hash order.
#[derive(Default)]
struct World {
    run: Option<RunRecord>,
    jobs: BTreeMap<String, JobRecord>,
    /// (job, generation) → times published.
    published: BTreeMap<(String, u32), u32>,
    /// Messages published and not yet taken by a worker.
    job_queue: Vec<Message>,
    /// Inputs published and not yet acknowledged by the coordinator.
    inputs: Vec<Pending>,
    /// The spawn stream: what each (job, generation, attempt) spawned.
    spawns: BTreeMap<SpawnKey, Vec<ChildSpec>>,
    /// Messages workers took, as (job, generation).
    taken: BTreeSet<(String, u32)>,
}

impl World {
    /// Executes effects as the shell does, stopping after `budget` saves and dispatches (a
    /// crash). Returns whether all were carried out.
    fn execute(&mut self, run: &Run, effects: &[Effect], budget: usize) -> bool {
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
                Effect::SaveRun(record) => self.run = Some(RunRecord::clone(record)),
                Effect::Dispatch { job, generation, .. } => {
                    let message = run.dispatch_message(job);
                    // A later effect dispatches the newer generation (as the shell does).
                    if message.generation == *generation {
                        self.publish(Message {
                            job: job.clone(),
                            generation: *generation,
                            attempt_offset: message.attempt_offset,
                        });
                    }
                }
                _ => {}
            }
        }
        if effects.iter().any(|effect| matches!(effect, Effect::Withdraw(_))) {
            self.job_queue.clear();
        }
        for effect in effects {
            if let Effect::WithdrawJob { job, .. } = effect {
                self.job_queue.retain(|message| message.job != *job);
            }
        }
        true
    }

    fn publish(&mut self, message: Message) {
        *self.published.entry((message.job.clone(), message.generation)).or_default() += 1;
        self.job_queue.push(message);
    }
}

/// What a simulation exercised, to check the seeds cover every kind of input.
#[derive(Debug, Default)]
struct Coverage {
    retries: usize,
    permanent_failures: usize,
    exhausted: usize,
    spawns: usize,
    held: usize,
    cancels_applied: usize,
    reruns_applied: usize,
    marks_applied: usize,
    refusals: usize,
    crashes: usize,
    /// Failed children a parent's `max_child_failures` let the run succeed with.
    judged_failures: usize,
    ended: BTreeMap<&'static str, usize>,
}

struct Sim {
    rng: StdRng,
    run: Run,
    world: World,
    clock: u32,
    reruns_left: u32,
    cancels_left: u32,
    marks_left: u32,
    /// Whether a fate that keeps the run from succeeding was drawn (a permanent failure,
    /// exhausted deliveries, an unreadable spawn, a cancel).
    spoiled: bool,
    /// Every input and its effects, to compare two runs of one seed.
    trace: Vec<String>,
    coverage: Coverage,
}

fn dag_yaml(rng: &mut StdRng) -> String {
    let mut yaml = String::from("name: sim\n");
    if rng.random_range(0..2) == 0 {
        yaml.push_str("on_failure: continue\n");
    }
    if rng.random_range(0..2) == 0 {
        yaml.push_str(&format!("max_parallel: {}\n", rng.random_range(1..4u32)));
    }
    yaml.push_str("jobs:\n");
    for i in 0..rng.random_range(1..13usize) {
        let mut needs: Vec<String> = (0..i).filter(|_| rng.random_range(0..4) == 0).map(|d| format!("j{d}")).collect();
        needs.truncate(3);
        let limit = match rng.random_range(0..3) {
            0 => format!(", max_parallel: {}", rng.random_range(1..3u32)),
            _ => String::new(),
        };
        // Children's failures judged by their parent (up to one tolerated), sometimes.
        let limit = match rng.random_range(0..4) {
            0 => format!("{limit}, max_child_failures: {}", rng.random_range(0..2u32)),
            _ => limit,
        };
        let when = match (needs.is_empty(), rng.random_range(0..6)) {
            (false, 0) => ", when: always",
            (false, 1) => ", when: on_failure",
            _ => "",
        };
        yaml.push_str(&format!("  j{i}: {{ run: noop, needs: [{}]{limit}{when} }}\n", needs.join(", ")));
    }
    yaml
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let yaml = dag_yaml(&mut rng);
        let id = RunId::from(uuid::Uuid::from_u128(rng.random()));
        let (run, effects) = start_with_id(&yaml, id);
        let mut world = World::default();
        world.execute(&run, &effects, usize::MAX);
        if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
            eprintln!("{yaml}");
        }
        let trace = vec![yaml, format!("{effects:?}")];
        Self {
            rng,
            run,
            world,
            clock: 1,
            reruns_left: RERUNS_MAX,
            cancels_left: 1,
            marks_left: MARKS_MAX,
            spoiled: false,
            trace,
            coverage: Coverage::default(),
        }
    }

    /// Keeps a line of the trace; prints it too with `SLUICE_SIM_TRACE` set.
    fn note(&mut self, line: String) {
        if std::env::var_os("SLUICE_SIM_TRACE").is_some() {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    /// One step: a user, a worker or the coordinator acts. Returns whether to go on.
    fn step(&mut self) -> Result<bool, TestCaseError> {
        self.clock += 1;
        let control_pending = self
            .world
            .inputs
            .iter()
            .any(|input| matches!(input, Pending::Cancel | Pending::Rerun(_) | Pending::Mark { .. }));
        if self.run.is_finished() && !control_pending {
            if self.reruns_left == 0 || self.rng.random_range(0..3) == 0 {
                return Ok(false);
            }
            self.reruns_left -= 1;
            let only = self.rerun_target();
            self.world.inputs.push(Pending::Rerun(only));
        }
        let choice = self.rng.random_range(0..200);
        if choice == 0 && self.cancels_left > 0 {
            self.cancels_left -= 1;
            self.spoiled = true;
            self.world.inputs.push(Pending::Cancel);
        } else if choice == 1 && self.reruns_left > 0 {
            // A replay of a dead letter while the run may still be going.
            if let Some(job) = self.pick(|job| job.state == JobState::Failed) {
                self.reruns_left -= 1;
                self.world.inputs.push(Pending::Rerun(Some(job)));
            }
        } else if choice == 2 && self.marks_left > 0 {
            // A user ends a workflow job by hand (the engine refuses what it must).
            let workflow_job = |job: &JobRecord| job.parent.is_none();
            if let Some(job) = self.pick(workflow_job) {
                self.marks_left -= 1;
                let as_ = if self.rng.random_range(0..2) == 0 { MarkAs::Succeeded } else { MarkAs::Skipped };
                let id = RunId::from(uuid::Uuid::from_u128(self.rng.random()));
                let request_id: RequestId = id.to_string().parse().expect("a request id is a uuid");
                self.world.inputs.push(Pending::Mark { job, as_, request_id });
            }
        } else if choice < 80 && !self.world.job_queue.is_empty() {
            self.work()?;
        } else if !self.world.inputs.is_empty() {
            self.handle()?;
        } else if !self.world.job_queue.is_empty() {
            self.work()?;
        } else {
            let unfinished: Vec<String> = self
                .run
                .all_paths()
                .into_iter()
                .filter_map(|path| {
                    self.run.job(&path).filter(|job| !job.state.is_terminal()).map(|job| format!("{path}: {job:?}"))
                })
                .collect();
            prop_assert!(
                self.run.is_finished(),
                "stuck: nothing queued, nothing to handle, unfinished: {:#?}",
                unfinished
            );
        }
        self.check_step()?;
        Ok(true)
    }

    /// Some job matching `wanted`, chosen at random in path order.
    fn pick(&mut self, wanted: impl Fn(&JobRecord) -> bool) -> Option<String> {
        let paths: Vec<String> =
            self.run.all_paths().into_iter().filter(|path| self.run.job(path).is_some_and(&wanted)).collect();
        (!paths.is_empty()).then(|| paths[self.rng.random_range(0..paths.len())].clone())
    }

    /// What a retry of a finished run names: the whole run, or one job (any job: the engine
    /// refuses what it must).
    fn rerun_target(&mut self) -> Option<String> {
        if self.rng.random_range(0..2) == 0 { None } else { self.pick(|_| true) }
    }

    fn event(&self, message: &Message, attempt: u32, kind: EventKind) -> JobEvent {
        let worker = format!("w{}", attempt % 3);
        let mut event =
            JobEvent::new(self.run.id(), &message.job, attempt, message.generation, kind, &worker, at(self.clock));
        event.error = (kind == EventKind::Failed).then(|| "boom".to_owned());
        event
    }

    /// A worker takes a message and runs it to its fate: some failed attempts with retries,
    /// then a success (maybe spawning children), a permanent failure, or deaths until
    /// JetStream gives up.
    fn work(&mut self) -> Result<(), TestCaseError> {
        let message = self.world.job_queue.swap_remove(self.rng.random_range(0..self.world.job_queue.len()));
        let key = (message.job.clone(), message.generation);
        prop_assert!(self.world.taken.insert(key.clone()), "{:?} taken by two workers", key);
        let retries = if self.rng.random_range(0..4) == 0 { self.rng.random_range(1..=2u32) } else { 0 };
        self.coverage.retries += retries as usize;
        let mut attempt = message.attempt_offset;
        for _ in 0..retries {
            attempt += 1;
            self.world.inputs.push(Pending::Event(self.event(&message, attempt, EventKind::Started)));
            let mut failure = self.event(&message, attempt, EventKind::Failed);
            failure.retry_at = Some(at(self.clock + 5));
            self.world.inputs.push(Pending::Event(failure));
        }
        attempt += 1;
        let fate = self.rng.random_range(0..40);
        if self.rng.random_range(0..4) != 0 {
            self.world.inputs.push(Pending::Event(self.event(&message, attempt, EventKind::Started)));
        }
        match fate {
            0 => {
                self.spoiled = true;
                self.coverage.permanent_failures += 1;
                self.world.inputs.push(Pending::Event(self.event(&message, attempt, EventKind::Failed)));
            }
            1 => {
                self.spoiled = true;
                self.coverage.exhausted += 1;
                let Message { job, generation, attempt_offset } = message;
                let deliveries = u64::from(retries) + 1;
                self.world.inputs.push(Pending::Exhausted { job, generation, attempt_offset, deliveries });
            }
            _ => self.succeed(&message, attempt),
        }
        Ok(())
    }

    /// A success, its start time in the outcome; sometimes with children written to the
    /// spawn stream (two levels at most), rarely with a batch missing.
    fn succeed(&mut self, message: &Message, attempt: u32) {
        let mut success = self.event(message, attempt, EventKind::Succeeded);
        success.started_at = Some(at(self.clock));
        if self.rng.random_range(0..6) == 0 {
            // The same attempt, run again by another worker after a redelivery.
            success.worker = "w-other".into();
        }
        if message.job.matches('.').count() < 2 && self.rng.random_range(0..4) == 0 {
            let tolerant = self.rng.random_range(0..4) == 0;
            let kids: Vec<ChildSpec> = (0..self.rng.random_range(1..5))
                .map(|i| ChildSpec {
                    max_child_failures: tolerant.then_some(1),
                    ..ChildSpec::new(format!("c{i}"), "noop")
                })
                .collect();
            success.spawned = kids.len() as u32;
            if self.rng.random_range(0..30) == 0 {
                self.spoiled = true;
                success.spawned += 1;
            }
            self.world.spawns.insert((message.job.clone(), message.generation, attempt), kids);
        }
        self.world.inputs.push(Pending::Event(success));
    }

    fn input_of(&self, pending: &Pending) -> Input {
        match pending.clone() {
            Pending::Event(event) => Input::Event(event),
            Pending::Exhausted { job, generation, attempt_offset, deliveries } => Input::DeliveriesExhausted {
                job,
                generation,
                attempt_offset,
                deliveries,
                reason: format!("JetStream gave up after {deliveries} deliveries"),
            },
            Pending::Cancel => Input::Cancel,
            Pending::Rerun(only) => Input::Rerun { only, spec: None },
            Pending::Mark { job, as_, request_id } => {
                Input::Mark { job, as_, output: None, by: "sim".into(), request_id: Some(request_id) }
            }
        }
    }

    /// Every record the engine holds, and its run record.
    fn snapshot(&self) -> (RunRecord, Vec<JobRecord>) {
        let jobs = self.run.all_paths().iter().map(|path| self.run.job(path).unwrap().clone()).collect();
        (self.run.record().clone(), jobs)
    }

    /// The coordinator handles some pending input (reordered), maybe crashing midway.
    fn handle(&mut self) -> Result<(), TestCaseError> {
        let index = self.rng.random_range(0..self.world.inputs.len());
        let pending = self.world.inputs[index].clone();
        let before = self.snapshot();
        let input = self.input_of(&pending);
        self.note(format!("{input:?}"));
        let mut outcome = self.run.apply(input, at(self.clock));
        let mut spawn = None;
        let wanted = match outcome.as_deref() {
            Ok([Effect::ReadChildren(event)]) => Some(event.clone()),
            _ => None,
        };
        if let Some(event) = wanted {
            let key = (event.job.clone(), event.generation, event.attempt);
            let kids = self.world.spawns.get(&key).cloned();
            prop_assert!(kids.is_some(), "children of {:?} asked for after they were taken", key);
            let children = Spawned::from_children(kids.clone().unwrap_or_default());
            outcome = self.run.apply(Input::ChildrenRead { event, children }, at(self.clock));
            spawn = Some((key, kids.unwrap_or_default()));
        }
        match &outcome {
            Ok(effects) => self.check_effects(effects, spawn.as_ref())?,
            Err(_) => prop_assert_eq!(&before, &self.snapshot(), "an input that changed nothing changed state"),
        }
        self.count(&pending, &outcome);
        let effects = outcome.unwrap_or_default();
        self.note(format!("{effects:?}"));
        self.note(format!("held: {:?}", self.run.held));
        let crash = self.rng.random_range(0..8) == 0;
        let budget = if crash { self.rng.random_range(0..=effects.len()) } else { usize::MAX };
        if !self.world.execute(&self.run, &effects, budget) {
            return self.restart();
        }
        // Events are sometimes not acknowledged in time and come again; the rest is acked.
        let redelivered = matches!(pending, Pending::Event(_)) && self.rng.random_range(0..5) == 0;
        if !redelivered {
            self.world.inputs.swap_remove(index);
            if let Some((key, _)) = spawn {
                self.world.spawns.remove(&key);
            }
        }
        Ok(())
    }

    fn count(&mut self, pending: &Pending, outcome: &Result<Vec<Effect>, crate::engine::NotApplied>) {
        match (pending, outcome) {
            (Pending::Cancel, Ok(_)) => self.coverage.cancels_applied += 1,
            (Pending::Rerun(_), Ok(_)) => self.coverage.reruns_applied += 1,
            (Pending::Mark { .. }, Ok(_)) => self.coverage.marks_applied += 1,
            (Pending::Cancel | Pending::Rerun(_) | Pending::Mark { .. }, Err(_)) => self.coverage.refusals += 1,
            _ => {}
        }
        if !self.run.held.is_empty() {
            self.coverage.held += 1;
        }
    }

    /// What every applied input's effects must say.
    fn check_effects(
        &self,
        effects: &[Effect],
        spawn: Option<&(SpawnKey, Vec<ChildSpec>)>,
    ) -> Result<(), TestCaseError> {
        for effect in effects {
            match effect {
                Effect::Dispatch { job, .. } => {
                    // `on_success` needs what it needs completed; the other rules, finished.
                    let on_success = self.run.on_success(job);
                    for need in &self.run.dispatch_message(job).needs {
                        let state = self.run.job(need).unwrap().state;
                        if on_success {
                            prop_assert_eq!(state, JobState::Completed, "dispatched {} before {}", job, need);
                        } else {
                            prop_assert!(state.is_terminal(), "dispatched {} before {} finished", job, need);
                        }
                    }
                }
                Effect::DeadLetter(letter) => {
                    let state = self.run.job(&letter.job.job).unwrap().state;
                    prop_assert_eq!(state, JobState::Failed, "dead-lettered {}", &letter.job.job);
                }
                Effect::ReadChildren(event) => prop_assert!(false, "children asked for twice: {}", event.job),
                _ => {}
            }
        }
        // A spawning parent's last write must follow its children's last writes (the shell
        // keeps only the last write of each record; restore relies on the order).
        if let Some(((parent, _, _), kids)) = spawn
            && self.run.job(parent).is_some_and(|job| job.state == JobState::Waiting)
        {
            let order = saved(effects);
            let last = |name: &str| order.iter().rposition(|saved| saved == name);
            for kid in kids {
                let path = format!("{parent}.{}", kid.name);
                prop_assert!(last(parent) > last(&path), "parent saved before child {}", path);
            }
        }
        Ok(())
    }

    /// The coordinator restarts: rebuilds the run from the store, then re-publishes queued
    /// jobs whose message is neither in the queue nor taken (the shell's lookup).
    fn restart(&mut self) -> Result<(), TestCaseError> {
        self.coverage.crashes += 1;
        let record = self.world.run.clone().expect("the run record is stored at start");
        let stored: HashMap<String, JobRecord> = self.world.jobs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (restored, effects) = Run::restore(record, self.run.spec().clone(), stored, at(self.clock))
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        self.run = restored;
        self.note(format!("restored: {effects:?}"));
        self.world.execute(&self.run, &effects, usize::MAX);
        let lost: Vec<Message> = self
            .run
            .jobs_in(JobState::Queued)
            .map(|job| Message {
                job: job.name.clone(),
                generation: job.generation,
                attempt_offset: job.attempt_offset,
            })
            .filter(|message| {
                !self.world.job_queue.contains(message)
                    && !self.world.taken.contains(&(message.job.clone(), message.generation))
            })
            .collect();
        for message in lost {
            self.world.publish(message);
        }
        Ok(())
    }

    /// What every step must leave true: the engine's own invariants, and what the world saw.
    fn check_step(&self) -> Result<(), TestCaseError> {
        self.run.check_invariants();
        for (key, count) in &self.world.published {
            prop_assert!(*count <= 1, "{:?} dispatched {} times", key, count);
        }
        let mut in_flight: BTreeMap<&str, usize> = BTreeMap::new();
        for path in self.run.all_paths().iter() {
            let job = self.run.job(path).unwrap();
            if job.state.is_in_flight() {
                *in_flight.entry(job.parent.as_deref().unwrap_or("")).or_default() += 1;
            }
        }
        let spec = self.run.spec().clone();
        if let Some(limit) = spec.max_parallel {
            let total: usize = in_flight.values().sum();
            prop_assert!(total <= limit as usize, "{} jobs in flight, max_parallel {}", total, limit);
        }
        for (parent, count) in in_flight.iter().filter(|(parent, _)| !parent.is_empty()) {
            let limit = spec.jobs.get(*parent).and_then(|job| job.max_parallel);
            prop_assert!(
                limit.is_none_or(|limit| *count <= limit as usize),
                "{} children of {} in flight",
                count,
                parent
            );
        }
        Ok(())
    }

    /// What must hold once the run is over.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        let state = self.run.record().state;
        prop_assert!(self.run.is_finished(), "not finished after {} steps: {:?}", STEPS_MAX, state);
        prop_assert_eq!(self.world.run.as_ref(), Some(self.run.record()), "the stored run record");
        for path in self.run.all_paths() {
            let job = self.run.job(&path).unwrap();
            prop_assert_eq!(self.world.jobs.get(&path), Some(job), "the stored record of {}", path);
            if job.state == JobState::Completed && job.marked.is_none() {
                let key = (path.clone(), job.generation);
                prop_assert!(self.world.taken.contains(&key), "{} completed without running", path);
            }
        }
        if !self.spoiled {
            prop_assert_eq!(state, RunState::Succeeded, "nothing kept the run from succeeding");
        }
        if state == RunState::Succeeded {
            // Skipped only by intent: a rule (`on_failure` with nothing failed), a mark, or a
            // need skipped so.
            // A failed child only under a completed parent whose `max_child_failures` allows
            // as many as failed.
            let paths = self.run.all_paths();
            let failed = |path: &String| self.run.job(path).unwrap().state == JobState::Failed;
            let judged = |path: &String| {
                let Some(parent) = parent_of(path) else { return false };
                let parent_job = self.run.job(parent).unwrap();
                let limit = match parent_job.definition.as_deref() {
                    Some(definition) => definition.max_child_failures,
                    None => self.run.spec().jobs[parent].max_child_failures,
                };
                let siblings_failed = paths.iter().filter(|p| parent_of(p) == Some(parent) && failed(p)).count();
                parent_job.state == JobState::Completed && limit.is_some_and(|limit| siblings_failed <= limit as usize)
            };
            let ended_fine = |path: &String| {
                matches!(self.run.job(path).unwrap().state, JobState::Completed | JobState::Skipped)
                    || (failed(path) && judged(path))
            };
            prop_assert!(paths.iter().all(ended_fine), "a succeeded run with a job neither completed nor skipped");
            self.coverage.judged_failures += paths.iter().filter(|path| failed(path)).count();
        }
        if state == RunState::Failed {
            let paths = self.run.all_paths();
            prop_assert!(paths.iter().any(|path| self.run.job(path).unwrap().state != JobState::Completed));
        }
        *self.coverage.ended.entry(state.as_str()).or_default() += 1;
        self.coverage.spawns = self.run.all_paths().iter().filter(|path| path.contains('.')).count();
        Ok(())
    }
}

/// Prints the seed when a simulation panics (an assertion of the engine's own).
struct SaySeed(u64);

impl Drop for SaySeed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", replay_hint(self.0));
        }
    }
}

fn replay_hint(seed: u64) -> String {
    format!(
        "simulation seed {seed} failed; replay it with: SLUICE_SIM_SEED={seed} cargo test -p sluice-coordinator simulation::the_seed_in_sluice_sim_seed_replays -- --nocapture"
    )
}

/// Runs the simulation of `seed` to its end. Returns its trace and what it covered.
fn simulate(seed: u64) -> Result<(Vec<String>, Coverage), TestCaseError> {
    let _say = SaySeed(seed);
    let mut sim = Sim::new(seed);
    let outcome = (|| {
        for _ in 0..STEPS_MAX {
            if !sim.step()? {
                break;
            }
        }
        sim.finish()
    })();
    outcome.map_err(|error| TestCaseError::fail(format!("{error}\n{}", replay_hint(seed))))?;
    Ok((sim.trace, sim.coverage))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn random_runs_with_failures_retries_cancels_reruns_and_crashes_keep_every_invariant(seed in any::<u64>()) {
        simulate(seed)?;
    }
}

/// `SLUICE_SIM_SEED=N` replays one seed (as a failure prints it); without it, the seeds 0..64
/// run, and together they must have exercised every kind of input.
#[test]
fn the_seed_in_sluice_sim_seed_replays() {
    if let Ok(seed) = std::env::var("SLUICE_SIM_SEED") {
        let seed: u64 = seed.parse().expect("SLUICE_SIM_SEED is a number");
        let (_, coverage) = simulate(seed).unwrap_or_else(|error| panic!("{error}"));
        println!("seed {seed}: {coverage:?}");
        return;
    }
    let mut total = Coverage::default();
    for seed in 0..64 {
        let (_, coverage) = simulate(seed).unwrap_or_else(|error| panic!("{error}"));
        total.retries += coverage.retries;
        total.permanent_failures += coverage.permanent_failures;
        total.exhausted += coverage.exhausted;
        total.spawns += coverage.spawns;
        total.held += coverage.held;
        total.cancels_applied += coverage.cancels_applied;
        total.reruns_applied += coverage.reruns_applied;
        total.marks_applied += coverage.marks_applied;
        total.refusals += coverage.refusals;
        total.crashes += coverage.crashes;
        total.judged_failures += coverage.judged_failures;
        for (state, count) in coverage.ended {
            *total.ended.entry(state).or_default() += count;
        }
    }
    let covered = [
        ("retries", total.retries),
        ("permanent failures", total.permanent_failures),
        ("exhausted deliveries", total.exhausted),
        ("spawned children", total.spawns),
        ("held jobs", total.held),
        ("cancels", total.cancels_applied),
        ("reruns", total.reruns_applied),
        ("marks", total.marks_applied),
        ("refusals", total.refusals),
        ("crashes", total.crashes),
        ("failed children within max_child_failures", total.judged_failures),
    ];
    for (what, count) in covered {
        assert!(count > 0, "seeds 0..64 never exercised {what}: {total:?}");
    }
    for state in ["succeeded", "failed", "cancelled"] {
        assert!(total.ended.get(state).is_some_and(|count| *count > 0), "no run ended {state}: {total:?}");
    }
}

/// The same seed gives the same inputs and effects, in the same order: no hash order (each
/// map in a process has its own) and no clock reach the engine or the simulation.
#[test]
fn a_seed_replays_identically() {
    for seed in [3, 17, 40] {
        let (first, _) = simulate(seed).unwrap();
        let (second, _) = simulate(seed).unwrap();
        assert_eq!(first.len(), second.len(), "seed {seed}: traces of different lengths");
        for (step, (a, b)) in first.iter().zip(&second).enumerate() {
            assert_eq!(a, b, "seed {seed}: step {step} differs");
        }
    }
}
