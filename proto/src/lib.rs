//! sluice-proto: the contract between every Sluice component and any NATS client.
//!
//! Subject, stream, bucket and header names ([`names`]), the MessagePack messages
//! ([`messages`], [`codec`]), the YAML workflow spec and its validation ([`spec`]),
//! time windows ([`window`]), cron expressions ([`cron`]) and schedules ([`schedule`]),
//! children and outputs ([`spawn`]), job and run states ([`state`]), NATS roles and their
//! permissions ([`roles`]), notifications ([`notify`]) and W3C trace context ([`trace`]). No I/O and no async runtime: everything here is pure and testable (the
//! clock is always an argument).

pub mod backfill;
pub mod codec;
pub mod cron;
pub mod duration;
pub mod ids;
pub mod limits;
pub mod messages;
pub mod names;
pub mod notify;
pub mod placeholder;
pub mod pod;
pub mod retry;
pub mod roles;
pub mod schedule;
pub mod spawn;
pub mod spec;
pub mod state;
pub mod trace;
pub mod version;
pub mod window;

pub use codec::{CodecError, decode, encode};
pub use duration::HumanDuration;
pub use ids::{RequestId, RunId};
pub use messages::{
    AttemptRecord, BackfillRecord, BackfillRequest, BackfillWindow, BulkAction, BulkRequest, ControlAction,
    ControlOutcome, ControlRequest, DeadLetter, EarlierAttempt, EventBatch, EventKind, JobEvent, JobMessage, JobRecord,
    LogBatch, LogLine, LogStream, Mark, MarkAs, Outcome, PendingCancel, PoolRecord, PoolSettings, RefusalKind,
    Rejection, Rerun, RunIndexEntry, RunRecord, SCHEMA_VERSION, ScheduleRecord, Submission, WorkerRecord,
    WorkflowRecord,
};
pub use retry::{Backoff, RetryPolicy};
pub use spawn::{ChildSpec, SpawnBatch};
pub use spec::{JobSpec, SpecError, WorkflowSpec};
pub use state::{JobState, RunState};
pub use trace::TraceParent;
pub use window::{Window, WindowError};
