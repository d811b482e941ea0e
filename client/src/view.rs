//! What `sluice status` shows of a run: its record, every job's and its notifications',
//! read together.

use std::collections::BTreeMap;

use async_nats::jetstream;
use sluice_proto::notify::NotifyStatus;
use sluice_proto::spawn::parent_of;
use sluice_proto::{JobRecord, Rejection, RunId, RunRecord};

use crate::error::ClientError;
use crate::stores::Stores;

/// A run with its job records: the workflow's jobs in dependency order, and every job
/// (children included) by path.
#[derive(Clone, Debug)]
pub struct RunView {
    pub record: RunRecord,
    pub jobs: Vec<JobRecord>,
    pub all: BTreeMap<String, JobRecord>,
    /// Its notifications' deliveries, oldest first.
    pub notifications: Vec<NotifyStatus>,
}

impl RunView {
    /// Reads a run and its jobs; `None` if there is no such run.
    pub async fn load(stores: &Stores, id: &RunId) -> Result<Option<Self>, ClientError> {
        let Some(record) = stores.run(id).await? else { return Ok(None) };
        let all: BTreeMap<String, JobRecord> = stores.jobs(&record).await?.into_iter().collect();
        let jobs = record.jobs.iter().filter_map(|name| all.get(name).cloned()).collect();
        let notifications = stores.notifications(id).await?;
        Ok(Some(Self { record, jobs, all, notifications }))
    }

    /// The direct children of `parent`, by name.
    pub fn children_of<'a>(&'a self, parent: &'a str) -> impl Iterator<Item = &'a JobRecord> + 'a {
        let prefix = format!("{parent}.");
        self.all
            .range(prefix.clone()..)
            .take_while(move |(path, _)| path.starts_with(&prefix))
            .filter(move |(path, _)| parent_of(path) == Some(parent))
            .map(|(_, job)| job)
    }

    /// How many of `parent`'s children are in each state.
    pub fn child_counts(&self, parent: &str) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for child in self.children_of(parent) {
            *counts.entry(child.state.as_str()).or_default() += 1;
        }
        counts
    }
}

/// What is known about a run id.
#[derive(Clone, Debug)]
pub enum Lookup {
    Found(Box<RunView>),
    Rejected(Rejection),
    Unknown,
}

/// Reads a run, or the rejection of its submission.
pub async fn lookup(js: &jetstream::Context, id: &RunId) -> Result<Lookup, ClientError> {
    let Some(stores) = Stores::open(js).await? else {
        return Ok(Lookup::Unknown);
    };
    if let Some(view) = RunView::load(&stores, id).await? {
        return Ok(Lookup::Found(Box::new(view)));
    }
    Ok(match stores.rejection(id).await? {
        Some(rejection) => Lookup::Rejected(rejection),
        None => Lookup::Unknown,
    })
}

/// What is known about a run id, a submission no coordinator has taken yet included.
#[derive(Clone, Debug)]
pub enum Located {
    Found(Box<RunView>),
    Rejected(Rejection),
    Pending(crate::runs::PendingRun),
    Unknown,
}

/// Reads a run, the rejection of its submission, or its submission still waiting.
///
/// A coordinator stores a run's record (or its rejection) before it takes the submission
/// off the stream, so a run taken between the first read of the record and the read of the
/// submissions is found by the second read: no run is ever "unknown" while it starts.
pub async fn locate(js: &jetstream::Context, id: &RunId) -> Result<Located, ClientError> {
    locate_by(|| lookup(js, id), crate::runs::find_pending(js, id)).await
}

/// [`locate`]'s order of reads: the record, the waiting submission, the record again.
async fn locate_by<R, P>(mut record: impl FnMut() -> R, pending: P) -> Result<Located, ClientError>
where
    R: std::future::Future<Output = Result<Lookup, ClientError>>,
    P: std::future::Future<Output = Result<Option<crate::runs::PendingRun>, ClientError>>,
{
    let known = |lookup| match lookup {
        Lookup::Found(view) => Some(Located::Found(view)),
        Lookup::Rejected(rejection) => Some(Located::Rejected(rejection)),
        Lookup::Unknown => None,
    };
    if let Some(located) = known(record().await?) {
        return Ok(located);
    }
    if let Some(pending) = pending.await? {
        return Ok(Located::Pending(pending));
    }
    Ok(known(record().await?).unwrap_or(Located::Unknown))
}

/// How often [`wait_for_end`] looks for a rejection (a rejected submission never makes a
/// run record, so the record's watch cannot tell).
const REJECTION_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Waits until the run has ended, pushed by a KV watch on its record, or until its
/// submission is found rejected. Never returns [`Lookup::Unknown`]: the caller bounds the
/// wait for a run no coordinator takes.
pub async fn wait_for_end(js: &jetstream::Context, id: &RunId) -> Result<Lookup, ClientError> {
    use crate::error::NatsContext;
    use futures::StreamExt;
    let stores = Stores::open_required(js).await?;
    let runs = crate::stores::open_bucket(js, sluice_proto::names::RUNS_BUCKET)
        .await?
        .ok_or_else(|| ClientError::NotSetUp { missing: sluice_proto::names::RUNS_BUCKET.to_owned() })?;
    let mut watch = runs.watch_with_history(id.to_string()).await.context(format!("watching run {id}"))?;
    let mut rejections = tokio::time::interval(REJECTION_CHECK_EVERY);
    loop {
        tokio::select! {
            entry = watch.next() => {
                let Some(entry) = entry else { return Err(ClientError::Stalled(format!("watching run {id}"))) };
                let entry = entry.context(format!("watching run {id}"))?;
                let record: RunRecord = sluice_proto::decode(&entry.value)?;
                if record.state.is_terminal()
                    && let Some(view) = RunView::load(&stores, id).await?
                {
                    return Ok(Lookup::Found(Box::new(view)));
                }
            }
            _ = rejections.tick() => {
                if let Some(rejection) = stores.rejection(id).await? {
                    return Ok(Lookup::Rejected(rejection));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn rejection() -> Rejection {
        Rejection {
            schema_version: 1,
            received_at: chrono::DateTime::UNIX_EPOCH,
            run_id: None,
            workflow: None,
            reason: "r".into(),
            payload_bytes: 0,
        }
    }

    /// The coordinator stores the outcome, then takes the submission, both between the
    /// first read of the record and the read of the submissions: the second read finds it.
    #[tokio::test]
    async fn a_run_taken_while_it_is_looked_for_is_found_not_unknown() {
        let reads = Cell::new(0);
        let record = || {
            reads.set(reads.get() + 1);
            let stored = reads.get() > 1;
            async move { Ok(if stored { Lookup::Rejected(rejection()) } else { Lookup::Unknown }) }
        };
        let located = locate_by(record, async { Ok(None) }).await.expect("no read fails");
        assert!(matches!(located, Located::Rejected(_)), "{located:?}");
        assert_eq!(reads.get(), 2);
    }

    #[tokio::test]
    async fn a_stored_run_is_read_once_and_an_unknown_id_twice() {
        let reads = Cell::new(0);
        let stored = || {
            reads.set(reads.get() + 1);
            async { Ok(Lookup::Rejected(rejection())) }
        };
        let pending_read = Cell::new(false);
        let pending = async {
            pending_read.set(true);
            Ok(None)
        };
        assert!(matches!(locate_by(stored, pending).await, Ok(Located::Rejected(_))));
        assert_eq!((reads.get(), pending_read.get()), (1, false));

        let reads = Cell::new(0);
        let never = || {
            reads.set(reads.get() + 1);
            async { Ok(Lookup::Unknown) }
        };
        assert!(matches!(locate_by(never, async { Ok(None) }).await, Ok(Located::Unknown)));
        assert_eq!(reads.get(), 2);
    }
}
