//! Notifications through real coordinator, worker and nats-server processes, to a webhook
//! receiver on loopback: every event of a failed run and its dead letter arrives, each with
//! one idempotency key, though the target answered 500 twice and the coordinator was killed
//! in between; a target that hangs delays no other run's notice; a workflow naming a target
//! the operator did not define is refused, and so is a bad targets file.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sluice_testkit::http::{Receiver, Reply, Request};

const KEY: &str = "idempotency-key";

fn key(request: &Request) -> String {
    request.header(KEY).unwrap_or_default().to_owned()
}

/// Requests by idempotency key, in arrival order.
fn by_key(requests: &[Request]) -> BTreeMap<String, Vec<&Request>> {
    let mut keys: BTreeMap<String, Vec<&Request>> = BTreeMap::new();
    for request in requests {
        keys.entry(key(request)).or_default().push(request);
    }
    keys
}

#[test]
fn every_event_of_a_failed_run_arrives_once_per_key_across_500s_and_a_coordinator_kill() {
    // The first two POSTs of each notice get a 500, later ones a 200.
    let receiver = Receiver::start(|request, before| {
        let earlier = before.iter().filter(|other| key(other) == key(request)).count();
        Reply::status(if earlier < 2 { 500 } else { 200 })
    })
    .unwrap();
    let mut stack = Stack::start();
    let targets = stack.write("targets.yaml", &format!("data-team: {}\n", receiver.url("/hooks/data")));
    let coordinator_args =
        ["coordinator", "--notify-targets", targets.to_str().unwrap(), "--ui-url", "https://sluice.example.com"];
    let first = stack.spawn("coordinator", &coordinator_args, &[]);
    wait_until_set_up(&stack);
    stack.worker(&[]);
    let file = stack.write(
        "failing.yaml",
        "name: failing\nnotify:\n  - {target: data-team, on: [failed, dead_letter]}\njobs:\n  load:\n    run: fail\n    retry: {max_attempts: 1}\n  report: {run: noop, needs: [load]}\n",
    );
    let status = submit_and_wait(&stack, &file, 1);
    assert_eq!(status["state"], "failed", "{status:#}");
    let run_id = status["id"].as_str().unwrap().to_owned();

    // The first 500 has come: a new coordinator takes over from a killed one.
    receiver.wait_for("a first POST", Duration::from_secs(30), |got| !got.is_empty()).unwrap();
    stack.kill(first);
    stack.spawn("coordinator", &coordinator_args, &[]);

    // Each of the two notices: two 500s, then one 200 (after which it is not sent again).
    let got = receiver
        .wait_for("both notices delivered", Duration::from_secs(60), |got| {
            let keys = by_key(got);
            keys.len() == 2 && keys.values().all(|requests| requests.len() >= 3)
        })
        .unwrap();
    let keys = by_key(&got);
    let mut events = Vec::new();
    for (id, requests) in &keys {
        assert!(id.starts_with(&format!("{run_id}.data-team.")), "key {id}");
        let bodies: Vec<serde_json::Value> = requests.iter().map(|request| request.json()).collect();
        assert!(bodies.iter().all(|body| body == &bodies[0]), "every attempt sends the same body: {bodies:#?}");
        assert!(requests.iter().all(|request| request.method == "POST" && request.path == "/hooks/data"));
        assert!(requests.iter().all(|request| request.header("content-type") == Some("application/json")));
        let body = &bodies[0];
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["run_id"], run_id.as_str());
        assert_eq!(body["workflow"], "failing");
        assert_eq!(body["target"], "data-team");
        assert_eq!(body["failed_jobs"][0]["job"], "load", "{body:#}");
        assert!(!body["failed_jobs"][0]["error"].as_str().unwrap().is_empty(), "{body:#}");
        assert_eq!(body["links"]["run"], format!("https://sluice.example.com/runs/{run_id}"));
        assert!(body["text"].as_str().unwrap().contains("`failing`"), "{body:#}");
        assert!(body["window"]["start"].is_string(), "{body:#}");
        events.push(body["event"].as_str().unwrap().to_owned());
    }
    events.sort();
    assert_eq!(events, ["dead_letter", "failed"]);

    let status = stack.sluice_json(&["status", &run_id], 0);
    let notifications = status["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 2, "{status:#}");
    for notification in notifications {
        assert_eq!(notification["target"], "data-team");
        assert_eq!(notification["state"], "delivered", "{notification}");
        assert_eq!(notification["status_code"], 200, "{notification}");
        assert!(notification["attempts"].as_u64().unwrap() >= 3, "two 500s and a 200: {notification}");
        assert!(notification["last_at"].is_string(), "{notification}");
        let id = notification["id"].as_str().unwrap();
        let answered_200 = keys[id].len() - 2;
        assert_eq!(answered_200, 1, "delivered once, then never sent again: {:#?}", keys[id]);
    }
    let human = stack.sluice(&["status", &run_id]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("NOTIFIED") && text.contains("dead_letter") && text.contains("delivered"), "{text}");
}

#[test]
fn a_target_that_hangs_delays_no_other_runs_notice() {
    let receiver = Receiver::start(|request, _| match request.path.as_str() {
        // Longer than the coordinator's delivery timeout (10 s).
        "/slow" => Reply { status: 200, delay: Duration::from_secs(30) },
        _ => Reply::status(204),
    })
    .unwrap();
    let mut stack = Stack::start();
    let targets =
        stack.write("targets.yaml", &format!("slow: {}\nfast: {}\n", receiver.url("/slow"), receiver.url("/fast")));
    stack.coordinator_with(&["--notify-targets", targets.to_str().unwrap()]);
    wait_until_set_up(&stack);
    stack.worker(&[]);
    let slow =
        stack.write("slow.yaml", "name: to-slow\nnotify: [{target: slow, on: [succeeded]}]\njobs:\n  a: {run: noop}\n");
    let fast =
        stack.write("fast.yaml", "name: to-fast\nnotify: [{target: fast, on: [succeeded]}]\njobs:\n  a: {run: noop}\n");
    submit_and_wait(&stack, &slow, 0);
    let hanging = receiver
        .wait_for("the slow target's POST", Duration::from_secs(30), |got| got.iter().any(|r| r.path == "/slow"))
        .unwrap();
    let hanging_since = hanging.iter().find(|request| request.path == "/slow").unwrap().at;
    let status = submit_and_wait(&stack, &fast, 0);
    assert_eq!(status["state"], "succeeded");
    let got = receiver
        .wait_for("the fast target's POST", Duration::from_secs(30), |got| got.iter().any(|r| r.path == "/fast"))
        .unwrap();
    let fast_at = got.iter().find(|request| request.path == "/fast").unwrap().at;
    assert!(
        fast_at.duration_since(hanging_since) < Duration::from_secs(10),
        "the fast target was told while the slow one still hung (within its timeout): {:?}",
        fast_at.duration_since(hanging_since)
    );
    assert_eq!(got.iter().filter(|request| request.path == "/slow").count(), 1, "the slow POST still hangs");
}

#[test]
fn a_workflow_naming_an_unknown_target_is_refused_and_so_is_a_bad_targets_file() {
    let mut stack = Stack::start();
    let targets = stack.write("targets.yaml", "data-team: http://127.0.0.1:9/hook\n");
    stack.coordinator_with(&["--notify-targets", targets.to_str().unwrap()]);
    wait_until_set_up(&stack);
    stack.worker(&[]);
    let file =
        stack.write("paging.yaml", "name: paging\nnotify: [{target: pager, on: [failed]}]\njobs:\n  a: {run: noop}\n");
    let output = stack.sluice(&["submit", file.to_str().unwrap(), "--wait"]);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown target(s) pager (targets: data-team)"), "{stderr}");

    let bad = stack.write("bad.yaml", "ops: ftp://example.com/\n'two words': http://127.0.0.1:9/\n");
    let output = stack.sluice(&["coordinator", "--notify-targets", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("target `ops`: `ftp://example.com/` is not an http:// or https:// URL"), "{stderr}");
    assert!(stderr.contains("target name `two words`"), "{stderr}");
}
