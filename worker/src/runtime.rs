//! The worker runtime: producer → executor → completer.
//!
//! - Producer ([`Producer`], started by [`run`]): fetches as many jobs as there are free slots and, while the jobs
//!   it runs are short (done within [`SHORT_JOB_MAX_MS`]), up to `prefetch` more, so the
//!   next short job is at hand when a slot frees up and fetches come in batches. None are
//!   fetched ahead while jobs run long, and a job fetched ahead that waits longer than
//!   [`FETCHED_WAIT_MAX_MS`] goes back to the pool as the same attempt, so a busy worker does
//!   not sit on work another could run.
//! - Executor ([`execute`]): reports the start, runs the job with its timeout and a
//!   cancellation token, keeps the message alive with in-progress acks, catches panics.
//! - Completer ([`complete`]): reports the outcome, then acks (success), NAKs with the retry
//!   delay (retryable, attempts left) or TERMs (final). The event is always durable before
//!   the ack, so the coordinator never misses an outcome.
//!
//! Shutdown: stop fetching, hand back anything fetched but not started (as the same
//! attempt: [`hand_back`]), let running jobs finish within the grace period, then cancel
//! the rest and hand them back (NAK, no delay: that attempt counts).
//!
//! [`SHORT_JOB_MAX_MS`]: crate::limits::SHORT_JOB_MAX_MS
//! [`FETCHED_WAIT_MAX_MS`]: crate::limits::FETCHED_WAIT_MAX_MS

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use chrono::Utc;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::truncate_error;
use sluice_proto::spawn::{CHILD_DEPTH_MAX, SPAWN_BATCH_MAX_BYTES, SpawnError, check_children, check_output, depth_of};
use sluice_proto::spec::check_name;
use sluice_proto::{
    ChildSpec, EventKind, JobEvent, JobMessage, JobRecord, RunId, SCHEMA_VERSION, SpawnBatch, decode, encode, names,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use crate::config::{NAK_DELAY_MAX_DEFAULT, WorkerConfig, default_prefetch};
pub use crate::error::WorkerError;
use crate::job::{JobContext, JobError, Output};
pub use crate::limits::CONCURRENCY_MAX;
use crate::limits::{
    CONSUMER_OPEN_RETRY_PAUSE_MS, EVENT_PUBLISH_BACKOFF_FIRST_MS, EVENT_PUBLISH_TRIES_MAX, FETCH_RETRY_PAUSE_MS,
    FETCH_WAIT_MAX_MS, FETCHED_WAIT_MAX_MS, PROGRESS_INTERVAL_MIN_MS, SHORT_JOB_MAX_MS, TIMEOUT_STOP_GRACE_MS,
};
use crate::logs::Shipper;
use crate::nats::pool_consumer;
use crate::registry::Registry;
use crate::stops::RunStops;

/// What every job task shares.
struct Shared {
    js: jetstream::Context,
    registry: Registry,
    config: WorkerConfig,
    /// In-progress acks are sent this often while a job runs.
    progress_interval: Duration,
    /// Cancelled when the shutdown grace period is over.
    stop_jobs: CancellationToken,
    /// Running jobs by run, for stopping a cancelled run's jobs.
    stops: RunStops,
    /// Job records, for the outputs of the jobs a job needs.
    job_records: jetstream::kv::Store,
    /// Whether the last job to finish was short (cleared, too, when a fetched job waits too
    /// long): only then are jobs fetched ahead.
    short_jobs: std::sync::atomic::AtomicBool,
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
        short_jobs: std::sync::atomic::AtomicBool::new(false),
    });
    let listener = tokio::spawn(listen_for_stops(shared.clone()));
    let mut producer = Producer {
        shared: shared.clone(),
        slots: Arc::new(Semaphore::new(shared.config.concurrency)),
        fetched: VecDeque::new(),
        running: JoinSet::new(),
        shutdown: shutdown.clone(),
    };
    producer.run(&consumer).await;
    let Producer { fetched, mut running, .. } = producer;
    for (_, message) in fetched {
        // Fetched but not started: hand it back at once.
        hand_back(&shared, &message).await;
    }
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
    listener.abort();
    tracing::info!("worker stopped");
    Ok(())
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

/// Fetches jobs and starts each on a free slot.
struct Producer {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    /// Fetched (when), waiting for a slot.
    fetched: VecDeque<(tokio::time::Instant, Message)>,
    running: JoinSet<()>,
    /// Once cancelled, nothing more starts.
    shutdown: CancellationToken,
}

impl Producer {
    async fn run(&mut self, consumer: &PullConsumer) {
        let shutdown = self.shutdown.clone();
        while !shutdown.is_cancelled() {
            self.start_fetched();
            while let Some(finished) = self.running.try_join_next() {
                report_panic(finished);
            }
            let room = self.room();
            if room > 0 {
                self.fetch(consumer, room).await;
                continue;
            }
            let overdue = self.overdue_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = sleep_until_some(overdue) => self.hand_back_overdue().await,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => self.start_one(permit),
                    Err(_) => return,
                },
            }
        }
    }

    /// One fetch of at most `room` jobs, starting each as soon as a slot is free.
    async fn fetch(&mut self, consumer: &PullConsumer, room: usize) {
        let mut batch = match consumer
            .batch()
            .max_messages(room)
            .expires(Duration::from_millis(FETCH_WAIT_MAX_MS))
            .messages()
            .await
        {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "fetching jobs failed; retrying");
                tokio::select! {
                    _ = self.shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(FETCH_RETRY_PAUSE_MS)) => {}
                }
                return;
            }
        };
        loop {
            let overdue = self.overdue_at();
            tokio::select! {
                biased;
                item = batch.next() => match item {
                    Some(Ok(message)) => {
                        self.fetched.push_back((tokio::time::Instant::now(), message));
                        self.start_fetched();
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "receiving jobs failed; retrying");
                        tokio::select! {
                            _ = self.shutdown.cancelled() => {}
                            _ = tokio::time::sleep(Duration::from_millis(FETCH_RETRY_PAUSE_MS)) => {}
                        }
                        return;
                    }
                    None => return,
                },
                permit = self.slots.clone().acquire_owned(), if !self.fetched.is_empty() && !self.shutdown.is_cancelled() => {
                    if let Ok(permit) = permit {
                        self.start_one(permit);
                    }
                }
                _ = sleep_until_some(overdue) => self.hand_back_overdue().await,
            }
        }
    }

    /// How long a fetched job may wait for a slot: [`FETCHED_WAIT_MAX_MS`], and never as long
    /// as the consumer's ack wait (it is handed back before JetStream would redeliver it).
    fn wait_max(&self) -> Duration {
        Duration::from_millis(FETCHED_WAIT_MAX_MS).min(self.shared.progress_interval)
    }

    /// When the oldest fetched job will have waited [`Producer::wait_max`].
    fn overdue_at(&self) -> Option<tokio::time::Instant> {
        self.fetched.front().map(|(at, _)| *at + self.wait_max())
    }

    /// The jobs in the slots run long: stop fetching ahead, and give back what waited too
    /// long so an idle worker can run it.
    async fn hand_back_overdue(&mut self) {
        self.shared.short_jobs.store(false, Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let wait_max = self.wait_max();
        while let Some((at, _)) = self.fetched.front()
            && *at + wait_max <= now
        {
            let Some((_, message)) = self.fetched.pop_front() else { break };
            hand_back(&self.shared, &message).await;
        }
    }

    /// How many jobs to fetch now. While jobs run long: one per free slot. While they are
    /// short: enough to fill the slots and the prefetch, but only once half of that is used
    /// up, so fetches come in batches (a pull request costs the nats-server about as much
    /// as a hundred messages' worth of fetching in a batch; `loadtest/profile/`).
    fn room(&self) -> usize {
        let free = self.slots.available_permits();
        if !self.shared.short_jobs.load(Ordering::Relaxed) || self.shared.config.prefetch == 0 {
            return free.saturating_sub(self.fetched.len());
        }
        let capacity = self.shared.config.concurrency + self.shared.config.prefetch;
        let held = (self.shared.config.concurrency - free) + self.fetched.len();
        // A free slot with nothing fetched for it always fetches.
        let refill = held * 2 <= capacity || (free > 0 && self.fetched.is_empty());
        if refill { capacity - held } else { 0 }
    }

    /// Starts fetched jobs while slots are free (none once shutting down).
    fn start_fetched(&mut self) {
        while !self.fetched.is_empty() && !self.shutdown.is_cancelled() {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => self.start_one(permit),
                Err(_) => return,
            }
        }
    }

    fn start_one(&mut self, permit: OwnedSemaphorePermit) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some((_, message)) = self.fetched.pop_front() else { return };
        let shared = self.shared.clone();
        self.running.spawn(async move {
            execute(&shared, message, permit).await;
        });
    }
}

fn report_panic(result: Result<(), tokio::task::JoinError>) {
    if let Err(error) = result {
        tracing::error!(%error, "a job task failed unexpectedly");
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

/// How one attempt ended, for the completer.
enum Outcome {
    Succeeded(Output, Vec<ChildSpec>),
    Failed(JobError),
    /// The worker is shutting down: give the job back without using up an attempt's delay.
    HandedBack,
    /// Its run was cancelled while it ran.
    Stopped,
}

/// Runs one delivery; `slot` is given back as soon as the work is done (storing the
/// outcome and confirming the ack do not hold a slot).
async fn execute(shared: &Shared, message: Message, slot: OwnedSemaphorePermit) {
    let slot = std::sync::Mutex::new(Some(slot));
    let delivered = message.info().map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX)).unwrap_or(1);
    let job: JobMessage = match decode(&message.payload) {
        Ok(job) => job,
        Err(error) => return undecodable(shared, &message, delivered, error.to_string()).await,
    };
    if shared.stops.is_stopped(&job.run_id) {
        let reporter = Reporter::new(shared, &job, job.attempt_offset.saturating_add(delivered), slot);
        return complete(&reporter, &message, Outcome::Stopped).await;
    }
    let attempt = job.attempt_offset.saturating_add(delivered);
    let reporter = Reporter::new(shared, &job, attempt, slot);
    let max_attempt = job.retry_base().saturating_add(job.retry.max_attempts);
    if attempt > max_attempt {
        let reason = format!(
            "attempt {attempt} exceeds max_attempts ({}): a worker stopped during attempt {} without reporting",
            job.retry.max_attempts,
            attempt - 1
        );
        return complete(&reporter, &message, Outcome::Failed(JobError::permanent(reason))).await;
    }
    let Some(kind) = shared.registry.get(&job.kind) else {
        let kinds: Vec<&str> = shared.registry.kinds().collect();
        let reason = format!(
            "unknown job kind `{}`: workers of pool `{}` serve {}",
            job.kind,
            shared.config.pool,
            kinds.join(", ")
        );
        return complete(&reporter, &message, Outcome::Failed(JobError::permanent(reason))).await;
    };
    // The start is stored while the job runs: its acknowledgement is awaited with the
    // outcome's. Sent before the work begins, so an execution whose worker dies once the
    // start has left the process is still on record.
    if let Err(error) = reporter.publish_start().await {
        tracing::warn!(%error, job = %job.job, "cannot report the start; handing the job back");
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    }
    let cancel = shared.stop_jobs.child_token();
    let Some(_registration) = shared.stops.register(job.run_id, cancel.clone()) else {
        return complete(&reporter, &message, Outcome::Stopped).await;
    };
    let inputs = match read_inputs(shared, &job).await {
        Ok(inputs) => inputs,
        Err(error) => return complete(&reporter, &message, Outcome::Failed(error)).await,
    };
    let shipper = Shipper::start(shared.js.clone(), job.run_id, job.job.clone(), attempt);
    let ctx = JobContext {
        run_id: job.run_id,
        workflow: job.workflow.clone(),
        job: job.job.clone(),
        attempt,
        generation: job.generation,
        params: job.params.clone(),
        command: job.command.clone(),
        permanent_exit_codes: job.permanent_exit_codes.clone(),
        worker_id: shared.config.worker_id.clone(),
        traceparent: header(&message, names::HEADER_TRACEPARENT),
        tracestate: header(&message, names::HEADER_TRACESTATE),
        inputs,
        cancel: cancel.clone(),
        children: Default::default(),
        logs: shipper.sink(),
    };
    tracing::info!(run = %job.run_id, job = %job.job, kind = %job.kind, attempt, "job started");
    let began = std::time::Instant::now();
    let perform = AssertUnwindSafe(kind.perform(&ctx, &job.window, &job.config)).catch_unwind();
    let keep_alive = async {
        let mut ticker = tokio::time::interval(shared.progress_interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Err(error) = message.ack_with(AckKind::Progress).await {
                tracing::warn!(%error, job = %job.job, "in-progress ack failed");
            }
        }
    };
    tokio::pin!(perform, keep_alive);
    let timeout = job.timeout_ms.map(Duration::from_millis).unwrap_or(Duration::MAX);
    let finished = tokio::select! {
        result = &mut perform => Some(result),
        _ = sleep_for(timeout) => None,
        _ = &mut keep_alive => unreachable!("the keep-alive loop never ends"),
    };
    let result = match finished {
        Some(result) => result,
        None => {
            // Let the job stop (exec: SIGTERM, then SIGKILL) before the attempt is reported.
            cancel.cancel();
            tokio::select! {
                _ = tokio::time::timeout(Duration::from_millis(TIMEOUT_STOP_GRACE_MS), &mut perform) => {}
                _ = &mut keep_alive => {}
            }
            Ok(Err(JobError::retryable(format!(
                "timed out after {}",
                sluice_proto::HumanDuration::from_duration(timeout)
            ))))
        }
    };
    shared.short_jobs.store(began.elapsed() < Duration::from_millis(SHORT_JOB_MAX_MS), Ordering::Relaxed);
    let outcome = match result {
        _ if shared.stops.is_stopped(&job.run_id) => Outcome::Stopped,
        _ if shared.stop_jobs.is_cancelled() => Outcome::HandedBack,
        Ok(Ok(output)) => Outcome::Succeeded(output, ctx.take_children()),
        Ok(Err(error)) => Outcome::Failed(error),
        Err(panic) => Outcome::Failed(JobError::retryable(format!("job panicked: {}", panic_text(&panic)))),
    };
    // The work is done: the slot may fetch the next job while this one's logs, children and
    // outcome are stored (its message is still acknowledged only after its outcome is).
    reporter.free_slot();
    shipper.finish().await;
    complete(&reporter, &message, outcome).await;
}

/// The outputs of the jobs `job` needs, from their records.
async fn read_inputs(shared: &Shared, job: &JobMessage) -> Result<BTreeMap<String, serde_json::Value>, JobError> {
    let mut inputs = BTreeMap::new();
    for need in &job.needs {
        let entry = shared.job_records.get(names::job_key(&job.run_id, need)).await.map_err(|error| {
            JobError::retryable(format!("reading the output of `{need}`, which this job needs: {error}"))
        })?;
        let record = entry.map(|bytes| decode::<JobRecord>(&bytes)).transpose().map_err(|error| {
            JobError::permanent(format!("the record of `{need}`, which this job needs, cannot be read: {error}"))
        })?;
        if let Some(output) = record.and_then(|record| record.output) {
            inputs.insert(need.clone(), output);
        }
    }
    Ok(inputs)
}

/// Checks what a successful attempt hands on and stores its children (before its event):
/// returns the output and how many children there are, or why the attempt fails after all.
async fn hand_on(
    reporter: &Reporter<'_>,
    output: Output,
    children: Vec<ChildSpec>,
) -> Result<(Option<serde_json::Value>, u32), JobError> {
    if let Some(value) = &output.value {
        check_output(value).map_err(JobError::permanent)?;
    }
    if children.is_empty() {
        return Ok((output.value, 0));
    }
    check_children(&children).map_err(|error| JobError::permanent(error.to_string()))?;
    if depth_of(&reporter.job.job) + 1 > CHILD_DEPTH_MAX {
        return Err(JobError::permanent(SpawnError::TooDeep.to_string()));
    }
    let job = reporter.job;
    let subject = names::spawn_subject(&job.run_id, &job.job, job.generation, reporter.attempt);
    let mut acks = Vec::new();
    let mut batch = SpawnBatch {
        schema_version: SCHEMA_VERSION,
        run_id: job.run_id,
        job: job.job.clone(),
        attempt: reporter.attempt,
        generation: job.generation,
        children: Vec::new(),
    };
    let count = u32::try_from(children.len()).unwrap_or(u32::MAX);
    let mut bytes = 0;
    let total = children.len();
    for (index, child) in children.into_iter().enumerate() {
        // JSON is longer than MessagePack: a safe estimate of the batch's size.
        bytes += serde_json::to_vec(&child).map(|encoded| encoded.len()).unwrap_or(0);
        batch.children.push(child);
        if bytes >= SPAWN_BATCH_MAX_BYTES / 2 || index + 1 == total {
            let payload = encode(&batch).map_err(|error| JobError::permanent(error.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert(names::HEADER_MSG_ID, format!("{subject}.{}", acks.len()).as_str());
            let ack = reporter
                .shared
                .js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(|error| JobError::retryable(format!("storing the children: {error}")))?;
            acks.push(ack);
            batch.children.clear();
            bytes = 0;
        }
    }
    for ack in acks {
        ack.await.map_err(|error| JobError::retryable(format!("storing the children: {error}")))?;
    }
    Ok((output.value, count))
}

/// A header's value as text, if the message has it.
fn header(message: &Message, name: &str) -> Option<String> {
    message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.as_str().to_owned())
}

/// `tokio::time::sleep` that accepts "for ever".
async fn sleep_for(duration: Duration) {
    match tokio::time::Instant::now().checked_add(duration) {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

/// How a failed attempt is reported and settled: retried after its delay while attempts
/// are left and the error is retryable, else final.
fn failure(
    reporter: &Reporter<'_>,
    error: JobError,
    now: chrono::DateTime<Utc>,
) -> (EventKind, Option<String>, Option<chrono::DateTime<Utc>>, Settle) {
    let job = reporter.job;
    let in_series = reporter.attempt.saturating_sub(job.retry_base());
    if !(error.retryable && job.retry.allows_another_after(in_series)) {
        return (EventKind::Failed, Some(error.message), None, Settle::Term);
    }
    let delay = job.retry.delay_after(in_series, rand::rng().random::<f64>());
    let retry_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
    let settle = if delay <= reporter.shared.config.nak_delay_max {
        Settle::Nak(Some(delay))
    } else {
        Settle::Schedule(retry_at, delay)
    };
    (EventKind::Failed, Some(error.message), Some(retry_at), settle)
}

async fn complete(reporter: &Reporter<'_>, message: &Message, outcome: Outcome) {
    let job = reporter.job;
    let now = Utc::now();
    let mut handed = (None, 0);
    let (kind, error, retry_at, settle) = match outcome {
        Outcome::Stopped => {
            // The run was cancelled: the coordinator already wrote the job off.
            tracing::info!(run = %job.run_id, job = %job.job, "job stopped: its run was cancelled");
            if let Err(error) = message.ack().await {
                tracing::warn!(%error, job = %job.job, "acknowledging a stopped job failed");
            }
            return;
        }
        Outcome::Succeeded(output, children) => match hand_on(reporter, output, children).await {
            Ok(handed_on) => {
                handed = handed_on;
                (EventKind::Succeeded, None, None, Settle::Ack)
            }
            Err(error) => failure(reporter, error, now),
        },
        Outcome::HandedBack => {
            let reason = "handed back: the worker shut down before the job finished".to_owned();
            (EventKind::Failed, Some(reason), Some(now), Settle::Nak(None))
        }
        Outcome::Failed(error) => failure(reporter, error, now),
    };
    let settle = match settle {
        Settle::Schedule(at, delay) => match schedule_retry(reporter, message, at).await {
            Ok(()) => Settle::Ack,
            Err(error) => {
                tracing::warn!(%error, job = %job.job, "cannot schedule the retry; waiting it out with a NAK delay");
                Settle::Nak(Some(delay))
            }
        },
        other => other,
    };
    tracing::info!(run = %job.run_id, job = %job.job, attempt = reporter.attempt, outcome = kind.as_str(), error = error.as_deref().unwrap_or(""), "job finished");
    reporter.free_slot();
    let (output, spawned) = handed;
    if let Err(publish_error) = reporter.publish_with(kind, error, retry_at, output, spawned).await {
        // Without the event the coordinator cannot move on: let JetStream redeliver.
        tracing::error!(error = %publish_error, job = %job.job, "cannot report the outcome; the job will be redelivered");
        return;
    }
    reporter.confirm_start().await;
    // Not confirmed: a lost ack only brings the message back after its ack wait, and the
    // coordinator ignores the repeated attempt's outcome (its event is already stored).
    let acked = match settle {
        Settle::Ack => message.ack().await,
        Settle::Nak(delay) => message.ack_with(AckKind::Nak(delay)).await,
        Settle::Term | Settle::Schedule(..) => message.ack_with(AckKind::Term).await,
    };
    if let Err(error) = acked {
        tracing::warn!(%error, job = %job.job, "acknowledging the job failed; it may be delivered again");
    }
}

/// What becomes of a job's message once its event is durable.
enum Settle {
    /// Done (or re-published as a scheduled retry): remove it.
    Ack,
    /// Redeliver after the delay (short delays only: a NAK-delayed message counts as
    /// pending work and keeps an autoscaled pool awake).
    Nak(Option<Duration>),
    /// Re-publish as a JetStream message schedule due at this time, then remove it.
    Schedule(chrono::DateTime<Utc>, Duration),
    /// Final: remove it without success.
    Term,
}

/// Re-publishes the job as a message schedule on `sluice.retries.…` that JetStream turns
/// into a job message when due; it counts as nobody's pending work until then. The copy
/// carries `attempt_offset` = this attempt, so its first delivery is the next attempt, and
/// keeps `retry_base`, so the policy still counts the whole series.
async fn schedule_retry(
    reporter: &Reporter<'_>,
    message: &Message,
    at: chrono::DateTime<Utc>,
) -> Result<(), WorkerError> {
    let job = reporter.job;
    let next = copy_in_series(job, reporter.attempt);
    let payload = encode(&next).map_err(|error| WorkerError::encode("encoding a scheduled retry", error))?;
    let mut headers = copy_headers(message, &next);
    // `@at` takes whole seconds: round up, never fire early.
    let whole_seconds = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
    let due = chrono::DateTime::from_timestamp(whole_seconds, 0).unwrap_or(at);
    let schedule = format!("@at {}", due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    headers.insert(names::HEADER_SCHEDULE, schedule.as_str());
    headers.insert(names::HEADER_SCHEDULE_TARGET, names::job_subject(&job.pool, &job.run_id, &job.job).as_str());
    let subject = names::retry_subject(&job.pool, &job.run_id, &job.job);
    let ack = reporter.shared.js.publish_with_headers(subject, headers, payload.into()).await;
    ack.map_err(|error| WorkerError::nats("scheduling a retry", error))?
        .await
        .map_err(|error| WorkerError::nats("scheduling a retry", error))?;
    Ok(())
}

/// A copy of `job` for a later dispatch of the same series: its first delivery is attempt
/// `attempt_offset + 1`, and the retry policy still counts from the series' start.
fn copy_in_series(job: &JobMessage, attempt_offset: u32) -> JobMessage {
    let mut copy = job.clone();
    copy.retry_base = Some(job.retry_base());
    copy.attempt_offset = attempt_offset;
    copy
}

/// Headers for a copy of `message` (fresh: the original `Nats-Msg-Id` would make JetStream
/// drop the copy as a duplicate), keeping its trace context.
fn copy_headers(message: &Message, copy: &JobMessage) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in names::job_headers(&copy.run_id, &copy.job, copy.generation, copy.attempt_offset) {
        headers.insert(name, value.as_ref());
    }
    for name in [names::HEADER_TRACEPARENT, names::HEADER_TRACESTATE] {
        if let Some(value) = header(message, name) {
            headers.insert(name, value.as_str());
        }
    }
    headers
}

/// Gives a job that was fetched but never started back to its pool without using up an
/// attempt (a NAK would: the attempt is the delivery count): a copy whose first delivery is
/// the same attempt is stored, then this delivery is terminated. The copy is stored only if
/// this message is still the job's latest (`Nats-Expected-Last-Subject-Sequence`), so a job
/// whose run was cancelled (its messages withdrawn) or dispatched again does not come back.
/// If the copy cannot be stored for another reason, the delivery is NAKed (the job still
/// runs, one attempt later).
async fn hand_back(shared: &Shared, message: &Message) {
    let Ok(info) = message.info() else {
        let _ = message.ack_with(AckKind::Nak(None)).await;
        return;
    };
    let (sequence, delivered) = (info.stream_sequence, u32::try_from(info.delivered).unwrap_or(u32::MAX));
    // Ok(true): stored; Ok(false): refused, the job was withdrawn or dispatched again.
    let stored = async {
        let job: JobMessage = decode(&message.payload).map_err(|error| format!("reading the job: {error}"))?;
        let attempt = job.attempt_offset.saturating_add(delivered);
        let copy = copy_in_series(&job, attempt.saturating_sub(1));
        let mut headers = copy_headers(message, &copy);
        headers.insert(names::HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE, sequence.to_string().as_str());
        let payload = encode(&copy).map_err(|error| format!("encoding the copy: {error}"))?;
        let subject = names::job_subject(&job.pool, &job.run_id, &job.job);
        let ack = shared.js.publish_with_headers(subject, headers, payload.into()).await;
        match ack.map_err(|error| error.to_string())?.await {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => Ok(false),
            Err(error) => Err(error.to_string()),
        }
    }
    .await;
    let settled = match stored {
        Ok(_) => message.ack_with(AckKind::Term).await,
        Err(error) => {
            tracing::warn!(%error, "cannot hand back a job as it was; it returns as its next attempt");
            message.ack_with(AckKind::Nak(None)).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%error, "settling a handed-back job failed; it returns after its ack wait");
    }
}

/// `sleep_until` a time, or never.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// A job message that cannot be decoded: report it against the run and job named in its
/// headers (if any), then TERM it so it is not redelivered for ever.
async fn undecodable(shared: &Shared, message: &Message, delivered: u32, reason: String) {
    let run_id = header(message, names::HEADER_RUN_ID).and_then(|text| text.parse::<RunId>().ok());
    // A child's path is names joined by dots: each part must be a valid name.
    let job =
        header(message, names::HEADER_JOB).filter(|job| job.split('.').all(|part| check_name("job", part).is_ok()));
    let number = |name: &str| header(message, name).and_then(|text| text.parse::<u32>().ok()).unwrap_or(0);
    let (generation, offset) = (number(names::HEADER_GENERATION), number(names::HEADER_ATTEMPT_OFFSET));
    tracing::error!(subject = %message.subject, %reason, "job message cannot be decoded");
    if let (Some(run_id), Some(job)) = (run_id, job) {
        let event = event(
            run_id,
            &job,
            offset.saturating_add(delivered),
            generation,
            EventKind::Failed,
            &shared.config.worker_id,
            Some(format!("job message cannot be decoded: {reason}")),
            None,
        );
        if let Err(error) = publish_event(&shared.js, &event).await {
            tracing::error!(%error, "cannot report the undecodable job; it will be redelivered");
            return;
        }
    } else if let Err(error) = raw_dead_letter(shared, message, &reason).await {
        // No run to report to: the raw bytes go to the dead-letter stream, or stay here.
        tracing::error!(%error, "cannot dead-letter the undecodable job; it will be redelivered");
        return;
    }
    let _ = message.ack_with(AckKind::Term).await;
}

/// Keeps a job message nobody can read in the dead-letter stream, as it came, with the
/// reason and its subject in headers (`sluice dlq list` shows it).
async fn raw_dead_letter(shared: &Shared, message: &Message, reason: &str) -> Result<(), WorkerError> {
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_REASON, format!("job message cannot be decoded: {reason}").as_str());
    headers.insert(names::HEADER_ORIGINAL_SUBJECT, message.subject.as_str());
    let subject = names::dlq_subject(&shared.config.pool);
    let ack = shared.js.publish_with_headers(subject, headers, message.payload.clone()).await;
    ack.map_err(|error| WorkerError::nats("dead-lettering an undecodable job", error))?
        .await
        .map_err(|error| WorkerError::nats("dead-lettering an undecodable job", error))?;
    Ok(())
}

struct Reporter<'a> {
    shared: &'a Shared,
    job: &'a JobMessage,
    attempt: u32,
    /// The worker slot this attempt holds, given back once its work is done.
    slot: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    /// The start event's acknowledgement, awaited with the outcome's.
    started: tokio::sync::Mutex<Option<jetstream::context::PublishAckFuture>>,
    /// When this attempt began, for its outcome event (so the start time is known even if
    /// the start event was lost).
    began: chrono::DateTime<Utc>,
}

impl<'a> Reporter<'a> {
    fn new(
        shared: &'a Shared,
        job: &'a JobMessage,
        attempt: u32,
        slot: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
    ) -> Self {
        Self { shared, job, attempt, slot, started: tokio::sync::Mutex::new(None), began: Utc::now() }
    }

    fn free_slot(&self) {
        drop(self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }

    /// Publishes the start without waiting for JetStream to store it.
    async fn publish_start(&self) -> Result<(), WorkerError> {
        let job = self.job;
        let event = event(
            job.run_id,
            &job.job,
            self.attempt,
            job.generation,
            EventKind::Started,
            &self.shared.config.worker_id,
            None,
            None,
        );
        let payload = encode(&event).map_err(|error| WorkerError::encode("encoding an event", error))?;
        let mut headers = HeaderMap::new();
        let id = names::event_id(&event.run_id, &event.job, event.attempt, event.generation, "started");
        headers.insert(names::HEADER_MSG_ID, id.as_str());
        let ack = self
            .shared
            .js
            .publish_with_headers(names::event_subject(&event.run_id, &event.job), headers, payload.into())
            .await
            .map_err(|error| WorkerError::nats("publishing a start event", error))?;
        *self.started.lock().await = Some(ack);
        Ok(())
    }

    /// Waits for the start event to be stored (it was published first, on the same
    /// connection, so it is stored before the outcome); a lost start only costs `status`
    /// the attempt's start time.
    async fn confirm_start(&self) {
        if let Some(ack) = self.started.lock().await.take()
            && let Err(error) = ack.await
        {
            tracing::warn!(%error, job = %self.job.job, "the start event was not stored");
        }
    }

    async fn publish_with(
        &self,
        kind: EventKind,
        error: Option<String>,
        retry_at: Option<chrono::DateTime<Utc>>,
        output: Option<serde_json::Value>,
        spawned: u32,
    ) -> Result<(), WorkerError> {
        let job = self.job;
        let mut event = event(
            job.run_id,
            &job.job,
            self.attempt,
            job.generation,
            kind,
            &self.shared.config.worker_id,
            error,
            retry_at,
        );
        event.output = output;
        event.spawned = spawned;
        event.started_at = Some(self.began);
        publish_event(&self.shared.js, &event).await
    }
}

#[allow(clippy::too_many_arguments)]
fn event(
    run_id: RunId,
    job: &str,
    attempt: u32,
    generation: u32,
    kind: EventKind,
    worker: &str,
    error: Option<String>,
    retry_at: Option<chrono::DateTime<Utc>>,
) -> JobEvent {
    JobEvent {
        schema_version: SCHEMA_VERSION,
        run_id,
        job: job.to_owned(),
        attempt,
        generation,
        kind,
        at: Utc::now(),
        worker: worker.to_owned(),
        error: error.map(|text| truncate_error(&text, ERROR_TEXT_MAX_BYTES)),
        retry_at,
        output: None,
        spawned: 0,
        started_at: None,
    }
}

/// Publishes an event and waits until it is durable, retrying a few times; the
/// `Nats-Msg-Id` makes a retry that raced a late ack harmless.
async fn publish_event(js: &jetstream::Context, event: &JobEvent) -> Result<(), WorkerError> {
    let payload = encode(event).map_err(|error| WorkerError::encode("encoding an event", error))?;
    let subject = names::event_subject(&event.run_id, &event.job);
    let id = names::event_id(&event.run_id, &event.job, event.attempt, event.generation, event.kind.as_str());
    let mut delay = Duration::from_millis(EVENT_PUBLISH_BACKOFF_FIRST_MS);
    let mut tries = 0;
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(names::HEADER_MSG_ID, id.as_str());
        let result = async {
            js.publish_with_headers(subject.clone(), headers, payload.clone().into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        }
        .await;
        match result {
            Ok(_) => return Ok(()),
            Err(error) if tries + 1 >= EVENT_PUBLISH_TRIES_MAX => {
                return Err(WorkerError::nats(format!("publishing a {} event", event.kind.as_str()), error));
            }
            Err(error) => tracing::warn!(%error, "publishing an event failed; retrying"),
        }
        tries += 1;
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}
