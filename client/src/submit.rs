//! Submitting a run: the submission published to `sluice.submit` and stored by JetStream,
//! with its idempotency key honoured (what `sluice submit`, `sluice dev` and the API's
//! `POST /api/v1/runs` do).

use std::collections::BTreeMap;

use async_nats::jetstream;
use chrono::Utc;
use sluice_proto::{RunId, SCHEMA_VERSION, Submission, TraceParent, Window, names};

use crate::error::ClientError;
use crate::requests::{SETUP_WAIT, submit_traced, wait_until_set_up};

/// A stored submission: its run id, and whether JetStream had it already (same
/// idempotency key within the duplicate window), in which case the id is the first one's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub run_id: RunId,
    pub duplicate: bool,
}

/// What to run: the workflow's YAML, its window and parameters, and an idempotency key.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub yaml: String,
    pub window: Window,
    pub params: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
}

/// Publishes a submission (its run id chosen here) and waits for JetStream to store it;
/// a key some run already holds answers with that run, as a duplicate.
pub async fn publish(
    js: &jetstream::Context,
    new: NewRun,
    traceparent: Option<&TraceParent>,
) -> Result<Published, ClientError> {
    if let Some(key) = &new.idempotency_key
        && let Some(run_id) = key_holder(js, key).await?
    {
        return Ok(Published { run_id, duplicate: true });
    }
    let run_id = RunId::new();
    let idempotency_key = new.idempotency_key;
    let submission = Submission {
        schema_version: SCHEMA_VERSION,
        run_id,
        workflow: new.yaml,
        window: Some(new.window),
        params: new.params,
        idempotency_key: idempotency_key.clone(),
        submitted_at: Some(Utc::now()),
        origin: None,
    };
    let dedup_id = idempotency_key.clone().unwrap_or_else(|| run_id.to_string());
    wait_until_set_up(js, SETUP_WAIT).await?;
    let (sequence, duplicate) = submit_traced(js, &submission, &dedup_id, traceparent).await?;
    if !duplicate {
        return Ok(Published { run_id, duplicate: false });
    }
    // The first submission with this key is still queued (read its run id from it) or was
    // taken by a coordinator, which claimed the key before acknowledging it.
    let first = match js.get_stream(names::SUBMIT_STREAM).await {
        Ok(stream) => stream.get_raw_message(sequence).await.ok().and_then(|stored| {
            sluice_proto::decode::<Submission>(&stored.payload).ok().map(|submission| submission.run_id)
        }),
        Err(_) => None,
    };
    let first = match (first, idempotency_key.as_deref()) {
        (Some(id), _) => Some(id),
        (None, Some(key)) => key_holder(js, key).await?,
        (None, None) => None,
    };
    first.map(|run_id| Published { run_id, duplicate: true }).ok_or_else(|| {
        ClientError::Inconsistent(
            "JetStream dropped the submission as a duplicate of one that can no longer be read".into(),
        )
    })
}

/// The run that holds an idempotency key, once a coordinator has claimed it.
pub async fn key_holder(js: &jetstream::Context, key: &str) -> Result<Option<RunId>, ClientError> {
    let Some(bucket) = crate::stores::open_bucket(js, names::IDEMPOTENCY_BUCKET).await? else {
        return Ok(None);
    };
    let value = crate::error::NatsContext::context(
        bucket.get(names::idempotency_kv_key(key)).await,
        "reading the idempotency key",
    )?;
    Ok(value.and_then(|bytes| std::str::from_utf8(&bytes).ok().and_then(|text| text.parse::<RunId>().ok())))
}
