//! `/requests`: the audit of actions: every control request answered in the last 7 days
//! (who, what, when, the answer), newest first, a page at a time.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;

use super::{Chrome, PageError, Session, render, short};
use crate::Server;
use crate::api::requests_query;

struct Row {
    id: String,
    at: String,
    by: String,
    action: String,
    run: Option<String>,
    run_short: String,
    outcome: &'static str,
    kind: Option<&'static str>,
    reason: String,
    changed: String,
}

/// A request no coordinator has answered yet.
struct Waiting {
    at: String,
    by: String,
    action: &'static str,
    run: Option<String>,
    run_short: String,
}

#[derive(Template)]
#[template(path = "requests.html")]
struct RequestsPage {
    chrome: Chrome,
    waiting: Vec<Waiting>,
    rows: Vec<Row>,
    earlier: Option<u64>,
}

/// Changed jobs a row names before it counts the rest.
const CHANGED_SHOWN: usize = 5;

pub async fn page(
    State(server): State<Server>,
    session: Session,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let (before, limit) = requests_query(&params)?;
    let page = sluice_client::outcomes::recent(&server.js, before, limit).await?;
    let unanswered = match before {
        None => sluice_client::outcomes::unanswered(&server.js, limit).await?,
        Some(_) => Vec::new(),
    };
    let waiting = unanswered
        .iter()
        .map(|request| Waiting {
            at: chrome.clock.show(request.requested_at),
            by: request.requested_by.clone(),
            action: request.action_name(),
            run: request.run_id.map(|id| id.to_string()),
            run_short: request.run_id.map(|id| short(&id)).unwrap_or_default(),
        })
        .collect();
    let rows = page
        .outcomes
        .iter()
        .map(|outcome| {
            let total = (outcome.changed_total as usize).max(outcome.changed.len());
            let mut changed: Vec<String> = outcome.changed.iter().take(CHANGED_SHOWN).cloned().collect();
            if total > changed.len() {
                changed.push(format!("and {} more", total - changed.len()));
            }
            Row {
                id: outcome.request_id.to_string(),
                at: chrome.clock.show(outcome.at),
                by: outcome.requested_by.clone(),
                action: outcome.action.clone(),
                run: outcome.run_id.map(|id| id.to_string()),
                run_short: outcome.run_id.map(|id| short(&id)).unwrap_or_default(),
                outcome: outcome.outcome.as_str(),
                kind: outcome.kind.map(|kind| kind.as_str()),
                reason: outcome.reason.clone(),
                changed: changed.join(", "),
            }
        })
        .collect();
    Ok(render(&RequestsPage { chrome, waiting, rows, earlier: page.earlier }))
}
