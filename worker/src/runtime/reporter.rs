//! Publishing an attempt's events: its start (pipelined on a first delivery, stored first on
//! a redelivery) and its outcome (stored before the message is settled; in the worker's next
//! event batch, `batcher.rs`, when its message is then removed and its coordinator reads
//! batches).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Message, context::PublishAckFuture};
use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::truncate_error;
use sluice_proto::trace::{AttributeValue, Span};
use sluice_proto::{EarlierAttempt, EventKind, JobEvent, JobMessage, TraceParent, encode, names};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::batcher::Stored;
use super::delivery::keep_alive;
use super::held::Holding;
use crate::error::WorkerError;
use crate::limits::{EVENT_PUBLISH_BACKOFF_FIRST_MS, EVENT_PUBLISH_BACKOFF_MAX_MS};

/// One attempt of a job: what its events say, and the worker slot it holds.
pub(crate) struct Reporter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) job: JobMessage,
    pub(crate) attempt: u32,
    /// The worker slot this attempt holds, given back once its work is done.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    /// The start event's acknowledgement, awaited with the outcome's.
    started: tokio::sync::Mutex<Option<PublishAckFuture>>,
    /// When this attempt began, for its outcome event (so the start time is known even if
    /// the start event was lost).
    began: DateTime<Utc>,
    /// What the job found of earlier attempts ([`crate::JobContext::report_earlier_attempt`]).
    pub(crate) earlier: Arc<Mutex<Vec<EarlierAttempt>>>,
    /// The job's span (from the message) and this attempt's, under it: what the job sees
    /// as its `TRACEPARENT`, and the span emitted when the attempt ends.
    pub(crate) trace: Option<AttemptTrace>,
    /// The job is held by this worker until its message is settled.
    _holding: Holding,
}

/// What an outcome event says besides its kind.
pub(crate) struct Report {
    pub(crate) error: Option<String>,
    pub(crate) retry_at: Option<DateTime<Utc>>,
    /// The retry is the coordinator's to schedule (the message is acked).
    pub(crate) schedule_retry: bool,
    pub(crate) output: Option<serde_json::Value>,
    pub(crate) spawned: u32,
}

/// An attempt's place in its run's trace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttemptTrace {
    /// The job's span, as the message's `traceparent` names it.
    pub(crate) job: TraceParent,
    /// This attempt's span: a child of the job's, new for each delivery (a redelivery is an
    /// attempt span of its own).
    pub(crate) attempt: TraceParent,
}

impl Reporter {
    pub(crate) fn new(
        shared: Arc<Shared>,
        job: JobMessage,
        attempt: u32,
        slot: OwnedSemaphorePermit,
        holding: Holding,
        traceparent: Option<TraceParent>,
    ) -> Self {
        let (slot, started) = (Mutex::new(Some(slot)), tokio::sync::Mutex::new(None));
        let earlier = Arc::default();
        let trace = traceparent.map(|job| AttemptTrace { job, attempt: job.child(&mut rand::rng()) });
        Self { shared, job, attempt, slot, started, began: Utc::now(), earlier, trace, _holding: holding }
    }

    /// The attempt's span as a `traceparent` value, for the job (`TRACEPARENT` of an exec).
    pub(crate) fn traceparent(&self) -> Option<String> {
        self.trace.map(|trace| trace.attempt.to_string())
    }

    /// The span of this attempt, ended at `end` with `outcome` (and `error`), if the job
    /// came with a trace that is sampled.
    pub(crate) fn span(&self, end: DateTime<Utc>, outcome: &'static str, error: Option<&str>) -> Option<Span> {
        let trace = self.trace.filter(|trace| trace.job.sampled)?;
        let job = &self.job;
        let mut attributes: Vec<(&'static str, AttributeValue)> = vec![
            ("sluice.run_id", job.run_id.to_string().into()),
            ("sluice.job", job.job.clone().into()),
            ("sluice.pool", job.pool.clone().into()),
            ("sluice.kind", job.kind.clone().into()),
            ("sluice.attempt", self.attempt.into()),
            ("sluice.worker", self.shared.config.worker_id.clone().into()),
            ("sluice.outcome", outcome.into()),
        ];
        if let Some(error) = error.filter(|error| !error.is_empty()) {
            attributes.push(("sluice.error", error.to_owned().into()));
        }
        Some(Span {
            trace_id: trace.attempt.trace_id,
            span_id: trace.attempt.span_id,
            parent_span_id: Some(trace.job.span_id),
            name: format!("attempt {} of {}", self.attempt, job.job),
            start: self.began,
            end: end.max(self.began),
            attributes,
            error: matches!(outcome, "failed" | "retrying").then(|| error.unwrap_or("failed").to_owned()),
        })
    }

    /// When this attempt began here.
    pub(crate) fn began(&self) -> DateTime<Utc> {
        self.began
    }

    /// Gives the slot back (once the work is done: settling does not hold a slot).
    pub(crate) fn free_slot(&self) {
        drop(self.slot.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// Publishes the start without waiting for JetStream to store it (a first delivery's
    /// start is pipelined with the work). Published once, never again (one that cannot be
    /// sent is stored by [`Self::store_start`]), so without a `Nats-Msg-Id`: the server
    /// keeps no deduplication entry for it, and the coordinator ignores a repeated start.
    pub(crate) async fn publish_start(&self) -> Result<(), WorkerError> {
        let event = self.event(EventKind::Started, None, None);
        let payload = encode(&event).map_err(|error| WorkerError::encode("encoding an event", error))?;
        let ack = self
            .shared
            .js
            .publish(names::event_subject(&self.shared.config.pool, &event.run_id, &event.job), payload.into())
            .await
            .map_err(|error| WorkerError::nats("publishing a start event", error))?;
        *self.started.lock().await = Some(ack);
        Ok(())
    }

    /// Stores the start before the work begins (a redelivery's, or one that could not be
    /// sent), keeping `message` alive meanwhile: a job runs only once its attempt is on record.
    pub(crate) async fn store_start(&self, message: &Message) -> Result<(), WorkerError> {
        store_event(&self.shared, message, &self.event(EventKind::Started, None, None)).await
    }

    /// Waits for the start event to be stored (it was published first, on the same
    /// connection, so it is stored before the outcome); a lost start only costs `status`
    /// the attempt's start time.
    pub(crate) async fn confirm_start(&self) {
        if let Some(ack) = self.started.lock().await.take()
            && let Err(error) = ack.await
        {
            tracing::warn!(%error, job = %self.job.job, "the start event was not stored");
        }
    }

    /// Stores the attempt's outcome, keeping `message` alive until it is stored. `removed`:
    /// the message is acked or TERMed once it is (it does not come straight back), so the
    /// outcome may travel in an event batch if the job's coordinator reads them.
    pub(crate) async fn store_outcome(
        &self,
        message: &Message,
        kind: EventKind,
        report: Report,
        removed: bool,
    ) -> Result<(), WorkerError> {
        let mut event = self.event(kind, report.error, report.retry_at);
        event.output = report.output;
        event.spawned = report.spawned;
        event.schedule_retry = report.schedule_retry;
        event.started_at = Some(self.began);
        event.earlier = std::mem::take(&mut *self.earlier.lock().unwrap_or_else(PoisonError::into_inner));
        if removed && self.job.batch_events {
            let batched = match self.shared.batcher.outcome(&event) {
                Ok(stored) => wait_stored(&self.shared, message, &event.job, stored).await,
                Err(error) => Err(error.to_string()),
            };
            match batched {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%error, job = %event.job, "the outcome's batch was not stored; storing it alone")
                }
            }
        }
        store_event(&self.shared, message, &event).await
    }

    fn event(&self, kind: EventKind, error: Option<String>, retry_at: Option<DateTime<Utc>>) -> JobEvent {
        let job = &self.job;
        let worker = &self.shared.config.worker_id;
        let mut event = JobEvent::new(job.run_id, &job.job, self.attempt, job.generation, kind, worker, Utc::now());
        event.error = error.map(error_text);
        event.retry_at = retry_at;
        event
    }
}

/// An error as an event carries it: long ones keep their tail.
pub(crate) fn error_text(text: String) -> String {
    truncate_error(&text, ERROR_TEXT_MAX_BYTES)
}

/// The `Nats-Msg-Id` of an event: a re-published one is dropped as a duplicate.
fn message_id(event: &JobEvent) -> String {
    match event.kind {
        EventKind::Started => {
            names::start_event_id(&event.run_id, &event.job, event.attempt, event.generation, &event.worker)
        }
        kind => names::event_id(&event.run_id, &event.job, event.attempt, event.generation, kind.as_str()),
    }
}

/// Publishes `event` and waits until it is stored, however long NATS cannot store it (an
/// outage, a full store), while `message` is kept alive with in-progress acks, so JetStream
/// does not give the job to another worker meanwhile (decision 8). Gives up only when the
/// worker's shutdown grace is over; the job is then redelivered.
pub(crate) async fn store_event(shared: &Shared, message: &Message, event: &JobEvent) -> Result<(), WorkerError> {
    let storing = publish_until_stored(&shared.js, &shared.config.pool, event, &shared.stop_jobs);
    tokio::pin!(storing);
    tokio::select! {
        result = &mut storing => result,
        _ = keep_alive(shared.progress_interval, message, &event.job) => unreachable!("the keep-alive loop never ends"),
    }
}

/// Waits until an outcome's batch is stored, keeping `message` alive meanwhile.
async fn wait_stored(shared: &Shared, message: &Message, job: &str, stored: Stored) -> Result<(), String> {
    tokio::select! {
        result = stored => result.unwrap_or_else(|_| Err("the batcher stopped".to_owned())),
        _ = keep_alive(shared.progress_interval, message, job) => unreachable!("the keep-alive loop never ends"),
    }
}

/// Publishes until JetStream acknowledges; the `Nats-Msg-Id` makes a retry that raced a late
/// ack harmless. Pauses double from [`EVENT_PUBLISH_BACKOFF_FIRST_MS`] up to
/// [`EVENT_PUBLISH_BACKOFF_MAX_MS`]; `stop` ends the tries.
async fn publish_until_stored(
    js: &jetstream::Context,
    pool: &str,
    event: &JobEvent,
    stop: &CancellationToken,
) -> Result<(), WorkerError> {
    let payload = bytes::Bytes::from(encode(event).map_err(|error| WorkerError::encode("encoding an event", error))?);
    let subject = names::event_subject(pool, &event.run_id, &event.job);
    let id = message_id(event);
    let what = || format!("storing a {} event of `{}`", event.kind.as_str(), event.job);
    let mut delay = Duration::from_millis(EVENT_PUBLISH_BACKOFF_FIRST_MS);
    let mut tries = 0u64;
    loop {
        tries += 1;
        let mut headers = HeaderMap::new();
        headers.insert(names::HEADER_MSG_ID, id.as_str());
        let result = async {
            js.publish_with_headers(subject.clone(), headers, payload.clone())
                .await?
                .await
                .map_err(async_nats::Error::from)
        }
        .await;
        let error = match result {
            Ok(_) => {
                if tries > 1 {
                    tracing::info!(job = %event.job, tries, "{} succeeded after all", what());
                }
                return Ok(());
            }
            Err(error) => error,
        };
        // The first failure and then every tenth: an outage must not flood the log.
        if tries % 10 == 1 {
            tracing::warn!(%error, job = %event.job, tries, "{} failed; the job is kept and the event retried", what());
        }
        tokio::select! {
            _ = stop.cancelled() => return Err(WorkerError::nats(format!("{}: gave up at shutdown", what()), error)),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(EVENT_PUBLISH_BACKOFF_MAX_MS));
    }
}
