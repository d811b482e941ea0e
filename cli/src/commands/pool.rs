//! `sluice pool apply NAME [--ack-wait 30s] [--max-deliver N] [--max-timeout 2h]` and `sluice
//! pool list`: pools exist once declared (`default` always is); declaring one creates its
//! consumer, so an autoscaler sees its lag before any worker has run. And `sluice workers`:
//! who serves which pool right now.

use std::process::ExitCode;

use async_nats::jetstream;
use serde_json::json;
use sluice_client::Stores;
use sluice_proto::{ControlAction, ControlRequest, HumanDuration, PoolSettings};

use crate::output::{self, CliError, Format, applied, ask, print_json, table, time};

#[derive(clap::Subcommand)]
pub enum PoolCommand {
    /// Declare a pool, or change its settings (those not given keep their value).
    Apply {
        name: String,
        /// How long a delivered job may go unanswered before it is delivered again (a worker
        /// that died); running jobs extend it every third of it. New pools: 30s.
        #[arg(long)]
        ack_wait: Option<HumanDuration>,
        /// Deliveries of one job before JetStream gives up on it and it is dead-lettered (a
        /// backstop for jobs that kill their worker). New pools: 120.
        #[arg(long)]
        max_deliver: Option<i64>,
        /// The longest timeout a job of this pool may have.
        #[arg(long)]
        max_timeout: Option<HumanDuration>,
    },
    /// List the declared pools with their settings, lag and live workers.
    List,
}

pub async fn run(url: &str, command: PoolCommand, format: Format) -> Result<ExitCode, CliError> {
    let js = jetstream::new(output::connect(url).await?);
    match command {
        PoolCommand::Apply { name, ack_wait, max_deliver, max_timeout } => {
            sluice_proto::spec::check_name("pool", &name).map_err(CliError::usage)?;
            let millis = |duration: HumanDuration| duration.as_duration().as_millis() as u64;
            let settings = PoolSettings {
                name,
                ack_wait_ms: ack_wait.map(millis),
                max_deliver,
                max_timeout_ms: max_timeout.map(millis),
            };
            let outcome = applied(ask(&js, ControlRequest::new(ControlAction::PoolApply(settings), None, "")).await?)?;
            match format {
                Format::Json => list(&js, format, outcome.changed.first().map(String::as_str)).await,
                Format::Human => {
                    outln!("{}", outcome.reason)?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        PoolCommand::List => list(&js, format, None).await,
    }
}

/// `pool list` (or, with `only`, the one pool `pool apply` declared).
async fn list(js: &jetstream::Context, format: Format, only: Option<&str>) -> Result<ExitCode, CliError> {
    // Pools exist once a coordinator set Sluice up (it declares `default` then).
    sluice_client::requests::wait_until_set_up(js, sluice_client::requests::SETUP_WAIT).await?;
    let stores = Stores::open_required(js).await?;
    let workers = stores.workers().await?;
    let mut values = Vec::new();
    for pool in stores.pools().await?.into_iter().filter(|pool| only.is_none_or(|name| name == pool.name)) {
        let lag = stores.pool_lag(&pool.name).await?;
        let live = workers.iter().filter(|worker| worker.pool == pool.name).count();
        values.push(json!({
            "name": pool.name,
            "ack_wait_ms": pool.ack_wait_ms,
            "max_deliver": pool.max_deliver,
            "max_timeout_ms": pool.max_timeout_ms,
            "kinds": pool.kinds,
            "consumer": sluice_proto::names::pool_consumer(&pool.name),
            "pending": lag.map(|lag| lag.pending),
            "ack_pending": lag.map(|lag| lag.ack_pending),
            "workers": live,
            "declared_at": time(Some(pool.declared_at)),
        }));
    }
    match (format, only) {
        (Format::Json, Some(_)) => print_json(values.first().unwrap_or(&serde_json::Value::Null)),
        (Format::Json, None) => print_json(&json!({"pools": values})),
        (Format::Human, _) => {
            let rows: Vec<Vec<String>> = values
                .iter()
                .map(|pool| {
                    let number = |key: &str| pool[key].as_u64().map(|n| n.to_string()).unwrap_or_else(|| "-".into());
                    vec![
                        pool["name"].as_str().unwrap_or_default().to_owned(),
                        format!("{}s", pool["ack_wait_ms"].as_u64().unwrap_or(0) / 1000),
                        number("max_deliver"),
                        pool["max_timeout_ms"]
                            .as_u64()
                            .map(|ms| format!("{}s", ms / 1000))
                            .unwrap_or_else(|| "-".into()),
                        number("pending"),
                        number("ack_pending"),
                        number("workers"),
                    ]
                })
                .collect();
            outln!(
                "{}",
                table(&["POOL", "ACK WAIT", "MAX DELIVER", "MAX TIMEOUT", "PENDING", "ACK PENDING", "WORKERS"], &rows)
            )
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice workers`: the live workers and coordinators, from the registry (entries expire
/// 15 s after a worker's last renewal).
pub async fn workers(url: &str, format: Format) -> Result<ExitCode, CliError> {
    let js = jetstream::new(output::connect(url).await?);
    let workers = sluice_client::stores::live_workers(&js).await?;
    match format {
        Format::Json => print_json(&sluice_client::json::workers_json(&workers)),
        Format::Human if workers.is_empty() => outln!("no live workers"),
        Format::Human => {
            let rows: Vec<Vec<String>> = workers
                .iter()
                .map(|worker| {
                    let role = if worker.pool == sluice_proto::names::COORDINATOR_POOL_TOKEN {
                        if worker.leader { "coordinator (leader)" } else { "coordinator" }.to_owned()
                    } else {
                        format!("{}/{} busy", worker.busy, worker.slots)
                    };
                    vec![
                        worker.pool.clone(),
                        worker.worker_id.clone(),
                        role,
                        worker.kinds.join(","),
                        worker.version.clone(),
                    ]
                })
                .collect();
            outln!("{}", table(&["POOL", "ID", "SLOTS", "KINDS", "VERSION"], &rows))
        }
    }?;
    Ok(ExitCode::SUCCESS)
}
