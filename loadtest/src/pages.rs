//! W7: the web UI and the HTTP API at scale (issue 16). On W6's store (100,000 finished runs)
//! plus one run of 10,000 spawned children, `sluice server` answers the runs list, a year of
//! a workflow's audit grid and the big run's page; each is asked for [`REQUESTS`] times over
//! loopback HTTP, timed from the request's first byte to the answer's last.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_testkit::http::{exchange, request};

/// Times each page is asked for (after a few untimed ones).
pub const REQUESTS: usize = 50;
const WARM_UP: usize = 3;

/// What each row is called (each gated at 300 ms in `report`'s targets).
pub const METRICS: [&str; 7] = [
    "API runs list p95",
    "runs page p95",
    "API audit grid, a year p95",
    "audit page, a year p95",
    "API run of 10,000 children p95",
    "run page of 10,000 children p95",
    "fan-out parent's page p95",
];

/// p95 of each answer, in seconds.
pub struct PageLatencies {
    pub rows: Vec<(&'static str, f64)>,
}

/// The paths W7 times, by what they are: `fan_out` is the run with the 10,000 children,
/// `workflow` one of W6's (a run a day from 2000-01-01).
pub fn paths(fan_out: &str, workflow: &str) -> Vec<(&'static str, String)> {
    vec![
        (METRICS[0], "/api/v1/runs?limit=50".to_owned()),
        (METRICS[1], "/runs".to_owned()),
        (METRICS[2], format!("/api/v1/workflows/{workflow}/audit?from=2000-01-01&to=2000-12-31")),
        (METRICS[3], format!("/workflows/{workflow}/audit?to=2000-12-31&days=366")),
        (METRICS[4], format!("/api/v1/runs/{fan_out}")),
        (METRICS[5], format!("/runs/{fan_out}")),
        (METRICS[6], format!("/runs/{fan_out}/jobs/root")),
    ]
}

/// Asks `address` for each path, checks it answers 200 with what it should hold, and
/// returns each one's p95.
pub async fn w7(address: &str, paths: Vec<(&'static str, String)>) -> Result<PageLatencies> {
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || {
        // Pages need a session: a server without tokens signs `/login` in as `local` at once.
        let (_, headers, _) = exchange(&address, "GET", "/login", &[], b"").context("GET /login")?;
        let cookie = headers
            .iter()
            .filter(|(name, _)| name == "set-cookie")
            .find_map(|(_, value)| value.split(';').next().filter(|pair| pair.starts_with("sluice_session=")))
            .context("GET /login set no session cookie")?
            .to_owned();
        let mut rows = Vec::new();
        for (what, path) in paths {
            let mut seconds = Vec::with_capacity(REQUESTS);
            for index in 0..WARM_UP + REQUESTS {
                let started = Instant::now();
                let (status, body) = request(&address, "GET", &path, &[("Cookie", &cookie)], b"")
                    .with_context(|| format!("GET {path}"))?;
                let took = started.elapsed();
                if status != 200 {
                    bail!("GET {path} answered {status}: {}", body.chars().take(300).collect::<String>());
                }
                if body.len() < 200 {
                    bail!("GET {path} answered only {body:?}");
                }
                if index >= WARM_UP {
                    seconds.push(took.as_secs_f64());
                }
            }
            rows.push((what, crate::workloads::quantile(&mut seconds, 0.95)));
        }
        Ok(PageLatencies { rows })
    })
    .await
    .context("W7's requests")?
}

/// How long W7 waits for the server to listen.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
