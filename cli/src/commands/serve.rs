//! `sluice coordinator` and `sluice worker`: the long-running processes. Both stop cleanly
//! on SIGTERM or Ctrl-C (the worker drains: running jobs finish, the rest go back).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::HumanDuration;
use sluice_worker::{Registry, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::health;
use crate::output::CliError;

#[derive(clap::Args, Clone)]
pub struct WorkerArgs {
    /// Pool to serve (jobs with `pool:` set to it).
    #[arg(long, default_value = sluice_proto::spec::DEFAULT_POOL)]
    pub pool: String,
    /// Jobs to run at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// On SIGTERM, how long running jobs may take to finish before they are handed back
    /// (default: until they finish; a second SIGTERM or Ctrl-C hands them back at once).
    #[arg(long)]
    pub shutdown_grace: Option<HumanDuration>,
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
    /// Exit (status 0) once this many jobs have run here, after they finish: one worker
    /// per KEDA ScaledJob.
    #[arg(long, value_name = "N")]
    pub max_jobs: Option<u64>,
    /// Exit (status 0) once no job has run here for this long.
    #[arg(long, value_name = "DURATION")]
    pub exit_when_idle: Option<HumanDuration>,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// `--pod-namespace`, `--allow-image`, `--pod-secret`: the `pod` kind (commands/pod.rs).
    #[command(flatten)]
    pub pod: super::pod::PodArgs,
}

/// `--metrics-listen`, on the coordinator and the worker.
#[derive(clap::Args, Clone)]
pub struct MetricsArgs {
    /// Serve `/metrics` (Prometheus), `/healthz` and `/readyz` over HTTP on this address
    /// (e.g. 0.0.0.0:9090; port 0 picks one, logged as `metrics listening`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

impl MetricsArgs {
    fn address(&self) -> Result<Option<std::net::SocketAddr>, CliError> {
        self.metrics_listen.as_deref().map(health::parse_listen).transpose()
    }
}

/// Refuses worker settings that could only fail later, naming the flag. (The pool's ack
/// wait and max deliveries are set where it is declared: `sluice pool apply`.)
pub fn check_worker_flags(concurrency: usize) -> Result<(), CliError> {
    if concurrency == 0 || concurrency > CONCURRENCY_MAX {
        return Err(CliError::usage(format!("--concurrency must be 1 to {CONCURRENCY_MAX}, not {concurrency}")));
    }
    Ok(())
}

use sluice_worker::config::{MAX_JOBS_MAX, POOL_WAIT_DEFAULT};
use sluice_worker::runtime::CONCURRENCY_MAX;

impl WorkerArgs {
    pub fn config(&self) -> Result<WorkerConfig, CliError> {
        check_worker_flags(self.concurrency)?;
        let mut config = WorkerConfig::new(self.pool.clone());
        config.concurrency = self.concurrency;
        config.shutdown_grace = self.shutdown_grace.map(|grace| grace.as_duration());
        if let Some(jobs) = self.max_jobs
            && !(1..=MAX_JOBS_MAX).contains(&jobs)
        {
            return Err(CliError::usage(format!("--max-jobs must be 1 to {MAX_JOBS_MAX}, not {jobs}")));
        }
        config.max_jobs = self.max_jobs;
        config.exit_when_idle = self.exit_when_idle.map(|idle| idle.as_duration());
        if config.exit_when_idle == Some(Duration::ZERO) {
            return Err(CliError::usage("--exit-when-idle must be longer than 0s"));
        }
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
    /// How long run and job records are kept after their last change (default: for
    /// ever). Choose it well above the longest run: a record not written for this long
    /// goes, even while its run runs.
    #[arg(long, value_name = "DURATION")]
    pub history_max_age: Option<HumanDuration>,
    /// Children of one parent that get trace spans of their own; the rest of a parent's
    /// children are summarised in one span with counts.
    #[arg(long, value_name = "N", default_value_t = sluice_coordinator::spans::CHILD_SPANS_PER_PARENT_DEFAULT)]
    pub trace_child_spans: usize,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
}

/// `--notify-targets`, `--secrets-dir`, `--ui-url`: where notifications go (the coordinator
/// and `sluice dev`).
#[derive(clap::Args, Clone, Default)]
pub struct NotifyArgs {
    /// YAML map of the targets workflows may notify: a name to an http(s) URL or to
    /// `{secret: NAME}` (a file of --secrets-dir holding the URL). A workflow naming any
    /// other target is refused.
    #[arg(long, value_name = "FILE")]
    pub notify_targets: Option<std::path::PathBuf>,
    /// The directory of the coordinator's secrets: one file per secret, named by it.
    #[arg(long, value_name = "DIR")]
    pub secrets_dir: Option<std::path::PathBuf>,
    /// The web UI's base URL: notifications link to `<URL>/runs/<run id>`.
    #[arg(long, value_name = "URL")]
    pub ui_url: Option<String>,
}

impl NotifyArgs {
    /// The targets, read and checked now: a file with any problem is refused (exit 2).
    pub fn settings(&self) -> Result<sluice_coordinator::notify::NotifySettings, CliError> {
        let targets = match &self.notify_targets {
            Some(path) => sluice_coordinator::notify::Targets::load(path, self.secrets_dir.as_deref())
                .map_err(|error| CliError::usage(error.to_string()))?,
            None => sluice_coordinator::notify::Targets::default(),
        };
        if let Some(url) = &self.ui_url {
            sluice_coordinator::notify::check_url(url)
                .map_err(|problem| CliError::usage(format!("--ui-url: {problem}")))?;
        }
        Ok(sluice_coordinator::notify::NotifySettings { targets, ui_url: self.ui_url.clone() })
    }
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
    let max_child_spans = sluice_coordinator::spans::CHILD_SPANS_PER_PARENT_MAX;
    if args.trace_child_spans > max_child_spans {
        return Err(CliError::usage(format!(
            "--trace-child-spans must be 0 to {max_child_spans}, not {}",
            args.trace_child_spans
        )));
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let exporting = exporter("sluice-coordinator", &mut registry)?;
    let mut metrics = sluice_coordinator::metrics::Metrics::register(&mut registry);
    if let Some((sink, _)) = &exporting {
        metrics = metrics.with_spans(sink.clone(), args.trace_child_spans);
    }
    let settings = sluice_coordinator::service::Settings {
        topology: sluice_coordinator::topology::TopologySettings {
            logs: sluice_coordinator::topology::LogRetention {
                max_age: args.logs_max_age.as_duration(),
                max_bytes: u64::from(args.logs_max_mib) * 1024 * 1024,
            },
            replicas: args.stream_replicas,
            history_max_age: history_max_age(args.history_max_age)?,
        },
        metrics,
        notify: Arc::new(args.notify.settings()?),
    };
    let listen = args.metrics.address()?;
    let shutdown = on_signal();
    let (phase, watched) = tokio::sync::watch::channel(sluice_coordinator::service::Phase::Starting);
    let probes = probes_watching(watched, registry);
    let _listening = listen_for_probes(listen, &probes).await?;
    let role = sluice_proto::roles::Role::Coordinator;
    let Some(client) = connect_waiting(url, &role, &shutdown).await? else { return Ok(ExitCode::SUCCESS) };
    let _ = probes.nats.set(client.clone());
    sluice_coordinator::service::run_observed(client, settings, shutdown, phase).await.map_err(
        |error| match error {
            // A server this coordinator cannot run on: a configuration to fix, not a failure.
            sluice_coordinator::ServiceError::ServerVersion(_) | sluice_coordinator::ServiceError::StoreTooSmall(_) => {
                CliError::usage(error.to_string())
            }
            _ => CliError::failed(error.to_string()),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

pub async fn worker(url: &str, args: WorkerArgs) -> Result<ExitCode, CliError> {
    let config = args.config()?;
    let listen = args.metrics.address()?;
    let registry = args.pod.register(Registry::with_stock_kinds()).await?;
    let (shutdown, hurry) = on_signals();
    let (phase, watched) = tokio::sync::watch::channel(sluice_worker::runtime::Phase::Opening);
    let mut metrics = prometheus_client::registry::Registry::default();
    let exporting = exporter("sluice-worker", &mut metrics)?;
    let mut counted = sluice_worker::metrics::Metrics::register(&mut metrics);
    if let Some((sink, _)) = &exporting {
        counted = counted.with_spans(sink.clone());
    }
    let probes = probes_watching(watched, metrics);
    let _listening = listen_for_probes(listen, &probes).await?;
    let role = sluice_proto::roles::Role::Worker { pool: config.pool.clone() };
    let Some(client) = connect_waiting(url, &role, &shutdown).await? else { return Ok(ExitCode::SUCCESS) };
    let _ = probes.nats.set(client.clone());
    let control = sluice_worker::runtime::Control { shutdown, hurry, phase, metrics: counted };
    let result = sluice_worker::runtime::run_observed(client.clone(), registry, config, control).await;
    // Acks and events of the last jobs must leave before the process does.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    result.map_err(|error| match error {
        sluice_worker::WorkerError::Config(_) => CliError::usage(error.to_string()),
        _ => CliError::failed(error.to_string()),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--history-max-age`, checked: at least [`HISTORY_MAX_AGE_MIN`].
///
/// [`HISTORY_MAX_AGE_MIN`]: sluice_coordinator::topology::HISTORY_MAX_AGE_MIN
fn history_max_age(value: Option<HumanDuration>) -> Result<Option<Duration>, CliError> {
    let min = sluice_coordinator::topology::HISTORY_MAX_AGE_MIN;
    match value.map(|age| age.as_duration()) {
        Some(age) if age < min => Err(CliError::usage(format!(
            "--history-max-age must be at least {}, not {}",
            HumanDuration::from_duration(min),
            HumanDuration::from_duration(age)
        ))),
        age => Ok(age),
    }
}

/// Where a process's spans go, and the guard that sends the last of them.
pub type Exporter = (Arc<dyn sluice_proto::trace::SpanSink>, crate::telemetry::Exporting);

/// The OTLP exporter the `OTEL_*` variables ask for (none: tracing is off), its counters
/// registered in `registry`; spans are sent until the guard ([`crate::telemetry::Exporting`])
/// is dropped.
pub fn exporter(
    service: &str,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<Option<Exporter>, CliError> {
    let config = crate::telemetry::config_from_env(service)?;
    let started = crate::telemetry::start(config, registry)?;
    Ok(started.map(|(sink, exporting)| (sink as Arc<dyn sluice_proto::trace::SpanSink>, exporting)))
}

/// Starts the probes' listener when `--metrics-listen` is given; it stops when the guard
/// is dropped (as the process returns).
async fn listen_for_probes(
    listen: Option<std::net::SocketAddr>,
    probes: &health::Probes,
) -> Result<Option<tokio_util::sync::DropGuard>, CliError> {
    let Some(addr) = listen else { return Ok(None) };
    let stop = CancellationToken::new();
    health::serve(addr, probes.clone(), stop.clone()).await?;
    Ok(Some(stop.drop_guard()))
}

/// Pause between tries to reach NATS at start.
const CONNECT_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Connects, waiting while nothing answers at `url` (a pod that starts before its
/// nats-server, a server restarting): the process stays up, not ready, and says so once.
/// `None`: shut down while waiting. Other failures (no JetStream, a server too old) end it.
async fn connect_waiting(
    url: &str,
    role: &sluice_proto::roles::Role,
    shutdown: &CancellationToken,
) -> Result<Option<async_nats::Client>, CliError> {
    // The global --nats-* options, with the role's inbox prefix unless one is given.
    let options = crate::output::options_as(url, Some(role));
    let mut told = false;
    loop {
        match sluice_client::connect_with(&options, "sluice-cli").await {
            Ok(client) => return Ok(Some(client)),
            Err(error @ sluice_client::ClientError::Unreachable { .. }) => {
                if !std::mem::replace(&mut told, true) {
                    tracing::warn!(%error, "waiting for NATS");
                }
            }
            Err(error) => return Err(crate::output::connect_failed(error)),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(CONNECT_RETRY_PAUSE) => {}
        }
    }
}

/// Tokens cancelled by the first SIGTERM or SIGINT, and by the second.
pub fn on_signals() -> (CancellationToken, CancellationToken) {
    let (first, second) = (CancellationToken::new(), CancellationToken::new());
    let (cancel_first, cancel_second) = (first.clone(), second.clone());
    tokio::spawn(async move {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                return;
            }
        };
        for token in [cancel_first, cancel_second] {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
            }
            token.cancel();
        }
    });
    (first, second)
}

/// A token cancelled by the first SIGTERM or SIGINT.
pub fn on_signal() -> CancellationToken {
    on_signals().0
}

/// The coordinator's phase as the probes show it (`sluice dev`'s listener shows it).
pub fn probed(phase: sluice_coordinator::service::Phase) -> health::Phase {
    phase.probed()
}

/// A service's phase as the probes show it.
trait ProbedPhase: Copy + Send + Sync + 'static {
    fn probed(self) -> health::Phase;
}

impl ProbedPhase for sluice_coordinator::service::Phase {
    fn probed(self) -> health::Phase {
        health::Phase { name: self.as_str(), ready: self.is_ready(), stopped: self == Self::Stopped }
    }
}

impl ProbedPhase for sluice_worker::runtime::Phase {
    fn probed(self) -> health::Phase {
        health::Phase { name: self.as_str(), ready: self.is_ready(), stopped: self == Self::Stopped }
    }
}

/// Probes that read the phase a service publishes on `watched`, and serve `metrics`.
fn probes_watching<P: ProbedPhase>(
    watched: tokio::sync::watch::Receiver<P>,
    metrics: prometheus_client::registry::Registry,
) -> health::Probes {
    health::Probes::new(Arc::new(move || watched.borrow().probed()), metrics)
}
