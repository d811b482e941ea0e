//! The CLI's manners at its edges: a reader that stops early, a server without JetStream,
//! a second `sluice dev` on one store, bad names and windows, stable JSON, plain log files.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use sluice_proto::{RunId, SCHEMA_VERSION, Submission, encode, names};

/// Runs `sluice ARGS` with stdout read by `reader`, which may stop reading and close the
/// pipe whenever it likes; returns the exit status and stderr.
fn with_reader(stack: &Stack, args: &[&str], reader: impl FnOnce(std::process::ChildStdout)) -> (Option<i32>, String) {
    let mut child = Command::new(SLUICE)
        .args(args)
        .env("SLUICE_NATS_URL", stack.url())
        .env("RUST_LOG", "warn")
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    reader(stdout);
    let mut errors = String::new();
    stderr.read_to_string(&mut errors).expect("stderr");
    let status = child.wait().expect("wait");
    (status.code(), errors)
}

fn assert_quiet_end(what: &str, (code, stderr): (Option<i32>, String)) {
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{what}: {stderr}");
    assert_eq!(code, Some(0), "{what} ends quietly with 0, not killed and not 101: {stderr}");
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    // More lines than a pipe buffers, so the reader's going away is seen by a write.
    let flow = stack.write("many.yaml", "name: many\njobs:\n  talk: { run: exec, command: [seq, 1, 30000] }\n");
    let status = submit_and_wait(&stack, &flow, 0);
    let run = status["id"].as_str().unwrap().to_owned();

    // `sluice logs RUN | head -1`.
    let after_one_line = |stdout: std::process::ChildStdout| {
        let mut first = String::new();
        BufReader::new(stdout).read_line(&mut first).expect("a first line");
        assert!(first.contains("talk#1 stdout 1"), "{first}");
    };
    assert_quiet_end("logs | head -1", with_reader(&stack, &["logs", &run], after_one_line));
    assert_quiet_end("logs -o json | head -1", with_reader(&stack, &["logs", &run, "-o", "json"], after_one_line_json));
    // `sluice runs -o json | true`: the reader is gone before the first write.
    for args in [&["runs", "-o", "json"][..], &["runs"], &["status", &run, "-o", "json"], &["workers"]] {
        assert_quiet_end(&format!("{args:?}"), with_reader(&stack, args, drop));
    }
}

fn after_one_line_json(stdout: std::process::ChildStdout) {
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).expect("a first line");
    let line: serde_json::Value = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(line["text"], "1");
}

#[test]
fn a_server_without_jetstream_is_named_by_every_command() {
    let stack = Stack::start_without_jetstream();
    let flow = stack.write("flow.yaml", "name: flow\njobs:\n  a: { run: noop }\n");
    let run = RunId::new().to_string();
    for args in [
        vec!["runs"],
        vec!["status", &run],
        vec!["submit", flow.to_str().unwrap()],
        vec!["schedule", "list"],
        vec!["dlq", "list"],
    ] {
        let output = stack.sluice(&args);
        assert_eq!(output.status.code(), Some(3), "{args:?}: {}", text(&output.stdout));
        assert_eq!(text(&output.stderr), "error: this nats-server has no JetStream: start it with `-js`\n", "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}: {}", text(&output.stdout));
    }
    let output = stack.sluice(&["runs", "-o", "json"]);
    let error: serde_json::Value = serde_json::from_slice(&output.stderr).expect("a JSON error");
    assert_eq!(error["error"]["kind"], "nats");
    assert_eq!(error["error"]["message"], "this nats-server has no JetStream: start it with `-js`");
}

#[test]
fn schedule_commands_refuse_a_name_that_breaks_the_naming_rule() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    for command in ["pause", "resume", "delete", "trigger"] {
        for name in ["a b", "x.y", "*", ""] {
            let output = stack.sluice(&["schedule", command, name]);
            assert_eq!(output.status.code(), Some(2), "schedule {command} {name:?}: {}", text(&output.stderr));
            let stderr = text(&output.stderr);
            assert!(stderr.contains("schedule name"), "{stderr}");
        }
    }
    let output = stack.sluice(&["schedule", "pause", "nightly-load"]);
    assert_eq!(output.status.code(), Some(2), "a valid but unknown name is the coordinator's not_found");
    assert!(text(&output.stderr).contains("nightly-load"), "{}", text(&output.stderr));
}

#[test]
fn windows_of_days_and_the_last_days_and_days_that_do_not_exist() {
    let mut stack = Stack::start();
    stack.coordinator();
    let flow = stack.write("zoned.yaml", "name: zoned\ntimezone: America/Los_Angeles\njobs:\n  a: { run: noop }\n");
    let file = flow.to_str().unwrap();
    let week = stack.sluice_json(&["submit", file, "--window", "2024-03-04..2024-03-10"], 0);
    assert_eq!(week["window"]["start"], "2024-03-04T00:00:00-08:00");
    assert_eq!(week["window"]["end"], "2024-03-11T00:00:00-07:00", "both days are included");
    let last = stack.sluice_json(&["submit", file, "--window", "last 7d"], 0);
    let start = chrono::DateTime::parse_from_rfc3339(last["window"]["start"].as_str().unwrap()).unwrap();
    let end = chrono::DateTime::parse_from_rfc3339(last["window"]["end"].as_str().unwrap()).unwrap();
    let zone: chrono_tz::Tz = "America/Los_Angeles".parse().unwrap();
    assert_eq!(end.with_timezone(&zone).date_naive(), chrono::Utc::now().with_timezone(&zone).date_naive());
    assert_eq!((end.date_naive() - start.date_naive()).num_days(), 7, "{last}");
    for (window, needle) in [
        ("2024-02-30", "2024-02-30 does not exist: February 2024 has 29 days"),
        ("2024-03-01..2024-03-02T00:00:00Z", "not a day and a time"),
        ("last 0d", "`last Nd`"),
    ] {
        let output = stack.sluice(&["submit", file, "--window", window]);
        assert_eq!(output.status.code(), Some(2), "--window {window}");
        assert!(text(&output.stderr).contains(needle), "--window {window}: {}", text(&output.stderr));
    }
}

#[test]
fn workflow_mistakes_people_make_get_messages_that_say_what_to_write() {
    let stack = Stack::start();
    for (yaml, needles) in [
        (
            "name: w\njobs:\n  a: { run: exec, command: \"echo hi\" }\n",
            &["`command:` must be a list", r#"["echo", "hi"]"#][..],
        ),
        (
            "name: w\njobs:\n  a: { run: shell, command: [echo, hi] }\n",
            &["unknown kind `shell`", "exec, fail, noop, sleep"][..],
        ),
    ] {
        let file = stack.write("mistake.yaml", yaml);
        let output = stack.sluice(&["validate", file.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{yaml}");
        for needle in needles {
            assert!(text(&output.stderr).contains(needle), "{needle} in {}", text(&output.stderr));
        }
    }
    // A kind no stock worker runs is allowed (a Rust worker may register it), with a warning.
    let custom = stack.write("custom.yaml", "name: w\njobs:\n  a: { run: calibrate }\n");
    let output = stack.sluice(&["validate", custom.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("warning: job `a` has kind `calibrate`, which is not a stock kind"));
}

/// The keys of a JSON object, in the order they were printed.
fn keys(value: &serde_json::Value) -> Vec<&str> {
    value.as_object().expect("an object").keys().map(String::as_str).collect()
}

#[test]
fn json_keeps_the_documented_key_order() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let flow = stack.write("ordered.yaml", "name: ordered\njobs:\n  say: { run: exec, command: [echo, hi] }\n");
    let file = flow.to_str().unwrap();
    let submitted = stack.sluice_json(&["submit", file], 0);
    assert_eq!(keys(&submitted), ["id", "workflow", "window", "duplicate"]);
    assert_eq!(keys(&submitted["window"]), ["start", "end"]);
    let id = submitted["id"].as_str().unwrap();
    let status = stack.wait_for_run(id, Duration::from_secs(60));
    assert_eq!(
        keys(&status),
        [
            "id",
            "workflow",
            "state",
            "window",
            "params",
            "created_at",
            "finished_at",
            "error",
            "trace_id",
            "spec_hash",
            "jobs",
            "cancelled_by",
            "notifications"
        ]
    );
    let job = &status["jobs"][0];
    assert_eq!(
        keys(job),
        [
            "name",
            "state",
            "attempts",
            "started_at",
            "finished_at",
            "error",
            "retry_at",
            "output",
            "children",
            "attempt_history",
            "attempts_omitted",
            "marked"
        ]
    );
    assert_eq!(
        keys(&job["attempt_history"][0]),
        ["attempt", "started_at", "finished_at", "error", "worker", "redelivered_to", "spec_hash", "found_later"]
    );
    let runs = stack.sluice_json(&["runs"], 0);
    assert_eq!(keys(&runs), ["runs", "next"]);
    assert_eq!(keys(&runs["runs"][0]), ["id", "workflow", "state", "window", "created_at", "finished_at", "origin"]);
    let validated = stack.sluice_json(&["validate", file], 0);
    assert_eq!(keys(&validated), ["file", "workflow", "valid", "jobs"]);
    let line: serde_json::Value =
        serde_json::from_slice(&stack.sluice(&["logs", id, "-o", "json"]).stdout).expect("one log line");
    assert_eq!(keys(&line), ["at", "job", "attempt", "stream", "text"]);
    let pools = stack.sluice_json(&["pool", "list"], 0);
    assert_eq!(
        keys(&pools["pools"][0]),
        [
            "name",
            "ack_wait_ms",
            "max_deliver",
            "max_timeout_ms",
            "kinds",
            "consumer",
            "pending",
            "ack_pending",
            "workers",
            "declared_at"
        ]
    );
    let workers = stack.sluice_json(&["workers"], 0);
    assert_eq!(
        keys(&workers["workers"][0]),
        ["worker_id", "pool", "kinds", "protocol_versions", "version", "slots", "busy", "started_at", "leader"]
    );
    let output = stack.sluice(&["status", "not-an-id", "-o", "json"]);
    let error: serde_json::Value = serde_json::from_slice(&output.stderr).expect("a JSON error");
    assert_eq!(keys(&error["error"]), ["kind", "message"]);
}

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let mut stack = Stack::start();
    let coordinator = stack.coordinator();
    wait_until_set_up(&stack);
    wait_until(Duration::from_secs(30), "the coordinator to log", || stack.process_log(coordinator).contains("INFO"));
    let log = stack.process_log(coordinator);
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a log file:\n{log}");
}

#[test]
fn run_ids_are_uuid_v7_and_an_ambiguous_end_lists_the_runs() {
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    let output = stack.sluice(&["status", "9b2e4c1a-3f5d-4e6a-8b7c-1d2e3f4a5b6c"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("`9b2e4c1a-3f5d-4e6a-8b7c-1d2e3f4a5b6c` is a UUID of version 4, not a run id"),
        "{}",
        text(&output.stderr)
    );
    // Two runs whose ids end alike (the last hex digits of a UUIDv7 are random).
    let twins: Vec<RunId> = (0..2)
        .map(|_| {
            let mut id = RunId::new().to_string();
            id.replace_range(id.len() - 4.., "beef");
            id.parse().unwrap()
        })
        .collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        for id in &twins {
            let submission = Submission {
                schema_version: SCHEMA_VERSION,
                run_id: *id,
                workflow: "name: twin\njobs:\n  a: { run: noop }\n".into(),
                window: None,
                params: Default::default(),
                idempotency_key: None,
                submitted_at: None,
                origin: None,
            };
            js.publish(names::SUBMIT_SUBJECT, encode(&submission).unwrap().into()).await.unwrap().await.unwrap();
        }
    });
    for id in &twins {
        wait_until(Duration::from_secs(30), "the coordinator to take the run", || {
            stack.sluice(&["status", &id.to_string()]).status.success()
        });
    }
    let output = stack.sluice(&["status", "beef"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("`beef` ends 2 run ids"), "{stderr}");
    assert!(twins.iter().all(|id| stderr.contains(&id.to_string())), "both are listed: {stderr}");
    let unique = &twins[0].to_string()[24..];
    assert_eq!(stack.sluice_json(&["status", unique], 0)["id"], twins[0].to_string());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_second_dev_on_the_same_data_directory_is_refused_and_the_first_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nats");
    let port = free_port();
    let mut first = Command::new(SLUICE)
        .args(["dev", "--port", &port.to_string(), "--data-dir"])
        .arg(&data)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = first.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |needle: &str| loop {
        let line = lines_rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no `{needle}`"));
        if line.contains(needle) {
            return;
        }
    };
    wait_for("The stack stays up");

    let flow = workspace_root().join("cli/tests/fixtures/flow.yaml");
    let second = Command::new(SLUICE)
        .args(["dev", "--exit-when-done", "--port", &free_port().to_string(), "--data-dir"])
        .arg(&data)
        .arg(&flow)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}\n{}", text(&second.stdout));
    assert!(
        stderr.starts_with(&format!(
            "error: the data directory {} is in use by another `sluice dev` (pid {})",
            data.display(),
            first.id()
        )),
        "{stderr}"
    );
    assert!(!text(&second.stdout).contains("nats-server"), "nothing was started: {}", text(&second.stdout));

    // The first stack still answers.
    let runs = Command::new(SLUICE)
        .args(["runs", "--nats-url", &format!("nats://127.0.0.1:{port}")])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert_eq!(runs.status.code(), Some(0), "{}", text(&runs.stderr));

    Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    wait_for("stopped");
    assert!(first.wait().unwrap().success());
    // Once the first has stopped, the directory is free again.
    let third = Command::new(SLUICE)
        .args(["dev", "--exit-when-done", "--port", &free_port().to_string(), "--data-dir"])
        .arg(&data)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(third.status.code(), Some(0), "{}", text(&third.stderr));
}
