//! Two coordinators: one leads, the other stands by; SIGKILL of the leader hands the runs to
//! the standby within 10 seconds, and no job runs twice.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_standby_takes_over_within_ten_seconds_when_the_leader_is_killed() {
    let mut stack = Stack::start();
    let first = stack.coordinator();
    let second = stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let log = stack.job_log();
    let mut needs = HashMap::new();
    let mut yaml = String::from("name: ha\njobs:\n");
    for i in 0..12 {
        let deps = if i == 0 { vec![] } else { vec![format!("step-{:02}", i - 1)] };
        yaml.push_str(&format!("  step-{i:02}: {}\n", recording_job(&log, 0.2, &deps)));
        needs.insert(format!("step-{i:02}"), deps);
    }
    let file = stack.write("ha.yaml", &yaml);
    let run_id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().count();
    wait_until(Duration::from_secs(30), "the run to make progress", || lines() >= 4);
    let leader = leader_pid(&stack).expect("a leader holds the lease");
    let (victim, survivor) = if stack.pid(first) == leader { (first, second) } else { (second, first) };
    assert_eq!(stack.pid(victim), leader);
    stack.kill(victim);
    let killed_at = Instant::now();
    let before = lines();
    // The run moves again: a new job finishes once the standby leads.
    wait_until(Duration::from_secs(20), "progress after the failover", || lines() >= before + 2);
    let took = killed_at.elapsed();
    assert!(took <= Duration::from_secs(10), "failover took {took:?}");
    assert_eq!(leader_pid(&stack), Some(stack.pid(survivor)));
    let status = stack.wait_for_run(&run_id, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_ran_once_in_order(&log, &needs);
    eprintln!("failover: the next job finished {took:?} after the leader was killed");
}
