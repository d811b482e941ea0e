//! The coordinator's entry in the registry (KV `sluice-workers`, key
//! `_coordinator.<id>`), renewed while it runs, saying whether it leads; and the pools'
//! last-announced kinds, copied from the workers' entries into the pool records (which do
//! not expire), so `submit` can warn about a kind even while a pool is scaled to zero.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use sluice_client::stores;
use sluice_proto::{PoolRecord, SCHEMA_VERSION, WorkerRecord, encode, names};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::topology::Topology;

/// How often the coordinator renews its entry (the bucket expires entries after 15 s).
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(sluice_proto::limits::WORKER_ANNOUNCE_INTERVAL_MS);

/// Announces the coordinator every [`ANNOUNCE_EVERY`], and at once when it starts or stops
/// leading, until `shutdown`; then removes its entry. `leading` is sent by the leadership
/// loop. Failures are logged, never fatal.
pub async fn coordinator(
    js: jetstream::Context,
    id: String,
    mut leading: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let started_at = Utc::now();
    let key = names::worker_key(names::COORDINATOR_POOL_TOKEN, &id);
    let mut ticker = tokio::time::interval(ANNOUNCE_EVERY);
    let mut bucket = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            changed = leading.changed() => if changed.is_err() { break },
        }
        if bucket.is_none() {
            bucket = stores::open_bucket(&js, names::WORKERS_BUCKET).await.ok().flatten();
        }
        let Some(store) = &bucket else { continue };
        let record = WorkerRecord {
            schema_version: SCHEMA_VERSION,
            worker_id: id.clone(),
            pool: names::COORDINATOR_POOL_TOKEN.to_owned(),
            kinds: Vec::new(),
            protocol_versions: vec![SCHEMA_VERSION],
            version: env!("CARGO_PKG_VERSION").to_owned(),
            slots: 0,
            busy: 0,
            started_at,
            leader: *leading.borrow_and_update(),
        };
        match encode(&record) {
            Ok(payload) => {
                if let Err(error) = store.put(&key, payload.into()).await {
                    tracing::debug!(%error, "cannot announce the coordinator; trying again later");
                }
            }
            Err(error) => tracing::error!(%error, "cannot encode the coordinator's announcement"),
        }
    }
    if let Some(store) = &bucket
        && let Err(error) = store.delete(&key).await
    {
        tracing::debug!(%error, "cannot remove the coordinator's announcement");
    }
}

/// The kinds each pool's live workers announce (by decision, all of a pool's workers serve
/// the same kinds; the first entry's stand for the pool).
pub fn kinds_by_pool(workers: &[WorkerRecord]) -> BTreeMap<&str, &[String]> {
    let mut kinds = BTreeMap::new();
    for worker in workers.iter().filter(|worker| worker.pool != names::COORDINATOR_POOL_TOKEN) {
        kinds.entry(worker.pool.as_str()).or_insert(worker.kinds.as_slice());
    }
    kinds
}

/// The newest schema every live worker of each pool reads: what the coordinator may
/// dispatch to it (an older worker would hand a newer job back unread). Pools without live
/// workers are absent: they get the current schema.
pub fn schema_by_pool(workers: &[WorkerRecord]) -> BTreeMap<String, u32> {
    let mut schemas = BTreeMap::new();
    for worker in workers.iter().filter(|worker| worker.pool != names::COORDINATOR_POOL_TOKEN) {
        // A worker that lists no versions predates the list: it reads schema 1.
        let newest = worker.protocol_versions.iter().copied().max().unwrap_or(1).min(SCHEMA_VERSION);
        let schema = schemas.entry(worker.pool.clone()).or_insert(newest);
        *schema = (*schema).min(newest);
    }
    schemas
}

/// Reads the registry: copies the live workers' kinds into their pools' records where they
/// changed, and returns the schema each pool's workers read.
pub async fn refresh_pools(topology: &Topology) -> Result<BTreeMap<String, u32>, ServiceError> {
    let workers: Vec<WorkerRecord> = stores::load_all(&topology.workers).await?;
    for (pool, kinds) in kinds_by_pool(&workers) {
        let Some((mut record, revision)) = stores::entry::<PoolRecord>(&topology.pools, pool).await? else { continue };
        if record.kinds == kinds {
            continue;
        }
        record.kinds = kinds.to_vec();
        record.updated_at = Utc::now();
        // A pool changed meanwhile (a `pool apply`) is looked at again next time.
        if let Err(error) = topology.pools.update(pool, encode(&record)?.into(), revision).await {
            tracing::debug!(%error, pool, "pool changed meanwhile; its kinds are recorded next time");
        }
    }
    Ok(schema_by_pool(&workers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(pool: &str, kinds: &[&str]) -> WorkerRecord {
        WorkerRecord {
            schema_version: SCHEMA_VERSION,
            worker_id: format!("{pool}-1"),
            pool: pool.into(),
            kinds: kinds.iter().map(|kind| kind.to_string()).collect(),
            protocol_versions: vec![SCHEMA_VERSION],
            version: "0".into(),
            slots: 4,
            busy: 0,
            started_at: Utc::now(),
            leader: false,
        }
    }

    #[test]
    fn each_pool_gets_its_workers_kinds_and_coordinators_are_not_a_pool() {
        let workers =
            [worker("default", &["exec", "noop"]), worker("rust", &["calibrate"]), worker("_coordinator", &[])];
        let kinds = kinds_by_pool(&workers);
        assert_eq!(kinds.len(), 2);
        assert_eq!(kinds["default"], ["exec", "noop"]);
        assert_eq!(kinds["rust"], ["calibrate"]);
    }

    #[test]
    fn a_pool_gets_the_newest_schema_all_its_live_workers_read() {
        let mut old = worker("default", &["noop"]);
        old.protocol_versions = vec![1];
        let mut unlisted = worker("legacy", &["noop"]);
        unlisted.protocol_versions = vec![];
        let workers = [old, worker("default", &["noop"]), worker("rust", &["calibrate"]), unlisted];
        let schemas = schema_by_pool(&workers);
        assert_eq!(schemas["default"], 1, "one old worker holds the pool back");
        assert_eq!(schemas["rust"], SCHEMA_VERSION);
        assert_eq!(schemas["legacy"], 1);
        assert!(!schemas.contains_key("gpu"), "a pool without workers is not held back");
    }
}
