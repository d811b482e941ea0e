//! `exec`: runs a program (argument array, no shell), in any language.
//!
//! Placeholders (`{{start}}`, `{{end}}`, `{{run_id}}`, `{{job}}`, `{{attempt}}`,
//! `{{params.NAME}}`) are substituted in each argument. Context is in the environment:
//! `SLUICE_RUN_ID`, `SLUICE_WORKFLOW`, `SLUICE_JOB`, `SLUICE_ATTEMPT`, `SLUICE_WORKER`, `SLUICE_WINDOW_START`,
//! `SLUICE_WINDOW_END`, `SLUICE_CONFIG` and `SLUICE_PARAMS` (JSON), `TRACEPARENT`,
//! `TRACESTATE`, and three files: `SLUICE_INPUTS_FILE` (JSON: the outputs of the jobs it
//! needs, by name), `SLUICE_OUTPUT_FILE` (write a JSON value there to hand it on) and
//! `SLUICE_SPAWN_FILE` (write one JSON child job per line to fan out). stdout and stderr
//! go to the job's log. Exit code 0 is success; exit code 78 (or one listed in the job's
//! `permanent_exit_codes`) is a permanent failure, any other a retryable one.
//!
//! Each attempt runs in a process group of its own (`group.rs`): on cancellation or timeout
//! the group gets SIGTERM, then SIGKILL after a grace period; what the program leaves
//! running in it when it exits is stopped the same way; a watchdog kills the group if the
//! worker dies. Processes that leave the group (`setsid`, daemons) are not tracked.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use sluice_proto::placeholder;
use sluice_proto::spawn::parse_child_lines;
use sluice_proto::spec::EXEC_PERMANENT_EXIT_CODE;
use sluice_proto::{ChildSpec, LogStream, RunId, Window};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::group::Watchdog;
use crate::job::{Job, JobContext, JobError, Output};
use crate::logs::LogSink;

/// Lines of stderr kept for the error message of a failed attempt.
const STDERR_TAIL_LINES: usize = 20;

/// Runs `command` from the job spec.
pub struct Exec {
    /// Time between SIGTERM and SIGKILL when a job's process group is stopped.
    pub kill_grace: Duration,
}

impl Default for Exec {
    fn default() -> Self {
        Self { kill_grace: Duration::from_millis(crate::limits::EXEC_KILL_GRACE_MS) }
    }
}

#[async_trait]
impl Job for Exec {
    async fn perform(&self, ctx: &JobContext, window: &Window, config: &serde_json::Value) -> Result<Output, JobError> {
        let command = ctx
            .command
            .as_deref()
            .filter(|command| !command.is_empty())
            .ok_or_else(|| JobError::permanent("exec job has no command"))?;
        let lookup = |name: &str| ctx.placeholder(window, name);
        let args: Vec<String> = command
            .iter()
            .map(|arg| placeholder::substitute(arg, lookup))
            .collect::<Result<_, _>>()
            .map_err(|error| JobError::permanent(error.to_string()))?;
        let files = AttemptFiles::create(&ctx.inputs)?;
        let mut process = Command::new(&args[0]);
        process
            .env("SLUICE_INPUTS_FILE", &files.inputs)
            .env("SLUICE_OUTPUT_FILE", &files.output)
            .env("SLUICE_SPAWN_FILE", &files.spawn)
            .args(&args[1..])
            .env("SLUICE_RUN_ID", ctx.run_id.to_string())
            .env("SLUICE_WORKFLOW", &ctx.workflow)
            .env("SLUICE_JOB", &ctx.job)
            .env("SLUICE_ATTEMPT", ctx.attempt.to_string())
            .env("SLUICE_WORKER", &ctx.worker_id)
            .env("SLUICE_WINDOW_START", window.start_rfc3339())
            .env("SLUICE_WINDOW_END", window.end_rfc3339())
            .env("SLUICE_CONFIG", config.to_string())
            .env("SLUICE_PARAMS", serde_json::to_string(&ctx.params).unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in [("TRACEPARENT", &ctx.traceparent), ("TRACESTATE", &ctx.tracestate)] {
            if let Some(value) = value {
                process.env(name, value);
            }
        }
        let watchdog = Watchdog::start()
            .map_err(|error| JobError::retryable(format!("cannot start a watchdog for `{}`: {error}", args[0])))?;
        let mut group = watchdog
            .spawn(&mut process)
            .map_err(|error| JobError::permanent(format!("cannot start `{}`: {error}", args[0])))?;
        let logs = ctx.log_sink();
        let stdout =
            group.child.stdout.take().map(|out| tokio::spawn(forward_lines(out, logs.clone(), LogStream::Stdout, 0)));
        let stderr = group
            .child
            .stderr
            .take()
            .map(|err| tokio::spawn(forward_lines(err, logs.clone(), LogStream::Stderr, STDERR_TAIL_LINES)));
        let status = tokio::select! {
            status = group.wait() => status.map_err(|error| JobError::retryable(format!("waiting for `{}`: {error}", args[0])))?,
            _ = ctx.cancelled() => {
                group.stop(self.kill_grace).await;
                return Err(JobError::retryable(format!("`{}` was stopped: the attempt was cancelled", args[0])));
            }
        };
        // Nothing outlives the attempt; and what is left may hold the output pipes open.
        if group.stop_leftovers(self.kill_grace).await {
            ctx.log(format!("`{}` exited leaving processes in its group: they were stopped", args[0]));
        }
        if let Some(task) = stdout {
            let _ = task.await;
        }
        let tail = match stderr {
            Some(task) => task.await.unwrap_or_default(),
            None => VecDeque::new(),
        };
        if status.success() {
            for child in files.read_children()? {
                ctx.spawn(child);
            }
            return files.read_output();
        }
        let how = match status.code() {
            Some(code) => format!("exited with code {code}"),
            None => "was killed by a signal".to_owned(),
        };
        let permanent = status
            .code()
            .is_some_and(|code| code == EXEC_PERMANENT_EXIT_CODE || ctx.permanent_exit_codes.contains(&code));
        let mut message = format!("`{}` {how}", args[0]);
        if permanent {
            message.push_str(" (a permanent failure: no further attempts)");
        }
        if !tail.is_empty() {
            message.push_str("; stderr ends with:\n");
            message.push_str(&Vec::from(tail).join("\n"));
        }
        Err(JobError { message, retryable: !permanent })
    }
}

/// Sends each line of the process's output to the job's log, keeping the last `keep` lines.
async fn forward_lines(
    stream: impl AsyncRead + Unpin,
    logs: LogSink,
    which: LogStream,
    keep: usize,
) -> VecDeque<String> {
    let mut lines = BufReader::new(stream).lines();
    let mut tail = VecDeque::with_capacity(keep);
    while let Ok(Some(line)) = lines.next_line().await {
        logs.line_waiting(which, &line).await;
        if keep > 0 {
            if tail.len() == keep {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    tail
}

/// The files of one attempt, in a private directory removed when the attempt ends.
struct AttemptFiles {
    dir: PathBuf,
    inputs: PathBuf,
    output: PathBuf,
    spawn: PathBuf,
}

impl AttemptFiles {
    fn create(inputs: &BTreeMap<String, serde_json::Value>) -> Result<Self, JobError> {
        let dir = std::env::temp_dir().join(format!("sluice-attempt-{}", RunId::new()));
        // Only this user may read the job's inputs and outputs.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .map_err(|error| JobError::retryable(format!("creating {}: {error}", dir.display())))?;
        let files = Self {
            inputs: dir.join("inputs.json"),
            output: dir.join("output.json"),
            spawn: dir.join("spawn.jsonl"),
            dir,
        };
        let text = serde_json::to_vec(inputs).map_err(|error| JobError::permanent(error.to_string()))?;
        std::fs::write(&files.inputs, text)
            .map_err(|error| JobError::retryable(format!("writing {}: {error}", files.inputs.display())))?;
        Ok(files)
    }

    /// The JSON value the job wrote to `SLUICE_OUTPUT_FILE`, if any.
    fn read_output(&self) -> Result<Output, JobError> {
        let Some(text) = self.read("SLUICE_OUTPUT_FILE", &self.output)? else { return Ok(Output::none()) };
        if text.trim().is_empty() {
            return Ok(Output::none());
        }
        serde_json::from_str(&text)
            .map(Output::json)
            .map_err(|error| JobError::permanent(format!("SLUICE_OUTPUT_FILE does not hold JSON: {error}")))
    }

    /// The children the job wrote to `SLUICE_SPAWN_FILE`, if any.
    fn read_children(&self) -> Result<Vec<ChildSpec>, JobError> {
        let Some(text) = self.read("SLUICE_SPAWN_FILE", &self.spawn)? else { return Ok(Vec::new()) };
        parse_child_lines(&text, "SLUICE_SPAWN_FILE").map_err(|error| JobError::permanent(error.to_string()))
    }

    fn read(&self, what: &str, path: &Path) -> Result<Option<String>, JobError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(JobError::permanent(format!("{what} ({}) cannot be read: {error}", path.display()))),
        }
    }
}

impl Drop for AttemptFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> Window {
        Window::parse("2024-03-01", chrono_tz_utc(), chrono::Utc::now()).unwrap()
    }

    fn chrono_tz_utc() -> chrono_tz::Tz {
        sluice_proto::window::parse_zone("UTC").unwrap()
    }

    fn ctx(command: &[&str]) -> JobContext {
        JobContext::for_local_run("extract", 2).with_command(command.iter().map(|s| s.to_string()).collect())
    }

    #[tokio::test]
    async fn substitutes_placeholders_and_sets_the_environment() {
        let script = r#"test "$1" = 2024-03-01T00:00:00Z && test "$2" = extract-2 && test "$SLUICE_ATTEMPT" = 2 && test "$SLUICE_WINDOW_END" = 2024-03-02T00:00:00Z && test "$SLUICE_CONFIG" = '{"k":1}'"#;
        let result = Exec::default()
            .perform(
                &ctx(&["sh", "-c", script, "sh", "{{start}}", "{{job}}-{{attempt}}"]),
                &window(),
                &serde_json::json!({"k": 1}),
            )
            .await;
        assert_eq!(result, Ok(Output::none()));
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_exit_code_and_stderr() {
        let error = Exec::default()
            .perform(&ctx(&["sh", "-c", "echo bad input >&2; exit 3"]), &window(), &serde_json::Value::Null)
            .await
            .unwrap_err();
        assert!(error.retryable);
        assert!(
            error.message.contains("exited with code 3") && error.message.contains("bad input"),
            "{}",
            error.message
        );
    }

    #[tokio::test]
    async fn exit_78_and_listed_codes_are_permanent() {
        for (code, listed) in [(78, vec![]), (4, vec![4])] {
            let mut context = ctx(&["sh", "-c", &format!("exit {code}")]);
            context.permanent_exit_codes = listed;
            let error = Exec::default().perform(&context, &window(), &serde_json::Value::Null).await.unwrap_err();
            assert!(!error.retryable, "{code}: {}", error.message);
            assert!(error.message.contains("permanent"), "{}", error.message);
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_permanent_error() {
        let error = Exec::default()
            .perform(&ctx(&["/nonexistent/program"]), &window(), &serde_json::Value::Null)
            .await
            .unwrap_err();
        assert!(!error.retryable);
        assert!(error.message.contains("cannot start `/nonexistent/program`"), "{}", error.message);
    }

    /// The pids a job's script wrote to `file` (space-separated), once it has.
    fn pids_in(file: &Path) -> Vec<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(file)
                && text.ends_with('\n')
            {
                return text.split_whitespace().map(|pid| pid.parse().unwrap()).collect();
            }
            assert!(std::time::Instant::now() < deadline, "the job did not write {}", file.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Gone, or a zombie (dead; its parent is gone and init may not reap it).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => true,
        }
    }

    /// Waits at most `within` for every one of `pids` to be dead.
    fn all_dead_within(pids: &[i32], within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            if pids.iter().all(|pid| is_dead(*pid)) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_processes_die_with_their_worker() {
        // A child "worker" runs an exec job whose shell starts a grandchild, then is
        // SIGKILLed: the watchdog must take the whole group with it.
        let dir = tempfile_dir();
        let pid_file = dir.join("worker-killed.pids");
        if std::env::var_os("SLUICE_EXEC_TEST_CHILD").is_some() {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let script = format!("sleep 60 & echo $$ $! > {}; wait", pid_file.display());
            let _ = runtime.block_on(Exec::default().perform(
                &ctx(&["sh", "-c", &script]),
                &window(),
                &serde_json::Value::Null,
            ));
            return;
        }
        let mut worker = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kinds::exec::tests::the_processes_die_with_their_worker", "--nocapture"])
            .env("SLUICE_EXEC_TEST_CHILD", "1")
            .env("SLUICE_EXEC_TEST_DIR", &dir)
            .spawn()
            .unwrap();
        let pids = pids_in(&pid_file);
        assert_eq!(pids.len(), 2);
        worker.kill().unwrap();
        worker.wait().unwrap();
        assert!(all_dead_within(&pids, Duration::from_secs(2)), "processes {pids:?} outlived their worker");
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::var_os("SLUICE_EXEC_TEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("sluice-exec-test-{}", std::process::id())));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `command` with `kill_grace` until `ready` holds what it writes, then cancels it;
    /// returns the result and how long the stop took.
    async fn cancel_when_written(
        command: &[&str],
        kill_grace: Duration,
        ready: &Path,
    ) -> (Result<Output, JobError>, Duration) {
        let context = ctx(command);
        let token = context.cancellation_token();
        let exec = Exec { kill_grace };
        let running = tokio::spawn(async move { exec.perform(&context, &window(), &serde_json::Value::Null).await });
        let ready = ready.to_owned();
        tokio::task::spawn_blocking(move || pids_in(&ready)).await.unwrap();
        let began = std::time::Instant::now();
        token.cancel();
        let result = tokio::time::timeout(Duration::from_secs(20), running).await.expect("stopped in time").unwrap();
        (result, began.elapsed())
    }

    #[tokio::test]
    async fn cancellation_sigkills_the_group_after_the_grace_when_it_ignores_sigterm() {
        let pid_file = tempfile_dir().join("ignores-term.pids");
        let script = format!("trap '' TERM; sleep 60 & echo $$ $! > {}; wait", pid_file.display());
        let grace = Duration::from_millis(300);
        let (result, took) = cancel_when_written(&["sh", "-c", &script], grace, &pid_file).await;
        assert!(result.unwrap_err().message.contains("was stopped"));
        assert!(took >= grace, "SIGKILL came before the grace period was over ({took:?})");
        let pids = pids_in(&pid_file);
        assert!(all_dead_within(&pids, Duration::from_secs(1)), "processes {pids:?} outlived the grace");
    }

    #[tokio::test]
    async fn a_stopped_group_has_the_grace_even_when_its_leader_dies_at_once() {
        // The leader (a shell) dies of SIGTERM at once; the grandchild cleans up on SIGTERM,
        // which takes a while, and must not be SIGKILLed meanwhile.
        let dir = tempfile_dir();
        let (ready, cleaned) = (dir.join("cleanup.pid"), dir.join("cleanup.done"));
        let grandchild = format!(
            "trap 'sleep 0.3; echo cleaned > {}; exit 0' TERM; sleep 60 & echo $$ > {}; wait",
            cleaned.display(),
            ready.display()
        );
        let (result, took) = cancel_when_written(
            &["sh", "-c", "sh -c \"$1\" & wait", "sh", &grandchild],
            Duration::from_secs(8),
            &ready,
        )
        .await;
        assert!(result.is_err());
        assert_eq!(std::fs::read_to_string(&cleaned).unwrap_or_default(), "cleaned\n", "the grandchild was cut short");
        assert!(
            took < Duration::from_secs(6),
            "the stop waited for the whole grace ({took:?}) though the group was gone"
        );
        assert!(all_dead_within(&pids_in(&ready), Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn what_a_job_leaves_running_is_stopped_when_it_exits() {
        // The background process holds the output pipe: left alone, it would hold the attempt
        // for a minute.
        let pid_file = tempfile_dir().join("leftover.pid");
        let script = format!("sleep 60 & echo $! > {}", pid_file.display());
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            Exec::default().perform(&ctx(&["sh", "-c", &script]), &window(), &serde_json::Value::Null),
        )
        .await
        .expect("the attempt ended without waiting for what it left running");
        assert_eq!(result, Ok(Output::none()));
        let pids = pids_in(&pid_file);
        assert!(all_dead_within(&pids, Duration::from_secs(1)), "process {pids:?} outlived its attempt");
    }

    #[tokio::test]
    async fn cancellation_terminates_the_process() {
        let context = ctx(&["sleep", "30"]);
        let token = context.cancellation_token();
        let exec = Exec { kill_grace: Duration::from_secs(5) };
        let running = tokio::spawn(async move { exec.perform(&context, &window(), &serde_json::Value::Null).await });
        token.cancel();
        let error = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("stopped in time")
            .unwrap()
            .unwrap_err();
        assert!(error.message.contains("was stopped"), "{}", error.message);
    }
}
