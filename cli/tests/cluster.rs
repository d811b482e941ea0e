//! Sluice on a 3-node JetStream cluster on loopback: the coordinator
//! (`--stream-replicas 3`) puts every stream and bucket at R3, `examples/workflows/hello.yaml`
//! runs, and a run completes while the node the coordinator is connected to is SIGKILLed
//! mid-run (every process is given all three URLs).
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice_testkit::cluster::Cluster;

/// Streams (KV buckets and object stores are streams too) and their replica counts.
fn replicas(stack: &sluice_testkit::Stack) -> Vec<(String, usize, usize)> {
    stack.block_on(async {
        use futures::TryStreamExt;
        let js = sluice_testkit::connect(&stack.url()).await.expect("connects to the cluster");
        let names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
        let mut replicas = Vec::new();
        for name in names {
            let mut stream = js.get_stream(&name).await.expect("stream");
            let info = stream.info().await.expect("stream info");
            let peers = info.cluster.as_ref().map_or(0, |cluster| cluster.replicas.len());
            replicas.push((name, info.config.num_replicas, peers));
        }
        replicas.sort();
        replicas
    })
}

fn job_state(stack: &sluice_testkit::Stack, run_id: &str, job: &str) -> Option<String> {
    let output = stack.sluice(&["status", run_id, "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let jobs = status["jobs"].as_array()?;
    let found = jobs.iter().find(|entry| entry["name"] == job)?;
    found["state"].as_str().map(str::to_owned)
}

#[test]
fn hello_runs_at_r3_and_a_run_completes_when_the_coordinators_node_is_killed() {
    let started = Instant::now();
    let mut cluster = Cluster::start(3).unwrap_or_else(|error| panic!("a 3-node cluster forms: {error:#}"));
    let formed = started.elapsed();
    let mut stack = sluice_testkit::Stack::builder(SLUICE)
        .external(cluster.urls())
        .current_dir(workspace_root())
        .start()
        .expect("a stack on the cluster");
    let coordinator = stack.coordinator_with(&["--stream-replicas", "3"]);
    stack.wait_until_set_up(Duration::from_secs(60)).unwrap_or_else(|error| panic!("{error:#}"));
    // A short ack wait, so a delivery whose ack died with the node comes back soon.
    stack.sluice_json(&["pool", "apply", "default", "--ack-wait", "5s"], 0);
    stack.worker(&["--concurrency", "2"]);

    let streams = replicas(&stack);
    assert!(streams.iter().any(|(name, _, _)| name == sluice_proto::names::JOBS_STREAM), "{streams:?}");
    for (name, configured, peers) in &streams {
        assert_eq!(
            (*configured, *peers),
            (3, 2),
            "stream {name}: replicas {configured}, peers besides the leader {peers}"
        );
    }

    let hello = workspace_root().join("examples/workflows/hello.yaml");
    let status = stack.sluice_json(&["submit", hello.to_str().unwrap(), "--wait"], 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");

    // The same workflow with a longer `wait` step, so the node dies while the run is under way.
    let yaml = std::fs::read_to_string(&hello).expect("hello.yaml");
    assert!(yaml.contains("duration: 500ms"), "hello.yaml's wait step changed: {yaml}");
    let file = stack.write("hello-slow.yaml", &yaml.replace("duration: 500ms", "duration: 4s"));
    let run_id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(60), "the wait step to run", || {
        job_state(&stack, &run_id, "wait").as_deref() == Some("running")
    });
    let victim = cluster.node_of(stack.pid(coordinator)).unwrap_or_else(|error| panic!("{error:#}"));
    let leader_before = cluster.meta_leader().unwrap_or_default();
    let victim_name = cluster.nodes[victim].name.clone();
    cluster.kill(victim);
    let killed = Instant::now();
    let killed_at = chrono::Utc::now();

    let status = stack.wait_for_run(&run_id, Duration::from_secs(120));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let took = killed.elapsed();
    let finished = status["finished_at"].as_str().and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok());
    assert!(finished.is_some_and(|at| at > killed_at), "the node died mid-run (killed at {killed_at}): {status:#}");
    assert!(stack.is_running(coordinator), "the coordinator survived its node's death");
    let attempts: Vec<String> = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| format!("{} {}", job["name"].as_str().unwrap_or("?"), job["attempts"]))
        .collect();
    eprintln!(
        "cluster: formed in {formed:?}; {} streams at R3; killed {victim_name} (the coordinator's node; meta leader was {leader_before}); \
         the run finished {took:?} later, attempts {attempts:?}",
        streams.len()
    );
}
