//! Connecting to NATS and opening a pool's consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use sluice_proto::names;

pub use crate::config::{JOB_ACK_WAIT_DEFAULT, POOL_MAX_DELIVER_DEFAULT};
use crate::error::WorkerError;
pub use crate::limits::POOL_MAX_ACK_PENDING;

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

/// The pool's durable pull consumer (created if missing). The jobs stream is the
/// coordinator's to create. `ack_wait` and `max_deliver` apply when this call creates the
/// consumer; an existing consumer keeps its own.
pub async fn pool_consumer(
    js: &jetstream::Context,
    pool: &str,
    ack_wait: Duration,
    max_deliver: i64,
) -> Result<consumer::PullConsumer, WorkerError> {
    let stream = js
        .get_stream(names::JOBS_STREAM)
        .await
        .map_err(|error| WorkerError::nats(format!("opening stream {}", names::JOBS_STREAM), error))?;
    let durable = names::pool_consumer(pool);
    let config = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        description: Some(format!("Sluice workers of pool {pool}")),
        filter_subject: names::pool_filter(pool),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        // Attempts are counted by Sluice (a worker refuses attempts past max_attempts); this
        // only catches a job whose every delivery kills its worker.
        max_deliver,
        max_ack_pending: POOL_MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        // No inactive_threshold: an idle pool (scaled to zero) keeps its consumer.
        ..Default::default()
    };
    stream
        .get_or_create_consumer(&durable, config)
        .await
        .map_err(|error| WorkerError::nats(format!("creating consumer {durable}"), error))
}
