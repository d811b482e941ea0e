//! `sluice audit WORKFLOW --from D --to D`: which jobs ran for which windows — the grid of
//! windows × jobs with each cell's final state and the latest run of each window.

use std::collections::HashMap;
use std::process::ExitCode;

use async_nats::jetstream;
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_json::json;
use sluice_client::Stores;
use sluice_proto::limits::BACKFILL_WINDOWS_MAX;
use sluice_proto::window::parse_zone;
use sluice_proto::{HumanDuration, RunState, Window, WorkflowSpec};

use crate::output::{self, CliError, Format, print_json, table};

#[derive(clap::Args)]
pub struct AuditArgs {
    /// The workflow's name.
    workflow: String,
    /// First day (YYYY-MM-DD), included.
    #[arg(long)]
    from: String,
    /// Last day (YYYY-MM-DD), included.
    #[arg(long)]
    to: String,
    /// Length of each window: `1d` (default), `7d`, `1h`, ...
    #[arg(long, default_value = "1d")]
    interval: HumanDuration,
    /// Time zone of the windows (default: the workflow's, from its newest run).
    #[arg(long)]
    timezone: Option<String>,
    /// Only the windows without a successful run.
    #[arg(long)]
    missing: bool,
}

/// Reads `--from`/`--to`, naming the flag when it is not a date.
pub fn parse_day(flag: &str, text: &str) -> Result<NaiveDate, CliError> {
    let text = text.trim();
    NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| {
        if sluice_proto::window::looks_like_day(text) {
            CliError::usage(format!("{flag}: {}", sluice_proto::window::why_no_such_day(text)))
        } else {
            CliError::usage(format!("{flag} `{text}` is not a day such as 2024-03-01"))
        }
    })
}

use sluice_proto::backfill::{key_of, latest_by_window};

pub async fn run(url: &str, args: AuditArgs, format: Format) -> Result<ExitCode, CliError> {
    let from = parse_day("--from", &args.from)?;
    let to = parse_day("--to", &args.to)?;
    let explicit_zone =
        args.timezone.as_deref().map(parse_zone).transpose().map_err(|e| CliError::usage(e.to_string()))?;
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    let Some(stores) = Stores::open(&js).await? else {
        return Err(CliError::usage(format!("no runs of workflow `{}` on this server", args.workflow)));
    };
    let zone: Tz = match explicit_zone {
        Some(zone) => zone,
        None => {
            let filter = sluice_client::runs::RunFilter { workflow: Some(args.workflow.clone()), ..Default::default() };
            let newest = sluice_client::runs::list(&js, &filter, 1, None).await?;
            let yaml = match newest.runs.first() {
                Some(run) => Some(sluice_client::specs::of_run(&js, run).await?),
                None => None,
            };
            yaml.and_then(|yaml| WorkflowSpec::parse(&yaml).ok()).map(|spec| spec.zone()).unwrap_or(chrono_tz::UTC)
        }
    };
    let runs = sluice_client::runs::by_local_days(&js, &args.workflow, from, to).await?;
    let windows = Window::range(from, to, args.interval.as_duration(), zone, BACKFILL_WINDOWS_MAX)
        .map_err(|error| CliError::usage(error.to_string()))?;
    let latest = latest_by_window(&runs);
    // Columns: every job seen in the windows' runs, oldest window first, in dependency order.
    let mut columns: Vec<String> = Vec::new();
    let mut rows = Vec::new();
    for window in &windows {
        let run = latest.get(&key_of(window)).copied();
        if let Some(run) = run {
            for name in &run.jobs {
                if !columns.contains(name) {
                    columns.push(name.clone());
                }
            }
        }
        let succeeded = run.is_some_and(|run| run.state == RunState::Succeeded);
        if args.missing && succeeded {
            continue;
        }
        let jobs = match run {
            Some(run) => stores.jobs(run).await?,
            None => HashMap::new(),
        };
        let cells: serde_json::Map<String, serde_json::Value> = run
            .map(|run| {
                run.jobs
                    .iter()
                    .filter_map(|name| jobs.get(name).map(|job| (name.clone(), json!(job.state.as_str()))))
                    .collect()
            })
            .unwrap_or_default();
        rows.push(json!({
            "start": window.start_rfc3339(),
            "end": window.end_rfc3339(),
            "run_id": run.map(|run| run.id.to_string()),
            "state": run.map(|run| run.state.as_str()).unwrap_or("missing"),
            "jobs": cells,
        }));
    }
    match format {
        Format::Json => print_json(&json!({"workflow": args.workflow, "windows": rows})),
        Format::Human => print_grid(&args.workflow, &rows, &columns, args.missing),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn print_grid(workflow: &str, rows: &[serde_json::Value], columns: &[String], missing: bool) -> Result<(), CliError> {
    if rows.is_empty() {
        let what = if missing { "every window has a successful run" } else { "no windows" };
        return outln!("{workflow}: {what}");
    }
    let mut headers = vec!["WINDOW", "RUN STATE", "RUN"];
    headers.extend(columns.iter().map(String::as_str));
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let start = row["start"].as_str().unwrap_or_default();
            let mut line = vec![
                start.get(..16).unwrap_or(start).replace('T', " "),
                row["state"].as_str().unwrap_or_default().to_owned(),
                row["run_id"].as_str().unwrap_or("-").to_owned(),
            ];
            for column in columns {
                line.push(row["jobs"][column].as_str().unwrap_or("-").to_owned());
            }
            line
        })
        .collect();
    outln!("{}", table(&headers, &lines))
}
