//! A nats-server and the `sluice` processes started against it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::str::FromStr;
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sluice_client::Lookup;
use sluice_proto::RunId;

use crate::server::Server;
use crate::usage::{Usage, usage};
use crate::wait;

/// Longest any one `sluice` command run by [`Stack::sluice`] may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

/// How often [`Stack::wait_exit`] looks: a child's exit has no signal we can wait on with
/// a deadline (SIGCHLD belongs to the whole test process).
const EXIT_POLL: Duration = Duration::from_millis(20);

/// The `RUST_LOG` of coordinators and workers unless [`StackBuilder::log_filter`] says.
const DEFAULT_LOG_FILTER: &str = "info,async_nats=warn";

/// Lossy UTF-8 of a command's output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Which nats-server a stack runs against.
enum Nats {
    /// One this stack starts (a temporary store unless the options name one).
    Own(sluice_local_nats::Options),
    External(String),
}

/// How to start a [`Stack`]: [`Stack::builder`].
pub struct StackBuilder {
    sluice: PathBuf,
    nats: Nats,
    env: Vec<(String, String)>,
    log_filter: String,
    current_dir: Option<PathBuf>,
    client: Option<sluice_client::NatsOptions>,
}

impl StackBuilder {
    /// Run nats-server on this existing JetStream store (a fixture's) instead of a
    /// temporary one.
    pub fn store(self, dir: PathBuf) -> Self {
        self.own_server(|options| sluice_local_nats::Options { store_dir: Some(dir), ..options })
    }

    /// A temporary nats-server without JetStream: what a misconfigured server looks like.
    pub fn without_jetstream(self) -> Self {
        self.own_server(|options| sluice_local_nats::Options { without_jetstream: true, ..options })
    }

    /// A nats-server whose JetStream file storage is limited to `bytes` (`max_file_store`):
    /// what a small store looks like.
    pub fn max_file_store(self, bytes: u64) -> Self {
        self.own_server(|options| options.max_file_store(bytes))
    }

    /// Start nats-server with this configuration file (users and permissions, TLS): see
    /// `sluice_local_nats::Options::config_file`.
    pub fn nats_config(self, file: PathBuf) -> Self {
        self.own_server(|options| sluice_local_nats::Options { config_file: Some(file), ..options })
    }

    /// The connection options (credentials, TLS, inbox prefix) the stack's own helpers
    /// ([`Stack::wait_until_set_up`], [`Stack::wait_for_end`], …) connect with; the URL is
    /// the stack's. Default: none (a server without authentication).
    pub fn client_options(mut self, options: sluice_client::NatsOptions) -> Self {
        self.client = Some(options);
        self
    }

    /// Its own nats-server flushes every JetStream write before acknowledging it
    /// (`sync_interval: always`).
    pub fn sync_always(self) -> Self {
        self.own_server(sluice_local_nats::Options::sync_always)
    }

    /// A nats-server with a monitoring port on 127.0.0.1 (`/jsz`, what KEDA polls):
    /// [`Stack::monitor_port`].
    pub fn monitoring(self) -> Self {
        self.own_server(|options| sluice_local_nats::Options {
            monitor_port: options.monitor_port.or_else(|| sluice_local_nats::free_port().ok()),
            ..options
        })
    }

    /// Changes the options of the server this stack starts (an external one stays as it is).
    fn own_server(mut self, change: impl FnOnce(sluice_local_nats::Options) -> sluice_local_nats::Options) -> Self {
        if let Nats::Own(options) = self.nats {
            self.nats = Nats::Own(change(options));
        }
        self
    }

    /// Use the nats-server at `url` (it is never stopped, and its streams are shared).
    pub fn external(mut self, url: impl Into<String>) -> Self {
        self.nats = Nats::External(url.into());
        self
    }

    /// [`external`](Self::external) if `url` is given.
    pub fn nats_url(self, url: Option<String>) -> Self {
        match url {
            Some(url) => self.external(url),
            None => self,
        }
    }

    /// An environment variable for every process the stack starts (commands too).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `RUST_LOG` of coordinators and workers (default `info,async_nats=warn`; commands run
    /// by [`Stack::sluice`] log at `warn`).
    pub fn log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// The working directory of every process (default: this process's).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    pub fn start(self) -> Result<Stack> {
        let nats = match self.nats {
            Nats::Own(options) => Server::with_options(options)?,
            Nats::External(url) => Server::external(&url),
        };
        let dir =
            tempfile::Builder::new().prefix("sluice-test-").tempdir().context("creating the stack's directory")?;
        Ok(Stack {
            nats,
            dir,
            sluice: self.sluice,
            env: self.env,
            log_filter: self.log_filter,
            current_dir: self.current_dir,
            client: self.client,
            processes: Vec::new(),
            runtime: OnceLock::new(),
        })
    }
}

struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

/// A nats-server and the `sluice` processes started against it, each logging to
/// `<name>-<index>.log` in [`dir`](Self::dir). Processes are named by their index, in the
/// order they were started. On drop every process is killed and reaped (then the server
/// stops and the directory goes); if the thread is panicking, every `.log` file in the
/// directory is printed first.
///
/// The blocking helpers (`wait_*`, `submit`, `leader_pid`) run on a runtime of the stack's
/// own: call them from synchronous code only; async code uses [`crate::wait`] and
/// [`crate::workflow`].
pub struct Stack {
    pub nats: Server,
    /// Logs, workflow files, whatever a test writes ([`write`](Self::write)).
    pub dir: tempfile::TempDir,
    sluice: PathBuf,
    env: Vec<(String, String)>,
    log_filter: String,
    current_dir: Option<PathBuf>,
    client: Option<sluice_client::NatsOptions>,
    processes: Vec<Process>,
    runtime: OnceLock<tokio::runtime::Runtime>,
}

impl Stack {
    /// A stack that runs the `sluice` binary at `sluice` ([`crate::find_sluice`] finds it).
    pub fn builder(sluice: impl Into<PathBuf>) -> StackBuilder {
        StackBuilder {
            sluice: sluice.into(),
            nats: Nats::Own(sluice_local_nats::Options::default()),
            env: Vec::new(),
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            current_dir: None,
            client: None,
        }
    }

    /// A stack on a fresh temporary nats-server, with no process started yet.
    pub fn start(sluice: impl Into<PathBuf>) -> Result<Self> {
        Self::builder(sluice).start()
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// The nats-server's monitoring port on 127.0.0.1, if it was started with one
    /// ([`StackBuilder::monitoring`]).
    pub fn monitor_port(&self) -> Option<u16> {
        self.nats.monitor_port()
    }

    /// The `sluice` binary this stack runs.
    pub fn sluice_binary(&self) -> &Path {
        &self.sluice
    }

    /// Starts `sluice ARGS` as a long-running process named `name` (its log is
    /// `<name>-<index>.log`), with `env` on top of the stack's; returns its index. Panics if
    /// it cannot be started.
    pub fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) -> usize {
        let sluice = self.sluice.clone();
        self.spawn_program(name, &sluice, args, env)
    }

    /// Starts `program ARGS` as [`Stack::spawn`] starts `sluice` (the stack's environment,
    /// `SLUICE_NATS_URL` included, and a log of its own): e.g. a Python worker.
    pub fn spawn_program(&mut self, name: &str, program: &Path, args: &[&str], env: &[(&str, &str)]) -> usize {
        let index = self.processes.len();
        let log = self.dir.path().join(format!("{name}-{index}.log"));
        let file = File::create(&log).unwrap_or_else(|error| panic!("creating {}: {error}", log.display()));
        let mut command = self.command_of(program, args, &self.log_filter);
        command.envs(env.iter().copied()).stdout(file.try_clone().expect("log file handle")).stderr(file);
        let child = command.spawn().unwrap_or_else(|error| panic!("starting {} {args:?}: {error}", program.display()));
        self.processes.push(Process { name: name.to_owned(), child, log });
        index
    }

    fn command(&self, args: &[&str], log_filter: &str) -> Command {
        self.command_of(&self.sluice, args, log_filter)
    }

    fn command_of(&self, program: &Path, args: &[&str], log_filter: &str) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("SLUICE_NATS_URL", self.url())
            .env("RUST_LOG", log_filter)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null());
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command
    }

    /// `sluice coordinator`.
    pub fn coordinator(&mut self) -> usize {
        self.coordinator_with(&[])
    }

    /// `sluice coordinator EXTRA`.
    pub fn coordinator_with(&mut self, extra: &[&str]) -> usize {
        let args: Vec<&str> = std::iter::once("coordinator").chain(extra.iter().copied()).collect();
        self.spawn("coordinator", &args, &[])
    }

    /// `sluice worker EXTRA`.
    pub fn worker(&mut self, extra: &[&str]) -> usize {
        let args: Vec<&str> = std::iter::once("worker").chain(extra.iter().copied()).collect();
        self.spawn("worker", &args, &[])
    }

    /// The indexes of the processes started as `name` (`coordinator`, `worker`, …).
    pub fn named(&self, name: &str) -> Vec<usize> {
        (0..self.processes.len()).filter(|&index| self.processes[index].name == name).collect()
    }

    pub fn pid(&self, process: usize) -> i32 {
        self.processes[process].child.id() as i32
    }

    /// Where the process logs (stdout and stderr).
    pub fn log_path(&self, process: usize) -> &Path {
        &self.processes[process].log
    }

    /// What the process has logged so far.
    pub fn log(&self, process: usize) -> String {
        std::fs::read_to_string(self.log_path(process)).unwrap_or_default()
    }

    /// Sends a signal, by name (`TERM` or `SIGTERM`); panics if it cannot be sent.
    pub fn signal(&self, process: usize, signal: &str) {
        let name = if signal.starts_with("SIG") { signal.to_owned() } else { format!("SIG{signal}") };
        let signal = Signal::from_str(&name).unwrap_or_else(|_| panic!("no signal {name}"));
        let pid = self.pid(process);
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
            .unwrap_or_else(|error| panic!("sending {name} to process {process} (pid {pid}): {error}"));
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, process: usize) {
        let child = &mut self.processes[process].child;
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits (bounded; it panics after `timeout`) until the process has exited.
    pub fn wait_exit(&mut self, process: usize, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let name = self.processes[process].name.clone();
        let child = &mut self.processes[process].child;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} {process} did not exit within {timeout:?}");
            std::thread::sleep(EXIT_POLL);
        }
    }

    pub fn is_running(&mut self, process: usize) -> bool {
        self.processes[process].child.try_wait().expect("try_wait").is_none()
    }

    /// The process's CPU seconds and peak RSS so far (zeros once it is reaped).
    pub fn usage(&self, process: usize) -> Usage {
        usage(self.processes[process].child.id())
    }

    /// The processes' usage [`merge`](Usage::merge)d: CPU summed, peak RSS the largest.
    pub fn usage_of(&self, processes: &[usize]) -> Usage {
        Usage::merged(processes.iter().map(|&process| self.usage(process)))
    }

    /// Runs `sluice ARGS` against this stack's server and returns its output; a command
    /// that hangs is killed after [`COMMAND_TIMEOUT`] and panics, so CI never waits on it.
    pub fn sluice(&self, args: &[&str]) -> Output {
        self.sluice_with(args, &[])
    }

    /// [`Stack::sluice`] with `env` on top of the stack's (another identity's credentials).
    pub fn sluice_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let child = self
            .command(args, "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("running {} {args:?}: {error}", self.sluice.display()));
        let pid = Pid::from_raw(child.id() as i32);
        let (done, finished) = mpsc::channel::<()>();
        // Kills the command unless told within the timeout that it finished.
        let watchdog = std::thread::spawn(move || match finished.recv_timeout(COMMAND_TIMEOUT) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                true
            }
            _ => false,
        });
        let output = child.wait_with_output().expect("wait for sluice");
        let _ = done.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        assert!(
            !timed_out,
            "sluice {args:?} did not finish within {COMMAND_TIMEOUT:?}\nstdout: {}\nstderr: {}",
            text(&output.stdout),
            text(&output.stderr)
        );
        output
    }

    /// `sluice ARGS -o json`, parsed; panics with stderr if the exit code is not `code`.
    pub fn sluice_json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let output = self.sluice(&all);
        assert_eq!(
            output.status.code(),
            Some(code),
            "sluice {args:?}\nstdout: {}\nstderr: {}",
            text(&output.stdout),
            text(&output.stderr)
        );
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", text(&output.stdout)))
    }

    /// Writes a file (a workflow's YAML, say) into the stack's directory; returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        path
    }

    /// Where recording jobs ([`crate::workflow::recording_job`]) append their lines.
    pub fn job_log(&self) -> PathBuf {
        self.dir.path().join("jobs.log")
    }

    /// Connects the way the stack's helpers do ([`StackBuilder::client_options`]).
    pub async fn connect(&self) -> Result<async_nats::jetstream::Context> {
        match &self.client {
            None => crate::connect(&self.url()).await,
            Some(options) => {
                let options = sluice_client::NatsOptions { url: self.url(), ..options.clone() };
                let client = sluice_client::connect_with(&options, "sluice-testkit").await?;
                Ok(async_nats::jetstream::new(client))
            }
        }
    }

    /// Runs `future` to its end on the stack's runtime (made on first use). Panics if called
    /// from async code.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime")
            })
            .block_on(future)
    }

    /// Waits (bounded) until a coordinator has set Sluice up.
    pub fn wait_until_set_up(&self, timeout: Duration) -> Result<()> {
        self.block_on(async {
            let js = self.connect().await?;
            wait::set_up(&js, timeout).await
        })
    }

    /// Waits (bounded) until `count` workers of `pool` are in the registry.
    pub fn wait_for_workers(&self, pool: &str, count: usize, timeout: Duration) -> Result<()> {
        self.block_on(async {
            let js = self.connect().await?;
            wait::workers(&js, pool, count, timeout).await
        })
    }

    /// Submits `yaml` (its default window) through sluice-client; returns the run id.
    pub fn submit(&self, yaml: &str) -> Result<RunId> {
        self.block_on(async {
            let js = self.connect().await?;
            crate::workflow::submit_yaml(&js, yaml).await
        })
    }

    /// Waits (bounded) until the run has ended, or was rejected ([`wait::run_end`]).
    pub fn wait_for_end(&self, id: &RunId, timeout: Duration) -> Result<Lookup> {
        self.block_on(async {
            let js = self.connect().await?;
            wait::run_end(&js, id, timeout).await
        })
    }

    /// Waits (bounded; it panics after `timeout`) until `sluice status` shows the run
    /// finished, and returns that status. The end is awaited by a KV watch first; the
    /// command is then polled, which also covers what the watch cannot tell (an id suffix,
    /// records of an older schema).
    pub fn wait_for_run(&self, run_id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        if let Ok(id) = run_id.parse::<RunId>() {
            // An error (a record this build cannot read, a timeout) leaves the decision to
            // `sluice status` below.
            let _ = self.wait_for_end(&id, timeout);
        }
        loop {
            let output = self.sluice(&["status", run_id, "-o", "json"]);
            if output.status.success() {
                let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
                if status["state"] != "running" {
                    return status;
                }
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for run {run_id} to finish");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the coordinator holding the leadership lease, if one does.
    pub fn leader_pid(&self) -> Option<i32> {
        self.block_on(async {
            let js = tokio::time::timeout(Duration::from_secs(2), self.connect()).await.ok()?.ok()?;
            wait::leader_pid(&js).await
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for process in &mut self.processes {
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
        // Allowed inside async code too (the loadtest drops stacks there).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "log") {
                    eprintln!("===== {} =====\n{}", path.display(), std::fs::read_to_string(&path).unwrap_or_default());
                }
            }
        }
    }
}
