//! Real faults: SIGKILL of the coordinator mid-run, SIGTERM of a worker mid-job. Nothing is
//! lost and nothing runs twice.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

fn submit(stack: &Stack, file: &std::path::Path) -> String {
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    submitted["id"].as_str().unwrap().to_owned()
}

fn lines(stack: &Stack) -> usize {
    std::fs::read_to_string(stack.job_log()).unwrap_or_default().lines().count()
}

#[test]
fn coordinator_killed_mid_run_resumes_and_no_job_runs_twice() {
    let mut stack = Stack::start();
    let mut coordinator = stack.coordinator();
    stack.worker(&["--concurrency", "4"]);
    let log = stack.job_log();
    // A chain, then a fan of 20 jobs, then a join: kills land while jobs run and while
    // completions are being handled.
    let mut needs: HashMap<String, Vec<String>> = HashMap::new();
    let mut yaml = String::from("name: kill-coordinator\njobs:\n");
    let mut add = |name: String, deps: Vec<String>, seconds: f64, yaml: &mut String| {
        yaml.push_str(&format!("  {name}: {}\n", recording_job(&log, seconds, &deps)));
        needs.insert(name, deps);
    };
    add("a".into(), vec![], 0.3, &mut yaml);
    add("b".into(), vec!["a".into()], 0.3, &mut yaml);
    let fan: Vec<String> = (0..20).map(|i| format!("fan-{i:02}")).collect();
    for name in &fan {
        add(name.clone(), vec!["b".into()], 0.1, &mut yaml);
    }
    add("join".into(), fan.clone(), 0.2, &mut yaml);
    let file = stack.write("kill.yaml", &yaml);
    let run_id = submit(&stack, &file);
    // Kill when 1 job has started, when the fan is under way, and near the end.
    for threshold in [1, 12, 30] {
        wait_until(Duration::from_secs(60), "jobs to make progress", || lines(&stack) >= threshold);
        stack.kill(coordinator);
        coordinator = stack.coordinator();
    }
    let status = stack.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_ran_once_in_order(&log, &needs);
    for job in status["jobs"].as_array().unwrap() {
        assert_eq!(job["attempts"], 1, "{job:#}");
    }
}

#[test]
fn worker_sigterm_lets_the_running_job_finish_and_loses_nothing() {
    let mut stack = Stack::start();
    stack.coordinator();
    let worker = stack.worker(&["--concurrency", "1"]);
    let log = stack.job_log();
    let yaml = format!(
        "name: drain\njobs:\n  slow: {}\n  next: {}\n",
        recording_job(&log, 1.5, &[]),
        recording_job(&log, 0.0, &["slow".into()])
    );
    let file = stack.write("drain.yaml", &yaml);
    let run_id = submit(&stack, &file);
    wait_until(Duration::from_secs(30), "the slow job to start", || lines(&stack) >= 1);
    stack.signal(worker, "TERM");
    let exit = stack.wait_exit(worker, Duration::from_secs(30));
    assert!(exit.success(), "worker exit {exit:?}");
    let recorded = read_job_log(&log);
    assert_eq!(recorded["slow"].ends.len(), 1, "the running job finished before the worker left");
    assert!(!recorded.contains_key("next"), "a draining worker takes no new job");
    stack.worker(&[]);
    let status = stack.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let needs = HashMap::from([("slow".to_owned(), vec![]), ("next".to_owned(), vec!["slow".to_owned()])]);
    assert_ran_once_in_order(&log, &needs);
}

#[test]
fn worker_sigterm_past_its_grace_hands_the_job_back_to_another_worker() {
    let mut stack = Stack::start();
    stack.coordinator();
    let worker = stack.worker(&["--concurrency", "1", "--shutdown-grace", "300ms"]);
    let log = stack.job_log();
    let yaml = format!("name: handback\njobs:\n  long: {}\n", recording_job(&log, 3.0, &[]));
    let file = stack.write("handback.yaml", &yaml);
    let run_id = submit(&stack, &file);
    wait_until(Duration::from_secs(30), "the long job to start", || lines(&stack) >= 1);
    stack.signal(worker, "TERM");
    assert!(stack.wait_exit(worker, Duration::from_secs(30)).success());
    stack.worker(&[]);
    let status = stack.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let job = &status["jobs"][0];
    assert_eq!(job["attempts"], 2, "{job:#}");
    let first = &job["attempt_history"][0];
    assert!(first["error"].as_str().unwrap().contains("handed back"), "{job:#}");
    let recorded = read_job_log(&log);
    assert_eq!(recorded["long"].starts.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(recorded["long"].ends.len(), 1, "only the second attempt ran to the end");
}

#[test]
fn a_job_longer_than_the_ack_wait_is_kept_alive_and_runs_once() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.sluice_json(&["pool", "apply", "default", "--ack-wait", "1s"], 0);
    stack.worker(&[]);
    let log = stack.job_log();
    let yaml = format!("name: long\njobs:\n  long: {}\n", recording_job(&log, 3.5, &[]));
    let file = stack.write("long.yaml", &yaml);
    let status = submit_and_wait(&stack, &file, 0);
    assert_eq!(status["jobs"][0]["attempts"], 1, "{status:#}");
    let recorded = read_job_log(&log);
    assert_eq!(recorded["long"].starts.len(), 1, "redelivered while its worker was alive");
}

#[test]
fn a_job_that_kills_every_worker_is_dead_lettered_through_the_max_deliveries_advisory() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.sluice_json(&["pool", "apply", "default", "--max-deliver", "2", "--ack-wait", "1s"], 0);
    let mut worker = stack.worker(&[]);
    let file = stack.write(
        "poison.yaml",
        "name: poison\njobs:\n  poison: { run: exec, retry: { max_attempts: 5 }, command: [sh, -c, 'kill -9 $PPID'] }\n",
    );
    let run_id = submit(&stack, &file);
    let mut deaths = 0;
    let status = loop {
        let output = stack.sluice(&["status", &run_id, "-o", "json"]);
        if let Ok(status) = serde_json::from_slice::<serde_json::Value>(&output.stdout)
            && status["state"] != "running"
        {
            break status;
        }
        if !stack.is_running(worker) {
            deaths += 1;
            assert!(deaths <= 4, "JetStream kept delivering the job");
            worker = stack.worker(&[]);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["state"], "failed", "{status:#}");
    let error = status["jobs"][0]["error"].as_str().unwrap();
    assert!(error.contains("gave up after 2 deliveries"), "{error}");
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    assert_eq!(letters["dead_letters"][0]["job"], "poison");
    // Deliveries are the backstop, attempts are what ran. When attempt 1's start was stored
    // before its worker died, the second delivery found it with a worker whose registry entry
    // had not expired (it might only be cut off by an outage) and was offered again later
    // rather than run; when the kill beat the pipelined start, nothing was on record and the
    // second delivery ran attempt 1 (its start stored first), killing a second worker.
    assert!((1..=2).contains(&deaths), "{deaths} workers killed");
    assert_eq!(status["jobs"][0]["attempts"], 1, "{status:#}");
}

#[test]
fn a_worker_killed_mid_job_leaves_its_attempt_closed_as_worker_lost_and_status_shows_the_last_stderr_line() {
    let mut stack = Stack::start();
    stack.coordinator();
    // A short ack wait: the killed worker's message comes back within a second.
    stack.sluice_json(&["pool", "apply", "default", "--ack-wait", "1s"], 0);
    let worker = stack.worker(&[]);
    // The first attempt runs until its worker is killed; the second fails with a traceback.
    let script = "if [ \"$SLUICE_ATTEMPT\" = 1 ]; then sleep 20; else echo 'Traceback (most recent call last):' >&2; echo 'ValueError: bad row 7' >&2; echo >&2; exit 1; fi";
    let yaml = format!(
        "name: lost\njobs:\n  lost: {{ run: exec, retry: {{ max_attempts: 2 }}, command: [sh, -c, {}] }}\n",
        serde_json::to_string(script).unwrap()
    );
    let file = stack.write("lost.yaml", &yaml);
    let run_id = submit(&stack, &file);
    // Killed only once its start is stored, so attempt 1 is in the history and left open.
    wait_until(Duration::from_secs(30), "attempt 1's start to be stored", || {
        let output = stack.sluice(&["status", &run_id, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .is_ok_and(|status| status["jobs"][0]["attempt_history"][0]["attempt"] == 1)
    });
    stack.kill(worker);
    stack.worker(&[]);
    let status = stack.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "{status:#}");
    let job = &status["jobs"][0];
    let first = &job["attempt_history"][0];
    assert_eq!(first["error"], "worker lost", "{job:#}");
    assert!(first["finished_at"].is_string(), "{job:#}");
    let second = &job["attempt_history"][1];
    assert_eq!(second["attempt"], 2, "{job:#}");
    assert!(second["error"].as_str().unwrap().contains("Traceback"), "JSON keeps the whole error: {job:#}");
    let human = text(&stack.sluice(&["status", &run_id]).stdout);
    assert!(human.contains("`sh` exited with code 1: ValueError: bad row 7"), "{human}");
    assert!(human.contains("    attempt 1 on ") && human.contains("worker lost"), "{human}");
}

/// The jobs of `log` as `start RUN JOB ATTEMPT WORKER` lines: the workers each attempt of
/// each job ran on.
fn executions(log: &std::path::Path) -> HashMap<(String, u32), Vec<String>> {
    let mut runs: HashMap<(String, u32), Vec<String>> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let ["start", job, attempt, worker] = line.split_whitespace().collect::<Vec<_>>()[..] {
            runs.entry((job.to_owned(), attempt.parse().unwrap())).or_default().push(worker.to_owned());
        }
    }
    runs
}

#[test]
fn an_outage_longer_than_the_ack_wait_charges_no_attempt_and_every_execution_is_on_record() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.sluice_json(&["pool", "apply", "default", "--ack-wait", "2s"], 0);
    let worker_args = ["--concurrency", "4"];
    stack.worker(&worker_args);
    stack.worker(&worker_args);
    let log = stack.job_log();
    // One attempt each: an outage charged to a job fails it.
    let script = format!("echo \"start $SLUICE_JOB $SLUICE_ATTEMPT $SLUICE_WORKER\" >> {}; sleep 1.5", log.display());
    let mut yaml = String::from("name: outage\njobs:\n");
    for index in 0..24 {
        yaml.push_str(&format!(
            "  j{index}: {{ run: exec, retry: {{ max_attempts: 1 }}, command: [sh, -c, {}] }}\n",
            serde_json::to_string(&script).unwrap()
        ));
    }
    let file = stack.write("outage.yaml", &yaml);
    let run_id = submit(&stack, &file);
    wait_until(Duration::from_secs(30), "the first jobs to run", || lines(&stack) >= 6);
    // The outage: longer than the ack wait, so JetStream redelivers what was in flight as
    // soon as it is back, while the workers still hold those jobs (some finished meanwhile,
    // their outcomes waiting to be stored).
    stack.nats.stop();
    std::thread::sleep(Duration::from_secs(5));
    stack.nats.restart().expect("nats-server restarts on its store");
    let status = stack.wait_for_run(&run_id, Duration::from_secs(90));
    assert_eq!(status["state"], "succeeded", "no attempt was charged for the outage: {status:#}");
    let ran = executions(&log);
    for job in status["jobs"].as_array().unwrap() {
        let name = job["name"].as_str().unwrap();
        let history = job["attempt_history"].as_array().unwrap();
        let attempts_run: Vec<u32> = ran.keys().filter(|(j, _)| j == name).map(|(_, attempt)| *attempt).collect();
        // Attempts charged = attempts started on record = attempts that ran.
        assert_eq!(job["attempts"].as_u64().unwrap() as usize, attempts_run.len(), "{name}: {job:#}");
        assert_eq!(history.len(), attempts_run.len(), "{name}: {job:#}");
        for entry in history {
            let attempt = entry["attempt"].as_u64().unwrap() as u32;
            let mut recorded = vec![entry["worker"].as_str().unwrap()];
            recorded.extend(entry["redelivered_to"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()));
            let workers = ran.get(&(name.to_owned(), attempt)).unwrap_or_else(|| panic!("{name} {attempt} never ran"));
            for worker in workers {
                assert!(
                    recorded.contains(&worker.as_str()),
                    "{name} attempt {attempt} ran on {worker} unrecorded: {job:#}"
                );
            }
        }
    }
}
