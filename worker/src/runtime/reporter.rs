//! Publishing an attempt's events: its start (not waited for) and its outcome (durable).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use chrono::{DateTime, Utc};
use sluice_proto::limits::ERROR_TEXT_MAX_BYTES;
use sluice_proto::messages::truncate_error;
use sluice_proto::{EventKind, JobEvent, JobMessage, RunId, SCHEMA_VERSION, encode, names};
use tokio::sync::OwnedSemaphorePermit;

use super::Shared;
use crate::error::WorkerError;
use crate::limits::{EVENT_PUBLISH_BACKOFF_FIRST_MS, EVENT_PUBLISH_TRIES_MAX};

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
}

/// What an outcome event says besides its kind.
pub(crate) struct Report {
    pub(crate) error: Option<String>,
    pub(crate) retry_at: Option<DateTime<Utc>>,
    pub(crate) output: Option<serde_json::Value>,
    pub(crate) spawned: u32,
}

impl Reporter {
    pub(crate) fn new(shared: Arc<Shared>, job: JobMessage, attempt: u32, slot: OwnedSemaphorePermit) -> Self {
        let (slot, started) = (Mutex::new(Some(slot)), tokio::sync::Mutex::new(None));
        Self { shared, job, attempt, slot, started, began: Utc::now() }
    }

    /// Gives the slot back (once the work is done: settling does not hold a slot).
    pub(crate) fn free_slot(&self) {
        drop(self.slot.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// Publishes the start without waiting for JetStream to store it.
    pub(crate) async fn publish_start(&self) -> Result<(), WorkerError> {
        let event = self.event(EventKind::Started, None, None);
        let payload = encode(&event).map_err(|error| WorkerError::encode("encoding an event", error))?;
        let mut headers = HeaderMap::new();
        let id = names::event_id(&event.run_id, &event.job, event.attempt, event.generation, "started");
        headers.insert(names::HEADER_MSG_ID, id.as_str());
        let ack = self
            .shared
            .js
            .publish_with_headers(
                names::event_subject(&self.shared.config.pool, &event.run_id, &event.job),
                headers,
                payload.into(),
            )
            .await
            .map_err(|error| WorkerError::nats("publishing a start event", error))?;
        *self.started.lock().await = Some(ack);
        Ok(())
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

    /// Publishes the attempt's outcome and waits until it is durable.
    pub(crate) async fn publish_outcome(&self, kind: EventKind, report: Report) -> Result<(), WorkerError> {
        let mut event = self.event(kind, report.error, report.retry_at);
        event.output = report.output;
        event.spawned = report.spawned;
        event.started_at = Some(self.began);
        publish_event(&self.shared.js, &self.shared.config.pool, &event).await
    }

    fn event(&self, kind: EventKind, error: Option<String>, retry_at: Option<DateTime<Utc>>) -> JobEvent {
        let job = &self.job;
        let mut event = event(job.run_id, &job.job, self.attempt, job.generation, kind, &self.shared.config.worker_id);
        event.error = error.map(error_text);
        event.retry_at = retry_at;
        event
    }
}

/// An error as an event carries it: long ones keep their tail.
pub(crate) fn error_text(text: String) -> String {
    truncate_error(&text, ERROR_TEXT_MAX_BYTES)
}

/// An event of attempt `attempt` of `job`, at this moment, with no error, output or children.
pub(crate) fn event(
    run_id: RunId,
    job: &str,
    attempt: u32,
    generation: u32,
    kind: EventKind,
    worker: &str,
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
        error: None,
        retry_at: None,
        output: None,
        spawned: 0,
        started_at: None,
    }
}

/// Publishes an event and waits until it is durable, retrying a few times; the
/// `Nats-Msg-Id` makes a retry that raced a late ack harmless.
pub(crate) async fn publish_event(js: &jetstream::Context, pool: &str, event: &JobEvent) -> Result<(), WorkerError> {
    let payload = encode(event).map_err(|error| WorkerError::encode("encoding an event", error))?;
    let subject = names::event_subject(pool, &event.run_id, &event.job);
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
