//! `/runs/new`: start a run of a workflow known here, for a day picked in the workflow's
//! zone, with its parameters; the run's page follows. Sent as the API's `POST /api/v1/runs`
//! sends it.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use sluice_client::specs::Source;
use sluice_proto::Window;

use super::{Chrome, PageError, Session, render};
use crate::Server;
use crate::submit::RunAsk;

/// What a form field for a parameter is called: `param.NAME`.
const PARAM_FIELD: &str = "param.";

struct StartForm {
    workflow: String,
    zone: String,
    /// The window's day, the previous one in the zone unless chosen.
    day: String,
    params: Vec<(String, String)>,
    source: String,
}

#[derive(Template)]
#[template(path = "run_new.html")]
struct StartPage {
    chrome: Chrome,
    workflows: Vec<String>,
    chosen: Option<String>,
    form: Option<StartForm>,
}

#[derive(Deserialize)]
pub struct Choice {
    workflow: Option<String>,
}

/// Every workflow known here: those applied (`sluice workflow apply`), those with a
/// schedule and those with runs.
async fn known_workflows(server: &Server) -> Result<Vec<String>, PageError> {
    let mut names = sluice_client::runs::workflows(&server.js).await?;
    if let Some(stores) = sluice_client::Stores::open(&server.js).await? {
        names.extend(stores.workflows().await?.into_iter().map(|workflow| workflow.name));
        names.extend(stores.schedules().await?.into_iter().map(|schedule| schedule.name));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// `GET /runs/new[?workflow=NAME]`.
pub async fn page(
    State(server): State<Server>,
    session: Session,
    Query(choice): Query<Choice>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let workflows = known_workflows(&server).await?;
    let chosen = choice.workflow.filter(|name| !name.is_empty());
    let form = match &chosen {
        Some(name) => {
            let ask = RunAsk { workflow: Some(name.clone()), ..RunAsk::default() };
            let (spec, _) = ask.spec(&server).await?;
            let source = sluice_client::specs::current_source(&server.js, name).await?.map(|(_, source)| source);
            let yesterday = Window::previous_day(spec.zone(), Utc::now());
            Some(StartForm {
                workflow: name.clone(),
                zone: spec.zone().name().to_owned(),
                day: yesterday.start.with_timezone(&spec.zone()).format("%Y-%m-%d").to_string(),
                params: spec.params.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
                source: match source {
                    Some(Source::Applied) => "It runs as the YAML applied with `sluice workflow apply`.",
                    Some(Source::Schedule) => "It runs as its schedule's YAML.",
                    _ => "It runs as the YAML of its newest run.",
                }
                .to_owned(),
            })
        }
        None => None,
    };
    Ok(render(&StartPage { chrome, workflows, chosen, form }))
}

/// `POST /runs/new`: submits, then lands on the run's page (which waits for a coordinator
/// to take it).
pub async fn start(
    State(server): State<Server>,
    session: Session,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    let field = |name: &str| fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    session.may_act(&server, &field("csrf").unwrap_or_default())?;
    let params: BTreeMap<String, String> = fields
        .iter()
        .filter_map(|(key, value)| key.strip_prefix(PARAM_FIELD).map(|name| (name.to_owned(), value.clone())))
        .collect();
    let ask = RunAsk { workflow: field("workflow"), window: field("day"), params, ..RunAsk::default() };
    let submitted = ask.submit(&server, None).await?;
    Ok(Redirect::to(&format!("/runs/{}", submitted.published.run_id)).into_response())
}
