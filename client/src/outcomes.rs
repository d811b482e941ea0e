//! The control requests answered lately, newest first (the UI's requests page, `GET
//! /api/v1/requests`): who asked for what, when, and the coordinator's answer, read from
//! KV `sluice-outcomes` (kept 7 days) a page at a time by stream sequence.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use sluice_proto::{ControlOutcome, decode, names};

use crate::error::{ClientError, NatsContext};

/// Outcomes one page holds at most.
pub const OUTCOMES_PAGE_MAX: usize = 200;

/// A page of outcomes, newest first.
#[derive(Clone, Debug, Default)]
pub struct OutcomePage {
    pub outcomes: Vec<ControlOutcome>,
    /// Pass as `before` for the page of older ones; `None`: this page reaches the oldest kept.
    pub earlier: Option<u64>,
}

/// The outcomes stored before stream sequence `before` (`None`: the newest), at most
/// `limit` messages' worth (deletes and expired ones leave gaps, so a page may hold fewer).
pub async fn recent(js: &jetstream::Context, before: Option<u64>, limit: usize) -> Result<OutcomePage, ClientError> {
    let Ok(stream) = js.get_stream(names::kv_stream(names::OUTCOMES_BUCKET)).await else {
        return Ok(OutcomePage::default());
    };
    let info = stream.get_info().await.context("reading the outcomes")?;
    if info.state.messages == 0 {
        return Ok(OutcomePage::default());
    }
    let first = info.state.first_sequence.max(1);
    let end = before.unwrap_or(u64::MAX).min(info.state.last_sequence + 1);
    let start = end.saturating_sub(limit.clamp(1, OUTCOMES_PAGE_MAX) as u64).max(first);
    let mut page = OutcomePage { outcomes: Vec::new(), earlier: (start > first).then_some(start) };
    for sequence in (start..end).rev() {
        let message = match stream.direct_get(sequence).await {
            Ok(message) => message,
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => continue,
            Err(error) => return Err(error).context("reading an outcome"),
        };
        let deleted =
            message.headers.get(names::HEADER_KV_OPERATION).is_some_and(|operation| operation.as_str() != "PUT");
        if deleted {
            continue;
        }
        match decode::<ControlOutcome>(&message.payload) {
            Ok(outcome) => page.outcomes.push(outcome),
            Err(error) => tracing::warn!(sequence, %error, "an outcome cannot be decoded; skipped"),
        }
    }
    Ok(page)
}

/// Waiting requests [`unanswered`] reads at most.
pub const UNANSWERED_MAX: usize = 200;

/// The control requests in the control stream that no coordinator has answered yet,
/// newest first, `limit` at most: asked while every coordinator was down, or being applied
/// now. Requests of older clients (no id, so no answer) are left out.
pub async fn unanswered(
    js: &jetstream::Context,
    limit: usize,
) -> Result<Vec<sluice_proto::ControlRequest>, ClientError> {
    let keep = |message: &jetstream::message::StreamMessage| {
        let request: sluice_proto::ControlRequest = decode(&message.payload).ok()?;
        // Who sent it as its answer will say: the identity its subject names.
        request.request_id.is_some().then(|| request.attributed(message.subject.as_str()))
    };
    let waiting = crate::runs::newest_waiting(
        js,
        names::CONTROL_STREAM,
        names::CONTROL_SUBJECTS,
        limit.clamp(1, UNANSWERED_MAX),
        keep,
    )
    .await
    .context("reading the control requests waiting")?;
    // One applied but not yet acknowledged is still in the stream: its answer says so.
    let mut open = Vec::new();
    for request in waiting {
        let Some(id) = request.request_id else { continue };
        if crate::stores::outcome(js, &id).await?.is_none() {
            open.push(request);
        }
    }
    Ok(open)
}
