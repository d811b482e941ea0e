//! Wire messages and stored records. All are MessagePack maps (see [`crate::codec`]) with a
//! `schema_version`; fields added later carry `#[serde(default)]` so older readers and
//! writers keep working.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{RequestId, RunId};
use crate::retry::RetryPolicy;
use crate::schedule::ScheduleSpec;
use crate::spec::JobSpec;
use crate::state::{JobState, RunState};
use crate::window::Window;

/// The schema version this build writes and the newest it reads. Version 2 changed the
/// subject layout (pool first, job path last; `names`); records and messages read the
/// same, so version 1 ones still decode.
pub const SCHEMA_VERSION: u32 = 2;

/// A message type with a schema version and a name for error messages.
pub trait Versioned {
    const WHAT: &'static str;
    fn schema_version(&self) -> u32;
}

macro_rules! versioned {
    ($type:ty, $what:literal) => {
        impl Versioned for $type {
            const WHAT: &'static str = $what;
            fn schema_version(&self) -> u32 {
                self.schema_version
            }
        }
    };
}

/// Published to `sluice.submit` by `sluice submit` or any NATS client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    pub schema_version: u32,
    /// Chosen by the publisher (UUIDv7), so it knows the id before any coordinator answers.
    pub run_id: RunId,
    /// The workflow as YAML text: parsed and validated by the same strict rules everywhere.
    pub workflow: String,
    /// The window to process; absent means the previous full day in the workflow's zone,
    /// as of `submitted_at`.
    #[serde(default)]
    pub window: Option<Window>,
    /// Values for `{{params.NAME}}` placeholders, over the workflow's `params` defaults.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// A second submission with the same key creates no second run.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub submitted_at: Option<DateTime<Utc>>,
    /// Where the run comes from: `manual` (the default), `schedule:<name>` or
    /// `backfill:<id>`; runs can be listed by it ([`check_origin`] says what is valid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}
versioned!(Submission, "submission");

/// The origin of a run submitted by hand.
pub const ORIGIN_MANUAL: &str = "manual";

/// The origin of a schedule's runs.
pub fn schedule_origin(schedule: &str) -> String {
    format!("schedule:{schedule}")
}

const BACKFILL_ORIGIN_PREFIX: &str = "backfill:";

/// The origin of a backfill's runs.
pub fn backfill_origin(backfill: &RunId) -> String {
    format!("{BACKFILL_ORIGIN_PREFIX}{backfill}")
}

/// Whether a run with this origin belongs to a backfill.
pub fn is_backfill_origin(origin: &str) -> bool {
    origin.starts_with(BACKFILL_ORIGIN_PREFIX)
}

/// An origin is `manual`, `schedule:<name>` or `backfill:<run id>`; it becomes a subject
/// token of the run index, so nothing else is accepted.
pub fn check_origin(origin: &str) -> Result<(), String> {
    let valid = match origin.split_once(':') {
        None => origin == ORIGIN_MANUAL,
        Some(("schedule", name)) => crate::spec::check_name("schedule", name).is_ok(),
        Some(("backfill", id)) => id.parse::<RunId>().is_ok(),
        Some(_) => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "origin `{}` is not `manual`, `schedule:<name>` or `backfill:<id>`",
            origin.chars().take(80).collect::<String>()
        ))
    }
}

/// A ready job, published by the coordinator to `sluice.jobs.<pool>.<run_id>.<job>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    pub schema_version: u32,
    pub run_id: RunId,
    pub workflow: String,
    pub job: String,
    /// The job kind a worker looks up in its registry (`run:` in YAML).
    pub kind: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub config: serde_json::Value,
    pub window: Window,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub pool: String,
    /// Attempts made before this dispatch; attempt = offset + delivery count.
    #[serde(default)]
    pub attempt_offset: u32,
    /// Attempts made before this series (a `retry` or replay starts a new one): the retry
    /// policy counts from here. A scheduled retry moves `attempt_offset`, never this.
    /// Absent: the same as `attempt_offset` (messages from before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_base: Option<u32>,
    /// Dispatch series; `retry` and replays start a new one.
    #[serde(default)]
    pub generation: u32,
    pub retry: RetryPolicy,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// For `exec`: exit codes that end the job without further attempts.
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// The jobs this one needs: a worker reads their outputs (KV `sluice-jobs`) as inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    /// For `pod`: the image (a child's is its workflow job's: children cannot name one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For `pod`: Kubernetes `ResourceRequirements`, as the spec gave them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<serde_json::Value>,
    /// The job's `env:` (a child's is its workflow job's).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, crate::pod::EnvValue>,
    /// The coordinator that dispatched this job reads [`EventBatch`]es: a worker may report
    /// the job's events in one (an older coordinator leaves it out, and gets single events).
    #[serde(default, skip_serializing_if = "is_false")]
    pub batch_events: bool,
}
versioned!(JobMessage, "job");

impl JobMessage {
    /// Where the retry policy counts attempts from.
    pub fn retry_base(&self) -> u32 {
        self.retry_base.unwrap_or(self.attempt_offset)
    }
}

/// What happened to one attempt of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Succeeded,
    Failed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// A job lifecycle event, published by a worker to `sluice.events.<run_id>.<job>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub schema_version: u32,
    pub run_id: RunId,
    pub job: String,
    pub attempt: u32,
    #[serde(default)]
    pub generation: u32,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub worker: String,
    /// For `failed`: what went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// For `failed`: when the next attempt is due; absent means no attempt follows.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    /// For `succeeded`: the job's JSON output (≤ 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// For `succeeded`: how many children this attempt spawned (in `sluice.spawns.…`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spawned: u32,
    /// For `succeeded` and `failed` from a worker: when the attempt began (the attempt's
    /// start time even if its `started` event was lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// For `failed` with `retry_at`: the worker acknowledged the message, and the
    /// coordinator publishes the next attempt as a message schedule due at `retry_at`
    /// (a delay beyond the worker's NAK limit; decision 8: no worker publishes into the
    /// jobs stream). Without it, the worker waits the delay out with a NAK.
    #[serde(default, skip_serializing_if = "is_false")]
    pub schedule_retry: bool,
    /// For `succeeded` and `failed`: what this attempt found of earlier attempts of the job
    /// (the `pod` kind reports the Kubernetes Job a lost worker left behind), recorded in
    /// those attempts' `found_later`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierAttempt>,
}
versioned!(JobEvent, "job event");

impl JobEvent {
    /// An event of attempt `attempt` of `job` by `worker` at `at`, with no error, output,
    /// children or findings.
    pub fn new(
        run_id: RunId,
        job: &str,
        attempt: u32,
        generation: u32,
        kind: EventKind,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            run_id,
            job: job.to_owned(),
            attempt,
            generation,
            kind,
            at,
            worker: worker.to_owned(),
            error: None,
            retry_at: None,
            output: None,
            spawned: 0,
            started_at: None,
            schedule_retry: false,
            earlier: Vec::new(),
        }
    }
}

/// Several job events in one message, published by a worker to
/// [`crate::names::event_batch_subject`] (for jobs whose message says `batch_events`): one
/// stored message, and one consumed by the coordinator, for many attempts' events. Each
/// element is one [`JobEvent`] encoded as it would be alone, so one that cannot be read
/// does not hide the others. At most [`crate::limits::EVENTS_PER_BATCH_MAX`] events and
/// [`crate::limits::EVENT_BATCH_MAX_BYTES`] bytes of them, in the order they happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    pub schema_version: u32,
    /// The worker that published it.
    pub worker: String,
    pub events: Vec<serde_bytes::ByteBuf>,
}
versioned!(EventBatch, "event batch");

/// What a later attempt found of an earlier attempt of the same job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierAttempt {
    pub attempt: u32,
    /// ≤ [`crate::limits::ATTEMPT_FOUND_LATER_MAX_BYTES`].
    pub found: String,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A run, stored in KV `sluice-runs` under its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema_version: u32,
    pub id: RunId,
    pub workflow: String,
    /// The YAML, in records written before specs were stored by hash (empty since).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec_yaml: String,
    /// The spec the run's jobs are dispatched with: its hash in [`crate::names::SPECS_BUCKET`].
    /// The submitted one, or the one a `retry --spec` or `dlq replay --spec` brought.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    pub window: Window,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub state: RunState,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// For a failed run: which jobs failed (their records say why).
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub traceparent: Option<String>,
    #[serde(default)]
    pub tracestate: Option<String>,
    /// Job names in dependency order. Each has a record in KV `sluice-jobs` once it has left
    /// the state the run began with (see `queued_at_start`).
    #[serde(default)]
    pub jobs: Vec<String>,
    /// Which of `jobs` the run queued when it began, as a bitmap in hex: digit `i / 4` holds
    /// job `i` as bit `1 << (i % 4)`. When present, a job's record is written only once it
    /// leaves that first state, so one without a record is `queued` (since `created_at`) if
    /// its bit is set and `blocked` otherwise ([`RunRecord::first_state`]). Absent in records
    /// from before, whose jobs were all written when the run began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_at_start: Option<String>,
    /// Where it comes from: `manual`, `schedule:<name>` or `backfill:<id>`.
    #[serde(default = "manual_origin")]
    pub origin: String,
    /// Who cancelled the run while its submission waited for a coordinator (`sluice cancel`
    /// of a pending run): it was created `cancelled` and none of its jobs ran. Absent
    /// otherwise (a later retry keeps it: it says how the run began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
}
versioned!(RunRecord, "run record");

impl RunRecord {
    /// `queued_at_start` for a run that queued these of its `jobs` (by index) when it began.
    pub fn queued_bitmap(jobs: usize, queued: impl IntoIterator<Item = usize>) -> String {
        let mut digits = vec![0u8; jobs.div_ceil(4)];
        for index in queued {
            if let Some(digit) = digits.get_mut(index / 4) {
                *digit |= 1 << (index % 4);
            }
        }
        digits.iter().map(|digit| char::from_digit(u32::from(*digit), 16).unwrap_or('0')).collect()
    }

    /// The record of workflow job `index` (of `jobs`) while it has none of its own: as the run
    /// began, `queued` since `created_at` or `blocked`. `None` for a run from before
    /// `queued_at_start`, whose jobs all have records, and for an index past `jobs`.
    pub fn first_state(&self, index: usize) -> Option<JobRecord> {
        let bitmap = self.queued_at_start.as_deref()?;
        let name = self.jobs.get(index)?;
        let digit = bitmap.as_bytes().get(index / 4).and_then(|digit| char::from(*digit).to_digit(16)).unwrap_or(0);
        let mut job = JobRecord::blank(self.id, name);
        if digit & (1 << (index % 4)) != 0 {
            job.state = JobState::Queued;
            job.queued_at = Some(self.created_at);
        }
        Some(job)
    }
}

fn manual_origin() -> String {
    ORIGIN_MANUAL.to_owned()
}

/// One entry of the run index (stream `SLUICE_INDEX`): a run as it was created, or as it
/// entered a final state. Entries of a chain point to the one before (`previous`, a stream
/// sequence), so the newest N of any list cost N reads whatever the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunIndexEntry {
    pub schema_version: u32,
    pub run_id: RunId,
    pub workflow: String,
    pub window_start: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub origin: String,
    /// For an entry of a state chain: the state entered, and when.
    #[serde(default)]
    pub state: Option<RunState>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// The stream sequence of the previous entry of the same chain.
    #[serde(default)]
    pub previous: Option<u64>,
}
versioned!(RunIndexEntry, "run index entry");

/// One attempt of a job, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub worker: String,
    /// Other workers the same attempt was delivered to (JetStream redelivered it with the
    /// same delivery count, e.g. after a nats-server crash lost consumer state).
    #[serde(default)]
    pub redelivered_to: Vec<String>,
    /// The hash of the spec the attempt ran with (absent in records from before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// What a later attempt found of this one, e.g. "its pod Job sluice-…-1 had succeeded"
    /// for an attempt whose worker was lost (from that attempt's event's `earlier`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_later: Option<String>,
}

/// Redeliveries of one attempt kept in its record, at most.
pub const REDELIVERIES_KEPT: usize = 8;

/// One job of a run, stored in KV `sluice-jobs` under `<run_id>.<job>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub schema_version: u32,
    pub run_id: RunId,
    pub name: String,
    pub state: JobState,
    /// The highest attempt number started so far.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub attempt_offset: u32,
    #[serde(default)]
    pub generation: u32,
    #[serde(default)]
    pub queued_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub attempt_history: Vec<AttemptRecord>,
    /// For a child job: its parent's path (a child's own path is `<parent>.<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// For a child job: its definition (workflow jobs are defined by the run's YAML).
    /// Shared: children usually have equal definitions, and a spawn of 100,000 children
    /// saves 100,000 records at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<std::sync::Arc<JobSpec>>,
    /// Children the job spawned; it is `waiting` until all of them are finished.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub children: u32,
    /// The JSON output of its successful attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Attempts left out of `attempt_history` (it keeps the first and the latest
    /// [`crate::limits::ATTEMPTS_KEPT_LATEST`]), so the record stays bounded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_omitted: u32,
    /// Set when a user ended the job by hand (`sluice mark`) rather than a worker; cleared
    /// when the job runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked: Option<Mark>,
}
versioned!(JobRecord, "job record");

/// How `sluice mark` ends a job: as if it had succeeded, or as if it had been skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MarkAs {
    Succeeded,
    Skipped,
}

impl MarkAs {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Skipped => "skipped",
        }
    }
}

/// Who ended a job by hand, how and when (on its [`JobRecord`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    #[serde(rename = "as")]
    pub as_: MarkAs,
    /// The request's `requested_by`.
    pub by: String,
    pub at: DateTime<Utc>,
    /// The request that marked it: a request applied again after a crash finishes what it
    /// began instead of being refused as "already marked".
    #[serde(default)]
    pub request_id: Option<RequestId>,
}

impl JobRecord {
    /// A job that has not started: `blocked`, no attempts, generation 0.
    pub fn blank(run_id: RunId, name: &str) -> Self {
        Self {
            schema_version: crate::SCHEMA_VERSION,
            run_id,
            name: name.to_owned(),
            state: JobState::Blocked,
            attempts: 0,
            attempt_offset: 0,
            generation: 0,
            queued_at: None,
            started_at: None,
            finished_at: None,
            retry_at: None,
            error: None,
            attempt_history: Vec::new(),
            parent: None,
            definition: None,
            children: 0,
            output: None,
            attempts_omitted: 0,
            marked: None,
        }
    }

    /// Adds an attempt to the history, leaving out the oldest but the first when it is full.
    pub fn push_attempt(&mut self, attempt: AttemptRecord) {
        if self.attempt_history.len() > crate::limits::ATTEMPTS_KEPT_LATEST {
            self.attempt_history.remove(1);
            self.attempts_omitted = self.attempts_omitted.saturating_add(1);
        }
        self.attempt_history.push(attempt);
    }
}

/// A worker id as kept in a record: at most [`crate::limits::WORKER_NAME_MAX_BYTES`], its start
/// (events come from outside; a forged 600 KB id must not grow a record).
pub fn bounded_worker(worker: &str) -> std::borrow::Cow<'_, str> {
    truncate_start(worker, crate::limits::WORKER_NAME_MAX_BYTES)
}

/// What a later attempt found of an earlier one, as kept in a record: its start, at most
/// [`crate::limits::ATTEMPT_FOUND_LATER_MAX_BYTES`] with the mark of a cut.
pub fn bounded_found_later(found: &str) -> String {
    truncate_start(found, crate::limits::ATTEMPT_FOUND_LATER_MAX_BYTES - '…'.len_utf8()).into_owned()
}

/// Keeps the first `max_bytes` of `text`, on a character boundary (borrowed when it fits:
/// every event names its worker, and almost none is too long).
pub fn truncate_start(text: &str, max_bytes: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max_bytes {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

/// A job whose attempts are over, kept in stream `SLUICE_DLQ` until replayed or purged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub schema_version: u32,
    /// The job as it was last dispatched; a replay dispatches it again, new generation.
    pub job: JobMessage,
    /// Why no further attempt was made.
    pub reason: String,
    /// The job's attempts, with their errors: the first and the latest
    /// [`crate::limits::ATTEMPTS_KEPT_LATEST`].
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
    pub dead_at: DateTime<Utc>,
    /// Attempts left out of `attempts`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts_omitted: u32,
}
versioned!(DeadLetter, "dead letter");

/// What a client asked of Sluice: `sluice cancel`, `retry`, `mark`, `dlq replay|purge`, `schedule
/// apply|pause|resume|delete|trigger`, `backfill` and `backfill cancel`. Clients never write
/// Sluice's state themselves: every mutation is one of these, applied by the coordinator,
/// which answers each with a [`ControlOutcome`] in KV `sluice-outcomes` under `request_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub schema_version: u32,
    /// Chosen by the client (UUIDv7): the key its answer is stored under. Absent in
    /// requests of older clients, which get no answer.
    #[serde(default)]
    pub request_id: Option<RequestId>,
    /// Who asked: the authenticated user (set by an HTTP server), the NATS user otherwise.
    #[serde(default)]
    pub requested_by: String,
    /// The run the request is about: for cancel, retry and replay; for `schedule_trigger`,
    /// the id of the run to start (chosen by the client, so it can follow it at once).
    #[serde(default)]
    pub run_id: Option<RunId>,
    pub action: ControlAction,
    /// For `retry` and `replay`: the one job (and what depends on it) to run again.
    #[serde(default)]
    pub job: Option<String>,
    pub requested_at: DateTime<Utc>,
    /// For `replay`: the dead letter (stream sequence in `SLUICE_DLQ`) to remove once the
    /// job is queued again.
    #[serde(default)]
    pub dead_letter: Option<u64>,
    /// For `retry` and `replay`: a new YAML for what runs again (`--spec`). It may change only
    /// the definitions of the jobs that run again; the run keeps it from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}
versioned!(ControlRequest, "control request");

impl ControlRequest {
    /// A request with a fresh id, asked now.
    pub fn new(action: ControlAction, run_id: Option<RunId>, requested_by: impl Into<String>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            request_id: Some(RequestId::new()),
            requested_by: requested_by.into(),
            run_id,
            action,
            job: None,
            requested_at: Utc::now(),
            dead_letter: None,
            spec: None,
        }
    }

    /// Who a request is recorded as having come from. The identity in its subject
    /// (`sluice.control.<identity>.…`) is what NATS permissions tie to the sender's credentials (a
    /// submitter may publish only under its own identity, decision 14), so a payload cannot claim
    /// another's name: `requested_by` becomes that identity. A payload naming someone else keeps
    /// the name after it (`http/alice`: a client that acts for its own users, like the HTTP server
    /// of decision 2, says which user), so the record shows both who sent it and for whom.
    pub fn attributed(mut self, subject: &str) -> Self {
        let Some((identity, _)) = crate::names::parse_control_subject(subject) else { return self };
        let claimed = self.requested_by.trim();
        self.requested_by = if claimed.is_empty() || claimed == identity {
            identity.to_owned()
        } else {
            // The identity stays whole; the claimed name is cut to fit the limit.
            let mut room = crate::limits::REQUESTED_BY_MAX_BYTES.saturating_sub(identity.len() + 1).min(claimed.len());
            while !claimed.is_char_boundary(room) {
                room -= 1;
            }
            format!("{identity}/{}", &claimed[..room])
        };
        self
    }

    /// The action's name as outcomes and logs show it (`replay` is a retry of one dead
    /// letter's job).
    pub fn action_name(&self) -> &'static str {
        match (&self.action, self.dead_letter) {
            (ControlAction::Retry, Some(_)) => "replay",
            (action, _) => action.name(),
        }
    }
}

/// The actions of a [`ControlRequest`]. Unit variants are plain strings on the wire
/// (`"cancel"`), the others a map with one key (`{"schedule_pause": {"name": "w"}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// Stop the run: queued jobs never start, running ones are told to stop.
    Cancel,
    /// Run again what did not complete (or `job` and what depends on it).
    Retry,
    /// Delete the dead letters that match (all without filters).
    DlqPurge {
        #[serde(default)]
        workflow: Option<String>,
        #[serde(default)]
        pool: Option<String>,
    },
    /// Create or update the schedule of a workflow (its `schedule:` section), keeping what
    /// an existing schedule already handled and whether it is paused.
    ScheduleApply { workflow: String },
    /// Stop firing a schedule.
    SchedulePause { name: String },
    /// Fire a paused schedule again, from now on.
    ScheduleResume { name: String },
    /// Remove a schedule (its runs stay).
    ScheduleDelete { name: String },
    /// Start one run of a schedule now (its id is the request's `run_id`).
    ScheduleTrigger { name: String },
    /// Store a workflow (the YAML) under its name, so runs can be started by name; a
    /// `schedule:` section applies its schedule too.
    WorkflowApply { workflow: String },
    /// Forget a workflow, and its schedule if it has one (its runs stay).
    WorkflowDelete { name: String },
    /// Retry or cancel many runs as one request: a bulk action by filter.
    Bulk(BulkRequest),
    /// Plan and start a backfill.
    BackfillCreate(BackfillRequest),
    /// Stop a backfill: no new windows start, running ones are cancelled.
    BackfillCancel { id: RunId },
    /// Declare a pool (or change its settings): its consumer `pool-<name>` exists from then
    /// on, so autoscalers see its lag before any worker has run. Absent settings keep what
    /// the pool has (or the defaults, for a new pool).
    PoolApply(PoolSettings),
    /// End a job of the run by hand, as if it had succeeded (with `output` as its output)
    /// or been skipped: what needs it proceeds accordingly.
    Mark {
        job: String,
        #[serde(rename = "as")]
        as_: MarkAs,
        #[serde(default)]
        output: Option<serde_json::Value>,
    },
}

/// What `sluice pool apply NAME` sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSettings {
    pub name: String,
    /// How long a delivered job may go without an ack or in-progress ack before JetStream
    /// delivers it again (a worker that died).
    #[serde(default)]
    pub ack_wait_ms: Option<u64>,
    /// Deliveries of one job before JetStream gives up on it (a backstop: Sluice counts
    /// attempts itself).
    #[serde(default)]
    pub max_deliver: Option<i64>,
    /// The longest timeout a job of this pool may have; longer ones are capped to it.
    #[serde(default)]
    pub max_timeout_ms: Option<u64>,
}

/// A declared pool, in KV `sluice-pools` under its name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub schema_version: u32,
    pub name: String,
    pub ack_wait_ms: u64,
    pub max_deliver: i64,
    #[serde(default)]
    pub max_timeout_ms: Option<u64>,
    /// The kinds its workers last announced (kept while the pool is scaled to zero).
    #[serde(default)]
    pub kinds: Vec<String>,
    pub declared_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
versioned!(PoolRecord, "pool record");

/// A live worker (or coordinator), in KV `sluice-workers` under `<pool>.<worker id>`
/// (coordinators under `_coordinator.<id>`); entries expire unless renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub schema_version: u32,
    pub worker_id: String,
    /// Its pool; for a coordinator, `_coordinator`.
    pub pool: String,
    /// The job kinds it runs, sorted.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// The protocol schema versions it reads.
    #[serde(default)]
    pub protocol_versions: Vec<u32>,
    /// Its build (`sluice --version`).
    pub version: String,
    /// Jobs it runs at once, and how many it runs now.
    #[serde(default)]
    pub slots: u32,
    #[serde(default)]
    pub busy: u32,
    pub started_at: DateTime<Utc>,
    /// For a coordinator: whether it leads.
    #[serde(default)]
    pub leader: bool,
}
versioned!(WorkerRecord, "worker record");

impl ControlAction {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::DlqPurge { .. } => "dlq_purge",
            Self::ScheduleApply { .. } => "schedule_apply",
            Self::SchedulePause { .. } => "schedule_pause",
            Self::ScheduleResume { .. } => "schedule_resume",
            Self::ScheduleDelete { .. } => "schedule_delete",
            Self::ScheduleTrigger { .. } => "schedule_trigger",
            Self::WorkflowApply { .. } => "workflow_apply",
            Self::WorkflowDelete { .. } => "workflow_delete",
            Self::Bulk(bulk) => match bulk.action {
                BulkAction::Retry => "bulk_retry",
                BulkAction::Cancel => "bulk_cancel",
            },
            Self::BackfillCreate(_) => "backfill_create",
            Self::BackfillCancel { .. } => "backfill_cancel",
            Self::PoolApply(_) => "pool_apply",
            Self::Mark { .. } => "mark",
        }
    }
}

/// What a bulk action does to each of its runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// As `retry RUN`: the failed, skipped and cancelled jobs of a finished run run again.
    Retry,
    /// As `cancel RUN`.
    Cancel,
}

impl BulkAction {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "retry" => Some(Self::Retry),
            "cancel" => Some(Self::Cancel),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel => "cancel",
        }
    }
}

/// A bulk action: the runs a filter matched when the user was shown how many (so what is
/// confirmed is what is touched), at most [`crate::limits::BULK_RUNS_MAX`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkRequest {
    pub action: BulkAction,
    pub runs: Vec<RunId>,
    /// The filter, as the user gave it (`workflow=etl state=failed …`): for the audit.
    pub selection: String,
}

/// What `sluice backfill FILE --from D --to D` asks for; the coordinator plans the windows
/// from the runs it has recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRequest {
    /// Chosen by the client (UUIDv7), so it can show the backfill at once.
    pub id: RunId,
    /// The workflow YAML every window's run is submitted with.
    pub workflow: String,
    /// First and last day (`YYYY-MM-DD`), both included.
    pub from: String,
    pub to: String,
    /// Length of each window (`1d`, `6h`, ...).
    pub interval: String,
    pub max_parallel_runs: u32,
    #[serde(default)]
    pub rerun: Rerun,
}

/// The coordinator's answer to a [`ControlRequest`], in KV `sluice-outcomes` under the
/// request id (kept 7 days).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlOutcome {
    pub schema_version: u32,
    pub request_id: RequestId,
    #[serde(default)]
    pub run_id: Option<RunId>,
    /// [`ControlRequest::action_name`].
    pub action: String,
    pub outcome: Outcome,
    /// Why it was refused (absent when applied).
    #[serde(default)]
    pub kind: Option<RefusalKind>,
    /// What happened, or why not, in words.
    pub reason: String,
    /// What the request changed: job paths queued again, dead letters deleted, the
    /// schedule or backfill written. Bounded by [`crate::limits::OUTCOME_CHANGED_MAX`].
    #[serde(default)]
    pub changed: Vec<String>,
    /// How many things changed in all (`changed` may list only the first ones).
    #[serde(default)]
    pub changed_total: u64,
    #[serde(default)]
    pub requested_by: String,
    pub at: DateTime<Utc>,
}
versioned!(ControlOutcome, "control outcome");

/// A cancel of a run whose submission no coordinator had taken yet, kept by the coordinator
/// in KV `sluice-active` under [`crate::names::pending_cancel_key`] until intake takes the
/// submission and creates the run `cancelled`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCancel {
    pub schema_version: u32,
    pub run_id: RunId,
    /// The cancel request's id.
    #[serde(default)]
    pub request_id: Option<RequestId>,
    /// Who asked (bounded like a request's).
    #[serde(default)]
    pub requested_by: String,
    /// When the cancel was applied.
    pub at: DateTime<Utc>,
}
versioned!(PendingCancel, "pending cancel");

/// Whether a request took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Applied,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
        }
    }
}

/// Why a request was refused; decides the CLI's exit code (2 / 1 / 2) and the HTTP status
/// (404 / 409 / 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The run, job, dead letter, schedule or backfill does not exist.
    NotFound,
    /// It exists, but its state does not allow this now (a finished run cancelled, a
    /// running run retried).
    Conflict,
    /// The request itself is wrong (a workflow that does not validate, a bad range).
    Invalid,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Invalid => "invalid",
        }
    }
}

/// A schedule, stored in KV `sluice-schedules` under its workflow's name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    pub schema_version: u32,
    pub name: String,
    /// The workflow YAML each tick submits (its `schedule:` is this schedule).
    pub workflow: String,
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub paused: bool,
    /// Every tick up to here has been handled: submitted, or dropped by the catch-up policy.
    pub handled_until: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub last_tick: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_run: Option<RunId>,
    /// Missed ticks the catch-up policy dropped, in total.
    #[serde(default)]
    pub skipped_ticks: u64,
}
versioned!(ScheduleRecord, "schedule record");

/// A workflow applied here (`sluice workflow apply`), in KV `sluice-workflows` under its
/// name. What a list shows is kept beside the spec's hash, so listing reads no spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub schema_version: u32,
    pub name: String,
    /// The YAML, in the object store `sluice-specs` under this hash.
    pub spec_hash: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The zone its windows are computed in (`None`: UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Its schedule's cron, when it has one.
    #[serde(default)]
    pub schedule: Option<String>,
    pub jobs: u32,
    #[serde(default)]
    pub params: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Who applied this version.
    #[serde(default)]
    pub applied_by: String,
}
versioned!(WorkflowRecord, "workflow record");

/// Which windows a backfill runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rerun {
    /// Windows without a successful run (never run, failed or cancelled).
    #[default]
    Missing,
    /// Windows whose latest run failed or was cancelled.
    Failed,
    /// Every window.
    All,
}

impl Rerun {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Failed => "failed",
            Self::All => "all",
        }
    }
}

/// One window of a backfill. Its run id is chosen when the backfill is created, so
/// submitting it again after a restart can never make a second run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillWindow {
    pub window: Window,
    pub run_id: RunId,
    /// Why this window needs no run (e.g. it already succeeded), if it does not.
    #[serde(default)]
    pub skip: Option<String>,
    /// The run's state when last seen (absent: not submitted yet).
    #[serde(default)]
    pub state: Option<RunState>,
}

/// A backfill, stored in KV `sluice-backfills` under its id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackfillRecord {
    pub schema_version: u32,
    pub id: RunId,
    pub workflow: String,
    pub spec_yaml: String,
    pub from: String,
    pub to: String,
    pub interval: String,
    pub max_parallel_runs: u32,
    pub rerun: Rerun,
    /// `running` until every window's run has ended (or it was cancelled).
    pub state: RunState,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    pub windows: Vec<BackfillWindow>,
    /// Windows before this index have been submitted (or skipped).
    #[serde(default)]
    pub next: u32,
}
versioned!(BackfillRecord, "backfill record");

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// A Rust job's `ctx.log`, or the worker speaking about the attempt.
    Log,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::Log => "log",
        }
    }
}

/// One line a job wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub at: DateTime<Utc>,
    pub stream: LogStream,
    pub text: String,
}

/// Lines of one attempt, on `sluice.logs.<run_id>.<job>`, kept in stream `SLUICE_LOGS`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogBatch {
    pub schema_version: u32,
    pub run_id: RunId,
    pub job: String,
    pub attempt: u32,
    pub lines: Vec<LogLine>,
}
versioned!(LogBatch, "log batch");

/// A submission that could not be accepted, kept in stream `SLUICE_REJECTED`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub schema_version: u32,
    pub received_at: DateTime<Utc>,
    #[serde(default)]
    pub run_id: Option<RunId>,
    #[serde(default)]
    pub workflow: Option<String>,
    pub reason: String,
    pub payload_bytes: u64,
}
versioned!(Rejection, "rejection");

/// Keeps the last `max_bytes` of an error text (the end of stderr says most), on a
/// character boundary.
pub fn truncate_error(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}
