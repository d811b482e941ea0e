//! Publishing what any client may ask of Sluice: a submission, or a request about a run.
//! Used by the `sluice` CLI and by the coordinator's own scheduler and backfills.

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::Utc;
use sluice_proto::{ControlAction, ControlRequest, RunId, SCHEMA_VERSION, Submission, TraceParent, encode, names};

use crate::error::{NatsContext, ServiceError};

/// Publishes a submission and waits until JetStream stores it. `dedup_id` becomes its
/// `Nats-Msg-Id`; returns the stored sequence and whether JetStream already had that id.
pub async fn submit(
    js: &jetstream::Context,
    submission: &Submission,
    dedup_id: &str,
) -> Result<(u64, bool), ServiceError> {
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_MSG_ID, dedup_id);
    headers.insert(names::HEADER_TRACEPARENT, TraceParent::new_root(&mut rand::rng()).to_string().as_str());
    let ack = js
        .publish_with_headers(names::SUBMIT_SUBJECT, headers, encode(submission)?.into())
        .await
        .context(format!("publishing the submission of run {}", submission.run_id))?
        .await
        .context(format!("storing the submission of run {}", submission.run_id))?;
    Ok((ack.sequence, ack.duplicate))
}

/// Publishes a cancel or retry request about a run and waits until it is stored.
pub async fn control(
    js: &jetstream::Context,
    run_id: RunId,
    action: ControlAction,
    job: Option<String>,
    dead_letter: Option<u64>,
) -> Result<(), ServiceError> {
    let request =
        ControlRequest { schema_version: SCHEMA_VERSION, run_id, action, job, requested_at: Utc::now(), dead_letter };
    js.publish(names::control_subject(&run_id), encode(&request)?.into())
        .await
        .context(format!("sending a request about run {run_id}"))?
        .await
        .context(format!("storing a request about run {run_id}"))?;
    Ok(())
}
