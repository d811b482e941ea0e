//! The protocol is usable from another language: a Python program using only nats-py and
//! msgpack submits a workflow and follows its run (examples/python/submit_and_follow.py).

mod common;

use std::process::Command;

use common::*;

fn python() -> std::path::PathBuf {
    let python = workspace_root().join(".tools/venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `bash scripts/install-tools.sh` (make test does)", python.display());
    python
}

#[test]
fn a_python_client_submits_and_follows_a_run() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let output = Command::new(python())
        .args(["examples/python/submit_and_follow.py", "examples/workflows/hello.yaml", "--url", &stack.url()])
        .args(["--window-start", "2024-03-01T00:00:00Z", "--window-end", "2024-03-02T00:00:00Z"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "stdout: {stdout}\nstderr: {}", text(&output.stderr));
    let run_id = stdout.lines().next().unwrap().trim_start_matches("submitted run ").to_owned();
    assert!(stdout.contains(&format!("run {run_id} succeeded")), "{stdout}");
    // The run is a normal run for the CLI too, with the window the client chose.
    let status = stack.sluice_json(&["status", &run_id], 0);
    assert_eq!(status["window"]["start"], "2024-03-01T00:00:00Z");
    assert_eq!(status["jobs"].as_array().unwrap().len(), 3);
}

#[test]
fn a_python_client_learns_why_its_submission_was_rejected() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let bad = stack.write("bad.yaml", "name: bad\njobs:\n  a: { run: noop, needs: [ghost] }\n");
    // The streams exist once any Sluice component has started; make sure they do.
    let good = stack.write("good.yaml", "name: ok\njobs:\n  a: { run: noop }\n");
    submit_and_wait(&stack, &good, 0);
    let output = Command::new(python())
        .args(["examples/python/submit_and_follow.py", bad.to_str().unwrap(), "--url", &stack.url()])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{}", text(&output.stderr));
    assert!(stdout.contains("was rejected") && stdout.contains("needs `ghost`, which is not a job"), "{stdout}");
}
