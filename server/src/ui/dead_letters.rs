//! The dead letters pages: the list (filtered by workflow and pool), one letter with every
//! attempt's error, and replaying one or every letter shown.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sluice_client::dead_letters::DeadLetterEntry;
use sluice_proto::Outcome;

use super::pages::{AttemptRow, Banner, banner, job_href};
use super::{Chrome, PageError, Session, render};
use crate::Server;
use crate::api::{Answer, DeadLetterFilter, act, dead_letter, dead_letter_id, replay_request};

struct Row {
    id: u64,
    workflow: String,
    job: String,
    job_href: Option<String>,
    pool: String,
    attempts: usize,
    reason: String,
    dead_at: String,
    readable: bool,
}

#[derive(Template)]
#[template(path = "dlq.html")]
struct ListPage {
    chrome: Chrome,
    workflow: String,
    pool: String,
    filtered: bool,
    rows: Vec<Row>,
    banner: Option<Banner>,
    error: Option<String>,
}

fn row(entry: &DeadLetterEntry, chrome: &Chrome) -> Row {
    match &entry.letter {
        Some(letter) => Row {
            id: entry.id,
            workflow: letter.job.workflow.clone(),
            job: letter.job.job.clone(),
            job_href: Some(job_href(&letter.job.run_id, &letter.job.job)),
            pool: letter.job.pool.clone(),
            attempts: letter.attempts.len() + letter.attempts_omitted as usize,
            reason: letter.reason.clone(),
            dead_at: chrome.clock.show(letter.dead_at),
            readable: true,
        },
        None => Row {
            id: entry.id,
            workflow: "-".into(),
            job: "-".into(),
            job_href: None,
            pool: entry.pool().to_owned(),
            attempts: 0,
            reason: entry.reason.clone(),
            dead_at: "-".into(),
            readable: false,
        },
    }
}

/// Query parameters the page takes besides the filters.
const PAGE_PARAMETERS: [&str; 1] = ["request"];

async fn list_page(
    server: &Server,
    session: &Session,
    mut params: BTreeMap<String, String>,
    banner_now: Option<Banner>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(server);
    let request = params.remove("request");
    params.retain(|name, value| !value.trim().is_empty() && !PAGE_PARAMETERS.contains(&name.as_str()));
    let mut page = ListPage {
        workflow: params.get("workflow").cloned().unwrap_or_default(),
        pool: params.get("pool").cloned().unwrap_or_default(),
        filtered: !params.is_empty(),
        rows: Vec::new(),
        banner: match banner_now {
            Some(banner) => Some(banner),
            None => banner(server, request.as_deref()).await?,
        },
        error: None,
        chrome,
    };
    let filter = match DeadLetterFilter::parse(&params) {
        Ok(filter) => filter,
        Err(error) => {
            page.error = Some(error.message);
            return Ok((StatusCode::BAD_REQUEST, render(&page)).into_response());
        }
    };
    page.rows = filter.load(&server.js).await?.iter().map(|entry| row(entry, &page.chrome)).collect();
    Ok(render(&page))
}

pub async fn list(
    State(server): State<Server>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    list_page(&server, &session, params, None).await
}

struct Letter {
    id: u64,
    reason: String,
    run_id: String,
    run_href: Option<String>,
    workflow: String,
    job: String,
    kind: String,
    pool: String,
    dead_at: String,
    subject: String,
    readable: bool,
    attempts: Vec<AttemptRow>,
    attempts_omitted: u32,
}

#[derive(Template)]
#[template(path = "dead_letter.html")]
struct LetterPage {
    chrome: Chrome,
    letter: Letter,
}

pub async fn show(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let entry = dead_letter(&server, dead_letter_id(&id)?).await?;
    let clock = &chrome.clock;
    let letter = match &entry.letter {
        Some(letter) => Letter {
            id: entry.id,
            reason: letter.reason.clone(),
            run_id: letter.job.run_id.to_string(),
            run_href: Some(format!("/runs/{}", letter.job.run_id)),
            workflow: letter.job.workflow.clone(),
            job: letter.job.job.clone(),
            kind: letter.job.kind.clone(),
            pool: letter.job.pool.clone(),
            dead_at: clock.show(letter.dead_at),
            subject: entry.subject.clone(),
            readable: true,
            attempts: letter.attempts.iter().map(|attempt| AttemptRow::of(attempt, clock)).collect(),
            attempts_omitted: letter.attempts_omitted,
        },
        None => Letter {
            id: entry.id,
            reason: entry.reason.clone(),
            run_id: String::new(),
            run_href: None,
            workflow: "-".into(),
            job: "-".into(),
            kind: "-".into(),
            pool: entry.pool().to_owned(),
            dead_at: "-".into(),
            subject: entry.subject.clone(),
            readable: false,
            attempts: Vec::new(),
            attempts_omitted: 0,
        },
    };
    Ok(render(&LetterPage { chrome, letter }))
}

#[derive(Deserialize)]
pub struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    workflow: String,
    #[serde(default)]
    pool: String,
}

/// `POST /dlq/{id}/replay`: back to the list, which shows the coordinator's answer.
pub async fn replay_one(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Result<Response, PageError> {
    session.may_act(&server, &form.csrf)?;
    let entry = dead_letter(&server, dead_letter_id(&id)?).await?;
    let request_id = act(&server, &session.user, replay_request(&entry, None)?).await?.request_id();
    Ok(Redirect::to(&format!("/dlq?request={request_id}")).into_response())
}

/// `POST /dlq/replay`: every dead letter the filters match, one control request each; the
/// list then says how many were replayed and why any were not.
pub async fn replay_all(
    State(server): State<Server>,
    session: Session,
    Form(form): Form<ReplayForm>,
) -> Result<Response, PageError> {
    session.may_act(&server, &form.csrf)?;
    let mut params = BTreeMap::new();
    for (name, value) in [("workflow", &form.workflow), ("pool", &form.pool)] {
        if !value.trim().is_empty() {
            params.insert(name.to_owned(), value.clone());
        }
    }
    let letters = DeadLetterFilter::parse(&params)?.load(&server.js).await?;
    let (mut replayed, mut waiting, mut refused) = (0usize, 0usize, Vec::new());
    for entry in letters.iter().filter(|entry| entry.letter.is_some()) {
        match act(&server, &session.user, replay_request(entry, None)?).await? {
            Answer::Outcome(outcome) if outcome.outcome == Outcome::Applied => replayed += 1,
            Answer::Outcome(outcome) => refused.push(format!("{}: {}", entry.id, outcome.reason)),
            Answer::Waiting(_) => waiting += 1,
        }
    }
    let mut text = format!("replay: {replayed} dead letters replayed.");
    if waiting > 0 {
        text.push_str(&format!(" {waiting} not answered yet."));
    }
    if !refused.is_empty() {
        text.push_str(&format!(" {} refused: {}", refused.len(), refused.join("; ")));
    }
    let class = if refused.is_empty() { "applied" } else { "refused" };
    let banner = Banner { class, text, waiting: false };
    list_page(&server, &session, params, Some(banner)).await
}
