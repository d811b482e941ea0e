//! `sluice audit WORKFLOW --from D --to D`: which jobs ran for which windows — the grid of
//! windows × jobs with each cell's final state and the latest run of each window.

use std::process::ExitCode;

use async_nats::jetstream;
use chrono::NaiveDate;
use sluice_client::Stores;
use sluice_client::audit::AuditQuery;
use sluice_proto::HumanDuration;
use sluice_proto::window::parse_zone;

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
    /// Length of each window: `1d`, `7d`, `1h`, ... (default: the windows of the workflow's
    /// schedule, or days when it has none).
    #[arg(long)]
    interval: Option<HumanDuration>,
    /// Time zone of the windows (default: the workflow's, from its newest run).
    #[arg(long)]
    timezone: Option<String>,
    /// Only the windows without a successful run.
    #[arg(long)]
    missing: bool,
}

/// Reads `--from`/`--to`, naming the flag when it is not a date.
pub fn parse_day(flag: &str, text: &str) -> Result<NaiveDate, CliError> {
    sluice_proto::window::day_of(flag, text).map_err(CliError::usage)
}

pub async fn run(url: &str, args: AuditArgs, format: Format) -> Result<ExitCode, CliError> {
    let from = parse_day("--from", &args.from)?;
    let to = parse_day("--to", &args.to)?;
    let zone = args.timezone.as_deref().map(parse_zone).transpose().map_err(|e| CliError::usage(e.to_string()))?;
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    if Stores::open(&js).await?.is_none() {
        return Err(CliError::usage(format!("no runs of workflow `{}` on this server", args.workflow)));
    }
    let query = AuditQuery {
        workflow: args.workflow.clone(),
        from,
        to,
        interval: args.interval.map(|interval| interval.as_duration()),
        zone,
        missing_only: args.missing,
    };
    let grid = sluice_client::audit::grid(&js, &query).await.map_err(|error| match error {
        sluice_client::ClientError::Invalid(reason) => CliError::usage(reason),
        other => other.into(),
    })?;
    let value = sluice_client::audit::grid_json(&grid);
    match format {
        Format::Json => print_json(&value),
        Format::Human => {
            let rows = value["windows"].as_array().cloned().unwrap_or_default();
            print_grid(&args.workflow, &rows, &grid.jobs, args.missing)
        }
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
