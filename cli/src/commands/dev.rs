//! `sluice dev`: a whole local stack in one command. Starts a nats-server (JetStream, store
//! in `.sluice/dev/`), a coordinator and a worker, submits the given workflows, shows their
//! progress, then keeps the stack up for other `sluice` commands until Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use async_nats::jetstream;
use sluice_local_nats::{NatsServer, Options};
use sluice_worker::{Registry, WorkerConfig};

use crate::commands::serve::on_signal;
use crate::commands::status::view_text;
use crate::commands::submit::{publish, resolve_window};
use crate::follow::{Finished, follow};
use crate::output::{CliError, Format};

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
}

pub async fn run(args: DevArgs) -> Result<ExitCode, CliError> {
    // Validate everything before starting anything.
    super::serve::check_worker_flags(args.concurrency)?;
    let workflows = args.files.iter().map(|file| super::read_workflow(file)).collect::<Result<Vec<_>, _>>()?;
    let mut server = NatsServer::start(Options {
        port: Some(args.port),
        monitor_port: None,
        store_dir: Some(args.data_dir.clone()),
    })
    .map_err(|error| {
        CliError::nats(format!(
            "starting nats-server on 127.0.0.1:{}: {error} (is port {} taken? try --port)",
            args.port, args.port
        ))
    })?;
    let url = server.url();
    println!("nats-server   {url}  (data in {})", args.data_dir.display());
    let client = crate::output::connect(&url).await?;
    let js = jetstream::new(client.clone());
    sluice_coordinator::topology::ensure(&js).await?;
    let shutdown = on_signal();
    let coordinator = tokio::spawn(sluice_coordinator::service::run(client.clone(), shutdown.clone()));
    let mut config = WorkerConfig::new(sluice_proto::spec::DEFAULT_POOL);
    config.concurrency = args.concurrency;
    config.prefetch = sluice_worker::runtime::default_prefetch(args.concurrency);
    config.shutdown_grace = Duration::from_secs(5);
    let worker = tokio::spawn(sluice_worker::runtime::run(
        client.clone(),
        Registry::with_stock_kinds(),
        config,
        shutdown.clone(),
    ));
    println!(
        "coordinator   running\nworker        pool default, {} slots, kinds exec noop sleep fail\n",
        args.concurrency
    );

    // `dev` declares the pools its workflows name (elsewhere that is `sluice pool apply`).
    let pools: std::collections::BTreeSet<String> =
        workflows.iter().flat_map(|(spec, _)| spec.jobs.values().map(|job| spec.pool_of(job))).collect();
    for pool in pools.into_iter().filter(|pool| pool != sluice_proto::spec::DEFAULT_POOL) {
        let settings = sluice_proto::PoolSettings { name: pool.clone(), ..Default::default() };
        let request = sluice_proto::ControlRequest::new(sluice_proto::ControlAction::PoolApply(settings), None, "");
        crate::output::applied(crate::output::ask(&js, request).await?)?;
        println!("declared pool {pool} (no worker of `dev` serves it: start one with `sluice worker --pool {pool}`)");
    }

    let mut ids = Vec::new();
    for ((spec, yaml), file) in workflows.into_iter().zip(&args.files) {
        let window = resolve_window(&spec, None)?;
        let id = publish(&js, yaml, window, Default::default(), None).await?.run_id;
        println!("submitted {} as run {id} (window {window})", file.display());
        ids.push(id);
    }
    let mut all_succeeded = true;
    if !ids.is_empty() {
        let outcome = tokio::select! {
            outcome = follow(&js, &ids, Format::Human) => Some(outcome?),
            _ = shutdown.cancelled() => None,
        };
        for finished in outcome.iter().flatten() {
            all_succeeded &= finished.succeeded();
            match finished {
                Finished::Run(view) => println!("\n{}", view_text(view)),
                Finished::Rejected(id, rejection) => {
                    println!("\nrun {id} was rejected: {}", rejection.reason)
                }
            }
        }
    }
    if !args.exit_when_done && !shutdown.is_cancelled() {
        println!(
            "\nThe stack stays up. In another terminal:\n  export SLUICE_NATS_URL={url}\n  ./target/debug/sluice runs\n  ./target/debug/sluice submit examples/workflows/etl-daily.yaml --window 2024-03-01 --wait\n  ./target/debug/sluice logs RUN_ID --follow\nCtrl-C stops everything."
        );
        shutdown.cancelled().await;
    }
    shutdown.cancel();
    println!("stopping…");
    let _ = worker.await;
    let _ = coordinator.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), client.flush()).await;
    drop(client);
    server.stop();
    println!("stopped");
    Ok(if all_succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
