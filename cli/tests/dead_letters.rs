//! Dead letters resolve (DESIGN decision 11): a job that runs again takes its dead letters
//! with it, so a later replay can never run finished work again, and a dead letter a crash
//! left behind is refused, not replayed.

mod common;

use std::time::Duration;

use common::*;
use sluice_proto::names;

fn job<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["jobs"].as_array().unwrap().iter().find(|job| job["name"] == name).unwrap()
}

#[test]
fn a_retried_job_resolves_its_dead_letter_and_a_stale_one_cannot_run_finished_work_again() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let file = stack.write(
        "second.yaml",
        "name: second\njobs:\n  a: { run: fail, config: { succeed_on_attempt: 2 }, retry: { max_attempts: 1 } }\n  b: { run: noop, needs: [a] }\n",
    );
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let letter = letters["dead_letters"][0]["id"].as_u64().expect("a's dead letter");
    // What a crash between the retry's writes and its resolving would leave behind.
    let raw = stack.block_on(async {
        let js = sluice_testkit::connect(&stack.url()).await.expect("connect");
        let dlq = js.get_stream(names::DLQ_STREAM).await.expect("DLQ");
        dlq.get_raw_message(letter).await.expect("the dead letter")
    });

    stack.sluice_json(&["retry", &id], 0);
    let retried = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(retried["state"], "succeeded", "{retried:#}");
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 0, "retry resolved it: {letters:#}");
    let output = stack.sluice(&["dlq", "replay", &letter.to_string()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));

    // The same dead letter, back in the stream: replaying it is refused and it goes.
    let stale = stack.block_on(async {
        let js = sluice_testkit::connect(&stack.url()).await.expect("connect");
        js.publish(raw.subject.to_string(), raw.payload.clone()).await.expect("publish").await.expect("stored").sequence
    });
    let output = stack.sluice(&["dlq", "replay", &stale.to_string()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("dead letter {stale} is resolved: job `a` ran again since")), "{stderr}");
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 0, "the stale one is gone: {letters:#}");

    let after = stack.sluice_json(&["status", &id], 0);
    assert_eq!(after["state"], "succeeded", "nothing ran again: {after:#}");
    assert_eq!(job(&after, "a")["attempts"], 2);
    assert_eq!(job(&after, "b")["attempts"], 1);
}
