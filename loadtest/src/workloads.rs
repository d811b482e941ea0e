//! The Sluice workloads, each on a fresh stack, timed by the run records' own timestamps.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use sluice_proto::{JobRecord, RunId, RunRecord, Submission, Window, WorkflowSpec};

/// How long one run may take before the workload counts as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// A workflow whose jobs are `noop` with the given needs.
pub fn dag_yaml(name: &str, jobs: &[(String, Vec<String>)]) -> String {
    let mut yaml = format!("name: {name}\njobs:\n");
    for (job, needs) in jobs {
        if needs.is_empty() {
            yaml.push_str(&format!("  {job}: {{ run: noop }}\n"));
        } else {
            yaml.push_str(&format!("  {job}: {{ run: noop, needs: [{}] }}\n", needs.join(", ")));
        }
    }
    yaml
}

/// W1: `count` independent jobs.
pub fn independent(count: usize) -> String {
    dag_yaml("w1", &(0..count).map(|index| (format!("j{index}"), Vec::new())).collect::<Vec<_>>())
}

/// W2/W4: a root that spawns `children` no-op children at run time, then a join.
pub fn fan_out(name: &str, children: usize, join: bool) -> String {
    let script = format!(
        "awk 'BEGIN {{ for (i = 0; i < {children}; i++) printf \"{{\\\"name\\\":\\\"c%d\\\",\\\"run\\\":\\\"noop\\\"}}\\n\", i }}' > \"$SLUICE_SPAWN_FILE\""
    );
    let mut yaml = format!(
        "name: {name}\njobs:\n  root:\n    run: exec\n    command: [sh, -c, {}]\n",
        serde_json::to_string(&script).unwrap_or_default()
    );
    if join {
        yaml.push_str("  join: { run: noop, needs: [root] }\n");
    }
    yaml
}

/// W3: a chain of `steps` jobs.
pub fn chain(steps: usize) -> String {
    dag_yaml(
        "w3",
        &(0..steps)
            .map(|index| (format!("s{index}"), if index == 0 { Vec::new() } else { vec![format!("s{}", index - 1)] }))
            .collect::<Vec<_>>(),
    )
}

/// W5: a 20-job ETL shape: extract → 8 transforms → 8 validations → aggregate → load → report.
pub fn etl() -> String {
    let mut jobs = vec![("extract".to_owned(), Vec::new())];
    for index in 0..8 {
        jobs.push((format!("transform-{index}"), vec!["extract".to_owned()]));
        jobs.push((format!("validate-{index}"), vec![format!("transform-{index}")]));
    }
    jobs.push(("aggregate".into(), (0..8).map(|index| format!("validate-{index}")).collect()));
    jobs.push(("load".into(), vec!["aggregate".into()]));
    jobs.push(("report".into(), vec!["load".into()]));
    dag_yaml("w5", &jobs)
}

/// Publishes a submission of `yaml` for a fixed day; returns its run id.
pub async fn submit(js: &jetstream::Context, yaml: &str) -> Result<RunId> {
    let window = Window::parse("2024-03-01", sluice_proto::window::parse_zone("UTC")?, Utc::now())?;
    let submission = Submission { window: Some(window), ..sluice_testkit::workflow::submission(yaml) };
    sluice_testkit::workflow::submit(js, &submission).await
}

/// Waits until the run ends, pushed by a KV watch on its record (no polling that would load
/// the server being measured); it must succeed.
pub async fn wait_run(js: &jetstream::Context, id: &RunId) -> Result<RunRecord> {
    let record = sluice_testkit::wait::run_record_end(js, id, RUN_TIMEOUT).await?;
    if record.state != sluice_proto::RunState::Succeeded {
        bail!("run {id} ended {}: {}", record.state.as_str(), record.error.unwrap_or_default());
    }
    Ok(record)
}

/// Seconds from a run's creation to its end, by its own record.
pub fn run_seconds(record: &RunRecord) -> f64 {
    record.finished_at.map(|end| seconds(record.created_at, end)).unwrap_or(f64::NAN)
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// Every job record of a run, children included.
pub async fn job_records(js: &jetstream::Context, run: &RunRecord) -> Result<HashMap<String, JobRecord>> {
    let stores = sluice_client::Stores::open(js).await?.context("Sluice's buckets are missing")?;
    Ok(stores.jobs(&run.id).await?)
}

/// Dependency finished → dependent started, in seconds, for every job that waited on
/// another: its `needs`, or (a child) its parent's successful attempt.
/// `spec_yaml` is the run's spec.
pub fn dispatch_latencies(spec_yaml: &str, jobs: &HashMap<String, JobRecord>) -> Vec<f64> {
    let Ok(spec) = WorkflowSpec::parse(spec_yaml) else { return Vec::new() };
    let mut latencies = Vec::new();
    for job in jobs.values() {
        let Some(started) = job.attempt_history.first().map(|attempt| attempt.started_at) else { continue };
        let ready = match &job.parent {
            Some(parent) => jobs.get(parent).and_then(|parent| parent.attempt_history.last()?.finished_at),
            None => spec
                .jobs
                .get(&job.name)
                .and_then(|definition| definition.needs.iter().filter_map(|need| jobs.get(need)?.finished_at).max()),
        };
        if let Some(ready) = ready {
            latencies.push(seconds(ready, started).max(0.0));
        }
    }
    latencies
}

/// The `q` quantile (0..1) of `values`.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}
