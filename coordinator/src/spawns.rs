//! Reads the children an attempt spawned, which its worker wrote in batches to
//! `sluice.spawns.<run>.<generation>.<attempt>.<job>` before reporting success.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use sluice_proto::{JobEvent, SpawnBatch, decode, names};

use crate::engine::Spawned;

use crate::error::{NatsContext, ServiceError};

/// The children `event` announced, checked and made compact one batch at a time. Fewer than
/// announced means some batch is gone (or unreadable); the engine fails the job with that.
pub async fn read(js: &jetstream::Context, event: &JobEvent) -> Result<Spawned, ServiceError> {
    let subject = names::spawn_subject(&event.run_id, &event.job, event.generation, event.attempt);
    let stream = js.get_stream(names::SPAWNS_STREAM).await.context("opening stream SLUICE_SPAWNS")?;
    let wanted = event.spawned as usize;
    let mut spawned = Spawned::default();
    let mut next = 1;
    while spawned.read() < wanted {
        let message = match stream.direct_get_next_for_subject(subject.as_str(), Some(next)).await {
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
    Ok(spawned.finish())
}

/// Removes an attempt's batches once its children are stored (their records are the truth
/// from then on). Failing to is harmless: the stream's age limit removes them later.
pub async fn forget(js: &jetstream::Context, event: &JobEvent) {
    let subject = names::spawn_subject(&event.run_id, &event.job, event.generation, event.attempt);
    let purged = match js.get_stream(names::SPAWNS_STREAM).await {
        Ok(stream) => stream.purge().filter(subject).await.map(|_| ()).map_err(async_nats::Error::from),
        Err(error) => Err(error.into()),
    };
    if let Err(error) = purged {
        tracing::debug!(%error, job = %event.job, "spawn batches not purged");
    }
}
