//! Child jobs (fan-out and fan-in), outputs, pools, `max_parallel` and logs, through real
//! processes and a real nats-server. Order and parallelism come from the jobs' own
//! recorded start and finish times.
// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn job<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["jobs"].as_array().unwrap().iter().find(|job| job["name"] == name).unwrap()
}

/// The most jobs (among `names`, or all) that overlapped, from recorded times.
fn peak_overlap(log: &std::path::Path, only: impl Fn(&str) -> bool) -> usize {
    let mut points: Vec<(u128, i32)> = Vec::new();
    for (name, job) in read_job_log(log) {
        if only(&name) {
            for (start, end) in job.starts.iter().zip(&job.ends) {
                points.push((start.1, 1));
                points.push((end.1, -1));
            }
        }
    }
    points.sort();
    let (mut running, mut peak) = (0i32, 0i32);
    for (_, delta) in points {
        running += delta;
        peak = peak.max(running);
    }
    peak as usize
}

/// A Python parent spawns 200 children (three fail once and are retried on their own); the
/// join that needs the parent starts only after every child finished.
#[test]
fn a_python_job_spawns_200_children_and_the_join_starts_after_all_of_them() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "8"]);
    stack.worker(&["--concurrency", "8"]);
    let log = stack.job_log();
    let spawn = stack.write(
        "spawn.py",
        &format!(
            r#"
import json, os
log = {log:?}
with open(os.environ["SLUICE_SPAWN_FILE"], "w") as out:
    for i in range(200):
        script = (
            'echo "start $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)" >> ' + log + '; '
            + ('[ "$SLUICE_ATTEMPT" = 1 ] && exit 1; ' if i < 3 else '')
            + 'echo "end $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)" >> ' + log
        )
        child = {{"name": "sensor-%03d" % i, "run": "exec", "command": ["sh", "-c", script],
                 "retry": {{"max_attempts": 3, "initial": "200ms", "jitter": False}}}}
        out.write(json.dumps(child) + "\n")
with open(os.environ["SLUICE_OUTPUT_FILE"], "w") as out:
    json.dump({{"sensors": 200}}, out)
"#,
            log = log.display().to_string()
        ),
    );
    let join = stack.write(
        "join.py",
        &format!(
            r#"
import json, os, sys
ends = [line for line in open({log:?}) if line.startswith("end fan.sensor-")]
inputs = json.load(open(os.environ["SLUICE_INPUTS_FILE"]))
if len(ends) != 200 or inputs != {{"fan": {{"sensors": 200}}}}:
    print("join saw %d finished children and inputs %r" % (len(ends), inputs), file=sys.stderr)
    sys.exit(78)
"#,
            log = log.display().to_string()
        ),
    );
    let flow = stack.write(
        "fan.yaml",
        &format!(
            "name: fan-200\njobs:\n  fan:\n    run: exec\n    command: [python3, {}]\n  join:\n    needs: [fan]\n    run: exec\n    command: [python3, {}]\n",
            spawn.display(),
            join.display()
        ),
    );
    let status = submit_and_wait(&stack, &flow, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let fan = job(&status, "fan");
    assert_eq!(fan["state"], "completed");
    assert_eq!(fan["children"]["total"], 200);
    assert_eq!(fan["children"]["by_state"]["completed"], 200);
    assert_eq!(fan["output"]["sensors"], 200);
    assert_eq!(status["jobs"].as_array().unwrap().len(), 2, "children are summarised, not listed");

    let recorded = read_job_log(&log);
    let children: Vec<_> = recorded.iter().filter(|(name, _)| name.starts_with("fan.sensor-")).collect();
    assert_eq!(children.len(), 200);
    for (name, child) in &children {
        let retried = ["fan.sensor-000", "fan.sensor-001", "fan.sensor-002"].contains(&name.as_str());
        assert_eq!(child.starts.len(), if retried { 2 } else { 1 }, "{name} started {:?}", child.starts);
        assert_eq!(child.ends.len(), 1, "{name} finished once");
    }
    let last_child_end = children.iter().map(|(_, child)| child.ends[0].1).max().unwrap();
    let join_started = stack.sluice_json(&["status", status["id"].as_str().unwrap(), "--job", "join"], 0);
    let join_start = chrono::DateTime::parse_from_rfc3339(join_started["started_at"].as_str().unwrap()).unwrap();
    let last_end = chrono::DateTime::from_timestamp_nanos(last_child_end as i64);
    assert!(join_start >= last_end, "join started at {join_start}, a child finished at {last_end}");

    let retried = stack.sluice_json(&["status", status["id"].as_str().unwrap(), "--job", "fan.sensor-001"], 0);
    assert_eq!(retried["attempts"], 2);
    assert_eq!(retried["attempt_history"][0]["error"], "`sh` exited with code 1");
    let listed = stack.sluice_json(&["status", status["id"].as_str().unwrap(), "--job", "fan"], 0);
    assert_eq!(listed["child_jobs"].as_array().unwrap().len(), 200);
}

/// With one worker slot, a parent that spawned children must not hold it while it waits.
/// Outputs reach the jobs that need them; `status` shows outputs and children.
#[test]
fn outputs_reach_dependents_and_a_waiting_parent_holds_no_slot() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "1"]);
    let flow = stack.write(
        "outputs.yaml",
        r#"name: outputs
jobs:
  extract:
    run: exec
    command: [sh, -c, 'echo "{\"rows\": 42, \"file\": \"s3://b/k\"}" > "$SLUICE_OUTPUT_FILE"']
  fan:
    needs: [extract]
    run: exec
    command: [sh, -c, 'for i in 1 2 3; do echo "{\"name\": \"part-$i\", \"run\": \"noop\"}"; done > "$SLUICE_SPAWN_FILE"; echo "{\"parts\": 3}" > "$SLUICE_OUTPUT_FILE"']
  load:
    needs: [extract, fan]
    run: exec
    command: [sh, -c, 'grep -q "\"rows\": *42" "$SLUICE_INPUTS_FILE" && grep -q "\"parts\": *3" "$SLUICE_INPUTS_FILE" || { cat "$SLUICE_INPUTS_FILE" >&2; exit 78; }']
"#,
    );
    let status = submit_and_wait(&stack, &flow, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "extract")["output"], serde_json::json!({"rows": 42, "file": "s3://b/k"}));
    assert_eq!(job(&status, "fan")["children"]["by_state"]["completed"], 3);
    let id = status["id"].as_str().unwrap();
    let child = stack.sluice_json(&["status", id, "--job", "fan.part-2"], 0);
    assert_eq!(child["state"], "completed");
    let human = stack.sluice(&["status", id]);
    assert!(text(&human.stdout).contains("3: 3 completed"), "{}", text(&human.stdout));
}

/// Children and outputs that break the rules fail the job that made them, with a message
/// naming what is wrong, and are not retried.
#[test]
fn a_bad_spawn_file_or_an_oversized_output_fails_the_job_clearly() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let flow = stack.write(
        "bad.yaml",
        r#"name: bad-outputs
on_failure: continue
jobs:
  typo:
    run: exec
    command: [sh, -c, 'printf "%s\n%s\n" "{\"name\": \"a\", \"run\": \"noop\"}" "{\"nme\": \"b\"}" > "$SLUICE_SPAWN_FILE"']
  huge:
    run: exec
    command: [python3, -c, 'import json, os; json.dump("x" * 70000, open(os.environ["SLUICE_OUTPUT_FILE"], "w"))']
  twice:
    run: exec
    command: [sh, -c, 'printf "%s\n%s\n" "{\"name\": \"a\", \"run\": \"noop\"}" "{\"name\": \"a\", \"run\": \"noop\"}" > "$SLUICE_SPAWN_FILE"']
"#,
    );
    let status = submit_and_wait(&stack, &flow, 1);
    let error = |name: &str| job(&status, name)["error"].as_str().unwrap().to_owned();
    assert!(error("typo").starts_with("SLUICE_SPAWN_FILE line 2: unknown field `nme`"), "{}", error("typo"));
    assert!(error("huge").contains("the output is 70002 bytes of JSON; the limit is 65536"), "{}", error("huge"));
    assert!(error("twice").contains("two children are named `a`"), "{}", error("twice"));
    for name in ["typo", "huge", "twice"] {
        assert_eq!(job(&status, name)["attempts"], 1, "{name} is not retried");
        assert_eq!(job(&status, name)["state"], "failed");
    }
}

/// A job for a pool with no worker waits `queued` while other pools' jobs run; a worker for
/// its pool then takes it.
#[test]
fn a_job_for_a_pool_without_workers_waits_queued_until_one_starts() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    // Pools exist once declared; declaring one creates its consumer before any worker runs.
    stack.sluice_json(&["pool", "apply", "highmem"], 0);
    let flow = stack.write(
        "pools.yaml",
        "name: pools\njobs:\n  light: { run: noop }\n  heavy: { run: noop, pool: highmem }\n  after: { run: noop, needs: [heavy] }\n",
    );
    let submitted = stack.sluice_json(&["submit", flow.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "light to complete", || {
        let status = stack.sluice_json(&["status", &id], 0);
        job(&status, "light")["state"] == "completed"
    });
    let status = stack.sluice_json(&["status", &id], 0);
    assert_eq!(job(&status, "heavy")["state"], "queued");
    assert_eq!(status["state"], "running");
    stack.worker(&["--pool", "highmem", "--concurrency", "4"]);
    let status = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert!(job(&status, "heavy")["attempt_history"][0]["worker"].is_string());
}

/// `max_parallel` of a run and of a parent hold while many worker slots sit idle.
#[test]
fn max_parallel_limits_a_run_and_a_parents_children() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "8"]);
    stack.worker(&["--concurrency", "8"]);
    let log = stack.job_log();
    let jobs: String = (0..6).map(|i| format!("  p{i}: {}\n", recording_job(&log, 0.3, &[]))).collect();
    let limited = stack.write("limited.yaml", &format!("name: limited\nmax_parallel: 2\njobs:\n{jobs}"));
    let status = submit_and_wait(&stack, &limited, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(peak_overlap(&log, |name| name.starts_with('p')), 2, "run max_parallel 2");

    let child_log = stack.dir.path().join("children.log");
    let script = recording_script(&child_log, 0.3);
    let lines: Vec<String> = (0..8)
        .map(|i| {
            serde_json::json!({"name": format!("c{i}"), "run": "exec", "command": ["sh", "-c", script]}).to_string()
        })
        .collect();
    let spawn = stack.write("children.jsonl", &(lines.join("\n") + "\n"));
    let parent = stack.write(
        "parent.yaml",
        &format!(
            "name: parent\njobs:\n  fan:\n    run: exec\n    max_parallel: 3\n    command: [sh, -c, 'cp {} \"$SLUICE_SPAWN_FILE\"']\n",
            spawn.display()
        ),
    );
    let status = submit_and_wait(&stack, &parent, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "fan")["children"]["by_state"]["completed"], 8);
    assert_eq!(peak_overlap(&child_log, |_| true), 3, "job max_parallel 3");
}

/// stdout and stderr of exec jobs are kept with timestamps and attempts, outlive the worker,
/// and `--follow` streams them until the run ends.
#[test]
fn logs_outlive_the_worker_and_can_be_followed() {
    let mut stack = Stack::start();
    stack.coordinator();
    let worker = stack.worker(&[]);
    let gate = stack.dir.path().join("gate");
    let flow = stack.write(
        "logs.yaml",
        &format!(
            r#"name: logs
jobs:
  talk:
    run: exec
    command: [sh, -c, 'echo "hello from {{{{job}}}}"; echo "careful" >&2; while [ ! -e {gate} ]; do sleep 0.05; done; echo "bye"']
  quiet:
    needs: [talk]
    run: noop
"#,
            gate = gate.display()
        ),
    );
    let submitted = stack.sluice_json(&["submit", flow.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "the first line to be stored", || {
        text(&stack.sluice(&["logs", &id]).stdout).contains("hello from talk")
    });
    let mut follow = Command::new(SLUICE)
        .args(["logs", &id, "talk", "--follow", "-o", "json"])
        .env("SLUICE_NATS_URL", stack.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(&gate, "").unwrap();
    let status = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while follow.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "logs --follow did not end with the run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let followed = follow.wait_with_output().unwrap();
    assert!(followed.status.success(), "{}", text(&followed.stderr));
    let lines: Vec<serde_json::Value> =
        text(&followed.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let said: Vec<(&str, &str)> =
        lines.iter().map(|line| (line["stream"].as_str().unwrap(), line["text"].as_str().unwrap())).collect();
    assert_eq!(said.iter().filter(|(stream, _)| *stream == "stdout").count(), 2, "{said:?}");
    assert!(said.contains(&("stderr", "careful")), "{said:?}");
    assert_eq!(said.last(), Some(&("stdout", "bye")), "{said:?}");
    assert!(lines.iter().all(|line| line["job"] == "talk" && line["attempt"] == 1 && line["at"].is_string()));

    stack.kill(worker);
    let human = text(&stack.sluice(&["logs", &id]).stdout);
    assert!(human.contains("talk#1 stdout hello from talk"), "{human}");
    assert!(human.contains("talk#1 stderr careful"), "{human}");
    let unknown = stack.sluice(&["logs", &id, "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("has no job `nope`"));
}

/// One parent with 10,000 children completes, with the coordinator's peak memory (debug
/// build) well under the 150 MB that 100,000 children may take in release (`make bench`, W4).
#[test]
fn ten_thousand_children_complete() {
    let mut stack = Stack::start();
    let coordinator = stack.coordinator();
    stack.worker(&["--concurrency", "64"]);
    stack.worker(&["--concurrency", "64"]);
    let spawn = stack.write(
        "spawn.py",
        "import json, os\nwith open(os.environ['SLUICE_SPAWN_FILE'], 'w') as out:\n    for i in range(10000):\n        out.write(json.dumps({'name': 'c%05d' % i, 'run': 'noop'}) + '\\n')\n",
    );
    let flow = stack.write(
        "big.yaml",
        &format!("name: big\njobs:\n  fan:\n    run: exec\n    command: [python3, {}]\n  join:\n    needs: [fan]\n    run: noop\n", spawn.display()),
    );
    let started = Instant::now();
    let status = submit_and_wait(&stack, &flow, 0);
    let elapsed = started.elapsed();
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "fan")["children"]["by_state"]["completed"], 10_000);
    let peak_kib = std::fs::read_to_string(format!("/proc/{}/status", stack.pid(coordinator)))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:").map(|value| value.trim().trim_end_matches(" kB").to_owned()))
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("the coordinator's peak RSS");
    assert!(peak_kib < 150_000, "coordinator peak RSS {peak_kib} KiB for 10,000 children");
    let counts: HashMap<String, serde_json::Value> =
        serde_json::from_value(job(&status, "fan")["children"]["by_state"].clone()).unwrap();
    println!("10,000 children: {elapsed:.1?}, coordinator peak RSS {peak_kib} KiB, children {counts:?}");
}

/// Log retention is the coordinator's to set (`--logs-max-age`, `--logs-max-mib`); other
/// commands that create missing streams leave it alone.
#[test]
fn log_retention_is_bounded_and_set_by_the_coordinator() {
    let mut stack = Stack::start();
    stack.coordinator_with(&["--logs-max-age", "2h", "--logs-max-mib", "5"]);
    stack.worker(&[]);
    let flow = stack.write("one.yaml", "name: one\njobs:\n  a: { run: exec, command: [echo, hi] }\n");
    let status = submit_and_wait(&stack, &flow, 0);
    assert_eq!(status["state"], "succeeded");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let config = runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(sluice_proto::names::LOGS_STREAM).await.unwrap().info().await.unwrap().config.clone()
    });
    assert_eq!(config.max_age, Duration::from_secs(2 * 3600));
    assert_eq!(config.max_bytes, 5 * 1024 * 1024);
    let refused = stack.sluice(&["coordinator", "--logs-max-mib", "0"]);
    assert_eq!(refused.status.code(), Some(2));
}

/// Children spawn children; a child whose attempts are over is dead-lettered on its own, and
/// replaying it lets its parent, the parent's parent and the run complete.
#[test]
fn grandchildren_run_and_a_dead_lettered_child_can_be_replayed() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "4"]);
    let fixed = stack.dir.path().join("fixed");
    let leaf = stack.write(
        "leaf.sh",
        &format!(
            "if [ \"$SLUICE_JOB\" = top.mid-1.leaf-b ] && [ ! -e {} ]; then echo broken >&2; exit 78; fi\n",
            fixed.display()
        ),
    );
    let mid = stack.write(
        "mid.py",
        &format!(
            "import json, os\nwith open(os.environ['SLUICE_SPAWN_FILE'], 'w') as out:\n    for name in ['leaf-a', 'leaf-b']:\n        out.write(json.dumps({{'name': name, 'run': 'exec', 'command': ['sh', {leaf:?}]}}) + '\\n')\n",
            leaf = leaf.display().to_string()
        ),
    );
    let top = stack.write(
        "top.py",
        &format!(
            "import json, os\nwith open(os.environ['SLUICE_SPAWN_FILE'], 'w') as out:\n    for name in ['mid-0', 'mid-1']:\n        out.write(json.dumps({{'name': name, 'run': 'exec', 'command': ['python3', {mid:?}]}}) + '\\n')\n",
            mid = mid.display().to_string()
        ),
    );
    let flow = stack.write(
        "tree.yaml",
        &format!("name: tree\non_failure: continue\njobs:\n  top:\n    run: exec\n    command: [python3, {}]\n  after:\n    needs: [top]\n    run: noop\n", top.display()),
    );
    let failed = submit_and_wait(&stack, &flow, 1);
    let id = failed["id"].as_str().unwrap().to_owned();
    assert_eq!(job(&failed, "top")["state"], "failed");
    assert!(
        job(&failed, "top")["error"]
            .as_str()
            .unwrap()
            .starts_with("1 of 2 children did not complete; first: `top.mid-1` failed")
    );
    assert_eq!(job(&failed, "after")["state"], "skipped");
    let mid1 = stack.sluice_json(&["status", &id, "--job", "top.mid-1"], 0);
    assert_eq!(mid1["children"]["by_state"], serde_json::json!({"completed": 1, "failed": 1}));
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let letters = letters["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "only the leaf is dead-lettered: {letters:#?}");
    assert_eq!(letters[0]["job"], "top.mid-1.leaf-b");

    std::fs::write(&fixed, "").unwrap();
    stack.sluice_json(&["dlq", "replay", &letters[0]["id"].to_string()], 0);
    let status = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "top")["children"]["by_state"]["completed"], 2);
    let leaf = stack.sluice_json(&["status", &id, "--job", "top.mid-1.leaf-b"], 0);
    assert_eq!(leaf["attempts"], 2);
    let leaf_a = stack.sluice_json(&["status", &id, "--job", "top.mid-0.leaf-a"], 0);
    assert_eq!(leaf_a["attempts"], 1, "completed children are kept");
}

/// `max_child_failures` in YAML (on `top`) and in a spawn file (on `top.mid`): each parent
/// completes with one child failed for good, nothing is skipped under `on_failure: stop`,
/// and the run succeeds with the failed children dead-lettered.
#[test]
fn a_parent_with_max_child_failures_completes_with_a_failed_child_and_the_run_succeeds() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "4"]);
    let mid = stack.write(
        "mid.py",
        "import json, os\nwith open(os.environ['SLUICE_SPAWN_FILE'], 'w') as out:\n    out.write(json.dumps({'name': 'leaf-a', 'run': 'noop'}) + '\\n')\n    out.write(json.dumps({'name': 'leaf-b', 'run': 'exec', 'command': ['sh', '-c', 'exit 78']}) + '\\n')\n",
    );
    let top = stack.write(
        "top.py",
        &format!(
            "import json, os\nwith open(os.environ['SLUICE_SPAWN_FILE'], 'w') as out:\n    out.write(json.dumps({{'name': 'bad', 'run': 'exec', 'command': ['sh', '-c', 'exit 78']}}) + '\\n')\n    out.write(json.dumps({{'name': 'good', 'run': 'noop'}}) + '\\n')\n    out.write(json.dumps({{'name': 'mid', 'run': 'exec', 'command': ['python3', {mid:?}], 'max_child_failures': 1}}) + '\\n')\n",
            mid = mid.display().to_string()
        ),
    );
    let flow = stack.write(
        "tolerant.yaml",
        &format!(
            "name: tolerant\njobs:\n  top:\n    run: exec\n    command: [python3, {}]\n    max_child_failures: 1\n  after:\n    needs: [top]\n    run: noop\n",
            top.display()
        ),
    );
    let status = submit_and_wait(&stack, &flow, 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(job(&status, "top")["state"], "completed");
    assert_eq!(job(&status, "top")["children"]["by_state"], serde_json::json!({"completed": 2, "failed": 1}));
    assert_eq!(job(&status, "after")["state"], "completed");
    let id = status["id"].as_str().unwrap().to_owned();
    let judged = stack.sluice_json(&["status", &id, "--job", "top.mid"], 0);
    assert_eq!(judged["state"], "completed");
    assert_eq!(judged["children"]["by_state"], serde_json::json!({"completed": 1, "failed": 1}));
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let mut dead: Vec<&str> =
        letters["dead_letters"].as_array().unwrap().iter().map(|letter| letter["job"].as_str().unwrap()).collect();
    dead.sort_unstable();
    assert_eq!(dead, ["top.bad", "top.mid.leaf-b"]);

    // Beyond its limit the parent fails, naming the limit.
    let flow = stack.write(
        "intolerant.yaml",
        &format!(
            "name: intolerant\njobs:\n  top:\n    run: exec\n    command: [python3, {}]\n    max_child_failures: 0\n",
            mid.display()
        ),
    );
    let status = submit_and_wait(&stack, &flow, 1);
    let error = job(&status, "top")["error"].as_str().unwrap();
    assert!(
        error.starts_with("1 of 2 children did not complete (max_child_failures: 0); first: `top.leaf-b` failed"),
        "{error}"
    );
}
