//! `sluice coordinator` and `sluice worker`: the long-running processes. Both stop cleanly
//! on SIGTERM or Ctrl-C (the worker drains: running jobs finish, the rest go back).

use std::process::ExitCode;
use std::time::Duration;

use sluice_proto::HumanDuration;
use sluice_worker::{Registry, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::output::{self, CliError};

#[derive(clap::Args, Clone)]
pub struct WorkerArgs {
    /// Pool to serve (jobs with `pool:` set to it).
    #[arg(long, default_value = sluice_proto::spec::DEFAULT_POOL)]
    pub pool: String,
    /// Jobs to run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// On SIGTERM, how long running jobs may take to finish before they are handed back.
    #[arg(long, default_value = "30s")]
    pub shutdown_grace: HumanDuration,
    /// Retry delays up to this wait as a NAK with delay; longer ones become JetStream
    /// message schedules, so a waiting job does not keep an autoscaled pool awake.
    #[arg(long, default_value = "30s")]
    pub max_nak_delay: HumanDuration,
    /// Jobs fetched beyond the free slots while jobs finish within 100 ms, so short jobs
    /// come in batches (default: three per slot, at most 1024; 0 fetches only for free
    /// slots). None are fetched ahead while jobs run longer.
    #[arg(long)]
    pub prefetch: Option<usize>,
    /// Once Sluice is set up, how long to wait (in milliseconds) for the pool to be declared
    /// before exiting with status 2. For tests and scripts that declare the pool later.
    #[arg(long, hide = true, env = "SLUICE_POOL_WAIT_MS", default_value_t = POOL_WAIT_DEFAULT.as_millis() as u64)]
    pub pool_wait_ms: u64,
}

/// Refuses worker settings that could only fail later, naming the flag. (The pool's ack
/// wait and max deliveries are set where it is declared: `sluice pool apply`.)
pub fn check_worker_flags(concurrency: usize) -> Result<(), CliError> {
    if concurrency == 0 || concurrency > CONCURRENCY_MAX {
        return Err(CliError::usage(format!("--concurrency must be 1 to {CONCURRENCY_MAX}, not {concurrency}")));
    }
    Ok(())
}

use sluice_worker::config::POOL_WAIT_DEFAULT;
use sluice_worker::runtime::CONCURRENCY_MAX;

impl WorkerArgs {
    pub fn config(&self) -> Result<WorkerConfig, CliError> {
        check_worker_flags(self.concurrency)?;
        let mut config = WorkerConfig::new(self.pool.clone());
        config.concurrency = self.concurrency;
        config.shutdown_grace = self.shutdown_grace.as_duration();
        config.nak_delay_max = self.max_nak_delay.as_duration();
        config.pool_wait = Duration::from_millis(self.pool_wait_ms);
        config.prefetch = self.prefetch.unwrap_or(sluice_worker::runtime::default_prefetch(self.concurrency));
        if config.prefetch > CONCURRENCY_MAX {
            return Err(CliError::usage(format!("--prefetch must be 0 to {CONCURRENCY_MAX}, not {}", config.prefetch)));
        }
        Ok(config)
    }
}

/// `--logs-max-mib` unless set (the coordinator's default, in MiB).
const LOGS_MAX_MIB_DEFAULT: u32 = (sluice_coordinator::storage::LOGS_MAX_BYTES_DEFAULT / (1024 * 1024)) as u32;

#[derive(clap::Args, Clone)]
pub struct CoordinatorArgs {
    /// How long job log lines are kept.
    #[arg(long, default_value = "7d")]
    pub logs_max_age: HumanDuration,
    /// Most job log data kept, in MiB; the oldest lines go first. On a JetStream store of
    /// less than four times this, the logs take a quarter of the store.
    #[arg(long, default_value_t = LOGS_MAX_MIB_DEFAULT)]
    pub logs_max_mib: u32,
    /// Replicas of every stream and bucket: 1 on one nats-server, 3 on a cluster.
    #[arg(long, default_value_t = 1)]
    pub stream_replicas: usize,
}

pub async fn coordinator(url: &str, args: CoordinatorArgs) -> Result<ExitCode, CliError> {
    if args.logs_max_age.as_duration() < Duration::from_secs(60) || args.logs_max_mib == 0 {
        return Err(CliError::usage("--logs-max-age must be at least 1m and --logs-max-mib at least 1"));
    }
    let max_replicas = sluice_coordinator::topology::STREAM_REPLICAS_MAX;
    if args.stream_replicas == 0 || args.stream_replicas > max_replicas {
        return Err(CliError::usage(format!(
            "--stream-replicas must be 1 to {max_replicas}, not {}",
            args.stream_replicas
        )));
    }
    let settings = sluice_coordinator::service::Settings {
        topology: sluice_coordinator::topology::TopologySettings {
            logs: sluice_coordinator::topology::LogRetention {
                max_age: args.logs_max_age.as_duration(),
                max_bytes: u64::from(args.logs_max_mib) * 1024 * 1024,
            },
            replicas: args.stream_replicas,
        },
    };
    let client = output::connect_as(url, Some(&sluice_proto::roles::Role::Coordinator)).await?;
    let shutdown = on_signal();
    sluice_coordinator::service::run_with(client, settings, shutdown).await.map_err(|error| match error {
        // A server this coordinator cannot run on: a configuration to fix, not a failure.
        sluice_coordinator::ServiceError::ServerVersion(_) | sluice_coordinator::ServiceError::StoreTooSmall(_) => {
            CliError::usage(error.to_string())
        }
        _ => CliError::failed(error.to_string()),
    })?;
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(url: &str, args: WorkerArgs) -> Result<ExitCode, CliError> {
    let config = args.config()?;
    let role = sluice_proto::roles::Role::Worker { pool: config.pool.clone() };
    let client = output::connect_as(url, Some(&role)).await?;
    let shutdown = on_signal();
    let result = sluice_worker::runtime::run(client.clone(), Registry::with_stock_kinds(), config, shutdown).await;
    // Acks and events of the last jobs must leave before the process does.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    result.map_err(|error| match error {
        sluice_worker::WorkerError::Config(_) => CliError::usage(error.to_string()),
        _ => CliError::failed(error.to_string()),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled by the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
        }
        cancel.cancel();
    });
    token
}
