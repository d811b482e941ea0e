//! `sluice dev`: a whole local stack in one command. Starts a nats-server (JetStream, store
//! in `.sluice/dev/`), a coordinator and a worker, submits the given workflows, shows their
//! progress, then keeps the stack up for other `sluice` commands until Ctrl-C.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use sluice_local_nats::{NatsServer, Options};
use sluice_worker::{Registry, WorkerConfig};

use crate::commands::serve::on_signal;
use crate::commands::status::view_text;
use crate::commands::submit::{publish, resolve_window};
use crate::follow::{Finished, follow};
use crate::output::{CliError, Format, errln};

#[derive(clap::Args)]
pub struct DevArgs {
    /// Workflow files to submit once the stack is up.
    files: Vec<PathBuf>,
    /// Port of the local nats-server.
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// Where the local nats-server keeps its data.
    #[arg(long, default_value = ".sluice/dev/nats")]
    data_dir: PathBuf,
    /// Worker slots.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Stop once the submitted runs finish, instead of waiting for Ctrl-C.
    #[arg(long)]
    exit_when_done: bool,
    /// A command to run beside the stack while it runs, e.g. a Python worker for a pool the
    /// workflows name: `PYTHONPATH=examples/python-jobs sluice-py worker --pool python etl_jobs`.
    /// Run by `sh -c` once the pools are declared, with SLUICE_NATS_URL set; its output goes
    /// to `worker-command-N.log` beside the data directory; SIGTERM when `dev` stops.
    /// Repeatable.
    #[arg(long = "worker-command", value_name = "COMMAND")]
    worker_commands: Vec<String>,
    /// Where the stack's metrics (`/metrics`, Prometheus text) and probes are served: one
    /// registry for the coordinator and the worker. When the default address is taken, `dev`
    /// says so and runs without; an address given here must be free.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Where the web UI and the HTTP API (`/api/v1`) are served, as `sluice server` serves
    /// them without tokens: a loopback address. When the default is taken, `dev` says so and runs without.
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// `--notify-targets FILE`, `--secrets-dir`, `--ui-url`, as on `sluice coordinator`.
    #[command(flatten)]
    notify: super::serve::NotifyArgs,
}

/// Where `sluice dev` serves its metrics unless told otherwise (the OpenTelemetry
/// Prometheus exporter's customary port).
pub const DEV_METRICS_LISTEN: &str = "127.0.0.1:9464";

pub async fn run(args: DevArgs) -> Result<ExitCode, CliError> {
    // Validate everything before starting anything.
    super::serve::check_worker_flags(args.concurrency)?;
    if let Some(index) = args.worker_commands.iter().position(|command| command.trim().is_empty()) {
        return Err(CliError::usage(format!(
            "--worker-command number {} is empty: give the command to run",
            index + 1
        )));
    }
    let listen = crate::health::parse_listen(args.metrics_listen.as_deref().unwrap_or(DEV_METRICS_LISTEN))?;
    let notify = std::sync::Arc::new(args.notify.settings()?);
    let api_listen: std::net::SocketAddr =
        args.api_listen.as_deref().unwrap_or(super::server::DEV_API_LISTEN).trim().parse().map_err(|_| {
            CliError::usage(format!(
                "--api-listen must be an address and port such as 127.0.0.1:8080, not `{}`",
                args.api_listen.as_deref().unwrap_or_default()
            ))
        })?;
    if !api_listen.ip().is_loopback() {
        return Err(CliError::usage(format!(
            "--api-listen {api_listen} is not a loopback address: `dev` serves the API without tokens"
        )));
    }
    let workflows = args.files.iter().map(|file| super::read_workflow(file)).collect::<Result<Vec<_>, _>>()?;
    // Held until this process ends: a second `dev` on the same store would share it with
    // this one's nats-server and wedge both.
    let _lock = DataDirLock::take(&args.data_dir)?;
    let mut server = NatsServer::start(Options {
        port: Some(args.port),
        monitor_port: None,
        store_dir: Some(args.data_dir.clone()),
        without_jetstream: false,
        max_file_store: None,
        sync_always: false,
        config_file: None,
        cluster: None,
    })
    .map_err(|error| start_error(&error, args.port))?;
    let url = server.url();
    let result = with_stack(&url, &args, (listen, api_listen), workflows, notify).await;
    server.stop();
    // stdout may be gone (that is one way here); the end is still worth a line if not.
    let _ = outln!("stopped");
    result
}

/// Why nats-server did not start, its own reason first; the `--port` hint only when the
/// port was the problem.
fn start_error(error: &sluice_local_nats::LocalNatsError, port: u16) -> CliError {
    use sluice_local_nats::LocalNatsError;
    match error {
        LocalNatsError::NotReady { fatal: Some(fatal), .. } if sluice_local_nats::is_port_taken(error) => {
            CliError::nats(format!(
                "nats-server cannot listen on 127.0.0.1:{port}: {fatal} (another server has the port: give this one another with --port)"
            ))
        }
        LocalNatsError::NotReady { fatal: Some(fatal), .. } => {
            CliError::nats(format!("nats-server cannot start on 127.0.0.1:{port}: {fatal}"))
        }
        other => CliError::nats(format!("starting nats-server on 127.0.0.1:{port}: {other}")),
    }
}

/// Runs the coordinator and the worker against the server at `url`, submits and follows
/// the workflows, and stops both however that ended (an error, a closed stdout, Ctrl-C).
async fn with_stack(
    url: &str,
    args: &DevArgs,
    (listen, api_listen): (std::net::SocketAddr, std::net::SocketAddr),
    workflows: Vec<(sluice_proto::WorkflowSpec, String)>,
    notify: std::sync::Arc<sluice_coordinator::notify::NotifySettings>,
) -> Result<ExitCode, CliError> {
    outln!("nats-server   {url}  (data in {})", args.data_dir.display())?;
    let client = crate::output::connect(url).await?;
    let js = jetstream::new(client.clone());
    sluice_coordinator::topology::ensure(&js).await?;
    let shutdown = on_signal();
    let mut registry = prometheus_client::registry::Registry::default();
    // Traces like production when OTEL_EXPORTER_OTLP_ENDPOINT (or …_TRACES_ENDPOINT) is set.
    let exporting = super::serve::exporter("sluice-dev", &mut registry)?;
    let mut metrics = sluice_coordinator::metrics::Metrics::register(&mut registry);
    let mut worker_metrics = sluice_worker::metrics::Metrics::register(&mut registry);
    let http_metrics = sluice_server::metrics::HttpMetrics::register(&mut registry);
    if let Some((sink, _)) = &exporting {
        outln!("traces        exported over OTLP/HTTP (OTEL_* variables)")?;
        metrics = metrics.with_spans(sink.clone(), sluice_coordinator::spans::CHILD_SPANS_PER_PARENT_DEFAULT);
        worker_metrics = worker_metrics.with_spans(sink.clone());
    }
    let settings = sluice_coordinator::service::Settings { metrics, notify, ..Default::default() };
    let (phase, watched) = tokio::sync::watch::channel(sluice_coordinator::service::Phase::Starting);
    let probes =
        crate::health::Probes::new(std::sync::Arc::new(move || super::serve::probed(*watched.borrow())), registry);
    let _ = probes.nats.set(client.clone());
    let stop_listening = tokio_util::sync::CancellationToken::new();
    let _listening = stop_listening.clone().drop_guard();
    match crate::health::serve(listen, probes, stop_listening.clone()).await {
        Ok(bound) => outln!("metrics       http://{bound}/metrics")?,
        Err(error) if args.metrics_listen.is_none() => {
            outln!("metrics       not served: {} (choose an address with --metrics-listen)", error.message)?
        }
        Err(error) => return Err(error),
    }
    match super::server::spawn_local(api_listen, js.clone(), http_metrics, stop_listening.clone()).await {
        Ok(bound) => {
            outln!("ui            http://{bound}/")?;
            outln!("api           http://{bound}/api/v1")?
        }
        Err(error) if args.api_listen.is_none() => {
            outln!("api           not served: {} (choose an address with --api-listen)", error.message)?
        }
        Err(error) => return Err(error),
    }
    let coordinator =
        tokio::spawn(sluice_coordinator::service::run_observed(client.clone(), settings, shutdown.clone(), phase));
    let mut config = WorkerConfig::new(sluice_proto::spec::DEFAULT_POOL);
    config.concurrency = args.concurrency;
    config.prefetch = sluice_worker::runtime::default_prefetch(args.concurrency);
    config.shutdown_grace = Some(Duration::from_secs(5));
    let control = sluice_worker::runtime::Control {
        metrics: worker_metrics,
        ..sluice_worker::runtime::Control::new(shutdown.clone())
    };
    let worker = tokio::spawn(sluice_worker::runtime::run_observed(
        client.clone(),
        Registry::with_stock_kinds(),
        config,
        control,
    ));
    let result = session(&js, url, args, workflows, &shutdown).await;
    shutdown.cancel();
    let _ = outln!("stopping…");
    let _ = worker.await;
    let _ = coordinator.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    result
}

/// What `dev` does once the stack is up: declare pools, submit, follow, then wait for
/// Ctrl-C (unless `--exit-when-done`).
async fn session(
    js: &jetstream::Context,
    url: &str,
    args: &DevArgs,
    workflows: Vec<(sluice_proto::WorkflowSpec, String)>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<ExitCode, CliError> {
    outln!(
        "coordinator   running\nworker        pool default, {} slots, kinds exec noop sleep fail\n",
        args.concurrency
    )?;

    // `dev` declares the pools its workflows name (elsewhere that is `sluice pool apply`).
    let pools: std::collections::BTreeSet<String> =
        workflows.iter().flat_map(|(spec, _)| spec.jobs.values().map(|job| spec.pool_of(job))).collect();
    for pool in pools.into_iter().filter(|pool| pool != sluice_proto::spec::DEFAULT_POOL) {
        let settings = sluice_proto::PoolSettings { name: pool.clone(), ..Default::default() };
        let request = sluice_proto::ControlRequest::new(sluice_proto::ControlAction::PoolApply(settings), None, "");
        crate::output::applied(crate::output::ask(js, request).await?)?;
        if args.worker_commands.is_empty() {
            outln!(
                "declared pool {pool} (no worker of `dev` serves it: start one with `sluice worker --pool {pool}`)"
            )?;
        } else {
            outln!("declared pool {pool}")?;
        }
    }
    // Started once the pools exist (a worker of an undeclared pool refuses to start); stopped
    // when this returns, however it does.
    let _beside = Beside::start(&args.worker_commands, url, &args.data_dir)?;

    let mut ids = Vec::new();
    for ((spec, yaml), file) in workflows.into_iter().zip(&args.files) {
        let window = resolve_window(&spec, None)?;
        let id = publish(js, yaml, window, Default::default(), None).await?.run_id;
        outln!("submitted {} as run {id} (window {window})", file.display())?;
        ids.push(id);
    }
    let mut all_succeeded = true;
    if !ids.is_empty() {
        let outcome = tokio::select! {
            outcome = follow(js, &ids, Format::Human) => Some(outcome?),
            _ = shutdown.cancelled() => None,
        };
        for finished in outcome.iter().flatten() {
            all_succeeded &= finished.succeeded();
            match finished {
                Finished::Run(view) => outln!("\n{}", view_text(view))?,
                Finished::Rejected(id, rejection) => outln!("\nrun {id} was rejected: {}", rejection.reason)?,
            }
        }
    }
    if !args.exit_when_done && !shutdown.is_cancelled() {
        outln!(
            "\nThe stack stays up. In another terminal:\n  export SLUICE_NATS_URL={url}\n  ./target/debug/sluice runs\n  ./target/debug/sluice submit examples/workflows/etl-daily.yaml --window 2024-03-01 --wait\n  ./target/debug/sluice logs RUN_ID --follow\nCtrl-C stops everything."
        )?;
        shutdown.cancelled().await;
    }
    Ok(if all_succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The `--worker-command` processes, each in its own process group, stopped (SIGTERM to the
/// group, then SIGKILL after [`BESIDE_STOP_GRACE`]) when dropped.
struct Beside {
    children: Vec<(String, std::process::Child)>,
}

/// How long a `--worker-command` may take to drain after SIGTERM.
const BESIDE_STOP_GRACE: Duration = Duration::from_secs(10);

impl Beside {
    fn start(commands: &[String], url: &str, data_dir: &Path) -> Result<Self, CliError> {
        let mut beside = Self { children: Vec::new() };
        for (index, command) in commands.iter().enumerate() {
            let log_path = data_dir.with_file_name(format!("worker-command-{}.log", index + 1));
            let log = std::fs::File::create(&log_path)
                .map_err(|error| CliError::failed(format!("cannot write {}: {error}", log_path.display())))?;
            let err = log.try_clone().map_err(|error| CliError::failed(format!("{}: {error}", log_path.display())))?;
            let child = std::process::Command::new("sh")
                .args(["-c", command])
                .env(sluice_client::connect::flags::URL_ENV, url)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(|error| CliError::failed(format!("cannot start --worker-command `{command}`: {error}")))?;
            outln!("started       `{command}` (pid {}, output in {})", child.id(), log_path.display())?;
            beside.children.push((command.clone(), child));
        }
        Ok(beside)
    }
}

impl Drop for Beside {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        for (_, child) in &self.children {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
        let deadline = std::time::Instant::now() + BESIDE_STOP_GRACE;
        for (command, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                    Ok(None) => {
                        errln(format_args!(
                            "--worker-command `{command}` did not stop within {BESIDE_STOP_GRACE:?}: killed"
                        ));
                        if let Ok(pid) = i32::try_from(child.id()) {
                            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                        }
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// `LOCK_FILE` in the data directory, locked (flock) while this `dev` runs; it holds the
/// pid for the message another `dev` gives. The lock goes with the process, however it
/// ends, so a crashed `dev` leaves nothing to clean up.
struct DataDirLock {
    _file: std::fs::File,
}

const LOCK_FILE: &str = "sluice-dev.lock";

impl DataDirLock {
    fn take(dir: &Path) -> Result<Self, CliError> {
        let cannot = |error: std::io::Error| CliError::failed(format!("cannot lock {}: {error}", dir.display()));
        std::fs::create_dir_all(dir).map_err(cannot)?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let by = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("another `sluice dev` (pid {pid})"),
                    Err(_) => "another `sluice dev`".to_owned(),
                };
                return Err(CliError::usage(format!(
                    "the data directory {} is in use by {by}: stop it, or give this one its own --data-dir (and --port)",
                    dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(cannot(error)),
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(cannot)?;
        Ok(Self { _file: file })
    }
}
