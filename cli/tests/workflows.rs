//! DAG shapes run end to end through real processes: order comes from the jobs' own
//! recorded start and finish times.

mod common;

use std::collections::HashMap;

use common::*;

fn run_shape(needs: &[(&str, Vec<&str>)], seconds: f64, worker_args: &[&str]) -> Stack {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(worker_args);
    let log = stack.job_log();
    let mut yaml = String::from("name: shape\njobs:\n");
    let mut map = HashMap::new();
    for (job, deps) in needs {
        let deps: Vec<String> = deps.iter().map(|d| d.to_string()).collect();
        yaml.push_str(&format!("  {job}: {}\n", recording_job(&log, seconds, &deps)));
        map.insert(job.to_string(), deps);
    }
    let file = stack.write("shape.yaml", &yaml);
    let status = submit_and_wait(&stack, &file, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["jobs"].as_array().unwrap().len(), needs.len());
    for job in status["jobs"].as_array().unwrap() {
        assert_eq!(job["state"], "completed");
        assert_eq!(job["attempts"], 1);
        assert_eq!(job["attempt_history"].as_array().unwrap().len(), 1);
    }
    assert_ran_once_in_order(&log, &map);
    stack
}

#[test]
fn linear_chain_runs_in_order() {
    run_shape(&[("a", vec![]), ("b", vec!["a"]), ("c", vec!["b"]), ("d", vec!["c"])], 0.05, &[]);
}

#[test]
fn diamond_joins_after_both_branches() {
    run_shape(
        &[("top", vec![]), ("left", vec!["top"]), ("right", vec!["top"]), ("bottom", vec!["left", "right"])],
        0.2,
        &[],
    );
}

#[test]
fn hundred_way_fan_in() {
    let names: Vec<String> = (0..100).map(|i| format!("part-{i:03}")).collect();
    let mut needs: Vec<(&str, Vec<&str>)> = names.iter().map(|name| (name.as_str(), vec![])).collect();
    needs.push(("join", names.iter().map(String::as_str).collect()));
    run_shape(&needs, 0.0, &["--concurrency", "8"]);
}

#[test]
fn a_worker_never_runs_more_jobs_than_its_concurrency() {
    let jobs: Vec<(String, Vec<&str>)> = (0..8).map(|i| (format!("p{i}"), vec![])).collect();
    let needs: Vec<(&str, Vec<&str>)> = jobs.iter().map(|(name, deps)| (name.as_str(), deps.clone())).collect();
    let stack = run_shape(&needs, 0.3, &["--concurrency", "2"]);
    let recorded = read_job_log(&stack.job_log());
    let mut points: Vec<(u128, i32)> = Vec::new();
    for job in recorded.values() {
        points.push((job.starts[0].1, 1));
        points.push((job.ends[0].1, -1));
    }
    points.sort();
    let mut running = 0;
    let mut peak = 0;
    for (_, delta) in points {
        running += delta;
        peak = peak.max(running);
    }
    assert!(peak <= 2, "{peak} jobs ran at once on a worker with 2 slots");
    assert_eq!(peak, 2, "both slots were used");
}

#[test]
fn exec_jobs_get_placeholders_and_environment_and_failures_fail_the_run() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let out = stack.dir.path().join("env.txt");
    let yaml = format!(
        r#"name: env-check
params: {{ region: eu }}
jobs:
  show:
    run: exec
    command: [sh, -c, 'echo "$1 $2 $3 $SLUICE_WINDOW_START $SLUICE_JOB $SLUICE_ATTEMPT $TRACEPARENT" > {out}', sh, "{{{{start}}}}", "{{{{end}}}}", "{{{{params.region}}}}"]
  broken:
    needs: [show]
    run: exec
    retry: {{ max_attempts: 2, initial: 100ms, max: 100ms }}
    command: [sh, -c, "echo disk full >&2; exit 7"]
  after:
    needs: [broken]
    run: noop
"#,
        out = out.display()
    );
    let file = stack.write("env.yaml", &yaml);
    let status = stack.sluice_json(
        &["submit", file.to_str().unwrap(), "--window", "2024-03-01", "--param", "region=us", "--wait"],
        1,
    );
    assert_eq!(status["state"], "failed");
    let written = std::fs::read_to_string(&out).unwrap();
    let fields: Vec<&str> = written.split_whitespace().collect();
    assert_eq!(
        &fields[..6],
        ["2024-03-01T00:00:00Z", "2024-03-02T00:00:00Z", "us", "2024-03-01T00:00:00Z", "show", "1"],
        "{written}"
    );
    assert!(fields[6].starts_with("00-") && fields[6].len() == 55, "traceparent: {written}");
    let jobs = status["jobs"].as_array().unwrap();
    let broken = jobs.iter().find(|job| job["name"] == "broken").unwrap();
    assert_eq!(broken["state"], "failed");
    assert_eq!(broken["attempts"], 2, "retried once: {broken:#}");
    assert_eq!(broken["attempt_history"].as_array().unwrap().len(), 2);
    assert!(broken["error"].as_str().unwrap().contains("exited with code 7"), "{broken:#}");
    assert!(broken["error"].as_str().unwrap().contains("disk full"), "{broken:#}");
    let after = jobs.iter().find(|job| job["name"] == "after").unwrap();
    assert_eq!(after["state"], "skipped");
    assert!(status["trace_id"].as_str().is_some_and(|id| fields[6].contains(id)), "one trace from submission to job");
}

/// A worker whose jobs were short fetches ahead; when the next jobs turn out long, what it
/// fetched ahead goes back to the pool (as the same attempt) for an idle worker, instead of
/// waiting behind them. Two one-slot workers, four 2-second jobs: each worker runs two.
#[test]
fn jobs_fetched_ahead_go_back_when_jobs_run_long() {
    let mut stack = Stack::start();
    stack.coordinator();
    let workers = [stack.worker(&["--concurrency", "1"]), stack.worker(&["--concurrency", "1"])];
    for worker in workers {
        let log = stack.dir.path().join(format!("worker-{worker}.log"));
        wait_until(std::time::Duration::from_secs(30), "the workers to be ready", || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("worker ready")
        });
    }
    let log = stack.job_log();
    let long: Vec<String> = (1..=4).map(|i| format!("b{i}")).collect();
    let mut yaml = String::from("name: ahead\njobs:\n  a: { run: noop }\n");
    for name in &long {
        yaml.push_str(&format!("  {name}: {}\n", recording_job(&log, 2.0, &["a".to_owned()])));
    }
    let status = submit_and_wait(&stack, &stack.write("ahead.yaml", &yaml), 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    // Each ran once (`a` is a noop: it records nothing).
    let needs: HashMap<String, Vec<String>> = long.iter().map(|name| (name.clone(), Vec::new())).collect();
    assert_ran_once_in_order(&log, &needs);
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for job in status["jobs"].as_array().unwrap().iter().filter(|job| job["name"] != "a") {
        assert_eq!(job["attempts"], 1, "a job handed back unstarted keeps its attempt: {job:#}");
        let history = job["attempt_history"].as_array().unwrap();
        assert_eq!(history.len(), 1, "{job:#}");
        *per_worker.entry(history[0]["worker"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_worker.values().copied().collect();
    counts.sort();
    assert_eq!(counts, [2, 2], "each worker ran two of the long jobs: {per_worker:?}");
}
