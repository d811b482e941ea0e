//! Named limits on everything that comes from outside: each bounds memory or work.

/// Largest workflow YAML accepted, in bytes.
pub const WORKFLOW_YAML_MAX_BYTES: usize = 1024 * 1024;
/// Most jobs a workflow may declare.
pub const WORKFLOW_JOBS_MAX: usize = 20_000;
/// Longest job, pool or workflow name; names become NATS subject tokens and KV keys.
pub const NAME_MAX_CHARS: usize = 64;
/// Most attempts a retry policy may ask for; bounds each job's attempt history.
pub const RETRY_MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest idempotency key, in bytes (it is hex-encoded into a KV key).
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 128;
/// Longest error text kept per attempt; longer errors keep their tail.
pub const ERROR_TEXT_MAX_BYTES: usize = 4096;
/// Most `--param` values a run may carry.
pub const PARAMS_MAX: usize = 256;
/// Longest log line kept; longer lines keep their start.
pub const LOG_LINE_MAX_BYTES: usize = 16 * 1024;
/// Most days `--window last Nd` covers: ten years, far more than any one run processes,
/// and small enough that the date arithmetic never leaves chrono's range.
pub const WINDOW_LAST_DAYS_MAX: u64 = 3_660;
/// Most windows one backfill (or audit) covers.
pub const BACKFILL_WINDOWS_MAX: usize = 2_000;
/// Most names a control outcome lists in `changed` (a retry of 100,000 children lists the
/// first ones and counts the rest in `changed_total`): an outcome stays a small KV value.
pub const OUTCOME_CHANGED_MAX: usize = 1_000;
/// Longest `requested_by` kept on a request and its outcome, in bytes.
pub const REQUESTED_BY_MAX_BYTES: usize = 256;
/// Most pools one installation may declare: each is a durable consumer and a KV record.
pub const POOLS_MAX: usize = 256;
/// Bounds on a pool's ack wait, in milliseconds: under a second, in-progress acks could not
/// keep up; over 12 hours, a dead worker's job would wait half a day to run again.
pub const POOL_ACK_WAIT_MIN_MS: u64 = 1_000;
pub const POOL_ACK_WAIT_MAX_MS: u64 = 12 * 3600 * 1_000;
/// Bounds on a pool's `max_deliver` backstop.
pub const POOL_MAX_DELIVER_MIN: i64 = 2;
pub const POOL_MAX_DELIVER_MAX: i64 = 10_000;
/// How long an entry of KV `sluice-workers` lives unless renewed, in milliseconds: a worker
/// that died drops out of `sluice workers` this long after its last announcement.
pub const WORKER_ENTRY_TTL_MS: u64 = 15_000;
/// How often a live worker renews its entry, in milliseconds: two renewals may be lost before
/// the entry expires.
pub const WORKER_ANNOUNCE_INTERVAL_MS: u64 = 5_000;

const _: () = assert!(WORKER_ANNOUNCE_INTERVAL_MS * 3 <= WORKER_ENTRY_TTL_MS);
