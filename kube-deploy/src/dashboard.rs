//! The Grafana dashboard of `deploy/` (throughput, latency, lag per pool, failures, leader),
//! built as data and shipped in a ConfigMap labelled `grafana_dashboard: "1"`, which
//! Grafana's dashboard sidecar (kube-prometheus-stack's default) loads. Its queries name
//! only metrics the coordinator and the worker register: `tests/render.rs` checks each one
//! against their registries.

use serde_json::{Value, json};

/// The dashboard's uid: links to it stay valid across re-renders.
pub const DASHBOARD_UID: &str = "sluice-overview";

/// Grid width of a panel (Grafana's grid is 24 wide).
const PANEL_WIDTH: u32 = 12;
const PANEL_HEIGHT: u32 = 8;

/// One time-series panel: `title`, its unit (Grafana's unit ids) and its queries, each a
/// PromQL expression and its legend.
struct Panel {
    title: &'static str,
    unit: &'static str,
    queries: &'static [(&'static str, &'static str)],
}

const PANELS: &[Panel] = &[
    Panel {
        title: "Throughput: jobs and runs finished",
        unit: "ops",
        queries: &[
            ("sum by (pool, state) (rate(sluice_jobs_finished_total[5m]))", "jobs {{pool}} {{state}}"),
            ("sum by (state) (rate(sluice_runs_finished_total[5m]))", "runs {{state}}"),
        ],
    },
    Panel {
        title: "Dispatch latency (queued → started), p50 and p95",
        unit: "s",
        queries: &[
            (
                "histogram_quantile(0.5, sum by (le, pool) (rate(sluice_dispatch_latency_seconds_bucket[5m])))",
                "p50 {{pool}}",
            ),
            (
                "histogram_quantile(0.95, sum by (le, pool) (rate(sluice_dispatch_latency_seconds_bucket[5m])))",
                "p95 {{pool}}",
            ),
        ],
    },
    Panel {
        title: "Lag per pool: waiting and unacknowledged jobs",
        unit: "short",
        queries: &[
            ("sum by (pool) (sluice_pool_queue_lag)", "waiting {{pool}}"),
            ("sum by (pool) (sluice_pool_ack_pending)", "taken, not settled {{pool}}"),
        ],
    },
    Panel {
        title: "Failures: failed attempts, dead letters, failed runs",
        unit: "ops",
        queries: &[
            (
                "sum by (pool, outcome) (rate(sluice_job_attempts_total{outcome=~\"retrying|failed\"}[5m]))",
                "attempts {{pool}} {{outcome}}",
            ),
            ("sum by (pool) (rate(sluice_dead_letters_total[5m]))", "dead letters {{pool}}"),
            ("sum(rate(sluice_runs_finished_total{state=\"failed\"}[5m]))", "failed runs"),
            (
                "sum by (event) (rate(sluice_notification_attempts_total{result=\"failed\"}[5m]))",
                "notices given up {{event}}",
            ),
        ],
    },
    Panel {
        title: "Run duration p95",
        unit: "s",
        queries: &[(
            "histogram_quantile(0.95, sum by (le, state) (rate(sluice_run_duration_seconds_bucket[15m])))",
            "p95 {{state}}",
        )],
    },
    Panel {
        title: "Leader and leader changes",
        unit: "short",
        queries: &[
            ("sum(sluice_coordinator_leader)", "coordinators leading"),
            ("sum(increase(sluice_coordinator_terms_total[1h]))", "terms begun (1h)"),
        ],
    },
    Panel {
        title: "Worker slots busy",
        unit: "percentunit",
        queries: &[("sum by (pool) (sluice_worker_slots_busy) / sum by (pool) (sluice_worker_slots)", "busy {{pool}}")],
    },
    Panel {
        title: "Engine apply and KV write, p99",
        unit: "s",
        queries: &[
            ("histogram_quantile(0.99, sum by (le) (rate(sluice_engine_apply_seconds_bucket[5m])))", "engine apply"),
            ("histogram_quantile(0.99, sum by (le) (rate(sluice_kv_write_seconds_bucket[5m])))", "KV write batch"),
        ],
    },
];

/// Every PromQL expression of the dashboard.
pub fn queries() -> impl Iterator<Item = &'static str> {
    PANELS.iter().flat_map(|panel| panel.queries.iter().map(|(expr, _)| *expr))
}

/// The dashboard's JSON model (schema 39, a Prometheus data source chosen by variable).
pub fn dashboard() -> Value {
    let panels: Vec<Value> = PANELS
        .iter()
        .zip(0u32..)
        .map(|(panel, index)| {
            let targets: Vec<Value> = panel
                .queries
                .iter()
                .zip(b'A'..)
                .map(|((expr, legend), ref_id)| {
                    json!({
                        "refId": char::from(ref_id).to_string(),
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "expr": expr,
                        "legendFormat": legend,
                    })
                })
                .collect();
            json!({
                "id": index + 1,
                "type": "timeseries",
                "title": panel.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": (index % 2) * PANEL_WIDTH, "y": (index / 2) * PANEL_HEIGHT},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "targets": targets,
            })
        })
        .collect();
    json!({
        "uid": DASHBOARD_UID,
        "title": "Sluice",
        "tags": ["sluice"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
        }]},
        "panels": panels,
    })
}
