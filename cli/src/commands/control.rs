//! `sluice cancel RUN` and `sluice retry RUN [--job J]`: requests to the coordinator through
//! the `SLUICE_CONTROL` stream, checked here first so mistakes get a clear answer at once,
//! then followed until the coordinator has applied them.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use sluice_coordinator::topology;
use sluice_proto::{ControlAction, JobState, RunId, RunState};

use crate::commands::status::{Lookup, RunView, lookup, view_json};
use crate::follow::follow_one;
use crate::output::{self, CliError, Format, print_json};

/// How long to wait for a coordinator to apply a request.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);
const APPLY_POLL: Duration = Duration::from_millis(200);

pub async fn cancel(url: &str, run: &str, format: Format) -> Result<ExitCode, CliError> {
    let (js, view) = open_run(url, run).await?;
    if view.record.state.is_terminal() {
        return Err(CliError::failed(format!(
            "run {} already finished: {}",
            view.record.id,
            view.record.state.as_str()
        )));
    }
    send(&js, view.record.id, ControlAction::Cancel, None, None).await?;
    // The run may end by itself before the request is applied: any end ends the wait.
    let done = wait_for(&js, view.record.id, |view| view.record.state.is_terminal()).await?;
    if done.record.state != RunState::Cancelled {
        return Err(CliError::failed(format!(
            "run {} finished ({}) before the cancel was applied",
            done.record.id,
            done.record.state.as_str()
        )));
    }
    report(&done, format, "cancelled");
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct RetryArgs {
    /// The run to retry.
    run: String,
    /// Run only this job again (and everything that needs it), even if it completed.
    #[arg(long)]
    job: Option<String>,
    /// Follow the run to its end; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
}

pub async fn retry(url: &str, args: RetryArgs, format: Format) -> Result<ExitCode, CliError> {
    let (js, view) = open_run(url, &args.run).await?;
    let id = view.record.id;
    match &args.job {
        Some(job) => {
            let record = view.all.get(job).ok_or_else(|| {
                let names: Vec<&str> = view.jobs.iter().map(|job| job.name.as_str()).collect();
                CliError::usage(format!("run {id} has no job `{job}`; its jobs are {}", names.join(", ")))
            })?;
            if !record.state.is_terminal() {
                return Err(CliError::failed(format!(
                    "job `{job}` is {}; only finished jobs can run again",
                    record.state.as_str()
                )));
            }
        }
        None if !view.record.state.is_terminal() => {
            return Err(CliError::failed(format!(
                "run {id} is still running; retry works on finished runs (or name a failed job with --job)"
            )));
        }
        None if view.record.state == RunState::Succeeded => {
            return Err(CliError::failed(format!(
                "run {id} succeeded: nothing to retry (name a job with --job to run it again)"
            )));
        }
        None => {}
    }
    let generations = |view: &RunView| view.all.values().map(|job| job.generation).sum::<u32>();
    let before = generations(&view);
    send(&js, id, ControlAction::Retry, args.job.clone(), None).await?;
    let applied = wait_for(&js, id, |view| generations(view) > before).await?;
    let again: Vec<&str> = applied
        .all
        .values()
        .filter(|job| view.all.get(&job.name).is_some_and(|old| old.generation < job.generation))
        .map(|job| job.name.as_str())
        .collect();
    if format == Format::Human {
        println!("retrying run {id}: {}", again.join(", "));
    }
    if !args.wait {
        if format == Format::Json {
            print_json(&json!({"id": id.to_string(), "retrying": again}));
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow_one(&js, id, format).await
}

/// Connects and reads the run, or explains why there is none.
pub async fn open_run(url: &str, run: &str) -> Result<(jetstream::Context, RunView), CliError> {
    let id: RunId = run.parse().map_err(|error: sluice_proto::ids::RunIdError| CliError::usage(error.to_string()))?;
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    match lookup(&js, &id).await? {
        Lookup::Found(view) => Ok((js, *view)),
        Lookup::Rejected(rejection) => Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason))),
        Lookup::Unknown => Err(CliError::usage(format!("no run {id}"))),
    }
}

/// Publishes a request and waits until JetStream stored it.
pub async fn send(
    js: &jetstream::Context,
    run_id: RunId,
    action: ControlAction,
    job: Option<String>,
    dead_letter: Option<u64>,
) -> Result<(), CliError> {
    topology::ensure(js).await?;
    sluice_coordinator::requests::control(js, run_id, action, job, dead_letter).await?;
    Ok(())
}

/// Reads the run until `applied` holds, or fails after [`APPLY_TIMEOUT`].
pub async fn wait_for(
    js: &jetstream::Context,
    id: RunId,
    applied: impl Fn(&RunView) -> bool,
) -> Result<RunView, CliError> {
    let deadline = tokio::time::Instant::now() + APPLY_TIMEOUT;
    let mut ticker = tokio::time::interval(APPLY_POLL);
    loop {
        ticker.tick().await;
        if let Lookup::Found(view) = lookup(js, &id).await?
            && applied(&view)
        {
            return Ok(*view);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::failed(format!(
                "the request for run {id} is queued, but no coordinator applied it within {}s (is one running? see its log for a refusal)",
                APPLY_TIMEOUT.as_secs()
            )));
        }
    }
}

fn report(view: &RunView, format: Format, what: &str) {
    match format {
        Format::Json => print_json(&view_json(view)),
        Format::Human => {
            let stopped = view.jobs.iter().filter(|job| job.state == JobState::Cancelled).count();
            println!("run {} {what}: {stopped} jobs cancelled", view.record.id);
        }
    }
}
