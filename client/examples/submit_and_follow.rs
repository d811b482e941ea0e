// Submits a workflow with sluice-client and follows its run to the end.
// `cargo run -p sluice-client --example submit_and_follow -- nats://127.0.0.1:4222 examples/workflows/hello.yaml`

use std::time::Duration;

use sluice_client::{Lookup, RunView};
use sluice_proto::{RunId, SCHEMA_VERSION, Submission};

/// Submits `yaml` for its default window and waits until the run ends; returns its jobs'
/// final states.
pub async fn submit_and_follow(url: &str, yaml: &str) -> Result<RunView, Box<dyn std::error::Error>> {
    let client = sluice_client::connect(url, "example").await?;
    let js = async_nats::jetstream::new(client);
    let run_id = RunId::new();
    let submission = Submission {
        schema_version: SCHEMA_VERSION,
        run_id,
        workflow: yaml.to_owned(),
        window: None,
        params: Default::default(),
        idempotency_key: None,
        submitted_at: Some(chrono::Utc::now()),
        origin: None,
    };
    // A coordinator started a moment ago may still be creating Sluice's streams.
    sluice_client::requests::wait_until_set_up(&js, sluice_client::requests::SETUP_WAIT).await?;
    // The run id doubles as the deduplication id: publishing twice makes one run.
    sluice_client::requests::submit(&js, &submission, &run_id.to_string()).await?;
    // Pushed by a KV watch on the run's record; bounded, since no coordinator may be up.
    let end = tokio::time::timeout(Duration::from_secs(60), sluice_client::view::wait_for_end(&js, &run_id)).await?;
    match end? {
        Lookup::Found(view) => Ok(*view),
        Lookup::Rejected(rejection) => Err(rejection.reason.into()),
        Lookup::Unknown => Err(format!("run {run_id} is unknown").into()),
    }
}

#[allow(dead_code)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(file)) = (args.next(), args.next()) else {
        return Err("usage: submit_and_follow NATS_URL WORKFLOW.yaml".into());
    };
    let view = submit_and_follow(&url, &std::fs::read_to_string(file)?).await?;
    println!("run {} {}", view.record.id, view.record.state.as_str());
    for job in &view.jobs {
        println!("  {:<24} {}", job.name, job.state.as_str());
    }
    Ok(())
}
