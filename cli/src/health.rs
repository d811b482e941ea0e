//! `--metrics-listen ADDR`: the HTTP listener of `sluice coordinator`, `sluice worker` and
//! `sluice dev`, for Kubernetes probes and Prometheus.
//!
//! - `GET /metrics`: the process's metrics in Prometheus text format 0.0.4 (docs/operations.md
//!   lists them).
//! - `GET /healthz`: 200 while the process's service loop runs (it answers on the same
//!   single-threaded runtime as the loop, so a stuck loop answers nothing); 503 once it
//!   has stopped.
//! - `GET /readyz`: 200 when connected to NATS and serving its role (a coordinator that
//!   leads or stands by; a worker whose pool consumer is open and that is announced), 503
//!   otherwise. Both answer a small JSON object saying why.
//!
//! The coordinator and worker libraries only publish their phase on a `tokio::sync::watch`
//! channel and count into `prometheus-client` handles registered in one [`Registry`]; the
//! HTTP stack (axum) lives here alone. A route is one `.route(..)` in [`router`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::output::CliError;

/// What a process is doing, as the probes report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phase {
    /// Its name in the answers (`standby`, `leading`, `opening`, `ready`, ...).
    pub name: &'static str,
    /// Serving its role (given a NATS connection).
    pub ready: bool,
    /// The service loop has returned: the process is on its way out.
    pub stopped: bool,
}

/// Reads a process's phase: the coordinator's or the worker's watch channel.
pub type PhaseSource = Arc<dyn Fn() -> Phase + Send + Sync>;

/// What the listener looks at: the NATS connection (once made), the phase, the metrics.
#[derive(Clone)]
pub struct Probes {
    /// Set once connected; until then the process is waiting for NATS.
    pub nats: Arc<OnceLock<async_nats::Client>>,
    pub phase: PhaseSource,
    /// Every metric of the process, registered before the listener starts.
    pub metrics: Arc<Registry>,
}

impl Probes {
    pub fn new(phase: PhaseSource, metrics: Registry) -> Self {
        Self { nats: Arc::new(OnceLock::new()), phase, metrics: Arc::new(metrics) }
    }
}

/// The content type of Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The NATS connection's state, as the probes name it.
fn nats_state(nats: &OnceLock<async_nats::Client>) -> &'static str {
    match nats.get().map(async_nats::Client::connection_state) {
        None => "connecting",
        Some(async_nats::connection::State::Connected) => "connected",
        Some(async_nats::connection::State::Pending) => "reconnecting",
        Some(async_nats::connection::State::Disconnected) => "disconnected",
    }
}

/// The answer to `/readyz`: ready only when connected and serving the role.
pub fn readiness(nats: &str, phase: &Phase) -> (StatusCode, serde_json::Value) {
    let ready = nats == "connected" && phase.ready && !phase.stopped;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, json!({"ready": ready, "nats": nats, "phase": phase.name}))
}

/// The answer to `/healthz`: alive until the service loop has returned.
pub fn liveness(phase: &Phase) -> (StatusCode, serde_json::Value) {
    let status = if phase.stopped { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, json!({"alive": !phase.stopped, "phase": phase.name}))
}

async fn healthz(State(probes): State<Probes>) -> Response {
    let (status, body) = liveness(&(probes.phase)());
    (status, axum::Json(body)).into_response()
}

async fn readyz(State(probes): State<Probes>) -> Response {
    let (status, body) = readiness(nats_state(&probes.nats), &(probes.phase)());
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(probes): State<Probes>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &probes.metrics) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot encode the metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics\n").into_response()
        }
    }
}

/// Every route of the listener.
pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

/// `--metrics-listen`'s value: a socket address such as `0.0.0.0:9090` or `127.0.0.1:0`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, CliError> {
    text.trim().parse().map_err(|_| {
        CliError::usage(format!(
            "--metrics-listen must be an address and port such as 0.0.0.0:9090 or [::1]:9090, not `{text}`"
        ))
    })
}

/// Binds `addr` and serves the probes until `stop` is cancelled. Logs the bound address
/// (`metrics listening`, with `addr`), which tells a port chosen by the system (`:0`).
pub async fn serve(addr: SocketAddr, probes: Probes, stop: CancellationToken) -> Result<SocketAddr, CliError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| CliError::usage(format!("--metrics-listen {addr}: cannot listen there: {error}")))?;
    let bound = listener.local_addr().map_err(|error| CliError::failed(format!("--metrics-listen {addr}: {error}")))?;
    tracing::info!(addr = %bound, "metrics listening: /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        let served = axum::serve(listener, router(probes)).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "the metrics listener failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &'static str, ready: bool, stopped: bool) -> Phase {
        Phase { name, ready, stopped }
    }

    #[test]
    fn ready_needs_a_connection_and_the_role_served() {
        assert_eq!(readiness("connected", &phase("standby", true, false)).0, StatusCode::OK);
        assert_eq!(readiness("connected", &phase("leading", true, false)).0, StatusCode::OK);
        for nats in ["connecting", "reconnecting", "disconnected"] {
            let (status, body) = readiness(nats, &phase("leading", true, false));
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(body, json!({"ready": false, "nats": nats, "phase": "leading"}));
        }
        assert_eq!(readiness("connected", &phase("taking_over", false, false)).0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(readiness("connected", &phase("stopped", true, true)).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn alive_until_the_loop_returns() {
        assert_eq!(liveness(&phase("opening", false, false)).0, StatusCode::OK);
        assert_eq!(liveness(&phase("stopped", false, true)).0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn a_listen_address_that_does_not_parse_is_refused_naming_the_flag() {
        assert_eq!(parse_listen("127.0.0.1:9090").unwrap(), "127.0.0.1:9090".parse::<SocketAddr>().unwrap());
        assert!(parse_listen("[::1]:0").is_ok());
        for bad in ["9090", "localhost:9090", "127.0.0.1", "127.0.0.1:99999", ""] {
            let error = parse_listen(bad).unwrap_err().message;
            assert!(error.contains("--metrics-listen") && error.contains(bad), "{bad}: {error}");
        }
    }
}
