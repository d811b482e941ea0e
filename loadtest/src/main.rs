//! sluice-loadtest: Sluice's throughput, latency and memory against the raw JetStream floor,
//! measured in one run on the same server settings.
//!
//!     sluice-loadtest [--quick] [--nats-url URL [--nats-creds FILE | --nats-nkey FILE]
//!                     [--nats-inbox-prefix PREFIX]] [--sluice PATH] [--out bench/results.json]
//!                     [--doc docs/performance.md]
//!
//! Each baseline (B1–B3, async-nats directly on persistent pulls) and each workload (W1,
//! W2-static, W2-spawned, W3–W6: the real `sluice coordinator` and `sluice worker`
//! processes) runs on a fresh nats-server with file storage, unless `--nats-url` names one.
//! Workloads are timed from right before the submission's publish to a KV watch seeing the
//! run's end, and every job is then verified from its record; the results open with
//! issue 14's targets, judged against the baselines of the same invocation.
//! docs/performance.md says what each measures and how.

mod baseline;
mod listing;
mod pages;
mod report;
mod select;
mod workloads;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

use sluice_testkit::{Server, Stack, Usage, wait};

use crate::report::{Row, Suite};

#[derive(Parser)]
#[command(name = "sluice-loadtest", about = "Sluice against the raw JetStream floor, in one run")]
struct Args {
    /// The same suite, small enough for a CI smoke test.
    #[arg(long)]
    quick: bool,
    /// Use this nats-server instead of starting fresh ones (its streams are shared).
    #[arg(long)]
    nats_url: Option<String>,
    /// Credentials for `--nats-url` (a `.creds` file), for this tool and every process it
    /// starts: an identity allowed what the coordinator and the workers do.
    #[arg(long, env = "SLUICE_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// An nkey seed file for `--nats-url`, as `--nats-creds`.
    #[arg(long, env = "SLUICE_NATS_NKEY", value_name = "FILE")]
    nats_nkey: Option<PathBuf>,
    /// The inbox prefix of this tool and every process it starts (one the identity may
    /// subscribe to).
    #[arg(long, env = "SLUICE_NATS_INBOX_PREFIX", value_name = "PREFIX")]
    nats_inbox_prefix: Option<String>,
    /// The `sluice` binary (default: next to this one).
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
    /// Markdown file whose results section is rewritten (docs/performance.md).
    #[arg(long)]
    doc: Option<PathBuf>,
    /// Only these workloads (e.g. `--only W1,W4`); the baselines always run.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// When the nats-servers this tool starts flush JetStream writes to disk: `default`
    /// (every two minutes; an acknowledged write can be lost in a power failure) or
    /// `always` (before acknowledging each one), so the cost of `always` can be measured.
    #[arg(long, value_enum, default_value_t = SyncInterval::Default)]
    sync_interval: SyncInterval,
    /// The Python with the SDK installed, for W1-py's Python worker (default: the project's
    /// venv, which `bash scripts/install-tools.sh` makes).
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,
}

/// `--sync-interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum SyncInterval {
    Default,
    Always,
}

impl SyncInterval {
    fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Always => "always",
        }
    }
}

impl Args {
    /// The connection options of `--nats-url` with its credentials (`None`: a fresh server
    /// of this tool's, no authentication).
    fn nats_options(&self) -> Option<sluice_client::NatsOptions> {
        let url = self.nats_url.clone()?;
        Some(sluice_client::NatsOptions {
            creds_file: self.nats_creds.clone(),
            nkey_file: self.nats_nkey.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
            ..sluice_client::NatsOptions::new(url)
        })
    }

    /// The options of every nats-server this tool starts.
    fn server_options(&self) -> sluice_testkit::local_nats::Options {
        let options = sluice_testkit::local_nats::Options::default();
        if self.sync_interval == SyncInterval::Always { options.sync_always() } else { options }
    }

    /// A stack on a fresh server with [`Self::server_options`], or on `--nats-url`'s with its
    /// credentials (passed on to every process).
    fn stack(&self, sluice: &std::path::Path) -> Result<Stack> {
        self.stack_with(sluice, None)
    }

    /// [`Self::stack`], its processes exporting spans to `otlp` (an OTLP/HTTP base URL).
    fn stack_with(&self, sluice: &std::path::Path, otlp: Option<String>) -> Result<Stack> {
        let mut builder = Stack::builder(sluice).nats_url(self.nats_url.clone()).log_filter("warn");
        if let Some(endpoint) = otlp {
            builder = builder.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        }
        if self.sync_interval == SyncInterval::Always {
            builder = builder.sync_always();
        }
        if let Some(options) = self.nats_options() {
            for (var, value) in [
                (
                    sluice_client::connect::flags::CREDS_ENV,
                    options.creds_file.as_ref().map(|p| p.display().to_string()),
                ),
                (sluice_client::connect::flags::NKEY_ENV, options.nkey_file.as_ref().map(|p| p.display().to_string())),
                (sluice_client::connect::flags::INBOX_PREFIX_ENV, options.inbox_prefix.clone()),
            ] {
                if let Some(value) = value {
                    builder = builder.env(var, value);
                }
            }
            builder = builder.client_options(options);
        }
        builder.start()
    }
}

/// How big each measurement is.
struct Sizes {
    b1: usize,
    b2: usize,
    b3: usize,
    w1: usize,
    w2: usize,
    w3: usize,
    w4: usize,
    w5_runs: usize,
    /// W6: runs in the store at the first and the second measurement.
    w6: (usize, usize),
    w7_children: usize,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                b1: 2_000,
                b2: 200,
                b3: 50,
                w1: 2_000,
                w2: 200,
                w3: 50,
                w4: 5_000,
                w5_runs: 10,
                w6: (500, 1_500),
                w7_children: 1_000,
            }
        } else {
            Self {
                b1: 20_000,
                b2: 2_000,
                b3: 200,
                w1: 20_000,
                w2: 2_000,
                w3: 200,
                w4: 100_000,
                w5_runs: 50,
                w6: (1_000, 100_000),
                w7_children: 10_000,
            }
        }
    }
}

/// Worker slots in total, for every workload (W1 asks for four).
const SLOTS: usize = 4;

/// W1-py's pool, job kind and the directory of the module defining it.
const PYTHON_POOL: &str = "py";
const PYTHON_NOOP: &str = "py-noop";
const PYTHON_JOBS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/py");
const PYTHON_JOBS_MODULE: &str = "loadtest_jobs";

/// Who works a workload's jobs: `sluice worker`, or the Python SDK's worker on
/// [`PYTHON_POOL`] (the same slots).
#[derive(Clone, Copy)]
enum Workers<'a> {
    Rust,
    /// `sluice worker`, every process exporting spans and serving `/metrics` (W1-traced).
    Traced(&'a Traced),
    Python(&'a std::path::Path),
}

/// W1-traced's pairs of runs (untraced, traced), whose median ratio is reported.
const TRACED_PAIRS: usize = 3;

/// W1-traced's telemetry: an OTLP/HTTP receiver on loopback (answering 200 to every
/// export) and the ports the coordinator and the worker serve `/metrics` on.
struct Traced {
    receiver: sluice_testkit::http::Receiver,
    coordinator_port: u16,
    worker_port: u16,
}

/// Spans the processes of a workload exported and dropped (their own counters).
struct Spans {
    exported: f64,
    dropped: f64,
}

/// How long the exporters may take to send what was queued when the run ended (they send
/// every second).
const SPANS_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Traced {
    fn start() -> Result<Self> {
        let receiver = sluice_testkit::http::Receiver::start(|_, _| sluice_testkit::http::Reply::status(200))?;
        Ok(Self { receiver, coordinator_port: free_port()?, worker_port: free_port()? })
    }

    /// Waits until the coordinator has exported or dropped `coordinator` spans and the
    /// worker `worker` (they export from a queue, after the run's end), reading their
    /// `/metrics`; then the totals.
    async fn flushed(&self, coordinator: usize, worker: usize) -> Result<Spans> {
        let deadline = std::time::Instant::now() + SPANS_FLUSH_TIMEOUT;
        loop {
            let (c_exported, c_dropped) = span_counts(self.coordinator_port)?;
            let (w_exported, w_dropped) = span_counts(self.worker_port)?;
            let done = c_exported + c_dropped >= coordinator as f64 && w_exported + w_dropped >= worker as f64;
            if done || std::time::Instant::now() >= deadline {
                if !done {
                    println!("W1-traced: not every span was exported within {SPANS_FLUSH_TIMEOUT:?}");
                }
                return Ok(Spans { exported: c_exported + w_exported, dropped: c_dropped + w_dropped });
            }
            // The exporters' counters are the only signal of a sent batch: looked at again.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// A loopback port free now (the OS's choice), for a process's `--metrics-listen`.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `sluice_spans_exported_total` and `sluice_span_export_dropped_total` of the process
/// serving `/metrics` on `port`.
fn span_counts(port: u16) -> Result<(f64, f64)> {
    let (status, body) = sluice_testkit::monitoring::get(port, "/metrics")?;
    anyhow::ensure!(status == 200, "GET /metrics on port {port}: status {status}");
    let sample = |name: &str| {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((sample("sluice_spans_exported_total"), sample("sluice_span_export_dropped_total")))
}

/// Jobs in one W5 run (workloads::etl).
const W5_JOBS: usize = 20;

/// How long the coordinator and the worker of a workload may take to start.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.nats_url.is_some() && args.sync_interval != SyncInterval::Default {
        anyhow::bail!(
            "--sync-interval sets the nats-servers this tool starts; with --nats-url, set it in that server's configuration"
        );
    }
    let chosen = select::selected(&args.only).map_err(anyhow::Error::msg)?;
    let wants = |id: &str| chosen.contains(id);
    let sluice = sluice_testkit::find_sluice(args.sluice.clone())?;
    let sizes = Sizes::new(args.quick);
    let mut suite = Suite::new(args.quick, &sluice, args.sync_interval.as_str());

    let (n1, n2, n3) = (sizes.b1, sizes.b2, sizes.b3);
    let (b1, b1_server_cpu) = on_fresh_server(&args, move |js| async move { baseline::b1(&js, n1).await }).await?;
    suite.push(Row::new("B1", "throughput", b1, "messages/s"));
    if let Some(cpu) = b1_server_cpu {
        suite.push(Row::new("B1", "nats-server CPU per 1,000 messages", cpu / n1 as f64 * 1000.0, "s"));
    }
    let (b2, _) = on_fresh_server(&args, move |js| async move { baseline::b2(&js, n2).await }).await?;
    suite.push(Row::new("B2", "wall time", b2, "s"));
    let (b3, b3_server_cpu) = on_fresh_server(&args, move |js| async move { baseline::b3(&js, n3).await }).await?;
    suite.push(Row::new("B3", "time per step", b3 * 1e3, "ms"));
    if let Some(cpu) = b3_server_cpu {
        suite.push(Row::new("B3", "nats-server CPU per 1,000 steps", cpu / n3 as f64 * 1000.0, "s"));
    }
    println!("baselines: B1 {b1:.0} msg/s, B2 {b2:.3} s, B3 {:.3} ms/step", b3 * 1e3);

    if wants("W1") {
        let w1 = measure_one_run(&args, &sluice, "W1", workloads::independent(sizes.w1), sizes.w1, true, Workers::Rust)
            .await?;
        let run = &w1.runs[0];
        let w1_rate = sizes.w1 as f64 / run.seconds;
        suite.push(Row::new("W1", "throughput", w1_rate, "jobs/s").against(b1, w1_rate / b1));
        suite.push(Row::new("W1", "wall time", run.seconds, "s"));
        suite.push(Row::new("W1", "run record created → finished", workloads::record_seconds(&run.record), "s"));
        if let Some(intake) = run.intake {
            suite.push(Row::new("intake", "first job dispatched", intake * 1e3, "ms"));
        }
        suite.extend(w1.rows("W1", sizes.w1));
    }

    if wants("W1-traced") {
        // Pairs of runs, plain then traced, each on a fresh stack; their median ratio is the
        // cost (one pair of 2-second runs on a small machine swings by more than 10%).
        let pairs = if args.quick { 1 } else { TRACED_PAIRS };
        let (mut plain_rates, mut traced_rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut exported, mut dropped, mut requests) = (0.0, 0.0, 0);
        let mut last = None;
        for _ in 0..pairs {
            let yaml = workloads::independent(sizes.w1);
            let plain = measure_one_run(&args, &sluice, "W1", yaml.clone(), sizes.w1, false, Workers::Rust).await?;
            let traced = Traced::start()?;
            let run =
                measure_one_run(&args, &sluice, "W1-traced", yaml, sizes.w1, false, Workers::Traced(&traced)).await?;
            let (plain_rate, traced_rate) =
                (sizes.w1 as f64 / plain.runs[0].seconds, sizes.w1 as f64 / run.runs[0].seconds);
            println!("W1-traced: {traced_rate:.0} jobs/s beside {plain_rate:.0} untraced");
            plain_rates.push(plain_rate);
            traced_rates.push(traced_rate);
            ratios.push(traced_rate / plain_rate);
            if let Some(spans) = &run.spans {
                (exported, dropped) = (exported + spans.exported, dropped + spans.dropped);
            }
            requests += traced.receiver.requests().len();
            last = Some(run);
        }
        let median = |values: &mut Vec<f64>| workloads::quantile(values, 0.5);
        let (plain, traced, ratio) = (median(&mut plain_rates), median(&mut traced_rates), median(&mut ratios));
        suite.push(Row::new("W1-traced", "throughput", traced, "jobs/s").against(plain, ratio));
        suite.push(Row::new("W1-traced", "spans exported", exported, "spans"));
        suite.push(Row::new("W1-traced", "spans dropped", dropped, "spans"));
        suite.push(Row::new("W1-traced", "OTLP requests received", requests as f64, "requests"));
        if let Some(run) = last {
            suite.extend(run.rows("W1-traced", sizes.w1));
        }
    }

    if wants("W1-py") {
        let python = match &args.python {
            Some(python) => python.clone(),
            None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/venv/bin/python")),
        };
        anyhow::ensure!(
            python.is_file(),
            "W1-py: no Python at {} (run `bash scripts/install-tools.sh`, or give --python)",
            python.display()
        );
        let yaml = workloads::independent_on(sizes.w1, PYTHON_NOOP, PYTHON_POOL);
        let w1 = measure_one_run(&args, &sluice, "W1-py", yaml, sizes.w1, false, Workers::Python(&python)).await?;
        let rate = sizes.w1 as f64 / w1.runs[0].seconds;
        suite.push(Row::new("W1-py", "throughput", rate, "jobs/s").against(b1, rate / b1));
        if let Some(rust) = suite.value("W1", "throughput") {
            suite.push(
                Row::new("W1-py", "throughput beside the Rust worker's", rate, "jobs/s").against(rust, rate / rust),
            );
        }
        suite.push(Row::new("W1-py", "wall time", w1.runs[0].seconds, "s"));
        suite.extend(w1.rows("W1-py", sizes.w1));
    }

    for (id, yaml) in [
        ("W2-static", workloads::static_fan_out(sizes.w2)),
        ("W2-spawned", workloads::fan_out("w2-spawned", sizes.w2, true)),
    ] {
        if wants(id) {
            // Root, the fan-out, the join.
            let jobs = sizes.w2 + 2;
            let w2 = measure_one_run(&args, &sluice, id, yaml, jobs, false, Workers::Rust).await?;
            let wall = w2.runs[0].seconds;
            suite.push(Row::new(id, "wall time", wall, "s").against(b2, wall / b2));
            suite.push(Row::new(
                id,
                "run record created → finished",
                workloads::record_seconds(&w2.runs[0].record),
                "s",
            ));
            suite.extend(w2.rows(id, jobs));
        }
    }

    if wants("W3") {
        let w3 =
            measure_one_run(&args, &sluice, "W3", workloads::chain(sizes.w3), sizes.w3, false, Workers::Rust).await?;
        let step = w3.runs[0].seconds / sizes.w3 as f64;
        suite.push(Row::new("W3", "time per step", step * 1e3, "ms").against(b3 * 1e3, step / b3));
        let record_step = workloads::record_seconds(&w3.runs[0].record) / sizes.w3 as f64;
        suite.push(Row::new("W3", "run record created → finished, per step", record_step * 1e3, "ms"));
        suite.extend(w3.rows("W3", sizes.w3));
    }

    if wants("W4") {
        let jobs = sizes.w4 + 1;
        let w4 = measure_one_run(
            &args,
            &sluice,
            "W4",
            workloads::fan_out("w4", sizes.w4, false),
            jobs,
            false,
            Workers::Rust,
        )
        .await?;
        suite.push(Row::new("W4", "wall time", w4.runs[0].seconds, "s"));
        let per_child =
            w4.coordinator.peak_rss_bytes.saturating_sub(w4.coordinator_rss_at_start) as f64 / sizes.w4 as f64;
        suite.push(Row::new("W4", "coordinator bytes per child", per_child, "B"));
        suite.extend(w4.rows("W4", jobs));
    }

    if wants("W5") {
        let runs = sizes.w5_runs;
        let yaml = workloads::etl();
        let w5 = measure(&args, &sluice, "W5", W5_JOBS, true, Workers::Rust, |js| async move {
            workloads::runs_timed(&js, &yaml, runs).await
        })
        .await?;
        // From the first submission's publish to the last run's end.
        let first = w5.runs.iter().map(|run| run.started).min().context("no W5 runs")?;
        let last = w5.runs.iter().map(|run| run.ended).max().context("no W5 runs")?;
        let span = last.saturating_duration_since(first).as_secs_f64();
        suite.push(Row::new("W5", "runs per second", runs as f64 / span, "runs/s"));
        let jobs_rate = (runs * W5_JOBS) as f64 / span;
        suite.push(Row::new("W5", "throughput", jobs_rate, "jobs/s").against(b1, jobs_rate / b1));
        let mut latencies: Vec<f64> = w5.runs.iter().map(|run| run.seconds).collect();
        suite.push(Row::new("W5", "run latency p50", workloads::quantile(&mut latencies, 0.5), "s"));
        suite.push(Row::new("W5", "run latency p99", workloads::quantile(&mut latencies, 0.99), "s"));
        suite.extend(w5.rows("W5", runs * W5_JOBS));
    }

    // W7 asks the server for pages of W6's store: it runs W6 too.
    if wants("W6") || wants("W7") {
        let (small, large) = sizes.w6;
        let mut stack = args.stack(&sluice)?;
        let coordinator = stack.coordinator();
        stack.worker(&["--concurrency", &SLOTS.to_string()]);
        let js = stack.connect().await?;
        wait::workers(&js, "default", 1, READY_TIMEOUT).await?;
        let started = std::time::Instant::now();
        let w6 = listing::w6(&js, small, large).await.context("workload W6")?;
        println!("W6: {:.1} s", started.elapsed().as_secs_f64());
        for (metric, at_small, at_large) in [
            ("newest 50 p95", w6.small.newest, w6.large.newest),
            ("workflow's newest 50 p95", w6.small.workflow_newest, w6.large.workflow_newest),
            ("window range p95", w6.small.window_range, w6.large.window_range),
        ] {
            suite.push(Row::new("W6", metric, at_large * 1e3, "ms").against(at_small * 1e3, at_large / at_small));
        }
        suite.push(
            Row::new("W6", "runs in the store", large as f64, "runs")
                .against(small as f64, large as f64 / small as f64),
        );
        suite.push(Row::new("W6", "seeding rate", w6.seed_rate, "runs/s"));
        let usage = stack.usage(coordinator);
        suite.push(Row::new("W6", "coordinator peak RSS", usage.peak_rss_bytes as f64 / 1048576.0, "MiB"));
        if wants("W7") {
            let fan_out = workloads::run_timed(&js, &workloads::fan_out("w7", sizes.w7_children, false), false)
                .await
                .context("W7's fan-out run")?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let address = format!("127.0.0.1:{port}");
            stack.spawn("server", &["server", "--listen", &address], &[]);
            // Nothing signals a listener: look until it accepts, bounded.
            let deadline = std::time::Instant::now() + pages::LISTEN_TIMEOUT;
            while std::net::TcpStream::connect(&address).is_err() {
                anyhow::ensure!(std::time::Instant::now() < deadline, "sluice server did not listen on {address}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let w7 = pages::w7(&address, pages::paths(&fan_out.record.id.to_string(), "w6-0")).await?;
            for (metric, p95) in w7.rows {
                suite.push(Row::new("W7", metric, p95 * 1e3, "ms"));
            }
            suite.push(Row::new("W7", "children of the big run", sizes.w7_children as f64, "jobs"));
        }
    }

    suite.write(&args.out, args.doc.as_deref())?;
    println!("{}", suite.targets_table());
    println!("{}", suite.table());
    println!("results: {}", args.out.display());
    Ok(())
}

/// Connects to `url` as this tool does (with `--nats-url`'s credentials, if given).
async fn connect(args: &Args, url: &str) -> Result<async_nats::Client> {
    Ok(match args.nats_options() {
        Some(options) => options.connect_options("sluice-loadtest")?.connect(url).await?,
        None => async_nats::connect(url).await?,
    })
}

/// Runs a baseline on a fresh server (or the given one), with a publishing and a
/// consuming connection; returns its figure and the server's CPU seconds spent on it (when
/// this tool started the server).
async fn on_fresh_server<F, Fut>(args: &Args, baseline: F) -> Result<(f64, Option<f64>)>
where
    F: FnOnce(baseline::Connections) -> Fut,
    Fut: std::future::Future<Output = Result<f64>>,
{
    let server = Server::start_with(args.nats_url.as_deref(), args.server_options())?;
    let connections = baseline::Connections {
        publisher: async_nats::jetstream::new(connect(args, &server.url()).await?),
        consumer: async_nats::jetstream::new(connect(args, &server.url()).await?),
    };
    let before = server.usage();
    let value = baseline(connections).await?;
    let cpu = server.usage().zip(before).map(|(after, before)| after.cpu_seconds - before.cpu_seconds);
    drop(server);
    Ok((value, cpu))
}

/// What one workload measured.
struct Measured {
    runs: Vec<workloads::Timed>,
    coordinator: Usage,
    coordinator_cpu_at_start: f64,
    coordinator_rss_at_start: u64,
    workers: Usage,
    workers_cpu_at_start: f64,
    /// The nats-server's CPU seconds during the workload (when this tool started it).
    server_cpu: Option<f64>,
    latencies: Vec<f64>,
    /// W1-traced: the spans the processes exported and dropped.
    spans: Option<Spans>,
}

impl Measured {
    /// The rows every workload reports: dispatch latency, CPU per 1,000 jobs, peak RSS.
    fn rows(&self, workload: &str, jobs: usize) -> Vec<Row> {
        let mut latencies = self.latencies.clone();
        let per_thousand = |cpu: f64| cpu / jobs as f64 * 1000.0;
        let mut rows = Vec::new();
        if !latencies.is_empty() {
            rows.push(Row::new(workload, "dispatch latency p50", workloads::quantile(&mut latencies, 0.5) * 1e3, "ms"));
            rows.push(Row::new(
                workload,
                "dispatch latency p99",
                workloads::quantile(&mut latencies, 0.99) * 1e3,
                "ms",
            ));
        }
        rows.push(Row::new(
            workload,
            "coordinator CPU per 1,000 jobs",
            per_thousand(self.coordinator.cpu_seconds - self.coordinator_cpu_at_start),
            "s",
        ));
        rows.push(Row::new(
            workload,
            "worker CPU per 1,000 jobs",
            per_thousand(self.workers.cpu_seconds - self.workers_cpu_at_start),
            "s",
        ));
        if let Some(cpu) = self.server_cpu {
            rows.push(Row::new(workload, "nats-server CPU per 1,000 jobs", per_thousand(cpu), "s"));
        }
        rows.push(Row::new(
            workload,
            "coordinator peak RSS",
            self.coordinator.peak_rss_bytes as f64 / 1048576.0,
            "MiB",
        ));
        rows.push(Row::new(workload, "worker peak RSS", self.workers.peak_rss_bytes as f64 / 1048576.0, "MiB"));
        rows
    }
}

/// [`measure`] for a workload that is one run of `yaml` with `jobs` jobs (children
/// included) on `workers`; `intake`: also time the first dispatch.
async fn measure_one_run(
    args: &Args,
    sluice: &std::path::Path,
    name: &str,
    yaml: String,
    jobs: usize,
    intake: bool,
    workers: Workers<'_>,
) -> Result<Measured> {
    // W1's jobs need nothing and W4's 100,000 children wait for slots, so only the others
    // say something with dispatch latencies.
    let latencies = !matches!(name, "W1" | "W1-py" | "W4");
    measure(args, sluice, name, jobs, latencies, workers, |js| async move {
        Ok(vec![workloads::run_timed(&js, &yaml, intake).await?])
    })
    .await
}

/// Runs one workload on a fresh stack: `work` submits and times its runs; CPU and memory
/// are read from /proc around it. Afterwards (untimed) every run's job records are read
/// and checked (`jobs` per run, all completed), and with `latencies` the dispatch
/// latencies are taken from them.
async fn measure<F, Fut>(
    args: &Args,
    sluice: &std::path::Path,
    name: &str,
    jobs: usize,
    latencies: bool,
    workers: Workers<'_>,
    work: F,
) -> Result<Measured>
where
    F: FnOnce(async_nats::jetstream::Context) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<workloads::Timed>>>,
{
    let traced = match workers {
        Workers::Traced(traced) => Some(traced),
        Workers::Rust | Workers::Python(_) => None,
    };
    let mut stack = args.stack_with(sluice, traced.map(|traced| traced.receiver.url("")))?;
    let listen = |port: u16| format!("127.0.0.1:{port}");
    let coordinator_process = match traced {
        Some(traced) => stack.coordinator_with(&["--metrics-listen", &listen(traced.coordinator_port)]),
        None => stack.coordinator(),
    };
    let slots = SLOTS.to_string();
    let (pool, worker_processes) = match workers {
        Workers::Rust | Workers::Traced(_) => {
            let mut extra = vec!["--concurrency".to_owned(), slots.clone()];
            if let Some(traced) = traced {
                extra.extend(["--metrics-listen".to_owned(), listen(traced.worker_port)]);
            }
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            ("default", [stack.worker(&extra)])
        }
        Workers::Python(python) => {
            // A pool exists once declared (a control request the coordinator answers).
            wait::set_up(&stack.connect().await?, READY_TIMEOUT).await?;
            let declared = stack.sluice(&["pool", "apply", PYTHON_POOL]);
            anyhow::ensure!(
                declared.status.success(),
                "declaring pool {PYTHON_POOL}: {}",
                sluice_testkit::text(&declared.stderr)
            );
            let args = ["-m", "sluice", "worker", PYTHON_JOBS_MODULE, "--pool", PYTHON_POOL, "--concurrency", &slots];
            let env = [("PYTHONPATH", PYTHON_JOBS_DIR), ("SLUICE_LOG_LEVEL", "WARNING")];
            (PYTHON_POOL, [stack.spawn_program("python-worker", python, &args, &env)])
        }
    };
    let js = stack.connect().await?;
    // Set up (streams, buckets, the pool and its consumer), and the workers in the registry.
    wait::workers(&js, pool, worker_processes.len(), READY_TIMEOUT).await?;
    let coordinator_at_start = stack.usage(coordinator_process);
    let workers_at_start = stack.usage_of(&worker_processes);
    let server_at_start = stack.nats.usage();
    let started = std::time::Instant::now();
    let runs = work(js.clone()).await.with_context(|| format!("workload {name}"))?;
    let took = started.elapsed();
    let coordinator = stack.usage(coordinator_process);
    let workers = stack.usage_of(&worker_processes);
    let server_cpu =
        stack.nats.usage().zip(server_at_start).map(|(after, before)| after.cpu_seconds - before.cpu_seconds);
    let mut dispatch = Vec::new();
    for run in &runs {
        let records = workloads::verify(&js, &run.record, jobs).await.with_context(|| format!("workload {name}"))?;
        if latencies {
            let yaml = sluice_client::specs::of_run(&js, &run.record).await?;
            dispatch.extend(workloads::dispatch_latencies(&yaml, &records));
        }
    }
    println!("{name}: {:.3} s as submitted, {} runs verified", took.as_secs_f64(), runs.len());
    let spans = match traced {
        // Every run's span, a span per job (the coordinator's) and per attempt (the worker's).
        Some(traced) => Some(traced.flushed(runs.len() + runs.len() * jobs, runs.len() * jobs).await?),
        None => None,
    };
    drop(stack);
    Ok(Measured {
        runs,
        coordinator,
        coordinator_cpu_at_start: coordinator_at_start.cpu_seconds,
        coordinator_rss_at_start: coordinator_at_start.peak_rss_bytes,
        workers,
        workers_cpu_at_start: workers_at_start.cpu_seconds,
        server_cpu,
        latencies: dispatch,
        spans,
    })
}
