//! `sluice validate FILE`: parse and check a workflow without running it.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use crate::output::{CliError, Format, print_json};

pub fn run(file: &Path, format: Format) -> Result<ExitCode, CliError> {
    let (spec, _) = super::read_workflow(file)?;
    let order = spec.topological_order();
    match format {
        Format::Json => print_json(
            &json!({"file": file.display().to_string(), "workflow": spec.name, "valid": true, "jobs": order}),
        ),
        Format::Human => println!(
            "{}: workflow `{}` is valid: {} jobs, in order {}",
            file.display(),
            spec.name,
            order.len(),
            order.join(", ")
        ),
    }
    Ok(ExitCode::SUCCESS)
}
