//! An example Sluice worker with a custom Rust job kind, `calibrate`, beside the stock kinds.
//!
//!     cargo run -p sluice-example-worker -- --nats-url nats://127.0.0.1:4222 --pool default
//!
//! Then submit a workflow whose jobs say `run: calibrate` (examples/workflows/calibrate.yaml).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sluice_worker::{Job, JobContext, JobError, Output, Registry, Window, WorkerConfig};

/// Applies a calibration model to the window's readings. A real one would read and write
/// storage; this one checks its config and pretends to work for a moment.
struct Calibrate;

#[async_trait]
impl Job for Calibrate {
    async fn perform(&self, ctx: &JobContext, window: &Window, config: &serde_json::Value) -> Result<Output, JobError> {
        // A bad config will not get better on retry: permanent.
        let model = config
            .get("model")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| JobError::permanent("config.model is required, e.g. { model: v3 }"))?;
        let factor = config.get("factor").and_then(serde_json::Value::as_f64).unwrap_or(1.0);
        tracing::info!(run = %ctx.run_id, attempt = ctx.attempt, %window, model, factor, "calibrating");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => Ok(Output::none()),
            // Timeouts and worker shutdown cancel the attempt.
            _ = ctx.cancelled() => Err(JobError::retryable("calibration interrupted")),
        }
    }
}

fn registry() -> Registry {
    Registry::with_stock_kinds().register("calibrate", Calibrate)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut args = std::env::args().skip(1);
    let mut url = std::env::var("SLUICE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let mut pool = "default".to_owned();
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--nats-url" => url = value,
            "--pool" => pool = value,
            other => anyhow::bail!("unknown flag {other}: use --nats-url URL --pool POOL"),
        }
    }
    let client = sluice_worker::nats::connect(&url, "sluice-example-worker").await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    sluice_worker::runtime::run(client.clone(), registry(), WorkerConfig::new(pool), shutdown).await?;
    client.flush().await.context("flushing the last acks")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window::parse("2024-03-01", sluice_proto::window::parse_zone("UTC").unwrap(), chrono::Utc::now()).unwrap()
    }

    #[tokio::test]
    async fn calibrates_with_a_model() {
        let result = Calibrate
            .perform(&JobContext::for_local_run("calibrate", 1), &window(), &serde_json::json!({"model": "v3"}))
            .await;
        assert_eq!(result, Ok(Output::none()));
    }

    #[tokio::test]
    async fn a_missing_model_is_permanent() {
        let error = Calibrate
            .perform(&JobContext::for_local_run("calibrate", 1), &window(), &serde_json::Value::Null)
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("config.model is required"));
    }

    #[test]
    fn the_registry_serves_calibrate_and_the_stock_kinds() {
        let registry = registry();
        let kinds: Vec<&str> = registry.kinds().collect();
        assert_eq!(kinds, ["calibrate", "exec", "fail", "noop", "sleep"]);
    }
}
