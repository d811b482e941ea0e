//! A real stack: the `sluice` binary next to this test (cargo builds it for `cargo test
//! --workspace`; for `cargo test -p sluice-testkit` alone, `cargo build -p sluice` first).

use std::time::Duration;

use sluice_client::Lookup;
use sluice_proto::RunState;
use sluice_testkit::{Stack, find_sluice, wait, workflow};

fn stack() -> Stack {
    let sluice = find_sluice(None).unwrap_or_else(|error| panic!("{error:#}"));
    Stack::start(sluice).expect("a stack starts (`make tools` installs nats-server)")
}

#[test]
fn a_workflow_runs_on_a_real_coordinator_and_worker() {
    let mut stack = stack();
    let coordinator = stack.coordinator();
    let worker = stack.worker(&["--concurrency", "2"]);
    stack.wait_for_workers("default", 1, Duration::from_secs(30)).expect("the worker registers");

    let log = stack.job_log();
    let needs = |names: &[&str]| names.iter().map(|name| name.to_string()).collect::<Vec<_>>();
    let yaml = format!(
        "name: kit\njobs:\n  first: {}\n  second: {}\n  last: {{ run: noop, needs: [first, second] }}\n",
        workflow::recording_job(&log, 0.0, &[]),
        workflow::recording_job(&log, 0.0, &needs(&["first"])),
    );
    let file = stack.write("kit.yaml", &yaml);
    assert!(file.starts_with(stack.dir.path()));

    let id = stack.submit(&std::fs::read_to_string(&file).unwrap()).expect("submitted");
    let Lookup::Found(view) = stack.wait_for_end(&id, Duration::from_secs(60)).expect("the run ends") else {
        panic!("run {id} was not found or was rejected");
    };
    assert_eq!(view.record.state, RunState::Succeeded, "{:?}", view.record.error);
    assert_eq!(view.jobs.len(), 3);
    let recorded = workflow::read_job_log(&log);
    assert_eq!((recorded["first"].starts.len(), recorded["second"].starts.len()), (1, 1));
    assert!(recorded["first"].ends[0].1 <= recorded["second"].starts[0].1, "second ran after first");

    let status = stack.wait_for_run(&id.to_string(), Duration::from_secs(10));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(stack.leader_pid(), Some(stack.pid(coordinator)));

    let coordinator_usage = stack.usage(coordinator);
    assert!(coordinator_usage.peak_rss_bytes > 0, "{coordinator_usage:?}");
    let both = stack.usage_of(&[coordinator, worker]);
    assert!(both.peak_rss_bytes >= coordinator_usage.peak_rss_bytes);
    assert!(both.cpu_seconds >= coordinator_usage.cpu_seconds);
    assert!(stack.nats.usage().is_some_and(|usage| usage.peak_rss_bytes > 0));
    assert_eq!(stack.named("worker"), [worker]);

    stack.signal(worker, "TERM");
    assert!(stack.wait_exit(worker, Duration::from_secs(30)).success(), "{}", stack.log(worker));
    assert!(!stack.is_running(worker));
    assert!(stack.is_running(coordinator));
}

/// The async side, as the loadtest uses it: an external URL, a run's record awaited by its
/// watch, and a bounded wait that fails with what it waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_waits_are_bounded_and_name_what_they_awaited() {
    let mut own = stack();
    own.coordinator();
    let mut stack = Stack::builder(own.sluice_binary()).external(own.url()).log_filter("warn").start().unwrap();
    let worker = stack.worker(&[]);
    let js = sluice_testkit::connect(&stack.url()).await.unwrap();
    wait::workers(&js, "default", 1, Duration::from_secs(30)).await.unwrap();

    let id = workflow::submit_yaml(&js, "name: tiny\njobs:\n  a: { run: noop }\n").await.unwrap();
    let record = wait::run_record_end(&js, &id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(record.state, RunState::Succeeded);

    let error = wait::workers(&js, "nowhere", 1, Duration::from_millis(300)).await.unwrap_err();
    assert!(format!("{error:#}").contains("1 workers of pool nowhere"), "{error:#}");
    let never = sluice_proto::RunId::new();
    let error = wait::run_record_end(&js, &never, Duration::from_millis(300)).await.unwrap_err();
    assert!(format!("{error:#}").contains(&format!("run {never} did not end within")), "{error:#}");
    assert!(stack.usage(worker).peak_rss_bytes > 0);
    assert!(stack.nats.usage().is_none(), "an external server's usage is unknown");
}
