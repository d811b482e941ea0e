//! Reading Sluice's durable records: runs, jobs, schedules, backfills, rejections,
//! control outcomes and notification deliveries. Read only: the coordinator is the one writer of all of them.

use std::collections::HashMap;

use async_nats::jetstream::{self, context::KeyValueErrorKind, kv};
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use sluice_proto::messages::Versioned;
use sluice_proto::notify::NotifyStatus;
use sluice_proto::{
    BackfillRecord, ControlOutcome, JobRecord, PoolRecord, Rejection, RequestId, RunId, RunRecord, ScheduleRecord,
    WorkerRecord, WorkflowRecord, decode, names,
};

use crate::error::{ClientError, NatsContext};

/// Longest wait for the next record of an ordered read before it counts as stalled.
pub const READ_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// Concurrent reads when loading many records.
const READ_CONCURRENCY: usize = 64;

/// Read handles on Sluice's buckets. Opening creates nothing.
#[derive(Clone)]
pub struct Stores {
    js: jetstream::Context,
    runs: kv::Store,
    jobs: kv::Store,
    schedules: kv::Store,
    backfills: kv::Store,
}

impl Stores {
    /// Opens the buckets; `None` when Sluice was never set up on this server (no
    /// coordinator has run against it).
    pub async fn open(js: &jetstream::Context) -> Result<Option<Self>, ClientError> {
        let (Some(runs), Some(jobs), Some(schedules), Some(backfills)) = (
            open_bucket(js, names::RUNS_BUCKET).await?,
            open_bucket(js, names::JOBS_BUCKET).await?,
            open_bucket(js, names::SCHEDULES_BUCKET).await?,
            open_bucket(js, names::BACKFILLS_BUCKET).await?,
        ) else {
            return Ok(None);
        };
        Ok(Some(Self { js: js.clone(), runs, jobs, schedules, backfills }))
    }

    /// [`Stores::open`], with a missing setup as an error that says what to do.
    pub async fn open_required(js: &jetstream::Context) -> Result<Self, ClientError> {
        Self::open(js).await?.ok_or_else(|| ClientError::NotSetUp { missing: format!("KV {}", names::RUNS_BUCKET) })
    }

    pub fn js(&self) -> &jetstream::Context {
        &self.js
    }

    /// One run record.
    pub async fn run(&self, id: &RunId) -> Result<Option<RunRecord>, ClientError> {
        Ok(entry(&self.runs, &id.to_string()).await?.map(|(record, _)| record))
    }

    /// How the notifications of run `id` were delivered, oldest first.
    pub async fn notifications(&self, id: &RunId) -> Result<Vec<NotifyStatus>, ClientError> {
        run_notifications(&self.js, id).await
    }

    /// Every job record of a run, children included, by path: those stored, and for each
    /// workflow job not yet stored, the state the run began with (`RunRecord::first_state`:
    /// a job's record is written once it leaves that state).
    pub async fn jobs(&self, run: &RunRecord) -> Result<HashMap<String, JobRecord>, ClientError> {
        Ok(with_first_states(run, run_jobs(&self.js, &run.id).await?))
    }

    /// One job's record (a child's by its path), or for a workflow job not yet stored the
    /// state the run began with; `None`: the run has no such job.
    pub async fn job(&self, run: &RunRecord, path: &str) -> Result<Option<JobRecord>, ClientError> {
        if let Some((record, _)) = entry(&self.jobs, &names::job_key(&run.id, path)).await? {
            return Ok(Some(record));
        }
        Ok(run.jobs.iter().position(|name| name == path).and_then(|index| run.first_state(index)))
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, ClientError> {
        let mut records: Vec<ScheduleRecord> = load_all(&self.schedules).await?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// One schedule.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>, ClientError> {
        Ok(entry(&self.schedules, name).await?.map(|(record, _)| record))
    }

    /// Every workflow applied here (`sluice workflow apply`), by name.
    pub async fn workflows(&self) -> Result<Vec<WorkflowRecord>, ClientError> {
        // Opened when asked: a store set up before workflows were kept has no such bucket.
        let Some(bucket) = open_bucket(&self.js, names::WORKFLOWS_BUCKET).await? else { return Ok(Vec::new()) };
        let mut records: Vec<WorkflowRecord> = load_all(&bucket).await?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// One applied workflow.
    pub async fn workflow(&self, name: &str) -> Result<Option<WorkflowRecord>, ClientError> {
        let Some(bucket) = open_bucket(&self.js, names::WORKFLOWS_BUCKET).await? else { return Ok(None) };
        Ok(entry(&bucket, name).await?.map(|(record, _)| record))
    }

    /// Every backfill, newest first.
    pub async fn backfills(&self) -> Result<Vec<BackfillRecord>, ClientError> {
        let mut records: Vec<BackfillRecord> = load_all(&self.backfills).await?;
        records.sort_by_key(|record| std::cmp::Reverse(record.created_at));
        Ok(records)
    }

    /// One backfill.
    pub async fn backfill(&self, id: &RunId) -> Result<Option<BackfillRecord>, ClientError> {
        Ok(entry(&self.backfills, &id.to_string()).await?.map(|(record, _)| record))
    }

    /// Every declared pool, by name.
    pub async fn pools(&self) -> Result<Vec<PoolRecord>, ClientError> {
        let Some(bucket) = open_bucket(&self.js, names::POOLS_BUCKET).await? else { return Ok(Vec::new()) };
        let mut pools: Vec<PoolRecord> = load_all(&bucket).await?;
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// The live workers and coordinators, by pool and id.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, ClientError> {
        let Some(bucket) = open_bucket(&self.js, names::WORKERS_BUCKET).await? else { return Ok(Vec::new()) };
        let mut workers: Vec<WorkerRecord> = load_all(&bucket).await?;
        workers.sort_by(|a, b| (&a.pool, &a.worker_id).cmp(&(&b.pool, &b.worker_id)));
        Ok(workers)
    }

    /// A pool's work as an autoscaler sees it: jobs waiting, and jobs delivered but not yet
    /// acknowledged; `None` when its consumer does not exist.
    pub async fn pool_lag(&self, pool: &str) -> Result<Option<PoolLag>, ClientError> {
        let Ok(stream) = self.js.get_stream(names::JOBS_STREAM).await else { return Ok(None) };
        match stream.consumer_info(names::pool_consumer(pool)).await {
            Ok(info) => Ok(Some(PoolLag { pending: info.num_pending, ack_pending: info.num_ack_pending as u64 })),
            Err(error) => {
                tracing::debug!(%error, pool, "no consumer for the pool");
                Ok(None)
            }
        }
    }

    /// The rejected submissions, oldest first, at most `limit` of the newest.
    pub async fn rejections(&self, limit: usize) -> Result<Vec<Rejection>, ClientError> {
        rejections(&self.js, limit).await
    }

    /// The rejection recorded for a run id, if its submission was refused.
    pub async fn rejection(&self, id: &RunId) -> Result<Option<Rejection>, ClientError> {
        rejection(&self.js, id).await
    }
}

/// A pool's lag: what KEDA's nats-jetstream scaler adds up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLag {
    pub pending: u64,
    pub ack_pending: u64,
}

/// The answer to a control request, if the coordinator has given it.
pub async fn outcome(js: &jetstream::Context, id: &RequestId) -> Result<Option<ControlOutcome>, ClientError> {
    let Some(bucket) = open_bucket(js, names::OUTCOMES_BUCKET).await? else { return Ok(None) };
    Ok(entry(&bucket, &id.to_string()).await?.map(|(outcome, _)| outcome))
}

/// A bucket, or `None` when it does not exist.
pub async fn open_bucket(js: &jetstream::Context, name: &str) -> Result<Option<kv::Store>, ClientError> {
    match js.get_key_value(name).await {
        Ok(store) => Ok(Some(store)),
        Err(error) if error.kind() == KeyValueErrorKind::GetBucket => Ok(None),
        Err(error) => Err(error).context(format!("opening KV {name}")),
    }
}

/// Reads one record with its revision (for a revision-checked update); `None` if it is
/// gone. A record that cannot be decoded is an error naming it.
pub async fn entry<T: DeserializeOwned + Versioned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, ClientError> {
    let Some(entry) = store.entry(key).await.context(format!("reading {key}"))? else { return Ok(None) };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    Ok(Some((decode::<T>(&entry.value)?, entry.revision)))
}

/// Reads every record of a bucket (schedules, backfills, runs). Records that cannot be
/// decoded are reported, not fatal.
pub async fn load_all<T: DeserializeOwned + Versioned>(store: &kv::Store) -> Result<Vec<T>, ClientError> {
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys.try_collect().await.context("listing records")?,
        Err(error) => return Err(error).context("listing records"),
    };
    let records: Vec<Option<T>> = futures::stream::iter(keys)
        .map(|key| async move {
            let bytes = store.get(key.clone()).await.context(format!("reading {key}"))?;
            Ok::<_, ClientError>(bytes.and_then(|bytes| match decode::<T>(&bytes) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::error!(%key, %error, "record cannot be decoded; skipping it");
                    None
                }
            }))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(records.into_iter().flatten().collect())
}

/// The live workers and coordinators in KV `sluice-workers` (none before Sluice is set up).
pub async fn live_workers(js: &jetstream::Context) -> Result<Vec<WorkerRecord>, ClientError> {
    match Stores::open(js).await? {
        Some(stores) => stores.workers().await,
        None => Ok(Vec::new()),
    }
}

/// Reads every job record of a run, children included, with its revision: the latest
/// value of each key under `<run_id>.` in KV `sluice-jobs`, in one ordered read.
pub async fn run_jobs(js: &jetstream::Context, id: &RunId) -> Result<HashMap<String, (JobRecord, u64)>, ClientError> {
    job_records(js, id, names::run_jobs_filter(id)).await
}

async fn job_records(
    js: &jetstream::Context,
    id: &RunId,
    filter: String,
) -> Result<HashMap<String, (JobRecord, u64)>, ClientError> {
    let what = format!("reading the jobs of run {id}");
    let mut records = HashMap::new();
    for (key, payload, revision) in latest_values(js, names::JOBS_BUCKET, vec![filter], &what).await? {
        let Some((_, path)) = names::parse_job_key(&key) else { continue };
        match decode::<JobRecord>(&payload) {
            Ok(record) => {
                records.insert(path.to_owned(), (record, revision));
            }
            Err(error) => tracing::error!(%error, job = path, run = %id, "job record cannot be decoded; skipped"),
        }
    }
    Ok(records)
}

/// How the notifications of a run were delivered (KV `sluice-notifications`, keys under
/// `<run_id>.`), oldest attempt first.
pub async fn run_notifications(js: &jetstream::Context, id: &RunId) -> Result<Vec<NotifyStatus>, ClientError> {
    let what = format!("reading the notifications of run {id}");
    let mut statuses = Vec::new();
    if js.get_stream(names::kv_stream(names::NOTIFICATIONS_BUCKET)).await.is_err() {
        // A store set up before notifications existed: none were sent.
        return Ok(statuses);
    }
    let filter = names::run_notifications_filter(id);
    for (key, payload, _) in latest_values(js, names::NOTIFICATIONS_BUCKET, vec![filter], &what).await? {
        match decode::<NotifyStatus>(&payload) {
            Ok(status) => statuses.push(status),
            Err(error) => tracing::error!(%error, key, run = %id, "notification status cannot be decoded; skipped"),
        }
    }
    statuses.sort_by(|a, b| (a.last_at, &a.id).cmp(&(b.last_at, &b.id)));
    Ok(statuses)
}

/// The latest value of every key of `bucket` matching one of `filters` (`$KV.<bucket>.…`
/// subject filters), deleted keys left out, in one read: (key, value, revision).
async fn latest_values(
    js: &jetstream::Context,
    bucket: &str,
    filters: Vec<String>,
    what: &str,
) -> Result<Vec<(String, bytes::Bytes, u64)>, ClientError> {
    use async_nats::jetstream::consumer::DeliverPolicy;
    let stream_name = names::kv_stream(bucket);
    let stream = js.get_stream(&stream_name).await.context(format!("opening {stream_name}"))?;
    let mut consumer =
        one_shot_consumer(&stream, filters, DeliverPolicy::LastPerSubject).await.context(what.to_owned())?;
    let mut values = Vec::new();
    if consumer.info().await.context(what.to_owned())?.num_pending == 0 {
        return Ok(values);
    }
    let prefix = format!("$KV.{bucket}.");
    let mut messages = consumer.messages().await.context(what.to_owned())?;
    loop {
        // A read that stalls is an error the caller retries, never a hang.
        let Ok(next) = tokio::time::timeout(READ_STALL, messages.next()).await else {
            return Err(ClientError::Stalled(what.to_owned()));
        };
        let Some(message) = next else { break };
        let message = message.context(what.to_owned())?;
        let info = message.info().context(what.to_owned())?;
        let (revision, left) = (info.stream_sequence, info.pending);
        let deleted = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(names::HEADER_KV_OPERATION))
            .is_some_and(|operation| operation.as_str() != "PUT");
        if let Some(key) = message.subject.strip_prefix(prefix.as_str())
            && !deleted
        {
            values.push((key.to_owned(), message.payload.clone(), revision));
        }
        if left == 0 {
            break;
        }
    }
    Ok(values)
}

/// How soon the server drops a consumer made for one read, after its last use. An ordered
/// consumer lingers 30 s, and nats-server 2.15 allows a stream 1,000 consumers: pages read
/// through ordered consumers would run out of them under a few readers.
pub const ONE_SHOT_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A consumer for one read (a count, a page): ephemeral, unacknowledged, in memory, gone
/// [`ONE_SHOT_IDLE`] after its last use.
pub(crate) async fn one_shot_consumer(
    stream: &jetstream::stream::Stream,
    filters: Vec<String>,
    policy: async_nats::jetstream::consumer::DeliverPolicy,
) -> Result<jetstream::consumer::PullConsumer, async_nats::jetstream::stream::ConsumerError> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    stream
        .create_consumer(pull::Config {
            filter_subjects: filters,
            deliver_policy: policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: ONE_SHOT_IDLE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        })
        .await
}

/// Reads the rejected submissions, oldest first, at most `limit` of the newest.
pub async fn rejections(js: &jetstream::Context, limit: usize) -> Result<Vec<Rejection>, ClientError> {
    let Ok(stream) = js.get_stream(names::REJECTED_STREAM).await else { return Ok(Vec::new()) };
    let info = stream.get_info().await.context("reading the rejected stream")?;
    let last = info.state.last_sequence;
    let first = info.state.first_sequence.max(last.saturating_sub(limit as u64).saturating_add(1));
    let mut rejections = Vec::new();
    if info.state.messages == 0 {
        return Ok(rejections);
    }
    for sequence in first..=last {
        match stream.direct_get(sequence).await {
            Ok(message) => match decode::<Rejection>(&message.payload) {
                Ok(rejection) => rejections.push(rejection),
                Err(error) => tracing::warn!(sequence, %error, "rejection record cannot be decoded"),
            },
            Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {}
            Err(error) => return Err(error).context("reading a rejection"),
        }
    }
    Ok(rejections)
}

/// The rejection recorded for a run id, if its submission was refused.
pub async fn rejection(js: &jetstream::Context, id: &RunId) -> Result<Option<Rejection>, ClientError> {
    let Ok(stream) = js.get_stream(names::REJECTED_STREAM).await else { return Ok(None) };
    match stream.direct_get_last_for_subject(names::rejected_subject(Some(id))).await {
        Ok(message) => Ok(Some(decode(&message.payload)?)),
        Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context(format!("reading the rejection of run {id}")),
    }
}

/// The stored records, and for each workflow job not yet stored the state the run began
/// with (`RunRecord::first_state`: a job's record is written once it leaves that state).
/// Only the missing ones are made: a finished run has every record.
fn with_first_states(run: &RunRecord, stored: HashMap<String, (JobRecord, u64)>) -> HashMap<String, JobRecord> {
    let mut jobs: HashMap<String, JobRecord> = stored.into_iter().map(|(path, (record, _))| (path, record)).collect();
    for (index, name) in run.jobs.iter().enumerate() {
        if !jobs.contains_key(name)
            && let Some(job) = run.first_state(index)
        {
            jobs.insert(name.clone(), job);
        }
    }
    jobs
}
