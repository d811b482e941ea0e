//! The worker runtime: producer → executor → completer, wired together by [`run`].
//!
//! - Producer (`producer.rs`): fetches as many jobs as there are free slots and, while the
//!   jobs it runs are short (done within [`SHORT_JOB_MAX_MS`]), up to `prefetch` more, so
//!   the next short job is at hand when a slot frees up and fetches come in batches. None
//!   are fetched ahead while jobs run long, and a job fetched ahead that waits longer than
//!   [`FETCHED_WAIT_MAX_MS`] goes back to the pool as the same attempt, so a busy worker
//!   does not sit on work another could run. The decisions are a pure `FetchPolicy`.
//! - Executor (`executor.rs`): reports the start, runs the job with its timeout and a
//!   cancellation token, keeps the message alive with in-progress acks, catches panics,
//!   and returns one `Attempt` value saying how it ended.
//! - Completer (`completer.rs`, a `Completer` trait with an inline implementation): the
//!   pure `settle` decides ack, NAK with the retry delay, scheduled retry or TERM; the
//!   completer stores what a success hands on, reports the outcome (`reporter.rs`), then
//!   settles the message. The event is always durable before the ack, so the coordinator
//!   never misses an outcome.
//!
//! Shutdown: stop fetching, hand back anything fetched but not started (as the same
//! attempt), let running jobs finish within the grace period, then cancel the rest and hand
//! them back (NAK, no delay: that attempt counts).
//!
//! [`SHORT_JOB_MAX_MS`]: crate::limits::SHORT_JOB_MAX_MS
//! [`FETCHED_WAIT_MAX_MS`]: crate::limits::FETCHED_WAIT_MAX_MS

mod completer;
mod delivery;
mod executor;
mod producer;
mod reporter;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use sluice_proto::{RunId, names};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::config::{NAK_DELAY_MAX_DEFAULT, WorkerConfig, default_prefetch};
pub use crate::error::WorkerError;
pub use crate::limits::CONCURRENCY_MAX;
use crate::limits::{CONSUMER_OPEN_RETRY_PAUSE_MS, PROGRESS_INTERVAL_MIN_MS};
use crate::nats::pool_consumer;
use crate::registry::Registry;
use crate::stops::RunStops;
use completer::{Completer, InlineCompleter};
use producer::{Producer, report_panic};

/// What every job task shares. Set up by [`run`] before any task starts; after that only
/// `short_jobs` (see there), `stops` and `stop_jobs` change.
struct Shared {
    js: jetstream::Context,
    registry: Registry,
    config: WorkerConfig,
    /// In-progress acks are sent this often while a job runs.
    progress_interval: Duration,
    /// Cancelled by [`run`] when the shutdown grace period is over.
    stop_jobs: CancellationToken,
    /// Running jobs by run, for stopping a cancelled run's jobs (written by the stop listener).
    stops: RunStops,
    /// Job records, for the outputs of the jobs a job needs.
    job_records: jetstream::kv::Store,
    /// Whether the last job to finish was short: only then are jobs fetched ahead. Set by
    /// executors when a job ends; cleared by the producer when a fetched job waits too long.
    short_jobs: AtomicBool,
}

/// Pulls and runs jobs of `config.pool` until `shutdown` is cancelled, then drains.
pub async fn run(
    client: async_nats::Client,
    registry: Registry,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    config.check()?;
    let js = jetstream::new(client);
    let Some((mut consumer, job_records)) =
        open_consumer(&js, &config.pool, (config.ack_wait, config.max_deliver), &shutdown).await
    else {
        return Ok(());
    };
    // The consumer's own ack wait counts (another worker may have created it).
    let ack_wait = consumer.info().await.map(|info| info.config.ack_wait).unwrap_or(config.ack_wait);
    let progress_interval = (ack_wait / 3).max(Duration::from_millis(PROGRESS_INTERVAL_MIN_MS));
    let kinds: Vec<&str> = registry.kinds().collect();
    tracing::info!(pool = %config.pool, concurrency = config.concurrency, kinds = ?kinds, worker = %config.worker_id, "worker ready");
    let shared = Arc::new(Shared {
        js,
        registry,
        config,
        progress_interval,
        stop_jobs: CancellationToken::new(),
        stops: RunStops::default(),
        job_records,
        short_jobs: AtomicBool::new(false),
    });
    let listener = tokio::spawn(listen_for_stops(shared.clone()));
    let completer: Arc<dyn Completer> = Arc::new(InlineCompleter::new(shared.clone()));
    let mut producer = Producer::new(shared.clone(), completer, shutdown);
    producer.run(&consumer).await;
    // Fetched but not started: handed back at once.
    let running = producer.finish().await;
    drain(&shared, running).await;
    listener.abort();
    tracing::info!("worker stopped");
    Ok(())
}

/// Lets running jobs finish within the grace period, then cancels the rest (they are
/// handed back) and waits for them.
async fn drain(shared: &Shared, mut running: JoinSet<()>) {
    tracing::info!(running = running.len(), grace_s = shared.config.shutdown_grace.as_secs(), "worker draining");
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        while let Some(finished) = running.join_next().await {
            report_panic(finished);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(running = running.len(), "grace period over: cancelling running jobs and handing them back");
        shared.stop_jobs.cancel();
        while let Some(finished) = running.join_next().await {
            report_panic(finished);
        }
    }
}

/// The pool's consumer and the job records bucket, once a coordinator has created them.
async fn open_consumer(
    js: &jetstream::Context,
    pool: &str,
    (ack_wait, max_deliver): (Duration, i64),
    shutdown: &CancellationToken,
) -> Option<(PullConsumer, jetstream::kv::Store)> {
    loop {
        let opened = match pool_consumer(js, pool, ack_wait, max_deliver).await {
            Ok(consumer) => match js.get_key_value(names::JOBS_BUCKET).await {
                Ok(records) => Ok((consumer, records)),
                Err(error) => Err(WorkerError::nats("opening KV sluice-jobs", error)),
            },
            Err(error) => Err(error),
        };
        match opened {
            Ok(opened) => return Some(opened),
            Err(error) => {
                tracing::warn!(%error, "cannot open the pool's consumer yet (has a coordinator started?); retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(CONSUMER_OPEN_RETRY_PAUSE_MS)) => {}
        }
    }
}

/// Stops the running jobs of runs the coordinator announces as cancelled.
async fn listen_for_stops(shared: Arc<Shared>) {
    let client = shared.js.client();
    let mut announcements = match client.subscribe(names::STOP_SUBJECTS).await {
        Ok(subscription) => subscription,
        Err(error) => {
            tracing::error!(%error, "cannot listen for cancelled runs; their jobs will run to the end");
            return;
        }
    };
    while let Some(announcement) = announcements.next().await {
        match announcement.subject.rsplit('.').next().map(str::parse::<RunId>) {
            Some(Ok(run_id)) => {
                tracing::info!(run = %run_id, "run cancelled: stopping its jobs");
                shared.stops.stop(run_id);
            }
            _ => tracing::warn!(subject = %announcement.subject, "ignoring a stop announcement without a run id"),
        }
    }
}
