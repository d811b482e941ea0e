//! Durable run and job records in JetStream KV: the coordinator's pipelined,
//! revision-checked writes (it is their only writer). Reads are `sluice_client::stores`.

use std::collections::{HashMap, HashSet};

use async_nats::jetstream;
use sluice_client::pipeline::{Outgoing, publish_all};
use sluice_client::stores;
use sluice_proto::{JobRecord, RunId, RunRecord, encode, names};

use crate::engine::Effect;
use crate::error::ServiceError;
use crate::topology::Topology;

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
/// `job_record` reads a job's record as the engine holds it now (see [`Effect::SaveJob`]);
/// `written` is told how long each pipelined segment took to be acknowledged.
pub async fn write_all<'a>(
    js: &jetstream::Context,
    saves: Vec<&Effect>,
    revisions: &mut Revisions,
    job_record: impl Fn(&RunId, &str) -> Option<&'a JobRecord>,
    written: impl Fn(std::time::Duration),
) -> Result<(), ServiceError> {
    for chunk in saves.chunks(WRITE_CHUNK) {
        // Run and job records live in two streams, which JetStream stores independently: a
        // switch from one to the other waits until what came before is stored, so readers
        // never see a record before the ones the engine ordered ahead of it (a new run's
        // jobs before the run, a rerun's run before its jobs).
        for segment in chunk.chunk_by(|a, b| is_run(a) == is_run(b)) {
            let began = std::time::Instant::now();
            write_segment(js, segment, revisions, &job_record).await?;
            written(began.elapsed());
        }
    }
    Ok(())
}

fn is_run(effect: &Effect) -> bool {
    matches!(effect, Effect::SaveRun(_))
}

/// Publishes saves of one stream, pipelined, and remembers their revisions.
async fn write_segment<'a>(
    js: &jetstream::Context,
    segment: &[&Effect],
    revisions: &mut Revisions,
    job_record: &impl Fn(&RunId, &str) -> Option<&'a JobRecord>,
) -> Result<(), ServiceError> {
    let mut outgoing = Vec::with_capacity(segment.len());
    let mut keys = Vec::with_capacity(segment.len());
    for effect in segment {
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
    Ok(())
}

/// Reads one run record with its revision.
pub async fn load_run_revision(topology: &Topology, id: &RunId) -> Result<Option<(RunRecord, u64)>, ServiceError> {
    Ok(stores::entry(&topology.runs, &id.to_string()).await?)
}

/// Reads one run record.
pub async fn load_run(topology: &Topology, id: &RunId) -> Result<Option<RunRecord>, ServiceError> {
    Ok(load_run_revision(topology, id).await?.map(|(record, _)| record))
}
