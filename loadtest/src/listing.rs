//! W6: listing runs stays as fast at 100,000 runs as at 1,000. Runs are seeded through the
//! real stack (submissions the coordinator turns into runs, a job each, run to their end),
//! then the same queries are timed at both sizes, on the same store:
//! the newest 50 runs, the newest 50 of one workflow, and one workflow's runs in a 7-day
//! window range. Every query returns as many runs at both sizes, so what is compared is the
//! cost of the history behind them.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use chrono::{NaiveDate, Utc};
use futures::StreamExt;
use sluice_client::pipeline::{self, Outgoing};
use sluice_client::runs::{self, RunFilter};
use sluice_proto::{RunId, RunRecord, SCHEMA_VERSION, Submission, Window, decode, encode, names};

/// Workflows the runs are spread over (run `i` is of workflow `i % WORKFLOWS`).
const WORKFLOWS: usize = 10;
/// Each workflow's runs have windows on consecutive days from here, one run a day.
const FIRST_DAY: (i32, u32, u32) = (2000, 1, 1);
/// Days in the window-range query (so it returns this many runs).
const RANGE_DAYS: u64 = 7;
/// Times each query is timed at each size (after a few untimed ones).
const QUERIES: usize = 100;
const WARM_UP: usize = 5;
/// Runs published per round of seeding (their submissions are acknowledged before the next).
const SEED_CHUNK: usize = 5_000;
/// Longest seeding may take, at any size.
const SEED_TIMEOUT: Duration = Duration::from_secs(1800);

/// p95 of each query, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct Latencies {
    pub newest: f64,
    pub workflow_newest: f64,
    pub window_range: f64,
}

/// What W6 measured.
pub struct Listing {
    pub small: Latencies,
    pub large: Latencies,
    /// Runs per second while seeding from `small` to `large` (submission to end).
    pub seed_rate: f64,
}

/// Seeds `small` runs, times the queries, seeds up to `large`, times them again.
pub async fn w6(js: &jetstream::Context, small: usize, large: usize) -> Result<Listing> {
    seed(js, 0, small).await?;
    let small_p95 = time_queries(js, small).await?;
    let started = Instant::now();
    seed(js, small, large).await?;
    let seed_rate = (large - small) as f64 / started.elapsed().as_secs_f64();
    let large_p95 = time_queries(js, small).await?;
    Ok(Listing { small: small_p95, large: large_p95, seed_rate })
}

fn workflow_name(index: usize) -> String {
    format!("w6-{}", index % WORKFLOWS)
}

fn first_day() -> Result<NaiveDate> {
    let (year, month, day) = FIRST_DAY;
    NaiveDate::from_ymd_opt(year, month, day).context("W6's first day")
}

/// Submits runs `from..to` and waits (on a watch of KV `sluice-runs`) until every one has
/// ended; each must succeed.
async fn seed(js: &jetstream::Context, from: usize, to: usize) -> Result<()> {
    let runs = js.get_key_value(names::RUNS_BUCKET).await.context("opening KV sluice-runs")?;
    // Watching from before the first publish: no run's end can be missed.
    let mut updates = runs.watch_all().await.context("watching KV sluice-runs")?;
    let zone = sluice_proto::window::parse_zone("UTC")?;
    let day0 = first_day()?;
    let mut waiting: HashSet<RunId> = HashSet::with_capacity(to - from);
    let deadline = tokio::time::Instant::now() + SEED_TIMEOUT;
    let mut next = from;
    while next < to || !waiting.is_empty() {
        // Keep at most one chunk in flight, so the coordinator's submissions queue stays short.
        if next < to && waiting.len() < SEED_CHUNK {
            let end = (next + SEED_CHUNK).min(to);
            let mut batch = Vec::with_capacity(end - next);
            for index in next..end {
                let day = day0 + chrono::Days::new((index / WORKFLOWS) as u64);
                let run_id = RunId::new();
                let workflow = format!("name: {}\njobs:\n  only: {{ run: noop }}\n", workflow_name(index));
                let submission = Submission {
                    schema_version: SCHEMA_VERSION,
                    run_id,
                    workflow,
                    window: Some(Window::day(day, zone)),
                    params: Default::default(),
                    idempotency_key: None,
                    submitted_at: Some(Utc::now()),
                    origin: None,
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(names::HEADER_MSG_ID, run_id.to_string().as_str());
                batch.push(Outgoing {
                    subject: names::SUBMIT_SUBJECT.to_owned(),
                    headers,
                    payload: encode(&submission)?.into(),
                    what: format!("the submission of run {run_id}"),
                });
                waiting.insert(run_id);
            }
            pipeline::publish_all(js, batch).await?;
            next = end;
            continue;
        }
        let update = tokio::time::timeout_at(deadline, updates.next()).await.with_context(|| {
            format!("seeding runs {from}..{to}: {} had not ended within {SEED_TIMEOUT:?}", waiting.len())
        })?;
        let entry = update.context("the watch of KV sluice-runs ended")?.context("watching KV sluice-runs")?;
        let Ok(record) = decode::<RunRecord>(&entry.value) else { continue };
        if record.state.is_terminal() && waiting.remove(&record.id) && record.state != sluice_proto::RunState::Succeeded
        {
            bail!("seeded run {} ended {}: {}", record.id, record.state.as_str(), record.error.unwrap_or_default());
        }
    }
    Ok(())
}

/// Times each query [`QUERIES`] times; every one must return what the seeded runs imply.
/// `seeded` is the smaller size: the window range lies inside what it seeded.
async fn time_queries(js: &jetstream::Context, seeded: usize) -> Result<Latencies> {
    let workflow = workflow_name(3);
    let days = (seeded / WORKFLOWS) as u64;
    let from = first_day()? + chrono::Days::new(days / 2);
    let to = from + chrono::Days::new(RANGE_DAYS - 1);
    let newest = RunFilter::default();
    let of_workflow = RunFilter { workflow: Some(workflow.clone()), ..Default::default() };
    let mut timings = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..WARM_UP + QUERIES {
        let started = Instant::now();
        let page = runs::list(js, &newest, 50, None).await?;
        let newest_took = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mine = runs::list(js, &of_workflow, 50, None).await?;
        let workflow_took = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let ranged = runs::by_window_days(js, &workflow, from, to).await?;
        let range_took = started.elapsed().as_secs_f64();
        if page.runs.len() != 50 || mine.runs.len() != 50 || mine.runs.iter().any(|run| run.workflow != workflow) {
            bail!(
                "listing returned {} newest runs and {} of {workflow}, not 50 each",
                page.runs.len(),
                mine.runs.len()
            );
        }
        if ranged.len() != RANGE_DAYS as usize {
            bail!("{workflow}'s runs in {from}..{to}: {} found, {RANGE_DAYS} seeded", ranged.len());
        }
        if round >= WARM_UP {
            for (timing, took) in timings.iter_mut().zip([newest_took, workflow_took, range_took]) {
                timing.push(took);
            }
        }
    }
    let [mut a, mut b, mut c] = timings;
    Ok(Latencies {
        newest: crate::workloads::quantile(&mut a, 0.95),
        workflow_newest: crate::workloads::quantile(&mut b, 0.95),
        window_range: crate::workloads::quantile(&mut c, 0.95),
    })
}
