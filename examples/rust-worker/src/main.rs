//! An example Sluice worker with custom Rust job kinds beside the stock kinds: `calibrate`
//! (one sensor) and `calibrate_all`, which fans out one `calibrate` child per sensor.
//!
//!     cargo run -p sluice-example-worker -- --nats-url nats://127.0.0.1:4222 --pool default
//!
//! It takes the connection flags and variables every Sluice binary takes (`--nats-creds`,
//! `--nats-nkey`, `--nats-inbox-prefix`, …; docs/cli.md "Connecting"); its inbox prefix is
//! its pool's worker role's unless one is given.
//!
//! Then submit a workflow whose jobs say `run: calibrate` (examples/workflows/calibrate.yaml).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sluice_worker::{ChildSpec, Job, JobContext, JobError, Output, Registry, Window, WorkerConfig};

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
        let sensor = config.get("sensor").and_then(serde_json::Value::as_str).unwrap_or("all");
        tracing::info!(run = %ctx.run_id, attempt = ctx.attempt, %window, model, factor, sensor, "calibrating");
        ctx.log(format!("calibrating sensor {sensor} with model {model} over {window}"));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                Ok(Output::json(serde_json::json!({"sensor": sensor, "model": model, "factor": factor})))
            }
            // Timeouts and worker shutdown cancel the attempt.
            _ = ctx.cancelled() => Err(JobError::retryable("calibration interrupted")),
        }
    }
}

/// Lists the sensors (here: `config.sensors` of them) and spawns one `calibrate` child per
/// sensor. The children run in parallel on any worker, each retried on its own; this job
/// ends `completed` when all of them have, and what needs it waits for them all.
struct CalibrateAll;

#[async_trait]
impl Job for CalibrateAll {
    async fn perform(
        &self,
        ctx: &JobContext,
        _window: &Window,
        config: &serde_json::Value,
    ) -> Result<Output, JobError> {
        let sensors = config
            .get("sensors")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| JobError::permanent("config.sensors (how many sensors) is required"))?;
        let model = config.get("model").cloned().unwrap_or_else(|| "v1".into());
        for index in 0..sensors {
            let sensor = format!("sensor-{index:03}");
            ctx.spawn(ChildSpec {
                config: Some(serde_json::json!({"model": model, "sensor": sensor})),
                ..ChildSpec::new(sensor.clone(), "calibrate")
            });
        }
        ctx.log(format!("spawned {sensors} calibrations"));
        Ok(Output::json(serde_json::json!({"sensors": sensors})))
    }
}

fn registry() -> Registry {
    Registry::with_stock_kinds().register("calibrate", Calibrate).register("calibrate_all", CalibrateAll)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let mut args = std::env::args().skip(1);
    let mut nats = sluice_client::NatsOptions::from_env();
    // Its own pool: the stock worker's pool `default` serves other kinds.
    let mut pool = "rust".to_owned();
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--pool" => pool = value,
            other if nats.set_flag(other, &value) => {}
            other => anyhow::bail!("unknown flag {other}: use --pool POOL and the --nats-* flags (docs/cli.md)"),
        }
    }
    let role = sluice_proto::roles::Role::Worker { pool: pool.clone() };
    let nats = nats.with_default_inbox_prefix(role.inbox_prefix());
    let client = sluice_client::connect_with(&nats, "sluice-example-worker").await?;
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
            .await
            .unwrap();
        assert_eq!(result.value().unwrap()["model"], "v3");
    }

    #[tokio::test]
    async fn calibrate_all_spawns_one_child_per_sensor() {
        let ctx = JobContext::for_local_run("per-sensor", 1);
        let output = CalibrateAll.perform(&ctx, &window(), &serde_json::json!({"sensors": 3, "model": "v3"})).await;
        assert_eq!(output.unwrap().value(), Some(&serde_json::json!({"sensors": 3})));
        let children = ctx.spawned();
        let names: Vec<&str> = children.iter().map(|child| child.name.as_str()).collect();
        assert_eq!(names, ["sensor-000", "sensor-001", "sensor-002"]);
        assert_eq!(children[1].config.as_ref().unwrap()["sensor"], "sensor-001");
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
        assert_eq!(kinds, ["calibrate", "calibrate_all", "exec", "fail", "noop", "sleep"]);
    }
}
