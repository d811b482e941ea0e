//! `sluice backfill FILE --from D --to D`: one run per window, at most N in flight, driven
//! by the leading coordinator (so it goes on after Ctrl-C and across restarts); this command
//! creates it and shows its progress. `list`, `status ID`, `cancel ID`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use sluice_client::Stores;
use sluice_proto::limits::BACKFILL_WINDOWS_MAX;
use sluice_proto::{
    BackfillRecord, BackfillRequest, ControlAction, ControlRequest, HumanDuration, Rerun, RunId, RunState, Window,
};

use crate::commands::audit::parse_day;
use crate::output::{self, CliError, Format, applied, ask, print_json, table};

/// How often progress is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Most windows one backfill may run at once (the coordinator checks it too).
const MAX_PARALLEL_RUNS_LIMIT: u32 = 64;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackfillArgs {
    #[command(subcommand)]
    command: Option<BackfillCommand>,
    /// Workflow YAML file.
    file: Option<PathBuf>,
    /// First day (YYYY-MM-DD), included.
    #[arg(long)]
    from: Option<String>,
    /// Last day (YYYY-MM-DD), included.
    #[arg(long)]
    to: Option<String>,
    /// Length of each window: `1d` (default), `7d`, `6h`, ...
    #[arg(long, default_value = "1d")]
    interval: HumanDuration,
    /// Most runs of this backfill in flight at once; keep it below your workers' slots so
    /// scheduled runs always find room.
    #[arg(long, default_value_t = 2)]
    max_parallel_runs: u32,
    /// Which windows get a run: `missing` (no successful run yet), `failed` (latest run
    /// failed or was cancelled), `all`.
    #[arg(long, value_enum, default_value_t = RerunArg::Missing)]
    rerun: RerunArg,
    /// Create it and return at once (follow with `sluice backfill status ID`).
    #[arg(long)]
    detach: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RerunArg {
    Missing,
    Failed,
    All,
}

impl From<RerunArg> for Rerun {
    fn from(value: RerunArg) -> Self {
        match value {
            RerunArg::Missing => Rerun::Missing,
            RerunArg::Failed => Rerun::Failed,
            RerunArg::All => Rerun::All,
        }
    }
}

#[derive(clap::Subcommand)]
enum BackfillCommand {
    /// List backfills, newest first.
    List,
    /// Show a backfill: its windows, their runs and states.
    Status { id: String },
    /// Stop a backfill: no new windows start, running ones are cancelled.
    Cancel { id: String },
}

pub async fn run(url: &str, args: BackfillArgs, format: Format) -> Result<ExitCode, CliError> {
    match args.command {
        Some(BackfillCommand::List) => {
            let js = connect(url).await?;
            list(&js, format).await
        }
        Some(BackfillCommand::Status { ref id }) => {
            let id = parse_id(id)?;
            let js = connect(url).await?;
            let record = load(&js, &id).await?;
            show(&record, format)?;
            Ok(exit_code(&record))
        }
        Some(BackfillCommand::Cancel { ref id }) => {
            let id = parse_id(id)?;
            let js = connect(url).await?;
            cancel(&js, &id, format).await
        }
        None => create(url, args, format).await,
    }
}

fn parse_id(text: &str) -> Result<RunId, CliError> {
    text.parse().map_err(|error: sluice_proto::ids::RunIdError| CliError::usage(format!("backfill id: {error}")))
}

async fn connect(url: &str) -> Result<jetstream::Context, CliError> {
    Ok(jetstream::new(output::connect(url).await?))
}

async fn load(js: &jetstream::Context, id: &RunId) -> Result<BackfillRecord, CliError> {
    let stores = Stores::open(js).await?;
    let found = match &stores {
        Some(stores) => stores.backfill(id).await?,
        None => None,
    };
    found.ok_or_else(|| CliError::usage(format!("no backfill {id} (sluice backfill list shows them)")))
}

async fn create(url: &str, args: BackfillArgs, format: Format) -> Result<ExitCode, CliError> {
    let file = args.file.as_ref().ok_or_else(|| {
        CliError::usage("name a workflow file: sluice backfill FILE --from 2024-01-01 --to 2024-03-31")
    })?;
    let (spec, yaml) = super::read_workflow(file)?;
    let from_text = args.from.as_deref().ok_or_else(|| CliError::usage("--from is required"))?;
    let to_text = args.to.as_deref().ok_or_else(|| CliError::usage("--to is required"))?;
    let (from, to) = (parse_day("--from", from_text)?, parse_day("--to", to_text)?);
    if args.max_parallel_runs == 0 || args.max_parallel_runs > MAX_PARALLEL_RUNS_LIMIT {
        return Err(CliError::usage(format!(
            "--max-parallel-runs must be 1 to {MAX_PARALLEL_RUNS_LIMIT}, not {}",
            args.max_parallel_runs
        )));
    }
    spec.resolve_params(&Default::default())
        .map_err(|error| CliError::usage(format!("{}: {error}", file.display())))?;
    // Checked here for a quick answer; the coordinator checks again and plans the windows.
    Window::range(from, to, args.interval.as_duration(), spec.zone(), BACKFILL_WINDOWS_MAX)
        .map_err(|error| CliError::usage(error.to_string()))?;
    let js = connect(url).await?;
    let id = RunId::new();
    let request = BackfillRequest {
        id,
        workflow: yaml,
        from: from.to_string(),
        to: to.to_string(),
        interval: args.interval.to_string(),
        max_parallel_runs: args.max_parallel_runs,
        rerun: Rerun::from(args.rerun),
    };
    applied(ask(&js, ControlRequest::new(ControlAction::BackfillCreate(request), None, "")).await?)?;
    let record = load(&js, &id).await?;
    let skipped = sluice_client::json::skipped_windows(&record);
    if format == Format::Human {
        outln!(
            "backfill {id}: {} windows of {} from {from} to {to} ({skipped} skipped), at most {} runs at once",
            record.windows.len(),
            spec.name,
            args.max_parallel_runs
        )?;
    }
    if args.detach {
        if format == Format::Json {
            print_json(&json!({"id": id.to_string(), "windows": record.windows.len(), "skipped": skipped}))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(&js, &id, format).await
}

/// Shows progress until the backfill ends; Ctrl-C leaves it running.
async fn follow(js: &jetstream::Context, id: &RunId, format: Format) -> Result<ExitCode, CliError> {
    let mut ticker = tokio::time::interval(PROGRESS_EVERY);
    let tty = std::io::stdout().is_terminal();
    let mut last_line = String::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::signal::ctrl_c() => {
                if format == Format::Human {
                    outln!("\nthe backfill goes on: sluice backfill status {id}  (stop it: sluice backfill cancel {id})")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
        let record = load(js, id).await?;
        if format == Format::Human {
            let line = progress_line(&record);
            if line != last_line {
                if tty {
                    output::out_partial(format_args!("\r{line}"))?;
                } else {
                    outln!("{line}")?;
                }
                last_line = line;
            }
        }
        if record.finished_at.is_some() {
            if format == Format::Human {
                if tty {
                    outln!()?;
                }
                outln!("backfill {id} {}", record.state.as_str())?;
            } else {
                show(&record, format)?;
            }
            return Ok(exit_code(&record));
        }
    }
}

fn exit_code(record: &BackfillRecord) -> ExitCode {
    match (record.finished_at, record.state) {
        (None, _) | (Some(_), RunState::Succeeded) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}

fn progress_line(record: &BackfillRecord) -> String {
    let counts = sluice_client::json::backfill_counts(record);
    let number = |key: &str| counts[key].as_u64().unwrap_or(0);
    let total = number("total").max(1);
    let done = number("succeeded") + number("failed") + number("cancelled") + number("skipped");
    let width = 30;
    let filled = ((done * width / total) as usize).min(width as usize);
    format!(
        "[{}{}] {done}/{total} windows  succeeded {}  failed {}  running {}  skipped {}",
        "#".repeat(filled),
        ".".repeat(width as usize - filled),
        number("succeeded"),
        number("failed"),
        number("running"),
        number("skipped")
    )
}

fn show(record: &BackfillRecord, format: Format) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(&sluice_client::json::backfill_json(record, true)),
        Format::Human => {
            outln!(
                "backfill  {}\nworkflow  {}\nstate     {}\nrange     {} to {} every {}\n{}\n",
                record.id,
                record.workflow,
                record.state.as_str(),
                record.from,
                record.to,
                record.interval,
                progress_line(record)
            )?;
            let value = sluice_client::json::backfill_json(record, true);
            let rows: Vec<Vec<String>> = value["windows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|window| {
                    vec![
                        window["start"].as_str().unwrap_or_default().to_owned(),
                        window["state"].as_str().unwrap_or("pending").to_owned(),
                        window["run_id"].as_str().unwrap_or("-").to_owned(),
                        window["skip"].as_str().unwrap_or_default().to_owned(),
                    ]
                })
                .collect();
            outln!("{}", table(&["WINDOW", "STATE", "RUN", "SKIPPED BECAUSE"], &rows))
        }
    }
}

async fn list(js: &jetstream::Context, format: Format) -> Result<ExitCode, CliError> {
    let records = match Stores::open(js).await? {
        Some(stores) => stores.backfills().await?,
        None => Vec::new(),
    };
    match format {
        Format::Json => print_json(
            &json!({"backfills": records.iter().map(|r| sluice_client::json::backfill_json(r, false)).collect::<Vec<_>>()}),
        ),
        Format::Human if records.is_empty() => outln!("no backfills"),
        Format::Human => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|record| {
                    vec![
                        record.id.to_string(),
                        record.workflow.clone(),
                        record.state.as_str().to_owned(),
                        format!("{}..{}", record.from, record.to),
                        progress_line(record),
                    ]
                })
                .collect();
            outln!("{}", table(&["ID", "WORKFLOW", "STATE", "RANGE", "PROGRESS"], &rows))
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn cancel(js: &jetstream::Context, id: &RunId, format: Format) -> Result<ExitCode, CliError> {
    load(js, id).await?;
    let outcome = applied(ask(js, ControlRequest::new(ControlAction::BackfillCancel { id: *id }, None, "")).await?)?;
    match format {
        Format::Json => print_json(&json!({"id": id.to_string(), "state": "cancelled"})),
        Format::Human => outln!("{}", outcome.reason),
    }?;
    Ok(ExitCode::SUCCESS)
}
