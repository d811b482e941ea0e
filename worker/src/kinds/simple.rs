//! `noop`, `sleep` and `fail`: for trying workflows out and for tests.

use std::time::Duration;

use async_trait::async_trait;
use sluice_proto::{HumanDuration, Window};

use crate::job::{Job, JobContext, JobError, Output};

/// Does nothing and succeeds.
pub struct Noop;

#[async_trait]
impl Job for Noop {
    async fn perform(
        &self,
        _ctx: &JobContext,
        _window: &Window,
        _config: &serde_json::Value,
    ) -> Result<Output, JobError> {
        Ok(Output::none())
    }
}

/// Waits `config.duration` (e.g. `"2s"`, default 1s), or until cancelled.
pub struct Sleep;

#[async_trait]
impl Job for Sleep {
    async fn perform(
        &self,
        ctx: &JobContext,
        _window: &Window,
        config: &serde_json::Value,
    ) -> Result<Output, JobError> {
        let duration = match config.get("duration") {
            None => Duration::from_secs(1),
            Some(serde_json::Value::String(text)) => text
                .parse::<HumanDuration>()
                .map_err(|error| JobError::permanent(format!("config.duration: {error}")))?
                .as_duration(),
            Some(other) => {
                return Err(JobError::permanent(format!(
                    "config.duration must be a string such as \"2s\", not {other}"
                )));
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(duration) => Ok(Output::none()),
            _ = ctx.cancelled() => Err(JobError::retryable("cancelled while sleeping")),
        }
    }
}

/// Fails with `config.message`; permanently when `config.retryable` is false. With
/// `config.succeed_on_attempt: N` it succeeds from attempt N on (for trying out retries).
pub struct Fail;

#[async_trait]
impl Job for Fail {
    async fn perform(
        &self,
        ctx: &JobContext,
        _window: &Window,
        config: &serde_json::Value,
    ) -> Result<Output, JobError> {
        if let Some(attempt) = config.get("succeed_on_attempt").and_then(serde_json::Value::as_u64)
            && u64::from(ctx.attempt) >= attempt
        {
            return Ok(Output::none());
        }
        let message =
            config.get("message").and_then(serde_json::Value::as_str).unwrap_or("failed on purpose (run: fail)");
        let retryable = config.get("retryable").and_then(serde_json::Value::as_bool).unwrap_or(true);
        Err(JobError { message: message.to_owned(), retryable })
    }
}
