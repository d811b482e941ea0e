//! Pipelined JetStream publishing: many messages in flight, acknowledgements awaited in
//! order, never more than [`WINDOW`] outstanding (async-nats blocks a publish beyond its
//! in-flight limit, which would deadlock a loop that awaits acks only at the end).

use std::collections::VecDeque;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, publish::PublishAck};
use bytes::Bytes;

use crate::error::{ClientError, NatsContext};

/// Most acknowledgements awaited at once.
pub const WINDOW: usize = 1024;

/// One message to publish, and what it is (for errors).
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    pub what: String,
}

/// Publishes every message in order; returns their acknowledgements in the same order once
/// all are stored.
pub async fn publish_all(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = Outgoing>,
) -> Result<Vec<PublishAck>, ClientError> {
    let mut pending: VecDeque<(String, PublishAckFuture)> = VecDeque::new();
    let mut acks = Vec::new();
    for message in messages {
        if pending.len() >= WINDOW
            && let Some((what, ack)) = pending.pop_front()
        {
            acks.push(ack.await.context(format!("storing {what}"))?);
        }
        let ack = js
            .publish_with_headers(message.subject, message.headers, message.payload)
            .await
            .context(format!("publishing {}", message.what))?;
        pending.push_back((message.what, ack));
    }
    for (what, ack) in pending {
        acks.push(ack.await.context(format!("storing {what}"))?);
    }
    Ok(acks)
}
