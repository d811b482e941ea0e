//! Connecting to NATS, and opening a pool's consumer (the coordinator creates it).

use std::collections::BTreeSet;

use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;
use sluice_proto::names;
use sluice_proto::spec::DEFAULT_POOL;

use crate::error::WorkerError;

/// Connecting (and the server version check) is the client crate's: one way for every
/// binary.
pub use sluice_client::connect::connect;

/// Opens the pool's durable pull consumer `pool-<pool>`. The coordinator creates it when the
/// pool is declared (`sluice pool apply`); a worker never creates or changes it, so the
/// pool's ack wait and max deliveries are the coordinator's settings. Fails when it is missing.
pub async fn pool_consumer(js: &jetstream::Context, pool: &str) -> Result<consumer::PullConsumer, WorkerError> {
    let stream = js
        .get_stream_no_info(names::JOBS_STREAM)
        .await
        .map_err(|error| WorkerError::nats(format!("opening stream {}", names::JOBS_STREAM), error))?;
    let durable = names::pool_consumer(pool);
    stream.get_consumer(&durable).await.map_err(|error| WorkerError::nats(format!("opening consumer {durable}"), error))
}

/// The declared pools, from KV `sluice-pools`: `None` while no coordinator has set Sluice up
/// (the bucket or its `default` entry is missing).
pub async fn declared_pools(js: &jetstream::Context) -> Result<Option<BTreeSet<String>>, WorkerError> {
    let context = || format!("reading KV {}", names::POOLS_BUCKET);
    let pools = match js.get_key_value(names::POOLS_BUCKET).await {
        Ok(pools) => pools,
        Err(error) if error.kind() == jetstream::context::KeyValueErrorKind::GetBucket => return Ok(None),
        Err(error) => return Err(WorkerError::nats(context(), error)),
    };
    let keys = pools.keys().await.map_err(|error| WorkerError::nats(context(), error))?;
    let names: BTreeSet<String> = keys.try_collect().await.map_err(|error| WorkerError::nats(context(), error))?;
    Ok(names.contains(DEFAULT_POOL).then_some(names))
}
