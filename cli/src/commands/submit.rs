//! `sluice submit FILE`: validate, then publish a submission; prints the run id at once
//! (it is chosen here), and with `--wait` follows the run to its end.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use async_nats::jetstream;
use chrono::Utc;
use sluice_client::submit::{NewRun, Published};
use sluice_proto::limits::IDEMPOTENCY_KEY_MAX_BYTES;
use sluice_proto::{Window, WorkflowSpec};

use crate::follow::follow_one;
use crate::output::{self, CliError, Format, print_json};

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// Workflow YAML file.
    file: PathBuf,
    /// Window to process: a day (2024-03-01), `yesterday`, `today`, `last 7d`, DAY..DAY (both
    /// included), or START..END (RFC 3339).
    /// Default: the previous full day in the workflow's time zone.
    #[arg(long)]
    window: Option<String>,
    /// A value for `{{params.NAME}}`, as NAME=VALUE; repeatable.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// A second submit with the same key creates no second run; it prints the first one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the run to its end; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
}

pub async fn run(url: &str, args: SubmitArgs, format: Format) -> Result<ExitCode, CliError> {
    let (spec, yaml) = super::read_workflow(&args.file)?;
    let params = parse_params(&args.params)?;
    spec.resolve_params(&params).map_err(|error| CliError::usage(format!("{}: {error}", args.file.display())))?;
    let window = resolve_window(&spec, args.window.as_deref())?;
    let client = output::connect(url).await?;
    let js = jetstream::new(client);

    if let Some(key) = &args.idempotency_key
        && (key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX_BYTES)
    {
        return Err(CliError::usage(format!(
            "--idempotency-key must be 1 to {IDEMPOTENCY_KEY_MAX_BYTES} bytes, not {}",
            key.len()
        )));
    }
    warn_about_unannounced_kinds(&js, &spec).await;
    let Published { run_id, duplicate } = publish(&js, yaml, window, params, args.idempotency_key.clone()).await?;
    if format == Format::Human {
        if duplicate {
            outln!("already submitted with this idempotency key: run {run_id}")?;
        } else {
            outln!("submitted run {run_id} (workflow {}, window {window})", spec.name)?;
        }
    } else if !args.wait {
        print_json(&sluice_client::json::submitted_json(&Published { run_id, duplicate }, &spec.name, &window))?;
    }
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_one(&js, run_id, format).await
}

/// Warns (stderr, never fatal) about jobs whose kind is not among their pool's
/// last-announced kinds: they would wait for a worker that can run them, or be
/// dead-lettered as an unknown kind.
async fn warn_about_unannounced_kinds(js: &jetstream::Context, spec: &WorkflowSpec) {
    let Ok(Some(stores)) = sluice_client::Stores::open(js).await else { return };
    let Ok(pools) = stores.pools().await else { return };
    for warning in unannounced_kinds(spec, &pools) {
        output::errln(format_args!("warning: {warning}"));
    }
}

/// The jobs whose kind their pool's workers did not announce (pools no worker announced
/// yet are not judged).
pub fn unannounced_kinds(spec: &WorkflowSpec, pools: &[sluice_proto::PoolRecord]) -> Vec<String> {
    let mut warnings = Vec::new();
    for (name, job) in &spec.jobs {
        let pool = spec.pool_of(job);
        let Some(record) = pools.iter().find(|record| record.name == pool) else { continue };
        if !record.kinds.is_empty() && !record.kinds.contains(&job.run) {
            warnings.push(format!(
                "job `{name}` has kind `{}`, which the workers of pool `{pool}` do not run (they run {})",
                job.run,
                record.kinds.join(", ")
            ));
        }
    }
    warnings
}

/// Publishes a submission and waits for JetStream to store it (`TRACEPARENT` continues the
/// caller's trace).
pub async fn publish(
    js: &jetstream::Context,
    yaml: String,
    window: Window,
    params: BTreeMap<String, String>,
    idempotency_key: Option<String>,
) -> Result<Published, CliError> {
    let traceparent = traceparent_from_env()?;
    let new = NewRun { yaml, window, params, idempotency_key };
    Ok(sluice_client::submit::publish(js, new, traceparent.as_ref()).await?)
}

/// `NAME=VALUE` pairs; the error names the bad one.
pub fn parse_params(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(name, value)| (name.trim().to_owned(), value.to_owned()))
                .filter(|(name, _)| !name.is_empty())
                .ok_or_else(|| CliError::usage(format!("--param `{pair}`: write NAME=VALUE")))
        })
        .collect()
}

/// The window a submission processes (the previous day in the workflow's zone by default).
pub fn resolve_window(spec: &WorkflowSpec, text: Option<&str>) -> Result<Window, CliError> {
    let now = Utc::now();
    match text {
        Some(text) => {
            Window::parse(text, spec.zone(), now).map_err(|error| CliError::usage(format!("--window: {error}")))
        }
        None => Ok(Window::previous_day(spec.zone(), now)),
    }
}

/// `TRACEPARENT` (the W3C variable a traced caller, such as a CI job or a Python script with
/// OpenTelemetry, sets): the run's span becomes a child of that span. A value that is not a
/// W3C traceparent is refused rather than silently starting another trace.
fn traceparent_from_env() -> Result<Option<sluice_proto::TraceParent>, CliError> {
    let Some(text) = std::env::var("TRACEPARENT").ok().filter(|text| !text.trim().is_empty()) else {
        return Ok(None);
    };
    sluice_proto::TraceParent::parse(&text).map(Some).ok_or_else(|| {
        CliError::usage(format!(
            "TRACEPARENT must be a W3C traceparent such as 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01, not `{text}`"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_the_pool_does_not_run_is_named_and_silent_pools_are_not_judged() {
        let spec = WorkflowSpec::parse(
            "name: w\njobs:\n  a: { run: noop }\n  b: { run: calibrate }\n  c: { run: train, pool: gpu }\n",
        )
        .unwrap();
        let pool = |name: &str, kinds: &[&str]| sluice_proto::PoolRecord {
            schema_version: sluice_proto::SCHEMA_VERSION,
            name: name.into(),
            ack_wait_ms: 30_000,
            max_deliver: 120,
            max_timeout_ms: None,
            kinds: kinds.iter().map(|kind| kind.to_string()).collect(),
            declared_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let warnings = unannounced_kinds(&spec, &[pool("default", &["exec", "noop"]), pool("gpu", &[])]);
        assert_eq!(
            warnings,
            ["job `b` has kind `calibrate`, which the workers of pool `default` do not run (they run exec, noop)"]
        );
    }
}
