//! The run index, written by the coordinator alone: stream `SLUICE_INDEX` holds chains of
//! entries (every run, each workflow's, each origin's, each final state's), a workflow's
//! runs by window day, and runs by id suffix; KV `sluice-active` holds the running runs, so
//! listing the newest runs and starting a new leader cost what they return, not the whole
//! history. `sluice_client::runs` reads it.
//!
//! Order: a run's entries and its `sluice-active` key are stored before its record, and the
//! key is deleted after its final record; so a run that exists is indexed, and every
//! running run is in `sluice-active` (readers skip entries of runs that never came to be).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sluice_client::pipeline::{Outgoing, publish_all};
use sluice_client::stores;
use sluice_proto::{PendingCancel, RunId, RunIndexEntry, RunRecord, SCHEMA_VERSION, decode, encode, names};

use crate::error::{NatsContext, ServiceError};
use crate::topology::Topology;

/// What happens to a run's key in KV `sluice-active`.
enum ActiveChange {
    Mark,
    Clear,
}

/// A write of a run's running-set key, as a message for a pipelined round (a KV put is a
/// publish to its subject; a delete, an empty one with the KV delete marker).
fn active_key(id: &RunId, change: ActiveChange) -> Outgoing {
    let mut headers = HeaderMap::new();
    if let ActiveChange::Clear = change {
        headers.insert(names::HEADER_KV_OPERATION, names::KV_OPERATION_DELETE);
    }
    Outgoing {
        subject: names::kv_subject(names::ACTIVE_BUCKET, &id.to_string()),
        headers,
        payload: bytes::Bytes::new(),
        what: format!("the running-set key of run {id}"),
    }
}

/// Chain heads remembered (a workflow's, an origin's, a state's): beyond this the cache is
/// cleared, and the next appends read their heads from the stream.
const HEADS_CACHED_MAX: usize = 4096;

/// The coordinator's writer of the index; one per leadership term.
pub struct Index {
    js: jetstream::Context,
    /// The last sequence of each chain this writer read or wrote, and when it was stored.
    heads: HashMap<String, (u64, DateTime<Utc>)>,
    /// The index's max age (`--history-max-age`): a remembered head may have expired.
    max_age: Option<Duration>,
}

/// Whether a chain head stored at `stored` can be appended to without reading it again: with
/// a max age on the index it may have expired (then the append, expecting it, would fail),
/// so a head older than half the max age is read again.
fn head_is_fresh(stored: DateTime<Utc>, now: DateTime<Utc>, max_age: Option<Duration>) -> bool {
    let Some(max_age) = max_age else { return true };
    let age = (now - stored).to_std().unwrap_or(Duration::ZERO);
    age < max_age / 2
}

impl Index {
    pub fn new(topology: &Topology) -> Self {
        Self { js: topology.js.clone(), heads: HashMap::new(), max_age: topology.history_max_age }
    }

    /// Indexes a run being created (or made to run again): its `sluice-active` key and,
    /// when new, its entries. Call before writing its record.
    pub async fn running(&mut self, run: &RunRecord, new: bool) -> Result<(), ServiceError> {
        if !new {
            publish_all(&self.js, [active_key(&run.id, ActiveChange::Mark)]).await?;
            return Ok(());
        }
        let entry = entry_of(run);
        let chains = [
            names::INDEX_ALL_SUBJECT.to_owned(),
            names::index_workflow_subject(&run.workflow),
            names::index_origin_subject(&run.origin),
        ];
        let plain = [
            names::index_window_subject(&run.workflow, run.window.start.to_utc().date_naive()),
            names::index_suffix_subject(&run.id.to_string()),
        ];
        // The running-set key goes in the same pipelined round as the entries: one round
        // trip before the run's record, not two.
        self.append(&entry, &chains, &plain, Some(active_key(&run.id, ActiveChange::Mark))).await
    }

    /// Indexes a run that ended: an entry in its state's chain, then its `sluice-active` key
    /// goes. Call after writing its final record.
    pub async fn finished(&mut self, run: &RunRecord) -> Result<(), ServiceError> {
        let entry = RunIndexEntry { state: Some(run.state), finished_at: run.finished_at, ..entry_of(run) };
        let state_chain = [names::index_state_subject(run.state.as_str())];
        self.append(&entry, &state_chain, &[], Some(active_key(&run.id, ActiveChange::Clear))).await
    }

    /// Drops a run from the running set (one whose record was never written).
    pub async fn forget(&mut self, id: &RunId) -> Result<(), ServiceError> {
        publish_all(&self.js, [active_key(id, ActiveChange::Clear)]).await?;
        Ok(())
    }

    /// Appends `entry` to each chain (pointing to the chain's previous entry, and expecting
    /// it to be the last: another writer appending means this one is stale, and its term
    /// ends) and to each plain subject, pipelined; returns once all are stored.
    async fn append(
        &mut self,
        entry: &RunIndexEntry,
        chains: &[String],
        plain: &[String],
        active: Option<Outgoing>,
    ) -> Result<(), ServiceError> {
        if self.heads.len() > HEADS_CACHED_MAX {
            self.heads.clear();
        }
        let mut outgoing = Vec::with_capacity(chains.len() + plain.len());
        for subject in chains {
            let previous = self.head(subject).await?;
            let mut headers = msg_id(&entry.run_id, subject, entry.state.map(|state| state.as_str()));
            headers.insert(names::HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE, previous.unwrap_or(0).to_string().as_str());
            let payload = encode(&RunIndexEntry { previous, ..entry.clone() })?;
            outgoing.push(Outgoing {
                subject: subject.clone(),
                headers,
                payload: payload.into(),
                what: subject.clone(),
            });
        }
        let plain_payload = bytes::Bytes::from(encode(entry)?);
        for subject in plain {
            let headers = msg_id(&entry.run_id, subject, None);
            outgoing.push(Outgoing {
                subject: subject.clone(),
                headers,
                payload: plain_payload.clone(),
                what: subject.clone(),
            });
        }
        // Last, so the chains' acknowledgements come first (they are zipped with `chains`).
        outgoing.extend(active);
        let acks = publish_all(&self.js, outgoing).await;
        let acks = match acks {
            Ok(acks) => acks,
            Err(error) => {
                // A head this writer remembered may be stale: read them again next time.
                self.heads.clear();
                return Err(error.into());
            }
        };
        let now = Utc::now();
        for (subject, ack) in chains.iter().zip(acks) {
            self.heads.insert(subject.clone(), (ack.sequence, now));
        }
        Ok(())
    }

    /// The last sequence of a chain, from memory (unless it may have expired) or the stream.
    async fn head(&mut self, subject: &str) -> Result<Option<u64>, ServiceError> {
        if let Some(&(sequence, stored)) = self.heads.get(subject)
            && head_is_fresh(stored, Utc::now(), self.max_age)
        {
            return Ok(Some(sequence));
        }
        let stream = self.js.get_stream_no_info(names::INDEX_STREAM).await.context("opening the run index")?;
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => {
                let nanos = i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(i64::MAX);
                self.heads.insert(subject.to_owned(), (message.sequence, DateTime::from_timestamp_nanos(nanos)));
                Ok(Some(message.sequence))
            }
            Err(error) if error.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound => {
                // A chain whose entries have all expired starts again.
                self.heads.remove(subject);
                Ok(None)
            }
            Err(error) => Err(error).context(format!("reading the head of {subject}")),
        }
    }
}

fn entry_of(run: &RunRecord) -> RunIndexEntry {
    RunIndexEntry {
        schema_version: SCHEMA_VERSION,
        run_id: run.id,
        workflow: run.workflow.clone(),
        window_start: run.window.start.to_utc(),
        created_at: run.created_at,
        origin: run.origin.clone(),
        state: None,
        finished_at: None,
        previous: None,
    }
}

/// One id per (run, subject, state): a repeat after a crash is dropped by JetStream.
fn msg_id(run_id: &RunId, subject: &str, state: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let id = format!("{subject}.{run_id}.{}", state.unwrap_or("created"));
    headers.insert(names::HEADER_MSG_ID, id.as_str());
    headers
}

/// The runs a new leader loads: the keys of `sluice-active`. A store written before the
/// index existed (schema 1) is indexed first, once: every run, in creation order.
pub async fn running_runs(topology: &Topology, index: &mut Index) -> Result<Vec<RunId>, ServiceError> {
    if topology.active.get(names::ACTIVE_INDEXED_KEY).await.context("reading the run index marker")?.is_none() {
        index_every_run(topology, index).await?;
    }
    let keys: Vec<String> = match topology.active.keys().await {
        Ok(keys) => keys.try_collect().await.context("listing the running runs")?,
        Err(error) => return Err(error).context("listing the running runs"),
    };
    Ok(keys.iter().filter_map(|key| key.parse().ok()).collect())
}

/// Indexes every stored run (the upgrade from a store without an index), then sets the
/// marker. Safe to repeat: entries carry message ids, readers skip duplicates.
async fn index_every_run(topology: &Topology, index: &mut Index) -> Result<(), ServiceError> {
    let mut runs: Vec<RunRecord> = stores::load_all(&topology.runs).await?;
    runs.sort_by_key(|run| (run.created_at, run.id));
    if !runs.is_empty() {
        tracing::info!(runs = runs.len(), "indexing the runs of an older store (once)");
    }
    for run in &runs {
        index.running(run, true).await?;
        if run.state.is_terminal() {
            index.finished(run).await?;
        }
    }
    topology
        .active
        .put(names::ACTIVE_INDEXED_KEY, SCHEMA_VERSION.to_string().into())
        .await
        .context("marking the runs indexed")?;
    Ok(())
}

/// The runs cancelled while their submission was pending (keys
/// [`names::pending_cancel_key`] of `sluice-active`): what intake creates `cancelled`. Read
/// once a term; from then on this coordinator is their only writer.
pub async fn pending_cancels(topology: &Topology) -> Result<HashMap<RunId, PendingCancel>, ServiceError> {
    let keys: Vec<String> = match topology.active.keys().await {
        Ok(keys) => keys.try_collect().await.context("listing the pending cancels")?,
        Err(error) => return Err(error).context("listing the pending cancels"),
    };
    let mut cancels = HashMap::new();
    for (key, id) in keys.iter().filter_map(|key| Some((key, names::parse_pending_cancel_key(key)?))) {
        let Some(value) = topology.active.get(key).await.context("reading a pending cancel")? else { continue };
        let cancel = decode(&value).unwrap_or_else(|error| {
            // Still a cancel: only who asked is lost.
            tracing::warn!(%error, run = %id, "a pending cancel cannot be read; the run is cancelled all the same");
            PendingCancel {
                schema_version: SCHEMA_VERSION,
                run_id: id,
                request_id: None,
                requested_by: String::new(),
                at: chrono::Utc::now(),
            }
        });
        cancels.insert(id, cancel);
    }
    Ok(cancels)
}

/// Keeps a cancel of a pending run until intake takes its submission.
pub async fn remember_pending_cancel(topology: &Topology, cancel: &PendingCancel) -> Result<(), ServiceError> {
    let key = names::pending_cancel_key(&cancel.run_id);
    topology.active.put(key, encode(cancel)?.into()).await.context("storing a pending cancel")?;
    Ok(())
}

/// Drops a pending cancel once its submission was taken (its run is stored, or it was
/// rejected).
pub async fn forget_pending_cancel(topology: &Topology, id: &RunId) -> Result<(), ServiceError> {
    topology.active.delete(names::pending_cancel_key(id)).await.context("removing a pending cancel")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_head_is_read_again_once_it_may_have_expired() {
        let stored = Utc::now();
        let later = |secs| stored + chrono::Duration::seconds(secs);
        assert!(head_is_fresh(stored, later(86_400 * 365), None), "without a max age a head never expires");
        let day = Some(Duration::from_secs(86_400));
        assert!(head_is_fresh(stored, later(3_600), day));
        assert!(!head_is_fresh(stored, later(43_200), day), "half the max age: read it again");
        assert!(!head_is_fresh(stored, later(86_400 * 2), day));
        // A clock behind the server's counts as no age.
        assert!(head_is_fresh(stored, later(-5), day));
    }
}
