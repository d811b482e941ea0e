//! The audit grid: rows are a workflow's jobs (dependency order), columns its days, each
//! cell the job's final state in that day's latest run, days that never ran grey. Paged on
//! the server: [`DAYS_DEFAULT`] days ending at `to`, [`JOBS_PAGE`] jobs from `jobs_from`.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{Duration, NaiveDate, Utc};
use sluice_client::audit::{AuditQuery, grid, workflow_zone};

use super::pages::job_href;
use super::{Chrome, PageError, Session, encode_component, render};
use crate::Server;

/// Days one page shows, and the most it may be asked for.
const DAYS_DEFAULT: i64 = 30;
const DAYS_MAX: i64 = 366;
/// Jobs (rows) one page shows.
const JOBS_PAGE: usize = 50;

struct Header {
    day: String,
    label: String,
    title: String,
    state: &'static str,
    href: Option<String>,
}

struct Cell {
    state: String,
    title: String,
    href: Option<String>,
}

struct Row {
    job: String,
    cells: Vec<Cell>,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    workflow: String,
    zone: String,
    first_day: String,
    last_day: String,
    columns: Vec<Header>,
    rows: Vec<Row>,
    earlier: String,
    later: Option<String>,
    jobs_total: usize,
    jobs_shown: String,
    jobs_previous: Option<String>,
    jobs_next: Option<String>,
}

fn invalid(message: String) -> PageError {
    PageError::new(StatusCode::BAD_REQUEST, message)
}

pub async fn page(
    State(server): State<Server>,
    session: Session,
    Path(workflow): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    sluice_proto::spec::check_name("workflow", &workflow).map_err(invalid)?;
    let zone = workflow_zone(&server.js, &workflow).await?;
    let today = Utc::now().with_timezone(&zone).date_naive();
    let to = match params.get("to") {
        Some(text) => sluice_proto::window::day_of("to", text).map_err(invalid)?,
        None => today,
    };
    let days = match params.get("days") {
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|days| (1..=DAYS_MAX).contains(days))
            .ok_or_else(|| invalid(format!("days must be 1 to {DAYS_MAX}, not `{text}`")))?,
        None => DAYS_DEFAULT,
    };
    let jobs_from = match params.get("jobs_from") {
        Some(text) => text.parse::<usize>().map_err(|_| invalid(format!("jobs_from `{text}` is not a number")))?,
        None => 0,
    };
    let from = to - Duration::days(days - 1);
    let query =
        AuditQuery { workflow: workflow.clone(), from, to, interval: None, zone: Some(zone), missing_only: false };
    let grid = grid(&server.js, &query).await?;
    let link = |to: NaiveDate, jobs_from: usize| {
        format!("/workflows/{}/audit?to={to}&days={days}&jobs_from={jobs_from}", encode_component(&workflow))
    };
    let columns = grid
        .columns
        .iter()
        .map(|column| {
            let start = column.window.start.with_timezone(&zone);
            // A schedule's windows shorter than a day (hours) say their time too.
            let within_a_day = column.window.end - column.window.start < chrono::Duration::hours(23);
            Header {
                day: start.format("%Y-%m-%d").to_string(),
                label: start.format(if within_a_day { "%m-%d %H:%M" } else { "%m-%d" }).to_string(),
                title: format!("{}: {}", column.window, column.state()),
                state: match column.state() {
                    "succeeded" => "completed",
                    other => other,
                },
                href: column.run.as_ref().map(|run| format!("/runs/{}", run.id)),
            }
        })
        .collect();
    let shown: Vec<&String> = grid.jobs.iter().skip(jobs_from).take(JOBS_PAGE).collect();
    let rows = shown
        .iter()
        .map(|job| Row {
            job: (*job).clone(),
            cells: grid
                .columns
                .iter()
                .map(|column| match (&column.run, column.states.get(*job)) {
                    (Some(run), Some(state)) => Cell {
                        state: state.as_str().into(),
                        title: format!("{job} on {}: {}", column.window, state.as_str()),
                        href: Some(job_href(&run.id, job)),
                    },
                    (Some(_), None) => {
                        Cell { state: "blocked".into(), title: format!("{job}: not in this run"), href: None }
                    }
                    (None, _) => {
                        Cell { state: "missing".into(), title: format!("{}: never ran", column.window), href: None }
                    }
                })
                .collect(),
        })
        .collect();
    let page = AuditPage {
        zone: zone.name().to_owned(),
        first_day: from.to_string(),
        last_day: to.to_string(),
        earlier: link(from - Duration::days(1), jobs_from),
        later: (to < today).then(|| link((to + Duration::days(days)).min(today), jobs_from)),
        jobs_total: grid.jobs.len(),
        jobs_shown: if shown.is_empty() {
            "0".into()
        } else {
            format!("{}–{}", jobs_from + 1, jobs_from + shown.len())
        },
        jobs_previous: (jobs_from > 0).then(|| link(to, jobs_from.saturating_sub(JOBS_PAGE))),
        jobs_next: (jobs_from + JOBS_PAGE < grid.jobs.len()).then(|| link(to, jobs_from + JOBS_PAGE)),
        workflow,
        columns,
        rows,
        chrome,
    };
    Ok(render(&page))
}
