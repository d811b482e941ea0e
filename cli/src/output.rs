//! How the CLI reports: errors with exit codes (JSON on stderr with `-o json`), logging,
//! and small formatting helpers shared by the commands.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde_json::json;
use sluice_proto::{ControlOutcome, ControlRequest, Outcome, RefusalKind};

/// `-o human` (tables) or `-o json` (stable, for scripts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// What kind of failure, which decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The run or operation failed: exit 1.
    Failed,
    /// Bad input or usage: exit 2.
    Usage,
    /// NATS unreachable or refused: exit 3.
    Nats,
    /// Whoever read stdout stopped reading (`sluice runs | head -1`): the command ends
    /// quietly with exit 0, as a Unix filter does.
    StdoutClosed,
}

impl ErrorKind {
    fn code(self) -> u8 {
        match self {
            Self::Failed => 1,
            Self::Usage => 2,
            Self::Nats => 3,
            Self::StdoutClosed => 0,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Usage => "usage",
            Self::Nats => "nats",
            Self::StdoutClosed => "stdout_closed",
        }
    }
}

/// An error the CLI reports and exits with.
#[derive(Debug)]
pub struct CliError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Usage, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Failed, message: message.into() }
    }
    pub fn nats(message: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Nats, message: message.into() }
    }
}

impl From<sluice_coordinator::ServiceError> for CliError {
    fn from(error: sluice_coordinator::ServiceError) -> Self {
        match error {
            sluice_coordinator::ServiceError::Codec(_) => Self::failed(error.to_string()),
            // A server set up too small: a configuration to fix (`sluice dev` on a small store).
            sluice_coordinator::ServiceError::StoreTooSmall(_) => Self::usage(error.to_string()),
            _ => Self::nats(error.to_string()),
        }
    }
}

impl From<sluice_client::ClientError> for CliError {
    fn from(error: sluice_client::ClientError) -> Self {
        use sluice_client::ClientError;
        match error {
            ClientError::Codec(_) | ClientError::NoAnswer { .. } | ClientError::Inconsistent(_) => {
                Self::failed(error.to_string())
            }
            ClientError::Invalid(_) => Self::usage(error.to_string()),
            _ => Self::nats(error.to_string()),
        }
    }
}

/// A control request's answer: `Ok` when applied; a refusal becomes the error its kind
/// says (not found and invalid exit 2, a conflict exits 1), with the coordinator's reason.
pub fn applied(outcome: ControlOutcome) -> Result<ControlOutcome, CliError> {
    match (outcome.outcome, outcome.kind) {
        (Outcome::Applied, _) => Ok(outcome),
        (Outcome::Refused, Some(RefusalKind::Conflict)) => Err(CliError::failed(outcome.reason)),
        (Outcome::Refused, _) => Err(CliError::usage(outcome.reason)),
    }
}

/// Sends a control request as this CLI's identity and waits for its answer.
pub async fn ask(js: &async_nats::jetstream::Context, request: ControlRequest) -> Result<ControlOutcome, CliError> {
    let identity = identity();
    let request = ControlRequest { requested_by: identity.clone(), ..request };
    Ok(sluice_client::requests::control(js, &identity, &request, sluice_client::requests::ANSWER_TIMEOUT).await?)
}

/// Prints the error where the format says and returns its exit code.
pub fn report(error: &CliError, format: Format) -> ExitCode {
    match (error.kind, format) {
        (ErrorKind::StdoutClosed, _) => {}
        (_, Format::Human) => errln(format_args!("error: {}", error.message)),
        (_, Format::Json) => {
            errln(format_args!("{}", json!({"error": {"kind": error.kind.name(), "message": error.message}})))
        }
    }
    ExitCode::from(error.kind.code())
}

/// Writes a line to stdout. Every command's stdout goes through here (clippy refuses
/// `println!` in this crate, see clippy.toml): a reader that stopped reading (`| head`)
/// becomes [`ErrorKind::StdoutClosed`], which unwinds the command like any error (so `dev`
/// still stops its stack) and exits 0 without a word. The alternative, SIGPIPE's default
/// action, would kill the process where it stands: `dev` would leave its nats-server
/// running, a worker its jobs.
pub fn out(line: impl fmt::Display) -> Result<(), CliError> {
    write_stdout(format_args!("{line}\n"))
}

/// Writes to stdout without a newline and flushes (a progress bar redrawn with `\r`).
pub fn out_partial(text: impl fmt::Display) -> Result<(), CliError> {
    write_stdout(format_args!("{text}"))
}

fn write_stdout(text: fmt::Arguments) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(text).and_then(|()| stdout.flush()).map_err(|error| match error.kind() {
        std::io::ErrorKind::BrokenPipe => CliError { kind: ErrorKind::StdoutClosed, message: String::new() },
        _ => CliError::failed(format!("cannot write to stdout: {error}")),
    })
}

/// Writes a line to stderr; a stderr nobody reads is no reason to fail (nor to panic, as
/// `eprintln!` would).
pub fn errln(line: impl fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Logs to stderr; `RUST_LOG` overrides the default level. Colours only on a terminal: a
/// log file or a pipe gets plain text.
pub fn init_logging(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// This process's connection options (the global `--nats-*` flags) and its identity.
#[derive(Clone, Debug, Default)]
pub struct Nats {
    pub options: sluice_client::NatsOptions,
    /// The submitter identity control requests go out under, if known.
    pub identity: Option<String>,
}

/// Set once by `main` from the global flags. A process-wide fact, kept here so that every
/// command connects with it without threading it through each command's functions.
static NATS: std::sync::OnceLock<Nats> = std::sync::OnceLock::new();

/// Sets this process's connection options (the first call wins).
pub fn set_nats(nats: Nats) {
    let _ = NATS.set(nats);
}

fn nats() -> Nats {
    NATS.get().cloned().unwrap_or_default()
}

/// The identity this CLI's control requests go out under: `--nats-identity`, else
/// `--nats-user`, else `anonymous`.
pub fn identity() -> String {
    sluice_client::requests::identity(nats().identity.as_deref())
}

/// Connects to `url` with the global flags' credentials, turning failure into exit code 3
/// (2 for a wrong option). The inbox prefix, unless given, is that of the identity's role.
pub async fn connect(url: &str) -> Result<async_nats::Client, CliError> {
    connect_as(url, None).await
}

/// [`connect`] as `role`, whose inbox prefix is the default (`sluice worker`,
/// `sluice coordinator`).
pub async fn connect_as(url: &str, role: Option<&sluice_proto::roles::Role>) -> Result<async_nats::Client, CliError> {
    sluice_client::connect_with(&options_as(url, role), "sluice-cli").await.map_err(connect_failed)
}

/// The global flags' connection options for `url`, with the inbox prefix of `role` (else of
/// the identity's role) unless one is given.
pub fn options_as(url: &str, role: Option<&sluice_proto::roles::Role>) -> sluice_client::NatsOptions {
    use sluice_proto::roles::Role;
    let nats = nats();
    let mut options = sluice_client::NatsOptions { url: url.to_owned(), ..nats.options };
    let role = role.cloned().or_else(|| nats.identity.as_deref().map(Role::from_user_name));
    if let Some(role) = role {
        options = options.with_default_inbox_prefix(role.inbox_prefix());
    }
    options
}

/// A failed connection's exit: 2 for a wrong option, else 3.
pub fn connect_failed(error: sluice_client::ClientError) -> CliError {
    match error {
        sluice_client::ClientError::BadOption { .. } => CliError::usage(error.to_string()),
        _ => CliError::nats(error.to_string()),
    }
}

/// A run id as a user gives it: whole, or the end of one (at least 4 hex digits; UUIDv7
/// ids begin with their time, so ends tell runs apart), looked up in the run index. An
/// end that matches several runs is refused, naming them.
pub async fn resolve_run(js: &async_nats::jetstream::Context, text: &str) -> Result<sluice_proto::RunId, CliError> {
    if let Ok(id) = text.parse::<sluice_proto::RunId>() {
        id.check_v7().map_err(CliError::usage)?;
        return Ok(id);
    }
    let matches = sluice_client::runs::by_suffix(js, text.trim()).await.map_err(|error| match error {
        sluice_client::ClientError::Invalid(_) => CliError::usage(format!(
            "`{text}` is neither a run id (a UUID such as 0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b) nor the end of one (4 or more hex digits)"
        )),
        other => other.into(),
    })?;
    match matches.as_slice() {
        [id] => Ok(*id),
        [] => Err(CliError::usage(format!("no run id ends with `{text}`"))),
        several => Err(CliError::usage(format!(
            "`{text}` ends {} run ids: {}; give more of it",
            several.len(),
            several.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Prints a JSON value on stdout, its keys in the order they were inserted (serde_json's
/// `preserve_order`), which is the order docs/cli.md documents.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    out(serde_json::to_string_pretty(value).unwrap_or_default())
}

pub use sluice_client::json::time;

/// A short local-looking time for tables.
pub fn short_time(value: Option<DateTime<Utc>>) -> String {
    value.map(|time| time.format("%H:%M:%S").to_string()).unwrap_or_else(|| "-".into())
}

/// Renders rows as a left-aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(header.iter().map(|title| title.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

/// The longest line a one-line view shows of an error or an output.
const ONE_LINE_CHARS: usize = 100;

/// How an exec job's error introduces the end of its stderr (worker/src/kinds/exec.rs).
const STDERR_TAIL: &str = "; stderr ends with:";

/// The first line of `text`, at most [`ONE_LINE_CHARS`] characters.
pub fn first_line(text: &str) -> String {
    clip(text.lines().next().unwrap_or_default())
}

/// An error in one line (status tables, `submit --wait`, `dlq list`): its first line, but for
/// an exec error quoting its stderr the head and the last non-empty stderr line, since the
/// first line alone ends at "stderr ends with:" and says nothing.
pub fn error_line(text: &str) -> String {
    let Some((head, tail)) = text.split_once(STDERR_TAIL) else {
        return first_line(text);
    };
    let head = head.lines().next().unwrap_or_default();
    match tail.lines().rev().map(str::trim).find(|line| !line.is_empty()) {
        Some(last) => clip(&format!("{head}: {last}")),
        None => clip(head),
    }
}

fn clip(line: &str) -> String {
    if line.chars().count() > ONE_LINE_CHARS {
        format!("{}…", line.chars().take(ONE_LINE_CHARS).collect::<String>())
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_error_shows_its_head_and_last_non_empty_stderr_line() {
        let error = "`python3` exited with code 1; stderr ends with:\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad row 7\n\n  \n";
        assert_eq!(error_line(error), "`python3` exited with code 1: ValueError: bad row 7");
    }

    #[test]
    fn an_exec_error_with_a_blank_stderr_tail_shows_its_head() {
        assert_eq!(error_line("`sh` exited with code 2; stderr ends with:\n\n"), "`sh` exited with code 2");
    }

    #[test]
    fn other_errors_show_their_first_line_clipped() {
        assert_eq!(error_line("boom\nmore"), "boom");
        assert_eq!(error_line(""), "");
        let long = "x".repeat(150);
        assert_eq!(error_line(&long), format!("{}…", "x".repeat(ONE_LINE_CHARS)));
        let exec = format!("`sh` exited with code 1; stderr ends with:\n{long}");
        assert_eq!(error_line(&exec).chars().count(), ONE_LINE_CHARS + 1, "clipped after the join");
    }
}
