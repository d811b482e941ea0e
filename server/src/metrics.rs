//! The server's Prometheus metrics (`sluice_http_…`): requests by route template, method and
//! status, and how long they took by route. Labels are bounded: a route is the template it
//! matched (`/api/v1/runs/{id}`), never the path asked for.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the request duration histogram, in seconds: a millisecond to a minute
/// (an action waits up to 30 s for its answer).
pub const REQUEST_DURATION_BUCKETS_S: [f64; 12] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0];

/// Every sample name the server's metrics expose in Prometheus text.
pub const SERIES: [&str; 4] = [
    "sluice_http_requests_total",
    "sluice_http_request_duration_seconds_bucket",
    "sluice_http_request_duration_seconds_sum",
    "sluice_http_request_duration_seconds_count",
];

/// The route label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// The server's metrics. Cheap to clone; unregistered by default (counted, never served).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

fn duration_histogram() -> Histogram {
    Histogram::new(REQUEST_DURATION_BUCKETS_S)
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self { requests: Family::default(), duration: Family::new_with_constructor(duration_histogram) }
    }
}

impl HttpMetrics {
    /// New metrics, registered in `registry` under their `sluice_http_` names.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "sluice_http_requests",
            "Requests the server answered (UI pages, API calls, assets), by route template, method and status",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "sluice_http_request_duration",
            "Time from a request's arrival to its answer's head, by route template (a server-sent event stream: until it opens)",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        metrics
    }

    fn observe(&self, route: String, method: &'static str, status: u16, seconds: f64) {
        self.duration.get_or_create(&RouteLabels { route: route.clone() }).observe(seconds);
        self.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    }
}

/// A method as a label: the ones the server serves, else `other` (bounded).
fn method_label(method: &axum::http::Method) -> &'static str {
    match *method {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Middleware: counts and times every request.
pub async fn track(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics.observe(route, method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_listed_are_the_ones_registered() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        metrics.observe("/api/v1/runs".into(), "GET", 200, 0.002);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        assert_eq!(names, SERIES.into_iter().collect(), "{text}");
        assert!(
            text.contains(r#"sluice_http_requests_total{route="/api/v1/runs",method="GET",status="200"} 1"#),
            "{text}"
        );
    }
}
