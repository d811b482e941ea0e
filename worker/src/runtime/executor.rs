//! The executor: runs one attempt of a job and returns how it ended as one [`Attempt`].
//!
//! It settles nothing: acks, NAKs and events are the completer's work.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::Message;
use futures::FutureExt;
use sluice_proto::limits::WORKER_ENTRY_TTL_MS;
use sluice_proto::{
    ChildSpec, CodecError, HumanDuration, JobMessage, JobRecord, SCHEMA_VERSION, TraceParent, decode, names,
};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::announce::entry_key;
use super::delivery::{delivered, header, keep_alive};
use super::producer::FetchPolicy;
use super::redelivery::{Plan, batch_waiting, on_record, plan};
use super::reporter::Reporter;
use crate::job::{Job, JobContext, JobError, Output};
use crate::limits::{BATCH_WAITING_RECHECK_MS, TIMEOUT_STOP_GRACE_MS};
use crate::logs::{LogSink, Shipper};

/// How one delivery ended: the executor's only result, and the completer's only input.
pub(crate) enum Attempt {
    /// The message cannot be decoded: nothing ran.
    Undecodable { delivered: u32, reason: String },
    /// The job is of a newer schema than this build reads (`schema_version` = `version`):
    /// nothing ran, and it goes back untouched for a worker that reads it.
    NewerSchema { version: u32 },
    /// A redelivery of `job` that this worker is running still: nothing to do here.
    Held { job: String },
    /// A redelivery of `job` whose last attempt's outcome may still come from `worker`: it
    /// comes back after `delay` (see [`Deferral`]).
    Deferred { job: String, worker: String, why: Deferral },
    /// A redelivery of `job` whose outcome is stored already (`why`): nothing ran again.
    Ended { job: String, why: String },
    /// The job was read; `outcome` says how its attempt ended. (Boxed: the attempt is
    /// moved between executor and completer, and the job message is large.)
    Read { reporter: Box<Reporter>, outcome: Outcome },
}

/// How an attempt of a job that was read ended.
pub(crate) enum Outcome {
    /// The work succeeded; its output and children are still to be checked and stored.
    Succeeded(Output, Vec<ChildSpec>),
    /// The work failed (or could not start: attempts over, inputs unreadable, a timeout).
    Failed(JobError),
    /// No kind of that name is registered here: the reason names the kinds that are.
    UnknownKind(String),
    /// The start could not be stored before the worker's grace ran out: nothing ran, and
    /// the delivery goes back as it came.
    Unreported,
    /// The worker is shutting down: give the job back without using up an attempt's delay.
    HandedBack,
    /// Its run was cancelled before or while it ran.
    Stopped,
}

/// Runs one delivery; `slot` is given back as soon as the work is done (storing the
/// outcome and confirming the ack do not hold a slot).
pub(crate) async fn execute(shared: &Arc<Shared>, message: &Message, slot: OwnedSemaphorePermit) -> Attempt {
    let delivered = delivered(message);
    let job: JobMessage = match decode(&message.payload) {
        Ok(job) => job,
        Err(error) => return unreadable(delivered, error),
    };
    let Some(holding) = shared.held.hold(&job) else {
        // JetStream redelivered a job this worker is still on (its in-progress acks did not
        // arrive, e.g. during an outage): the attempt here settles the message.
        return Attempt::Held { job: job.job };
    };
    // A first delivery is the attempt after the offset, its start pipelined with the work; a
    // redelivery's attempt comes from what is on record, and is stored before it runs.
    let (attempt, start) = if delivered <= 1 {
        (job.attempt_offset.saturating_add(1), Start::Pipelined)
    } else {
        match redelivered(shared, message, &job).await {
            Some(Plan::Run { attempt, open: Some(worker) }) => match deferral(shared, &worker).await {
                Some(why) => return Attempt::Deferred { job: job.job, worker, why },
                None => (attempt, Start::Stored),
            },
            Some(Plan::Run { attempt, .. }) => (attempt, Start::Stored),
            Some(Plan::Ended { why }) => return Attempt::Ended { job: job.job, why },
            // Shut down while the records could not be read: back as it came.
            None => (job.attempt_offset.saturating_add(1), Start::GiveBack),
        }
    };
    let traceparent = header(message, names::HEADER_TRACEPARENT).and_then(|text| TraceParent::parse(&text));
    let reporter = Box::new(Reporter::new(shared.clone(), job, attempt, slot, holding, traceparent));
    let outcome = match start {
        Start::GiveBack => Outcome::Unreported,
        start => run_attempt(shared, message, &reporter, start).await,
    };
    Attempt::Read { reporter, outcome }
}

/// Why a redelivered job whose last attempt (by `worker`) started and has no outcome on
/// record is not run yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Deferral {
    /// `worker` is another live worker of the pool: an outage kept its in-progress acks and
    /// its report back, and it reports once it can.
    Alive,
    /// `worker` has an event batch the coordinator has not applied yet: the attempt's
    /// outcome may be in it (a batched outcome is not on the job's subject).
    BatchWaiting,
}

impl Deferral {
    /// How long the job waits before it is offered again: until a live worker's registry
    /// entry would have expired (it has reported by then, or it died); a batch is applied as
    /// soon as the coordinator gets to it.
    pub(crate) fn delay(self) -> Duration {
        match self {
            Self::Alive => Duration::from_millis(WORKER_ENTRY_TTL_MS),
            Self::BatchWaiting => Duration::from_millis(BATCH_WAITING_RECHECK_MS),
        }
    }
}

/// Whether running the job here could run an attempt twice: `worker`, which started the
/// job's last attempt and has not reported it, is alive, or its report may be in a batch the
/// coordinator has not applied.
async fn deferral(shared: &Shared, worker: &str) -> Option<Deferral> {
    if worker != shared.config.worker_id {
        match shared.workers.get(entry_key(&shared.config.pool, worker)).await {
            Ok(Some(_)) => return Some(Deferral::Alive),
            Ok(None) => {}
            // Unknown: running it is the safe side (a second execution is on record).
            Err(error) => tracing::warn!(%error, worker, "cannot tell whether a worker is alive; running its job here"),
        }
    }
    match batch_waiting(&shared.js, &shared.config.pool, worker).await {
        Ok(false) => None,
        Ok(true) => Some(Deferral::BatchWaiting),
        Err(error) => {
            tracing::warn!(%error, worker, "cannot tell whether the worker has an event batch waiting; the job waits");
            Some(Deferral::BatchWaiting)
        }
    }
}

/// How an attempt's start is put on record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Published as the work begins, its storing awaited with the outcome's.
    Pipelined,
    /// Stored before the work begins.
    Stored,
    /// Not at all: the delivery goes back untouched.
    GiveBack,
}

/// What the records say of a redelivered job, read however long NATS fails (the message
/// kept alive meanwhile); `None` when the worker's grace ran out first.
async fn redelivered(shared: &Shared, message: &Message, job: &JobMessage) -> Option<Plan> {
    let reading = async {
        let mut pause = Duration::from_millis(crate::limits::EVENT_PUBLISH_BACKOFF_FIRST_MS);
        loop {
            match on_record(&shared.js, &shared.job_records, job).await {
                Ok((last, record)) => return Some(plan(job, last.as_ref(), record.as_ref())),
                Err(error) => {
                    tracing::warn!(%error, job = %job.job, "cannot read a redelivered job's records; retrying")
                }
            }
            tokio::select! {
                _ = shared.stop_jobs.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(crate::limits::EVENT_PUBLISH_BACKOFF_MAX_MS));
        }
    };
    tokio::pin!(reading);
    tokio::select! {
        plan = &mut reading => plan,
        _ = keep_alive(shared.progress_interval, message, &job.job) => unreachable!("the keep-alive loop never ends"),
    }
}

/// A delivery whose job cannot be read: one of a newer schema than
/// [`SCHEMA_VERSION`] is not this worker's to judge; anything else is undecodable.
pub(crate) fn unreadable(delivered: u32, error: CodecError) -> Attempt {
    match error {
        CodecError::UnsupportedVersion { found, .. } if found > SCHEMA_VERSION => {
            Attempt::NewerSchema { version: found }
        }
        error => Attempt::Undecodable { delivered, reason: error.to_string() },
    }
}

/// Checks that the attempt may run, reports its start, runs it and ships its logs.
async fn run_attempt(shared: &Shared, message: &Message, reporter: &Reporter, start: Start) -> Outcome {
    let (job, attempt) = (&reporter.job, reporter.attempt);
    if shared.stops.is_stopped(&job.run_id) {
        return Outcome::Stopped;
    }
    if let Some(reason) = attempts_over(job, attempt) {
        return Outcome::Failed(JobError::permanent(reason));
    }
    let Some(kind) = shared.registry.get(&job.kind) else {
        return Outcome::UnknownKind(unknown_kind(shared, job));
    };
    // A first delivery's start is stored while the job runs (its acknowledgement is awaited
    // with the outcome's), sent before the work begins, so an execution whose worker dies
    // once the start has left the process is on record. A redelivery's, or one that cannot
    // be sent, is stored first.
    let pipelined = start == Start::Pipelined
        && match reporter.publish_start().await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, job = %job.job, "cannot send the start; storing it before the job runs");
                false
            }
        };
    if !pipelined && let Err(error) = reporter.store_start(message).await {
        tracing::warn!(%error, job = %job.job, "the start was not stored; handing the job back");
        return Outcome::Unreported;
    }
    let cancel = shared.stop_jobs.child_token();
    let Some(_registration) = shared.stops.register(job.run_id, cancel.clone()) else {
        return Outcome::Stopped;
    };
    let inputs = match read_inputs(shared, job).await {
        Ok(inputs) => inputs,
        Err(error) => return Outcome::Failed(error),
    };
    let shipper = Shipper::start(shared.js.clone(), &shared.config.pool, job.run_id, job.job.clone(), attempt);
    let ctx = context(shared, message, reporter, inputs, cancel, shipper.sink());
    tracing::info!(run = %job.run_id, job = %job.job, kind = %job.kind, attempt, "job started");
    let began = std::time::Instant::now();
    let result = perform(shared, message, job, kind.as_ref(), &ctx).await;
    shared.short_jobs.store(FetchPolicy::is_short(began.elapsed()), Ordering::Relaxed);
    let outcome = outcome_of(shared, job, result, &ctx);
    // The work is done: the slot may fetch the next job while this one's logs, children and
    // outcome are stored (its message is still acknowledged only after its outcome is).
    reporter.free_slot();
    shipper.finish().await;
    outcome
}

/// Why attempt `attempt` may not run: past `max_attempts`, which only a worker that
/// stopped mid-attempt without reporting leads to.
fn attempts_over(job: &JobMessage, attempt: u32) -> Option<String> {
    let max_attempt = job.retry_base().saturating_add(job.retry.max_attempts);
    (attempt > max_attempt).then(|| {
        format!(
            "attempt {attempt} exceeds max_attempts ({}): a worker stopped during attempt {} without reporting",
            job.retry.max_attempts,
            attempt - 1
        )
    })
}

fn unknown_kind(shared: &Shared, job: &JobMessage) -> String {
    let kinds: Vec<&str> = shared.registry.kinds().collect();
    format!("unknown job kind `{}`: workers of pool `{}` serve {}", job.kind, shared.config.pool, kinds.join(", "))
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

fn context(
    shared: &Shared,
    message: &Message,
    reporter: &Reporter,
    inputs: BTreeMap<String, serde_json::Value>,
    cancel: CancellationToken,
    logs: LogSink,
) -> JobContext {
    let job = &reporter.job;
    JobContext {
        run_id: job.run_id,
        workflow: job.workflow.clone(),
        job: job.job.clone(),
        attempt: reporter.attempt,
        generation: job.generation,
        params: job.params.clone(),
        command: job.command.clone(),
        permanent_exit_codes: job.permanent_exit_codes.clone(),
        worker_id: shared.config.worker_id.clone(),
        traceparent: reporter.traceparent(),
        tracestate: header(message, names::HEADER_TRACESTATE),
        inputs,
        pool: shared.config.pool.clone(),
        timeout: job.timeout_ms.map(Duration::from_millis),
        image: job.image.clone(),
        resources: job.resources.clone(),
        env: job.env.clone(),
        cancel,
        children: Default::default(),
        earlier: reporter.earlier.clone(),
        logs,
    }
}

/// The job's result (`Err`: it panicked), within its timeout, while in-progress acks keep
/// its message alive. A timed-out job is cancelled and given [`TIMEOUT_STOP_GRACE_MS`] to
/// stop (exec: SIGTERM to its process group, then SIGKILL) before the attempt is reported.
async fn perform(
    shared: &Shared,
    message: &Message,
    job: &JobMessage,
    kind: &dyn Job,
    ctx: &JobContext,
) -> std::thread::Result<Result<Output, JobError>> {
    let perform = AssertUnwindSafe(kind.perform(ctx, &job.window, &job.config)).catch_unwind();
    let keep_alive = keep_alive(shared.progress_interval, message, &job.job);
    tokio::pin!(perform, keep_alive);
    let timeout = job.timeout_ms.map(Duration::from_millis).unwrap_or(Duration::MAX);
    tokio::select! {
        result = &mut perform => return result,
        _ = sleep_for(timeout) => {}
        _ = &mut keep_alive => unreachable!("the keep-alive loop never ends"),
    }
    ctx.cancel.cancel();
    tokio::select! {
        _ = tokio::time::timeout(Duration::from_millis(TIMEOUT_STOP_GRACE_MS), &mut perform) => {}
        _ = &mut keep_alive => {}
    }
    Ok(Err(JobError::retryable(format!("timed out after {}", HumanDuration::from_duration(timeout)))))
}

/// What the job's result means, given what happened around it meanwhile.
fn outcome_of(
    shared: &Shared,
    job: &JobMessage,
    result: std::thread::Result<Result<Output, JobError>>,
    ctx: &JobContext,
) -> Outcome {
    match result {
        _ if shared.stops.is_stopped(&job.run_id) => Outcome::Stopped,
        _ if shared.stop_jobs.is_cancelled() => Outcome::HandedBack,
        Ok(Ok(output)) => Outcome::Succeeded(output, ctx.take_children()),
        Ok(Err(error)) => Outcome::Failed(error),
        Err(panic) => Outcome::Failed(JobError::retryable(format!("job panicked: {}", panic_text(&panic)))),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_of_a_newer_schema_is_handed_back_not_judged_undecodable() {
        let newer = CodecError::UnsupportedVersion { what: "job message", found: SCHEMA_VERSION + 1 };
        assert!(matches!(unreadable(3, newer), Attempt::NewerSchema { version } if version == SCHEMA_VERSION + 1));
    }

    #[test]
    fn a_job_of_no_schema_or_unreadable_bytes_is_undecodable() {
        let zero = CodecError::UnsupportedVersion { what: "job message", found: 0 };
        assert!(
            matches!(unreadable(2, zero), Attempt::Undecodable { delivered: 2, reason } if reason.contains("schema_version 0"))
        );
        let Err(garbage) = decode::<JobMessage>(b"\xc1") else { panic!("0xc1 is not MessagePack") };
        assert!(matches!(unreadable(1, garbage), Attempt::Undecodable { delivered: 1, .. }));
    }
}
