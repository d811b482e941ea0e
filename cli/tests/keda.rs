//! KEDA's behaviour with real processes: testkit's autoscaler polls the nats-server's `/jsz`
//! exactly as KEDA's nats-jetstream scaler does (lag = num_pending + num_ack_pending of
//! `pool-burst`) and drives `sluice worker` processes like KEDA and the HPA drive a
//! Deployment (activation, cooldown, scale-down stabilisation; seconds instead of minutes).
//!
//! The pool is declared and has never had a worker: it starts at 0 and scales up from zero.
//! A burst of 2,000 jobs follows: 1,940 short ones, 20 of 10 s (last in line, so the pool
//! scales down while they run and their workers must drain), and 40 that fail once and retry
//! after 20 s, a delay over the worker's `--max-nak-delay`, so the retry is a JetStream
//! message schedule, which is not lag: the pool goes to 0 before the retries fire, then
//! comes back for them and goes to 0 again. Every job completes with exactly the attempts it
//! should have (1, or 2 for the retried), and no 10 s job starts twice or is cut short.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use sluice_testkit::autoscaler::{Autoscaler, GLOBAL_ACCOUNT, Scaling, Trigger, Why};

const POOL: &str = "burst";
const SHORT: usize = 1940;
const LONG: usize = 20;
const RETRIED: usize = 40;
/// The retry delay of the jobs that fail once: longer than the cooldown plus a drain, so
/// the pool can reach 0 before it is over.
const RETRY_DELAY: &str = "20s";

fn workflow(log: &str) -> String {
    let mut yaml = format!("name: burst\ndefaults: {{ pool: {POOL} }}\njobs:\n");
    // In dispatch order: the short jobs, then the long ones, then (once every long one has
    // finished) those that fail once.
    for i in 0..SHORT {
        yaml.push_str(&format!("  a-short-{i:04}: {{ run: sleep, config: {{ duration: 200ms }} }}\n"));
    }
    let script = format!(
        r#"echo "start $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N) $SLUICE_WORKER" >> {log}; sleep 10; echo "end $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N) $SLUICE_WORKER" >> {log}"#
    );
    let longs: Vec<String> = (0..LONG).map(|i| format!("b-long-{i:02}")).collect();
    for name in &longs {
        yaml.push_str(&format!(
            "  {name}: {{ run: exec, command: [sh, -c, {}] }}\n",
            serde_json::to_string(&script).unwrap()
        ));
    }
    for i in 0..RETRIED {
        yaml.push_str(&format!(
            "  c-retry-{i:02}: {{ run: fail, needs: [{}], config: {{ message: once, succeed_on_attempt: 2 }}, retry: {{ max_attempts: 2, initial: {RETRY_DELAY}, max: {RETRY_DELAY}, jitter: false }} }}\n",
            longs.join(", ")
        ));
    }
    yaml
}

/// One 10 s job's recorded start or end: (attempt, time, worker pid).
type Mark = (u32, DateTime<Utc>, i32);

/// The 10 s jobs' starts and ends, by job.
fn read_marks(log: &std::path::Path) -> HashMap<String, (Vec<Mark>, Vec<Mark>)> {
    let mut marks: HashMap<String, (Vec<Mark>, Vec<Mark>)> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, job, attempt, nanos, worker] = parts[..] else { panic!("bad job log line {line:?}") };
        let nanos: i64 = nanos.parse().unwrap_or_else(|_| panic!("bad time in {line:?}"));
        let pid: i32 = worker.rsplit('-').next().and_then(|pid| pid.parse().ok()).unwrap_or(-1);
        let mark = (attempt.parse().unwrap(), DateTime::from_timestamp_nanos(nanos), pid);
        let entry = marks.entry(job.to_owned()).or_default();
        match what {
            "start" => entry.0.push(mark),
            "end" => entry.1.push(mark),
            _ => panic!("bad job log line {line:?}"),
        }
    }
    marks
}

fn at(value: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("not a time: {value}")))
        .unwrap_or_else(|error| panic!("not a time ({error}): {value}"))
        .with_timezone(&Utc)
}

#[test]
fn a_pool_scales_from_zero_under_a_burst_drains_to_zero_and_scheduled_retries_keep_no_worker_alive() {
    let began = Instant::now();
    let mut stack = sluice_testkit::Stack::builder(SLUICE)
        .monitoring()
        .current_dir(workspace_root())
        .start()
        .expect("a stack with a monitoring port");
    stack.coordinator();
    stack.wait_until_set_up(Duration::from_secs(30)).unwrap_or_else(|error| panic!("{error:#}"));
    stack.sluice_json(&["pool", "apply", POOL], 0);

    let trigger = Trigger {
        account: GLOBAL_ACCOUNT.to_owned(),
        stream: sluice_proto::names::JOBS_STREAM.to_owned(),
        consumer: sluice_proto::names::pool_consumer(POOL),
        lag_threshold: 10,
        activation_lag_threshold: 0,
    };
    let scaling = Scaling {
        min_replicas: 0,
        max_replicas: 4,
        polling_interval: Duration::from_millis(250),
        cooldown: Duration::from_secs(3),
        scale_down_stabilization: Duration::from_secs(5),
        tolerance: 0.1,
    };
    // The pod's terminationGracePeriodSeconds is the drain: longer than the longest job.
    let worker_args = ["--pool", POOL, "--concurrency", "4", "--shutdown-grace", "60s", "--max-nak-delay", "1s"];
    let mut scaler = Autoscaler::new(&stack, trigger, scaling, &worker_args).expect("an autoscaler");

    // Declared, never served: the consumer is there (so KEDA reads a lag, not an error or
    // the stream's last sequence) and the pool stays at 0.
    scaler
        .run_until(&mut stack, Duration::from_secs(30), "four polls of the idle pool", |scaler| scaler.polls >= 4)
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert_eq!(
        (scaler.replicas(), scaler.last_lag, scaler.polls_without_consumer),
        (0, Some(0), 0),
        "{}",
        scaler.report()
    );
    assert!(stack.named("worker").is_empty(), "no worker has run");

    let log = stack.job_log();
    let id = stack.submit(&workflow(&log.display().to_string())).expect("the burst is submitted");
    let ended = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (ended, url) = (ended.clone(), stack.url());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            let result = runtime.block_on(async {
                let js = sluice_testkit::connect(&url).await?;
                sluice_testkit::wait::run_record_end(&js, &id, Duration::from_secs(170)).await
            });
            ended.store(true, Ordering::SeqCst);
            result
        })
    };
    scaler
        .run_until(&mut stack, Duration::from_secs(170), "the run to end and the pool to drain to 0", |scaler| {
            ended.load(Ordering::SeqCst) && scaler.alive() == 0
        })
        .unwrap_or_else(|error| panic!("{error:#}"));
    let record = watcher.join().expect("the watcher").unwrap_or_else(|error| panic!("{error:#}"));
    let report = scaler.report();
    eprintln!("keda: scale events (time since the autoscaler started, replicas, lag):\n{report}");

    // Scaled up from zero, beyond one replica, and back to zero; every worker drained cleanly.
    let first = scaler.events.first().unwrap_or_else(|| panic!("no scale event\n{report}"));
    assert_eq!((first.from, first.to, first.why), (0, 1, Why::FromZero), "{report}");
    assert!(scaler.peak_replicas > 1, "peak {} replicas\n{report}", scaler.peak_replicas);
    assert_eq!(scaler.replicas(), 0, "{report}");
    assert_eq!(scaler.polls_without_consumer, 0, "{report}");
    for exit in &scaler.exits {
        assert!(!exit.unasked && exit.success, "worker {} (pid {}) exited: {exit:?}\n{report}", exit.process, exit.pid);
    }
    assert_eq!(record.state, sluice_proto::RunState::Succeeded, "{record:?}");

    // Every job completed with exactly the attempts it should have, numbered without repeats.
    let status = stack.sluice_json(&["status", &id.to_string()], 0);
    let jobs = status["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), SHORT + LONG + RETRIED);
    let (mut attempts_total, mut retried) = (0, Vec::new());
    for job in jobs {
        let name = job["name"].as_str().unwrap();
        assert_eq!(job["state"], "completed", "{job:#}");
        let expected = if name.starts_with("c-retry-") { 2 } else { 1 };
        let numbers: Vec<u64> =
            job["attempt_history"].as_array().unwrap().iter().map(|a| a["attempt"].as_u64().unwrap()).collect();
        assert_eq!(job["attempts"], expected, "{name} was charged {} attempts: {job:#}", job["attempts"]);
        assert_eq!(numbers, (1..=expected).collect::<Vec<_>>(), "{name}: {job:#}");
        attempts_total += expected;
        if expected == 2 {
            retried.push(job);
        }
    }

    // The 10 s jobs: each started once and ended; some ran on a worker that was sent SIGTERM
    // while they ran, and finished there (the drain let them).
    let marks = read_marks(&log);
    let mut drained_jobs = 0;
    for i in 0..LONG {
        let name = format!("b-long-{i:02}");
        let (starts, ends) = marks.get(&name).unwrap_or_else(|| panic!("{name} never ran"));
        assert_eq!((starts.len(), ends.len()), (1, 1), "{name}: starts {starts:?}, ends {ends:?}");
        let ((_, started, pid), (_, finished, end_pid)) = (starts[0], ends[0]);
        assert_eq!(pid, end_pid, "{name} ended on another worker");
        let terminated = scaler.exits.iter().find(|exit| exit.pid == pid).and_then(|exit| exit.terminated_at);
        if terminated.is_some_and(|sigterm| started < sigterm && sigterm < finished) {
            drained_jobs += 1;
        }
    }
    assert!(drained_jobs > 0, "no 10 s job was running on a worker when it was sent SIGTERM\n{report}");

    // While only the scheduled retries were left, every worker exited; then the pool came
    // back from zero for them.
    let failed_by = retried.iter().map(|job| at(&job["attempt_history"][0]["finished_at"])).max().unwrap();
    let retried_from = retried.iter().map(|job| at(&job["attempt_history"][1]["started_at"])).min().unwrap();
    let idle = scaler.all_stopped.iter().find(|stopped| failed_by < stopped.at && stopped.at < retried_from);
    let idle = idle.unwrap_or_else(|| {
        panic!("the pool did not reach 0 between the first failures ({failed_by}) and the retries ({retried_from})\n{report}")
    });
    let woke = scaler.events.iter().find(|event| event.at > idle.at && event.why == Why::FromZero);
    assert!(woke.is_some_and(|event| event.at < retried_from), "the retries did not wake the pool\n{report}");
    let last = scaler.events.last().unwrap();
    assert_eq!((last.to, last.why), (0, Why::ToZero), "{report}");

    let ups = scaler.events.iter().filter(|event| event.to > event.from).count();
    eprintln!(
        "keda: {} jobs completed ({} short, {LONG} of 10 s, {RETRIED} retried once via a {RETRY_DELAY} schedule), {attempts_total} attempts; \
         {} scale events ({ups} up), peak {} replicas, {} workers started and drained, {drained_jobs} 10 s jobs finished on a draining worker; \
         the pool was at 0 from +{:.1}s until the retries; {:.0}s in all",
        jobs.len(),
        SHORT,
        scaler.events.len(),
        scaler.peak_replicas,
        scaler.exits.len(),
        idle.elapsed.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}
