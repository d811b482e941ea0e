//! Test harness: a private nats-server plus real `sluice coordinator` / `sluice worker`
//! processes, with helpers to submit workflows and read what jobs recorded.
#![allow(dead_code)]
// Test output goes to the test runner, not to a user's pipe (clippy.toml bans these in `sluice`).
#![allow(clippy::disallowed_macros)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice_local_nats::NatsServer;

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A nats-server and the processes a test started; everything stops on drop.
pub struct Stack {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    processes: Vec<(String, Child)>,
}

impl Stack {
    pub fn start() -> Self {
        let nats = NatsServer::start_temporary().expect("nats-server starts (run scripts/install-tools.sh)");
        let dir = tempfile::Builder::new().prefix("sluice-test-").tempdir().expect("temp dir");
        Self { nats, dir, processes: Vec::new() }
    }

    /// A stack whose nats-server runs without JetStream (started without `-js`).
    pub fn start_without_jetstream() -> Self {
        let options = sluice_local_nats::Options { without_jetstream: true, ..Default::default() };
        let nats = NatsServer::start(options).expect("nats-server starts without JetStream");
        let dir = tempfile::Builder::new().prefix("sluice-test-").tempdir().expect("temp dir");
        Self { nats, dir, processes: Vec::new() }
    }

    /// A stack whose nats-server opens an existing JetStream store (a fixture's).
    pub fn start_with_store(store: PathBuf) -> Self {
        let options = sluice_local_nats::Options { store_dir: Some(store), ..Default::default() };
        let nats = NatsServer::start(options).expect("nats-server starts on the store");
        let dir = tempfile::Builder::new().prefix("sluice-test-").tempdir().expect("temp dir");
        Self { nats, dir, processes: Vec::new() }
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    fn spawn(&mut self, name: &str, args: &[&str]) -> usize {
        let log = File::create(self.dir.path().join(format!("{name}-{}.log", self.processes.len()))).expect("log file");
        let child = Command::new(SLUICE)
            .args(args)
            .env("SLUICE_NATS_URL", self.url())
            .env("RUST_LOG", "info,async_nats=warn")
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn sluice");
        self.processes.push((name.to_owned(), child));
        self.processes.len() - 1
    }

    pub fn coordinator_with(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["coordinator"];
        args.extend(extra);
        self.spawn("coordinator", &args)
    }

    pub fn coordinator(&mut self) -> usize {
        self.spawn("coordinator", &["coordinator"])
    }

    pub fn worker(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["worker"];
        args.extend_from_slice(extra);
        self.spawn("worker", &args)
    }

    /// What a process started by [`Stack::spawn`] wrote to stdout and stderr so far.
    pub fn process_log(&self, process: usize) -> String {
        let name = &self.processes[process].0;
        std::fs::read_to_string(self.dir.path().join(format!("{name}-{process}.log"))).unwrap_or_default()
    }

    pub fn pid(&self, process: usize) -> i32 {
        self.processes[process].1.id() as i32
    }

    pub fn signal(&self, process: usize, signal: &str) {
        let status =
            Command::new("kill").args([&format!("-{signal}"), &self.pid(process).to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, process: usize) {
        let child = &mut self.processes[process].1;
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn wait_exit(&mut self, process: usize, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.processes[process].1;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self, process: usize) -> bool {
        self.processes[process].1.try_wait().expect("try_wait").is_none()
    }

    /// Runs `sluice ARGS` against this stack's server; a command that hangs is killed after
    /// [`COMMAND_TIMEOUT`] and fails the test, so CI never waits on it.
    pub fn sluice(&self, args: &[&str]) -> Output {
        let child = Command::new(SLUICE)
            .args(args)
            .env("SLUICE_NATS_URL", self.url())
            .env("RUST_LOG", "warn")
            .current_dir(workspace_root())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run sluice");
        let pid = child.id().to_string();
        let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watchdog = {
            let finished = finished.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + COMMAND_TIMEOUT;
                while !finished.load(std::sync::atomic::Ordering::SeqCst) {
                    if Instant::now() > deadline {
                        let _ = Command::new("kill").args(["-9", &pid]).status();
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                false
            })
        };
        let output = child.wait_with_output().expect("wait for sluice");
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
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

    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write file");
        path
    }

    /// Where recording jobs append their start/end lines.
    pub fn job_log(&self) -> PathBuf {
        self.dir.path().join("jobs.log")
    }

    /// Waits (bounded) until `sluice status` shows a finished run, and returns it.
    pub fn wait_for_run(&self, run_id: &str, timeout: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        wait_until(timeout, "the run to finish", || {
            let output = self.sluice(&["status", run_id, "-o", "json"]);
            if output.status.success() {
                last = serde_json::from_slice(&output.stdout).unwrap_or_default();
                return last["state"] != "running";
            }
            false
        });
        last
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.processes {
            let _ = child.kill();
            let _ = child.wait();
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

/// The pid of the coordinator that holds the leadership lease, if one does.
pub fn leader_pid(stack: &Stack) -> Option<i32> {
    let runtime = tokio::runtime::Runtime::new().ok()?;
    runtime.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(2), async_nats::connect(stack.url())).await.ok()?.ok()?;
        let js = async_nats::jetstream::new(client);
        let store = js.get_key_value(sluice_proto::names::LEADER_BUCKET).await.ok()?;
        let holder = store.get(sluice_proto::names::LEADER_KEY).await.ok()??;
        String::from_utf8_lossy(&holder).split('/').nth(1)?.parse().ok()
    })
}

/// Waits until a coordinator has created Sluice's streams and buckets (the pool `default`
/// is declared last).
pub fn wait_until_set_up(stack: &Stack) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    wait_until(Duration::from_secs(30), "a coordinator to set up the topology", || {
        runtime.block_on(async {
            let Ok(client) = async_nats::connect(stack.url()).await else { return false };
            let js = async_nats::jetstream::new(client);
            let Ok(pools) = js.get_key_value(sluice_proto::names::POOLS_BUCKET).await else { return false };
            pools.get("default").await.is_ok_and(|entry| entry.is_some())
        })
    });
}

/// Longest any one `sluice` command may take in a test.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Polls `condition` until it holds, failing the test after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An exec job that appends `start JOB ATTEMPT NANOS` and `end JOB ATTEMPT NANOS` to `log`,
/// sleeping `seconds` in between, as a YAML flow mapping.
pub fn recording_job(log: &Path, seconds: f64, needs: &[String]) -> String {
    let script = recording_script(log, seconds);
    format!(
        "{{ run: exec, needs: [{}], command: [sh, -c, {}] }}",
        needs.join(", "),
        serde_json::to_string(&script).expect("json")
    )
}

/// The shell script of [`recording_job`].
pub fn recording_script(log: &Path, seconds: f64) -> String {
    format!(
        "echo \"start $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)\" >> {log}; sleep {seconds}; echo \"end $SLUICE_JOB $SLUICE_ATTEMPT $(date +%s%N)\" >> {log}",
        log = log.display()
    )
}

/// One job's recorded lines.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    pub starts: Vec<(u32, u128)>,
    pub ends: Vec<(u32, u128)>,
}

/// Reads the job log: job name → its starts and ends (attempt, nanoseconds).
pub fn read_job_log(log: &Path) -> HashMap<String, Recorded> {
    let mut jobs: HashMap<String, Recorded> = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, job, attempt, nanos] = parts[..] else { panic!("bad job log line {line:?}") };
        let entry = jobs.entry(job.to_owned()).or_default();
        let value = (attempt.parse().expect("attempt"), nanos.parse().expect("nanos"));
        match what {
            "start" => entry.starts.push(value),
            "end" => entry.ends.push(value),
            _ => panic!("bad job log line {line:?}"),
        }
    }
    jobs
}

/// Asserts every job in `needs` (job → what it needs) ran exactly once, and started only
/// after everything it needs had finished.
pub fn assert_ran_once_in_order(log: &Path, needs: &HashMap<String, Vec<String>>) {
    let jobs = read_job_log(log);
    for (job, deps) in needs {
        let recorded = jobs.get(job).unwrap_or_else(|| panic!("job {job} never ran"));
        assert_eq!(recorded.starts.len(), 1, "job {job} started {} times", recorded.starts.len());
        assert_eq!(recorded.ends.len(), 1, "job {job} finished {} times", recorded.ends.len());
        for dep in deps {
            let dep_end = jobs[dep].ends[0].1;
            assert!(dep_end <= recorded.starts[0].1, "{job} started before {dep} finished");
        }
    }
}

/// Submits and waits; returns the final status JSON (exit code checked against `code`).
pub fn submit_and_wait(stack: &Stack, file: &Path, code: i32) -> serde_json::Value {
    stack.sluice_json(&["submit", file.to_str().expect("path"), "--wait"], code)
}
