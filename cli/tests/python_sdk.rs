//! The Python SDK (clients/python) against this build: a real nats-server, the real `sluice
//! coordinator` and a Rust worker on pool `default`, started here; the SDK's integration tests
//! (clients/python/tests/integration: the client, and Python workers they start and stop
//! themselves) run under pytest against them.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_python_sdks_client_and_worker_pass_their_integration_tests() {
    let python = workspace_root().join(".tools/venv/bin/python");
    assert!(python.is_file(), "{} is missing: run `bash scripts/install-tools.sh` (make test does)", python.display());
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    wait_until_set_up(&stack);
    let output = Command::new(&python)
        .args(["-m", "pytest", "-p", "no:cacheprovider", "tests/integration"])
        .env("SLUICE_TEST_NATS_URL", stack.url())
        .env("SLUICE_TEST_SLUICE", SLUICE)
        .current_dir(workspace_root().join("clients/python"))
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "pytest failed:\n{stdout}\n{}", text(&output.stderr));
    // Every integration test ran (none was skipped for want of the stack).
    assert!(stdout.contains(" passed") && !stdout.contains("skipped"), "{stdout}");
}
