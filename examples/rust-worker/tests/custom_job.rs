//! The example worker's custom `calibrate` kind runs through the real pieces: a private
//! nats-server, the coordinator service, and the example worker binary.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_local_nats::NatsServer;
use sluice_proto::{
    JobRecord, JobState, LogBatch, RunId, RunRecord, RunState, SCHEMA_VERSION, Submission, decode, encode, names,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_using_calibrate_succeeds_on_the_example_worker() {
    let server = NatsServer::start_temporary().expect("nats-server");
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let topology = sluice_coordinator::topology::ensure(&js).await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let coordinator = tokio::spawn(sluice_coordinator::service::run(client.clone(), shutdown.clone()));
    // The example worker serves its own pool, declared like any other.
    let declare = sluice_proto::ControlRequest::new(
        sluice_proto::ControlAction::PoolApply(sluice_proto::PoolSettings {
            name: "rust".into(),
            ..Default::default()
        }),
        None,
        "test",
    );
    let declared = sluice_client::requests::control(&js, "test", &declare, Duration::from_secs(30)).await.unwrap();
    assert_eq!(declared.outcome, sluice_proto::Outcome::Applied, "{declared:?}");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_sluice-example-worker"))
        .args(["--nats-url", &server.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let workflow =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../workflows/calibrate.yaml")).unwrap();
    let run_id = RunId::new();
    let submission = Submission {
        schema_version: SCHEMA_VERSION,
        run_id,
        workflow,
        window: None,
        params: Default::default(),
        idempotency_key: None,
        submitted_at: None,
        origin: None,
    };
    js.publish(names::SUBMIT_SUBJECT, encode(&submission).unwrap().into()).await.unwrap().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        if let Some(bytes) = topology.runs.get(run_id.to_string()).await.unwrap() {
            let run: RunRecord = decode(&bytes).unwrap();
            if run.state.is_terminal() {
                break run.state;
            }
        }
        assert!(Instant::now() < deadline, "run did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = worker.kill();
    let _ = worker.wait();
    shutdown.cancel();
    let _ = coordinator.await;
    assert_eq!(state, RunState::Succeeded);
    let parent: JobRecord =
        decode(&topology.jobs.get(names::job_key(&run_id, "per-sensor")).await.unwrap().unwrap()).unwrap();
    assert_eq!(parent.state, JobState::Completed);
    assert_eq!(parent.children, 12);
    assert_eq!(parent.output, Some(serde_json::json!({"sensors": 12})));
    let child: JobRecord =
        decode(&topology.jobs.get(names::job_key(&run_id, "per-sensor.sensor-007")).await.unwrap().unwrap()).unwrap();
    assert_eq!(child.state, JobState::Completed);
    assert_eq!(child.output.unwrap()["sensor"], "sensor-007");
    // `ctx.log` lines are kept in the logs stream, with the attempt.
    let logs = js.get_stream(names::LOGS_STREAM).await.unwrap();
    let stored = logs
        .get_last_raw_message_by_subject(&names::log_subject("rust", &run_id, 1, "per-sensor.sensor-007"))
        .await
        .unwrap();
    let batch: LogBatch = decode(&stored.payload).unwrap();
    assert_eq!(batch.attempt, 1);
    assert!(batch.lines[0].text.starts_with("calibrating sensor sensor-007 with model v3"), "{batch:?}");
}
