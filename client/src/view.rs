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
