//! `sluice status RUN`: a run and its jobs, with every attempt; or a submission no
//! coordinator has taken yet, shown `pending`.

use std::process::ExitCode;

use async_nats::jetstream;
use sluice_client::json::one_job_json;
pub use sluice_client::json::{pending_json, view_json};
use sluice_client::{Located, locate};
pub use sluice_client::{Lookup, RunView, lookup};
use sluice_proto::{JobRecord, RunId};

use crate::output::{self, CliError, Format, error_line, first_line, print_json, short_time, table, time};

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The run id `submit` printed.
    run: String,
    /// Show one job (a child as `parent.child`) with every attempt and its children.
    #[arg(long)]
    job: Option<String>,
}

pub async fn run(url: &str, args: StatusArgs, format: Format) -> Result<ExitCode, CliError> {
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    let id: RunId = output::resolve_run(&js, &args.run).await?;
    match locate(&js, &id).await? {
        Located::Found(view) => show(&view, &args, format),
        Located::Rejected(rejection) => Err(CliError::failed(format!("run {id} was rejected: {}", rejection.reason))),
        Located::Pending(_) if args.job.is_some() => {
            Err(CliError::usage(format!("run {id} is pending: its jobs exist once a coordinator takes its submission")))
        }
        Located::Pending(pending) => {
            match format {
                Format::Json => print_json(&pending_json(&pending))?,
                Format::Human => outln!("{}", pending_text(&pending))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Located::Unknown => Err(CliError::usage(format!(
            "no run {id} (not submitted to this server, nor among its newest {} pending submissions)",
            sluice_client::runs::PENDING_READ_MAX
        ))),
    }
}

/// Prints a stored run, or one of its jobs.
fn show(view: &RunView, args: &StatusArgs, format: Format) -> Result<ExitCode, CliError> {
    match (&args.job, format) {
        (None, Format::Json) => print_json(&view_json(view))?,
        (None, Format::Human) => outln!("{}", view_text(view))?,
        (Some(path), _) => {
            let Some(job) = view.all.get(path) else {
                let names: Vec<&str> = view.jobs.iter().map(|job| job.name.as_str()).collect();
                return Err(CliError::usage(format!(
                    "run {} has no job `{path}`; its jobs are {} (children are named parent.child)",
                    view.record.id,
                    names.join(", ")
                )));
            };
            match format {
                Format::Json => print_json(&one_job_json(view, job)),
                Format::Human => outln!("{}", one_job_text(view, job)),
            }?
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The human view of a pending run.
pub fn pending_text(run: &sluice_client::runs::PendingRun) -> String {
    format!(
        "run        {}\nworkflow   {}\nstate      {}\nwindow     {}\nsubmitted  {}\n\nwaiting for a coordinator to take the submission (`sluice coordinator`)",
        run.id,
        run.workflow.as_deref().unwrap_or("? (its YAML cannot be read: it will be rejected)"),
        super::runs::PENDING,
        run.window
            .as_ref()
            .map(|window| window.to_string())
            .unwrap_or_else(|| "the previous day (decided when it is taken)".into()),
        time(Some(run.submitted_at)).as_str().unwrap_or_default(),
    )
}

/// The human lines of a run's notifications (none when it has none).
fn notifications_text(view: &RunView) -> String {
    if view.notifications.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = view
        .notifications
        .iter()
        .map(|status| {
            vec![
                status.event.as_str().to_owned(),
                status.target.clone(),
                status.state.as_str().to_owned(),
                status.status_code.map(|code| code.to_string()).unwrap_or_else(|| "-".into()),
                status.attempts.to_string(),
                short_time(Some(status.last_at)),
                status.error.as_deref().map(error_line).unwrap_or_default(),
            ]
        })
        .collect();
    format!("\n\n{}", table(&["NOTIFIED", "TARGET", "DELIVERY", "HTTP", "ATTEMPTS", "LAST", "ERROR"], &rows))
}

/// `marked succeeded by alice`: a job a user ended by hand (`sluice mark`).
fn marked_text(mark: &sluice_proto::Mark) -> String {
    format!("marked {} by {}", mark.as_.as_str(), mark.by)
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
    if let Some(by) = &record.cancelled_by {
        out.push_str(&format!("cancelled by {by} before it started\n"));
    }
    out.push('\n');
    out.push_str(&jobs_table(view, view.jobs.iter()));
    out.push_str(&notifications_text(view));
    out
}

/// A table of jobs; a CHILDREN column when any of them spawned children.
fn jobs_table<'a>(view: &RunView, jobs: impl Iterator<Item = &'a JobRecord>) -> String {
    let jobs: Vec<&JobRecord> = jobs.collect();
    let with_children = jobs.iter().any(|job| job.children > 0);
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let mut row = vec![
                job.name.clone(),
                job.state.as_str().to_owned(),
                job.attempts.to_string(),
                short_time(job.started_at),
                short_time(job.finished_at),
            ];
            if with_children {
                row.push(children_text(view, job));
            }
            row.push(match &job.marked {
                Some(mark) => marked_text(mark),
                None => job.error.as_deref().map(error_line).unwrap_or_default(),
            });
            row
        })
        .collect();
    let mut headers = vec!["JOB", "STATE", "ATTEMPTS", "STARTED", "FINISHED"];
    if with_children {
        headers.push("CHILDREN");
    }
    headers.push("ERROR");
    // The table's lines are its header and a line per job (no cell holds a newline); each
    // job tried more than once is followed by its attempts, indented, so a retry or a lost
    // worker shows without `--job`.
    let rendered = table(&headers, &rows);
    let mut lines = rendered.lines();
    let mut out = lines.next().unwrap_or_default().to_owned();
    for (job, line) in jobs.iter().zip(lines) {
        out.push('\n');
        out.push_str(line);
        if job.attempt_history.len() > 1 {
            for attempt in attempt_lines(job, view.record.spec_hash.as_deref()) {
                out.push_str("\n    ");
                out.push_str(&attempt);
            }
        }
    }
    out
}

/// The first 12 hex digits of a spec hash: enough to tell specs apart on screen.
fn short_hash(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A line per attempt in `job`'s history, with a note where attempts were left out; an
/// attempt that ran with another spec than the run's current one (`view_spec`) says which.
fn attempt_lines(job: &JobRecord, view_spec: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    for (index, attempt) in job.attempt_history.iter().enumerate() {
        if index == 1 && job.attempts_omitted > 0 {
            out.push(format!("… {} attempts omitted (the first and the latest are kept)", job.attempts_omitted));
        }
        // Which spec it ran with, where a retry or replay brought another (`--spec`).
        let spec = match (attempt.spec_hash.as_deref(), view_spec) {
            (Some(hash), Some(current)) if hash != current => format!(" (spec {})", short_hash(hash)),
            _ => String::new(),
        };
        out.push(format!(
            "attempt {} on {}{spec}: {} → {}{}",
            attempt.attempt,
            attempt.worker,
            short_time(Some(attempt.started_at)),
            short_time(attempt.finished_at),
            attempt.error.as_deref().map(|error| format!("  {}", error_line(error))).unwrap_or_default()
        ));
        if let Some(found) = &attempt.found_later {
            out.push(format!("  found later: {}", error_line(found)));
        }
    }
    out
}

/// `200: 198 completed, 2 failed`.
fn children_text(view: &RunView, job: &JobRecord) -> String {
    if job.children == 0 {
        return String::new();
    }
    let counts: Vec<String> =
        view.child_counts(&job.name).iter().map(|(state, count)| format!("{count} {state}")).collect();
    format!("{}: {}", job.children, counts.join(", "))
}

/// `status RUN --job J`: the job's attempts, output and children.
fn one_job_text(view: &RunView, job: &JobRecord) -> String {
    let mut out = format!(
        "run       {}\njob       {}\nstate     {}\nattempts  {}\n",
        view.record.id,
        job.name,
        job.state.as_str(),
        job.attempts
    );
    if let Some(error) = &job.error {
        out.push_str(&format!("error     {}\n", error_line(error)));
    }
    if let Some(mark) = &job.marked {
        out.push_str(&format!("note      {} at {}\n", marked_text(mark), short_time(Some(mark.at))));
    }
    if let Some(output) = &job.output {
        out.push_str(&format!("output    {}\n", first_line(&output.to_string())));
    }
    for line in attempt_lines(job, view.record.spec_hash.as_deref()) {
        out.push_str(&line);
        out.push('\n');
    }
    if job.children > 0 {
        out.push_str(&format!("children  {}\n\n", children_text(view, job)));
        // Unfinished and failed children first: they are what a user looks for.
        let mut children: Vec<&JobRecord> = view.children_of(&job.name).collect();
        children.sort_by_key(|child| child.state == sluice_proto::JobState::Completed);
        const SHOWN: usize = 50;
        let more = children.len().saturating_sub(SHOWN);
        out.push_str(&jobs_table(view, children.into_iter().take(SHOWN)));
        if more > 0 {
            out.push_str(&format!("\n… and {more} more (-o json lists them all)"));
        }
    }
    out
}
