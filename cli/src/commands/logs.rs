//! `sluice logs RUN [JOB] [--follow]`: the log lines of a run's jobs (exec stdout/stderr,
//! Rust `ctx.log`), from the logs stream, so they outlive the workers that wrote them.

use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;
use serde_json::json;
use sluice_client::Stores;
use sluice_proto::{LogBatch, RunId, decode, names};

use crate::commands::status::{Lookup, lookup};
use crate::output::{self, CliError, Format};

/// How often `--follow` checks whether the run has ended.
const RUN_CHECK_EVERY: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The run id.
    run: String,
    /// Only this job and its children (a child as `parent.child`).
    job: Option<String>,
    /// Keep printing new lines until the run ends (or Ctrl-C).
    #[arg(long, short = 'f')]
    follow: bool,
}

pub async fn run(url: &str, args: LogsArgs, format: Format) -> Result<ExitCode, CliError> {
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    let id: RunId = output::resolve_run(&js, &args.run).await?;
    let view = match lookup(&js, &id).await? {
        Lookup::Found(view) => view,
        Lookup::Rejected(rejection) => {
            return Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason)));
        }
        Lookup::Unknown => return Err(CliError::usage(format!("no run {id}"))),
    };
    // Lines in the schema-2 layout, and lines a schema-1 worker stored before an upgrade.
    let mut filters = match &args.job {
        None => vec![names::run_logs_filter(&id)],
        Some(job) if view.all.contains_key(job) => names::job_logs_filters(&id, job).to_vec(),
        Some(job) => {
            let names: Vec<&str> = view.jobs.iter().map(|job| job.name.as_str()).collect();
            return Err(CliError::usage(format!("run {id} has no job `{job}`; its jobs are {}", names.join(", "))));
        }
    };
    filters.extend(names::compat::logs_filters(&id, args.job.as_deref()));
    let stream = match js.get_stream(names::LOGS_STREAM).await {
        Ok(stream) => stream,
        Err(_) => return Ok(ExitCode::SUCCESS), // nothing was ever logged on this server
    };
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filters.clone(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|error| CliError::nats(format!("reading logs: {error}")))?;
    let pending = consumer.info().await.map_err(|error| CliError::nats(format!("reading logs: {error}")))?.num_pending;
    let mut caught_up = pending == 0;
    // The stream sequence of the last line printed.
    let mut last_seen = 0;
    let mut run_ended = view.record.state.is_terminal();
    if caught_up && (!args.follow || run_ended) {
        return Ok(ExitCode::SUCCESS);
    }
    let mut messages = consumer.messages().await.map_err(|error| CliError::nats(format!("reading logs: {error}")))?;
    let mut check = tokio::time::interval(RUN_CHECK_EVERY);
    let stores = Stores::open(&js).await?;
    loop {
        if caught_up && (!args.follow || run_ended) {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return Ok(ExitCode::SUCCESS) };
                let message = message.map_err(|error| CliError::nats(format!("reading logs: {error}")))?;
                if let Ok(info) = message.info() {
                    caught_up = info.pending == 0;
                    last_seen = info.stream_sequence;
                }
                match decode::<LogBatch>(&message.payload) {
                    Ok(batch) => print_batch(&batch, format)?,
                    Err(error) => output::errln(format_args!("skipping log lines that cannot be read: {error}")),
                }
            }
            _ = check.tick(), if args.follow && !run_ended => {
                if let Some(stores) = &stores
                    && let Some(record) = stores.run(&id).await?
                {
                    // A worker stores an attempt's lines before reporting it, so once the run
                    // has ended every line is in the stream; lines stored after the last one
                    // printed may still be on their way here.
                    run_ended = record.state.is_terminal();
                    if run_ended {
                        caught_up = lines_after(&stream, &filters, last_seen).await? == 0;
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

/// How many log batches matching `filters` the stream holds after sequence `last_seen`.
async fn lines_after(stream: &jetstream::stream::Stream, filters: &[String], last_seen: u64) -> Result<u64, CliError> {
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: filters.to_vec(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: last_seen + 1 },
            ..Default::default()
        })
        .await
        .map_err(|error| CliError::nats(format!("reading logs: {error}")))?;
    let info = consumer.info().await.map_err(|error| CliError::nats(format!("reading logs: {error}")))?;
    Ok(info.num_pending)
}

fn print_batch(batch: &LogBatch, format: Format) -> Result<(), CliError> {
    for line in &batch.lines {
        match format {
            // One JSON object per line, so `--follow -o json` streams.
            Format::Json => outln!(
                "{}",
                json!({
                    "at": output::time(Some(line.at)),
                    "job": batch.job,
                    "attempt": batch.attempt,
                    "stream": line.stream.as_str(),
                    "text": line.text,
                })
            ),
            Format::Human => outln!(
                "{} {}#{} {:<6} {}",
                output::time(Some(line.at)).as_str().unwrap_or_default(),
                batch.job,
                batch.attempt,
                line.stream.as_str(),
                line.text
            ),
        }?;
    }
    Ok(())
}
