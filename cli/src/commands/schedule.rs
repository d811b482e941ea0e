//! `sluice schedule apply|list|pause|resume|delete|trigger`: workflows that run by
//! themselves. The leading coordinator fires them (see `sluice_coordinator::timekeeper`).

use std::path::PathBuf;
use std::process::ExitCode;

use async_nats::jetstream;
use chrono::Utc;
use serde_json::json;
use sluice_coordinator::store;
use sluice_coordinator::topology::{self, Topology};
use sluice_proto::schedule::Schedule;
use sluice_proto::{RunId, SCHEMA_VERSION, ScheduleRecord, Submission, WorkflowSpec, encode};

use crate::follow::follow_one;
use crate::output::{self, CliError, Format, print_json, table, time};

#[derive(clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create or update the schedule of a workflow file (its `schedule:` section).
    Apply { file: PathBuf },
    /// List schedules with their next and last runs.
    List,
    /// Stop firing a schedule (ticks while paused never run).
    Pause { name: String },
    /// Fire a paused schedule again, from now on.
    Resume { name: String },
    /// Remove a schedule (its runs stay).
    Delete { name: String },
    /// Run a scheduled workflow once now, for the window its schedule gives a tick now.
    Trigger {
        name: String,
        /// Follow the run to its end; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
    },
}

pub async fn run(url: &str, command: ScheduleCommand, format: Format) -> Result<ExitCode, CliError> {
    if let ScheduleCommand::Apply { file } = &command {
        // Check the file before connecting: a bad schedule never reaches the server.
        let (spec, _) = super::read_workflow(file)?;
        if spec.schedule.is_none() {
            return Err(CliError::usage(format!(
                "{}: workflow `{}` has no `schedule:` section, e.g. schedule: {{ cron: \"30 2 * * *\", timezone: America/Los_Angeles, window: yesterday }}",
                file.display(),
                spec.name
            )));
        }
    }
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    let topology = topology::ensure(&js).await?;
    match command {
        ScheduleCommand::Apply { file } => apply(&topology, &file, format).await,
        ScheduleCommand::List => list(&topology, format).await,
        ScheduleCommand::Pause { name } => set_paused(&topology, &name, true, format).await,
        ScheduleCommand::Resume { name } => set_paused(&topology, &name, false, format).await,
        ScheduleCommand::Delete { name } => {
            load(&topology, &name).await?;
            topology.schedules.delete(&name).await.map_err(|error| CliError::nats(format!("deleting: {error}")))?;
            report(format, &json!({"name": name, "deleted": true}), &format!("schedule {name} deleted"));
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Trigger { name, wait } => trigger(&js, &topology, &name, wait, format).await,
    }
}

fn report(format: Format, value: &serde_json::Value, text: &str) {
    match format {
        Format::Json => print_json(value),
        Format::Human => println!("{text}"),
    }
}

/// A schedule's record and revision; exit 2 naming the schedules there are when missing.
async fn load(topology: &Topology, name: &str) -> Result<(ScheduleRecord, u64), CliError> {
    if let Some(found) = store::entry(&topology.schedules, name).await? {
        return Ok(found);
    }
    let names: Vec<String> = all(topology).await?.into_iter().map(|record| record.name).collect();
    let known = if names.is_empty() { "there are none".to_owned() } else { names.join(", ") };
    Err(CliError::usage(format!("no schedule `{name}`; schedules: {known}")))
}

async fn all(topology: &Topology) -> Result<Vec<ScheduleRecord>, CliError> {
    let mut records: Vec<ScheduleRecord> = store::load_all(&topology.schedules).await?;
    records.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(records)
}

fn evaluate(record: &ScheduleRecord) -> Result<Schedule, CliError> {
    let spec = WorkflowSpec::parse(&record.workflow).map_err(|error| CliError::failed(error.to_string()))?;
    Schedule::from_spec(&record.schedule, spec.timezone.as_deref()).map_err(CliError::failed)
}

async fn apply(topology: &Topology, file: &std::path::Path, format: Format) -> Result<ExitCode, CliError> {
    let (spec, yaml) = super::read_workflow(file)?;
    let schedule_spec = spec.schedule.clone().ok_or_else(|| CliError::usage("no schedule"))?;
    let now = Utc::now();
    let existing = store::entry::<ScheduleRecord>(&topology.schedules, &spec.name).await?;
    // An update keeps what was handled and whether it is paused: no tick runs twice, and
    // none before the schedule existed runs at all.
    let record = match &existing {
        Some((old, _)) => ScheduleRecord { workflow: yaml, schedule: schedule_spec, updated_at: now, ..old.clone() },
        None => ScheduleRecord {
            schema_version: SCHEMA_VERSION,
            name: spec.name.clone(),
            workflow: yaml,
            schedule: schedule_spec,
            paused: false,
            handled_until: now,
            created_at: now,
            updated_at: now,
            last_tick: None,
            last_run: None,
            skipped_ticks: 0,
        },
    };
    let payload = encode(&record).map_err(|error| CliError::failed(error.to_string()))?;
    let written = match existing {
        Some((_, revision)) => {
            topology.schedules.update(&spec.name, payload.into(), revision).await.map(|_| ()).map_err(|e| e.to_string())
        }
        None => topology.schedules.create(&spec.name, payload.into()).await.map(|_| ()).map_err(|e| e.to_string()),
    };
    written.map_err(|error| CliError::failed(format!("the schedule changed meanwhile; apply again ({error})")))?;
    let schedule = evaluate(&record)?;
    let mut next = Vec::new();
    let mut cursor = now.max(record.handled_until);
    while next.len() < 3 {
        let Some(tick) = schedule.next_after(cursor) else { break };
        next.push(tick);
        cursor = tick;
    }
    match format {
        Format::Json => print_json(&record_json(&record, &schedule, now)),
        Format::Human => {
            println!(
                "schedule {}: `{}` in {}, window {}, catchup {}{}",
                record.name,
                record.schedule.cron,
                schedule.zone,
                record.schedule.window,
                schedule.catchup,
                if record.paused { " (paused)" } else { "" }
            );
            for tick in next {
                println!(
                    "  next: {} (window {})",
                    tick.with_timezone(&schedule.zone).to_rfc3339(),
                    schedule.window.at(tick, schedule.zone)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn record_json(record: &ScheduleRecord, schedule: &Schedule, now: chrono::DateTime<Utc>) -> serde_json::Value {
    let next = if record.paused { None } else { schedule.next_after(now.max(record.handled_until)) };
    json!({
        "name": record.name,
        "cron": record.schedule.cron,
        "timezone": schedule.zone.name(),
        "window": record.schedule.window,
        "catchup": schedule.catchup.as_str(),
        "paused": record.paused,
        "next_tick": time(next),
        "last_tick": time(record.last_tick),
        "last_run": record.last_run.map(|id| id.to_string()),
        "skipped_ticks": record.skipped_ticks,
    })
}

async fn list(topology: &Topology, format: Format) -> Result<ExitCode, CliError> {
    let now = Utc::now();
    let records = all(topology).await?;
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for record in &records {
        let Ok(schedule) = evaluate(record) else { continue };
        let value = record_json(record, &schedule, now);
        rows.push(vec![
            record.name.clone(),
            record.schedule.cron.clone(),
            schedule.zone.name().to_owned(),
            record.schedule.window.clone(),
            schedule.catchup.as_str().to_owned(),
            if record.paused { "paused".to_owned() } else { "active".to_owned() },
            value["next_tick"].as_str().unwrap_or("-").to_owned(),
            value["last_run"].as_str().unwrap_or("-").to_owned(),
        ]);
        values.push(value);
    }
    match format {
        Format::Json => print_json(&json!({"schedules": values})),
        Format::Human if rows.is_empty() => println!("no schedules (add one: sluice schedule apply FILE)"),
        Format::Human => {
            println!(
                "{}",
                table(&["NAME", "CRON", "TIMEZONE", "WINDOW", "CATCHUP", "STATE", "NEXT", "LAST RUN"], &rows)
            )
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_paused(topology: &Topology, name: &str, paused: bool, format: Format) -> Result<ExitCode, CliError> {
    let (mut record, revision) = load(topology, name).await?;
    let now = Utc::now();
    if record.paused && !paused {
        // Ticks while paused are not caught up: resuming means "from now on".
        record.handled_until = now;
    }
    record.paused = paused;
    record.updated_at = now;
    let payload = encode(&record).map_err(|error| CliError::failed(error.to_string()))?;
    topology
        .schedules
        .update(name, payload.into(), revision)
        .await
        .map_err(|error| CliError::failed(format!("the schedule changed meanwhile; try again ({error})")))?;
    let word = if paused { "paused" } else { "resumed" };
    report(format, &json!({"name": name, "paused": paused}), &format!("schedule {name} {word}"));
    Ok(ExitCode::SUCCESS)
}

async fn trigger(
    js: &jetstream::Context,
    topology: &Topology,
    name: &str,
    wait: bool,
    format: Format,
) -> Result<ExitCode, CliError> {
    let (record, _) = load(topology, name).await?;
    let schedule = evaluate(&record)?;
    let now = Utc::now();
    let run_id = RunId::new();
    let window = schedule.window.at(now, schedule.zone);
    let submission = Submission {
        schema_version: SCHEMA_VERSION,
        run_id,
        workflow: record.workflow.clone(),
        window: Some(window),
        params: Default::default(),
        idempotency_key: None,
        submitted_at: Some(now),
    };
    sluice_coordinator::requests::submit(js, &submission, &run_id.to_string()).await?;
    if !wait || format == Format::Human {
        report(
            format,
            &json!({"id": run_id.to_string(), "schedule": name, "window": {"start": window.start_rfc3339(), "end": window.end_rfc3339()}}),
            &format!("triggered run {run_id} of schedule {name} (window {window})"),
        );
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_one(js, run_id, format).await
}
