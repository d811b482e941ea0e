//! `sluice schedule apply|list|pause|resume|delete|trigger`: workflows that run by
//! themselves. The leading coordinator fires them (see `sluice_coordinator::timekeeper`).

use std::path::PathBuf;
use std::process::ExitCode;

use async_nats::jetstream;
use chrono::Utc;
use serde_json::json;
use sluice_client::Stores;
use sluice_proto::schedule::Schedule;
use sluice_proto::{ControlAction, ControlRequest, RunId, ScheduleRecord};

use crate::follow::follow_one;
use crate::output::{self, CliError, Format, applied, ask, print_json, table};

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
                "{}: workflow `{}` has no `schedule:` section, e.g. schedule: {{ cron: \"30 2 * * *\", window: yesterday }} (on the workflow's timezone)",
                file.display(),
                spec.name
            )));
        }
    }
    if let ScheduleCommand::Pause { name }
    | ScheduleCommand::Resume { name }
    | ScheduleCommand::Delete { name }
    | ScheduleCommand::Trigger { name, .. } = &command
    {
        // A schedule is named after its workflow: a name that breaks the naming rule names
        // no schedule, whatever the server holds.
        sluice_proto::spec::check_name("schedule", name).map_err(CliError::usage)?;
    }
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    match command {
        ScheduleCommand::Apply { file } => apply(&js, &file, format).await,
        ScheduleCommand::List => list(&js, format).await,
        ScheduleCommand::Pause { name } => change(&js, ControlAction::SchedulePause { name }, format).await,
        ScheduleCommand::Resume { name } => change(&js, ControlAction::ScheduleResume { name }, format).await,
        ScheduleCommand::Delete { name } => change(&js, ControlAction::ScheduleDelete { name }, format).await,
        ScheduleCommand::Trigger { name, wait } => trigger(&js, name, wait, format).await,
    }
}

/// Pause, resume or delete: the coordinator's answer says what happened.
async fn change(js: &jetstream::Context, action: ControlAction, format: Format) -> Result<ExitCode, CliError> {
    let name = match &action {
        ControlAction::SchedulePause { name }
        | ControlAction::ScheduleResume { name }
        | ControlAction::ScheduleDelete { name } => name.clone(),
        _ => return Err(CliError::usage("not a schedule change")),
    };
    let value = match &action {
        ControlAction::SchedulePause { .. } => json!({"name": name, "paused": true}),
        ControlAction::ScheduleResume { .. } => json!({"name": name, "paused": false}),
        _ => json!({"name": name, "deleted": true}),
    };
    let outcome = applied(ask(js, ControlRequest::new(action, None, "")).await?)?;
    report(format, &value, &outcome.reason)?;
    Ok(ExitCode::SUCCESS)
}

fn report(format: Format, value: &serde_json::Value, text: &str) -> Result<(), CliError> {
    match format {
        Format::Json => print_json(value),
        Format::Human => outln!("{text}"),
    }
}

async fn all(js: &jetstream::Context) -> Result<Vec<ScheduleRecord>, CliError> {
    match Stores::open(js).await? {
        Some(stores) => Ok(stores.schedules().await?),
        None => Ok(Vec::new()),
    }
}

fn evaluate(record: &ScheduleRecord) -> Result<Schedule, CliError> {
    sluice_client::json::schedule_of(record).map_err(CliError::failed)
}

async fn apply(js: &jetstream::Context, file: &std::path::Path, format: Format) -> Result<ExitCode, CliError> {
    let (spec, yaml) = super::read_workflow(file)?;
    applied(ask(js, ControlRequest::new(ControlAction::ScheduleApply { workflow: yaml }, None, "")).await?)?;
    let record = Stores::open_required(js)
        .await?
        .schedule(&spec.name)
        .await?
        .ok_or_else(|| CliError::failed(format!("schedule {} was applied but cannot be read back", spec.name)))?;
    let schedule = evaluate(&record)?;
    let now = Utc::now();
    let next = sluice_client::json::next_ticks(&record, &schedule, now, 3);
    match format {
        Format::Json => print_json(&sluice_client::json::schedule_json(&record, &schedule, now))?,
        Format::Human => {
            outln!(
                "schedule {}: `{}` in {}, window {}, catchup {}{}",
                record.name,
                record.schedule.cron,
                schedule.zone,
                record.schedule.window,
                schedule.catchup,
                if record.paused { " (paused)" } else { "" }
            )?;
            for tick in next {
                outln!(
                    "  next: {} (window {})",
                    tick.with_timezone(&schedule.zone).to_rfc3339(),
                    schedule.window.at(tick, schedule.zone)
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(js: &jetstream::Context, format: Format) -> Result<ExitCode, CliError> {
    let now = Utc::now();
    let records = all(js).await?;
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for record in &records {
        let Ok(schedule) = evaluate(record) else { continue };
        let value = sluice_client::json::schedule_json(record, &schedule, now);
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
        Format::Human if rows.is_empty() => outln!("no schedules (add one: sluice schedule apply FILE)"),
        Format::Human => {
            outln!("{}", table(&["NAME", "CRON", "TIMEZONE", "WINDOW", "CATCHUP", "STATE", "NEXT", "LAST RUN"], &rows))
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn trigger(js: &jetstream::Context, name: String, wait: bool, format: Format) -> Result<ExitCode, CliError> {
    // The run id is chosen here, so the run can be followed as soon as it is submitted.
    let run_id = RunId::new();
    let action = ControlAction::ScheduleTrigger { name: name.clone() };
    let outcome = applied(ask(js, ControlRequest::new(action, Some(run_id), "")).await?)?;
    if !wait || format == Format::Human {
        report(format, &json!({"id": run_id.to_string(), "schedule": name}), &outcome.reason)?;
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_one(js, run_id, format).await
}
