//! `/runs/bulk`: a bulk action by filter from the runs list. `GET` shows how many runs
//! the filter matches (and which) with a confirm button; `POST` sends the one control
//! request for exactly that many, then lands on the runs list, which shows the answer.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};

use super::{Chrome, PageError, Session, encode_component, render, short};
use crate::Server;
use crate::api::act;
use crate::bulk::BulkAsk;

/// Runs the confirmation lists by name, at most (it counts them all).
const LISTED_MAX: usize = 50;

#[derive(Template)]
#[template(path = "bulk.html")]
struct BulkPage {
    chrome: Chrome,
    action: String,
    selection: String,
    count: usize,
    /// (id, short id, state, window) of the first runs.
    listed: Vec<(String, String, String, String)>,
    filter: Vec<(String, String)>,
    back: String,
}

/// The filter fields of a form or query, as a runs list's query string.
fn runs_query(filter: &BTreeMap<String, String>) -> String {
    filter.iter().map(|(key, value)| format!("{key}={}", encode_component(value))).collect::<Vec<_>>().join("&")
}

fn ask_of(fields: &BTreeMap<String, String>) -> BulkAsk {
    let field = |name: &str| fields.get(name).cloned();
    BulkAsk {
        action: field("action").unwrap_or_default(),
        workflow: field("workflow"),
        state: field("state"),
        origin: field("origin"),
        window_from: field("window_from"),
        window_to: field("window_to"),
        dry_run: false,
        expect: None,
    }
}

/// `GET /runs/bulk?action=retry&workflow=…`: what the action would touch.
pub async fn preview(
    State(server): State<Server>,
    session: Session,
    Query(fields): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let ask = ask_of(&fields);
    let selected = ask.select(&server.js).await?;
    let filter = ask.filter();
    let clock = &chrome.clock;
    let listed = selected
        .runs
        .iter()
        .take(LISTED_MAX)
        .map(|run| {
            let window = format!("{} → {}", clock.show(run.window.start.to_utc()), clock.show(run.window.end.to_utc()));
            (run.id.to_string(), short(&run.id), run.state.as_str().to_owned(), window)
        })
        .collect();
    let page = BulkPage {
        action: selected.action.as_str().to_owned(),
        selection: selected.selection.clone(),
        count: selected.runs.len(),
        listed,
        back: runs_query(&filter),
        filter: filter.into_iter().collect(),
        chrome,
    };
    Ok(render(&page))
}

/// `POST /runs/bulk`: the one request, for the count confirmed.
pub async fn apply(
    State(server): State<Server>,
    session: Session,
    Form(fields): Form<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    session.may_act(&server, fields.get("csrf").map(String::as_str).unwrap_or(""))?;
    let ask = ask_of(&fields);
    let expect = match fields.get("expect") {
        Some(text) => Some(text.parse::<usize>().map_err(|_| {
            PageError::from(crate::ApiError::invalid(format!("expect: `{text}` is not a count of runs")))
        })?),
        None => None,
    };
    let selected = ask.select(&server.js).await?;
    let request = selected.request(expect)?;
    let request_id = act(&server, &session.user, request).await?.request_id();
    let back = runs_query(&ask.filter());
    Ok(Redirect::to(&format!("/runs?{back}&request={request_id}")).into_response())
}
