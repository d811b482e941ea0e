//! `sluice workflow apply|list|show|delete`: the workflows this server knows by name, so
//! a run or a backfill can be started by name (the web UI's "Start a run"). The coordinator
//! stores them (decision 1): each record names its YAML in the spec store by hash, and a
//! workflow with a `schedule:` section has its schedule applied with it.

use std::path::PathBuf;
use std::process::ExitCode;

use async_nats::jetstream;
use serde_json::json;
use sluice_client::Stores;
use sluice_client::json::workflow_json;
use sluice_proto::{ControlAction, ControlRequest, WorkflowRecord};

use crate::output::{self, CliError, Format, applied, ask, print_json, short_time, table};

#[derive(clap::Subcommand)]
pub enum WorkflowCommand {
    /// Store a workflow file under its name (a `schedule:` section applies its schedule too).
    Apply { file: PathBuf },
    /// List the workflows stored here.
    List,
    /// Print a stored workflow's YAML (`-o json`: its record with the YAML).
    Show { name: String },
    /// Forget a workflow, and its schedule if it has one (its runs stay).
    Delete { name: String },
}

pub async fn run(url: &str, command: WorkflowCommand, format: Format) -> Result<ExitCode, CliError> {
    // Checked before connecting: a bad file or name never reaches the server.
    let file = match &command {
        WorkflowCommand::Apply { file } => Some(super::read_workflow(file)?),
        WorkflowCommand::Show { name } | WorkflowCommand::Delete { name } => {
            sluice_proto::spec::check_name("workflow", name).map_err(CliError::usage)?;
            None
        }
        WorkflowCommand::List => None,
    };
    let client = output::connect(url).await?;
    let js = jetstream::new(client);
    match (command, file) {
        (WorkflowCommand::Apply { .. }, Some((spec, yaml))) => {
            let action = ControlAction::WorkflowApply { workflow: yaml };
            let outcome = applied(ask(&js, ControlRequest::new(action, None, "")).await?)?;
            let record = stored(&js, &spec.name).await?.ok_or_else(|| {
                CliError::failed(format!("workflow {} was applied but cannot be read back", spec.name))
            })?;
            match format {
                Format::Json => print_json(&workflow_json(&record))?,
                Format::Human => outln!("{}", outcome.reason)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        (WorkflowCommand::List, _) => list(&js, format).await,
        (WorkflowCommand::Show { name }, _) => show(&js, &name, format).await,
        (WorkflowCommand::Delete { name }, _) => {
            let outcome = applied(
                ask(&js, ControlRequest::new(ControlAction::WorkflowDelete { name: name.clone() }, None, "")).await?,
            )?;
            match format {
                Format::Json => print_json(&json!({"name": name, "deleted": true}))?,
                Format::Human => outln!("{}", outcome.reason)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        (WorkflowCommand::Apply { .. }, None) => Err(CliError::usage("no workflow file was read")),
    }
}

async fn stored(js: &jetstream::Context, name: &str) -> Result<Option<WorkflowRecord>, CliError> {
    match Stores::open(js).await? {
        Some(stores) => Ok(stores.workflow(name).await?),
        None => Ok(None),
    }
}

async fn list(js: &jetstream::Context, format: Format) -> Result<ExitCode, CliError> {
    let records = match Stores::open(js).await? {
        Some(stores) => stores.workflows().await?,
        None => Vec::new(),
    };
    match format {
        Format::Json => print_json(&json!({"workflows": records.iter().map(workflow_json).collect::<Vec<_>>()})),
        Format::Human if records.is_empty() => outln!("no workflows (store one: sluice workflow apply FILE)"),
        Format::Human => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .map(|record| {
                    vec![
                        record.name.clone(),
                        record.jobs.to_string(),
                        record.timezone.clone().unwrap_or_else(|| "UTC".to_owned()),
                        record.schedule.clone().unwrap_or_else(|| "-".to_owned()),
                        short_time(Some(record.updated_at)),
                        record.applied_by.clone(),
                    ]
                })
                .collect();
            outln!("{}", table(&["NAME", "JOBS", "TIMEZONE", "SCHEDULE", "UPDATED", "BY"], &rows))
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

async fn show(js: &jetstream::Context, name: &str, format: Format) -> Result<ExitCode, CliError> {
    let Some(record) = stored(js, name).await? else {
        let known: Vec<String> = match Stores::open(js).await? {
            Some(stores) => stores.workflows().await?.into_iter().map(|record| record.name).collect(),
            None => Vec::new(),
        };
        let known = if known.is_empty() { "there are none".to_owned() } else { known.join(", ") };
        return Err(CliError::usage(format!("no workflow `{name}`; workflows: {known}")));
    };
    let yaml = sluice_client::specs::read(js, &record.spec_hash).await?.ok_or_else(|| {
        CliError::failed(format!("workflow {name}: its spec {} is missing from the spec store", record.spec_hash))
    })?;
    match format {
        Format::Json => {
            let mut value = workflow_json(&record);
            value["yaml"] = json!(yaml);
            print_json(&value)?;
        }
        // As stored, so `workflow show NAME > FILE` gives the file back.
        Format::Human => outln!("{}", yaml.trim_end_matches('\n'))?,
    }
    Ok(ExitCode::SUCCESS)
}
