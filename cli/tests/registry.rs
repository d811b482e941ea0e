//! The worker registry: a worker serves only a declared pool, announces itself in KV
//! `sluice-workers` (`sluice workers`) while it runs, and removes its entry when it stops.
//! (A worker whose kinds differ from its pool's live workers' is refused: the comparison is
//! unit-tested in `worker/src/runtime/announce.rs`; every worker here serves the stock kinds.)

mod common;

use std::time::Duration;

use common::*;

/// The live workers of `pool`, from `sluice workers -o json`.
fn workers_of(stack: &Stack, pool: &str) -> Vec<serde_json::Value> {
    let listed = stack.sluice_json(&["workers"], 0);
    let workers = listed["workers"].as_array().unwrap_or_else(|| panic!("no workers list: {listed:#}"));
    workers.iter().filter(|worker| worker["pool"] == pool).cloned().collect()
}

/// The entry of the worker process `pid` (its id ends in `-<pid>`), if listed.
fn entry_of(workers: &[serde_json::Value], pid: i32) -> Option<serde_json::Value> {
    let suffix = format!("-{pid}");
    workers.iter().find(|worker| worker["worker_id"].as_str().is_some_and(|id| id.ends_with(&suffix))).cloned()
}

#[test]
fn a_worker_serves_only_a_declared_pool_is_listed_while_it_runs_and_leaves_on_sigterm() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);

    // (a) An undeclared pool: the worker waits (here 300 ms), then refuses with status 2.
    let refused = stack.sluice(&["worker", "--pool", "highmem", "--pool-wait-ms", "300"]);
    let stderr = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pool `highmem` is not declared: declare it with `sluice pool apply highmem` (pools: default)"),
        "{stderr}"
    );

    // Declared: a worker starts and is listed with its pool, kinds and slots.
    stack.sluice_json(&["pool", "apply", "highmem"], 0);
    let first = stack.worker(&["--pool", "highmem", "--concurrency", "3"]);
    let first_pid = stack.pid(first);
    let mut entry = None;
    wait_until(Duration::from_secs(30), "the worker to be listed", || {
        entry = entry_of(&workers_of(&stack, "highmem"), first_pid);
        entry.is_some()
    });
    let entry = entry.unwrap_or_default();
    assert_eq!(entry["kinds"], serde_json::json!(["exec", "fail", "noop", "sleep"]), "{entry:#}");
    assert_eq!(entry["slots"], 3, "{entry:#}");
    assert_eq!(entry["busy"], 0, "{entry:#}");
    assert_eq!(entry["protocol_versions"], serde_json::json!([sluice_proto::SCHEMA_VERSION]), "{entry:#}");
    assert_eq!(entry["version"], env!("CARGO_PKG_VERSION"), "{entry:#}");
    assert!(entry["started_at"].is_string(), "{entry:#}");

    // (b) A second worker with the same kinds joins the same pool.
    let second = stack.worker(&["--pool", "highmem"]);
    let second_pid = stack.pid(second);
    wait_until(Duration::from_secs(30), "the second worker to be listed", || {
        let workers = workers_of(&stack, "highmem");
        entry_of(&workers, first_pid).is_some() && entry_of(&workers, second_pid).is_some()
    });
    assert!(stack.is_running(first) && stack.is_running(second), "both workers of the pool run");

    // (c) After SIGTERM the worker's entry is gone at once (not after the entry's 15 s TTL),
    // and the other worker's stays.
    stack.signal(first, "TERM");
    assert!(stack.wait_exit(first, Duration::from_secs(30)).success());
    let workers = workers_of(&stack, "highmem");
    assert_eq!(entry_of(&workers, first_pid), None, "{workers:#?}");
    assert!(entry_of(&workers, second_pid).is_some(), "{workers:#?}");
}

#[test]
fn a_worker_of_a_pool_declared_while_it_waits_starts() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    // A long wait: the pool is declared meanwhile.
    let worker = stack.worker(&["--pool", "late", "--pool-wait-ms", "120000"]);
    stack.sluice_json(&["pool", "apply", "late"], 0);
    let pid = stack.pid(worker);
    wait_until(Duration::from_secs(30), "the worker of pool late to be listed", || {
        entry_of(&workers_of(&stack, "late"), pid).is_some()
    });
    // It runs a job of its pool.
    let file = stack.write("late.yaml", "name: late\njobs:\n  a: { run: noop, pool: late }\n");
    let status = submit_and_wait(&stack, &file, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
}
