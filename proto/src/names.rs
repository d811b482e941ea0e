//! Every subject, stream, consumer, bucket and header name Sluice uses, defined once.
//!
//! Job names, pool names and run ids become subject tokens and KV keys; [`crate::spec`]
//! restricts names to `[A-Za-z0-9_-]` so they are always valid tokens.

use crate::ids::RunId;

/// Work-queue stream of workflow submissions.
pub const SUBMIT_STREAM: &str = "SLUICE_SUBMIT";
/// Subject any NATS client publishes a [`crate::Submission`] to.
pub const SUBMIT_SUBJECT: &str = "sluice.submit";
/// The coordinator's durable consumer on [`SUBMIT_STREAM`].
pub const SUBMIT_CONSUMER: &str = "coordinator-submit";

/// Work-queue stream of ready jobs, one subject per (pool, run, job).
pub const JOBS_STREAM: &str = "SLUICE_JOBS";
/// Subjects of [`JOBS_STREAM`] that pools consume.
pub const JOBS_SUBJECTS: &str = "sluice.jobs.>";
/// Subjects of [`JOBS_STREAM`] holding scheduled retries (never consumed: JetStream
/// publishes each to its job subject when due).
pub const RETRIES_SUBJECTS: &str = "sluice.retries.>";

/// Work-queue stream of job lifecycle events, one subject per (run, job).
pub const EVENTS_STREAM: &str = "SLUICE_EVENTS";
/// Subjects of [`EVENTS_STREAM`].
pub const EVENTS_SUBJECTS: &str = "sluice.events.>";
/// The coordinator's durable consumer on [`EVENTS_STREAM`].
pub const EVENTS_CONSUMER: &str = "coordinator-events";

/// Limits stream of submissions that could not be accepted, with the reason.
pub const REJECTED_STREAM: &str = "SLUICE_REJECTED";
/// Subjects of [`REJECTED_STREAM`].
pub const REJECTED_SUBJECTS: &str = "sluice.rejected.>";
/// Token used in a rejection subject when the submission's run id could not be read.
pub const REJECTED_UNKNOWN_RUN: &str = "unknown";

/// Limits stream of dead letters, one subject per pool.
pub const DLQ_STREAM: &str = "SLUICE_DLQ";
/// Subjects of [`DLQ_STREAM`].
pub const DLQ_SUBJECTS: &str = "sluice.dlq.>";

/// Work-queue stream of user requests about runs (cancel, retry, replay).
pub const CONTROL_STREAM: &str = "SLUICE_CONTROL";
/// Subjects of [`CONTROL_STREAM`].
pub const CONTROL_SUBJECTS: &str = "sluice.control.>";
/// The coordinator's durable consumer on [`CONTROL_STREAM`].
pub const CONTROL_CONSUMER: &str = "coordinator-control";

/// Stream capturing JetStream's MAX_DELIVERIES advisories for the jobs stream, so a job
/// whose workers kept dying reaches the dead-letter stream even if no coordinator was
/// listening when the advisory went out.
pub const ADVISORIES_STREAM: &str = "SLUICE_ADVISORIES";
/// Subjects of [`ADVISORIES_STREAM`].
pub const MAX_DELIVERIES_SUBJECTS: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SLUICE_JOBS.>";
/// The coordinator's durable consumer on [`ADVISORIES_STREAM`].
pub const ADVISORIES_CONSUMER: &str = "coordinator-advisories";

/// Limits stream of the children jobs spawn, in batches, read by the coordinator when it
/// applies the spawning attempt's `succeeded` event.
pub const SPAWNS_STREAM: &str = "SLUICE_SPAWNS";
/// Subjects of [`SPAWNS_STREAM`].
pub const SPAWNS_SUBJECTS: &str = "sluice.spawns.>";

/// Limits stream of job log lines (exec stdout/stderr, Rust job logs).
pub const LOGS_STREAM: &str = "SLUICE_LOGS";
/// Subjects of [`LOGS_STREAM`].
pub const LOGS_SUBJECTS: &str = "sluice.logs.>";

/// A stream that lives only while the coordinator measures how much storage it can reserve
/// (it holds no messages; one left by a crash is deleted by the next measurement).
pub const STORE_PROBE_STREAM: &str = "SLUICE_STORE_PROBE";
/// The subject of [`STORE_PROBE_STREAM`] (nothing publishes to it).
pub const STORE_PROBE_SUBJECT: &str = "sluice.store-probe";

/// Core NATS subjects on which the coordinator tells workers to stop a run's jobs.
pub const STOP_SUBJECTS: &str = "sluice.stop.>";

/// KV bucket of run records, keyed by run id.
pub const RUNS_BUCKET: &str = "sluice-runs";
/// KV bucket of job records, keyed by `<run_id>.<job>`.
pub const JOBS_BUCKET: &str = "sluice-jobs";
/// Object store of workflow specs, each stored once under its content hash
/// ([`crate::WorkflowSpec::hash`]); run records and attempts refer to hashes (decision 10).
pub const SPECS_BUCKET: &str = "sluice-specs";
/// KV bucket holding the coordinator leadership lease (entries expire: see `LEASE_TTL`).
pub const LEADER_BUCKET: &str = "sluice-leader";
/// The lease's key.
pub const LEADER_KEY: &str = "coordinator";

/// KV bucket of schedules, keyed by workflow name.
pub const SCHEDULES_BUCKET: &str = "sluice-schedules";
/// KV bucket of the workflows applied here (`sluice workflow apply`), keyed by name; each
/// record names its spec in [`SPECS_BUCKET`] by hash.
pub const WORKFLOWS_BUCKET: &str = "sluice-workflows";
/// KV bucket of backfills, keyed by backfill id.
pub const BACKFILLS_BUCKET: &str = "sluice-backfills";

/// The idempotency key of a schedule's run for one tick: one run per tick, whoever submits.
pub fn schedule_tick_key(schedule: &str, tick: &chrono::DateTime<chrono::Utc>) -> String {
    format!("schedule:{schedule}:{}", tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// KV bucket mapping idempotency keys (hex) to the run id they created.
pub const IDEMPOTENCY_BUCKET: &str = "sluice-idempotency";

/// Deduplication header understood by JetStream.
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";
/// Optimistic concurrency: the write succeeds only if the subject's last sequence is this.
pub const HEADER_EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// W3C trace context headers.
pub const HEADER_TRACEPARENT: &str = "traceparent";
pub const HEADER_TRACESTATE: &str = "tracestate";
/// Sluice headers on job messages and events, readable even when the payload is not.
pub const HEADER_RUN_ID: &str = "Sluice-Run-Id";
pub const HEADER_JOB: &str = "Sluice-Job";
/// On job messages: the dispatch series and the attempts before this dispatch, so a worker
/// that cannot decode the payload still reports the failure against the right attempt.
pub const HEADER_GENERATION: &str = "Sluice-Generation";
pub const HEADER_ATTEMPT_OFFSET: &str = "Sluice-Attempt-Offset";

/// Subject a job for `pool` is dispatched on.
pub fn job_subject(pool: &str, run_id: &RunId, job: &str) -> String {
    format!("sluice.jobs.{pool}.{run_id}.{job}")
}

/// Subject filters of every job message and scheduled retry of a run, in any pool.
pub fn run_job_filters(run_id: &RunId) -> [String; 2] {
    [format!("sluice.jobs.*.{run_id}.>"), format!("sluice.retries.*.{run_id}.>")]
}

/// Filters for one job's queued message and scheduled retry (withdrawn when it is marked by
/// hand). The path is the last token(s), so these match the job and none of its children.
pub fn job_filters(run_id: &RunId, job: &str) -> [String; 2] {
    [format!("sluice.jobs.*.{run_id}.{job}"), format!("sluice.retries.*.{run_id}.{job}")]
}

/// Subject of a scheduled retry of a job.
pub fn retry_subject(pool: &str, run_id: &RunId, job: &str) -> String {
    format!("sluice.retries.{pool}.{run_id}.{job}")
}

/// Deduplication id of a scheduled retry (the schedule message, not the job message it
/// becomes): a coordinator that publishes it again after a crash stores nothing new.
pub fn retry_id(run_id: &RunId, job: &str, attempt: u32, generation: u32) -> String {
    format!("retry.{run_id}.{job}.{attempt}.{generation}")
}

/// Headers of JetStream message schedules (nats-server 2.12+).
pub const HEADER_SCHEDULE: &str = "Nats-Schedule";
pub const HEADER_SCHEDULE_TARGET: &str = "Nats-Schedule-Target";
/// The reason on a dead letter the worker wrote itself (an undecodable job).
pub const HEADER_REASON: &str = "Sluice-Reason";
/// The subject a raw dead letter was first published on.
pub const HEADER_ORIGINAL_SUBJECT: &str = "Sluice-Original-Subject";
/// JetStream KV's operation header and its delete marker: a delete written as a message of
/// a pipelined round (what `kv::Store::delete` sends).
pub const HEADER_KV_OPERATION: &str = "KV-Operation";
pub const KV_OPERATION_DELETE: &str = "DEL";

/// Filter of the pool's consumer: every job of that pool.
pub fn pool_filter(pool: &str) -> String {
    format!("sluice.jobs.{pool}.>")
}

/// Durable consumer name of a pool (what KEDA watches).
pub fn pool_consumer(pool: &str) -> String {
    format!("pool-{pool}")
}

// Subjects (schema 2): fixed tokens first (pool, run, generation, attempt), the dotted job
// path last, so NATS permissions can scope a role to one pool (`sluice.events.<pool>.>`) and
// a reader can pick one attempt's lines. `compat` reads the schema-1 layout.

/// Subject a worker publishes a job's lifecycle events on.
pub fn event_subject(pool: &str, run_id: &RunId, job: &str) -> String {
    format!("sluice.events.{pool}.{run_id}.{job}")
}

/// Subject worker `worker_id` of `pool` publishes its [`crate::EventBatch`]es on: inside the
/// pool's event subjects (a worker's permissions cover it), never a run's (run ids are
/// UUIDs), one per worker (a redelivery asks whether the worker of an open attempt still has
/// a batch waiting: its outcome may be in it).
pub fn event_batch_subject(pool: &str, worker_id: &str) -> String {
    format!("sluice.events.{pool}.{EVENT_BATCH_TOKEN}.{}", worker_token(worker_id))
}

const EVENT_BATCH_TOKEN: &str = "batch";

/// Whether `subject` is an [`event_batch_subject`].
pub fn is_event_batch_subject(subject: &str) -> bool {
    let mut tokens = subject.strip_prefix("sluice.events.").unwrap_or_default().split('.');
    matches!(
        (tokens.next(), tokens.next(), tokens.next(), tokens.next()),
        (Some(pool), Some(EVENT_BATCH_TOKEN), Some(worker), None) if !pool.is_empty() && !worker.is_empty()
    )
}

/// A worker id as one subject or key token: every character other than `[A-Za-z0-9_-]` (a
/// host name's dots, say) becomes `_`; an empty id is `_`.
pub fn worker_token(worker_id: &str) -> String {
    let token: String =
        worker_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if token.is_empty() { "_".to_owned() } else { token }
}

/// Subject of one attempt's spawn batches. The job path goes last: it may hold dots.
pub fn spawn_subject(pool: &str, run_id: &RunId, job: &str, generation: u32, attempt: u32) -> String {
    format!("sluice.spawns.{pool}.{run_id}.{generation}.{attempt}.{job}")
}

/// The spawn batches of one attempt in any pool (a reader that does not know the pool).
pub fn spawn_filter(run_id: &RunId, job: &str, generation: u32, attempt: u32) -> String {
    format!("sluice.spawns.*.{run_id}.{generation}.{attempt}.{job}")
}

/// Subject one attempt's log lines are kept on.
pub fn log_subject(pool: &str, run_id: &RunId, attempt: u32, job: &str) -> String {
    format!("sluice.logs.{pool}.{run_id}.{attempt}.{job}")
}

/// Subject filter of one attempt's log lines (its own, not its children's), any pool.
pub fn attempt_logs_filter(run_id: &RunId, attempt: u32, job: &str) -> String {
    format!("sluice.logs.*.{run_id}.{attempt}.{job}")
}

/// Subject filters of every log line of a run (every pool, attempt and job).
pub fn run_logs_filter(run_id: &RunId) -> String {
    format!("sluice.logs.*.{run_id}.>")
}

/// Subject filters of the log lines of one job and its children, every attempt.
pub fn job_logs_filters(run_id: &RunId, job: &str) -> [String; 2] {
    [format!("sluice.logs.*.{run_id}.*.{job}"), format!("sluice.logs.*.{run_id}.*.{job}.>")]
}

/// Subject filter of every job record of a run in KV (children included).
pub fn run_jobs_filter(run_id: &RunId) -> String {
    format!("$KV.{JOBS_BUCKET}.{run_id}.>")
}

/// Subject a rejection is recorded on.
pub fn rejected_subject(run_id: Option<&RunId>) -> String {
    match run_id {
        Some(id) => format!("sluice.rejected.{id}"),
        None => format!("sluice.rejected.{REJECTED_UNKNOWN_RUN}"),
    }
}

/// Subject a dead letter of a job is kept on. A message nobody could read names no run or
/// job: [`UNKNOWN_TOKEN`] stands in.
pub fn dlq_subject(pool: &str, run_id: Option<&RunId>, job: Option<&str>) -> String {
    let run = run_id.map(RunId::to_string).unwrap_or_else(|| UNKNOWN_TOKEN.to_owned());
    format!("sluice.dlq.{pool}.{run}.{}", job.unwrap_or(UNKNOWN_TOKEN))
}

/// Whether `path` can end a subject as a job path: dot-separated names of
/// `[A-Za-z0-9_-]` (what [`crate::spec`] allows), nothing empty, no wildcards.
pub fn is_subject_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|token| {
            !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        })
}

/// The token in a subject that stands for a run or job nobody could read.
pub const UNKNOWN_TOKEN: &str = "_";

/// Subject a control request is published on: the requester's identity first (so NATS
/// permissions can scope each identity to `sluice.control.<identity>.>`), then the run it is
/// about, or [`CONTROL_NO_RUN`].
pub fn control_subject(identity: &str, run_id: Option<&RunId>) -> String {
    match run_id {
        Some(id) => format!("sluice.control.{identity}.{id}"),
        None => format!("sluice.control.{identity}.{CONTROL_NO_RUN}"),
    }
}

/// The run token of a control request about no run (a schedule, a backfill, a purge).
pub const CONTROL_NO_RUN: &str = "_";

/// The identity token of control requests from a connection without a NATS user.
pub const ANONYMOUS_IDENTITY: &str = "anonymous";

/// Limits stream of the run index: chains of entries per list (every run, a workflow's, an
/// origin's, a final state's), runs by workflow and window day, and by id suffix.
pub const INDEX_STREAM: &str = "SLUICE_INDEX";
/// Subjects of [`INDEX_STREAM`].
pub const INDEX_SUBJECTS: &str = "sluice.index.>";
/// The chain of every run, newest last.
pub const INDEX_ALL_SUBJECT: &str = "sluice.index.all";

/// The chain of a workflow's runs.
pub fn index_workflow_subject(workflow: &str) -> String {
    format!("{INDEX_WORKFLOWS_FILTER_PREFIX}{workflow}")
}

/// What the run index's per-workflow chains start with (filter `…*`: every workflow).
pub const INDEX_WORKFLOWS_FILTER_PREFIX: &str = "sluice.index.workflow.";

/// The subject filter of every workflow's chain in the run index.
pub fn index_workflows_filter() -> String {
    format!("{INDEX_WORKFLOWS_FILTER_PREFIX}*")
}

/// The chain of the runs of one origin (`manual`, `schedule:<name>`, `backfill:<id>`).
pub fn index_origin_subject(origin: &str) -> String {
    format!("sluice.index.origin.{origin}")
}

/// The chain of the runs that entered a final state.
pub fn index_state_subject(state: &str) -> String {
    format!("sluice.index.state.{state}")
}

/// A workflow's runs whose window starts on `day` (UTC, `YYYYMMDD`).
pub fn index_window_subject(workflow: &str, day: chrono::NaiveDate) -> String {
    format!("sluice.index.window.{workflow}.{}", day.format("%Y%m%d"))
}

/// How many hex digits of a run id's end its suffix subject holds: 65,536 subjects, so at
/// a million runs a suffix lookup reads about 15 entries.
pub const INDEX_SUFFIX_DIGITS: usize = 4;

/// The runs whose id ends with these hex digits (`suffix` holds at least
/// [`INDEX_SUFFIX_DIGITS`] of them).
pub fn index_suffix_subject(suffix: &str) -> String {
    format!("sluice.index.suffix.{}", &suffix[suffix.len().saturating_sub(INDEX_SUFFIX_DIGITS)..])
}

/// KV bucket of the runs that are running (keys: run ids): what a new leader loads, instead
/// of every run ever made. A key is written before its run's record and deleted after the
/// run's final record, so it is a superset of the running runs.
pub const ACTIVE_BUCKET: &str = "sluice-active";
/// The key in [`ACTIVE_BUCKET`] saying that the runs of an older store were indexed.
pub const ACTIVE_INDEXED_KEY: &str = "_indexed";

/// The key in [`ACTIVE_BUCKET`] of a run cancelled while its submission waited for a
/// coordinator (a [`crate::messages::PendingCancel`]): intake creates that run `cancelled`,
/// then deletes the key. Not a run id, so readers of the running set skip it.
pub fn pending_cancel_key(run_id: &RunId) -> String {
    format!("{PENDING_CANCEL_PREFIX}{run_id}")
}

/// What every [`pending_cancel_key`] starts with.
pub const PENDING_CANCEL_PREFIX: &str = "_cancelled.";

/// The run of a [`pending_cancel_key`]: its inverse.
pub fn parse_pending_cancel_key(key: &str) -> Option<RunId> {
    key.strip_prefix(PENDING_CANCEL_PREFIX)?.parse().ok()
}

/// KV bucket of declared pools, keyed by pool name.
pub const POOLS_BUCKET: &str = "sluice-pools";
/// KV bucket of live workers and coordinators (entries expire unless renewed).
pub const WORKERS_BUCKET: &str = "sluice-workers";
/// The pool token under which coordinators announce themselves in [`WORKERS_BUCKET`].
pub const COORDINATOR_POOL_TOKEN: &str = "_coordinator";

/// KV key of a worker in [`WORKERS_BUCKET`].
pub fn worker_key(pool: &str, worker_id: &str) -> String {
    format!("{pool}.{worker_id}")
}

/// Stream of notices waiting to be delivered (the notification outbox), one per event
/// and target; the coordinator's notifier takes them (work queue).
pub const NOTIFY_STREAM: &str = "SLUICE_NOTIFY";
pub const NOTIFY_SUBJECTS: &str = "sluice.notify.>";
/// The notifier's durable consumer of [`NOTIFY_STREAM`].
pub const NOTIFIER_CONSUMER: &str = "notifier";
/// KV bucket of notification deliveries, keyed by notice id (`<run_id>.…` for a run's).
pub const NOTIFICATIONS_BUCKET: &str = "sluice-notifications";
/// On each POST to a target: the notice's id, the same on every attempt.
pub const HEADER_IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Subject a notice for `target` waits on (`_` when it is of no run: a schedule's).
pub fn notify_subject(target: &str, run_id: Option<&RunId>) -> String {
    match run_id {
        Some(id) => format!("sluice.notify.{target}.{id}"),
        None => format!("sluice.notify.{target}._"),
    }
}

/// Subject filter of every notification status of a run in KV.
pub fn run_notifications_filter(run_id: &RunId) -> String {
    format!("$KV.{NOTIFICATIONS_BUCKET}.{run_id}.>")
}

/// KV bucket of the coordinator's answers to control requests, keyed by request id.
pub const OUTCOMES_BUCKET: &str = "sluice-outcomes";

/// On a control request: its id, so even a request whose payload cannot be read is
/// answered.
pub const HEADER_REQUEST_ID: &str = "Sluice-Request-Id";

/// Subject that tells workers to stop every running job of `run_id`.
pub fn stop_subject(run_id: &RunId) -> String {
    format!("sluice.stop.{run_id}")
}

/// Deduplication id of a dead letter: one per job and generation.
pub fn dead_letter_id(run_id: &RunId, job: &str, generation: u32) -> String {
    format!("dlq.{run_id}.{job}.{generation}")
}

/// KV key of a job record in [`JOBS_BUCKET`].
pub fn job_key(run_id: &RunId, job: &str) -> String {
    format!("{run_id}.{job}")
}

/// Subject that writes `key` in KV `bucket` (JetStream KV is a stream under `$KV.`).
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Deduplication id of one dispatch: a retry or replay starts a new generation, so its
/// messages are never mistaken for duplicates of the first series.
pub fn dispatch_id(run_id: &RunId, job: &str, attempt: u32, generation: u32) -> String {
    format!("{run_id}.{job}.{attempt}.{generation}")
}

/// The headers every job message carries (besides its dedup id and trace context), so a
/// worker that cannot decode one still reports against the right run, job and attempt.
pub fn job_headers<'a>(
    run_id: &RunId,
    job: &'a str,
    generation: u32,
    attempt_offset: u32,
) -> [(&'static str, std::borrow::Cow<'a, str>); 4] {
    [
        (HEADER_RUN_ID, run_id.to_string().into()),
        (HEADER_JOB, job.into()),
        (HEADER_GENERATION, generation.to_string().into()),
        (HEADER_ATTEMPT_OFFSET, attempt_offset.to_string().into()),
    ]
}

/// Deduplication id of a lifecycle event, so a worker may safely re-publish one.
pub fn event_id(run_id: &RunId, job: &str, attempt: u32, generation: u32, kind: &str) -> String {
    format!("{run_id}.{job}.{attempt}.{generation}.{kind}")
}

/// Deduplication id of a `started` event: per worker, so two workers that both start the
/// same attempt (its first start was lost, or a nats-server crash lost consumer state) are
/// both on record, not one dropped as the other's duplicate.
pub fn start_event_id(run_id: &RunId, job: &str, attempt: u32, generation: u32, worker: &str) -> String {
    format!("{run_id}.{job}.{attempt}.{generation}.started.{worker}")
}

/// Hex form of an idempotency key, usable as a KV key whatever bytes it holds.
pub fn idempotency_kv_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 2 + 2);
    out.push_str("k-");
    for byte in key.as_bytes() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A job message's subject, read back: the inverse of [`job_subject`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSubject<'a> {
    pub pool: &'a str,
    pub run_id: RunId,
    /// The job path (a child's path holds dots).
    pub job: &'a str,
}

/// Reads `sluice.jobs.<pool>.<run_id>.<job path>` (or the `sluice.retries.` form); `None`
/// for any other subject.
pub fn parse_job_subject(subject: &str) -> Option<JobSubject<'_>> {
    let rest = subject.strip_prefix("sluice.jobs.").or_else(|| subject.strip_prefix("sluice.retries."))?;
    let (pool, rest) = rest.split_once('.')?;
    let (run_id, job) = rest.split_once('.')?;
    (!pool.is_empty() && !job.is_empty()).then_some(())?;
    Some(JobSubject { pool, run_id: run_id.parse().ok()?, job })
}

/// Every dead letter of job `job` of a run, on any pool (a filter).
pub fn dlq_job_filter(run_id: &RunId, job: &str) -> String {
    format!("sluice.dlq.*.{run_id}.{job}")
}

/// Every dead letter of a run, on any pool (a filter).
pub fn dlq_run_filter(run_id: &RunId) -> String {
    format!("sluice.dlq.*.{run_id}.>")
}

/// The pool of a dead letter's subject: the inverse of [`dlq_subject`] (and of the
/// schema-1 `sluice.dlq.<pool>`).
pub fn parse_dlq_subject(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("sluice.dlq.")?;
    let pool = rest.split('.').next()?;
    (!pool.is_empty()).then_some(pool)
}

/// A job-scoped subject read back: pool, run and job path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scoped<'a> {
    pub pool: &'a str,
    pub run_id: RunId,
    pub job: &'a str,
}

/// Reads `<prefix><pool>.<run_id>.<job path>`.
fn parse_scoped<'a>(subject: &'a str, prefix: &str) -> Option<Scoped<'a>> {
    let rest = subject.strip_prefix(prefix)?;
    let (pool, rest) = rest.split_once('.')?;
    let (run_id, job) = rest.split_once('.')?;
    if pool.is_empty() || job.is_empty() {
        return None;
    }
    Some(Scoped { pool, run_id: run_id.parse().ok()?, job })
}

/// The pool, run and job path of an event's subject: the inverse of [`event_subject`].
pub fn parse_event_subject(subject: &str) -> Option<Scoped<'_>> {
    parse_scoped(subject, "sluice.events.")
}

/// The pool, run and job path of a dead letter of a job: the inverse of [`dlq_subject`].
pub fn parse_dlq_job_subject(subject: &str) -> Option<Scoped<'_>> {
    parse_scoped(subject, "sluice.dlq.")
}

/// A log subject read back: pool, run, attempt and job path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSubject<'a> {
    pub pool: &'a str,
    pub run_id: RunId,
    pub attempt: u32,
    pub job: &'a str,
}

/// Reads a log line's subject: the inverse of [`log_subject`].
pub fn parse_log_subject(subject: &str) -> Option<LogSubject<'_>> {
    let rest = subject.strip_prefix("sluice.logs.")?;
    let (pool, rest) = rest.split_once('.')?;
    let (run_id, rest) = rest.split_once('.')?;
    let (attempt, job) = rest.split_once('.')?;
    if pool.is_empty() || job.is_empty() {
        return None;
    }
    Some(LogSubject { pool, run_id: run_id.parse().ok()?, attempt: attempt.parse().ok()?, job })
}

/// The schema-1 subject layout (run first, no pool), still read so that a store written by
/// an older version finishes its runs: events, spawn batches and log lines stored before
/// an upgrade. Nothing writes it any more.
pub mod compat {
    use crate::ids::RunId;

    /// A schema-1 event subject: `sluice.events.<run_id>.<job>`.
    pub fn event_subject(run_id: &RunId, job: &str) -> String {
        format!("sluice.events.{run_id}.{job}")
    }

    /// A schema-1 spawn subject: `sluice.spawns.<run_id>.<generation>.<attempt>.<job>`.
    pub fn spawn_subject(run_id: &RunId, job: &str, generation: u32, attempt: u32) -> String {
        format!("sluice.spawns.{run_id}.{generation}.{attempt}.{job}")
    }

    /// Schema-1 filters of a run's log lines (`sluice.logs.<run_id>.<job>`), or of one job's.
    pub fn logs_filters(run_id: &RunId, job: Option<&str>) -> Vec<String> {
        match job {
            None => vec![format!("sluice.logs.{run_id}.>")],
            Some(job) => vec![format!("sluice.logs.{run_id}.{job}"), format!("sluice.logs.{run_id}.{job}.>")],
        }
    }
}

/// The (identity, run) of a control request's subject: the inverse of
/// [`control_subject`]. The run is `None` for [`CONTROL_NO_RUN`].
pub fn parse_control_subject(subject: &str) -> Option<(&str, Option<RunId>)> {
    let (identity, run) = subject.strip_prefix("sluice.control.")?.split_once('.')?;
    if identity.is_empty() {
        return None;
    }
    if run == CONTROL_NO_RUN {
        return Some((identity, None));
    }
    Some((identity, Some(run.parse().ok()?)))
}

/// The job path of a KV key in [`JOBS_BUCKET`]: the inverse of [`job_key`].
pub fn parse_job_key(key: &str) -> Option<(RunId, &str)> {
    let (run_id, job) = key.split_once('.')?;
    if job.is_empty() {
        return None;
    }
    Some((run_id.parse().ok()?, job))
}

// NATS permissions (proto/src/roles.rs builds each role's lists from these). JetStream's API
// is subjects too: a role may call only the API subjects it is allowed to publish on.

/// The one NATS account Sluice runs in (decision 13); KEDA's trigger names it too.
pub const NATS_ACCOUNT: &str = "SLUICE";

/// JetStream account info: every binary asks it at connect (`sluice_client::connect`).
pub const JS_API_INFO: &str = "$JS.API.INFO";

/// Every JetStream API subject (the coordinator's, which owns the topology).
pub const JS_API_ALL: &str = "$JS.API.>";
/// Every JetStream acknowledgement subject.
pub const JS_ACK_ALL: &str = "$JS.ACK.>";
/// Every JetStream flow-control reply subject.
pub const JS_FLOW_CONTROL_ALL: &str = "$JS.FC.>";
/// Every KV write subject.
pub const KV_ALL: &str = "$KV.>";
/// Every object-store subject.
pub const OBJECT_STORE_ALL: &str = "$O.>";
/// Every Sluice subject.
pub const SLUICE_ALL: &str = "sluice.>";
/// The inbox prefix nobody is given: whoever may subscribe to it reads every reply.
pub const SHARED_INBOX_ALL: &str = "_INBOX.>";

/// The stream behind KV bucket `bucket`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The stream behind object store `bucket`.
pub fn object_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// Every key of KV bucket `bucket` (a write filter).
pub fn kv_filter(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// Stream info of `stream` (what opening a stream, a bucket or an object store asks).
pub fn js_api_stream_info(stream: &str) -> String {
    format!("$JS.API.STREAM.INFO.{stream}")
}

/// A direct get from `stream` by sequence or with the request in the payload (any subject
/// of the stream: give it only to a role that may read the whole stream).
pub fn js_api_direct_get(stream: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}")
}

/// A direct get of the last message on a subject of `stream` matching `filter`: the subject
/// is in the API subject, so a permission can scope it (`filter` is a subject filter).
pub fn js_api_direct_get_last(stream: &str, filter: &str) -> String {
    format!("$JS.API.DIRECT.GET.{stream}.{filter}")
}

/// A stored message of `stream` by sequence or last by subject (the request is in the
/// payload: whole-stream read access).
pub fn js_api_msg_get(stream: &str) -> String {
    format!("$JS.API.STREAM.MSG.GET.{stream}")
}

/// Creating an ephemeral consumer on `stream` with no name (async-nats's ordered consumers:
/// KV `keys`/`watch`, object-store reads, `sluice logs`). Its deliver subject is not
/// checked: grant it only on streams the role may read whole.
pub fn js_api_consumer_create(stream: &str) -> String {
    format!("$JS.API.CONSUMER.CREATE.{stream}")
}

/// Creating a named consumer on `stream` (any name, any filter).
pub fn js_api_consumer_create_named(stream: &str) -> String {
    format!("$JS.API.CONSUMER.CREATE.{stream}.>")
}

/// Consumer info of `consumer` on `stream`.
pub fn js_api_consumer_info(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}")
}

/// Pulling the next messages of `consumer` on `stream`.
pub fn js_api_consumer_next(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// Acknowledging (ack, NAK, in progress, TERM) messages of `consumer` on `stream`.
pub fn js_ack(stream: &str, consumer: &str) -> String {
    format!("$JS.ACK.{stream}.{consumer}.>")
}

/// Flow-control replies of consumers on `stream` (ordered consumers answer them).
pub fn js_flow_control(stream: &str) -> String {
    format!("$JS.FC.{stream}.>")
}

/// Every event subject of `pool`.
pub fn pool_events_filter(pool: &str) -> String {
    format!("sluice.events.{pool}.>")
}

/// Every log subject of `pool`.
pub fn pool_logs_filter(pool: &str) -> String {
    format!("sluice.logs.{pool}.>")
}

/// Every spawn subject of `pool`.
pub fn pool_spawns_filter(pool: &str) -> String {
    format!("sluice.spawns.{pool}.>")
}

/// Every dead-letter subject of `pool`.
pub fn pool_dlq_filter(pool: &str) -> String {
    format!("sluice.dlq.{pool}.>")
}

/// Every scheduled-retry subject of `pool`.
pub fn pool_retries_filter(pool: &str) -> String {
    format!("sluice.retries.{pool}.>")
}

/// The registry keys of `pool`'s workers in [`WORKERS_BUCKET`] (a write filter).
pub fn pool_workers_filter(pool: &str) -> String {
    format!("$KV.{WORKERS_BUCKET}.{pool}.>")
}

/// Every control subject of `identity` (`sluice.control.<identity>.>`).
pub fn control_identity_filter(identity: &str) -> String {
    format!("sluice.control.{identity}.>")
}

/// The inbox prefix of a role (`_INBOX_<role token>`): replies to one role's requests go
/// where only that role may subscribe.
pub fn inbox_prefix(role_token: &str) -> String {
    format!("_INBOX_{role_token}")
}

/// Everything under an inbox prefix (what its owner subscribes to).
pub fn inbox_filter(prefix: &str) -> String {
    format!("{prefix}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b".parse().unwrap()
    }

    #[test]
    fn job_subjects_round_trip_with_dotted_child_paths() {
        let id = run();
        for path in ["extract", "calibrate-all.sensor-07", "a.b.c"] {
            let subject = job_subject("highmem", &id, path);
            assert_eq!(parse_job_subject(&subject), Some(JobSubject { pool: "highmem", run_id: id, job: path }));
            let retry = retry_subject("highmem", &id, path);
            assert_eq!(parse_job_subject(&retry), Some(JobSubject { pool: "highmem", run_id: id, job: path }));
        }
    }

    #[test]
    fn event_log_dlq_and_key_subjects_round_trip() {
        let id = run();
        for path in ["a", "parent.child"] {
            let scoped = Scoped { pool: "gpu", run_id: id, job: path };
            assert_eq!(parse_event_subject(&event_subject("gpu", &id, path)), Some(scoped.clone()));
            assert_eq!(parse_dlq_job_subject(&dlq_subject("gpu", Some(&id), Some(path))), Some(scoped));
            let log = LogSubject { pool: "gpu", run_id: id, attempt: 3, job: path };
            assert_eq!(parse_log_subject(&log_subject("gpu", &id, 3, path)), Some(log));
            assert_eq!(parse_job_key(&job_key(&id, path)), Some((id, path)));
        }
        assert_eq!(dlq_subject("default", None, None), "sluice.dlq.default._._");
    }

    #[test]
    fn filters_match_what_the_formatters_write() {
        let id = run();
        let matches = |filter: &str, subject: &str| {
            let (filter, subject): (Vec<&str>, Vec<&str>) = (filter.split('.').collect(), subject.split('.').collect());
            filter.iter().enumerate().all(|(i, token)| match *token {
                ">" => subject.len() > i,
                "*" => i < subject.len(),
                token => subject.get(i) == Some(&token),
            }) && (filter.last() == Some(&">") || filter.len() == subject.len())
        };
        assert!(matches(&run_logs_filter(&id), &log_subject("p", &id, 1, "a.b")));
        let [own, children] = job_logs_filters(&id, "a");
        assert!(matches(&own, &log_subject("p", &id, 2, "a")));
        assert!(matches(&children, &log_subject("p", &id, 2, "a.child")));
        assert!(!matches(&own, &log_subject("p", &id, 2, "ab")));
        assert!(matches(&spawn_filter(&id, "a.b", 1, 2), &spawn_subject("p", &id, "a.b", 1, 2)));
        assert!(matches(&pool_filter("p"), &job_subject("p", &id, "a")));
        assert!(matches(&pool_events_filter("p"), &event_batch_subject("p", "w")), "a pool's role may publish batches");
        assert!(matches(EVENTS_SUBJECTS, &event_batch_subject("p", "w")), "batches are stored in the events stream");
    }

    #[test]
    fn a_worker_id_becomes_one_token() {
        assert_eq!(worker_token("host-12"), "host-12");
        assert_eq!(worker_token("node.example.com-7"), "node_example_com-7");
        assert_eq!(worker_token("a b/c*>"), "a_b_c__");
        assert_eq!(worker_token(""), "_");
    }

    #[test]
    fn other_subjects_do_not_parse() {
        for subject in
            ["sluice.jobs.default", "sluice.jobs.default.not-a-uuid.a", "sluice.jobs..x.a", "other.jobs.a.b.c"]
        {
            assert_eq!(parse_job_subject(subject), None, "{subject}");
        }
        assert_eq!(parse_dlq_subject("sluice.dlq."), None);
        assert_eq!(parse_event_subject("sluice.events.x"), None);
        assert!(is_event_batch_subject(&event_batch_subject("gpu", "node.example.com-7")));
        assert_eq!(event_batch_subject("gpu", "node.example.com-7"), "sluice.events.gpu.batch.node_example_com-7");
        assert_eq!(parse_event_subject(&event_batch_subject("gpu", "w")), None, "a batch names no run");
        assert!(!is_event_batch_subject(&event_subject("gpu", &run(), "batch")), "a job named batch is a job");
        assert!(!is_event_batch_subject("sluice.events..batch.w"));
        assert!(!is_event_batch_subject("sluice.events.gpu.batch"));
        assert!(!is_event_batch_subject("sluice.events.gpu.batch.w.x"));
        let id = run();
        assert_eq!(parse_event_subject(&compat::event_subject(&id, "a")), None, "schema 1 has no pool token");
        assert_eq!(parse_control_subject("sluice.control.alice"), None);
        assert_eq!(parse_job_key("no-dot"), None);
        assert_eq!(parse_pending_cancel_key(&pending_cancel_key(&id)), Some(id));
        assert_eq!(parse_pending_cancel_key(&id.to_string()), None);
        assert!(pending_cancel_key(&id).parse::<RunId>().is_err(), "the running set skips it");
    }
}
