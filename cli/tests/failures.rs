//! Failure handling through real processes: retries with backoff, timeouts, permanent
//! errors, dead letters and replay, failure policies, cancel and retry.

mod common;

use std::time::Duration;

use chrono::DateTime;
use common::*;

fn started_at(attempt: &serde_json::Value) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(attempt["started_at"].as_str().unwrap()).unwrap()
}

fn job<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["jobs"].as_array().unwrap().iter().find(|job| job["name"] == name).unwrap()
}

fn stack() -> Stack {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "4"]);
    stack
}

#[test]
fn a_failing_job_is_retried_with_backoff_and_status_shows_every_attempt() {
    let stack = stack();
    let file = stack.write(
        "flaky.yaml",
        "name: flaky\njobs:\n  flaky:\n    run: fail\n    config: { message: database busy, succeed_on_attempt: 3 }\n    retry: { max_attempts: 4, backoff: exponential, initial: 400ms, max: 10s, jitter: false }\n",
    );
    let status = submit_and_wait(&stack, &file, 0);
    let flaky = job(&status, "flaky");
    assert_eq!(flaky["attempts"], 3);
    let history = flaky["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[0]["error"], "database busy");
    assert_eq!(history[1]["error"], "database busy");
    assert!(history[2]["error"].is_null());
    let first_gap = started_at(&history[1]) - started_at(&history[0]);
    let second_gap = started_at(&history[2]) - started_at(&history[1]);
    assert!(first_gap.num_milliseconds() >= 400, "waited {first_gap}");
    assert!(second_gap.num_milliseconds() >= 800, "exponential: waited {second_gap}");
}

#[test]
fn a_long_retry_delay_is_a_scheduled_message_not_pending_work() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--max-nak-delay", "100ms"]);
    let file = stack.write(
        "later.yaml",
        "name: later\njobs:\n  later:\n    run: fail\n    config: { succeed_on_attempt: 2 }\n    retry: { max_attempts: 2, initial: 3s, max: 3s, jitter: false }\n",
    );
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), "the first attempt to fail", || {
        let output = stack.sluice(&["status", &id, "-o", "json"]);
        output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .is_ok_and(|status| status["jobs"][0]["state"] == "retrying")
    });
    // While it waits, the pool has no pending work (what KEDA scales on).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (pending, ack_pending) = runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(sluice_proto::names::JOBS_STREAM).await.unwrap();
        let mut consumer: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer("pool-default").await.unwrap();
        let info = consumer.info().await.unwrap();
        (info.num_pending, info.num_ack_pending)
    });
    assert_eq!((pending, ack_pending), (0, 0), "a waiting retry must not count as pool work");
    let status = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["jobs"][0]["attempts"], 2);
    let history = status["jobs"][0]["attempt_history"].as_array().unwrap();
    assert!((started_at(&history[1]) - started_at(&history[0])).num_milliseconds() >= 3000);

    // Scheduled retries count against max_attempts like NAKed ones: a job that always fails
    // ends after its last attempt instead of being scheduled again for ever.
    let file = stack.write(
        "hopeless.yaml",
        "name: hopeless\njobs:\n  never:\n    run: fail\n    retry: { max_attempts: 3, initial: 500ms, max: 500ms, jitter: false }\n",
    );
    let status = submit_and_wait(&stack, &file, 1);
    assert_eq!(status["jobs"][0]["state"], "failed", "{status:#}");
    assert_eq!(status["jobs"][0]["attempts"], 3);
}

#[test]
fn a_timeout_stops_the_process_and_counts_as_a_failed_attempt() {
    let stack = stack();
    let pid_file = stack.dir.path().join("pid");
    let yaml = format!(
        "name: slow\njobs:\n  slow:\n    run: exec\n    timeout: 1s\n    retry: {{ max_attempts: 1 }}\n    command: [sh, -c, 'echo $$ > {}; exec sleep 60']\n",
        pid_file.display()
    );
    let file = stack.write("slow.yaml", &yaml);
    let status = submit_and_wait(&stack, &file, 1);
    let slow = job(&status, "slow");
    assert_eq!(slow["state"], "failed");
    assert!(slow["error"].as_str().unwrap().contains("timed out after 1s"), "{slow:#}");
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the job's process {pid} was stopped");
}

#[test]
fn permanent_errors_are_not_retried_and_go_to_the_dead_letter_stream() {
    let stack = stack();
    let file = stack.write(
        "permanent.yaml",
        "name: permanent\non_failure: continue\ndefaults:\n  retry: { max_attempts: 5, initial: 100ms }\njobs:\n  exec78: { run: exec, command: [sh, -c, 'echo bad config >&2; exit 78'] }\n  listed: { run: exec, permanent_exit_codes: [4], command: [sh, -c, 'exit 4'] }\n  rust: { run: fail, config: { message: no such table, retryable: false } }\n  fine: { run: noop }\n",
    );
    let status = submit_and_wait(&stack, &file, 1);
    for name in ["exec78", "listed", "rust"] {
        let failed = job(&status, name);
        assert_eq!(failed["state"], "failed", "{failed:#}");
        assert_eq!(failed["attempts"], 1, "{name} was retried: {failed:#}");
    }
    assert_eq!(job(&status, "fine")["state"], "completed", "on_failure: continue");
    let letters = stack.sluice_json(&["dlq", "list", "--workflow", "permanent"], 0);
    let letters = letters["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let rust = letters.iter().find(|letter| letter["job"] == "rust").unwrap();
    assert_eq!(rust["reason"], "no such table");
    assert_eq!(rust["pool"], "default");
    let shown = stack.sluice_json(&["dlq", "show", &rust["id"].to_string()], 0);
    assert_eq!(shown["job"]["kind"], "fail");
    assert_eq!(shown["attempts"][0]["error"], "no such table");
    assert_eq!(shown["headers"]["Sluice-Job"], "rust");
    let purged = stack.sluice_json(&["dlq", "purge", "--workflow", "permanent"], 0);
    assert_eq!(purged["purged"], 3);
    assert!(stack.sluice_json(&["dlq", "list"], 0)["dead_letters"].as_array().unwrap().is_empty());
}

#[test]
fn a_replayed_dead_letter_gets_fresh_attempts_and_its_run_can_still_succeed() {
    let stack = stack();
    let log = stack.job_log();
    let yaml = format!(
        "name: replay\njobs:\n  first: {}\n  shaky:\n    needs: [first]\n    run: fail\n    config: {{ succeed_on_attempt: 3 }}\n    retry: {{ max_attempts: 2, initial: 100ms }}\n  last: {}\n",
        recording_job(&log, 0.0, &[]),
        recording_job(&log, 0.0, &["shaky".into()])
    );
    let file = stack.write("replay.yaml", &yaml);
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();
    assert_eq!(job(&failed, "shaky")["attempts"], 2);
    assert_eq!(job(&failed, "last")["state"], "skipped");
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let letter = &letters["dead_letters"][0];
    assert_eq!(letter["attempts"], 2, "every attempt is kept: {letter:#}");
    let replayed = stack.sluice_json(&["dlq", "replay", &letter["id"].to_string()], 0);
    assert_eq!(replayed["replayed"][0]["job"], "shaky");
    let status = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "shaky")["attempts"], 3, "attempts continue from the dead letter's");
    assert!(stack.sluice_json(&["dlq", "list"], 0)["dead_letters"].as_array().unwrap().is_empty());
    let recorded = read_job_log(&log);
    assert_eq!(recorded["first"].starts.len(), 1, "completed work is kept");
    assert_eq!(recorded["last"].starts.len(), 1);
}

#[test]
fn retry_reruns_what_failed_and_what_depends_on_it_keeping_completed_work() {
    let stack = stack();
    let log = stack.job_log();
    let flag = stack.dir.path().join("fixed");
    let yaml = format!(
        "name: retry\njobs:\n  first: {}\n  fragile:\n    needs: [first]\n    run: exec\n    retry: {{ max_attempts: 1 }}\n    command: [sh, -c, 'test -f {}']\n  last: {}\n",
        recording_job(&log, 0.0, &[]),
        flag.display(),
        recording_job(&log, 0.0, &["fragile".into()])
    );
    let file = stack.write("retry.yaml", &yaml);
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();
    let still_failing = stack.sluice(&["retry", &id, "--job", "nope"]);
    assert_eq!(still_failing.status.code(), Some(2));
    assert!(text(&still_failing.stderr).contains("has no job `nope`"));
    std::fs::write(&flag, "").unwrap();
    let status = stack.sluice_json(&["retry", &id, "--wait"], 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "fragile")["attempts"], 2);
    let recorded = read_job_log(&log);
    assert_eq!(recorded["first"].starts.len(), 1, "completed work is kept");
    assert_eq!(recorded["last"].starts.len(), 1);
    let again = stack.sluice(&["retry", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("nothing to retry"), "{}", text(&again.stderr));
}

#[test]
fn cancel_stops_running_jobs_and_queued_ones_never_start() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "1"]);
    let log = stack.job_log();
    let pid_file = stack.dir.path().join("pid");
    let yaml = format!(
        "name: cancel\njobs:\n  long:\n    run: exec\n    command: [sh, -c, 'echo $$ > {}; echo \"start long 1 0\" >> {}; exec sleep 60']\n  other: {}\n  after: {}\n",
        pid_file.display(),
        log.display(),
        recording_job(&log, 0.0, &[]),
        recording_job(&log, 0.0, &["long".into()])
    );
    let file = stack.write("cancel.yaml", &yaml);
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), "a job to start", || {
        std::fs::read_to_string(&log).is_ok_and(|text| !text.is_empty())
    });
    let started_first = std::fs::read_to_string(&log).unwrap();
    let cancelled = stack.sluice_json(&["cancel", &id], 0);
    assert_eq!(cancelled["state"], "cancelled");
    assert!(cancelled["jobs"].as_array().unwrap().iter().all(|job| job["state"] == "cancelled"), "{cancelled:#}");
    if started_first.contains("long") {
        let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_owned();
        wait_until(Duration::from_secs(15), "the running job's process to stop", || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
    }
    // Whatever was queued never starts, even with a free worker.
    let lines_after_cancel = std::fs::read_to_string(&log).unwrap().lines().count();
    let probe = stack.write("probe.yaml", "name: probe\njobs:\n  a: { run: noop }\n");
    submit_and_wait(&stack, &probe, 0);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), lines_after_cancel, "a cancelled job started");
    let again = stack.sluice(&["cancel", &id]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already finished"));
}
