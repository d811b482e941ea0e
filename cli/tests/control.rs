//! Every mutation is a control request the coordinator applies and answers: the CLI prints
//! the answer at once, with the exit code its kind maps to (not found and invalid 2, a
//! conflict 1), and the answer is stored in KV `sluice-outcomes` with who asked.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sluice_proto::{ControlOutcome, Outcome, RefusalKind, decode, names};

/// A refusal must come back as fast as an answer, not after the 30 s wait for one.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

fn refused(stack: &Stack, args: &[&str], code: i32, needle: &str) {
    let started = Instant::now();
    let output = stack.sluice(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?} should say {needle:?}: {stderr}");
    assert!(started.elapsed() < ANSWER_WITHIN, "{args:?} took {:?}: the refusal was not answered", started.elapsed());
}

fn outcomes(stack: &Stack) -> Vec<ControlOutcome> {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        use futures::TryStreamExt;
        let client = async_nats::connect(stack.url()).await.expect("connects");
        let js = async_nats::jetstream::new(client);
        let bucket = js.get_key_value(names::OUTCOMES_BUCKET).await.expect("outcomes bucket");
        let keys: Vec<String> = bucket.keys().await.expect("keys").try_collect().await.expect("keys");
        let mut all = Vec::new();
        for key in keys {
            let bytes = bucket.get(&key).await.expect("get").expect("value");
            all.push(decode::<ControlOutcome>(&bytes).expect("an outcome decodes"));
        }
        all
    })
}

#[test]
fn refusals_are_answered_at_once_with_the_exit_code_of_their_kind() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let file = stack.write(
        "refusals.yaml",
        "name: refusals\njobs:\n  a: { run: fail, config: { retryable: false } }\n  b: { run: noop, needs: [a] }\n",
    );
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();

    // The engine's rules, answered by the coordinator (the CLI no longer copies them).
    refused(&stack, &["retry", &id, "--job", "b"], 1, "needs `a`, which did not complete");
    refused(&stack, &["cancel", &id], 1, "already finished");
    // Read-only checks stay in the CLI.
    refused(&stack, &["retry", &id, "--job", "nope"], 2, "has no job `nope`");

    // Two replays of one dead letter at once: one is applied, the other refused (it is
    // gone), and the job runs again once.
    let letters = stack.sluice_json(&["dlq", "list", "--workflow", "refusals"], 0);
    let letter = letters["dead_letters"][0]["id"].to_string();
    let replay = || stack.sluice(&["dlq", "replay", &letter, "-o", "json"]);
    let (first, second) = std::thread::scope(|scope| {
        let first = scope.spawn(replay);
        let second = scope.spawn(replay);
        (first.join().unwrap(), second.join().unwrap())
    });
    let mut codes = [first.status.code(), second.status.code()];
    codes.sort();
    assert_eq!(codes, [Some(0), Some(2)], "{}\n{}", text(&first.stderr), text(&second.stderr));
    let loser = if first.status.success() { &second } else { &first };
    assert!(text(&loser.stderr).contains("dead letter"), "{}", text(&loser.stderr));
    refused(&stack, &["dlq", "replay", &letter], 2, "no dead letter");
    let again = stack.wait_for_run(&id, Duration::from_secs(30));
    assert_eq!(again["state"], "failed", "a fails again: {again:#}");
    let letters = stack.sluice_json(&["dlq", "list", "--workflow", "refusals"], 0);
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 1, "one replay, one new dead letter: {letters:#}");

    // Schedules and backfills answer the same way.
    refused(&stack, &["schedule", "delete", "nope"], 2, "no schedule `nope`");
    let plain = stack.write("plain.yaml", "name: plain\njobs:\n  a: { run: noop }\n");
    let backfill = stack.sluice_json(
        &["backfill", plain.to_str().unwrap(), "--from", "2024-03-01", "--to", "2024-03-02", "--detach"],
        0,
    );
    let backfill_id = backfill["id"].as_str().unwrap().to_owned();
    stack.sluice_json(&["backfill", "cancel", &backfill_id], 0);
    refused(&stack, &["backfill", "cancel", &backfill_id], 1, "is already cancelled");

    // Every answer is stored under its request id, with who asked.
    let answers = outcomes(&stack);
    let needs_first = answers
        .iter()
        .find(|outcome| outcome.action == "retry" && outcome.reason.contains("which did not complete"))
        .expect("the refused retry is on record");
    assert_eq!(needs_first.outcome, Outcome::Refused);
    assert_eq!(needs_first.kind, Some(RefusalKind::Conflict));
    assert_eq!(needs_first.run_id.map(|id| id.to_string()), Some(id.clone()));
    assert_eq!(needs_first.requested_by, names::ANONYMOUS_IDENTITY);
    let replay = answers.iter().find(|outcome| outcome.action == "replay" && outcome.outcome == Outcome::Applied);
    assert!(replay.is_some_and(|outcome| outcome.changed.contains(&"a".to_owned())), "{answers:#?}");
    assert!(
        answers
            .iter()
            .any(|outcome| outcome.action == "backfill_cancel" && outcome.kind == Some(RefusalKind::Conflict)),
        "{answers:#?}"
    );
}

#[test]
fn a_running_run_cannot_be_retried_whole_and_a_purge_is_one_request() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "2"]);
    let slow = stack.write("slow.yaml", "name: slow\njobs:\n  a: { run: sleep, config: { duration: 30s } }\n");
    let submitted = stack.sluice_json(&["submit", slow.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), "the job to run", || {
        let status = stack.sluice(&["status", &id, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .is_ok_and(|status| status["jobs"][0]["state"] == "running")
    });
    refused(&stack, &["retry", &id], 1, "is still running");
    stack.sluice_json(&["cancel", &id], 0);

    let failing =
        stack.write("failing.yaml", "name: failing\njobs:\n  a: { run: fail, config: { retryable: false } }\n");
    for _ in 0..3 {
        submit_and_wait(&stack, &failing, 1);
    }
    let purged = stack.sluice_json(&["dlq", "purge", "--workflow", "failing"], 0);
    assert_eq!(purged["purged"], 3, "{purged:#}");
    assert!(
        stack.sluice_json(&["dlq", "list", "--workflow", "failing"], 0)["dead_letters"].as_array().unwrap().is_empty()
    );
    let purge = outcomes(&stack).into_iter().find(|outcome| outcome.action == "dlq_purge").expect("purge answered");
    assert_eq!(purge.changed_total, 3);
}

/// A pool exists once declared: its consumer is there before any worker has run (what an
/// autoscaler needs to scale it up from zero), and a submission naming another pool is
/// rejected with the pools there are.
#[test]
fn pools_are_declared_before_their_workers_and_undeclared_ones_are_refused() {
    let mut stack = Stack::start();
    stack.coordinator();
    let listed = stack.sluice_json(&["pool", "list"], 0);
    let names: Vec<&str> =
        listed["pools"].as_array().unwrap().iter().map(|pool| pool["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["default"], "default is always declared: {listed:#}");

    let flow = stack.write("gpu.yaml", "name: gpu-flow\njobs:\n  train: { run: noop, pool: gpu }\n");
    let rejected = stack.sluice(&["submit", flow.to_str().unwrap(), "--wait"]);
    assert_eq!(rejected.status.code(), Some(1), "{}", text(&rejected.stderr));
    assert!(
        text(&rejected.stderr).contains("job `train` runs on pool `gpu`, which is not declared (pools: default)"),
        "{}",
        text(&rejected.stderr)
    );

    let declared = stack.sluice_json(&["pool", "apply", "gpu", "--ack-wait", "45s", "--max-timeout", "2h"], 0);
    assert_eq!(declared["name"], "gpu");
    assert_eq!(declared["ack_wait_ms"], 45_000);
    assert_eq!(declared["max_timeout_ms"], 7_200_000);
    assert_eq!(declared["consumer"], "pool-gpu");
    assert_eq!(declared["workers"], 0);
    // The consumer exists with the pool's settings before any worker of the pool ran.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ack_wait = runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.expect("connects");
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(names::JOBS_STREAM).await.expect("jobs stream");
        stream.consumer_info("pool-gpu").await.expect("the pool's consumer exists").config.ack_wait
    });
    assert_eq!(ack_wait, Duration::from_secs(45));
    // Work for the pool waits in its consumer: what KEDA reads as lag.
    let submitted = stack.sluice_json(&["submit", flow.to_str().unwrap()], 0);
    let id = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), "the job to wait in pool-gpu", || {
        stack.sluice_json(&["pool", "list"], 0)["pools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|pool| pool["name"] == "gpu" && pool["pending"] == 1)
    });
    stack.worker(&["--pool", "gpu"]);
    assert_eq!(stack.wait_for_run(&id, Duration::from_secs(30))["state"], "succeeded");

    // Bad settings are refused by the coordinator, naming the setting.
    refused(&stack, &["pool", "apply", "gpu", "--max-deliver", "1"], 2, "--max-deliver must be 2 to 10000, not 1");
    refused(&stack, &["pool", "apply", "gpu", "--ack-wait", "10ms"], 2, "--ack-wait must be 1s to 12h");
    refused(&stack, &["pool", "apply", "no.dots"], 2, "pool name `no.dots`");
}

/// No client code path writes KV or streams: the CLI (outside the commands that run a
/// coordinator or a worker) and the client crate only publish submissions and control
/// requests, through `sluice_client::requests`.
#[test]
fn clients_publish_only_submissions_and_control_requests() {
    let root = workspace_root();
    let writes = [
        ".put(",
        ".create(",
        ".update(",
        ".delete(",
        ".purge(",
        "delete_message",
        "create_stream",
        "create_or_update",
        "create_key_value",
        ".publish(",
        ".publish_with_headers(",
        "topology::ensure",
        "sluice_coordinator::store",
        "sluice_coordinator::control",
    ];
    // What runs a coordinator or a worker in this process, and the two places that publish.
    let allowed =
        ["cli/src/commands/dev.rs", "cli/src/commands/serve.rs", "client/src/requests.rs", "client/src/pipeline.rs"];
    let mut offending = Vec::new();
    for dir in ["cli/src", "client/src"] {
        for path in rust_files(&root.join(dir)) {
            let relative = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            if allowed.contains(&relative.as_str()) {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for (number, line) in source.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                for write in writes.iter().filter(|write| code.contains(**write)) {
                    offending.push(format!("{relative}:{}: {write}", number + 1));
                }
            }
        }
    }
    assert!(offending.is_empty(), "client code writes state:\n{}", offending.join("\n"));
}

fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// README step 5: fix the command, then retry or replay with `--spec`; without it the run
/// keeps its spec. Changes beyond the definitions of what runs again are refused.
#[test]
fn retry_and_replay_with_a_new_spec_run_the_fixed_definitions_and_refuse_other_changes() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let broken = "name: fixable\njobs:\n  extract: { run: exec, command: [sh, -c, 'echo extracted'] }\n  load: { run: exec, needs: [extract], retry: { max_attempts: 1 }, command: [sh, -c, 'exit 3'] }\n";
    let file = stack.write("fixable.yaml", broken);
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();
    // Without --spec the old command runs again.
    let again = stack.sluice_json(&["retry", &id, "--wait"], 1);
    assert_eq!(again["state"], "failed", "{again:#}");

    let refusals = [
        (broken.replace("  load:", "  audit: { run: noop }\n  load:"), "it adds job `audit`"),
        (broken.replace("needs: [extract], ", ""), "it changes what job `load` needs"),
        (broken.replace("'echo extracted'", "'echo again'"), "it changes job `extract`, which does not run again"),
        (broken.replace("name: fixable", "name: other"), "the run's workflow is `fixable`, the new spec's `other`"),
    ];
    for (index, (yaml, needle)) in refusals.iter().enumerate() {
        let spec = stack.write(&format!("refused-{index}.yaml"), yaml);
        refused(&stack, &["retry", &id, "--spec", spec.to_str().unwrap()], 2, needle);
    }
    let not_yaml = stack.write("not-yaml.yaml", "jobs: [");
    refused(&stack, &["retry", &id, "--spec", not_yaml.to_str().unwrap()], 2, "not-yaml.yaml");

    let fixed = broken.replace("'exit 3'", "'echo loaded'");
    let spec = stack.write("fixed.yaml", &fixed);
    let retried = stack.sluice_json(&["retry", &id, "--spec", spec.to_str().unwrap(), "--wait"], 0);
    assert_eq!(retried["state"], "succeeded", "{retried:#}");
    let status = stack.sluice_json(&["status", &id], 0);
    let (old_hash, new_hash) = (sluice_proto::WorkflowSpec::hash(broken), sluice_proto::WorkflowSpec::hash(&fixed));
    assert_eq!(status["spec_hash"], new_hash.as_str(), "{status:#}");
    let load = status["jobs"].as_array().unwrap().iter().find(|job| job["name"] == "load").unwrap();
    let ran_with: Vec<&str> = load["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["spec_hash"].as_str().unwrap())
        .collect();
    assert_eq!(ran_with, [old_hash.as_str(), old_hash.as_str(), new_hash.as_str()], "{load:#}");
    let human = text(&stack.sluice(&["status", &id, "--job", "load"]).stdout);
    assert!(human.contains(&format!("(spec {})", &old_hash[..12])), "older attempts name their spec: {human}");

    // A dead letter replayed with a fixed spec.
    let doomed = stack.write("doomed.yaml", &broken.replace("name: fixable", "name: replayable"));
    let failed = submit_and_wait(&stack, &doomed, 1);
    let run = failed["id"].as_str().unwrap().to_owned();
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let letter =
        letters["dead_letters"].as_array().unwrap().iter().find(|letter| letter["run_id"] == run.as_str()).unwrap();
    let letter_id = letter["id"].to_string();
    let replay_fix = stack.write("replay-fix.yaml", &fixed.replace("name: fixable", "name: replayable"));
    stack.sluice_json(&["dlq", "replay", &letter_id, "--spec", replay_fix.to_str().unwrap()], 0);
    let status = stack.wait_for_run(&run, Duration::from_secs(30));
    assert_eq!(status["state"], "succeeded", "{status:#}");
}

#[test]
fn workflows_are_applied_listed_shown_and_deleted_with_their_schedules() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    let human = stack.sluice(&["workflow", "list"]);
    assert!(text(&human.stdout).contains("no workflows"), "{}", text(&human.stdout));

    // Bad input is refused before anything is sent, or by the coordinator, naming what is wrong.
    let broken = stack.write("broken.yaml", "name: broken\njobs:\n  a: { run: noop, needs: [zz] }\n");
    refused(&stack, &["workflow", "apply", broken.to_str().unwrap()], 2, "zz");
    let elsewhere = stack.write("elsewhere.yaml", "name: elsewhere\njobs:\n  a: { run: noop, pool: nowhere }\n");
    refused(&stack, &["workflow", "apply", elsewhere.to_str().unwrap()], 2, "nowhere");
    refused(&stack, &["workflow", "show", "a.b"], 2, "workflow name `a.b`");
    refused(&stack, &["workflow", "delete", "ghost"], 2, "no workflow `ghost`");

    let yaml = "name: etl\ndescription: Loads the day\ntimezone: Europe/Berlin\nparams: { region: eu }\njobs:\n  extract: { run: noop }\n  load: { run: noop, needs: [extract] }\n";
    let file = stack.write("etl.yaml", yaml);
    let record = stack.sluice_json(&["workflow", "apply", file.to_str().unwrap()], 0);
    assert_eq!(
        (&record["name"], &record["jobs"], &record["params"], &record["timezone"], &record["schedule"]),
        (&json!("etl"), &json!(2), &json!(["region"]), &json!("Europe/Berlin"), &json!(null)),
        "{record:#}"
    );
    assert_eq!(record["description"], "Loads the day");
    assert_eq!(record["applied_by"], names::ANONYMOUS_IDENTITY);
    let listed = stack.sluice_json(&["workflow", "list"], 0);
    assert_eq!(listed["workflows"], json!([record.clone()]), "{listed:#}");
    let shown = stack.sluice(&["workflow", "show", "etl"]);
    assert_eq!(text(&shown.stdout), yaml, "the YAML as applied, to save back to a file");
    assert_eq!(stack.sluice_json(&["workflow", "show", "etl"], 0)["yaml"], yaml);

    // Applied again, changed: updated, first applied when it was.
    let changed = stack.write("etl2.yaml", &yaml.replace("Loads the day", "Loads the day, twice"));
    let human = stack.sluice(&["workflow", "apply", changed.to_str().unwrap()]);
    assert!(text(&human.stdout).contains("workflow etl updated"), "{}", text(&human.stdout));
    let updated = stack.sluice_json(&["workflow", "show", "etl"], 0);
    assert_eq!(updated["created_at"], record["created_at"]);
    assert_ne!(updated["spec_hash"], record["spec_hash"]);
    assert_eq!(updated["description"], "Loads the day, twice");

    // One with a schedule applies its schedule; deleting the workflow removes both.
    let nightly =
        stack.write("nightly.yaml", "name: nightly\nschedule: { cron: \"0 2 * * *\" }\njobs:\n  a: { run: noop }\n");
    let human = stack.sluice(&["workflow", "apply", nightly.to_str().unwrap()]);
    assert!(text(&human.stdout).contains("schedule nightly created"), "{}", text(&human.stdout));
    let schedules = stack.sluice_json(&["schedule", "list"], 0);
    assert_eq!(schedules["schedules"][0]["name"], "nightly", "{schedules:#}");
    assert_eq!(stack.sluice_json(&["workflow", "show", "nightly"], 0)["schedule"], "0 2 * * *");
    let human = stack.sluice(&["workflow", "delete", "nightly"]);
    assert!(text(&human.stdout).contains("and its schedule"), "{}", text(&human.stdout));
    assert_eq!(stack.sluice_json(&["schedule", "list"], 0)["schedules"], json!([]));
    refused(&stack, &["workflow", "show", "nightly"], 2, "workflows: etl");
    let names: Vec<String> = stack.sluice_json(&["workflow", "list"], 0)["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|workflow| workflow["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["etl"]);
    // `schedule apply` stores its workflow too: one store.
    stack.sluice_json(&["schedule", "apply", nightly.to_str().unwrap()], 0);
    assert_eq!(stack.sluice_json(&["workflow", "show", "nightly"], 0)["schedule"], "0 2 * * *");
}
