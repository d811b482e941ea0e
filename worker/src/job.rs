//! The job contract: what a job gets and what it returns.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_proto::limits::EARLIER_ATTEMPTS_REPORTED_MAX;
use sluice_proto::messages::bounded_found_later;
use sluice_proto::pod::EnvValue;
use sluice_proto::{ChildSpec, EarlierAttempt, LogStream, RunId, Window};
use tokio_util::sync::CancellationToken;

use crate::logs::LogSink;

/// One kind of job. Registered by name; `run: <name>` in a workflow selects it.
/// Dyn-compatible (through `async-trait`) so a registry can hold many kinds.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// Does the work for `window`. Return `Err(JobError::retryable(..))` for failures worth
    /// another attempt, `Err(JobError::permanent(..))` for those that are not. Long jobs
    /// should watch `ctx.cancelled()`: it fires on timeout and on worker shutdown.
    async fn perform(&self, ctx: &JobContext, window: &Window, config: &serde_json::Value) -> Result<Output, JobError>;
}

/// What a finished job hands back: nothing, or a small JSON value (≤ 64 KiB) that the jobs
/// needing this one receive as an input and `status` shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub(crate) value: Option<serde_json::Value>,
}

impl Output {
    pub fn none() -> Self {
        Self::default()
    }

    /// A JSON output.
    pub fn json(value: serde_json::Value) -> Self {
        Self { value: Some(value) }
    }

    pub fn value(&self) -> Option<&serde_json::Value> {
        self.value.as_ref()
    }
}

/// A failed attempt, and whether another attempt could succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JobError {
    pub message: String,
    pub retryable: bool,
}

impl JobError {
    /// A failure another attempt may not repeat (network, a busy database, a crash).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true }
    }
    /// A failure no retry will fix (bad config, missing input): no further attempts.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: false }
    }
}

/// Who and what this attempt is, and how to notice it should stop.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub run_id: RunId,
    pub workflow: String,
    pub job: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub generation: u32,
    pub params: BTreeMap<String, String>,
    /// For `exec`: the program and arguments, placeholders not yet substituted.
    pub command: Option<Vec<String>>,
    /// For `exec`: exit codes that mean "do not retry", besides 78.
    pub permanent_exit_codes: Vec<i32>,
    pub worker_id: String,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    /// The outputs of the jobs this one needs, by job name (those that had one).
    pub inputs: BTreeMap<String, serde_json::Value>,
    /// The pool this worker serves.
    pub pool: String,
    /// The job's timeout, if it has one (the worker enforces it; kinds may pass it on).
    pub timeout: Option<std::time::Duration>,
    /// For `pod`: the image, Kubernetes `ResourceRequirements` and environment of the job.
    pub image: Option<String>,
    pub resources: Option<serde_json::Value>,
    pub env: BTreeMap<String, EnvValue>,
    pub(crate) cancel: CancellationToken,
    pub(crate) children: Arc<Mutex<Vec<ChildSpec>>>,
    /// What this attempt found of earlier ones, sent with its outcome.
    pub(crate) earlier: Arc<Mutex<Vec<EarlierAttempt>>>,
    pub(crate) logs: LogSink,
}

impl JobContext {
    /// The value of a placeholder `{{name}}` in a job's command, config or (for `pod`) its
    /// object: `start`, `end`, `run_id`, `job`, `attempt`, `params.<name>`; `None` for any
    /// other name. One table, so every kind substitutes the same names.
    pub fn placeholder(&self, window: &Window, name: &str) -> Option<String> {
        match name {
            "start" => Some(window.start_rfc3339()),
            "end" => Some(window.end_rfc3339()),
            "run_id" => Some(self.run_id.to_string()),
            "job" => Some(self.job.clone()),
            "attempt" => Some(self.attempt.to_string()),
            other => other.strip_prefix("params.").and_then(|param| self.params.get(param).cloned()),
        }
    }

    /// Completes when the job should stop (timeout or shutdown).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Adds a child job, started once this attempt succeeds (children of a failed attempt
    /// never run). The parent ends `completed` when all its children complete, and
    /// whatever needs it waits for them all; it holds no worker slot meanwhile.
    pub fn spawn(&self, child: ChildSpec) {
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(child);
    }

    /// Records, in earlier attempt `attempt`'s entry of the job's history (`status` shows it
    /// as "found later"), what this attempt found of it: the `pod` kind reports the Kubernetes
    /// Job a lost worker left behind. Sent with this attempt's outcome; reports on attempts
    /// that are not earlier, and past [`EARLIER_ATTEMPTS_REPORTED_MAX`], are dropped, and text
    /// is cut to [`sluice_proto::limits::ATTEMPT_FOUND_LATER_MAX_BYTES`].
    pub fn report_earlier_attempt(&self, attempt: u32, found: impl AsRef<str>) {
        if attempt == 0 || attempt >= self.attempt {
            tracing::warn!(job = %self.job, attempt, current = self.attempt, "a report on an attempt that is not earlier is dropped");
            return;
        }
        let mut earlier = self.earlier.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = bounded_found_later(found.as_ref());
        if let Some(report) = earlier.iter_mut().find(|report| report.attempt == attempt) {
            report.found = found;
        } else if earlier.len() < EARLIER_ATTEMPTS_REPORTED_MAX {
            earlier.push(EarlierAttempt { attempt, found });
        } else {
            tracing::warn!(job = %self.job, attempt, "too many earlier attempts reported on; this one is dropped");
        }
    }

    /// The reports on earlier attempts made through this context (for tests of a kind).
    pub fn reported_earlier(&self) -> Vec<EarlierAttempt> {
        self.earlier.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Writes a line to the job's log (`sluice logs`), timestamped, with the attempt.
    pub fn log(&self, text: impl AsRef<str>) {
        self.logs.line(LogStream::Log, text.as_ref());
    }

    /// Where the job's output lines go (exec's stdout and stderr, a pod's log).
    pub fn log_sink(&self) -> &LogSink {
        &self.logs
    }

    /// The children spawned so far (taken when the attempt ends).
    pub(crate) fn take_children(&self) -> Vec<ChildSpec> {
        std::mem::take(&mut *self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// A context for calling a job directly (tests, local runs).
    pub fn for_local_run(job: &str, attempt: u32) -> Self {
        Self {
            run_id: RunId::new(),
            workflow: "local".into(),
            job: job.into(),
            attempt,
            generation: 0,
            params: BTreeMap::new(),
            command: None,
            permanent_exit_codes: Vec::new(),
            worker_id: "local".into(),
            traceparent: None,
            tracestate: None,
            inputs: BTreeMap::new(),
            pool: "local".into(),
            timeout: None,
            image: None,
            resources: None,
            env: BTreeMap::new(),
            cancel: CancellationToken::new(),
            children: Arc::default(),
            earlier: Arc::default(),
            logs: LogSink::discard(),
        }
    }

    /// The children spawned through this context (for tests of a job called directly).
    pub fn spawned(&self) -> Vec<ChildSpec> {
        self.children.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn with_command(mut self, command: Vec<String>) -> Self {
        self.command = Some(command);
        self
    }

    /// The token that cancels this attempt.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

#[cfg(test)]
mod tests {
    use sluice_proto::limits::ATTEMPT_FOUND_LATER_MAX_BYTES;

    use super::*;

    #[test]
    fn reports_on_earlier_attempts_are_kept_once_each_bounded_and_only_for_earlier_ones() {
        let ctx = JobContext::for_local_run("load", 3);
        ctx.report_earlier_attempt(3, "itself");
        ctx.report_earlier_attempt(4, "a later one");
        ctx.report_earlier_attempt(0, "no such attempt");
        assert!(ctx.reported_earlier().is_empty(), "only attempts before this one are reported on");
        ctx.report_earlier_attempt(1, "first");
        ctx.report_earlier_attempt(1, "x".repeat(10 * ATTEMPT_FOUND_LATER_MAX_BYTES));
        ctx.report_earlier_attempt(2, "second");
        let reported = ctx.reported_earlier();
        assert_eq!(
            reported.iter().map(|report| report.attempt).collect::<Vec<_>>(),
            [1, 2],
            "the latest word per attempt"
        );
        assert!(reported[0].found.len() <= ATTEMPT_FOUND_LATER_MAX_BYTES && reported[0].found.ends_with('…'));
        let many = JobContext::for_local_run("load", 100);
        for attempt in 1..50 {
            many.report_earlier_attempt(attempt, "lost");
        }
        assert_eq!(many.reported_earlier().len(), EARLIER_ATTEMPTS_REPORTED_MAX);
    }
}
