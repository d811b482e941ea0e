//! The backfills pages: the list and a form, the form's preview (every window, and whether
//! it runs or is skipped by the rerun mode), one backfill's progress (the page looks again
//! while it runs), and cancel.

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sluice_proto::{ControlAction, ControlRequest, Rerun, RunState};

use super::pages::{Banner, banner};
use super::{Chrome, CsrfForm, PageError, RequestQuery, Session, render, short};
use crate::Server;
use crate::api::{Answer, BackfillAsk, act, backfill};

const RERUNS: [(&str, &str); 3] = [
    ("missing", "missing: windows without a successful run"),
    ("failed", "failed: windows whose latest run failed"),
    ("all", "all windows"),
];

struct Row {
    id: String,
    short: String,
    workflow: String,
    state: String,
    range: String,
    progress: String,
    created: String,
}

#[derive(Template)]
#[template(path = "backfills.html")]
struct ListPage {
    chrome: Chrome,
    form: BackfillAsk,
    reruns: [(&'static str, &'static str); 3],
    rows: Vec<Row>,
}

fn progress(record: &sluice_proto::BackfillRecord) -> String {
    let counts = sluice_client::json::backfill_counts(record);
    let number = |key: &str| counts[key].as_u64().unwrap_or(0);
    format!(
        "{} of {}: {} succeeded, {} failed, {} running, {} skipped, {} to go",
        number("succeeded") + number("failed") + number("cancelled") + number("skipped"),
        number("total"),
        number("succeeded"),
        number("failed"),
        number("running"),
        number("skipped"),
        number("pending"),
    )
}

fn state_of(record: &sluice_proto::BackfillRecord) -> &'static str {
    if record.finished_at.is_none() { "running" } else { record.state.as_str() }
}

pub async fn list(State(server): State<Server>, session: Session) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let records = match sluice_client::Stores::open(&server.js).await? {
        Some(stores) => stores.backfills().await?,
        None => Vec::new(),
    };
    let rows = records
        .iter()
        .map(|record| Row {
            id: record.id.to_string(),
            short: short(&record.id),
            workflow: record.workflow.clone(),
            state: state_of(record).into(),
            range: format!("{} to {} every {}", record.from, record.to, record.interval),
            progress: progress(record),
            created: chrome.clock.show(record.created_at),
        })
        .collect();
    let form = BackfillAsk::default();
    Ok(render(&ListPage { chrome, form, reruns: RERUNS, rows }))
}

#[derive(Template)]
#[template(path = "backfill_new.html")]
struct PreviewPage {
    chrome: Chrome,
    form: BackfillAsk,
    windows: Vec<(String, Option<String>)>,
    will_run: usize,
}

/// `GET /backfills/new?…`: the windows it would make, before anything is created.
pub async fn preview(
    State(server): State<Server>,
    session: Session,
    query: Result<Query<BackfillAsk>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let Query(ask) = query.map_err(|rejection| PageError::new(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    let plan = ask.plan(&server.js).await?;
    let windows: Vec<(String, Option<String>)> =
        plan.windows.iter().map(|window| (window.window.to_string(), window.skip.clone())).collect();
    let will_run = windows.iter().filter(|(_, skip)| skip.is_none()).count();
    Ok(render(&PreviewPage { chrome, form: ask, windows, will_run }))
}

/// The preview's form: its fields and the CSRF token (not flattened: form values are all
/// text, which a flattened number cannot be read from).
#[derive(Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    csrf: String,
    workflow: String,
    from: String,
    to: String,
    interval: String,
    max_parallel_runs: u32,
    rerun: Rerun,
}

/// `POST /backfills`: creates it and lands on its page.
pub async fn create(
    State(server): State<Server>,
    session: Session,
    Form(form): Form<CreateForm>,
) -> Result<Response, PageError> {
    session.may_act(&server, &form.csrf)?;
    let ask = BackfillAsk {
        workflow: form.workflow,
        from: form.from,
        to: form.to,
        interval: form.interval,
        max_parallel_runs: form.max_parallel_runs,
        rerun: form.rerun,
    };
    let plan = ask.plan(&server.js).await?;
    let id = plan.request.id;
    let request = ControlRequest::new(ControlAction::BackfillCreate(plan.request), None, "");
    let answer = act(&server, &session.user, request).await?;
    if let Answer::Outcome(outcome) = &answer
        && outcome.outcome == sluice_proto::Outcome::Refused
    {
        return Err(PageError::new(StatusCode::CONFLICT, format!("the backfill was refused: {}", outcome.reason)));
    }
    let request_id = answer.request_id();
    Ok(Redirect::to(&format!("/backfills/{id}?request={request_id}")).into_response())
}

struct WindowRow {
    window: String,
    state: String,
    run: Option<String>,
}

struct Facts {
    id: String,
    short: String,
    workflow: String,
    state: String,
    finished: bool,
    range: String,
    rerun: &'static str,
    max_parallel_runs: u32,
    progress: String,
    created: String,
    finished_at: String,
    windows: Vec<WindowRow>,
}

#[derive(Template)]
#[template(path = "backfill.html")]
struct BackfillPage {
    chrome: Chrome,
    backfill: Facts,
    banner: Option<Banner>,
}

pub async fn show(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<RequestQuery>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let record = backfill(&server, &id).await?;
    let submitted = record.next as usize;
    let windows = record
        .windows
        .iter()
        .enumerate()
        .map(|(index, window)| {
            let started = index < submitted && window.skip.is_none();
            WindowRow {
                window: window.window.to_string(),
                state: match (&window.skip, window.state) {
                    (Some(_), _) => "skipped".into(),
                    (None, Some(state)) => state.as_str().into(),
                    (None, None) if started => RunState::Running.as_str().into(),
                    (None, None) => "pending".into(),
                },
                run: started.then(|| window.run_id.to_string()),
            }
        })
        .collect();
    let facts = Facts {
        id: record.id.to_string(),
        short: short(&record.id),
        workflow: record.workflow.clone(),
        state: state_of(&record).into(),
        finished: record.finished_at.is_some(),
        range: format!("{} to {} every {}", record.from, record.to, record.interval),
        rerun: record.rerun.as_str(),
        max_parallel_runs: record.max_parallel_runs,
        progress: progress(&record),
        created: chrome.clock.show(record.created_at),
        finished_at: chrome.clock.maybe(record.finished_at),
        windows,
    };
    let banner = banner(&server, query.request.as_deref()).await?;
    Ok(render(&BackfillPage { chrome, backfill: facts, banner }))
}

pub async fn cancel(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    session.may_act(&server, &form.csrf)?;
    let record = backfill(&server, &id).await?;
    let request = ControlRequest::new(ControlAction::BackfillCancel { id: record.id }, None, "");
    let request_id = act(&server, &session.user, request).await?.request_id();
    Ok(Redirect::to(&format!("/backfills/{}?request={request_id}", record.id)).into_response())
}
