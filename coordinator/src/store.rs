//! Durable run and job records in JetStream KV: pipelined writes for the coordinator, reads
//! for the coordinator's restart and for the CLI.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use sluice_proto::messages::Versioned;
use sluice_proto::{JobRecord, Rejection, RunId, RunRecord, decode, encode, names};

use crate::engine::Effect;
use crate::error::{NatsContext, ServiceError};
use crate::pipeline::{Outgoing, publish_all};
use crate::topology::Topology;

/// Longest wait for the next record of an ordered read before it counts as stalled.
const READ_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// Concurrent reads when loading many records.
const READ_CONCURRENCY: usize = 64;

/// Records written per round: a spawn of 100,000 children is encoded and published a chunk
/// at a time, so memory holds one chunk of encoded records, not all of them.
pub const WRITE_CHUNK: usize = 2048;

/// The record a `Save*` effect writes: a run, or one job of a run (borrowed: a spawn of
/// 100,000 children is not copied into keys).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum RecordKey<'a> {
    Run(RunId),
    Job(RunId, &'a str),
}

impl<'a> RecordKey<'a> {
    fn of(effect: &'a Effect) -> Option<Self> {
        match effect {
            Effect::SaveJob { run_id, job } => Some(Self::Job(*run_id, job)),
            Effect::SaveRun(run) => Some(Self::Run(run.id)),
            _ => None,
        }
    }

    fn subject(self) -> String {
        match self {
            Self::Job(run_id, path) => names::kv_subject(names::JOBS_BUCKET, &names::job_key(&run_id, path)),
            Self::Run(id) => names::kv_subject(names::RUNS_BUCKET, &id.to_string()),
        }
    }
}

/// The `Save*` effects to carry out: only the last write of each key (a batch may change
/// one job several times), in the order those writes came.
pub fn saves_of(effects: &[Effect]) -> Vec<&Effect> {
    let mut seen = HashSet::new();
    let mut saves = Vec::new();
    for effect in effects.iter().rev() {
        if let Some(key) = RecordKey::of(effect)
            && seen.insert(key)
        {
            saves.push(effect);
        }
    }
    saves.reverse();
    saves
}

/// The revision of each record this coordinator last read or wrote. Every write of a known
/// record expects it (`Nats-Expected-Last-Subject-Sequence`; 0 for one that must not exist
/// yet), so a coordinator that lost its leadership fails on its first stale write instead of
/// overwriting what the new leader wrote. Records never read nor written (the jobs of a run
/// being created) are written unconditionally, so a creation a crash interrupted can finish.
/// Kept per run and job path (not per KV subject): one entry per job of every active run.
#[derive(Default)]
pub struct Revisions {
    runs: HashMap<RunId, u64>,
    jobs: HashMap<RunId, HashMap<String, u64>>,
}

impl Revisions {
    pub fn remember_run(&mut self, id: &RunId, revision: u64) {
        self.runs.insert(*id, revision);
    }

    pub fn remember_job(&mut self, id: &RunId, job: &str, revision: u64) {
        self.set(RecordKey::Job(*id, job), revision);
    }

    /// Drops what is known of a run that left memory.
    pub fn forget_run(&mut self, run: &RunRecord) {
        self.runs.remove(&run.id);
        self.jobs.remove(&run.id);
    }

    fn get(&self, key: RecordKey<'_>) -> Option<u64> {
        match key {
            RecordKey::Run(id) => self.runs.get(&id).copied(),
            RecordKey::Job(id, path) => self.jobs.get(&id).and_then(|jobs| jobs.get(path)).copied(),
        }
    }

    fn set(&mut self, key: RecordKey<'_>, revision: u64) {
        match key {
            RecordKey::Run(id) => {
                self.runs.insert(id, revision);
            }
            RecordKey::Job(id, path) => {
                let jobs = self.jobs.entry(id).or_default();
                match jobs.get_mut(path) {
                    Some(known) => *known = revision,
                    None => {
                        jobs.insert(path.to_owned(), revision);
                    }
                }
            }
        }
    }
}

/// Publishes every save, pipelined, a chunk at a time, and waits for every acknowledgement:
/// when this returns `Ok`, every record is durable. One connection keeps them in order.
/// `job_record` reads a job's record as the engine holds it now (see [`Effect::SaveJob`]).
pub async fn write_all<'a>(
    js: &jetstream::Context,
    saves: Vec<&Effect>,
    revisions: &mut Revisions,
    job_record: impl Fn(&RunId, &str) -> Option<&'a JobRecord>,
) -> Result<(), ServiceError> {
    for chunk in saves.chunks(WRITE_CHUNK) {
        let mut outgoing = Vec::with_capacity(chunk.len());
        let mut keys = Vec::with_capacity(chunk.len());
        for effect in chunk {
            let Some(key) = RecordKey::of(effect) else { continue };
            let payload = match effect {
                Effect::SaveJob { run_id, job } => match job_record(run_id, job) {
                    Some(record) => encode(record)?,
                    None => {
                        // The engine named a job it does not have: a bug, not a reason to stop.
                        tracing::error!(run = %run_id, %job, "asked to save a job the run does not have");
                        continue;
                    }
                },
                Effect::SaveRun(run) => encode(&**run)?,
                _ => continue,
            };
            let mut headers = async_nats::HeaderMap::new();
            if let Some(expected) = revisions.get(key) {
                headers.insert(names::HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
            }
            let subject = key.subject();
            outgoing.push(Outgoing {
                what: format!("{subject} (a newer coordinator may have taken over)"),
                subject,
                headers,
                payload: payload.into(),
            });
            keys.push(key);
        }
        let acks = publish_all(js, outgoing).await?;
        for (key, ack) in keys.into_iter().zip(acks) {
            revisions.set(key, ack.sequence);
        }
    }
    Ok(())
}

/// Reads one run record with its revision.
pub async fn load_run_revision(topology: &Topology, id: &RunId) -> Result<Option<(RunRecord, u64)>, ServiceError> {
    entry(&topology.runs, &id.to_string()).await
}

/// Reads every job record of a run, children included, with its revision: the latest
/// value of each key under `<run_id>.` in KV `sluice-jobs`, in one ordered read.
pub async fn load_jobs_revisions(
    topology: &Topology,
    run: &RunRecord,
) -> Result<HashMap<String, (JobRecord, u64)>, ServiceError> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let id = run.id;
    let stream_name = format!("KV_{}", names::JOBS_BUCKET);
    let stream = topology.js.get_stream(&stream_name).await.context(format!("opening {stream_name}"))?;
    let filter = names::run_jobs_filter(&id);
    let mut consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.clone(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .context(format!("reading the jobs of run {id}"))?;
    let mut records = HashMap::new();
    let pending = consumer.info().await.context(format!("reading the jobs of run {id}"))?.num_pending;
    if pending == 0 {
        return Ok(records);
    }
    let prefix = format!("$KV.{}.{id}.", names::JOBS_BUCKET);
    let mut messages = consumer.messages().await.context(format!("reading the jobs of run {id}"))?;
    loop {
        // A read that stalls is an error the caller retries, never a hang.
        let Ok(next) = tokio::time::timeout(READ_STALL, messages.next()).await else {
            return Err(ServiceError::Stalled(format!("reading the jobs of run {id}")));
        };
        let Some(message) = next else { break };
        let message = message.context(format!("reading the jobs of run {id}"))?;
        let info = message.info().context(format!("reading the jobs of run {id}"))?;
        let (revision, left) = (info.stream_sequence, info.pending);
        let deleted = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get("KV-Operation"))
            .is_some_and(|operation| operation.as_str() != "PUT");
        if let Some(path) = message.subject.strip_prefix(prefix.as_str())
            && !deleted
        {
            match decode::<JobRecord>(&message.payload) {
                Ok(record) => {
                    records.insert(path.to_owned(), (record, revision));
                }
                Err(error) => tracing::error!(%error, job = path, run = %id, "job record cannot be decoded; skipped"),
            }
        }
        if left == 0 {
            break;
        }
    }
    Ok(records)
}

/// Reads one run record.
pub async fn load_run(topology: &Topology, id: &RunId) -> Result<Option<RunRecord>, ServiceError> {
    match topology.runs.get(id.to_string()).await.context(format!("reading run {id}"))? {
        Some(bytes) => Ok(Some(decode(&bytes)?)),
        None => Ok(None),
    }
}

/// Reads every job record of a run, children included.
pub async fn load_jobs(topology: &Topology, run: &RunRecord) -> Result<HashMap<String, JobRecord>, ServiceError> {
    Ok(load_jobs_revisions(topology, run).await?.into_iter().map(|(path, (record, _))| (path, record)).collect())
}

/// Reads every run record. Records that cannot be decoded are reported, not fatal.
pub async fn load_all_runs(topology: &Topology) -> Result<Vec<RunRecord>, ServiceError> {
    load_all(&topology.runs).await
}

/// Reads every record of a bucket (schedules, backfills, runs). Records that cannot be
/// decoded are reported, not fatal.
pub async fn load_all<T: DeserializeOwned + Versioned>(store: &kv::Store) -> Result<Vec<T>, ServiceError> {
    let keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys.try_collect().await.context("listing records")?,
        Err(error) => return Err(error).context("listing records"),
    };
    let records: Vec<Option<T>> = futures::stream::iter(keys)
        .map(|key| async move {
            let bytes = store.get(key.clone()).await.context(format!("reading {key}"))?;
            Ok::<_, ServiceError>(bytes.and_then(|bytes| match decode::<T>(&bytes) {
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

/// Reads one record with its revision (for a revision-checked update); `None` if it is
/// gone. A record that cannot be decoded is an error naming it.
pub async fn entry<T: DeserializeOwned + Versioned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, ServiceError> {
    let Some(entry) = store.entry(key).await.context(format!("reading {key}"))? else { return Ok(None) };
    if entry.operation != kv::Operation::Put {
        return Ok(None);
    }
    Ok(Some((decode::<T>(&entry.value)?, entry.revision)))
}

/// Reads the rejected submissions, oldest first, at most `limit` of the newest.
pub async fn load_rejections(js: &jetstream::Context, limit: usize) -> Result<Vec<Rejection>, ServiceError> {
    let stream = js.get_stream(names::REJECTED_STREAM).await.context("opening the rejected stream")?;
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
                Err(error) => {
                    tracing::warn!(sequence, %error, "rejection record cannot be decoded")
                }
            },
            Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => {}
            Err(error) => return Err(error).context("reading a rejection"),
        }
    }
    Ok(rejections)
}

/// The rejection recorded for a run id, if its submission was refused.
pub async fn load_rejection(js: &jetstream::Context, id: &RunId) -> Result<Option<Rejection>, ServiceError> {
    let stream = js.get_stream(names::REJECTED_STREAM).await.context("opening the rejected stream")?;
    match stream.direct_get_last_for_subject(names::rejected_subject(Some(id))).await {
        Ok(message) => Ok(Some(decode(&message.payload)?)),
        Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context(format!("reading the rejection of run {id}")),
    }
}
