//! Submitting workflows, and jobs that record when they ran.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use async_nats::jetstream;
use sluice_proto::{RunId, SCHEMA_VERSION, Submission};

use crate::wait;

/// A submission of `yaml` with a fresh run id, for the workflow's default window (the
/// previous full day in its zone).
pub fn submission(yaml: &str) -> Submission {
    Submission {
        schema_version: SCHEMA_VERSION,
        run_id: RunId::new(),
        workflow: yaml.to_owned(),
        window: None,
        params: Default::default(),
        idempotency_key: None,
        submitted_at: Some(chrono::Utc::now()),
        origin: None,
    }
}

/// Waits (at most [`wait::SETUP_TIMEOUT`]) until Sluice is set up, then publishes
/// `submission` through `sluice_client::requests::submit` (its run id doubles as the
/// deduplication id) and returns the run id. The run's end: [`wait::run_end`].
pub async fn submit(js: &jetstream::Context, submission: &Submission) -> Result<RunId> {
    wait::set_up(js, wait::SETUP_TIMEOUT).await?;
    sluice_client::requests::submit(js, submission, &submission.run_id.to_string()).await?;
    Ok(submission.run_id)
}

/// [`submit`]s `yaml` for its default window.
pub async fn submit_yaml(js: &jetstream::Context, yaml: &str) -> Result<RunId> {
    submit(js, &submission(yaml)).await
}

/// An exec job that appends `start JOB ATTEMPT NANOS` and `end JOB ATTEMPT NANOS` to `log`,
/// sleeping `seconds` in between, as a YAML flow mapping.
pub fn recording_job(log: &Path, seconds: f64, needs: &[String]) -> String {
    let script = recording_script(log, seconds);
    format!(
        "{{ run: exec, needs: [{}], command: [sh, -c, {}] }}",
        needs.join(", "),
        serde_json::to_string(&script).expect("a string is JSON")
    )
}

/// The shell script of [`recording_job`].
pub fn recording_script(log: &Path, seconds: f64) -> String {
    format!(
        "echo \"start $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)\" >> {log}; sleep {seconds}; echo \"end $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)\" >> {log}",
        log = log.display()
    )
}

/// One job's recorded lines.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    pub starts: Vec<(u32, u128)>,
    pub ends: Vec<(u32, u128)>,
}

/// Reads the job log: job name → its starts and ends (attempt, nanoseconds). Panics on a
/// line recording jobs do not write.
pub fn read_job_log(log: &Path) -> HashMap<String, Recorded> {
    let mut jobs: HashMap<String, Recorded> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, job, attempt, nanos] = parts[..] else { panic!("bad job log line {line:?}") };
        let entry = jobs.entry(job.to_owned()).or_default();
        let value = (attempt.parse().expect("attempt"), nanos.parse().expect("nanos"));
        match what {
            "start" => entry.starts.push(value),
            "end" => entry.ends.push(value),
            _ => panic!("bad job log line {line:?}"),
        }
    }
    jobs
}

/// Asserts every job in `needs` (job → what it needs) ran exactly once, and started only
/// after everything it needs had finished.
pub fn assert_ran_once_in_order(log: &Path, needs: &HashMap<String, Vec<String>>) {
    let jobs = read_job_log(log);
    for (job, deps) in needs {
        let recorded = jobs.get(job).unwrap_or_else(|| panic!("job {job} never ran"));
        assert_eq!(recorded.starts.len(), 1, "job {job} started {} times", recorded.starts.len());
        assert_eq!(recorded.ends.len(), 1, "job {job} finished {} times", recorded.ends.len());
        for dep in deps {
            let dep_end = jobs[dep].ends[0].1;
            assert!(dep_end <= recorded.starts[0].1, "{job} started before {dep} finished");
        }
    }
}
