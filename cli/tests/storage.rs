//! A coordinator on a small JetStream store (issue 12.7): it sizes the logs stream and the
//! rejected submissions to the store and runs, and refuses to start below 64 MiB, saying
//! why (it used to retry for ever with a WARN on anything under 1.25 GiB).

mod common;

use std::time::Duration;

use common::{Stack, submit_and_wait, wait_until_set_up};
use sluice_proto::names;

const MIB: u64 = 1024 * 1024;

/// The `max_bytes` of a stream, read back from the server.
fn max_bytes(stack: &Stack, name: &str) -> i64 {
    stack.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(name).await.unwrap().cached_info().config.max_bytes
    })
}

#[test]
fn on_a_200_mib_store_the_coordinator_takes_50_mib_for_logs_and_10_for_rejections_and_runs() {
    let mut stack = Stack::start_with_max_file_store(200 * MIB);
    let coordinator = stack.coordinator();
    stack.worker(&[]);
    wait_until_set_up(&stack);
    assert_eq!(max_bytes(&stack, names::LOGS_STREAM), (50 * MIB) as i64);
    assert_eq!(max_bytes(&stack, names::REJECTED_STREAM), (10 * MIB) as i64);
    let log = stack.log(coordinator);
    assert!(
        log.contains("JetStream storage measured") && log.contains("logs=50 MiB") && log.contains("25% of the store"),
        "{log}"
    );
    let flow = stack.write(
        "small.yaml",
        "name: small\njobs:\n  a: { run: exec, command: [echo, hi] }\n  b: { run: noop, needs: [a] }\n",
    );
    let status = submit_and_wait(&stack, &flow, 0);
    assert_eq!(status["state"], "succeeded", "{status}");
}

#[test]
fn on_a_40_mib_store_the_coordinator_exits_2_saying_why() {
    let mut stack = Stack::start_with_max_file_store(40 * MIB);
    let coordinator = stack.coordinator();
    let status = stack.wait_exit(coordinator, Duration::from_secs(15));
    let log = stack.log(coordinator);
    assert_eq!(status.code(), Some(2), "{log}");
    let reason = log.lines().find(|line| line.starts_with("error: ")).unwrap_or_else(|| panic!("no reason: {log}"));
    assert!(
        reason.contains("40 MiB") && reason.contains("at least 64 MiB") && reason.contains("max_file_store"),
        "{reason}"
    );
    assert!(!log.contains("restarting from durable state"), "{log}");
}
