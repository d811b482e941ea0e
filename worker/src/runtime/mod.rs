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
//!   never misses an outcome. Outcomes whose message is then removed go through the
//!   batcher (`batcher.rs`): one message for many attempts' outcomes, group-commit style.
//!
//! Shutdown: stop fetching, hand back anything fetched but not started (as the same
//! attempt), let running jobs finish (within the grace period, if one is set; by default
//! they all finish), then cancel the rest and hand them back (NAK, no delay: that attempt
//! counts). A worker whose lifetime is over (`max_jobs` started, or idle for
//! `exit_when_idle`) stops fetching the same way and lets every running job finish.
//!
//! [`SHORT_JOB_MAX_MS`]: crate::limits::SHORT_JOB_MAX_MS
//! [`FETCHED_WAIT_MAX_MS`]: crate::limits::FETCHED_WAIT_MAX_MS

mod announce;
mod batcher;
mod completer;
#[cfg(test)]
mod conformance_tests;
mod delivery;
mod executor;
mod held;
mod producer;
mod redelivery;
mod reporter;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use sluice_proto::{RunId, names};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::config::{NAK_DELAY_MAX_DEFAULT, WorkerConfig, default_prefetch};
pub use crate::error::WorkerError;
pub use crate::limits::CONCURRENCY_MAX;
use crate::limits::{CONSUMER_OPEN_RETRY_PAUSE_MS, PROGRESS_INTERVAL_MIN_MS};
use crate::metrics::Metrics;
use crate::nats::{declared_pools, pool_consumer};
use crate::registry::Registry;
use crate::stops::RunStops;
use announce::{Announcer, check_kinds, live_workers};
use batcher::Batcher;
use completer::{Completer, InlineCompleter};
use held::HeldJobs;
use producer::{Producer, Stopped, report_panic};

/// What a worker is doing, for readiness probes ([`run_observed`] publishes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for Sluice to be set up, or opening the pool's consumer.
    Opening,
    /// The consumer is open and the worker announced: it takes jobs.
    Ready,
    /// Takes no more jobs; running ones finish.
    Draining,
    /// Returned.
    Stopped,
}

impl Phase {
    pub fn is_ready(self) -> bool {
        self == Self::Ready
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Opening => "opening",
            Self::Ready => "ready",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// How the process steers a running worker, beside its configuration.
pub struct Control {
    /// Cancelled: take no more jobs, let running ones finish, return.
    pub shutdown: CancellationToken,
    /// Cancelled while draining: stop the running jobs now and hand them back (a second
    /// SIGTERM or Ctrl-C).
    pub hurry: CancellationToken,
    /// Where the worker says what it is doing.
    pub phase: watch::Sender<Phase>,
    /// Where it counts what it runs (unregistered by default).
    pub metrics: Metrics,
}

impl Control {
    /// Steered by `shutdown` alone.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            hurry: CancellationToken::new(),
            phase: watch::channel(Phase::Opening).0,
            metrics: Metrics::default(),
        }
    }
}

/// What every job task shares. Set up by [`run`] before any task starts; after that only
/// `short_jobs` (see there), `stops` and `stop_jobs` change.
struct Shared {
    js: jetstream::Context,
    registry: Registry,
    config: WorkerConfig,
    /// In-progress acks are sent this often while a job runs.
    progress_interval: Duration,
    /// The worker's `config.concurrency` slots: a job holds one while its work runs.
    slots: Arc<Semaphore>,
    /// Cancelled by [`run`] when the shutdown grace period is over.
    stop_jobs: CancellationToken,
    /// Running jobs by run, for stopping a cancelled run's jobs (written by the stop listener).
    stops: RunStops,
    /// Job records, for the outputs of the jobs a job needs (and a redelivery's attempts).
    job_records: jetstream::kv::Store,
    /// The jobs being run here, so a redelivery of one is not run twice by this worker.
    held: HeldJobs,
    /// KV `sluice-workers`: whether the worker of a redelivered job's open attempt is alive.
    workers: jetstream::kv::Store,
    /// Sends the events of jobs dispatched with `batch_events` in batches.
    batcher: Batcher,
    /// Whether the last job to finish was short: only then are jobs fetched ahead. Set by
    /// executors when a job ends; cleared by the producer when a fetched job waits too long.
    short_jobs: AtomicBool,
    metrics: Metrics,
}

/// Pulls and runs jobs of `config.pool` until `shutdown` is cancelled, then drains.
///
/// Fails with [`WorkerError::Config`] when the pool is not declared within
/// `config.pool_wait` (once Sluice is set up), or when its live workers serve other kinds.
pub async fn run(
    client: async_nats::Client,
    registry: Registry,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    run_observed(client, registry, config, Control::new(shutdown)).await
}

/// [`run`], steered by `control` (a second stop signal ends the drain) and saying what it
/// does on `control.phase`. Returns once stopped: shut down, or its lifetime is over.
pub async fn run_observed(
    client: async_nats::Client,
    registry: Registry,
    config: WorkerConfig,
    control: Control,
) -> Result<(), WorkerError> {
    let result = run_controlled(client, registry, config, &control).await;
    control.phase.send_replace(Phase::Stopped);
    result
}

async fn run_controlled(
    client: async_nats::Client,
    registry: Registry,
    config: WorkerConfig,
    control: &Control,
) -> Result<(), WorkerError> {
    let shutdown = control.shutdown.clone();
    config.check()?;
    let js = jetstream::new(client);
    let kinds: Vec<String> = registry.kinds().map(str::to_owned).collect();
    let Some(opened) = open(&js, &config, &kinds, &shutdown).await? else {
        return Ok(());
    };
    // The pool's ack wait is its declaration's, on its consumer.
    let ack_wait = opened.consumer.cached_info().config.ack_wait;
    let progress_interval = (ack_wait / 3).max(Duration::from_millis(PROGRESS_INTERVAL_MIN_MS));
    tracing::info!(pool = %config.pool, concurrency = config.concurrency, kinds = ?kinds, worker = %config.worker_id, ack_wait_ms = ack_wait.as_millis() as u64, "worker ready");
    let slots = Arc::new(Semaphore::new(config.concurrency));
    control.metrics.track_slots(&config.pool, &slots, config.concurrency);
    let announcer = Announcer::new(opened.workers.clone(), &config, kinds, slots.clone(), control.phase.clone());
    let batcher = Batcher::start(js.clone(), &config.pool, &config.worker_id);
    let shared = Arc::new(Shared {
        batcher,
        js,
        registry,
        config,
        progress_interval,
        slots,
        stop_jobs: CancellationToken::new(),
        stops: RunStops::default(),
        job_records: opened.job_records,
        held: HeldJobs::default(),
        workers: opened.workers,
        short_jobs: AtomicBool::new(false),
        metrics: control.metrics.clone(),
    });
    let stop_announcing = CancellationToken::new();
    let announcing = tokio::spawn(announcer.run(stop_announcing.clone()));
    let listener = tokio::spawn(listen_for_stops(shared.clone()));
    let completer: Arc<dyn Completer> = Arc::new(InlineCompleter::new(shared.clone()));
    let mut producer = Producer::new(shared.clone(), completer, shutdown.clone());
    let stopped = producer.run(&opened.consumer).await;
    control.phase.send_replace(Phase::Draining);
    // Fetched but not started: handed back at once.
    let mut running = producer.finish().await;
    if stopped != Stopped::Shutdown {
        // Its lifetime is over: every running job finishes, unless a shutdown comes first.
        tracing::info!(running = running.len(), reason = ?stopped, "worker finishing its last jobs");
        tokio::select! {
            () = join_all(&mut running) => {}
            () = shutdown.cancelled() => {}
        }
    }
    drain(&shared, running, &control.hurry).await;
    listener.abort();
    // Still announced while draining; gone once nothing runs.
    stop_announcing.cancel();
    if let Err(error) = announcing.await {
        tracing::warn!(%error, "the announcer failed; this worker's entry expires on its own");
    }
    tracing::info!("worker stopped");
    Ok(())
}

/// Lets running jobs finish (within the grace period, if one is set, and until `hurry`),
/// then cancels the rest (they are handed back) and waits for them.
async fn drain(shared: &Shared, mut running: JoinSet<()>, hurry: &CancellationToken) {
    if running.is_empty() {
        return;
    }
    let grace = shared.config.shutdown_grace;
    let grace_s = grace.map(|grace| grace.as_secs());
    tracing::info!(running = running.len(), grace_s, "worker draining: running jobs finish");
    let finished = tokio::select! {
        () = join_all(&mut running) => true,
        () = sleep_for(grace) => {
            tracing::warn!(running = running.len(), "grace period over: cancelling running jobs and handing them back");
            false
        }
        () = hurry.cancelled() => {
            tracing::warn!(running = running.len(), "asked again to stop: cancelling running jobs and handing them back");
            false
        }
    };
    if !finished {
        shared.stop_jobs.cancel();
        join_all(&mut running).await;
    }
}

/// Waits for every task of `running` (a panic outside a job is logged).
async fn join_all(running: &mut JoinSet<()>) {
    while let Some(finished) = running.join_next().await {
        report_panic(finished);
    }
}

/// Sleeps for `duration`, or for ever.
async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// What a worker needs from NATS before it fetches.
struct Opened {
    consumer: PullConsumer,
    /// KV `sluice-jobs`: the outputs of the jobs a job needs.
    job_records: jetstream::kv::Store,
    /// KV `sluice-workers`: the registry.
    workers: jetstream::kv::Store,
}

/// How far opening the pool got.
enum Step {
    Opened(Box<Opened>),
    /// No coordinator has set Sluice up yet: wait for one, however long.
    NotSetUp,
    /// Sluice is set up, and these are its pools; the worker's is not among them.
    Undeclared(BTreeSet<String>),
}

/// Opens the pool's consumer and the buckets, and checks the pool's live workers' kinds.
/// Waits while Sluice is not set up or NATS fails; waits at most `config.pool_wait` for an
/// undeclared pool. `None`: shut down while waiting.
async fn open(
    js: &jetstream::Context,
    config: &WorkerConfig,
    kinds: &[String],
    shutdown: &CancellationToken,
) -> Result<Option<Box<Opened>>, WorkerError> {
    let mut undeclared_since: Option<Instant> = None;
    let mut told_not_set_up = false;
    loop {
        let mut pause = Duration::from_millis(CONSUMER_OPEN_RETRY_PAUSE_MS);
        match try_open(js, config, kinds).await {
            Ok(Step::Opened(opened)) => return Ok(Some(opened)),
            Ok(Step::NotSetUp) => {
                if !std::mem::replace(&mut told_not_set_up, true) {
                    tracing::warn!("Sluice is not set up yet (has a coordinator started?); waiting");
                }
            }
            Ok(Step::Undeclared(pools)) => {
                let since = *undeclared_since.get_or_insert_with(|| {
                    tracing::warn!(pool = %config.pool, wait_ms = config.pool_wait.as_millis() as u64, "waiting for pool {} to be declared", config.pool);
                    Instant::now()
                });
                let waited = since.elapsed();
                if waited >= config.pool_wait {
                    return Err(WorkerError::Config(undeclared(&config.pool, &pools)));
                }
                pause = pause.min(config.pool_wait - waited);
            }
            Err(error) if error.is_retryable() => {
                tracing::warn!(%error, "cannot open the pool yet; retrying");
            }
            Err(error) => return Err(error),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn try_open(js: &jetstream::Context, config: &WorkerConfig, kinds: &[String]) -> Result<Step, WorkerError> {
    let Some(pools) = declared_pools(js).await? else { return Ok(Step::NotSetUp) };
    if !pools.contains(&config.pool) {
        return Ok(Step::Undeclared(pools));
    }
    let consumer = pool_consumer(js, &config.pool).await?;
    let bucket = |name: &'static str| async move {
        js.get_key_value(name).await.map_err(|error| WorkerError::nats(format!("opening KV {name}"), error))
    };
    let job_records = bucket(names::JOBS_BUCKET).await?;
    let workers = bucket(names::WORKERS_BUCKET).await?;
    let live = live_workers(&workers, &config.pool).await?;
    check_kinds(&config.pool, &config.worker_id, kinds, &live).map_err(WorkerError::Config)?;
    Ok(Step::Opened(Box::new(Opened { consumer, job_records, workers })))
}

/// Why a worker of an undeclared pool does not start, with the pools there are.
fn undeclared(pool: &str, pools: &BTreeSet<String>) -> String {
    let pools: Vec<&str> = pools.iter().map(String::as_str).collect();
    format!("pool `{pool}` is not declared: declare it with `sluice pool apply {pool}` (pools: {})", pools.join(", "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undeclared_pool_is_named_with_how_to_declare_it_and_the_pools_there_are() {
        let pools: BTreeSet<String> = ["default".to_owned(), "gpu".to_owned()].into();
        assert_eq!(
            undeclared("highmem", &pools),
            "pool `highmem` is not declared: declare it with `sluice pool apply highmem` (pools: default, gpu)"
        );
    }
}
