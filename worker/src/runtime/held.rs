//! The jobs this worker is running, so a redelivery of one of them (its in-progress acks
//! did not reach JetStream, e.g. during an outage) does not run it a second time here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use sluice_proto::{JobMessage, RunId};

/// A job by run, path and generation: one dispatch of it.
type Key = (RunId, String, u32);

/// The dispatches of jobs being run by this worker.
#[derive(Clone, Default)]
pub(crate) struct HeldJobs(Arc<Mutex<HashSet<Key>>>);

impl HeldJobs {
    /// Holds `job` until the returned guard drops; `None` when it is held already.
    pub(crate) fn hold(&self, job: &JobMessage) -> Option<Holding> {
        let key = (job.run_id, job.job.clone(), job.generation);
        let inserted = self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone());
        inserted.then(|| Holding { jobs: self.0.clone(), key })
    }
}

/// Releases its job when dropped.
pub(crate) struct Holding {
    jobs: Arc<Mutex<HashSet<Key>>>,
    key: Key,
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::redelivery::tests::job;

    #[test]
    fn a_job_is_held_once_until_its_guard_drops() {
        let held = HeldJobs::default();
        let message = job(0, 0);
        let holding = held.hold(&message);
        assert!(holding.is_some());
        assert!(held.hold(&message).is_none(), "a second delivery of a job being run is refused");
        // Another dispatch (a rerun) of the same job is a different job.
        assert!(held.hold(&JobMessage { generation: 1, ..message.clone() }).is_some());
        drop(holding);
        assert!(held.hold(&message).is_some());
    }
}
