//! `sluice server`: the web UI and HTTP API (`sluice-server`) for people and tools without NATS
//! credentials of their own. It connects as a submitter (the global `--nats-*` flags) and
//! acts for the person whose token a request carries.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use async_nats::jetstream;

use crate::output::{self, CliError};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// Address and port to serve on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// Who may use it: lines `NAME ROLE SHA256-OF-TOKEN`, ROLE `viewer` (reads) or
    /// `operator` (also acts). Without it only a loopback --listen is accepted, and whoever
    /// reaches it acts as `local`.
    #[arg(long, value_name = "FILE")]
    pub tokens: Option<PathBuf>,
    /// The key UI session cookies are signed with (at least 32 bytes): give every replica
    /// the same file so a session works on all of them. Without it, a key of this process
    /// only (sessions end when it does).
    #[arg(long, value_name = "FILE")]
    pub session_key_file: Option<PathBuf>,
    /// A trace UI's base URL, e.g. Jaeger's http://jaeger:16686: run pages link to
    /// BASE/trace/<trace id>.
    #[arg(long, value_name = "URL")]
    pub trace_ui_url: Option<String>,
    /// Serve `/metrics` (requests by route, method and status, and their durations),
    /// `/healthz` and `/readyz` (ready while connected to NATS) on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// A trace UI's base URL, checked: http(s) with a host.
fn trace_ui_url(text: Option<&str>) -> Result<Option<Arc<str>>, CliError> {
    let Some(text) = text else { return Ok(None) };
    let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(Some(text.trim_end_matches('/').into())),
        _ => Err(CliError::usage(format!("--trace-ui-url must be an http(s) URL with a host, not `{text}`"))),
    }
}

pub async fn run(url: &str, args: ServerArgs) -> Result<ExitCode, CliError> {
    let address: std::net::SocketAddr = args.listen.trim().parse().map_err(|_| {
        CliError::usage(format!("--listen must be an address and port such as 127.0.0.1:8080, not `{}`", args.listen))
    })?;
    let tokens = args
        .tokens
        .as_deref()
        .map(sluice_server::Tokens::load)
        .transpose()
        .map_err(|error| CliError::usage(error.to_string()))?;
    if tokens.is_none() && !address.ip().is_loopback() {
        return Err(CliError::usage(format!(
            "--listen {address} is not a loopback address: without --tokens FILE anyone who reaches it could act; give --tokens, or listen on 127.0.0.1"
        )));
    }
    let session_key = match &args.session_key_file {
        Some(path) => sluice_server::SessionKey::load(path).map_err(|error| CliError::usage(error.to_string()))?,
        None => sluice_server::SessionKey::random(),
    };
    let trace_ui_url = trace_ui_url(args.trace_ui_url.as_deref())?;
    let metrics_listen = args.metrics_listen.as_deref().map(crate::health::parse_listen).transpose()?;
    let client = output::connect(url).await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(sluice_server::metrics::HttpMetrics::register(&mut registry));
    let stop = super::serve::on_signal();
    if let Some(addr) = metrics_listen {
        let serving = Arc::new(|| crate::health::Phase { name: "serving", ready: true, stopped: false });
        let probes = crate::health::Probes::new(serving, registry);
        let _ = probes.nats.set(client.clone());
        let bound = crate::health::serve(addr, probes, stop.clone()).await?;
        outln!("metrics       http://{bound}/metrics")?;
    }
    let server = sluice_server::Server {
        js: jetstream::new(client),
        tokens: tokens.map(Arc::new),
        identity: output::identity().into(),
        session_key,
        trace_ui_url,
        metrics,
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| CliError::usage(format!("--listen {address}: cannot listen there: {error}")))?;
    let bound = listener.local_addr().map_err(|error| CliError::failed(format!("--listen {address}: {error}")))?;
    outln!("ui            http://{bound}/")?;
    outln!("api           http://{bound}/api/v1  (OpenAPI: /api/v1/openapi.json)")?;
    axum::serve(listener, sluice_server::router(server))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|error| CliError::failed(format!("serving on {bound}: {error}")))?;
    Ok(ExitCode::SUCCESS)
}

/// Where `sluice dev` serves the API unless told otherwise.
pub const DEV_API_LISTEN: &str = "127.0.0.1:8080";

/// Serves the API on `address` (a loopback one, checked by the caller: there are no
/// tokens; `sluice dev`'s) until `stop`, counting its requests in `metrics`; returns the
/// address it listens on.
pub async fn spawn_local(
    address: std::net::SocketAddr,
    js: jetstream::Context,
    metrics: sluice_server::metrics::HttpMetrics,
    stop: tokio_util::sync::CancellationToken,
) -> Result<std::net::SocketAddr, CliError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| CliError::usage(format!("--api-listen {address}: cannot listen there: {error}")))?;
    let bound = listener.local_addr().map_err(|error| CliError::failed(format!("--api-listen {address}: {error}")))?;
    let server = sluice_server::Server {
        js,
        tokens: None,
        identity: output::identity().into(),
        session_key: sluice_server::SessionKey::random(),
        trace_ui_url: None,
        metrics: Arc::new(metrics),
    };
    tokio::spawn(async move {
        let served =
            axum::serve(listener, sluice_server::router(server)).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "the API listener failed");
        }
    });
    Ok(bound)
}
