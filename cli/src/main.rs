//! `sluice`: one command for users and operators. Exit codes: 0 success, 1 the run or
//! operation failed, 2 bad input or usage, 3 NATS unreachable or refused.

/// `println!` through [`output::out`]: stdout that nobody reads ends the command quietly
/// instead of panicking. Returns a `Result` for `?`.
macro_rules! outln {
    () => {
        $crate::output::out("")
    };
    ($($arg:tt)*) => {
        $crate::output::out(format_args!($($arg)*))
    };
}

mod commands;
mod follow;
mod health;
mod output;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::output::{CliError, Format};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Durable DAG jobs on NATS JetStream")]
struct Cli {
    #[command(flatten)]
    nats: NatsArgs,
    /// Output format: a readable table, or JSON for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Human)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

/// How to connect to NATS (decision 13; docs/cli.md "Connecting"). Passwords and tokens come
/// from files or the environment, never from the command line.
#[derive(clap::Args)]
struct NatsArgs {
    /// NATS server to use.
    #[arg(long, global = true, env = "SLUICE_NATS_URL", default_value = sluice_client::connect::DEFAULT_URL)]
    nats_url: String,
    /// NATS user (with a password from --nats-password-file or SLUICE_NATS_PASSWORD).
    #[arg(long, global = true, env = "SLUICE_NATS_USER")]
    nats_user: Option<String>,
    /// File holding the NATS password (or the password itself in SLUICE_NATS_PASSWORD).
    #[arg(long, global = true, value_name = "FILE")]
    nats_password_file: Option<PathBuf>,
    /// File holding a NATS token (or the token itself in SLUICE_NATS_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    nats_token_file: Option<PathBuf>,
    /// File holding an nkey user seed.
    #[arg(long, global = true, env = "SLUICE_NATS_NKEY", value_name = "FILE")]
    nats_nkey: Option<PathBuf>,
    /// NATS credentials file (.creds: user JWT and seed).
    #[arg(long, global = true, env = "SLUICE_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<PathBuf>,
    /// CA certificates (PEM) to verify the server with; requires TLS.
    #[arg(long, global = true, env = "SLUICE_NATS_TLS_CA", value_name = "FILE")]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), with --nats-tls-key.
    #[arg(long, global = true, env = "SLUICE_NATS_TLS_CERT", value_name = "FILE")]
    nats_tls_cert: Option<PathBuf>,
    /// Client certificate's private key (PEM).
    #[arg(long, global = true, env = "SLUICE_NATS_TLS_KEY", value_name = "FILE")]
    nats_tls_key: Option<PathBuf>,
    /// Subject prefix for replies to this connection. Default: the role's (`sluice worker`:
    /// _INBOX_worker_<pool>; `sluice coordinator`: _INBOX_coordinator; other commands: that
    /// of --nats-identity or --nats-user, if given), else _INBOX.
    #[arg(long, global = true, env = "SLUICE_NATS_INBOX_PREFIX", value_name = "PREFIX")]
    nats_inbox_prefix: Option<String>,
    /// Who this connection is among Sluice's NATS roles: a submitter's identity, under which
    /// control requests go out (sluice.control.<identity>.>). Default: --nats-user, else
    /// `anonymous`. Needed with --nats-nkey or --nats-creds, which name no user.
    #[arg(long, global = true, env = "SLUICE_NATS_IDENTITY", value_name = "NAME")]
    nats_identity: Option<String>,
}

impl NatsArgs {
    /// The options, with a password or token from the environment unless a file is given.
    fn options(&self) -> output::Nats {
        use sluice_client::connect::{NatsOptions, Secret, flags};
        let from_env = |var: &'static str| {
            std::env::var(var).ok().filter(|value| !value.is_empty()).map(|value| Secret::Env { var, value })
        };
        let options = NatsOptions {
            url: self.nats_url.clone(),
            user: self.nats_user.clone().filter(|user| !user.is_empty()),
            password: self.nats_password_file.clone().map(Secret::File).or_else(|| from_env(flags::PASSWORD_ENV)),
            token: self.nats_token_file.clone().map(Secret::File).or_else(|| from_env(flags::TOKEN_ENV)),
            nkey_file: self.nats_nkey.clone(),
            creds_file: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone().filter(|prefix| !prefix.is_empty()),
        };
        let identity = self.nats_identity.clone().or_else(|| options.user.clone()).filter(|name| !name.is_empty());
        output::Nats { options, identity }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a local stack (nats-server, coordinator, worker), submit workflows, show progress.
    Dev(commands::dev::DevArgs),
    /// Run the coordinator (advances every run's DAG).
    Coordinator(commands::serve::CoordinatorArgs),
    /// Run a worker for one pool with the stock job kinds (exec, noop, sleep, fail).
    Worker(commands::serve::WorkerArgs),
    /// Serve the HTTP API (/api/v1) for people with tokens, acting through control requests.
    Server(commands::server::ServerArgs),
    /// Submit a workflow; prints the run id.
    Submit(commands::submit::SubmitArgs),
    /// Show a run and its jobs.
    Status(commands::status::StatusArgs),
    /// List runs, newest first.
    Runs(commands::runs::RunsArgs),
    /// Print the log lines of a run's jobs; --follow prints new ones until the run ends.
    Logs(commands::logs::LogsArgs),
    /// Workflows this server knows by name (to start from the web UI): apply, list, show, delete.
    #[command(subcommand)]
    Workflow(commands::workflow::WorkflowCommand),
    /// Workflows that run by themselves: apply, list, pause, resume, delete, trigger.
    #[command(subcommand)]
    Schedule(commands::schedule::ScheduleCommand),
    /// Run a workflow once per window over a date range (or: list, status ID, cancel ID).
    Backfill(commands::backfill::BackfillArgs),
    /// Which jobs ran for which windows: a grid of windows × jobs with their final states.
    Audit(commands::audit::AuditArgs),
    /// Cancel a run: queued jobs never start, running jobs are told to stop.
    Cancel {
        /// The run to cancel.
        run: String,
    },
    /// Run again the failed, skipped or cancelled jobs of a finished run (or one job).
    Retry(commands::control::RetryArgs),
    /// End a job by hand, as if it had succeeded or been skipped: what needs it proceeds.
    Mark(commands::control::MarkArgs),
    /// Inspect, replay and purge dead letters.
    #[command(subcommand)]
    Dlq(commands::dlq::DlqCommand),
    /// Declare pools and list them: pool apply NAME, pool list.
    #[command(subcommand)]
    Pool(commands::pool::PoolCommand),
    /// The live workers and coordinators.
    Workers,
    /// Kubernetes manifests: deploy render, deploy apply --overlay dev|prod.
    #[command(subcommand)]
    Deploy(commands::deploy::DeployCommand),
    /// Check a workflow file without running it.
    Validate { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.output;
    // Every HTTP client in the process (the OTLP exporter, notifications) is reqwest on rustls
    // without a crypto provider of its own: ring, the one NATS's TLS uses, for all of them.
    sluice_coordinator::notify::install_tls_provider();
    // The coordinator is one event loop and `sluice worker` runs only I/O-bound stock kinds:
    // on one thread they skip the cross-thread wake-ups that dominate their CPU profile
    // (docs/performance.md). Everything else may use every core.
    let single_thread = matches!(cli.command, Command::Coordinator(_) | Command::Worker(_));
    let mut builder = if single_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            return output::report(&CliError::failed(format!("cannot start the async runtime: {error}")), format);
        }
    };
    let result = runtime.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(error) => output::report(&error, format),
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    output::set_nats(cli.nats.options());
    let url = cli.nats.nats_url.as_str();
    match cli.command {
        Command::Dev(args) => {
            output::init_logging("warn");
            commands::dev::run(args).await
        }
        Command::Coordinator(args) => {
            output::init_logging("info");
            commands::serve::coordinator(url, args).await
        }
        Command::Worker(args) => {
            output::init_logging("info");
            commands::serve::worker(url, args).await
        }
        Command::Server(args) => {
            output::init_logging("info");
            commands::server::run(url, args).await
        }
        Command::Submit(args) => {
            output::init_logging("warn");
            commands::submit::run(url, args, cli.output).await
        }
        Command::Status(args) => {
            output::init_logging("warn");
            commands::status::run(url, args, cli.output).await
        }
        Command::Runs(args) => {
            output::init_logging("warn");
            commands::runs::run(url, args, cli.output).await
        }
        Command::Logs(args) => {
            output::init_logging("warn");
            commands::logs::run(url, args, cli.output).await
        }
        Command::Workflow(command) => {
            output::init_logging("warn");
            commands::workflow::run(url, command, cli.output).await
        }
        Command::Schedule(command) => {
            output::init_logging("warn");
            commands::schedule::run(url, command, cli.output).await
        }
        Command::Backfill(args) => {
            output::init_logging("warn");
            commands::backfill::run(url, args, cli.output).await
        }
        Command::Audit(args) => {
            output::init_logging("warn");
            commands::audit::run(url, args, cli.output).await
        }
        Command::Cancel { run } => {
            output::init_logging("warn");
            commands::control::cancel(url, &run, cli.output).await
        }
        Command::Retry(args) => {
            output::init_logging("warn");
            commands::control::retry(url, args, cli.output).await
        }
        Command::Mark(args) => {
            output::init_logging("warn");
            commands::control::mark(url, args, cli.output).await
        }
        Command::Dlq(command) => {
            output::init_logging("warn");
            commands::dlq::run(url, command, cli.output).await
        }
        Command::Pool(command) => {
            output::init_logging("warn");
            commands::pool::run(url, command, cli.output).await
        }
        Command::Workers => {
            output::init_logging("warn");
            commands::pool::workers(url, cli.output).await
        }
        Command::Deploy(command) => {
            output::init_logging("warn");
            commands::deploy::run(command, cli.output).await
        }
        Command::Validate { file } => commands::validate::run(&file, cli.output),
    }
}
