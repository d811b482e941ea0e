//! One bad input never stalls everyone: inputs past their limits are refused where they
//! enter (after YAML aliases are expanded), stored values stay bounded however often a job
//! is retried or whatever its events claim, and a bystander run finishes meanwhile.

mod common;

use common::*;
use sluice_proto::limits::{
    ATTEMPTS_KEPT_LATEST, JOB_DEFINITION_MAX_BYTES, WORKER_NAME_MAX_BYTES, WORKFLOW_YAML_MAX_BYTES,
};
use sluice_proto::{EventKind, JobEvent, RunId, encode, names};

const BYSTANDER: &str = "name: bystander\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n";

/// A 2.3 KB workflow whose aliases expand job `big`'s config to 2.2 MB.
fn alias_bomb() -> String {
    let leaf = format!("\"{}\"", "x".repeat(220));
    let level = |alias: &str| vec![format!("*{alias}"); 10].join(", ");
    format!(
        "name: bomb\njobs:\n  big:\n    run: noop\n    config:\n      a: &a [{}]\n      b: &b [{}]\n      c: &c [{}]\n      d: [{}]\n",
        vec![leaf; 10].join(", "),
        level("a"),
        level("b"),
        level("c")
    )
}

/// Publishes a submission the way a client that skipped `validate` would.
fn publish_raw(stack: &Stack, workflow: &str) -> RunId {
    stack.block_on(async {
        let js = sluice_testkit::connect(&stack.url()).await.expect("connect");
        sluice_testkit::workflow::submit(&js, &sluice_testkit::workflow::submission(workflow)).await.expect("stored")
    })
}

#[test]
fn inputs_past_their_limits_are_refused_where_they_enter_and_a_bystander_finishes() {
    let mut stack = Stack::start();
    let coordinator = stack.coordinator();
    stack.worker(&[]);
    let bomb = alias_bomb();
    assert!(bomb.len() < 3000, "the YAML is {} bytes", bomb.len());
    let huge = format!("name: huge\njobs:\n  a: {{ run: noop }}\n# {}\n", "p".repeat(WORKFLOW_YAML_MAX_BYTES));

    // `validate` (and so `submit`) refuses both, naming what is wrong.
    let bomb_file = stack.write("bomb.yaml", &bomb);
    let output = stack.sluice(&["validate", bomb_file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("job `big`: its definition is")
            && stderr.contains(&format!("over the limit of {JOB_DEFINITION_MAX_BYTES}")),
        "{stderr}"
    );
    let huge_file = stack.write("huge.yaml", &huge);
    let output = stack.sluice(&["submit", huge_file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains(&format!("the limit is {WORKFLOW_YAML_MAX_BYTES}")),
        "{}",
        text(&output.stderr)
    );

    // Sent anyway, past the CLI: the coordinator rejects them and goes on.
    let bomb_run = publish_raw(&stack, &bomb);
    let huge_run = publish_raw(&stack, &huge);
    let bystander = stack.write("bystander.yaml", BYSTANDER);
    assert_eq!(submit_and_wait(&stack, &bystander, 0)["state"], "succeeded");
    assert!(stack.is_running(coordinator));
    for (run, needle) in [(bomb_run, "job `big`: its definition is"), (huge_run, "the limit is 524288")] {
        let output = stack.sluice(&["status", &run.to_string()]);
        assert_eq!(output.status.code(), Some(1), "{run}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("was rejected") && stderr.contains(needle), "{stderr}");
    }
}

#[test]
fn a_hundred_attempts_keep_a_bounded_history_and_the_dead_letter_is_kept() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    // Every attempt fails with a 4 KiB error; the config is large too.
    let flow = format!(
        "name: stubborn\njobs:\n  stubborn:\n    run: exec\n    command: [sh, -c, \"head -c 6000 /dev/zero | tr '\\\\0' e >&2; exit 1\"]\n    config: {{ blob: \"{}\" }}\n    retry: {{ max_attempts: 100, backoff: fixed, initial: 0s, max: 0s, jitter: false }}\n  other: {{ run: noop }}\n",
        "c".repeat(100_000)
    );
    let file = stack.write("stubborn.yaml", &flow);
    let status = submit_and_wait(&stack, &file, 1);
    assert_eq!(status["state"], "failed");
    let job = status["jobs"].as_array().unwrap().iter().find(|job| job["name"] == "stubborn").unwrap();
    assert_eq!(job["attempts"], 100);
    let history = job["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1 + ATTEMPTS_KEPT_LATEST, "the first and the latest are kept");
    assert_eq!(history[0]["attempt"], 1);
    assert_eq!(history[1]["attempt"], 100 - ATTEMPTS_KEPT_LATEST as u64 + 1);
    assert_eq!(job["attempts_omitted"], 100 - 1 - ATTEMPTS_KEPT_LATEST as u64);
    // The job's dead letter is there, whole, and says how many attempts it had.
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let letters = letters["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["attempts"], 100);
    let bystander = stack.write("bystander.yaml", BYSTANDER);
    assert_eq!(submit_and_wait(&stack, &bystander, 0)["state"], "succeeded");
}

#[test]
fn forged_events_with_huge_worker_ids_do_not_grow_the_record() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let file = stack.write("slow.yaml", "name: slow\njobs:\n  nap: { run: sleep, config: { duration: 2s } }\n");
    let submitted = stack.sluice_json(&["submit", file.to_str().unwrap()], 0);
    let id: RunId = submitted["id"].as_str().unwrap().parse().unwrap();
    wait_until(std::time::Duration::from_secs(20), "the job to start", || {
        let status = stack.sluice_json(&["status", &id.to_string()], 0);
        status["jobs"][0]["state"] == "running"
    });
    // Two `started` events for later attempts, each naming a 600 KB worker.
    stack.block_on(async {
        let js = sluice_testkit::connect(&stack.url()).await.expect("connect");
        for attempt in [5, 6] {
            let event =
                JobEvent::new(id, "nap", attempt, 0, EventKind::Started, &"w".repeat(600_000), chrono::Utc::now());
            let subject = names::event_subject("default", &id, "nap");
            js.publish(subject, encode(&event).expect("encode").into()).await.expect("publish").await.expect("stored");
        }
    });
    let bystander = stack.write("bystander.yaml", BYSTANDER);
    assert_eq!(submit_and_wait(&stack, &bystander, 0)["state"], "succeeded");
    let status = stack.wait_for_run(&id.to_string(), std::time::Duration::from_secs(60));
    for attempt in status["jobs"][0]["attempt_history"].as_array().unwrap() {
        let worker = attempt["worker"].as_str().unwrap();
        assert!(worker.len() <= WORKER_NAME_MAX_BYTES + 3, "a {} byte worker id was kept", worker.len());
    }
}
