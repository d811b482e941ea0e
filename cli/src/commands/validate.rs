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
            order_text(&order)
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

/// Job names listed on `validate`'s line, at most (`-o json` lists them all).
const NAMES_SHOWN_MAX: usize = 20;

/// `a, b, c`, or the first [`NAMES_SHOWN_MAX`] and how many more: a 20,000-job workflow
/// fits on a screen.
fn order_text(order: &[String]) -> String {
    let shown = order.iter().take(NAMES_SHOWN_MAX).map(String::as_str).collect::<Vec<_>>().join(", ");
    match order.len().saturating_sub(NAMES_SHOWN_MAX) {
        0 => shown,
        more => format!("{shown}, … and {more} more (`-o json` lists them all)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_order_shows_its_first_names_and_how_many_more() {
        let names = |count: usize| (0..count).map(|index| format!("j{index}")).collect::<Vec<_>>();
        assert_eq!(order_text(&names(3)), "j0, j1, j2");
        assert_eq!(order_text(&names(NAMES_SHOWN_MAX)).matches(", ").count(), NAMES_SHOWN_MAX - 1);
        let long = order_text(&names(20_000));
        assert!(
            long.starts_with("j0, j1,") && long.ends_with("j19, … and 19980 more (`-o json` lists them all)"),
            "{long}"
        );
    }
}
