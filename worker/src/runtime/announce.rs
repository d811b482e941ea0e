//! The worker's entry in the registry, KV `sluice-workers`: announced at start and renewed.
//!
//! The entry, a [`WorkerRecord`] under `<pool>.<worker id>`, is renewed every
//! [`WORKER_ANNOUNCE_INTERVAL_MS`] (the bucket drops an entry [`WORKER_ENTRY_TTL_MS`] after
//! its last renewal, so a worker that died drops out) and deleted on a clean shutdown. A
//! failed announcement is logged and tried again at the next renewal, never fatal. Before it
//! fetches anything, a worker checks that its pool's live workers serve the same kinds as
//! it does ([`check_kinds`]): routing inside a pool is not by kind.
//!
//! [`WORKER_ENTRY_TTL_MS`]: sluice_proto::limits::WORKER_ENTRY_TTL_MS

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::Utc;
use futures::TryStreamExt;
use sluice_proto::limits::WORKER_ANNOUNCE_INTERVAL_MS;
use sluice_proto::{SCHEMA_VERSION, WorkerRecord, decode, encode, names};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::runtime::Phase;

/// Announces one worker while it runs.
pub(crate) struct Announcer {
    bucket: kv::Store,
    key: String,
    /// What is announced; `busy` is filled in at each announcement.
    record: WorkerRecord,
    /// The worker's slots: those taken are its busy ones.
    slots: Arc<Semaphore>,
    /// Becomes [`Phase::Ready`] at the first announcement that is stored.
    phase: watch::Sender<Phase>,
}

impl Announcer {
    /// `kinds` sorted; `slots` the semaphore of the worker's `config.concurrency` slots.
    pub(crate) fn new(
        bucket: kv::Store,
        config: &WorkerConfig,
        kinds: Vec<String>,
        slots: Arc<Semaphore>,
        phase: watch::Sender<Phase>,
    ) -> Self {
        let record = WorkerRecord {
            schema_version: SCHEMA_VERSION,
            worker_id: config.worker_id.clone(),
            pool: config.pool.clone(),
            kinds,
            protocol_versions: vec![SCHEMA_VERSION],
            version: env!("CARGO_PKG_VERSION").to_owned(),
            slots: u32::try_from(config.concurrency).unwrap_or(u32::MAX),
            busy: 0,
            started_at: Utc::now(),
            leader: false,
        };
        let key = entry_key(&config.pool, &config.worker_id);
        Self { bucket, key, record, slots, phase }
    }

    /// Announces now, then every [`WORKER_ANNOUNCE_INTERVAL_MS`] until `stop` is cancelled;
    /// then deletes the entry.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut renewals = tokio::time::interval(Duration::from_millis(WORKER_ANNOUNCE_INTERVAL_MS));
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = renewals.tick() => {}
            }
            match self.announce().await {
                Ok(()) => {
                    // Only the first: a draining worker stays draining.
                    self.phase.send_if_modified(|phase| {
                        let first = *phase == Phase::Opening;
                        if first {
                            *phase = Phase::Ready;
                        }
                        first
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, key = %self.key, "announcing this worker failed; trying again at the next renewal")
                }
            }
        }
        if let Err(error) = self.bucket.delete(&self.key).await {
            tracing::warn!(%error, key = %self.key, "cannot remove this worker's entry; it expires on its own");
        }
    }

    /// Stores the entry as it stands now.
    async fn announce(&self) -> Result<(), WorkerError> {
        let taken = (self.record.slots as usize).saturating_sub(self.slots.available_permits());
        let record = WorkerRecord { busy: u32::try_from(taken).unwrap_or(u32::MAX), ..self.record.clone() };
        let payload = encode(&record).map_err(|error| WorkerError::encode("encoding the worker record", error))?;
        self.bucket.put(&self.key, payload.into()).await.map_err(|error| {
            WorkerError::nats(format!("writing {} in KV {}", self.key, names::WORKERS_BUCKET), error)
        })?;
        Ok(())
    }
}

/// The worker's key: [`names::worker_key`] of its id as a token ([`names::worker_token`]).
pub(crate) fn entry_key(pool: &str, worker_id: &str) -> String {
    names::worker_key(pool, &names::worker_token(worker_id))
}

/// The live workers of `pool`: its entries in the registry (an unreadable one is skipped).
pub(crate) async fn live_workers(bucket: &kv::Store, pool: &str) -> Result<Vec<WorkerRecord>, WorkerError> {
    let context = || format!("reading the workers of pool {pool} in KV {}", names::WORKERS_BUCKET);
    let prefix = format!("{pool}.");
    let keys = bucket.keys().await.map_err(|error| WorkerError::nats(context(), error))?;
    let keys: Vec<String> = keys.try_collect().await.map_err(|error| WorkerError::nats(context(), error))?;
    let mut workers = Vec::new();
    for key in keys.into_iter().filter(|key| key.starts_with(&prefix)) {
        let Some(bytes) = bucket.get(&key).await.map_err(|error| WorkerError::nats(context(), error))? else {
            continue;
        };
        match decode::<WorkerRecord>(&bytes) {
            Ok(record) => workers.push(record),
            Err(error) => tracing::warn!(%key, %error, "skipping a worker entry that cannot be read"),
        }
    }
    Ok(workers)
}

/// Refuses a worker whose `kinds` differ from those of a live worker of its pool (other
/// than itself, `worker_id`), naming both sets.
pub(crate) fn check_kinds(pool: &str, worker_id: &str, kinds: &[String], live: &[WorkerRecord]) -> Result<(), String> {
    let own: BTreeSet<&str> = kinds.iter().map(String::as_str).collect();
    for worker in live.iter().filter(|worker| worker.pool == pool && worker.worker_id != worker_id) {
        let theirs: BTreeSet<&str> = worker.kinds.iter().map(String::as_str).collect();
        if theirs != own {
            return Err(format!(
                "pool `{pool}` is served by workers with kinds [{}]; this worker has [{}]: give workers with other kinds their own pool (`pool:` in the workflow)",
                listed(&theirs),
                listed(&own)
            ));
        }
    }
    Ok(())
}

fn listed(kinds: &BTreeSet<&str>) -> String {
    kinds.iter().copied().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, pool: &str, kinds: &[&str]) -> WorkerRecord {
        WorkerRecord {
            schema_version: SCHEMA_VERSION,
            worker_id: id.into(),
            pool: pool.into(),
            kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
            protocol_versions: vec![SCHEMA_VERSION],
            version: "0.1.0".into(),
            slots: 4,
            busy: 0,
            started_at: Utc::now(),
            leader: false,
        }
    }

    fn kinds(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn a_worker_with_the_kinds_of_its_pool_or_the_first_one_starts() {
        assert_eq!(check_kinds("default", "me", &kinds(&["a", "b"]), &[]), Ok(()));
        let live = [worker("w1", "default", &["a", "b"]), worker("w2", "default", &["b", "a"])];
        assert_eq!(check_kinds("default", "me", &kinds(&["b", "a"]), &live), Ok(()));
    }

    #[test]
    fn a_worker_whose_kinds_differ_from_a_live_workers_is_refused_naming_both_sets() {
        let live = [worker("w1", "default", &["a", "b"])];
        let more = check_kinds("default", "me", &kinds(&["c", "a", "b"]), &live);
        assert_eq!(
            more,
            Err("pool `default` is served by workers with kinds [a, b]; this worker has [a, b, c]: give workers with other kinds their own pool (`pool:` in the workflow)".into())
        );
        let fewer = check_kinds("default", "me", &kinds(&["a"]), &live).unwrap_err();
        assert!(fewer.contains("kinds [a, b]; this worker has [a]"), "{fewer}");
        // One odd worker among several is enough.
        let mixed = [worker("w1", "default", &["a"]), worker("w2", "default", &["a", "b"])];
        assert!(check_kinds("default", "me", &kinds(&["a"]), &mixed).is_err());
    }

    #[test]
    fn only_other_workers_of_the_same_pool_count() {
        let elsewhere = [worker("w1", "gpu", &["train"]), worker("c1", names::COORDINATOR_POOL_TOKEN, &[])];
        assert_eq!(check_kinds("default", "me", &kinds(&["exec"]), &elsewhere), Ok(()));
        // Its own entry (left by the same worker id) is not another worker.
        let itself = [worker("me", "default", &["old"])];
        assert_eq!(check_kinds("default", "me", &kinds(&["exec"]), &itself), Ok(()));
    }

    #[test]
    fn the_key_is_pool_dot_id_with_one_token_for_the_id() {
        assert_eq!(entry_key("default", "host-12"), "default.host-12");
        assert_eq!(entry_key("gpu", "node.example.com-7"), "gpu.node_example_com-7");
    }
}
