//! Running Sluice on a cluster, with real processes: the `--metrics-listen` probes follow
//! NATS and the role; `--max-jobs` and `--exit-when-idle` end a worker after its last job;
//! SIGTERM lets a running job finish; a pool's `max_timeout` caps a job's timeout;
//! `--history-max-age` lets finished runs go while the coordinator keeps working.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a probe may take to follow a change (a reconnect, a takeover).
const FOLLOW: Duration = Duration::from_secs(20);

/// The address the process's probes listen on, once it logged it.
fn probe_address(stack: &Stack, process: usize) -> String {
    let mut address = None;
    wait_until(Duration::from_secs(10), "the metrics listener to log its address", || {
        address = stack.log(process).lines().find(|line| line.contains("metrics listening")).and_then(|line| {
            let at = line.find("addr=")? + "addr=".len();
            Some(line[at..].split_whitespace().next()?.to_owned())
        });
        address.is_some()
    });
    address.unwrap()
}

/// `GET path` on `address`: the status code, the headers and the body (`None` when nothing
/// answers).
fn get_text(address: &str, path: &str) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Some((status, head.to_owned(), body.to_owned()))
}

/// `GET path` on `address`: the status code and the JSON body (`None` when nothing answers).
fn get(address: &str, path: &str) -> Option<(u16, serde_json::Value)> {
    let (status, _, body) = get_text(address, path)?;
    Some((status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)))
}

/// Waits until `/readyz` answers `status`; returns the body.
fn wait_ready(address: &str, status: u16, what: &str) -> serde_json::Value {
    let mut body = serde_json::Value::Null;
    wait_until(FOLLOW, what, || match get(address, "/readyz") {
        Some((code, answer)) => {
            body = answer;
            code == status
        }
        None => false,
    });
    body
}

#[test]
fn probes_say_ready_only_while_connected_and_serving_the_role() {
    let mut stack = Stack::start();
    // Not reachable yet: the processes wait for NATS, alive but not ready.
    stack.nats.stop();
    let listen = ["--metrics-listen", "127.0.0.1:0"];
    let leader = stack.coordinator_with(&listen);
    let leader_probe = probe_address(&stack, leader);
    assert_eq!(get(&leader_probe, "/healthz").map(|(code, _)| code), Some(200));
    let body = wait_ready(&leader_probe, 503, "the coordinator to be not ready without NATS");
    assert_eq!(body["nats"], "connecting", "{body}");

    stack.nats.restart().unwrap();
    // Ready as a standby first (campaigning is its role), then leading once it holds the lease.
    let mut body = serde_json::Value::Null;
    wait_until(FOLLOW, "the coordinator to lead once NATS is up", || {
        body = get(&leader_probe, "/readyz").map(|(_, answer)| answer).unwrap_or_default();
        body["phase"] == "leading"
    });
    assert_eq!(body, serde_json::json!({"ready": true, "nats": "connected", "phase": "leading"}));
    wait_until_set_up(&stack);
    let standby = stack.coordinator_with(&listen);
    let standby_probe = probe_address(&stack, standby);
    let body = wait_ready(&standby_probe, 200, "the standby to be ready");
    assert_eq!(body["phase"], "standby", "{body}");
    let worker = stack.worker(&listen);
    let worker_probe = probe_address(&stack, worker);
    let body = wait_ready(&worker_probe, 200, "the worker to be ready once announced");
    assert_eq!(body["phase"], "ready", "{body}");

    stack.nats.stop();
    for (probe, who) in [(&leader_probe, "leader"), (&standby_probe, "standby"), (&worker_probe, "worker")] {
        let body = wait_ready(probe, 503, &format!("the {who} to be not ready once NATS is gone"));
        assert_ne!(body["nats"], "connected", "{who}: {body}");
        assert_eq!(get(probe, "/healthz").map(|(code, _)| code), Some(200), "{who} is still alive");
    }
    stack.nats.restart().unwrap();
    for (probe, who) in [(&leader_probe, "leader"), (&standby_probe, "standby"), (&worker_probe, "worker")] {
        wait_ready(probe, 200, &format!("the {who} to be ready again once NATS is back"));
    }
    assert_eq!(get(&worker_probe, "/nothing").map(|(code, _)| code), Some(404));
}

/// `/metrics` of `address`, checked to be Prometheus text.
fn scrape(address: &str) -> String {
    let (status, head, body) = get_text(address, "/metrics").expect("the metrics listener answers");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body
}

/// The value of the sample `series` (name and labels exactly as exposed), if exposed.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Runs `promtool check metrics` (Debian's `prometheus` package, installed by
/// scripts/install-tools.sh) on `text`: it fails on anything not valid Prometheus text or
/// against its naming conventions (units, `_total` on counters).
fn promtool_check(text: &str, who: &str) {
    let promtool = ["/usr/bin/promtool", "promtool"]
        .into_iter()
        .find(|path| std::process::Command::new(path).arg("--version").output().is_ok())
        .expect("promtool is installed (scripts/install-tools.sh installs Debian's prometheus package)");
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics refused the {who}'s metrics:\n{}{}\n{text}",
        text_of(&output.stdout),
        text_of(&output.stderr)
    );
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const COUNTED: &str = "name: counted
on_failure: continue
jobs:
  slow-0: { run: sleep, config: { duration: 1500ms } }
  slow-1: { run: sleep, config: { duration: 1500ms } }
  slow-2: { run: sleep, config: { duration: 1500ms } }
  slow-3: { run: sleep, config: { duration: 1500ms } }
  shaky: { run: fail, config: { succeed_on_attempt: 2 }, retry: { max_attempts: 2, initial: 100ms, jitter: false } }
  broken: { run: fail, config: { retryable: false } }
  after: { run: noop, needs: [broken] }
";

#[test]
fn metrics_count_a_runs_jobs_attempts_dead_letters_and_lag_and_pass_promtool() {
    let mut stack = Stack::start();
    let listen = ["--metrics-listen", "127.0.0.1:0"];
    let coordinator = stack.coordinator_with(&listen);
    let coordinator_metrics = probe_address(&stack, coordinator);
    wait_until_set_up(&stack);
    // One slot: the slow jobs wait their turn, so the pool has a lag to see.
    let worker = stack.worker(&["--metrics-listen", "127.0.0.1:0", "--concurrency", "1"]);
    let worker_metrics = probe_address(&stack, worker);
    wait_ready(&worker_metrics, 200, "the worker to be ready");
    let before = scrape(&coordinator_metrics);
    assert_eq!(sample(&before, "sluice_coordinator_leader"), Some(1.0), "{before}");
    assert_eq!(sample(&before, "sluice_coordinator_terms_total"), Some(1.0), "{before}");
    promtool_check(&before, "coordinator (idle)");

    let file = stack.write("counted.yaml", COUNTED);
    let lag = r#"sluice_pool_queue_lag{pool="default"}"#;
    let status = std::thread::scope(|scope| {
        let waited = scope.spawn(|| submit_and_wait(&stack, &file, 1));
        let mut during = String::new();
        wait_until(Duration::from_secs(20), "the leader to report the pool's lag while jobs wait", || {
            during = scrape(&coordinator_metrics);
            sample(&during, lag).is_some_and(|waiting| waiting >= 1.0)
        });
        promtool_check(&during, "coordinator (running)");
        let busy = scrape(&worker_metrics);
        assert_eq!(sample(&busy, r#"sluice_worker_slots{pool="default"}"#), Some(1.0), "{busy}");
        waited.join().unwrap()
    });
    assert_eq!(status["state"], "failed", "{status}");
    let mut after = String::new();
    wait_until(Duration::from_secs(20), "the pool's lag and ack pending to drain to 0", || {
        after = scrape(&coordinator_metrics);
        sample(&after, lag) == Some(0.0) && sample(&after, r#"sluice_pool_ack_pending{pool="default"}"#) == Some(0.0)
    });
    for (series, expected) in [
        (r#"sluice_jobs_finished_total{pool="default",state="completed"}"#, 5.0),
        (r#"sluice_jobs_finished_total{pool="default",state="failed"}"#, 1.0),
        (r#"sluice_jobs_finished_total{pool="default",state="skipped"}"#, 1.0),
        (r#"sluice_job_attempts_total{pool="default",outcome="succeeded"}"#, 5.0),
        (r#"sluice_job_attempts_total{pool="default",outcome="retrying"}"#, 1.0),
        (r#"sluice_job_attempts_total{pool="default",outcome="failed"}"#, 1.0),
        (r#"sluice_dead_letters_total{pool="default"}"#, 1.0),
        ("sluice_runs_started_total", 1.0),
        (r#"sluice_runs_finished_total{state="failed"}"#, 1.0),
        (r#"sluice_run_duration_seconds_count{state="failed"}"#, 1.0),
        // Six jobs started a first attempt (`after` was skipped).
        (r#"sluice_dispatch_latency_seconds_count{pool="default"}"#, 6.0),
        ("sluice_runs_active", 0.0),
    ] {
        assert_eq!(sample(&after, series), Some(expected), "{series} in\n{after}");
    }
    let took = sample(&after, r#"sluice_run_duration_seconds_sum{state="failed"}"#).unwrap();
    assert!(took >= 6.0, "four 1.5 s jobs one after another: the run took {took} s");
    assert!(sample(&after, "sluice_engine_apply_seconds_count").unwrap() >= 14.0, "{after}");
    assert!(sample(&after, "sluice_kv_write_seconds_count").unwrap() >= 1.0, "{after}");
    promtool_check(&after, "coordinator (after)");

    let worked = scrape(&worker_metrics);
    for (series, expected) in [
        (r#"sluice_worker_attempts_total{pool="default",outcome="succeeded"}"#, 5.0),
        (r#"sluice_worker_attempts_total{pool="default",outcome="retrying"}"#, 1.0),
        (r#"sluice_worker_attempts_total{pool="default",outcome="failed"}"#, 1.0),
        (r#"sluice_worker_attempt_duration_seconds_count{pool="default"}"#, 7.0),
        (r#"sluice_worker_slots_busy{pool="default"}"#, 0.0),
    ] {
        assert_eq!(sample(&worked, series), Some(expected), "{series} in\n{worked}");
    }
    promtool_check(&worked, "worker");

    // A standby reports no pool gauges (the leader does), and says it does not lead.
    let standby = stack.coordinator_with(&listen);
    let standby_metrics = probe_address(&stack, standby);
    wait_ready(&standby_metrics, 200, "the standby to be ready");
    let standing = scrape(&standby_metrics);
    assert_eq!(sample(&standing, "sluice_coordinator_leader"), Some(0.0), "{standing}");
    assert_eq!(sample(&standing, lag), None, "{standing}");
}

#[test]
fn a_listen_address_that_does_not_parse_is_refused_naming_the_flag() {
    for command in ["coordinator", "worker"] {
        let output = std::process::Command::new(SLUICE)
            .args([command, "--metrics-listen", "localhost:9090", "--nats-url", "nats://127.0.0.1:1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("--metrics-listen") && stderr.contains("localhost:9090"), "{command}: {stderr}");
    }
    for (args, expected) in [
        (&["worker", "--max-jobs", "0"][..], "--max-jobs must be 1 to 1000000000, not 0"),
        (&["worker", "--exit-when-idle", "0s"][..], "--exit-when-idle must be longer than 0s"),
        (&["coordinator", "--history-max-age", "500ms"][..], "--history-max-age must be at least 1s, not 500ms"),
    ] {
        let output = std::process::Command::new(SLUICE)
            .args(args)
            .args(["--nats-url", "nats://127.0.0.1:1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// A workflow of `count` independent recording jobs of `seconds` each.
fn independent_jobs(name: &str, log: &std::path::Path, count: usize, seconds: f64) -> String {
    let mut yaml = format!("name: {name}\njobs:\n");
    for i in 0..count {
        yaml.push_str(&format!("  job-{i}: {}\n", recording_job(log, seconds, &[])));
    }
    yaml
}

fn ended(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|line| line.starts_with("end ")).count()
}

#[test]
fn a_worker_with_max_jobs_exits_after_running_that_many() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    let log = stack.job_log();
    let file = stack.write("five.yaml", &independent_jobs("five", &log, 5, 0.3));
    let run_id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let worker = stack.worker(&["--concurrency", "2", "--max-jobs", "3"]);
    let status = stack.wait_exit(worker, Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", stack.log(worker));
    // Three ran to the end, none was cut short, and the other two wait for another worker.
    assert_eq!(ended(&log), 3, "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let read = read_job_log(&log);
    assert!(read.values().all(|job| job.starts.len() == job.ends.len()), "{read:?}");
    stack.worker(&[]);
    let status = stack.wait_for_run(&run_id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_ran_once_in_order(&log, &(0..5).map(|i| (format!("job-{i}"), Vec::new())).collect());
}

#[test]
fn a_worker_exits_when_idle_but_never_while_a_job_runs() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    let log = stack.job_log();
    // The job runs longer than the idle time: the worker waits for it, then for the idle time.
    let file = stack.write("one.yaml", &independent_jobs("one", &log, 1, 2.0));
    let run_id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let worker = stack.worker(&["--exit-when-idle", "1s"]);
    let status = stack.wait_exit(worker, Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", stack.log(worker));
    assert_eq!(ended(&log), 1, "the job finished before the worker left");
    let status = stack.wait_for_run(&run_id, Duration::from_secs(10));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    // With nothing to do it leaves after the idle time.
    let idle = stack.worker(&["--exit-when-idle", "1s"]);
    let started = std::time::Instant::now();
    assert!(stack.wait_exit(idle, Duration::from_secs(20)).success(), "{}", stack.log(idle));
    assert!(started.elapsed() >= Duration::from_secs(1), "left after {:?}", started.elapsed());
}

#[test]
fn sigterm_lets_a_running_job_finish_and_it_is_not_run_again() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    let log = stack.job_log();
    let file = stack.write("long.yaml", &independent_jobs("long", &log, 1, 3.0));
    let run_id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let worker = stack.worker(&["--metrics-listen", "127.0.0.1:0"]);
    let probe = probe_address(&stack, worker);
    let started = || std::fs::read_to_string(&log).unwrap_or_default().contains("start ");
    wait_until(Duration::from_secs(20), "the job to start", started);
    stack.signal(worker, "TERM");
    let body = wait_ready(&probe, 503, "the draining worker to be not ready");
    assert_eq!(body["phase"], "draining", "{body}");
    let status = stack.wait_exit(worker, Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", stack.log(worker));
    assert_eq!(ended(&log), 1, "the job ran to its end");
    let status = stack.wait_for_run(&run_id, Duration::from_secs(10));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["jobs"][0]["attempts"], 1, "{status:#}");
    assert_ran_once_in_order(&log, &[("job-0".to_owned(), Vec::new())].into());
}

#[test]
fn a_pools_max_timeout_caps_a_jobs_timeout() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    stack.sluice_json(&["pool", "apply", "default", "--max-timeout", "1s"], 0);
    stack.worker(&[]);
    // One job asks for a minute, the other sets no timeout: both get the pool's second.
    let file = stack.write(
        "capped.yaml",
        "name: capped\njobs:\n  long: { run: exec, timeout: 1m, retry: { max_attempts: 1 }, command: [sleep, '30'] }\n  none: { run: exec, retry: { max_attempts: 1 }, command: [sleep, '30'] }\n",
    );
    let run_id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let status = stack.wait_for_run(&run_id, Duration::from_secs(20));
    assert_eq!(status["state"], "failed", "{status:#}");
    for job in status["jobs"].as_array().unwrap() {
        assert!(job["error"].as_str().unwrap_or_default().contains("timed out after 1s"), "{job:#}");
    }
}

#[test]
fn with_a_history_max_age_finished_runs_go_and_the_coordinator_keeps_working() {
    let mut stack = Stack::start();
    let coordinator = stack.coordinator_with(&["--history-max-age", "2s"]);
    wait_until_set_up(&stack);
    stack.worker(&[]);
    let max_age = |stack: &Stack, stream: &str| {
        stack.block_on(async {
            let js = sluice_testkit::connect(&stack.url()).await.unwrap();
            js.get_stream(stream).await.unwrap().cached_info().config.max_age
        })
    };
    assert_eq!(max_age(&stack, "KV_sluice-runs"), Duration::from_secs(2));
    assert_eq!(max_age(&stack, "KV_sluice-jobs"), Duration::from_secs(2));
    assert_eq!(max_age(&stack, "SLUICE_INDEX"), Duration::from_secs(2));
    let file = stack.write("quick.yaml", "name: quick\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n");
    let first = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.wait_for_run(&first, Duration::from_secs(20))["state"], "succeeded");
    let listed = |id: &str| {
        let runs = stack.sluice_json(&["runs"], 0);
        runs["runs"].as_array().unwrap().iter().any(|run| run["id"] == id)
    };
    assert!(listed(&first));
    // Its index entry (written when it began) and its record (written when it ended) expire
    // apart, each 2 s after its own write, and the server removes expired messages on its
    // own tick: so wait for both.
    let status_code = |stack: &Stack| stack.sluice(&["status", &first, "-o", "json"]).status.code();
    wait_until(Duration::from_secs(20), "the finished run to expire", || {
        !listed(&first) && status_code(&stack) == Some(2)
    });
    let gone = stack.sluice(&["status", &first, "-o", "json"]);
    assert!(text(&gone.stderr).contains(&first), "{}", text(&gone.stderr));
    let cancel = stack.sluice(&["cancel", &first]);
    assert_eq!(cancel.status.code(), Some(2), "{}", text(&cancel.stderr));
    // The coordinator keeps working: a new run of the same workflow (whose index chains'
    // heads have expired since the coordinator last appended to them) runs, and is listed.
    let second = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.wait_for_run(&second, Duration::from_secs(20))["state"], "succeeded");
    assert!(listed(&second));
    assert!(stack.is_running(coordinator));
    assert!(!stack.log(coordinator).contains("coordinator loop failed"), "{}", stack.log(coordinator));
    // Started again without the flag, the coordinator keeps history for ever.
    stack.signal(coordinator, "TERM");
    assert!(stack.wait_exit(coordinator, Duration::from_secs(20)).success());
    stack.coordinator();
    wait_until(Duration::from_secs(20), "the buckets to keep records for ever", || {
        ["KV_sluice-runs", "KV_sluice-jobs", "SLUICE_INDEX"].iter().all(|name| max_age(&stack, name) == Duration::ZERO)
    });
}

/// Bytes and messages a stream holds, read from the server.
fn stream_state(stack: &Stack, name: &str) -> (u64, u64) {
    stack.block_on(async {
        let js = sluice_testkit::connect(&stack.url()).await.unwrap();
        let state = js.get_stream(name).await.unwrap().cached_info().state.clone();
        (state.bytes, state.messages)
    })
}

/// What docs/operations.md ("Storage per run and job") says a run and a job store: a run of
/// one job, then one of 21, of `noop` jobs; the differences are per run and per job.
#[test]
fn a_run_and_a_job_store_about_what_the_docs_say() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    stack.worker(&[]);
    let stores = ["KV_sluice-runs", "KV_sluice-jobs", "SLUICE_INDEX", "OBJ_sluice-specs", "KV_sluice-active"];
    let measure = |stack: &Stack| stores.map(|name| stream_state(stack, name));
    let before = measure(&stack);
    let mut sizes = Vec::new();
    for jobs in [1, 21] {
        let mut yaml = format!("name: size-{jobs}\njobs:\n");
        for i in 0..jobs {
            yaml.push_str(&format!("  step-{i:02}: {{ run: noop }}\n"));
        }
        let file = stack.write(&format!("size-{jobs}.yaml"), &yaml);
        let id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
        assert_eq!(stack.wait_for_run(&id, Duration::from_secs(30))["state"], "succeeded");
        sizes.push(measure(&stack));
    }
    let grew = |at: &[(u64, u64); 5], from: &[(u64, u64); 5], store: usize| at[store].0 - from[store].0;
    let (one, many) = (&sizes[0], &sizes[1]);
    let run_bytes = grew(one, &before, 0);
    let job_bytes = grew(many, one, 1) / 20;
    let first_job = grew(one, &before, 1);
    let index_bytes = grew(one, &before, 2);
    let active_bytes = grew(one, &before, 4);
    eprintln!(
        "per run: record {run_bytes} B, index {index_bytes} B, running-set marker {active_bytes} B, spec {} B (21 jobs: {} B); per job: record {job_bytes} B (a run's first: {first_job} B)",
        grew(one, &before, 3),
        grew(many, one, 3)
    );
    // Loose bounds: a record that grows past them is a change docs/operations.md must tell.
    assert!((200..=1_500).contains(&run_bytes), "a run record takes {run_bytes} B");
    assert!((150..=1_000).contains(&job_bytes), "a job record takes {job_bytes} B");
    assert!(index_bytes <= 4_000, "a run's index entries take {index_bytes} B");
}

#[test]
fn the_server_counts_its_requests_by_route_template_and_passes_promtool() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics = format!("127.0.0.1:{port}");
    let api = start_server(&mut stack, ("alice", "alice-token"), ("bob", "bob-token"), &["--metrics-listen", &metrics]);
    let ready = wait_ready(&metrics, 200, "the server to be ready");
    assert_eq!(ready["nats"], "connected", "{ready}");
    let call = |path: &str| {
        sluice_testkit::http::request(&api, "GET", path, &[("Authorization", "Bearer bob-token")], b"").unwrap().0
    };
    assert_eq!((call("/api/v1/runs"), call("/api/v1/runs")), (200, 200));
    let unknown = sluice_proto::RunId::new().to_string();
    assert_eq!(call(&format!("/api/v1/runs/{unknown}")), 404);
    let text = scrape(&metrics);
    let requests = |route: &str, status: u16| {
        sample(&text, &format!(r#"sluice_http_requests_total{{route="{route}",method="GET",status="{status}"}}"#))
    };
    assert_eq!(requests("/api/v1/runs", 200), Some(2.0), "{text}");
    assert_eq!(requests("/api/v1/runs/{id}", 404), Some(1.0), "the route's template, not the id: {text}");
    assert!(!text.contains(&unknown), "no label holds what a request asked for");
    assert_eq!(sample(&text, r#"sluice_http_request_duration_seconds_count{route="/api/v1/runs"}"#), Some(2.0));
    promtool_check(&text, "server");
}
