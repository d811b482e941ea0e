//! The crate documentation's example, run against a real nats-server, coordinator and
//! worker: a workflow submitted through sluice-client is followed to its end.

include!("../examples/submit_and_follow.rs");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_example_submits_and_follows_a_run() {
    let nats = sluice_local_nats::NatsServer::start_temporary().expect("nats-server starts");
    let client = sluice_client::connect(&nats.url(), "test-stack").await.expect("connects");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let coordinator = tokio::spawn(sluice_coordinator::service::run(client.clone(), shutdown.clone()));
    let worker = tokio::spawn(sluice_worker::runtime::run(
        client.clone(),
        sluice_worker::Registry::with_stock_kinds(),
        sluice_worker::WorkerConfig::new("default"),
        shutdown.clone(),
    ));
    let yaml = "name: hello\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n";
    let view = submit_and_follow(&nats.url(), yaml).await.expect("the run ends");
    assert_eq!(view.record.state, sluice_proto::RunState::Succeeded);
    let states: Vec<_> = view.jobs.iter().map(|job| (job.name.as_str(), job.state)).collect();
    assert_eq!(states, [("a", sluice_proto::JobState::Completed), ("b", sluice_proto::JobState::Completed)]);
    shutdown.cancel();
    let _ = coordinator.await;
    let _ = worker.await;
}
