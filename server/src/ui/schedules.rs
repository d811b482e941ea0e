//! The schedules page: each schedule's cron, zone and window, its next five fire times,
//! its last run, and pause / resume / run now.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use sluice_proto::ControlAction;

use super::pages::{Banner, banner};
use super::{Chrome, CsrfForm, PageError, Session, render};
use crate::Server;
use crate::api::{Answer, act, schedule_request, schedules};

/// Fire times each schedule shows.
const NEXT_TICKS: usize = 5;

struct Row {
    name: String,
    cron: String,
    zone: String,
    window: String,
    catchup: String,
    paused: bool,
    next: Vec<String>,
    last_tick: String,
    last_run: Option<String>,
    skipped: u64,
}

#[derive(Template)]
#[template(path = "schedules.html")]
struct SchedulesPage {
    chrome: Chrome,
    rows: Vec<Row>,
    banner: Option<Banner>,
}

pub async fn list(
    State(server): State<Server>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let now = Utc::now();
    let rows = schedules(&server.js)
        .await?
        .into_iter()
        .map(|(record, schedule)| Row {
            next: sluice_client::json::next_ticks(&record, &schedule, now, NEXT_TICKS)
                .into_iter()
                .map(|tick| tick.with_timezone(&schedule.zone).format("%Y-%m-%d %H:%M %Z").to_string())
                .collect(),
            zone: schedule.zone.name().to_owned(),
            catchup: schedule.catchup.as_str().to_owned(),
            last_tick: chrome.clock.maybe(record.last_tick),
            last_run: record.last_run.map(|id| id.to_string()),
            skipped: record.skipped_ticks,
            name: record.name,
            cron: record.schedule.cron,
            window: record.schedule.window,
            paused: record.paused,
        })
        .collect();
    let banner = banner(&server, params.get("request").map(String::as_str)).await?;
    Ok(render(&SchedulesPage { chrome, rows, banner }))
}

/// `POST /schedules/{name}/pause|resume|trigger`: a trigger lands on its run's page, the
/// others back on the schedules; both then show the coordinator's answer.
pub async fn change(
    State(server): State<Server>,
    session: Session,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    session.may_act(&server, &form.csrf)?;
    let request = schedule_request(&name, &action)?;
    let run = match request.action {
        ControlAction::ScheduleTrigger { .. } => request.run_id,
        _ => None,
    };
    let answer = act(&server, &session.user, request).await?;
    let request_id = answer.request_id();
    if let Answer::Outcome(outcome) = &answer
        && outcome.outcome == sluice_proto::Outcome::Refused
    {
        return Ok(Redirect::to(&format!("/schedules?request={request_id}")).into_response());
    }
    let page = match run {
        Some(run) => format!("/runs/{run}?request={request_id}"),
        None => format!("/schedules?request={request_id}"),
    };
    Ok(Redirect::to(&page).into_response())
}
