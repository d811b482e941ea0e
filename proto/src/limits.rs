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
/// Most windows one backfill (or audit) covers.
pub const BACKFILL_WINDOWS_MAX: usize = 2_000;
