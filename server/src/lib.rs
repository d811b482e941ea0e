//! sluice-server: the web UI ([`ui`]) and the HTTP API (`/api/v1`, JSON in the shapes of the
//! CLI's `-o json`, from `sluice_client::json`) that people and tools use without NATS
//! credentials of their own. Stateless: it reads through the client crate and acts through
//! control requests (decision 1), answered from their control outcomes (decision 2), so any
//! number of replicas may run (sharing `--session-key-file`). People authenticate with
//! tokens ([`auth`]), the UI with a session cookie made from one ([`session`]); every action
//! carries the person's name as `requested_by`. `sluice server` (the CLI) runs it.

pub mod api;
pub mod auth;
mod bulk;
mod error;
mod logs;
pub mod metrics;
pub mod session;
mod submit;
pub mod ui;

use std::sync::Arc;

use async_nats::jetstream;
use axum::http::{HeaderMap, Method, header};
use axum::response::{IntoResponse, Response};

pub use api::ROUTES;
pub use auth::{Role, Tokens, User};
pub use error::ApiError;
pub use session::SessionKey;

/// The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`; a test holds it
/// to [`ROUTES`].
pub const OPENAPI: &str = include_str!("../openapi.json");

/// What every request handler shares.
#[derive(Clone)]
pub struct Server {
    pub js: jetstream::Context,
    /// `None`: no tokens file; the server is on loopback and everyone is [`auth::LOCAL_USER`].
    pub tokens: Option<Arc<Tokens>>,
    /// The NATS identity the server sends control requests as (its submitter user).
    pub identity: Arc<str>,
    /// Signs UI sessions and their CSRF tokens.
    pub session_key: SessionKey,
    /// A trace UI's base URL (Jaeger's: a run links to `BASE/trace/<trace id>`).
    pub trace_ui_url: Option<Arc<str>>,
    /// What every request is counted in (registered where `--metrics-listen` serves it).
    pub metrics: Arc<metrics::HttpMetrics>,
}

/// The UI and the API on one router, with the security headers and the cross-origin
/// check on everything.
pub fn router(server: Server) -> axum::Router {
    api::router()
        .merge(ui::router())
        .layer(axum::extract::DefaultBodyLimit::max(api::ACTION_BODY_MAX_BYTES))
        .layer(axum::middleware::from_fn(same_origin_only))
        .layer(axum::middleware::from_fn(ui::security_headers))
        .layer(axum::middleware::from_fn_with_state(server.metrics.clone(), metrics::track))
        .with_state(server)
}

/// Why a request that acts is refused as cross-origin, if it is: a browser says where a
/// request comes from (`Sec-Fetch-Site`, `Origin`), so a page elsewhere cannot make a
/// visitor's browser act here, even on a loopback server without tokens. Tools that send
/// neither header (curl, the CLI, scripts) are not browsers and pass.
pub fn cross_origin(method: &Method, headers: &HeaderMap) -> Option<String> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let text = |name| headers.get(name).and_then(|value: &header::HeaderValue| value.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!("Sec-Fetch-Site is `{site}`: only this server's own pages may act"));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Some(format!("Origin `{origin}` is not this server (`{host}`)"));
        }
    }
    None
}

async fn same_origin_only(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if let Some(why) = cross_origin(request.method(), request.headers()) {
        return ApiError::forbidden(format!("cross-origin request refused: {why}")).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn a_browser_request_from_another_origin_may_not_act() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cross_origin(&Method::POST, &same), None);
        assert_eq!(cross_origin(&Method::POST, &headers(&[("host", "127.0.0.1:8080")])), None, "curl");
        let elsewhere = headers(&[("host", "127.0.0.1:8080"), ("origin", "https://evil.example")]);
        assert!(cross_origin(&Method::POST, &elsewhere).unwrap().contains("evil.example"));
        let site = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(cross_origin(&Method::POST, &site).unwrap().contains("cross-site"));
        assert_eq!(cross_origin(&Method::GET, &site), None, "reading is not acting");
    }
}
