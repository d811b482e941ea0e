//! Reading a delivered job message, and keeping it alive while it runs.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};

/// A header's value as text, if the message has it.
pub(crate) fn header(message: &Message, name: &str) -> Option<String> {
    message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.as_str().to_owned())
}

/// How often JetStream has delivered this message, this delivery included (1 if unknown).
pub(crate) fn delivered(message: &Message) -> u32 {
    message.info().map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX)).unwrap_or(1)
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
