//! The producer: fetches jobs for free slots, starts them, hands back what waited too long.
//!
//! While jobs are short it also fetches a few ahead ([`FetchPolicy`] decides how many).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{AckKind, Message, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::completer::Completer;
use super::executor::execute;
use crate::limits::{FETCH_RETRY_PAUSE_MS, FETCH_WAIT_MAX_MS, FETCHED_WAIT_MAX_MS, SHORT_JOB_MAX_MS};

/// The shortest fetch an idle worker about to stop makes (a pull request's expiry).
const FETCH_WAIT_MIN_MS: u64 = 50;

/// The producer's decisions, with no clock or I/O inside: how many jobs to fetch, and when
/// a job fetched ahead goes back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FetchPolicy {
    /// Slots: jobs run at once.
    pub(crate) concurrency: usize,
    /// Jobs fetched beyond the free slots while jobs are short.
    pub(crate) prefetch: usize,
    /// How long a job fetched ahead may wait for a slot.
    pub(crate) fetched_wait_max: Duration,
}

impl FetchPolicy {
    /// A fetched job waits at most [`FETCHED_WAIT_MAX_MS`], and never as long as the
    /// consumer's ack wait (it is handed back before JetStream would redeliver it):
    /// `progress_interval` is a third of that.
    pub(crate) fn new(concurrency: usize, prefetch: usize, progress_interval: Duration) -> Self {
        let fetched_wait_max = Duration::from_millis(FETCHED_WAIT_MAX_MS).min(progress_interval);
        Self { concurrency, prefetch, fetched_wait_max }
    }

    /// How many jobs to fetch now, given the free slots, the jobs fetched and waiting for a
    /// slot, and whether recent jobs were short. While jobs run long: one per free slot.
    /// While they are short: enough to fill the slots and the prefetch, but only once half
    /// of that is used up, so fetches come in batches (a pull request costs the nats-server
    /// about as much as a hundred messages' worth of fetching in a batch; `loadtest/profile/`).
    pub(crate) fn room(&self, free_slots: usize, fetched: usize, short_jobs: bool) -> usize {
        if !short_jobs || self.prefetch == 0 {
            return free_slots.saturating_sub(fetched);
        }
        let capacity = self.concurrency + self.prefetch;
        let held = self.concurrency.saturating_sub(free_slots) + fetched;
        // A free slot with nothing fetched for it always fetches.
        let refill = held * 2 <= capacity || (free_slots > 0 && fetched == 0);
        if refill { capacity.saturating_sub(held) } else { 0 }
    }

    /// When a job fetched at `fetched_at` must go back to the pool.
    pub(crate) fn due_back_at(&self, fetched_at: Instant) -> Instant {
        fetched_at + self.fetched_wait_max
    }

    /// Whether a job fetched at `fetched_at` has waited too long by `now`.
    pub(crate) fn is_overdue(&self, fetched_at: Instant, now: Instant) -> bool {
        self.due_back_at(fetched_at) <= now
    }

    /// Whether a job that ran for `ran` counts as short.
    pub(crate) fn is_short(ran: Duration) -> bool {
        ran < Duration::from_millis(SHORT_JOB_MAX_MS)
    }
}

/// Why the producer stopped fetching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Shutdown was asked for (SIGTERM).
    Shutdown,
    /// `max_jobs` jobs were started.
    MaxJobs,
    /// Nothing ran or waited for `exit_when_idle`.
    Idle,
}

/// When a worker started with `--max-jobs` / `--exit-when-idle` is done: pure, so the
/// producer's clock and counts are its only inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) max_jobs: Option<u64>,
    pub(crate) exit_when_idle: Option<Duration>,
}

impl Lifetime {
    /// Jobs that may still be fetched, given those started and those fetched and waiting.
    pub(crate) fn fetchable(&self, started: u64, fetched: usize) -> usize {
        match self.max_jobs {
            None => usize::MAX,
            Some(max) => {
                usize::try_from(max.saturating_sub(started).saturating_sub(fetched as u64)).unwrap_or(usize::MAX)
            }
        }
    }

    /// Whether to stop fetching: every job allowed has started, or the worker has been idle
    /// (nothing running or fetched) since `idle_since` for `exit_when_idle` by `now`.
    pub(crate) fn over(&self, started: u64, idle_since: Option<Instant>, now: Instant) -> Option<Stopped> {
        if self.max_jobs.is_some_and(|max| started >= max) {
            return Some(Stopped::MaxJobs);
        }
        match (self.exit_when_idle, idle_since) {
            (Some(idle), Some(since)) if now.saturating_duration_since(since) >= idle => Some(Stopped::Idle),
            _ => None,
        }
    }

    /// When an idle worker stops, if nothing comes.
    pub(crate) fn idle_deadline(&self, idle_since: Option<Instant>) -> Option<Instant> {
        Some(idle_since? + self.exit_when_idle?)
    }
}

/// Fetches jobs and starts each on a free slot.
pub(crate) struct Producer {
    shared: Arc<Shared>,
    completer: Arc<dyn Completer>,
    policy: FetchPolicy,
    slots: Arc<Semaphore>,
    /// Fetched (when), waiting for a slot.
    fetched: VecDeque<(Instant, Message)>,
    running: JoinSet<()>,
    /// Once cancelled, nothing more starts.
    shutdown: CancellationToken,
    lifetime: Lifetime,
    /// Jobs started on a slot so far.
    started: u64,
    /// Since when nothing has run or waited here (`None` while something does).
    idle_since: Option<Instant>,
}

impl Producer {
    pub(crate) fn new(shared: Arc<Shared>, completer: Arc<dyn Completer>, shutdown: CancellationToken) -> Self {
        let config = &shared.config;
        let policy = FetchPolicy::new(config.concurrency, config.prefetch, shared.progress_interval);
        let slots = shared.slots.clone();
        let lifetime = Lifetime { max_jobs: config.max_jobs, exit_when_idle: config.exit_when_idle };
        Self {
            shared,
            completer,
            policy,
            slots,
            fetched: VecDeque::new(),
            running: JoinSet::new(),
            shutdown,
            lifetime,
            started: 0,
            idle_since: Some(Instant::now()),
        }
    }

    /// Fetches and starts jobs until shutdown, or until the worker's lifetime is over.
    pub(crate) async fn run(&mut self, consumer: &PullConsumer) -> Stopped {
        let shutdown = self.shutdown.clone();
        while !shutdown.is_cancelled() {
            self.start_fetched();
            while let Some(finished) = self.running.try_join_next() {
                report_panic(finished);
            }
            if let Some(stopped) = self.lifetime_over() {
                return stopped;
            }
            let room = self.room();
            if room > 0 {
                self.fetch(consumer, room).await;
                continue;
            }
            let overdue = self.overdue_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = sleep_until_some(overdue) => self.hand_back_overdue().await,
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => self.start_one(permit),
                    Err(_) => return Stopped::Shutdown,
                },
            }
        }
        Stopped::Shutdown
    }

    /// Whether `--max-jobs` or `--exit-when-idle` ends fetching now (keeps the idle clock).
    fn lifetime_over(&mut self) -> Option<Stopped> {
        let now = Instant::now();
        if self.running.is_empty() && self.fetched.is_empty() {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
        let over = self.lifetime.over(self.started, self.idle_since, now);
        if let Some(stopped) = over {
            tracing::info!(started = self.started, reason = ?stopped, "this worker's lifetime is over: it takes no more jobs");
        }
        over
    }

    /// Once fetching has stopped: hands back what was fetched but not started, and returns
    /// the running jobs for the drain.
    pub(crate) async fn finish(mut self) -> JoinSet<()> {
        for (_, message) in std::mem::take(&mut self.fetched) {
            hand_back(&message).await;
        }
        self.running
    }

    /// One fetch of at most `room` jobs, starting each as soon as a slot is free.
    async fn fetch(&mut self, consumer: &PullConsumer, room: usize) {
        // An idle worker with `--exit-when-idle` waits no longer than it has left.
        let expires = match self.lifetime.idle_deadline(self.idle_since) {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(FETCH_WAIT_MIN_MS), Duration::from_millis(FETCH_WAIT_MAX_MS)),
            None => Duration::from_millis(FETCH_WAIT_MAX_MS),
        };
        let mut batch = match consumer.batch().max_messages(room).expires(expires).messages().await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "fetching jobs failed; retrying");
                return self.pause_after_error().await;
            }
        };
        loop {
            let overdue = self.overdue_at();
            tokio::select! {
                biased;
                item = batch.next() => match item {
                    Some(Ok(message)) => {
                        self.fetched.push_back((Instant::now(), message));
                        self.start_fetched();
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, "receiving jobs failed; retrying");
                        return self.pause_after_error().await;
                    }
                    None => return,
                },
                permit = self.slots.clone().acquire_owned(), if !self.fetched.is_empty() && !self.shutdown.is_cancelled() => {
                    if let Ok(permit) = permit {
                        self.start_one(permit);
                    }
                }
                _ = sleep_until_some(overdue) => self.hand_back_overdue().await,
            }
        }
    }

    /// A failed fetch is not retried at once (nor once shutting down).
    async fn pause_after_error(&self) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(FETCH_RETRY_PAUSE_MS)) => {}
        }
    }

    fn room(&self) -> usize {
        let short_jobs = self.shared.short_jobs.load(Ordering::Relaxed);
        let room = self.policy.room(self.slots.available_permits(), self.fetched.len(), short_jobs);
        room.min(self.lifetime.fetchable(self.started, self.fetched.len()))
    }

    /// When the oldest fetched job will have waited too long.
    fn overdue_at(&self) -> Option<Instant> {
        self.fetched.front().map(|(at, _)| self.policy.due_back_at(*at))
    }

    /// The jobs in the slots run long: stop fetching ahead, and give back what waited too
    /// long so an idle worker can run it.
    async fn hand_back_overdue(&mut self) {
        self.shared.short_jobs.store(false, Ordering::Relaxed);
        let now = Instant::now();
        while let Some((at, _)) = self.fetched.front()
            && self.policy.is_overdue(*at, now)
        {
            let Some((_, message)) = self.fetched.pop_front() else { break };
            hand_back(&message).await;
        }
    }

    /// Starts fetched jobs while slots are free (none once shutting down).
    fn start_fetched(&mut self) {
        while !self.fetched.is_empty() && !self.shutdown.is_cancelled() {
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => self.start_one(permit),
                Err(_) => return,
            }
        }
    }

    /// Runs the oldest fetched job on `permit`'s slot: the executor, then the completer.
    fn start_one(&mut self, permit: OwnedSemaphorePermit) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some((_, message)) = self.fetched.pop_front() else { return };
        self.started += 1;
        let (shared, completer) = (self.shared.clone(), self.completer.clone());
        self.running.spawn(async move {
            let attempt = execute(&shared, &message, permit).await;
            completer.complete(message, attempt).await;
        });
    }
}

/// Logs a job task that panicked outside the job (the job's own panics are caught).
pub(crate) fn report_panic(result: Result<(), tokio::task::JoinError>) {
    if let Err(error) = result {
        tracing::error!(%error, "a job task failed unexpectedly");
    }
}

/// `sleep_until` a time, or never.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Gives a job that was fetched but never started back to its pool without using up an
/// attempt: a NAK, so another worker may take it at once. Its next delivery is a redelivery,
/// whose attempt comes from what is on record (see `redelivery`): nothing ran, so nothing is
/// charged. Not a copy published into the jobs stream: workers publish nothing there
/// (decision 8), and a cancelled run's message, withdrawn meanwhile, stays withdrawn.
pub(crate) async fn hand_back(message: &Message) {
    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(%error, "handing back a job failed; it returns after its ack wait");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 slots and 12 ahead (the default), a consumer ack wait of 30 s.
    fn policy() -> FetchPolicy {
        FetchPolicy::new(4, 12, Duration::from_secs(10))
    }

    #[test]
    fn while_jobs_run_long_it_fetches_only_for_free_slots() {
        let policy = policy();
        assert_eq!(policy.room(4, 0, false), 4);
        assert_eq!(policy.room(2, 1, false), 1);
        assert_eq!(policy.room(1, 1, false), 0);
        assert_eq!(policy.room(0, 0, false), 0);
        // Jobs fetched while jobs were short may outnumber the free slots: fetch nothing.
        assert_eq!(policy.room(1, 5, false), 0);
    }

    #[test]
    fn without_prefetch_short_jobs_fetch_only_for_free_slots() {
        let policy = FetchPolicy { prefetch: 0, ..policy() };
        assert_eq!(policy.room(4, 0, true), 4);
        assert_eq!(policy.room(3, 2, true), 1);
    }

    #[test]
    fn while_jobs_are_short_it_fills_slots_and_prefetch_once_half_is_used_up() {
        let policy = policy();
        // Nothing held: fetch for every slot and the whole prefetch.
        assert_eq!(policy.room(4, 0, true), 16);
        // Holding 8 of 16 (4 running, 4 waiting): half used up, refill.
        assert_eq!(policy.room(0, 4, true), 8);
        // Holding 9 of 16: wait, so the next fetch is a batch.
        assert_eq!(policy.room(0, 5, true), 0);
        assert_eq!(policy.room(1, 8, true), 0);
    }

    #[test]
    fn a_free_slot_with_nothing_fetched_for_it_always_fetches() {
        // 10 slots and 2 ahead: 9 running is over half of 12, yet the free slot fetches.
        let policy = FetchPolicy::new(10, 2, Duration::from_secs(10));
        assert_eq!(policy.room(1, 0, true), 3);
        assert_eq!(policy.room(1, 1, true), 0);
    }

    #[test]
    fn it_never_holds_more_than_the_slots_and_the_prefetch() {
        for (concurrency, prefetch) in [(1, 0), (1, 3), (4, 12), (10, 2), (16, 1024)] {
            let policy = FetchPolicy::new(concurrency, prefetch, Duration::from_secs(10));
            for free in 0..=concurrency {
                for fetched in 0..=(concurrency + prefetch) {
                    let held = concurrency - free + fetched;
                    let short = policy.room(free, fetched, true);
                    assert!(short == 0 || held + short <= concurrency + prefetch, "{policy:?} {free} {fetched}");
                    let long = policy.room(free, fetched, false);
                    assert!(long == 0 || fetched + long <= free, "{policy:?} {free} {fetched}");
                }
            }
        }
    }

    #[test]
    fn a_job_fetched_ahead_goes_back_after_a_second() {
        let policy = policy();
        let fetched_at = Instant::from_std(std::time::Instant::now());
        assert_eq!(policy.due_back_at(fetched_at), fetched_at + Duration::from_secs(1));
        assert!(!policy.is_overdue(fetched_at, fetched_at));
        assert!(!policy.is_overdue(fetched_at, fetched_at + Duration::from_millis(999)));
        assert!(policy.is_overdue(fetched_at, fetched_at + Duration::from_secs(1)));
        assert!(policy.is_overdue(fetched_at, fetched_at + Duration::from_secs(5)));
    }

    #[test]
    fn a_job_fetched_ahead_goes_back_before_its_ack_wait_runs_out() {
        // Ack wait 900 ms: in-progress acks every 300 ms, and that is the longest wait.
        let policy = FetchPolicy::new(4, 12, Duration::from_millis(300));
        let fetched_at = Instant::from_std(std::time::Instant::now());
        assert!(!policy.is_overdue(fetched_at, fetched_at + Duration::from_millis(299)));
        assert!(policy.is_overdue(fetched_at, fetched_at + Duration::from_millis(300)));
    }

    #[test]
    fn max_jobs_caps_what_is_fetched_and_ends_the_lifetime_once_all_started() {
        let lifetime = Lifetime { max_jobs: Some(3), exit_when_idle: None };
        let now = Instant::from_std(std::time::Instant::now());
        assert_eq!(lifetime.fetchable(0, 0), 3);
        assert_eq!(lifetime.fetchable(1, 1), 1);
        assert_eq!(lifetime.fetchable(2, 1), 0);
        assert_eq!(lifetime.fetchable(5, 0), 0);
        assert_eq!(lifetime.over(2, Some(now), now + Duration::from_secs(3600)), None);
        assert_eq!(lifetime.over(3, None, now), Some(Stopped::MaxJobs));
        let unlimited = Lifetime { max_jobs: None, exit_when_idle: None };
        assert_eq!(unlimited.fetchable(u64::MAX, 7), usize::MAX);
        assert_eq!(unlimited.over(u64::MAX, Some(now), now + Duration::from_secs(3600)), None);
    }

    #[test]
    fn an_idle_worker_stops_once_idle_for_the_whole_duration() {
        let lifetime = Lifetime { max_jobs: None, exit_when_idle: Some(Duration::from_secs(5)) };
        let since = Instant::from_std(std::time::Instant::now());
        assert_eq!(lifetime.over(9, Some(since), since + Duration::from_millis(4_999)), None);
        assert_eq!(lifetime.over(9, Some(since), since + Duration::from_secs(5)), Some(Stopped::Idle));
        // Busy: no idle clock runs.
        assert_eq!(lifetime.over(9, None, since + Duration::from_secs(60)), None);
        assert_eq!(lifetime.idle_deadline(Some(since)), Some(since + Duration::from_secs(5)));
        assert_eq!(lifetime.idle_deadline(None), None);
    }

    #[test]
    fn a_job_is_short_when_done_within_100_ms() {
        assert!(FetchPolicy::is_short(Duration::ZERO));
        assert!(FetchPolicy::is_short(Duration::from_millis(99)));
        assert!(!FetchPolicy::is_short(Duration::from_millis(100)));
        assert!(!FetchPolicy::is_short(Duration::from_secs(3)));
    }
}
