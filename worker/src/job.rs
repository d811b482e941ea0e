//! The job contract: what a job gets and what it returns.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sluice_proto::{RunId, Window};
use tokio_util::sync::CancellationToken;

/// One kind of job. Registered by name; `run: <name>` in a workflow selects it.
/// Dyn-compatible (through `async-trait`) so a registry can hold many kinds.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// Does the work for `window`. Return `Err(JobError::retryable(..))` for failures worth
    /// another attempt, `Err(JobError::permanent(..))` for those that are not. Long jobs
    /// should watch `ctx.cancelled()`: it fires on timeout and on worker shutdown.
    async fn perform(&self, ctx: &JobContext, window: &Window, config: &serde_json::Value) -> Result<Output, JobError>;
}

/// What a finished job hands back. Empty for now; room for small outputs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    _private: (),
}

impl Output {
    pub fn none() -> Self {
        Self::default()
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
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    /// Completes when the job should stop (timeout or shutdown).
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
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
            cancel: CancellationToken::new(),
        }
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
