//! Chaos, bounded to about two minutes: two workers, two coordinators, 500+ jobs in several
//! DAG shapes with some jobs failing; meanwhile workers are SIGKILLed over and over, the
//! leading coordinator is SIGKILLed three times and the nats-server (file storage) once, for
//! longer than the ack wait.
//! At the end every run is finished, completed + dead-lettered = dispatched, no job started
//! before what it needs had finished, and no (run, job, attempt) started twice. A killed
//! worker's job comes back as a redelivery, which is a new attempt.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// How a job behaves: `flaky` fails its first attempt, `hopeless` every attempt.
fn job_yaml(log: &str, name: &str, needs: &[String], index: usize) -> String {
    let behaviour = if index % 23 == 22 {
        "exit 1"
    } else if index % 7 == 6 {
        r#"test "$SLUICE_ATTEMPT" -gt 1 || exit 1"#
    } else {
        "true"
    };
    let script = format!(
        r#"echo "start $SLUICE_RUN_ID $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N) $SLUICE_WORKER" >> {log}; sleep 0.15; {behaviour}; echo "end $SLUICE_RUN_ID $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)" >> {log}"#
    );
    format!(
        "  {name}: {{ run: exec, needs: [{}], retry: {{ max_attempts: 5, initial: 200ms, max: 1s }}, command: [sh, -c, {}] }}\n",
        needs.join(", "),
        serde_json::to_string(&script).unwrap()
    )
}

fn workflow(log: &str, name: &str, shape: &[(String, Vec<String>)], salt: usize) -> String {
    let mut yaml = format!("name: {name}\non_failure: continue\njobs:\n");
    for (i, (job, needs)) in shape.iter().enumerate() {
        yaml.push_str(&job_yaml(log, job, needs, i + salt));
    }
    yaml
}

/// A DAG: each job with the jobs it needs.
type Shape = Vec<(String, Vec<String>)>;

fn shapes() -> Vec<(&'static str, Shape, usize)> {
    let chain: Vec<_> =
        (0..5).map(|i| (format!("c{i}"), if i == 0 { vec![] } else { vec![format!("c{}", i - 1)] })).collect();
    let mut fan = vec![("root".to_owned(), vec![])];
    fan.extend((0..10).map(|i| (format!("leaf{i}"), vec!["root".to_owned()])));
    fan.push(("join".to_owned(), (0..10).map(|i| format!("leaf{i}")).collect()));
    let wide: Vec<_> = (0..40).map(|i| (format!("w{i}"), vec![])).collect();
    // Layered DAG: each job of a layer needs two of the previous layer.
    let mut layered = Vec::new();
    for layer in 0..5 {
        for k in 0..6 {
            let needs = if layer == 0 {
                vec![]
            } else {
                vec![format!("l{}x{}", layer - 1, k), format!("l{}x{}", layer - 1, (k + 1) % 6)]
            };
            layered.push((format!("l{layer}x{k}"), needs));
        }
    }
    vec![("chain", chain, 10), ("fan", fan, 10), ("wide", wide, 5), ("layered", layered, 5)]
}

#[derive(Default)]
struct Attempts {
    starts: HashMap<(String, String, u32), Vec<u128>>,
    workers: HashMap<(String, String, u32), Vec<String>>,
    ends: HashMap<(String, String, u32), u128>,
}

fn read_log(path: &std::path::Path) -> Attempts {
    let mut attempts = Attempts::default();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (what, run, job, attempt, nanos, worker) = match parts[..] {
            [what, run, job, attempt, nanos] => (what, run, job, attempt, nanos, ""),
            [what, run, job, attempt, nanos, worker] => (what, run, job, attempt, nanos, worker),
            _ => continue, // a line cut by SIGKILL
        };
        let (Ok(attempt), Ok(nanos)) = (attempt.parse::<u32>(), nanos.parse::<u128>()) else { continue };
        let key = (run.to_owned(), job.to_owned(), attempt);
        match what {
            "start" => {
                attempts.workers.entry(key.clone()).or_default().push(worker.to_owned());
                attempts.starts.entry(key).or_default().push(nanos);
            }
            "end" => {
                attempts.ends.insert(key, nanos);
            }
            _ => {}
        }
    }
    attempts
}

#[test]
fn nothing_is_lost_or_run_twice_while_workers_coordinators_and_nats_are_killed() {
    let mut stack = Stack::start();
    let mut coordinators = [stack.coordinator(), stack.coordinator()];
    stack.sluice_json(&["pool", "apply", "default", "--ack-wait", "2s"], 0);
    let worker_args = ["--concurrency", "6", "--shutdown-grace", "1s"];
    let mut workers = [stack.worker(&worker_args), stack.worker(&worker_args)];
    let log = stack.job_log();
    let log_text = log.display().to_string();

    let mut runs: Vec<(String, Shape)> = Vec::new();
    let mut total_jobs = 0;
    for (name, shape, count) in shapes() {
        let file = stack.write(&format!("{name}.yaml"), &workflow(&log_text, name, &shape, 0));
        for _ in 0..count {
            let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
            runs.push((submitted["id"].as_str().unwrap().to_owned(), shape.clone()));
            total_jobs += shape.len();
        }
    }
    assert!(total_jobs >= 500, "{total_jobs} jobs");

    // Chaos while the runs are under way.
    let started = Instant::now();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let (mut worker_kills, mut coordinator_kills, mut nats_restarts) = (0, 0, 0);
    let mut tick = 0;
    // Every fourth tick a leader kill is due; it waits for a tick at which the leader is
    // known (after a kill or the server's restart, an election takes a lease's 5 s), and the
    // chaos lasts until two have happened, so a slow machine still kills leaders twice.
    let mut leader_kill_due = false;
    while started.elapsed() < Duration::from_secs(30)
        || (coordinator_kills < 2 && started.elapsed() < Duration::from_secs(90))
    {
        std::thread::sleep(Duration::from_secs(2));
        tick += 1;
        let victim = (next() % 2) as usize;
        eprintln!(
            "chaos: worker pid {} killed at {}",
            stack.pid(workers[victim]),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        );
        stack.kill(workers[victim]);
        workers[victim] = stack.worker(&worker_args);
        worker_kills += 1;
        leader_kill_due |= tick % 4 == 2;
        if leader_kill_due && coordinator_kills < 3 {
            let leader = leader_pid(&stack);
            if let Some(index) = coordinators.iter().position(|c| Some(stack.pid(*c)) == leader) {
                stack.kill(coordinators[index]);
                coordinators[index] = stack.coordinator();
                coordinator_kills += 1;
                leader_kill_due = false;
            } else {
                eprintln!("chaos: tick {tick}: no live coordinator holds the lease yet ({leader:?})");
            }
        }
        if tick == 5 {
            eprintln!(
                "chaos: nats-server killed at {}",
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            );
            stack.nats.kill();
            // An outage longer than the pool's 2 s ack wait: what was in flight comes back as
            // redeliveries the moment the server does, while its workers still hold it.
            std::thread::sleep(Duration::from_secs(3));
            stack.nats.restart().expect("nats-server restarts on its store");
            nats_restarts += 1;
        }
    }
    assert!(coordinator_kills >= 2, "the leader was killed {coordinator_kills} times");

    // Everything settles.
    let mut statuses = Vec::new();
    for (id, _) in &runs {
        statuses.push(stack.wait_for_run(id, Duration::from_secs(90)));
    }
    let attempts = read_log(&log);
    let letters = stack.sluice_json(&["dlq", "list"], 0)["dead_letters"].as_array().unwrap().len();
    let (mut completed, mut failed, mut skipped) = (0, 0, 0);
    for ((id, shape), status) in runs.iter().zip(&statuses) {
        assert!(["succeeded", "failed"].contains(&status["state"].as_str().unwrap()), "run {id}: {status:#}");
        let jobs: HashMap<&str, &serde_json::Value> =
            status["jobs"].as_array().unwrap().iter().map(|job| (job["name"].as_str().unwrap(), job)).collect();
        for (i, (job, needs)) in shape.iter().enumerate() {
            let state = jobs[job.as_str()]["state"].as_str().unwrap();
            let error = jobs[job.as_str()]["error"].as_str().unwrap_or_default();
            let hopeless = i % 23 == 22;
            match state {
                "completed" => completed += 1,
                "failed" => failed += 1,
                "skipped" => skipped += 1,
                other => panic!("run {id} job {job} ended {other}"),
            }
            // Attempts charged = attempts on record: numbered 1..=attempts with none missing
            // (a redelivery's attempt comes from the record, not from the delivery count).
            let record = jobs[job.as_str()];
            let numbers: Vec<u64> = record["attempt_history"]
                .as_array()
                .unwrap()
                .iter()
                .map(|attempt| attempt["attempt"].as_u64().unwrap())
                .collect();
            if record["attempts_omitted"] == 0 {
                let charged = record["attempts"].as_u64().unwrap();
                assert_eq!(numbers, (1..=charged).collect::<Vec<_>>(), "run {id} job {job}: {record:#}");
            }
            // A job that should succeed may still run out of attempts when killed workers
            // used them up; it is then dead-lettered with that reason, not lost.
            let worker_deaths = error.contains("a worker stopped during attempt");
            assert!(hopeless == (state == "failed") || worker_deaths, "run {id} job {job} ended {state}: {error}");
            // Order: every start of a job came after its needs' successful end.
            let my_starts: Vec<u128> = attempts
                .starts
                .iter()
                .filter(|((r, j, _), _)| r == id && j == job)
                .flat_map(|(_, s)| s.clone())
                .collect();
            for need in needs {
                let need_done =
                    attempts.ends.iter().filter(|((r, j, _), _)| r == id && j == need).map(|(_, end)| *end).min();
                for start in &my_starts {
                    let done = need_done.unwrap_or_else(|| panic!("run {id}: {job} started but {need} never finished"));
                    assert!(done <= *start, "run {id}: {job} started before {need} finished");
                }
            }
        }
    }
    // An attempt may start twice only through a redelivery the run records (JetStream can
    // repeat a delivery count after a nats-server crash loses consumer state).
    let mut repeated = 0;
    for ((run, job, attempt), starts) in &attempts.starts {
        if starts.len() == 1 {
            continue;
        }
        repeated += 1;
        let status = &statuses[runs.iter().position(|(id, _)| id == run).unwrap()];
        let record = status["jobs"].as_array().unwrap().iter().find(|j| j["name"] == job.as_str()).unwrap();
        let entry = record["attempt_history"].as_array().unwrap().iter().find(|a| a["attempt"] == *attempt).unwrap();
        let mut recorded: Vec<&str> = vec![entry["worker"].as_str().unwrap()];
        recorded.extend(entry["redelivered_to"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()));
        for worker in &attempts.workers[&(run.clone(), job.clone(), *attempt)] {
            assert!(
                recorded.contains(&worker.as_str()),
                "run {run} job {job} attempt {attempt} started on {worker}, not recorded: {entry:#}"
            );
        }
    }
    let dispatched = completed + failed;
    assert_eq!(completed + failed + skipped, total_jobs);
    assert_eq!(letters, failed, "every failed job is in the dead-letter stream");
    let redeliveries: usize = attempts.starts.keys().filter(|(_, _, attempt)| *attempt > 1).count();
    eprintln!(
        "chaos: {} runs, {total_jobs} jobs: dispatched {dispatched} = completed {completed} + dead-lettered {letters}; skipped {skipped}; \
         attempts started {} (of which retries or redeliveries {redeliveries}, recorded repeats of one attempt {repeated}); killed workers {worker_kills}, leaders {coordinator_kills}, nats-server {nats_restarts}",
        runs.len(),
        attempts.starts.len()
    );
    assert_eq!(completed + letters, dispatched);
}
