//! After a manual fix: `sluice mark RUN JOB --succeeded | --skipped` ends a job by hand (a
//! control request, recorded with who asked) and what needs it proceeds; `when:` lets a
//! cleanup or notify job run whatever happened upstream.

mod common;

use std::time::Duration;

use common::*;

/// `load` prints its inputs: the output a mark gives `extract` reaches it.
const MARKED: &str = r#"name: marks
jobs:
  extract: { run: fail, config: { retryable: false } }
  load: { run: exec, command: [sh, -c, 'echo "inputs: $(cat "$SLUICE_INPUTS_FILE")"'], needs: [extract] }
"#;

fn job<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["jobs"].as_array().unwrap().iter().find(|job| job["name"] == name).unwrap_or_else(|| panic!("{name}"))
}

fn fails(stack: &Stack, args: &[&str], code: i32, needle: &str) {
    let output = stack.sluice(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?} should say {needle:?}: {stderr}");
}

#[test]
fn a_failed_job_marked_succeeded_lets_what_needs_it_run_and_the_run_succeed() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let file = stack.write("marks.yaml", MARKED);
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();
    assert_eq!(job(&failed, "load")["state"], "skipped");

    // Bad input exits 2 before anything is asked; the flag is named.
    fails(&stack, &["mark", &id, "nope", "--succeeded"], 2, "has no job `nope`");
    fails(
        &stack,
        &["mark", &id, "extract", "--succeeded", "--with-output", "{rows"],
        2,
        "--with-output is not valid JSON",
    );
    fails(&stack, &["mark", &id, "extract"], 2, "--succeeded");

    let answer = stack.sluice_json(&["mark", &id, "extract", "--succeeded", "--with-output", r#"{"rows": 7}"#], 0);
    assert_eq!(answer["marked"], "succeeded", "{answer:#}");
    let done = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(done["state"], "succeeded", "the only failure was marked: {done:#}");
    let extract = job(&done, "extract");
    assert_eq!((&extract["state"], &extract["output"]["rows"]), (&"completed".into(), &7.into()), "{extract:#}");
    assert_eq!(extract["marked"]["by"], "anonymous", "who marked it is recorded: {extract:#}");
    assert_eq!(job(&done, "load")["state"], "completed");
    let shown = text(&stack.sluice(&["status", &id]).stdout);
    assert!(shown.contains("marked succeeded by anonymous"), "{shown}");
    let logs = text(&stack.sluice(&["logs", &id, "load"]).stdout);
    assert!(logs.contains(r#""rows":7"#), "load read the marked output: {logs}");
    let letters = stack.sluice_json(&["dlq", "list", "--workflow", "marks"], 0);
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 0, "the dead letter is resolved: {letters:#}");

    // Refusals come from the coordinator, with the exit code of their kind.
    fails(&stack, &["mark", &id, "extract", "--succeeded"], 1, "already succeeded");

    // --skipped: what needs it is skipped as for a skipped job; nothing failed any more.
    let second = submit_and_wait(&stack, &file, 1);
    let second_id = second["id"].as_str().unwrap().to_owned();
    stack.sluice_json(&["mark", &second_id, "extract", "--skipped"], 0);
    let done = stack.wait_for_run(&second_id, Duration::from_secs(30));
    assert_eq!((&done["state"], &job(&done, "extract")["state"]), (&"succeeded".into(), &"skipped".into()), "{done:#}");
    assert_eq!(job(&done, "load")["state"], "skipped");
    assert_eq!(job(&done, "extract")["marked"]["as"], "skipped");
    fails(&stack, &["mark", &second_id, "extract", "--skipped"], 1, "already skipped");
}

#[test]
fn a_running_job_or_a_cancelled_run_cannot_be_marked() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let file = stack.write(
        "slow.yaml",
        "name: slow\njobs:\n  nap: { run: sleep, config: { duration: 60s } }\n  after: { run: noop, needs: [nap] }\n",
    );
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while job(&stack.sluice_json(&["status", &id], 0), "nap")["state"] != "running" {
        assert!(std::time::Instant::now() < deadline, "nap never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    fails(&stack, &["mark", &id, "nap", "--succeeded"], 1, "running on a worker");
    stack.sluice(&["cancel", &id]);
    fails(&stack, &["mark", &id, "after", "--succeeded"], 1, "was cancelled");
}

#[test]
fn an_always_job_runs_after_a_failure_and_an_on_failure_job_is_skipped_when_all_succeed() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let cleanup = stack.write(
        "cleanup.yaml",
        "name: cleanup\njobs:\n  work: { run: fail, config: { retryable: false } }\n  report: { run: noop, needs: [work] }\n  notify: { run: noop, needs: [report], when: always }\n",
    );
    let failed = submit_and_wait(&stack, &cleanup, 1);
    assert_eq!(failed["state"], "failed", "the cleanup does not hide the failure: {failed:#}");
    assert_eq!(job(&failed, "report")["state"], "skipped");
    assert_eq!(job(&failed, "notify")["state"], "completed", "notify runs exactly when it matters: {failed:#}");

    let alerting = stack.write(
        "alerting.yaml",
        "name: alerting\njobs:\n  work: { run: noop }\n  alert: { run: noop, needs: [work], when: on_failure }\n",
    );
    let succeeded = submit_and_wait(&stack, &alerting, 0);
    assert_eq!(succeeded["state"], "succeeded", "{succeeded:#}");
    assert_eq!(job(&succeeded, "alert")["state"], "skipped");

    let wrong = stack.write(
        "wrong.yaml",
        "name: wrong\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a], when: sometimes }\n",
    );
    let output = stack.sluice(&["validate", wrong.to_str().unwrap()]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("job `b`") && stderr.contains("on_success, on_failure, always"), "{stderr}");
}
