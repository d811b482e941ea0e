//! Connecting to NATS, and opening a pool's consumer (the coordinator creates it).

use std::time::Duration;

use std::collections::BTreeSet;

use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;
use sluice_proto::names;
use sluice_proto::spec::DEFAULT_POOL;

use crate::error::WorkerError;

/// Connects with a name that shows in the server's connection list, and checks the server
/// version (Sluice needs 2.14 or newer). Fails at once when nothing answers; once connected,
/// the client reconnects for ever (a nats-server restart is survived).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ConnectError> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|source| ConnectError::Unreachable { url: url.to_owned(), source: source.into() })?;
    sluice_proto::version::check_server_version(&client.server_info().version).map_err(ConnectError::TooOld)?;
    Ok(client)
}

/// Connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot reach NATS at {url}: {source} (is a nats-server running there? `sluice dev` starts one)")]
    Unreachable { url: String, source: async_nats::Error },
    #[error("{0}")]
    TooOld(String),
}

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
