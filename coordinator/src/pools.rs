//! Declared pools: a pool exists once declared (`sluice pool apply`, or `default`, which
//! the coordinator declares at start). Declaring one creates its durable consumer
//! `pool-<name>`, so an autoscaler sees the pool's lag before any worker has run; workers
//! only open it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::consumer;
use chrono::{DateTime, Utc};
use sluice_client::stores;
use sluice_proto::limits::{
    POOL_ACK_WAIT_MAX_MS, POOL_ACK_WAIT_MIN_MS, POOL_MAX_DELIVER_MAX, POOL_MAX_DELIVER_MIN, POOLS_MAX,
};
use sluice_proto::spec::{DEFAULT_POOL, check_name};
use sluice_proto::{PoolRecord, PoolSettings, RefusalKind, SCHEMA_VERSION, encode, names};

use crate::control::Answer;
use crate::error::{NatsContext, ServiceError, revision_checked};
use crate::topology::Topology;

/// A new pool's ack wait: a job whose worker stops answering is delivered again after this.
pub const ACK_WAIT_DEFAULT_MS: u64 = 30_000;
/// A new pool's deliveries of one job before JetStream gives up on it (a backstop: Sluice
/// counts attempts itself and allows at most 100, plus hand-backs on shutdown). Reaching it
/// sends a MAX_DELIVERIES advisory, which the coordinator turns into a dead letter.
pub const MAX_DELIVER_DEFAULT: i64 = 120;
/// Jobs a pool may have delivered and not yet acknowledged, across all its workers.
pub const POOL_MAX_ACK_PENDING: i64 = 10_000;

const _: () = assert!(MAX_DELIVER_DEFAULT > sluice_proto::limits::RETRY_MAX_ATTEMPTS_LIMIT as i64);
const _: () = assert!(ACK_WAIT_DEFAULT_MS >= POOL_ACK_WAIT_MIN_MS && ACK_WAIT_DEFAULT_MS <= POOL_ACK_WAIT_MAX_MS);

/// A pool with the default settings.
pub fn new_record(name: &str, now: DateTime<Utc>) -> PoolRecord {
    PoolRecord {
        schema_version: SCHEMA_VERSION,
        name: name.to_owned(),
        ack_wait_ms: ACK_WAIT_DEFAULT_MS,
        max_deliver: MAX_DELIVER_DEFAULT,
        max_timeout_ms: None,
        kinds: Vec::new(),
        declared_at: now,
        updated_at: now,
    }
}

/// The pool record `settings` make of `existing` (or of the defaults): pure, and the
/// refusal names the setting that is out of bounds.
pub fn merge(existing: Option<&PoolRecord>, settings: &PoolSettings, now: DateTime<Utc>) -> Result<PoolRecord, String> {
    check_name("pool", &settings.name)?;
    let base = existing.cloned().unwrap_or_else(|| new_record(&settings.name, now));
    let ack_wait_ms = settings.ack_wait_ms.unwrap_or(base.ack_wait_ms);
    if !(POOL_ACK_WAIT_MIN_MS..=POOL_ACK_WAIT_MAX_MS).contains(&ack_wait_ms) {
        return Err(format!(
            "--ack-wait must be {}s to {}h, not {ack_wait_ms} ms",
            POOL_ACK_WAIT_MIN_MS / 1000,
            POOL_ACK_WAIT_MAX_MS / 3_600_000
        ));
    }
    let max_deliver = settings.max_deliver.unwrap_or(base.max_deliver);
    if !(POOL_MAX_DELIVER_MIN..=POOL_MAX_DELIVER_MAX).contains(&max_deliver) {
        return Err(format!(
            "--max-deliver must be {POOL_MAX_DELIVER_MIN} to {POOL_MAX_DELIVER_MAX}, not {max_deliver}"
        ));
    }
    let max_timeout_ms = settings.max_timeout_ms.or(base.max_timeout_ms);
    if max_timeout_ms == Some(0) {
        return Err("--max-timeout must be longer than 0s".into());
    }
    Ok(PoolRecord { ack_wait_ms, max_deliver, max_timeout_ms, updated_at: now, ..base })
}

/// The consumer a pool's workers pull from, with every setting explicit.
fn consumer_config(pool: &PoolRecord) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(names::pool_consumer(&pool.name)),
        description: Some(format!("Sluice workers of pool {}", pool.name)),
        filter_subject: names::pool_filter(&pool.name),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_millis(pool.ack_wait_ms),
        // Attempts are counted by Sluice (a worker refuses attempts past max_attempts); this
        // only catches a job whose every delivery kills its worker.
        max_deliver: pool.max_deliver,
        max_ack_pending: POOL_MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        // No inactive_threshold: an idle pool (scaled to zero) keeps its consumer.
        ..Default::default()
    }
}

/// Creates (or updates) the pool's consumer to match its record.
async fn ensure_consumer(topology: &Topology, pool: &PoolRecord) -> Result<(), ServiceError> {
    let stream = topology.js.get_stream_no_info(names::JOBS_STREAM).await.context("opening the jobs stream")?;
    stream.create_consumer(consumer_config(pool)).await.context(format!("creating consumer pool-{}", pool.name))?;
    Ok(())
}

/// Declares or updates a pool.
pub async fn apply(topology: &Topology, settings: &PoolSettings, now: DateTime<Utc>) -> Result<Answer, ServiceError> {
    let existing = stores::entry::<PoolRecord>(&topology.pools, &settings.name).await?;
    if existing.is_none() && declared(topology).await?.len() >= POOLS_MAX {
        return Ok(Answer::refused(RefusalKind::Invalid, format!("there are {POOLS_MAX} pools already (the limit)")));
    }
    let record = match merge(existing.as_ref().map(|(record, _)| record), settings, now) {
        Ok(record) => record,
        Err(reason) => return Ok(Answer::refused(RefusalKind::Invalid, reason)),
    };
    write(topology, &record, existing.map(|(_, revision)| revision)).await?;
    let verb = if record.declared_at == now { "declared" } else { "updated" };
    Ok(Answer::applied(format!("pool {} {verb}", record.name), vec![record.name]))
}

/// Stores a pool record (revision-checked), then makes its consumer match it.
async fn write(topology: &Topology, record: &PoolRecord, revision: Option<u64>) -> Result<(), ServiceError> {
    let what = format!("writing pool {}", record.name);
    match revision {
        Some(revision) => {
            revision_checked(topology.pools.update(&record.name, encode(record)?.into(), revision).await, what)?
        }
        None => topology.pools.create(&record.name, encode(record)?.into()).await.context(what)?,
    };
    ensure_consumer(topology, record).await
}

/// Declares `default` if it is not, and makes every declared pool's consumer exist (a
/// consumer deleted by hand comes back at the next start). Part of setting up the topology.
pub async fn ensure_declared(topology: &Topology, now: DateTime<Utc>) -> Result<BTreeSet<String>, ServiceError> {
    let mut pools: Vec<PoolRecord> = stores::load_all(&topology.pools).await?;
    if !pools.iter().any(|pool| pool.name == DEFAULT_POOL) {
        let record = new_record(DEFAULT_POOL, now);
        // The consumer first: once the record is there, clients take the pool as ready.
        ensure_consumer(topology, &record).await?;
        match topology.pools.create(DEFAULT_POOL, encode(&record)?.into()).await {
            Ok(_) => {}
            // Another coordinator declared it meanwhile.
            Err(error) if error.kind() == async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {}
            Err(error) => return Err(error).context("declaring pool default"),
        }
        pools.push(record);
    }
    for pool in &pools {
        ensure_consumer(topology, pool).await?;
    }
    Ok(pools.into_iter().map(|pool| pool.name).collect())
}

/// The names of the declared pools.
pub async fn declared(topology: &Topology) -> Result<BTreeSet<String>, ServiceError> {
    Ok(declared_records(topology).await?.into_iter().map(|pool| pool.name).collect())
}

/// The declared pools' records.
pub async fn declared_records(topology: &Topology) -> Result<Vec<PoolRecord>, ServiceError> {
    Ok(stores::load_all(&topology.pools).await?)
}

/// The `max_timeout` of each pool that has one, in milliseconds.
pub fn max_timeouts(pools: &[PoolRecord]) -> BTreeMap<String, u64> {
    pools.iter().filter_map(|pool| Some((pool.name.clone(), pool.max_timeout_ms?))).collect()
}

/// A job's timeout as dispatched: its own, capped at its pool's `max_timeout`; a job with
/// none gets the pool's. So no attempt outlives the pool's max timeout, which is what a
/// worker's drain (and a pod's termination grace period) is sized by.
pub fn capped_timeout(timeout_ms: Option<u64>, max_timeout_ms: Option<u64>) -> Option<u64> {
    match (timeout_ms, max_timeout_ms) {
        (Some(timeout), Some(max)) => Some(timeout.min(max)),
        (timeout, None) => timeout,
        (None, max) => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str) -> PoolSettings {
        PoolSettings { name: name.into(), ..Default::default() }
    }

    #[test]
    fn a_new_pool_gets_the_defaults_and_an_update_keeps_what_it_does_not_set() {
        let now = Utc::now();
        let new = merge(None, &settings("highmem"), now).unwrap();
        assert_eq!((new.ack_wait_ms, new.max_deliver, new.max_timeout_ms), (30_000, 120, None));
        assert_eq!(new.declared_at, now);
        let later = now + chrono::Duration::seconds(5);
        let changed = PoolSettings { ack_wait_ms: Some(5_000), ..settings("highmem") };
        let updated = merge(Some(&new), &changed, later).unwrap();
        assert_eq!((updated.ack_wait_ms, updated.max_deliver), (5_000, 120));
        assert_eq!((updated.declared_at, updated.updated_at), (now, later));
        let timeout = PoolSettings { max_timeout_ms: Some(7_200_000), ..settings("highmem") };
        assert_eq!(merge(Some(&updated), &timeout, later).unwrap().ack_wait_ms, 5_000);
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        let now = Utc::now();
        let cases = [
            (PoolSettings { ack_wait_ms: Some(10), ..settings("p") }, "--ack-wait must be 1s to 12h"),
            (PoolSettings { max_deliver: Some(1), ..settings("p") }, "--max-deliver must be 2 to 10000, not 1"),
            (PoolSettings { max_timeout_ms: Some(0), ..settings("p") }, "--max-timeout"),
            (settings("no.dots"), "pool name"),
        ];
        for (settings, needle) in cases {
            let error = merge(None, &settings, now).unwrap_err();
            assert!(error.contains(needle), "{error:?} should say {needle:?}");
        }
    }

    #[test]
    fn a_job_timeout_is_capped_at_the_pools_max_timeout() {
        assert_eq!(capped_timeout(Some(10_000), Some(3_000)), Some(3_000));
        assert_eq!(capped_timeout(Some(2_000), Some(3_000)), Some(2_000));
        assert_eq!(capped_timeout(None, Some(3_000)), Some(3_000), "no timeout: the pool's");
        assert_eq!(capped_timeout(Some(10_000), None), Some(10_000));
        assert_eq!(capped_timeout(None, None), None);
        let now = Utc::now();
        let capped = merge(None, &PoolSettings { max_timeout_ms: Some(60_000), ..settings("gpu") }, now).unwrap();
        let free = new_record("default", now);
        assert_eq!(max_timeouts(&[capped, free]), BTreeMap::from([("gpu".to_owned(), 60_000)]));
    }

    #[test]
    fn the_consumer_follows_the_record() {
        let record = merge(
            None,
            &PoolSettings { ack_wait_ms: Some(2_000), max_deliver: Some(3), ..settings("gpu") },
            Utc::now(),
        )
        .unwrap();
        let config = consumer_config(&record);
        assert_eq!(config.durable_name.as_deref(), Some("pool-gpu"));
        assert_eq!(config.filter_subject, "sluice.jobs.gpu.>");
        assert_eq!(config.ack_wait, Duration::from_secs(2));
        assert_eq!(config.max_deliver, 3);
        assert_eq!(config.inactive_threshold, Duration::ZERO, "an idle pool keeps its consumer");
    }
}
