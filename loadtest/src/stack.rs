//! A private stack for one measurement: a fresh nats-server (file storage) unless one is
//! given, and the real `sluice coordinator` and `sluice worker` binaries as processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use sluice_local_nats::NatsServer;

/// CPU time and peak memory of one process, read from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Reads a process's CPU seconds (user + system) and peak RSS.
pub fn usage(pid: u32) -> Usage {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu_seconds = (field(11) + field(12)) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_bytes = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    Usage { cpu_seconds, peak_rss_bytes }
}

/// A nats-server for one measurement.
pub enum Server {
    Own(NatsServer),
    External(String),
}

impl Server {
    pub fn start(external: Option<&str>) -> Result<Self> {
        match external {
            Some(url) => Ok(Self::External(url.to_owned())),
            None => Ok(Self::Own(NatsServer::start_temporary().context("starting nats-server (make tools)")?)),
        }
    }

    /// The server's CPU and memory so far (none for a server this tool did not start).
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Self::Own(server) => server.pid().map(usage),
            Self::External(_) => None,
        }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Own(server) => server.url(),
            Self::External(url) => url.clone(),
        }
    }
}

/// Coordinator and workers as separate processes.
pub struct Processes {
    pub coordinator: Child,
    pub workers: Vec<Child>,
    _logs: tempfile::TempDir,
}

impl Processes {
    pub fn start(sluice: &Path, url: &str, workers: usize, concurrency: usize) -> Result<Self> {
        let logs = tempfile::tempdir()?;
        let spawn = |name: &str, args: &[&str]| -> Result<Child> {
            let log = std::fs::File::create(logs.path().join(format!("{name}.log")))?;
            Command::new(sluice)
                .args(args)
                .env("SLUICE_NATS_URL", url)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {} {name}", sluice.display()))
        };
        let coordinator = spawn("coordinator", &["coordinator"])?;
        let concurrency = concurrency.to_string();
        let workers = (0..workers)
            .map(|index| spawn(&format!("worker-{index}"), &["worker", "--concurrency", &concurrency]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { coordinator, workers, _logs: logs })
    }

    pub fn coordinator_usage(&self) -> Usage {
        usage(self.coordinator.id())
    }

    /// CPU summed over workers; peak RSS the largest.
    pub fn workers_usage(&self) -> Usage {
        self.workers.iter().map(|worker| usage(worker.id())).fold(Usage::default(), |sum, one| Usage {
            cpu_seconds: sum.cpu_seconds + one.cpu_seconds,
            peak_rss_bytes: sum.peak_rss_bytes.max(one.peak_rss_bytes),
        })
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.workers.iter_mut().chain(std::iter::once(&mut self.coordinator)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the coordinator has set Sluice up (streams, buckets, the pool `default` and
/// its consumer) and `workers` workers of `default` have announced themselves.
pub async fn wait_ready(js: &async_nats::jetstream::Context, workers: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = match js.get_stream(sluice_proto::names::JOBS_STREAM).await {
            Ok(stream) => {
                stream.consumer_info(sluice_proto::names::pool_consumer("default")).await.is_ok()
                    && js.get_key_value(sluice_proto::names::RUNS_BUCKET).await.is_ok()
                    && live_workers(js).await >= workers
            }
            Err(_) => false,
        };
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the coordinator and {workers} workers did not start within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The workers of pool `default` in the registry (0 while it cannot be read).
async fn live_workers(js: &async_nats::jetstream::Context) -> usize {
    let Ok(bucket) = js.get_key_value(sluice_proto::names::WORKERS_BUCKET).await else { return 0 };
    let Ok(keys) = bucket.keys().await else { return 0 };
    let keys: Vec<String> = keys.try_collect().await.unwrap_or_default();
    keys.iter().filter(|key| key.starts_with("default.")).count()
}

/// The `sluice` binary: `--sluice`, else next to this one.
pub fn find_sluice(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("sluice"),
    };
    if !path.exists() {
        bail!("no sluice binary at {} (build it: cargo build --release -p sluice, or pass --sluice)", path.display());
    }
    Ok(path)
}
