//! Reading a delivered job message, and copying a job for a later dispatch of its series.

use async_nats::HeaderMap;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use sluice_proto::{JobMessage, names};

/// A header's value as text, if the message has it.
pub(crate) fn header(message: &Message, name: &str) -> Option<String> {
    message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.as_str().to_owned())
}

/// How often JetStream has delivered this message, this delivery included (1 if unknown).
pub(crate) fn delivered(message: &Message) -> u32 {
    message.info().map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX)).unwrap_or(1)
}

/// A copy of `job` for a later dispatch of the same series: its first delivery is attempt
/// `attempt_offset + 1`, and the retry policy still counts from the series' start.
pub(crate) fn copy_in_series(job: &JobMessage, attempt_offset: u32) -> JobMessage {
    let mut copy = job.clone();
    copy.retry_base = Some(job.retry_base());
    copy.attempt_offset = attempt_offset;
    copy
}

/// Headers for a copy of `message` (fresh: the original `Nats-Msg-Id` would make JetStream
/// drop the copy as a duplicate), keeping its trace context.
pub(crate) fn copy_headers(message: &Message, copy: &JobMessage) -> HeaderMap {
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

/// Sends an in-progress ack every `interval`, for ever: while a job runs, and while its
/// start or outcome waits to be stored, so JetStream does not redeliver it meanwhile.
pub(crate) async fn keep_alive(interval: Duration, message: &Message, job: &str) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(error) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(%error, job, "in-progress ack failed");
        }
    }
}
