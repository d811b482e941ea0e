//! `sluice status RUN`: a run and its jobs, with every attempt.

use std::process::ExitCode;

use async_nats::jetstream;
use serde_json::json;
use sluice_coordinator::store;
use sluice_coordinator::topology::{self, Topology};
use sluice_proto::{JobRecord, Rejection, RunId, RunRecord};

use crate::output::{self, CliError, Format, print_json, short_time, table, time};

/// A run with its job records, in dependency order.
pub struct RunView {
    pub record: RunRecord,
    pub jobs: Vec<JobRecord>,
}

/// What is known about a run id.
pub enum Lookup {
    Found(RunView),
    Rejected(Rejection),
    Unknown,
}

pub async fn run(url: &str, run: &str, format: Format) -> Result<ExitCode, CliError> {
    let id: RunId = run.parse().map_err(|error: sluice_proto::ids::RunIdError| CliError::usage(error.to_string()))?;
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    match lookup(&js, &id).await? {
        Lookup::Found(view) => {
            match format {
                Format::Json => print_json(&view_json(&view)),
                Format::Human => println!("{}", view_text(&view)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Lookup::Rejected(rejection) => Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason))),
        Lookup::Unknown => Err(CliError::usage(format!(
            "no run {id} (not submitted to this server, or no coordinator has taken it yet)"
        ))),
    }
}

/// Reads a run, or the rejection of its submission.
pub async fn lookup(js: &jetstream::Context, id: &RunId) -> Result<Lookup, CliError> {
    let Some(topology) = topology::open(js).await? else {
        return Ok(Lookup::Unknown);
    };
    if let Some(view) = load_view(&topology, id).await? {
        return Ok(Lookup::Found(view));
    }
    Ok(match store::load_rejection(js, id).await {
        Ok(Some(rejection)) => Lookup::Rejected(rejection),
        _ => Lookup::Unknown,
    })
}

pub async fn load_view(topology: &Topology, id: &RunId) -> Result<Option<RunView>, CliError> {
    let Some(record) = store::load_run(topology, id).await? else {
        return Ok(None);
    };
    let mut by_name = store::load_jobs(topology, &record).await?;
    let jobs = record.jobs.iter().filter_map(|name| by_name.remove(name)).collect();
    Ok(Some(RunView { record, jobs }))
}

/// The stable JSON shape of `status -o json` (documented in docs/cli.md).
pub fn view_json(view: &RunView) -> serde_json::Value {
    let record = &view.record;
    json!({
        "id": record.id.to_string(),
        "workflow": record.workflow,
        "state": record.state.as_str(),
        "window": {"start": record.window.start_rfc3339(), "end": record.window.end_rfc3339()},
        "params": record.params,
        "created_at": time(Some(record.created_at)),
        "finished_at": time(record.finished_at),
        "error": record.error,
        "trace_id": record.traceparent.as_deref().and_then(sluice_proto::TraceParent::parse).map(|parent| parent.trace_id_hex()),
        "jobs": view.jobs.iter().map(job_json).collect::<Vec<_>>(),
    })
}

fn job_json(job: &JobRecord) -> serde_json::Value {
    json!({
        "name": job.name,
        "state": job.state.as_str(),
        "attempts": job.attempts,
        "started_at": time(job.started_at),
        "finished_at": time(job.finished_at),
        "error": job.error,
        "retry_at": time(job.retry_at),
        "attempt_history": job.attempt_history.iter().map(|attempt| json!({
            "attempt": attempt.attempt,
            "started_at": time(Some(attempt.started_at)),
            "finished_at": time(attempt.finished_at),
            "error": attempt.error,
            "worker": attempt.worker,
            "redelivered_to": attempt.redelivered_to,
        })).collect::<Vec<_>>(),
    })
}

/// The human view: a header and a table of jobs.
pub fn view_text(view: &RunView) -> String {
    let record = &view.record;
    let mut out = format!(
        "run       {}\nworkflow  {}\nstate     {}\nwindow    {}\ncreated   {}\n",
        record.id,
        record.workflow,
        record.state.as_str(),
        record.window,
        time(Some(record.created_at)).as_str().unwrap_or_default()
    );
    if let Some(error) = &record.error {
        out.push_str(&format!("error     {error}\n"));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = view
        .jobs
        .iter()
        .map(|job| {
            vec![
                job.name.clone(),
                job.state.as_str().to_owned(),
                job.attempts.to_string(),
                short_time(job.started_at),
                short_time(job.finished_at),
                job.error.as_deref().map(first_line).unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(&["JOB", "STATE", "ATTEMPTS", "STARTED", "FINISHED", "ERROR"], &rows));
    out
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(100).collect::<String>())
    } else {
        line.to_owned()
    }
}
