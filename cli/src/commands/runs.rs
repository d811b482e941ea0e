//! `sluice runs`: runs newest first, filtered by workflow, state or origin, a page at a
//! time through the run index (`sluice_client::runs`), after the submissions no coordinator
//! has taken yet (shown `pending`); `--rejected` lists submissions that were refused, with
//! the reason.

use std::process::ExitCode;

use async_nats::jetstream;
use serde_json::json;
use sluice_client::runs::{PAGE_MAX, PendingChoice, RunFilter};
use sluice_proto::RunState;

use crate::output::{self, CliError, Format, print_json, table, time};

#[derive(clap::Args)]
pub struct RunsArgs {
    /// Only runs of this workflow.
    #[arg(long)]
    workflow: Option<String>,
    /// Only runs in this state: pending (submitted, not yet taken by a coordinator),
    /// running, succeeded, failed, cancelled.
    #[arg(long)]
    state: Option<String>,
    /// Only runs of this origin: `manual`, `schedule:NAME` or `backfill:ID`.
    #[arg(long)]
    origin: Option<String>,
    /// List rejected submissions instead.
    #[arg(long)]
    rejected: bool,
    /// At most this many (newest first); the JSON output's `next` continues the list.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Continue after an earlier page (its `next`).
    #[arg(long)]
    cursor: Option<String>,
    /// Only runs whose window starts on this day or later (with --window-to and --workflow).
    #[arg(long, value_name = "DAY")]
    window_from: Option<String>,
    /// Only runs whose window starts on this day or earlier (with --window-from).
    #[arg(long, value_name = "DAY")]
    window_to: Option<String>,
    /// `newest` (created, newest first) or `window` (newest window first; with a window range).
    #[arg(long)]
    sort: Option<String>,
}

pub async fn run(url: &str, args: RunsArgs, format: Format) -> Result<ExitCode, CliError> {
    // `pending` is a display state, not a run state: no run record says it.
    let choice = match args.state.as_deref() {
        Some(PENDING) => PendingChoice::Only,
        _ => PendingChoice::Included,
    };
    let state = args
        .state
        .as_deref()
        .filter(|text| *text != PENDING)
        .map(|text| {
            RunState::parse(text).ok_or_else(|| {
                CliError::usage(format!("unknown state `{text}`: use pending, running, succeeded, failed or cancelled"))
            })
        })
        .transpose()?;
    if let Some(origin) = &args.origin {
        sluice_proto::messages::check_origin(origin).map_err(|error| CliError::usage(format!("--origin: {error}")))?;
    }
    if args.limit == 0 || args.limit > PAGE_MAX {
        return Err(CliError::usage(format!("--limit must be 1 to {PAGE_MAX}, not {}", args.limit)));
    }
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    if args.rejected {
        return rejected(&js, args.limit, format).await;
    }
    if choice == PendingChoice::Only && args.cursor.is_some() {
        return Err(CliError::usage("--state pending lists one page (up to --limit 1000): it takes no --cursor"));
    }
    let filter = RunFilter { workflow: args.workflow.clone(), state, origin: args.origin.clone() };
    let names = sluice_client::runs::RangeNames {
        from: "--window-from",
        to: "--window-to",
        sort: "--sort",
        workflow: "--workflow",
    };
    let (range, order) = sluice_client::runs::range_and_order(
        args.window_from.as_deref(),
        args.window_to.as_deref(),
        args.sort.as_deref(),
        args.workflow.is_some(),
        &names,
    )?;
    let page = match range {
        Some(range) if choice == PendingChoice::Included => {
            let page =
                sluice_client::runs::in_window_range(&js, &filter, range, order, args.limit, args.cursor.as_deref())
                    .await?;
            sluice_client::runs::Listing { pending: Vec::new(), runs: page.runs, next: page.next }
        }
        Some(_) => return Err(CliError::usage("a window range lists stored runs: it takes no --state pending")),
        None => {
            sluice_client::runs::list_with_pending(&js, &filter, choice, args.limit, args.cursor.as_deref()).await?
        }
    };
    let (pending, runs) = (page.pending, page.runs);
    match format {
        Format::Json => {
            let mut rows: Vec<serde_json::Value> = pending.iter().map(pending_row).collect();
            rows.extend(runs.iter().map(sluice_client::json::run_row));
            print_json(&json!({"runs": rows, "next": page.next}))?
        }
        Format::Human if runs.is_empty() && pending.is_empty() => outln!("no runs")?,
        Format::Human => {
            let mut rows: Vec<Vec<String>> = pending
                .iter()
                .map(|run| {
                    vec![
                        run.id.to_string(),
                        run.workflow.clone().unwrap_or_else(|| "?".into()),
                        PENDING.to_owned(),
                        run.window.as_ref().map(|window| window.to_string()).unwrap_or_else(|| "-".into()),
                        time(Some(run.submitted_at)).as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            rows.extend(runs.iter().map(|run| {
                vec![
                    run.id.to_string(),
                    run.workflow.clone(),
                    run.state.as_str().to_owned(),
                    run.window.to_string(),
                    time(Some(run.created_at)).as_str().unwrap_or_default().to_owned(),
                ]
            }));
            outln!("{}", table(&["RUN", "WORKFLOW", "STATE", "WINDOW", "CREATED"], &rows))?;
            if let Some(next) = &page.next {
                outln!("older runs: sluice runs --cursor {next} (with the same filters)")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub use sluice_client::json::{PENDING, pending_row};

async fn rejected(js: &jetstream::Context, limit: usize, format: Format) -> Result<ExitCode, CliError> {
    let mut rejections = sluice_client::stores::rejections(js, limit).await?;
    rejections.reverse();
    match format {
        Format::Json => print_json(&json!({"rejected": rejections.iter().map(|rejection| json!({
            "received_at": time(Some(rejection.received_at)),
            "run_id": rejection.run_id.map(|id| id.to_string()),
            "workflow": rejection.workflow,
            "reason": rejection.reason,
            "payload_bytes": rejection.payload_bytes,
        })).collect::<Vec<_>>()}))?,
        Format::Human if rejections.is_empty() => outln!("no rejected submissions")?,
        Format::Human => {
            for rejection in &rejections {
                outln!(
                    "{}  run {}  workflow {}  ({} bytes)\n  {}\n",
                    time(Some(rejection.received_at)).as_str().unwrap_or_default(),
                    rejection.run_id.map(|id| id.to_string()).unwrap_or_else(|| "unknown".into()),
                    rejection.workflow.as_deref().unwrap_or("unknown"),
                    rejection.payload_bytes,
                    rejection.reason.replace('\n', "\n  ")
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
