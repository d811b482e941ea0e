//! `sluice cancel RUN`, `sluice retry RUN [--job J]` and `sluice mark RUN JOB --succeeded |
//! --skipped`: control requests the coordinator
//! applies and answers (KV `sluice-outcomes`); the answer is printed at once, with the exit
//! code its kind maps to. Only read-only checks happen here (an unknown run or job name);
//! whether the request is allowed is the coordinator's to say.

use std::process::ExitCode;

use async_nats::jetstream;
use serde_json::json;
use sluice_proto::spawn::check_output;
use sluice_proto::{ControlAction, ControlRequest, JobState, MarkAs, RunId};

use crate::commands::status::{Lookup, RunView, lookup, pending_json, view_json};
use crate::follow::follow_one;
use crate::output::{self, CliError, Format, applied, ask, print_json};
use sluice_client::{Located, locate};

/// How long `cancel` of a pending run waits for the coordinator that answered to create it
/// (`cancelled`), so it can print the run; it takes the submission right after the request.
const CREATED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub async fn cancel(url: &str, run: &str, format: Format) -> Result<ExitCode, CliError> {
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    let id: RunId = output::resolve_run(&js, run).await?;
    let pending = match locate(&js, &id).await? {
        Located::Found(_) => None,
        Located::Rejected(rejection) => {
            return Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason)));
        }
        Located::Pending(pending) => Some(pending),
        Located::Unknown => return Err(CliError::usage(format!("no run {id}"))),
    };
    let outcome = applied(ask(&js, ControlRequest::new(ControlAction::Cancel, Some(id), "")).await?)?;
    if let Some(pending) = pending {
        // The run is created `cancelled` once the coordinator takes its submission.
        let created = tokio::time::timeout(CREATED_WAIT, sluice_client::view::wait_for_end(&js, &id)).await;
        let Ok(Ok(Lookup::Found(done))) = created else {
            match format {
                Format::Json => print_json(&pending_json(&pending))?,
                Format::Human => outln!("{}", outcome.reason)?,
            }
            return Ok(ExitCode::SUCCESS);
        };
        match format {
            Format::Json => print_json(&view_json(&done))?,
            Format::Human => outln!("run {id} cancelled before it started: none of its jobs ran")?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Lookup::Found(done) = lookup(&js, &id).await? else {
        return Err(CliError::failed(format!("run {id} was cancelled but cannot be read back")));
    };
    match format {
        Format::Json => print_json(&view_json(&done))?,
        Format::Human => {
            let stopped = done.jobs.iter().filter(|job| job.state == JobState::Cancelled).count();
            outln!("run {id} cancelled: {stopped} jobs cancelled")?;
        }
    }
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
    /// Take the definitions of the jobs that run again from this workflow file (a fixed
    /// command, config, retry, timeout or pool). Adding or removing jobs, changing `needs`,
    /// or changing a job that does not run again is refused, naming the jobs. Without it the
    /// run keeps the spec it has.
    #[arg(long, value_name = "FILE")]
    spec: Option<std::path::PathBuf>,
}

pub async fn retry(url: &str, args: RetryArgs, format: Format) -> Result<ExitCode, CliError> {
    let (js, view) = open_run(url, &args.run).await?;
    let id = view.record.id;
    if let Some(job) = &args.job {
        check_job(&view, job)?;
    }
    let spec = args.spec.as_deref().map(super::read_workflow).transpose()?.map(|(_, yaml)| yaml);
    let request =
        ControlRequest { job: args.job.clone(), spec, ..ControlRequest::new(ControlAction::Retry, Some(id), "") };
    let outcome = applied(ask(&js, request).await?)?;
    if format == Format::Human {
        outln!("retrying run {id}: {}", outcome.changed.join(", "))?;
    }
    let answer =
        json!({"id": id.to_string(), "retrying": outcome.changed, "request_id": outcome.request_id.to_string()});
    done_or_follow(&js, id, args.wait, answer, format).await
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("as").required(true).args(["succeeded", "skipped"]))]
pub struct MarkArgs {
    /// The run.
    run: String,
    /// The job to end by hand (a job of the workflow).
    job: String,
    /// End it as if it had succeeded: what needs it runs.
    #[arg(long)]
    succeeded: bool,
    /// End it as if it had been skipped: what needs it behaves as for a skipped job.
    #[arg(long)]
    skipped: bool,
    /// With --succeeded: the job's output, as JSON (what jobs that need it read). Not
    /// `--output`: that is the global output format (`-o json`).
    #[arg(long, value_name = "JSON", requires = "succeeded")]
    with_output: Option<String>,
    /// Follow the run to its end; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
}

pub async fn mark(url: &str, args: MarkArgs, format: Format) -> Result<ExitCode, CliError> {
    let as_ = if args.succeeded { MarkAs::Succeeded } else { MarkAs::Skipped };
    // Bad input is said before anything is asked.
    let output = args.with_output.as_deref().map(parse_output).transpose()?;
    let (js, view) = open_run(url, &args.run).await?;
    let id = view.record.id;
    check_job(&view, &args.job)?;
    let action = ControlAction::Mark { job: args.job.clone(), as_, output };
    let outcome = applied(ask(&js, ControlRequest::new(action, Some(id), "")).await?)?;
    if format == Format::Human {
        outln!("{}", outcome.reason)?;
    }
    let answer = json!({
        "id": id.to_string(),
        "job": args.job,
        "marked": as_.as_str(),
        "changed": outcome.changed,
        "request_id": outcome.request_id.to_string(),
    });
    done_or_follow(&js, id, args.wait, answer, format).await
}

/// `--with-output`'s JSON, within the limit of a job's output.
fn parse_output(text: &str) -> Result<serde_json::Value, CliError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|error| CliError::usage(format!("--with-output is not valid JSON: {error}")))?;
    check_output(&value).map_err(|problem| CliError::usage(format!("--with-output: {problem}")))?;
    Ok(value)
}

/// A read-only check before a request about one job: an unknown name exits 2 at once,
/// listing the run's jobs (the coordinator's answer would say the same, later).
fn check_job(view: &RunView, job: &str) -> Result<(), CliError> {
    if view.all.contains_key(job) {
        return Ok(());
    }
    let names: Vec<&str> = view.jobs.iter().map(|job| job.name.as_str()).collect();
    Err(CliError::usage(format!("run {} has no job `{job}`; its jobs are {}", view.record.id, names.join(", "))))
}

/// After an applied request that may set the run going again: print `answer` (JSON) and
/// end, or follow the run to its end (`--wait`).
async fn done_or_follow(
    js: &jetstream::Context,
    id: RunId,
    wait: bool,
    answer: serde_json::Value,
    format: Format,
) -> Result<ExitCode, CliError> {
    if wait {
        return follow_one(js, id, format).await;
    }
    if format == Format::Json {
        print_json(&answer)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Connects and reads the run, or explains why there is none.
pub async fn open_run(url: &str, run: &str) -> Result<(jetstream::Context, RunView), CliError> {
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    let id: RunId = output::resolve_run(&js, run).await?;
    match locate(&js, &id).await? {
        Located::Found(view) => Ok((js, *view)),
        Located::Rejected(rejection) => Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason))),
        Located::Pending(_) => Err(CliError::failed(format!(
            "run {id} is pending: no coordinator has taken its submission yet, so it has nothing to retry"
        ))),
        Located::Unknown => Err(CliError::usage(format!("no run {id}"))),
    }
}
