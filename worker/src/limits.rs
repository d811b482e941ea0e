//! Named limits of the worker runtime: each bounds work, waiting or memory, with the reason.

/// Slots per worker process, at most: bounds the tasks (and exec processes) one worker runs.
pub const CONCURRENCY_MAX: usize = 1024;
/// Jobs fetched ahead of the free slots, at most: a worker holds at most twice
/// [`CONCURRENCY_MAX`] jobs, so one worker cannot take a whole pool's pending work.
pub const PREFETCH_MAX: usize = CONCURRENCY_MAX;
/// Jobs a pool may have delivered and not yet acknowledged, across all its workers: the
/// coordinator sets it on every pool's consumer (`POOL_MAX_ACK_PENDING` in
/// coordinator/src/pools.rs, the same value); a worker only checks its own bounds against it.
pub const POOL_MAX_ACK_PENDING: i64 = 10_000;
/// Longest wait of one fetch for new jobs; also bounds how long shutdown waits for it.
pub const FETCH_WAIT_MAX_MS: u64 = 2_000;
/// After a fetch fails, how long before the next one, so a lost server is not hammered.
pub const FETCH_RETRY_PAUSE_MS: u64 = FETCH_WAIT_MAX_MS;
/// A job done within this counts as short: only while jobs are short does a worker fetch
/// jobs ahead of its free slots.
pub const SHORT_JOB_MAX_MS: u64 = 100;
/// Longest a job fetched ahead waits for a slot; then the jobs in the slots are not short
/// after all, and it goes back to the pool (without using up an attempt) for another worker.
pub const FETCHED_WAIT_MAX_MS: u64 = 1_000;
/// Shortest interval between in-progress acks, so a tiny ack wait cannot flood the server.
pub const PROGRESS_INTERVAL_MIN_MS: u64 = 100;
/// How long an exec job's process group gets between SIGTERM and SIGKILL when the job is
/// cancelled or times out: room to clean up, but a hung process still dies.
pub const EXEC_KILL_GRACE_MS: u64 = 10_000;
/// After SIGKILL to an exec job's group, how long to wait for it to go before the attempt
/// ends anyway (a process in uninterruptible sleep dies only when its I/O returns).
pub const EXEC_KILLED_WAIT_MS: u64 = 1_000;
/// Longest pause between checks whether an exec job's group is empty while it is being
/// stopped: the checks start at 5 ms and double, so a group that goes at once is seen at
/// once, and one that takes the whole grace costs few reads of /proc.
pub const EXEC_GROUP_CHECK_MAX_MS: u64 = 200;
/// After a timeout, how long the job may take to stop before its result is ignored.
pub const TIMEOUT_STOP_GRACE_MS: u64 = 15_000;
/// Pause after the first failed event publish; it doubles with each further try.
pub const EVENT_PUBLISH_BACKOFF_FIRST_MS: u64 = 100;
/// Longest pause between tries to store an event: an outcome is retried until it is stored
/// (or the worker's grace is over), so once NATS is back it is stored within this.
pub const EVENT_PUBLISH_BACKOFF_MAX_MS: u64 = 2_000;
/// Event batches a worker has waiting for JetStream's acknowledgement before it lets
/// outcomes gather into the next one (`runtime/batcher.rs`). Two: a lone outcome (a chain's
/// step) never waits, and in an A/B of W1 two did better than one.
pub const EVENT_BATCHES_IN_FLIGHT: usize = 2;
/// How long a redelivered job waits when the worker of its open attempt still has an event
/// batch waiting for the coordinator (its outcome may be in it): batches are applied as soon
/// as the coordinator gets to them.
pub const BATCH_WAITING_RECHECK_MS: u64 = 1_000;
/// Pause between tries to open the pool while no coordinator has set Sluice up or declared it.
pub const CONSUMER_OPEN_RETRY_PAUSE_MS: u64 = 1_000;

// A job fetched ahead must be able to wait for several short jobs before it counts as stuck.
const _: () = assert!(SHORT_JOB_MAX_MS * 2 <= FETCHED_WAIT_MAX_MS);
// Everything one worker may hold (its slots and its prefetch) fits the pool's ack-pending limit.
const _: () = assert!(CONCURRENCY_MAX + PREFETCH_MAX <= POOL_MAX_ACK_PENDING as usize);
const _: () = assert!(EVENT_PUBLISH_BACKOFF_FIRST_MS <= EVENT_PUBLISH_BACKOFF_MAX_MS);
// A timed-out exec job is SIGKILLed, and seen gone, before the worker stops waiting for it.
const _: () = assert!(TIMEOUT_STOP_GRACE_MS > EXEC_KILL_GRACE_MS + EXEC_KILLED_WAIT_MS);

/// How long a job of a newer schema waits before it is offered again: long enough that a
/// pool whose workers are all older does not spin through its deliveries, short enough that
/// an upgraded worker soon gets it.
pub const NEWER_SCHEMA_NAK_DELAY_MS: u64 = 5_000;
