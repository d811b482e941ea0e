//! Nothing outlives its attempt: an exec job runs in a process group of its own, which
//! cancel, a timeout and a worker's SIGTERM stop as a whole (SIGTERM, SIGKILL after the
//! grace period), and which dies with its worker, even when the worker is SIGKILLed.
//!
//! Each run has two jobs that leave a grandchild running: a shell (`sleep 60 & wait`) and a
//! Python program (`subprocess.Popen(['sleep', '60'])`). The processes of a run are found
//! in /proc by the `SLUICE_RUN_ID` every process of its attempts inherits.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Between SIGTERM and SIGKILL when an exec job is stopped.
const KILL_GRACE: Duration = Duration::from_millis(sluice_worker::limits::EXEC_KILL_GRACE_MS);

/// The two jobs, with `extra` (YAML keys) added to each.
fn workflow(name: &str, extra: &str) -> String {
    let python = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)";
    format!(
        "name: {name}\njobs:\n  shell: {{ run: exec{extra}, command: [sh, -c, 'sleep 60 & wait'] }}\n  python: {{ run: exec{extra}, command: [python3, -c, {}] }}\n",
        serde_json::to_string(python).expect("json")
    )
}

/// Starts a stack with one worker (both jobs at once), submits `yaml` and waits until both
/// jobs' grandchildren run. Returns the stack, the worker, and the run id.
fn start(yaml: &str, worker_args: &[&str]) -> (Stack, usize, String) {
    let mut stack = Stack::start();
    stack.coordinator();
    let mut args = vec!["--concurrency", "2"];
    args.extend_from_slice(worker_args);
    let worker = stack.worker(&args);
    let file = stack.write("groups.yaml", yaml);
    let submitted = stack.sluice_json(&["submit", file.to_str().expect("path")], 0);
    let run_id = submitted["id"].as_str().expect("run id").to_owned();
    wait_until(Duration::from_secs(60), "both jobs' grandchildren to run", || {
        attempt_processes(&run_id).iter().filter(|(_, argv)| argv == "sleep 60").count() == 2
    });
    (stack, worker, run_id)
}

/// Live processes (pid, argv joined by spaces) whose environment holds the run's
/// `SLUICE_RUN_ID`: exec sets it, and every process an attempt starts inherits it. A
/// zombie is dead: it is not listed.
fn attempt_processes(run_id: &str) -> Vec<(i32, String)> {
    let marker = format!("SLUICE_RUN_ID={run_id}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else { continue };
        // A process that ends meanwhile has no files any more: it is not alive.
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if !environ.split(|byte| *byte == 0).any(|variable| variable == marker.as_bytes()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, Some("Z" | "X") | None) {
            continue;
        }
        let argv = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv: Vec<String> = argv
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        found.push((pid, argv.join(" ")));
    }
    found
}

/// Waits until no process of the run is alive, at most until `deadline`. Processes still
/// alive then are killed (so a failing test leaves nothing behind) and named in the panic.
fn assert_nothing_alive_by(run_id: &str, deadline: Instant, after: &str) {
    loop {
        let alive = attempt_processes(run_id);
        if alive.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for (pid, _) in &alive {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            panic!("processes of the run still alive after {after}: {alive:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cancel_stops_every_process_of_the_attempts() {
    let (stack, _worker, run_id) = start(&workflow("cancel-groups", ""), &[]);
    let cancelled = stack.sluice_json(&["cancel", &run_id], 0);
    assert_eq!(cancelled["state"], "cancelled", "{cancelled:#}");
    assert_nothing_alive_by(&run_id, Instant::now() + KILL_GRACE + Duration::from_secs(1), "cancel");
}

#[test]
fn a_timeout_stops_every_process_of_the_attempt() {
    let timeout = Duration::from_secs(1);
    let (stack, _worker, run_id) = start(&workflow("timeout-groups", ", timeout: 1s, retry: { max_attempts: 1 }"), &[]);
    // Seen running, so the timeouts fire within `timeout` from now.
    assert_nothing_alive_by(&run_id, Instant::now() + timeout + KILL_GRACE + Duration::from_secs(1), "the timeout");
    let status = stack.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(status["state"], "failed", "{status:#}");
    for job in status["jobs"].as_array().expect("jobs") {
        assert!(job["error"].as_str().is_some_and(|error| error.contains("timed out after 1s")), "{job:#}");
    }
}

#[test]
fn a_worker_sigterm_stops_every_process_of_its_attempts() {
    let shutdown_grace = Duration::from_secs(1);
    let (mut stack, worker, run_id) = start(&workflow("sigterm-groups", ""), &["--shutdown-grace", "1s"]);
    stack.signal(worker, "TERM");
    // The worker's grace for its jobs to finish, then theirs between SIGTERM and SIGKILL.
    let deadline = Instant::now() + shutdown_grace + KILL_GRACE + Duration::from_secs(1);
    assert_nothing_alive_by(&run_id, deadline, "the worker's SIGTERM");
    let exit = stack.wait_exit(worker, Duration::from_secs(30));
    assert!(exit.success(), "worker exit {exit:?}");
}

#[test]
fn a_worker_sigkill_takes_every_process_of_its_attempts_with_it() {
    let (mut stack, worker, run_id) = start(&workflow("sigkill-groups", ""), &[]);
    stack.kill(worker);
    assert_nothing_alive_by(&run_id, Instant::now() + Duration::from_secs(2), "the worker's SIGKILL");
}
