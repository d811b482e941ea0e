//! Bounded waits. Where Sluice signals what is awaited (a KV entry put: a run's record, a
//! worker's registry entry), the wait watches for it; every wait has a deadline, and its
//! error names what it waited for.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_nats::jetstream::{self, kv::Operation};
use futures::StreamExt;
use sluice_client::{ClientError, Lookup};
use sluice_proto::{RunId, RunRecord, names};

/// How long the helpers that take no timeout wait for a coordinator to set Sluice up.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// How soon a wait tries again after an error that may pass (a server restarting, Sluice
/// not set up yet): nothing signals that the connection is back.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often [`wait_until`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Waits until a coordinator has created Sluice's streams and buckets (the pool `default`
/// is declared last), through `sluice_client::requests::wait_until_set_up`.
pub async fn set_up(js: &jetstream::Context, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match sluice_client::requests::wait_until_set_up(js, left).await {
            Ok(()) => return Ok(()),
            // A server that has just (re)started may fail a JetStream call: try again.
            Err(error) if error.is_retryable() && tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(error) => {
                return Err(anyhow!(error)).context(format!(
                    "waiting {timeout:?} for a coordinator to set Sluice up (pool default declared)"
                ));
            }
        }
    }
}

/// Waits until `count` workers of `pool` are in the registry (KV `sluice-workers`, keys
/// `<pool>.<id>`), pushed by a KV watch; first waits (within the same `timeout`) for Sluice
/// to be set up, since the registry bucket is part of it.
pub async fn workers(js: &jetstream::Context, pool: &str, count: usize, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    set_up(js, timeout).await?;
    let bucket = js
        .get_key_value(names::WORKERS_BUCKET)
        .await
        .with_context(|| format!("opening KV {}", names::WORKERS_BUCKET))?;
    let mut watch = bucket
        .watch_with_history(format!("{pool}.>"))
        .await
        .with_context(|| format!("watching the workers of pool {pool} in KV {}", names::WORKERS_BUCKET))?;
    let mut live = BTreeSet::new();
    while live.len() < count {
        let entry = match tokio::time::timeout_at(deadline, watch.next()).await {
            Ok(Some(entry)) => entry.with_context(|| format!("watching the workers of pool {pool}"))?,
            Ok(None) => bail!("the watch of pool {pool}'s workers in KV {} ended", names::WORKERS_BUCKET),
            Err(_) => bail!(
                "waited {timeout:?} for {count} workers of pool {pool} in KV {}; found {}: {live:?}",
                names::WORKERS_BUCKET,
                live.len()
            ),
        };
        match entry.operation {
            Operation::Put => live.insert(entry.key),
            Operation::Delete | Operation::Purge => live.remove(&entry.key),
        };
    }
    Ok(())
}

/// Waits until a run has ended (or its submission was rejected) through
/// `sluice_client::view::wait_for_end`, a KV watch on its record; returns the run with its
/// jobs. Errors that may pass (Sluice not set up yet, the server restarting) are retried
/// until `timeout`.
pub async fn run_end(js: &jetstream::Context, id: &RunId, timeout: Duration) -> Result<Lookup> {
    retrying(id, timeout, || sluice_client::view::wait_for_end(js, id)).await
}

/// Waits until a run's record says it has ended, pushed by a KV watch on that one record
/// (no job record is read: cheap for a run of 100,000 jobs). A submission that was rejected
/// never makes a record: the error at `timeout` says so.
pub async fn run_record_end(js: &jetstream::Context, id: &RunId, timeout: Duration) -> Result<RunRecord> {
    let watched = retrying(id, timeout, || watch_record(js, id)).await;
    if watched.is_err()
        && let Ok(Some(rejection)) = sluice_client::stores::rejection(js, id).await
    {
        bail!("run {id} was rejected: {}", rejection.reason);
    }
    watched
}

/// The first record of run `id` in a terminal state, by a KV watch (a record stored before
/// the watch began is delivered too).
async fn watch_record(js: &jetstream::Context, id: &RunId) -> Result<RunRecord, ClientError> {
    let what = || format!("watching run {id}");
    let runs = sluice_client::stores::open_bucket(js, names::RUNS_BUCKET)
        .await?
        .ok_or_else(|| ClientError::NotSetUp { missing: names::RUNS_BUCKET.to_owned() })?;
    let mut watch = nats(runs.watch_with_history(id.to_string()).await, what())?;
    while let Some(entry) = watch.next().await {
        let entry = nats(entry, what())?;
        if entry.operation != Operation::Put {
            continue;
        }
        let record: RunRecord = sluice_proto::decode(&entry.value)?;
        if record.state.is_terminal() {
            return Ok(record);
        }
    }
    Err(ClientError::Stalled(format!("watching run {id}")))
}

/// A NATS error as the client reports it.
fn nats<T, E: Into<async_nats::Error>>(result: Result<T, E>, context: String) -> Result<T, ClientError> {
    sluice_client::error::NatsContext::context(result, context)
}

/// Runs `attempt` until it succeeds, fails for good, or `timeout` passes (the error then
/// names the run and the last error that was retried).
async fn retrying<T, F, Fut>(id: &RunId, timeout: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<ClientError> = None;
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) if error.is_retryable() => {
                last = Some(error);
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + RETRY_PAUSE)).await;
            }
            Ok(Err(error)) => return Err(anyhow!(error)).context(format!("waiting for run {id} to end")),
            Err(_) => {
                let last = last.map(|error| format!(" (last error: {error})")).unwrap_or_default();
                bail!("run {id} did not end within {timeout:?}{last}");
            }
        }
    }
}

/// The pid of the coordinator that holds the leadership lease (its holder is
/// `<host>/<pid>/…`), if one does and it can be read within 2 s.
pub async fn leader_pid(js: &jetstream::Context) -> Option<i32> {
    let read = async {
        let store = js.get_key_value(names::LEADER_BUCKET).await.ok()?;
        let holder = store.get(names::LEADER_KEY).await.ok()??;
        String::from_utf8_lossy(&holder).split('/').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), read).await.ok().flatten()
}

/// Polls `condition` every 50 ms until it holds, panicking after `timeout` with what was
/// awaited. Only for conditions nothing signals: a file's content, a process's state, the
/// output of a command.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(POLL_EVERY);
    }
}
