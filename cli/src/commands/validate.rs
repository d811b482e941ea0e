//! `sluice validate FILE`: parse and check a workflow without running it.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use sluice_proto::spec::STOCK_KINDS;

use crate::output::{CliError, Format, errln, print_json};

pub fn run(file: &Path, format: Format) -> Result<ExitCode, CliError> {
    let (spec, _) = super::read_workflow(file)?;
    let order = spec.topological_order();
    match format {
        Format::Json => print_json(
            &json!({"file": file.display().to_string(), "workflow": spec.name, "valid": true, "jobs": order}),
        ),
        Format::Human => outln!(
            "{}: workflow `{}` is valid: {} jobs, in order {}",
            file.display(),
            spec.name,
            order.len(),
            order.join(", ")
        ),
    }?;
    for (name, job) in &spec.jobs {
        if !STOCK_KINDS.contains(&job.run.as_str()) {
            errln(format_args!(
                "warning: job `{name}` has kind `{}`, which is not a stock kind ({}): only a Rust worker that registers it runs it",
                job.run,
                STOCK_KINDS.join(", ")
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}
