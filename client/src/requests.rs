//! Publishing what any client may ask of Sluice: a submission, or a control request that the
//! coordinator applies and answers with a [`ControlOutcome`].

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use futures::StreamExt;
use sluice_proto::limits::REQUESTED_BY_MAX_BYTES;
use sluice_proto::spec::DEFAULT_POOL;
use sluice_proto::{ControlOutcome, ControlRequest, RequestId, Submission, TraceParent, decode, encode, names};

use crate::error::{ClientError, NatsContext};
use crate::stores::open_bucket;

/// How long a control request waits for its answer before the caller is told that none
/// came (the request stays queued: a coordinator that starts later still applies it).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`wait_until_set_up`] waits by default: a coordinator started a moment ago
/// creates the topology within a second or two.
pub const SETUP_WAIT: Duration = Duration::from_secs(10);
const SETUP_POLL: Duration = Duration::from_millis(200);

/// Waits (at most `timeout`) until a coordinator has created Sluice's streams and buckets:
/// the pool `default` is declared last. Clients create nothing themselves, so a script that
/// starts a coordinator and submits at once waits here instead of failing.
pub async fn wait_until_set_up(js: &jetstream::Context, timeout: Duration) -> Result<(), ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if is_set_up(js).await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_set_up(&format!("pool {} in KV {}", DEFAULT_POOL, names::POOLS_BUCKET)));
        }
        tokio::time::sleep(SETUP_POLL).await;
    }
}

/// Whether a coordinator has set Sluice up on this server.
pub async fn is_set_up(js: &jetstream::Context) -> Result<bool, ClientError> {
    let Some(pools) = open_bucket(js, names::POOLS_BUCKET).await? else { return Ok(false) };
    Ok(pools.get(DEFAULT_POOL).await.context("reading the pools")?.is_some())
}

/// Publishes a submission and waits until JetStream stores it. `dedup_id` becomes its
/// `Nats-Msg-Id`; returns the stored sequence and whether JetStream already had that id.
/// The run's trace starts at the run ([`submit_traced`] continues a caller's).
pub async fn submit(
    js: &jetstream::Context,
    submission: &Submission,
    dedup_id: &str,
) -> Result<(u64, bool), ClientError> {
    submit_traced(js, submission, dedup_id, None).await
}

/// [`submit`], the run's span a child of `traceparent`'s span (the caller's trace).
pub async fn submit_traced(
    js: &jetstream::Context,
    submission: &Submission,
    dedup_id: &str,
    traceparent: Option<&TraceParent>,
) -> Result<(u64, bool), ClientError> {
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_MSG_ID, dedup_id);
    if let Some(parent) = traceparent {
        headers.insert(names::HEADER_TRACEPARENT, parent.to_string().as_str());
    }
    let what = format!("the submission of run {}", submission.run_id);
    let payload = encode(submission)?;
    // Said here, naming the sizes, rather than as the client's bare "max payload exceeded".
    let max_payload = js.client().server_info().max_payload;
    if payload.len() > max_payload {
        return Err(ClientError::Invalid(format!(
            "{what} is {} bytes; this nats-server accepts messages of up to {max_payload} bytes (its max_payload)",
            payload.len()
        )));
    }
    let ack = js
        .publish_with_headers(names::SUBMIT_SUBJECT, headers, payload.into())
        .await
        .context(format!("publishing {what}"))?
        .await
        .map_err(|error| match error.kind() {
            PublishErrorKind::StreamNotFound => not_set_up(names::SUBMIT_STREAM),
            _ => ClientError::Nats { context: format!("storing {what}"), source: error.into() },
        })?;
    Ok((ack.sequence, ack.duplicate))
}

/// Who a connection asks as: its NATS user, or [`names::ANONYMOUS_IDENTITY`]. Requests go
/// out on `sluice.control.<identity>.…`, so NATS permissions can scope each identity.
pub fn identity(nats_user: Option<&str>) -> String {
    nats_user.filter(|user| is_token(user)).unwrap_or(names::ANONYMOUS_IDENTITY).to_owned()
}

fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Sends a control request and waits for the coordinator's answer, at most `timeout`.
/// A refusal is an `Ok` outcome: the caller decides what it means.
pub async fn control(
    js: &jetstream::Context,
    identity: &str,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlOutcome, ClientError> {
    let id = send_control(js, identity, request).await?;
    await_outcome(js, &id, request.action_name(), timeout).await
}

/// Publishes a control request (with a request id, filled in when missing) and waits until
/// JetStream stores it; returns the id its answer will be stored under.
pub async fn send_control(
    js: &jetstream::Context,
    identity: &str,
    request: &ControlRequest,
) -> Result<RequestId, ClientError> {
    wait_until_set_up(js, SETUP_WAIT).await?;
    let mut request = request.clone();
    let id = *request.request_id.get_or_insert_with(RequestId::new);
    if request.requested_by.len() > REQUESTED_BY_MAX_BYTES {
        request.requested_by = sluice_proto::messages::truncate_error(&request.requested_by, REQUESTED_BY_MAX_BYTES);
    }
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_REQUEST_ID, id.to_string().as_str());
    headers.insert(names::HEADER_MSG_ID, id.to_string().as_str());
    let subject = names::control_subject(identity, request.run_id.as_ref());
    js.publish_with_headers(subject, headers, encode(&request)?.into())
        .await
        .context(format!("sending a {} request", request.action_name()))?
        .await
        .map_err(|error| match error.kind() {
            PublishErrorKind::StreamNotFound => not_set_up(names::CONTROL_STREAM),
            _ => ClientError::Nats {
                context: format!("storing a {} request", request.action_name()),
                source: error.into(),
            },
        })?;
    Ok(id)
}

/// Waits for the answer to a request, pushed by a KV watch (an answer stored before the
/// watch began is delivered too).
pub async fn await_outcome(
    js: &jetstream::Context,
    id: &RequestId,
    action: &'static str,
    timeout: Duration,
) -> Result<ControlOutcome, ClientError> {
    let bucket = open_bucket(js, names::OUTCOMES_BUCKET).await?.ok_or_else(|| not_set_up(names::OUTCOMES_BUCKET))?;
    let key = id.to_string();
    let mut watch = bucket.watch_with_history(&key).await.context("watching for the answer")?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, watch.next()).await;
        let Ok(Some(entry)) = next else {
            return Err(ClientError::NoAnswer { action, waited_s: timeout.as_secs() });
        };
        let entry = entry.context("watching for the answer")?;
        if entry.operation == async_nats::jetstream::kv::Operation::Put {
            return Ok(decode(&entry.value)?);
        }
    }
}

fn not_set_up(missing: &str) -> ClientError {
    ClientError::NotSetUp { missing: missing.to_owned() }
}
