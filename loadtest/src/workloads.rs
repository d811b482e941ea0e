//! The Sluice workloads, each on a fresh stack, timed as their submitter sees them: from
//! right before the submission is published to a KV watch on the run's record seeing its
//! end. Every job is then verified from its record.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use sluice_proto::messages::Rejection;
use sluice_proto::state::JobState;
use sluice_proto::{JobRecord, RunId, RunRecord, Submission, Window, WorkflowSpec, decode, names};

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

/// W1-py: W1 for the Python worker: `count` independent no-op jobs of kind `kind` on `pool`.
pub fn independent_on(count: usize, kind: &str, pool: &str) -> String {
    let mut yaml = format!("name: w1-py\ndefaults: {{ pool: {pool} }}\njobs:\n");
    // Tight, so 20,000 jobs fit the submission limit (512 KiB) with the longer kind.
    for index in 0..count {
        yaml.push_str(&format!("  j{index}: {{run: {kind}}}\n"));
    }
    yaml
}

/// W2-static: a root, `count` jobs that need it, and a join that needs all of them, all in
/// the YAML.
pub fn static_fan_out(count: usize) -> String {
    let children: Vec<String> = (0..count).map(|index| format!("c{index}")).collect();
    let mut jobs = vec![("root".to_owned(), Vec::new())];
    jobs.extend(children.iter().map(|child| (child.clone(), vec!["root".to_owned()])));
    jobs.push(("join".to_owned(), children));
    dag_yaml("w2-static", &jobs)
}

/// W2-spawned/W4: a root that spawns `children` no-op children at run time, then (with
/// `join`) a job that needs the root (so it waits for every child).
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

/// A submission of `yaml` for a fixed day, with a fresh run id.
fn submission(yaml: &str) -> Result<Submission> {
    let window = Window::parse("2024-03-01", sluice_proto::window::parse_zone("UTC")?, Utc::now())?;
    Ok(Submission { window: Some(window), ..sluice_testkit::workflow::submission(yaml) })
}

/// Publishes a submission (through the client crate, as `sluice submit` does: the
/// publish waits for JetStream's acknowledgement).
async fn publish(js: &jetstream::Context, submission: &Submission) -> Result<()> {
    sluice_client::requests::submit(js, submission, &submission.run_id.to_string())
        .await
        .with_context(|| format!("submitting run {}", submission.run_id))?;
    Ok(())
}

/// One run as its submitter saw it.
pub struct Timed {
    /// Its record in the terminal state (it succeeded).
    pub record: RunRecord,
    /// From right before the submission was published to the KV watch on the run's record
    /// delivering the terminal state, in seconds.
    pub seconds: f64,
    /// From the same start to the first job message of the run on the jobs subjects (a
    /// core-NATS subscription sees it as JetStream stores it), in seconds, when asked for.
    pub intake: Option<f64>,
    /// Right before the publish, and when the end was seen.
    pub started: Instant,
    pub ended: Instant,
}

/// Submits `yaml` and times it as a user sees it: t0 right before the submission is
/// published, the end when a KV watch on the run's record (push, set up before t0, so no
/// update is missed and nothing polls the server being measured) delivers a terminal
/// state. With `intake`, also the time to the first job dispatched. A rejected submission
/// fails at once (a core subscription on its rejection subject); so does a run that did
/// not succeed.
pub async fn run_timed(js: &jetstream::Context, yaml: &str, intake: bool) -> Result<Timed> {
    sluice_testkit::wait::set_up(js, sluice_testkit::wait::SETUP_TIMEOUT).await?;
    let submission = submission(yaml)?;
    let id = submission.run_id;
    let runs = js.get_key_value(names::RUNS_BUCKET).await.context("opening KV sluice-runs")?;
    let mut watch = runs.watch_with_history(id.to_string()).await.with_context(|| format!("watching run {id}"))?;
    let client = js.client();
    let mut rejected = client.subscribe(names::rejected_subject(Some(&id))).await.context("subscribing")?;
    let mut first_job = None;
    if intake {
        // One message is enough: the server stops delivering after it, so the watch adds
        // no load to the 20,000 dispatches that follow.
        let [jobs, _] = names::run_job_filters(&id);
        let mut subscriber = client.subscribe(jobs).await.context("subscribing to the run's jobs")?;
        subscriber.unsubscribe_after(1).await.context("subscribing to the run's jobs")?;
        first_job = Some(subscriber);
    }
    // Every subscription is in place at the server before t0.
    client.flush().await.context("flushing the subscriptions")?;

    let started = Instant::now();
    publish(js, &submission).await?;
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let mut intake_seconds = None;
    let (record, ended) = loop {
        tokio::select! {
            // The first job message before the end, should both be waiting.
            biased;
            Some(_) = async { match first_job.as_mut() { Some(jobs) => jobs.next().await, None => None } },
                if first_job.is_some() => {
                intake_seconds = Some(started.elapsed().as_secs_f64());
                first_job = None;
            }
            entry = watch.next() => {
                let entry = entry.with_context(|| format!("the watch of run {id} ended"))?
                    .with_context(|| format!("watching run {id}"))?;
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                let record: RunRecord = decode(&entry.value).with_context(|| format!("decoding run {id}'s record"))?;
                if record.state.is_terminal() {
                    break (record, Instant::now());
                }
            }
            Some(message) = rejected.next() => {
                let reason = decode::<Rejection>(&message.payload).map(|r| r.reason).unwrap_or_default();
                bail!("run {id} was rejected: {reason}");
            }
            _ = tokio::time::sleep_until(deadline) => bail!("run {id} did not end within {RUN_TIMEOUT:?}"),
        }
    };
    if intake && intake_seconds.is_none() {
        bail!("run {id} ended {} without a job message on {}", record.state.as_str(), names::run_job_filters(&id)[0]);
    }
    succeeded(&record)?;
    let seconds = ended.saturating_duration_since(started).as_secs_f64();
    Ok(Timed { record, seconds, intake: intake_seconds, started, ended })
}

/// Submits `count` runs of `yaml` at once (each timed from right before its own publish)
/// and waits for every one's end on one KV watch of the runs bucket, set up before the
/// first publish; each must succeed. In the order they were submitted.
pub async fn runs_timed(js: &jetstream::Context, yaml: &str, count: usize) -> Result<Vec<Timed>> {
    sluice_testkit::wait::set_up(js, sluice_testkit::wait::SETUP_TIMEOUT).await?;
    let submissions = (0..count).map(|_| submission(yaml)).collect::<Result<Vec<_>>>()?;
    let runs = js.get_key_value(names::RUNS_BUCKET).await.context("opening KV sluice-runs")?;
    let mut watch = runs.watch_all().await.context("watching KV sluice-runs")?;
    let mut rejected = js.client().subscribe(names::REJECTED_SUBJECTS).await.context("subscribing")?;
    js.client().flush().await.context("flushing the subscriptions")?;

    // The publishes run beside the watch, so an end is seen when it happens.
    let mut publishing = {
        let js = js.clone();
        let submissions = submissions.clone();
        tokio::spawn(async move {
            futures::future::try_join_all(submissions.iter().map(|submission| {
                let js = js.clone();
                async move {
                    let started = Instant::now();
                    publish(&js, submission).await?;
                    Ok::<_, anyhow::Error>((submission.run_id, started))
                }
            }))
            .await
        })
    };
    let waiting: HashSet<RunId> = submissions.iter().map(|submission| submission.run_id).collect();
    let mut ended: HashMap<RunId, (RunRecord, Instant)> = HashMap::with_capacity(count);
    let deadline = tokio::time::Instant::now() + RUN_TIMEOUT;
    let mut published = None;
    while ended.len() < count || published.is_none() {
        tokio::select! {
            // A submission that fails ends the workload at once.
            result = &mut publishing, if published.is_none() => {
                published = Some(result.context("the submissions' task")??);
            }
            entry = watch.next(), if ended.len() < count => {
                let entry = entry.context("the watch of KV sluice-runs ended")?.context("watching KV sluice-runs")?;
                let at = Instant::now();
                if entry.operation != kv::Operation::Put {
                    continue;
                }
                let Ok(record) = decode::<RunRecord>(&entry.value) else { continue };
                if record.state.is_terminal() && waiting.contains(&record.id) && !ended.contains_key(&record.id) {
                    ended.insert(record.id, (record, at));
                }
            }
            Some(message) = rejected.next() => {
                let rejection = decode::<Rejection>(&message.payload).ok();
                let id = rejection.as_ref().and_then(|r| r.run_id).map(|id| id.to_string()).unwrap_or_default();
                bail!("run {id} was rejected: {}", rejection.map(|r| r.reason).unwrap_or_default());
            }
            _ = tokio::time::sleep_until(deadline) => {
                bail!("{} of {count} runs had not ended within {RUN_TIMEOUT:?}", count - ended.len());
            }
        }
    }
    let mut timed = Vec::with_capacity(count);
    for (id, started) in published.unwrap_or_default() {
        let (record, at) = ended.remove(&id).with_context(|| format!("run {id} was not seen ending"))?;
        succeeded(&record)?;
        let seconds = at.saturating_duration_since(started).as_secs_f64();
        timed.push(Timed { record, seconds, intake: None, started, ended: at });
    }
    Ok(timed)
}

fn succeeded(record: &RunRecord) -> Result<()> {
    if record.state != sluice_proto::RunState::Succeeded {
        bail!("run {} ended {}: {}", record.id, record.state.as_str(), record.error.clone().unwrap_or_default());
    }
    Ok(())
}

/// Seconds from a run's creation to its end, by its own record (for comparison with what
/// its submitter saw; not what the targets are measured by).
pub fn record_seconds(record: &RunRecord) -> f64 {
    record.finished_at.map(|end| seconds(record.created_at, end)).unwrap_or(f64::NAN)
}

fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// Reads every job record of `run` and checks it ran as it should: `expected` records
/// (children included), every one `completed`, every job the run record names among them.
pub async fn verify(js: &jetstream::Context, run: &RunRecord, expected: usize) -> Result<HashMap<String, JobRecord>> {
    let jobs = job_records(js, run).await?;
    check_jobs(run, &jobs, expected)?;
    Ok(jobs)
}

/// [`verify`]'s check, on records already read.
pub fn check_jobs(run: &RunRecord, jobs: &HashMap<String, JobRecord>, expected: usize) -> Result<()> {
    if let Some(missing) = run.jobs.iter().find(|name| !jobs.contains_key(*name)) {
        bail!("run {}: job {missing} has no record", run.id);
    }
    if jobs.len() != expected {
        bail!("run {}: {} job records, {expected} expected", run.id, jobs.len());
    }
    let mut unfinished: Vec<_> = jobs.values().filter(|job| job.state != JobState::Completed).collect();
    unfinished.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(job) = unfinished.first() {
        bail!(
            "run {}: {} of {expected} jobs did not complete, e.g. {} ({})",
            run.id,
            unfinished.len(),
            job.name,
            job.state.as_str()
        );
    }
    Ok(())
}

/// Every job record of a run, children included.
pub async fn job_records(js: &jetstream::Context, run: &RunRecord) -> Result<HashMap<String, JobRecord>> {
    let stores = sluice_client::Stores::open(js).await?.context("Sluice's buckets are missing")?;
    Ok(stores.jobs(run).await?)
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
