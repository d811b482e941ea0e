//! Stopping the running jobs of cancelled runs. The coordinator announces a cancelled run on
//! `sluice.stop.<run_id>`; each worker cancels that run's running jobs and, for a while,
//! refuses to start jobs of it (one may have been fetched just before the announcement).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sluice_proto::RunId;
use tokio_util::sync::CancellationToken;

/// Cancelled runs remembered per worker, at most.
const STOPPED_RUNS_REMEMBERED: usize = 4096;

#[derive(Default)]
pub struct RunStops {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    running: HashMap<RunId, Vec<(u64, CancellationToken)>>,
    stopped: VecDeque<RunId>,
    next_id: u64,
}

impl RunStops {
    /// Tracks a running job's token until the returned guard drops; `None` if its run is
    /// already stopped.
    pub fn register(&self, run_id: RunId, token: CancellationToken) -> Option<Registration<'_>> {
        let mut inner = self.lock();
        if inner.stopped.contains(&run_id) {
            return None;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.running.entry(run_id).or_default().push((id, token));
        Some(Registration { stops: self, run_id, id })
    }

    /// Cancels the running jobs of `run_id` and refuses its jobs from now on.
    pub fn stop(&self, run_id: RunId) {
        let mut inner = self.lock();
        if !inner.stopped.contains(&run_id) {
            if inner.stopped.len() == STOPPED_RUNS_REMEMBERED {
                inner.stopped.pop_front();
            }
            inner.stopped.push_back(run_id);
        }
        for (_, token) in inner.running.get(&run_id).into_iter().flatten() {
            token.cancel();
        }
    }

    pub fn is_stopped(&self, run_id: &RunId) -> bool {
        self.lock().stopped.contains(run_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps inconsistent: keep going.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a job's token when the job ends.
pub struct Registration<'a> {
    stops: &'a RunStops,
    run_id: RunId,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut inner = self.stops.lock();
        if let Some(tokens) = inner.running.get_mut(&self.run_id) {
            tokens.retain(|(id, _)| *id != self.id);
            if tokens.is_empty() {
                inner.running.remove(&self.run_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_cancels_running_jobs_of_that_run_only_and_refuses_new_ones() {
        let stops = RunStops::default();
        let (a, b) = (RunId::new(), RunId::new());
        let (token_a, token_b) = (CancellationToken::new(), CancellationToken::new());
        let _ra = stops.register(a, token_a.clone()).unwrap();
        let _rb = stops.register(b, token_b.clone()).unwrap();
        stops.stop(a);
        assert!(token_a.is_cancelled());
        assert!(!token_b.is_cancelled());
        assert!(stops.register(a, CancellationToken::new()).is_none());
    }
}
