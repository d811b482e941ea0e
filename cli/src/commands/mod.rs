//! One module per `sluice` subcommand.

pub mod audit;
pub mod backfill;
pub mod control;
pub mod deploy;
pub mod dev;
pub mod dlq;
pub mod logs;
pub mod pod;
pub mod pool;
pub mod runs;
pub mod schedule;
pub mod serve;
pub mod server;
pub mod status;
pub mod submit;
pub mod validate;
pub mod workflow;

use std::path::Path;

use sluice_proto::WorkflowSpec;

use crate::output::CliError;

/// Reads and validates a workflow file; errors name the file.
pub fn read_workflow(file: &Path) -> Result<(WorkflowSpec, String), CliError> {
    let yaml = std::fs::read_to_string(file)
        .map_err(|error| CliError::usage(format!("cannot read {}: {error}", file.display())))?;
    let spec = WorkflowSpec::parse(&yaml).map_err(|error| CliError::usage(format!("{}: {error}", file.display())))?;
    Ok((spec, yaml))
}
