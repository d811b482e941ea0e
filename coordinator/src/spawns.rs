//! Reads the children an attempt spawned, which its worker wrote in batches to
//! `sluice.spawns.<pool>.<run>.<generation>.<attempt>.<job>` (schema 1: without the pool)
//! before reporting success.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use sluice_proto::{JobEvent, SpawnBatch, decode, names};

use crate::engine::Spawned;

use crate::error::{NatsContext, ServiceError};

/// The children `event` announced, checked and made compact one batch at a time. Fewer than
/// announced means some batch is gone (or unreadable); the engine fails the job with that.
pub async fn read(js: &jetstream::Context, event: &JobEvent) -> Result<Spawned, ServiceError> {
    let stream = js.get_stream(names::SPAWNS_STREAM).await.context("opening stream SLUICE_SPAWNS")?;
    let mut spawned = Spawned::default();
    for subject in subjects(event) {
        read_from(&stream, &subject, event, &mut spawned).await?;
        if spawned.read() > 0 {
            break;
        }
    }
    Ok(spawned.finish())
}

/// Where an attempt's batches are: in its pool (the pool is not in the event, so any), or
/// where a schema-1 worker wrote them.
fn subjects(event: &JobEvent) -> [String; 2] {
    [
        names::spawn_filter(&event.run_id, &event.job, event.generation, event.attempt),
        names::compat::spawn_subject(&event.run_id, &event.job, event.generation, event.attempt),
    ]
}

async fn read_from(
    stream: &jetstream::stream::Stream,
    subject: &str,
    event: &JobEvent,
    spawned: &mut Spawned,
) -> Result<(), ServiceError> {
    let wanted = event.spawned as usize;
    let mut next = 1;
    while spawned.read() < wanted {
        let message = match stream.direct_get_next_for_subject(subject, Some(next)).await {
            Ok(message) => message,
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => break,
            Err(error) => return Err(error).context(format!("reading the children of job {}", event.job)),
        };
        next = message.sequence + 1;
        match decode::<SpawnBatch>(&message.payload) {
            Ok(batch) => spawned.add_batch(batch.children),
            Err(error) => {
                tracing::error!(%error, job = %event.job, "a spawn batch cannot be decoded");
                break;
            }
        }
    }
    Ok(())
}

/// Removes an attempt's batches once its children are stored (their records are the truth
/// from then on). Failing to is harmless: the stream's age limit removes them later.
pub async fn forget(js: &jetstream::Context, event: &JobEvent) {
    let stream = match js.get_stream(names::SPAWNS_STREAM).await {
        Ok(stream) => stream,
        Err(error) => return tracing::debug!(%error, job = %event.job, "spawn batches not purged"),
    };
    for subject in subjects(event) {
        if let Err(error) = stream.purge().filter(subject).await {
            tracing::debug!(%error, job = %event.job, "spawn batches not purged");
        }
    }
}
