//! Creates Sluice's streams, KV buckets and the coordinator's consumers, idempotently, with
//! every setting explicit (nothing left to library defaults).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use sluice_proto::names;

use sluice_proto::limits::SERVER_MAX_PAYLOAD_MIN_BYTES;

use crate::error::{NatsContext, ServiceError};
use crate::storage;

/// How long JetStream remembers a `Nats-Msg-Id`; covers a coordinator restart between
/// writing state and re-publishing.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long rejected submissions are kept (their size: [`crate::storage`]).
pub const REJECTED_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest a stored record may be.
pub const RECORD_MAX_BYTES: i32 = 1024 * 1024;
/// Event and submission handling time before JetStream redelivers to the coordinator (a new
/// leader does not wait for it: it recreates its consumers).
pub const COORDINATOR_ACK_WAIT: Duration = Duration::from_secs(30);
/// Events the coordinator may hold un-acknowledged (one batch at a time, with room).
pub const EVENTS_MAX_ACK_PENDING: i64 = 20_000;

/// How long the children a job spawned wait to be read (they are read, then purged, as soon
/// as the coordinator applies the job's success; this only bounds leftovers).
pub const SPAWNS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Retention of job logs: whichever limit is reached first drops the oldest lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRetention {
    pub max_age: Duration,
    /// The most the logs may take, in bytes; on a store of less than four times this they
    /// take a quarter of it ([`crate::storage::size_streams`]).
    pub max_bytes: u64,
}

impl Default for LogRetention {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(7 * 24 * 3600), max_bytes: storage::LOGS_MAX_BYTES_DEFAULT }
    }
}

/// `bytes` as a stream's `max_bytes` (sizes come from a store's, so they always fit).
fn max_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn logs_stream(retention: LogRetention, max_bytes_of: u64) -> stream::Config {
    stream::Config {
        name: names::LOGS_STREAM.to_owned(),
        description: Some("Sluice job logs: exec stdout/stderr and Rust job log lines".to_owned()),
        subjects: vec![names::LOGS_SUBJECTS.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: retention.max_age,
        max_bytes: max_bytes(max_bytes_of),
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        ..Default::default()
    }
}

/// How long the answers to control requests are kept: a client that lost its connection
/// while waiting can still read its answer for a week.
pub const OUTCOMES_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a worker's announcement lives unless renewed (workers renew every 5 s), so a
/// worker that died leaves the registry within this.
pub const WORKER_ENTRY_TTL: Duration = Duration::from_millis(sluice_proto::limits::WORKER_ENTRY_TTL_MS);

/// The coordinator's handles to the buckets it writes (it is their only writer; clients
/// read them through `sluice_client::Stores`).
#[derive(Clone)]
pub struct Topology {
    pub js: jetstream::Context,
    pub runs: kv::Store,
    pub jobs: kv::Store,
    pub idempotency: kv::Store,
    pub schedules: kv::Store,
    /// The workflows applied here (`sluice workflow apply`), by name.
    pub workflows: kv::Store,
    pub backfills: kv::Store,
    pub outcomes: kv::Store,
    pub pools: kv::Store,
    pub workers: kv::Store,
    pub active: kv::Store,
    /// Where the notifier records each notice's delivery.
    pub notifications: kv::Store,
    /// Object store `sluice-specs`: each spec once, under its hash.
    pub specs: object_store::ObjectStore,
    /// How long run and job records and the run index are kept (`None`: for ever).
    pub history_max_age: Option<Duration>,
}

fn work_queue(name: &str, subjects: &str, description: &str) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        subjects: vec![subjects.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        discard: stream::DiscardPolicy::Old,
        num_replicas: 1,
        allow_direct: true,
        ..Default::default()
    }
}

fn bucket(name: &str, description: &str, history: i64) -> kv::Config {
    kv::Config {
        bucket: name.to_owned(),
        description: description.to_owned(),
        history,
        max_value_size: RECORD_MAX_BYTES,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

/// What an operator sets on the topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopologySettings {
    pub logs: LogRetention,
    /// Replicas of every stream and bucket (`--stream-replicas`): 1 on one nats-server, 3 on
    /// a cluster, so a node can be lost without losing a write.
    pub replicas: usize,
    /// How long run and job records are kept after their last write (`--history-max-age`);
    /// `None`: for ever. A record not written for this long goes, even a running run's:
    /// choose it well above the longest run.
    pub history_max_age: Option<Duration>,
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self { logs: LogRetention::default(), replicas: 1, history_max_age: None }
    }
}

/// The shortest `--history-max-age`: JetStream deduplicates writes of a bucket within its
/// max age, and a record must outlive the writes that follow it by more than a moment.
pub const HISTORY_MAX_AGE_MIN: Duration = Duration::from_secs(1);

/// A run or job record bucket, keeping records `max_age` after their last write (for ever
/// when `None`, which JetStream spells as zero). A bucket's max age is changed by updating
/// it, so starting the coordinator with another `--history-max-age` changes it.
fn history_bucket(base: kv::Config, max_age: Option<Duration>) -> kv::Config {
    kv::Config { max_age: max_age.unwrap_or(Duration::ZERO), ..base }
}

/// Most replicas a stream may have (JetStream's own limit).
pub const STREAM_REPLICAS_MAX: usize = 5;

/// Creates every stream and bucket that is missing (and updates them to the current
/// settings), with the default settings: what `sluice dev` and tests use.
pub async fn ensure(js: &jetstream::Context) -> Result<Topology, ServiceError> {
    ensure_with(js, TopologySettings::default()).await
}

/// Creates or updates every stream, bucket and declared pool's consumer. The two streams
/// with a size (logs, rejected submissions) are sized to the store, growing or shrinking
/// when it changed; a store too small to run on is [`ServiceError::StoreTooSmall`].
pub async fn ensure_with(js: &jetstream::Context, settings: TopologySettings) -> Result<Topology, ServiceError> {
    let replicas = settings.replicas;
    let sizes = storage::plan(js, settings.logs.max_bytes, replicas).await?;
    let logs = stream::Config { num_replicas: replicas, ..logs_stream(settings.logs, sizes.logs_bytes) };
    js.create_or_update_stream(logs).await.context(format!("creating stream {}", names::LOGS_STREAM))?;
    ensure_core(js, replicas, sizes.rejected_bytes, settings.history_max_age).await
}

async fn ensure_core(
    js: &jetstream::Context,
    replicas: usize,
    rejected_bytes: u64,
    history_max_age: Option<Duration>,
) -> Result<Topology, ServiceError> {
    let queue = |name, subjects, description| stream::Config {
        num_replicas: replicas,
        ..work_queue(name, subjects, description)
    };
    let kv_bucket =
        |name, description, history| kv::Config { num_replicas: replicas, ..bucket(name, description, history) };
    let streams = [
        queue(names::SUBMIT_STREAM, names::SUBMIT_SUBJECT, "Sluice workflow submissions"),
        stream::Config {
            // Retries due later than a NAK delay should wait are scheduled messages on
            // `sluice.retries.>` (outside every pool's filter) that JetStream turns into jobs.
            subjects: vec![names::JOBS_SUBJECTS.to_owned(), names::RETRIES_SUBJECTS.to_owned()],
            allow_message_schedules: true,
            ..queue(names::JOBS_STREAM, names::JOBS_SUBJECTS, "Sluice ready jobs, one subject per pool, run and job")
        },
        queue(
            names::CONTROL_STREAM,
            names::CONTROL_SUBJECTS,
            "Sluice control requests: cancel, retry, replay, schedules, backfills, purges",
        ),
        queue(
            names::ADVISORIES_STREAM,
            names::MAX_DELIVERIES_SUBJECTS,
            "Jobs that reached max_deliver (their workers kept dying)",
        ),
        queue(names::EVENTS_STREAM, names::EVENTS_SUBJECTS, "Sluice job lifecycle events"),
        stream::Config {
            name: names::DLQ_STREAM.to_owned(),
            description: Some("Sluice dead letters: jobs whose attempts are over, until replayed or purged".to_owned()),
            subjects: vec![names::DLQ_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: names::SPAWNS_STREAM.to_owned(),
            description: Some("Sluice children spawned by jobs, until the coordinator takes them".to_owned()),
            subjects: vec![names::SPAWNS_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: SPAWNS_MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: names::INDEX_STREAM.to_owned(),
            description: Some("Sluice run index: lists by workflow, origin, state, window day, id suffix".to_owned()),
            subjects: vec![names::INDEX_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            // Its entries go with the records they point to (readers skip entries of runs
            // that are gone, and a chain walked back ends where its entries have gone).
            max_age: history_max_age.unwrap_or(Duration::ZERO),
            // JetStream wants the duplicate window within the max age.
            duplicate_window: history_max_age.map_or(DUPLICATE_WINDOW, |age| age.min(DUPLICATE_WINDOW)),
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: names::NOTIFY_STREAM.to_owned(),
            description: Some("Sluice notices waiting to be delivered to their targets (the outbox)".to_owned()),
            subjects: vec![names::NOTIFY_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: crate::notify::OUTBOX_MAX_AGE,
            max_messages: crate::notify::OUTBOX_MAX_NOTICES,
            // Full, it drops the oldest notice rather than refuse the engine a write.
            discard: stream::DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: names::REJECTED_STREAM.to_owned(),
            description: Some("Sluice submissions that were refused, with the reason".to_owned()),
            subjects: vec![names::REJECTED_SUBJECTS.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: REJECTED_MAX_AGE,
            max_bytes: max_bytes(rejected_bytes),
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        js.create_or_update_stream(config).await.context(format!("creating stream {name}"))?;
    }
    let runs = js
        .create_or_update_key_value(history_bucket(
            kv_bucket(names::RUNS_BUCKET, "Sluice run records", 1),
            history_max_age,
        ))
        .await
        .context("creating KV sluice-runs")?;
    let jobs = js
        .create_or_update_key_value(history_bucket(
            kv_bucket(names::JOBS_BUCKET, "Sluice job records", 1),
            history_max_age,
        ))
        .await
        .context("creating KV sluice-jobs")?;
    let idempotency = js
        .create_or_update_key_value(kv_bucket(names::IDEMPOTENCY_BUCKET, "Sluice idempotency keys", 1))
        .await
        .context("creating KV sluice-idempotency")?;
    let schedules = js
        .create_or_update_key_value(kv_bucket(names::SCHEDULES_BUCKET, "Sluice schedules", 1))
        .await
        .context("creating KV sluice-schedules")?;
    let workflows = js
        .create_or_update_key_value(kv_bucket(names::WORKFLOWS_BUCKET, "Sluice workflows applied, by name", 1))
        .await
        .context("creating KV sluice-workflows")?;
    let backfills = js
        .create_or_update_key_value(kv_bucket(names::BACKFILLS_BUCKET, "Sluice backfills", 1))
        .await
        .context("creating KV sluice-backfills")?;
    let outcomes = js
        .create_or_update_key_value(kv::Config {
            max_age: OUTCOMES_MAX_AGE,
            ..kv_bucket(names::OUTCOMES_BUCKET, "Sluice answers to control requests", 1)
        })
        .await
        .context("creating KV sluice-outcomes")?;
    let workers = js
        .create_or_update_key_value(kv::Config {
            max_age: WORKER_ENTRY_TTL,
            ..kv_bucket(names::WORKERS_BUCKET, "Sluice live workers and coordinators", 1)
        })
        .await
        .context("creating KV sluice-workers")?;
    let notifications = js
        .create_or_update_key_value(kv::Config {
            max_age: crate::notify::STATUS_MAX_AGE,
            ..kv_bucket(names::NOTIFICATIONS_BUCKET, "Sluice notification deliveries, by notice id", 1)
        })
        .await
        .context("creating KV sluice-notifications")?;
    let active = js
        .create_or_update_key_value(kv_bucket(names::ACTIVE_BUCKET, "Sluice running runs (what a new leader loads)", 1))
        .await
        .context("creating KV sluice-active")?;
    let specs = js
        .create_object_store(object_store::Config {
            bucket: names::SPECS_BUCKET.to_owned(),
            description: Some("Sluice workflow specs, each once, by content hash".to_owned()),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .context(format!("creating object store {}", names::SPECS_BUCKET))?;
    // Last: its `default` entry tells clients that everything else is in place.
    let pools = js
        .create_or_update_key_value(kv_bucket(names::POOLS_BUCKET, "Sluice declared pools", 1))
        .await
        .context("creating KV sluice-pools")?;
    let topology = Topology {
        js: js.clone(),
        runs,
        jobs,
        idempotency,
        schedules,
        workflows,
        backfills,
        outcomes,
        pools,
        workers,
        active,
        notifications,
        specs,
        history_max_age,
    };
    crate::pools::ensure_declared(&topology, chrono::Utc::now()).await?;
    Ok(topology)
}

/// The coordinator's durable consumer on a stream, created afresh for each leadership term:
/// on a work-queue stream unacknowledged messages stay in the stream, so a new consumer
/// delivers at once what a dead leader had taken but not finished (instead of after its ack
/// wait, which would stall runs).
pub async fn coordinator_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    durable: &str,
    filter: &str,
) -> Result<consumer::PullConsumer, ServiceError> {
    let stream = js.get_stream(stream_name).await.context(format!("opening stream {stream_name}"))?;
    if let Err(error) = stream.delete_consumer(durable).await {
        tracing::debug!(%error, consumer = durable, "no consumer to replace");
    }
    let config = consumer::pull::Config {
        durable_name: Some(durable.to_owned()),
        filter_subject: filter.to_owned(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: COORDINATOR_ACK_WAIT,
        max_deliver: -1,
        max_ack_pending: EVENTS_MAX_ACK_PENDING,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    stream.create_consumer(config).await.context(format!("creating consumer {durable}"))
}

/// Checks the server is new enough, and lets through every message and record Sluice's
/// limits allow (they are bounded below [`SERVER_MAX_PAYLOAD_MIN_BYTES`], so no write can
/// fail for its size).
pub fn check_server(client: &async_nats::Client) -> Result<(), ServiceError> {
    sluice_client::connect::check_server(client)?;
    check_max_payload(client.server_info().max_payload)
}

fn check_max_payload(max_payload: usize) -> Result<(), ServiceError> {
    if max_payload < SERVER_MAX_PAYLOAD_MIN_BYTES {
        return Err(ServiceError::ServerVersion(format!(
            "the nats-server allows messages of {max_payload} bytes (max_payload); the coordinator needs at least {SERVER_MAX_PAYLOAD_MIN_BYTES} (the default): raise max_payload in the server's configuration"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_server_that_cannot_carry_the_largest_record_is_refused_saying_why() {
        let error = super::check_max_payload(256 * 1024).unwrap_err().to_string();
        assert!(
            error.contains("allows messages of 262144 bytes (max_payload)") && error.contains("at least 1048576"),
            "{error}"
        );
        assert!(super::check_max_payload(8 * 1024 * 1024).is_ok());
    }
}
