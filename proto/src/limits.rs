//! Named limits on everything that comes from outside: each bounds memory or work.

/// Largest workflow YAML accepted, in bytes.
pub const WORKFLOW_YAML_MAX_BYTES: usize = 512 * 1024;
/// Largest one job's definition may be once YAML aliases are expanded (its JSON form), in
/// bytes: it travels in every job message of the job.
pub const JOB_DEFINITION_MAX_BYTES: usize = 128 * 1024;
/// Largest all of a workflow's job definitions may be together once aliases are expanded,
/// in bytes: what one run holds in the coordinator's memory (a 2 KB YAML can alias to GBs).
pub const WORKFLOW_EXPANDED_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Longest one `--param` value, and all params of a run together, in bytes: they travel in
/// every job message of the run.
pub const PARAM_VALUE_MAX_BYTES: usize = 1024;
pub const PARAMS_MAX_BYTES: usize = 16 * 1024;
/// Longest W3C `tracestate` kept from a submission (the W3C limit); a longer one is dropped.
pub const TRACESTATE_MAX_BYTES: usize = 512;
/// Longest worker id kept in a job's attempts; longer ones keep their start.
pub const WORKER_NAME_MAX_BYTES: usize = 256;
/// Attempts a job record (and a dead letter) keeps: the first, and the latest this many;
/// the ones between are counted in `attempts_omitted`.
pub const ATTEMPTS_KEPT_LATEST: usize = 20;

/// The smallest `max_payload` a nats-server must allow, in bytes (its default, 1 MiB): every
/// message and record Sluice writes is bounded below it by the limits here.
pub const SERVER_MAX_PAYLOAD_MIN_BYTES: usize = 1024 * 1024;
/// Room every bound below leaves for names, ids, timestamps and encoding overhead, in bytes.
pub const RECORD_OVERHEAD_BYTES: usize = 16 * 1024;
/// Largest job message: one definition, the run's params, and small fields.
pub const JOB_MESSAGE_MAX_BYTES: usize = JOB_DEFINITION_MAX_BYTES + PARAMS_MAX_BYTES + RECORD_OVERHEAD_BYTES;
/// A spec's hash as records keep it: SHA-256 in hex.
pub const SPEC_HASH_BYTES: usize = 64;
/// Largest one kept attempt: its error, its worker, the workers it was redelivered to and the
/// hash of its spec.
pub const ATTEMPT_RECORD_MAX_BYTES: usize = ERROR_TEXT_MAX_BYTES
    + WORKER_NAME_MAX_BYTES * (1 + crate::messages::REDELIVERIES_KEPT)
    + SPEC_HASH_BYTES
    + ATTEMPT_FOUND_LATER_MAX_BYTES
    + 64;
/// What a later attempt found of an earlier one (`found_later`), at most, in bytes.
pub const ATTEMPT_FOUND_LATER_MAX_BYTES: usize = 512;
/// Earlier attempts one outcome event may report on (`earlier`), at most.
pub const EARLIER_ATTEMPTS_REPORTED_MAX: usize = 8;
/// Largest attempt history (the first and the latest [`ATTEMPTS_KEPT_LATEST`]).
pub const ATTEMPT_HISTORY_MAX_BYTES: usize = (1 + ATTEMPTS_KEPT_LATEST) * ATTEMPT_RECORD_MAX_BYTES;
/// Largest job record: its history, error, output and (a child's) definition.
pub const JOB_RECORD_MAX_BYTES: usize = ATTEMPT_HISTORY_MAX_BYTES
    + ERROR_TEXT_MAX_BYTES
    + crate::spawn::OUTPUT_MAX_BYTES
    + JOB_DEFINITION_MAX_BYTES
    + RECORD_OVERHEAD_BYTES;
/// Largest dead letter: the job message, its history and the reason.
pub const DEAD_LETTER_MAX_BYTES: usize =
    JOB_MESSAGE_MAX_BYTES + ATTEMPT_HISTORY_MAX_BYTES + ERROR_TEXT_MAX_BYTES + RECORD_OVERHEAD_BYTES;
/// Largest run record, checked at intake (its YAML and job names are what grow).
pub const RUN_RECORD_MAX_BYTES: usize = SERVER_MAX_PAYLOAD_MIN_BYTES - 64 * 1024;

// Every stored value and message fits the smallest server Sluice runs on.
const _: () = assert!(JOB_MESSAGE_MAX_BYTES < SERVER_MAX_PAYLOAD_MIN_BYTES);
const _: () = assert!(JOB_RECORD_MAX_BYTES < SERVER_MAX_PAYLOAD_MIN_BYTES);
const _: () = assert!(DEAD_LETTER_MAX_BYTES < SERVER_MAX_PAYLOAD_MIN_BYTES);
const _: () = assert!(WORKFLOW_YAML_MAX_BYTES + PARAMS_MAX_BYTES + RECORD_OVERHEAD_BYTES < RUN_RECORD_MAX_BYTES);
/// Most events a worker sends in one [`crate::EventBatch`].
pub const EVENTS_PER_BATCH_MAX: usize = 64;
/// Most bytes of encoded events in one [`crate::EventBatch`]; an event larger than that
/// (a big output) travels in a batch of its own.
pub const EVENT_BATCH_MAX_BYTES: usize = 256 * 1024;
const _: () = assert!(EVENT_BATCH_MAX_BYTES + RECORD_OVERHEAD_BYTES < SERVER_MAX_PAYLOAD_MIN_BYTES);
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
/// Most runs one bulk action (a retry or cancel by filter) touches, in runs: one control
/// request names them all, and its outcome lists every one it changed.
pub const BULK_RUNS_MAX: usize = OUTCOME_CHANGED_MAX;
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
/// Most `env:` variables a job may set.
pub const ENV_VARS_MAX: usize = 128;
/// Longest `env:` value, in bytes.
pub const ENV_VALUE_MAX_BYTES: usize = 32 * 1024;
/// Longest secret name (`{secret: NAME}`), in characters: a Kubernetes object name's limit.
pub const SECRET_NAME_MAX_CHARS: usize = 63;
/// Longest container image reference of a `pod` job, in bytes.
pub const IMAGE_MAX_BYTES: usize = 1024;
/// Most resource names under `resources.limits` (or `requests`) of a `pod` job.
pub const RESOURCE_NAMES_MAX: usize = 32;

/// Most `notify:` rules a workflow may have.
pub const NOTIFY_RULES_MAX: usize = 16;
/// Most failed jobs a notice lists (the rest are counted).
pub const NOTIFY_FAILED_JOBS_MAX: usize = 20;
/// Longest error a notice carries per job, in bytes (its end is kept).
pub const NOTIFY_ERROR_MAX_BYTES: usize = 1024;
/// Most targets a `--notify-targets` file may name.
pub const NOTIFY_TARGETS_MAX: usize = 256;
/// Largest `--notify-targets` file, in bytes.
pub const NOTIFY_TARGETS_FILE_MAX_BYTES: usize = 64 * 1024;
/// Longest target URL (also one read from a secret), in bytes.
pub const NOTIFY_URL_MAX_BYTES: usize = 2048;
