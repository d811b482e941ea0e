//! Bad input never takes a component down and is never silently dropped: it gets a clear
//! error where the user looks (exit status and message, run state, rejected list).

mod common;

use std::time::Duration;

use common::*;
use sluice_proto::{RunId, SCHEMA_VERSION, Submission, encode, names};

const CYCLE: &str = "name: loop\njobs:\n  x: { run: noop, needs: [y] }\n  y: { run: noop, needs: [x] }\n";

#[test]
fn validate_prints_the_cycle_and_exits_2() {
    let stack = Stack::start();
    let file = stack.write("cycle.yaml", CYCLE);
    let output = stack.sluice(&["validate", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("dependency cycle: x -> y -> x"), "{stderr}");
    assert!(stderr.contains("cycle.yaml"), "the message names the file: {stderr}");

    let good = stack.write("good.yaml", "name: ok\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n");
    let output = stack.sluice(&["validate", good.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("valid: 2 jobs, in order a, b"));
}

#[test]
fn submit_of_an_invalid_workflow_publishes_nothing() {
    let stack = Stack::start();
    let file = stack.write("cycle.yaml", CYCLE);
    let output = stack.sluice(&["submit", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(output.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&output.stderr).expect("JSON error on stderr");
    assert_eq!(error["error"]["kind"], "usage");
    assert!(error["error"]["message"].as_str().unwrap().contains("x -> y -> x"));
    // Nothing reached NATS: not even the streams were created.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let streams = runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(names::SUBMIT_STREAM).await.is_ok()
    });
    assert!(!streams, "an invalid submit created the submit stream");

    for (args, needle) in [
        (vec!["--window", "last tuesday"], "invalid window `last tuesday`"),
        (vec!["--param", "novalue"], "--param `novalue`: write NAME=VALUE"),
    ] {
        let good = stack.write("good.yaml", "name: ok\njobs:\n  a: { run: noop }\n");
        let mut all = vec!["submit", good.to_str().unwrap()];
        all.extend(args);
        let output = stack.sluice(&all);
        assert_eq!(output.status.code(), Some(2), "{all:?}");
        assert!(text(&output.stderr).contains(needle), "{}", text(&output.stderr));
    }
    let missing = stack.sluice(&["submit", "/nonexistent/flow.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read /nonexistent/flow.yaml"));
}

#[test]
fn malformed_submissions_are_recorded_and_later_ones_still_run() {
    let mut stack = Stack::start();
    let coordinator = stack.coordinator();
    stack.worker(&[]);
    // Create the topology through a normal submission first.
    let good = stack.write("good.yaml", "name: fine\njobs:\n  a: { run: noop }\n");
    submit_and_wait(&stack, &good, 0);

    let invalid_run = RunId::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let garbage: &[&[u8]] = &[b"not msgpack at all", b"\x81\xa3foo\xa3bar", b""];
        for bytes in garbage {
            js.publish(names::SUBMIT_SUBJECT, bytes.to_vec().into()).await.unwrap().await.unwrap();
        }
        let invalid = Submission {
            schema_version: SCHEMA_VERSION,
            run_id: invalid_run,
            workflow: CYCLE.to_owned(),
            window: None,
            params: Default::default(),
            idempotency_key: None,
            submitted_at: None,
            origin: None,
        };
        js.publish(names::SUBMIT_SUBJECT, encode(&invalid).unwrap().into()).await.unwrap().await.unwrap();
    });
    let status = submit_and_wait(&stack, &good, 0);
    assert_eq!(status["state"], "succeeded");
    assert!(stack.is_running(coordinator), "the coordinator survived");

    let rejected = stack.sluice_json(&["runs", "--rejected"], 0);
    let reasons: Vec<&str> =
        rejected["rejected"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 4, "{rejected:#}");
    assert!(reasons.iter().filter(|r| r.contains("not a valid submission message")).count() == 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("x -> y -> x")), "{reasons:?}");
    // The rejected run id answers `status` with the reason.
    let output = stack.sluice(&["status", &invalid_run.to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("was rejected") && text(&output.stderr).contains("x -> y -> x"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn an_unknown_job_kind_fails_that_job_with_a_clear_error() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let file = stack.write(
        "unknown.yaml",
        "name: typo\njobs:\n  a: { run: noop }\n  b: { run: calibrate, needs: [a] }\n  c: { run: noop, needs: [b] }\n",
    );
    let status = submit_and_wait(&stack, &file, 1);
    assert_eq!(status["state"], "failed");
    let b = &status["jobs"][1];
    assert_eq!(b["state"], "failed");
    assert_eq!(b["attempts"], 1, "an unknown kind is not retried: {b:#}");
    let error = b["error"].as_str().unwrap();
    assert!(error.contains("unknown job kind `calibrate`") && error.contains("exec, fail, noop, sleep"), "{error}");
    assert_eq!(status["jobs"][2]["state"], "skipped");
}

#[test]
fn idempotency_key_creates_one_run() {
    let mut stack = Stack::start();
    let file = stack.write("once.yaml", "name: once\njobs:\n  a: { run: noop }\n");
    let submit = |stack: &Stack| {
        stack.sluice_json(&["submit", file.to_str().unwrap(), "--idempotency-key", "2024-03-01-load"], 0)
    };
    // The coordinator sets Sluice up, then goes away: submissions wait in the stream.
    let setup = stack.coordinator();
    wait_until_set_up(&stack);
    stack.kill(setup);
    // The second arrives while the first still waits in the stream for a coordinator.
    let first = submit(&stack);
    let early = submit(&stack);
    assert_eq!(early["id"], first["id"]);
    assert_eq!(early["duplicate"], true);
    assert_eq!(first["duplicate"], false);
    stack.coordinator();
    stack.worker(&[]);
    let id = first["id"].as_str().unwrap().to_owned();
    stack.wait_for_run(&id, Duration::from_secs(30));
    // After the coordinator took it, the key is known durably.
    let late = submit(&stack);
    assert_eq!(late["id"], first["id"]);
    assert_eq!(late["duplicate"], true);
    let runs = stack.sluice_json(&["runs", "--workflow", "once"], 0);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs:#}");
    let too_long = "k".repeat(129);
    let refused = stack.sluice(&["submit", file.to_str().unwrap(), "--idempotency-key", &too_long]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--idempotency-key must be 1 to 128 bytes"));
}

#[test]
fn runs_lists_newest_first_with_filters() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let ok = stack.write("ok.yaml", "name: ok\njobs:\n  a: { run: noop }\n");
    let bad = stack.write("bad.yaml", "name: bad\njobs:\n  a: { run: fail, retry: { max_attempts: 1 } }\n");
    let first = submit_and_wait(&stack, &ok, 0);
    let failed = submit_and_wait(&stack, &bad, 1);
    let last = submit_and_wait(&stack, &ok, 0);
    let runs = stack.sluice_json(&["runs"], 0);
    let ids: Vec<&str> = runs["runs"].as_array().unwrap().iter().map(|run| run["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [last["id"].as_str().unwrap(), failed["id"].as_str().unwrap(), first["id"].as_str().unwrap()]);
    let only_failed = stack.sluice_json(&["runs", "--state", "failed"], 0);
    assert_eq!(only_failed["runs"].as_array().unwrap().len(), 1);
    assert_eq!(only_failed["runs"][0]["workflow"], "bad");
    let fields: Vec<&String> = only_failed["runs"][0].as_object().unwrap().keys().collect();
    for field in ["id", "workflow", "state", "window", "created_at"] {
        assert!(fields.iter().any(|key| key.as_str() == field), "missing {field}");
    }
    let bad_state = stack.sluice(&["runs", "--state", "done"]);
    assert_eq!(bad_state.status.code(), Some(2));
    assert!(text(&bad_state.stderr).contains("unknown state `done`"));

    // A run is found by the end of its id; an end shared by no run, or not hex, is refused.
    let whole = ids[0].to_owned();
    let by_end = stack.sluice_json(&["status", &whole[whole.len() - 8..]], 0);
    assert_eq!(by_end["id"], whole.as_str());
    for (end, needle) in [("zzzz", "is neither a run id"), ("ab", "is neither a run id")] {
        let output = stack.sluice(&["status", end]);
        assert_eq!(output.status.code(), Some(2), "{end}");
        assert!(text(&output.stderr).contains(needle), "{end}: {}", text(&output.stderr));
    }

    // Pages through the index: two, then the rest, then nothing more.
    let page = stack.sluice_json(&["runs", "--limit", "2"], 0);
    let first_page: Vec<&str> =
        page["runs"].as_array().unwrap().iter().map(|run| run["id"].as_str().unwrap()).collect();
    assert_eq!(first_page, ids[..2]);
    let cursor = page["next"].as_str().expect("a cursor to the older runs").to_owned();
    let rest = stack.sluice_json(&["runs", "--limit", "2", "--cursor", &cursor], 0);
    assert_eq!(rest["runs"][0]["id"], ids[2]);
    assert!(rest["next"].is_null(), "{rest:#}");
    let by_workflow = stack.sluice_json(&["runs", "--workflow", "ok", "--origin", "manual"], 0);
    assert_eq!(by_workflow["runs"].as_array().unwrap().len(), 2);
    assert_eq!(by_workflow["runs"][0]["origin"], "manual");
    let running = stack.sluice_json(&["runs", "--state", "running"], 0);
    assert!(running["runs"].as_array().unwrap().is_empty(), "{running:#}");
    for (args, needle) in [
        (vec!["runs", "--cursor", "nope"], "is not a cursor"),
        (vec!["runs", "--origin", "cron"], "origin `cron` is not"),
        (vec!["runs", "--limit", "0"], "--limit must be 1 to 1000"),
    ] {
        let output = stack.sluice(&args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(text(&output.stderr).contains(needle), "{args:?}: {}", text(&output.stderr));
    }
}

#[test]
fn unreachable_nats_exits_3_with_a_clear_message() {
    let output = std::process::Command::new(SLUICE)
        .args(["runs", "--nats-url", "nats://127.0.0.1:1", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let error: serde_json::Value = serde_json::from_slice(&output.stderr).unwrap();
    assert_eq!(error["error"]["kind"], "nats");
    assert!(error["error"]["message"].as_str().unwrap().contains("cannot reach NATS at nats://127.0.0.1:1"));
}

#[test]
fn bad_worker_flags_are_refused_before_anything_starts() {
    for (args, expected) in [
        (&["worker", "--concurrency", "0"][..], "--concurrency must be 1 to 1024, not 0"),
        (&["worker", "--prefetch", "2000"][..], "--prefetch must be 0 to 1024, not 2000"),
        (&["dev", "--concurrency", "5000"][..], "--concurrency must be 1 to 1024, not 5000"),
        (
            &["dev", "--worker-command", "true", "--worker-command", " "][..],
            "--worker-command number 2 is empty: give the command to run",
        ),
    ] {
        let output = std::process::Command::new(SLUICE)
            .args(args)
            .args(["--nats-url", "nats://127.0.0.1:1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn pool_settings_moved_from_the_worker_and_bad_ones_are_refused_naming_the_flag() {
    // The pool's ack wait and max deliveries belong to its declaration, not to a worker.
    for flag in ["--ack-wait", "--max-deliver"] {
        let output = std::process::Command::new(SLUICE)
            .args(["worker", flag, "5"])
            .args(["--nats-url", "nats://127.0.0.1:1"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    let mut stack = Stack::start();
    stack.coordinator();
    for (args, expected) in [
        (&["pool", "apply", "default", "--max-deliver", "1"][..], "--max-deliver must be 2 to 10000, not 1"),
        (&["pool", "apply", "default", "--ack-wait", "0s"][..], "--ack-wait must be"),
    ] {
        let output = stack.sluice(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // Nothing changed: the pool keeps its settings.
    let pools = stack.sluice_json(&["pool", "list"], 0);
    let default = pools["pools"].as_array().unwrap().iter().find(|pool| pool["name"] == "default").unwrap();
    assert_eq!((default["ack_wait_ms"].as_u64(), default["max_deliver"].as_u64()), (Some(30_000), Some(120)));
}
