//! The pages: home, runs, a run (DAG, timeline, jobs, live), a job (attempts, output,
//! children), and the actions a run page offers. Everything is read through the client
//! crate and acted on through control requests, like the API.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use sluice_client::Stores;
use sluice_client::view::{Located, Lookup, RunView, locate, lookup};
use sluice_proto::spec::WorkflowSpec;
use sluice_proto::{ControlAction, ControlRequest, JobRecord, JobState, Outcome, RequestId, RunId, RunState};

use super::layout::{self, NODE_HEIGHT, NODE_WIDTH};
use super::time::duration;
use super::{Chrome, PageError, RequestQuery, Session, render, short};
use crate::Server;
use crate::api::{RunsQuery, act};

/// Children a job page lists at once.
const CHILDREN_PAGE: usize = 100;
/// Failed runs the home page counts at most (it says "N+" beyond).
const FAILED_COUNTED_MAX: usize = 1_000;
/// Most updates a live run page gets per second: changes in between are folded into one.
const EVENTS_EVERY: Duration = Duration::from_millis(250);

fn run_id(text: &str) -> Result<RunId, PageError> {
    text.parse().map_err(|_| PageError::new(StatusCode::BAD_REQUEST, format!("`{text}` is not a run id (a UUIDv7)")))
}

// ---------------------------------------------------------------------------------------
// Home

struct CoordinatorRow {
    id: String,
    leader: bool,
    version: String,
    started: String,
}

struct PoolRow {
    name: String,
    workers: usize,
    busy: u32,
    free: u32,
    pending: String,
    ack_pending: String,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    chrome: Chrome,
    coordinators: Vec<CoordinatorRow>,
    has_leader: bool,
    pools: Vec<PoolRow>,
    running: usize,
    failed_24h: usize,
    failed_24h_more: bool,
    dead_letters: u64,
}

pub async fn home(State(server): State<Server>, session: Session) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let js = &server.js;
    let workers = sluice_client::stores::live_workers(js).await?;
    let (coordinators, workers): (Vec<_>, Vec<_>) =
        workers.into_iter().partition(|worker| worker.pool == sluice_proto::names::COORDINATOR_POOL_TOKEN);
    let mut pools = Vec::new();
    if let Some(stores) = Stores::open(js).await? {
        for pool in stores.pools().await? {
            let lag = stores.pool_lag(&pool.name).await?;
            let serving: Vec<_> = workers.iter().filter(|worker| worker.pool == pool.name).collect();
            let busy = serving.iter().map(|worker| worker.busy).sum::<u32>();
            let slots = serving.iter().map(|worker| worker.slots).sum::<u32>();
            pools.push(PoolRow {
                name: pool.name,
                workers: serving.len(),
                busy,
                free: slots.saturating_sub(busy),
                pending: lag.map_or_else(|| "-".into(), |lag| lag.pending.to_string()),
                ack_pending: lag.map_or_else(|| "-".into(), |lag| lag.ack_pending.to_string()),
            });
        }
    }
    let running = sluice_client::runs::running_ids(js).await?.len();
    let failed_filter = sluice_client::runs::RunFilter { state: Some(RunState::Failed), ..Default::default() };
    let failed = sluice_client::runs::list(js, &failed_filter, FAILED_COUNTED_MAX, None).await?;
    let since = Utc::now() - chrono::Duration::hours(24);
    let failed_24h = failed.runs.iter().filter(|run| run.finished_at.unwrap_or(run.created_at) >= since).count();
    let failed_24h_more = failed_24h == FAILED_COUNTED_MAX && failed.next.is_some();
    let dead_letters = sluice_client::dead_letters::waiting(js).await?;
    let page = HomePage {
        has_leader: coordinators.iter().any(|coordinator| coordinator.leader),
        coordinators: coordinators
            .into_iter()
            .map(|coordinator| CoordinatorRow {
                started: chrome.clock.show(coordinator.started_at),
                id: coordinator.worker_id,
                leader: coordinator.leader,
                version: coordinator.version,
            })
            .collect(),
        chrome,
        pools,
        running,
        failed_24h,
        failed_24h_more,
        dead_letters,
    };
    Ok(render(&page))
}

// ---------------------------------------------------------------------------------------
// Runs

struct RunRow {
    id: String,
    short: String,
    workflow: String,
    state: String,
    window: String,
    created: String,
    finished: String,
    origin: String,
}

#[derive(Template)]
#[template(path = "runs.html")]
struct RunsPage {
    chrome: Chrome,
    workflow: String,
    state: String,
    origin: String,
    window_from: String,
    window_to: String,
    sort: String,
    states: Vec<&'static str>,
    rows: Vec<RunRow>,
    next: Option<String>,
    error: Option<String>,
    /// The answer to a bulk action just sent.
    banner: Option<Banner>,
    /// The filter as a bulk action's query, when it names a workflow (bulk actions are a
    /// workflow's runs).
    bulk: Option<String>,
}

fn window_text(window: &sluice_proto::Window) -> String {
    format!("{} → {}", window.start_rfc3339(), window.end_rfc3339())
}

pub async fn runs(
    State(server): State<Server>,
    session: Session,
    Query(mut params): Query<BTreeMap<String, String>>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    // An empty form field is no filter.
    params.retain(|_, value| !value.trim().is_empty());
    let banner = banner(&server, params.remove("request").as_deref()).await?;
    let bulk = params.contains_key("workflow").then(|| {
        params
            .iter()
            .filter(|(key, _)| crate::bulk::FILTER_PARAMETERS.contains(&key.as_str()))
            .map(|(key, value)| format!("{key}={}", super::encode_component(value)))
            .collect::<Vec<_>>()
            .join("&")
    });
    let field = |name: &str| params.get(name).cloned().unwrap_or_default();
    let mut page = RunsPage {
        chrome,
        workflow: field("workflow"),
        state: field("state"),
        origin: field("origin"),
        window_from: field("window_from"),
        window_to: field("window_to"),
        sort: field("sort"),
        states: vec!["", "pending", "running", "succeeded", "failed", "cancelled"],
        rows: Vec::new(),
        next: None,
        error: None,
        banner,
        bulk,
    };
    let query = match RunsQuery::parse(&params) {
        Ok(query) => query,
        Err(error) => {
            page.error = Some(error.message);
            return Ok((StatusCode::BAD_REQUEST, render(&page)).into_response());
        }
    };
    let listing = query.list(&server.js).await?;
    let clock = &page.chrome.clock;
    let mut rows: Vec<RunRow> = listing
        .pending
        .iter()
        .map(|run| RunRow {
            id: run.id.to_string(),
            short: short(&run.id),
            workflow: run.workflow.clone().unwrap_or_else(|| "-".into()),
            state: sluice_client::json::PENDING.into(),
            window: run.window.as_ref().map(window_text).unwrap_or_default(),
            created: format!("submitted {}", clock.show(run.submitted_at)),
            finished: "-".into(),
            origin: run.origin.clone(),
        })
        .collect();
    rows.extend(listing.runs.iter().map(|run| RunRow {
        id: run.id.to_string(),
        short: short(&run.id),
        workflow: run.workflow.clone(),
        state: run.state.as_str().into(),
        window: window_text(&run.window),
        created: clock.show(run.created_at),
        finished: clock.maybe(run.finished_at),
        origin: run.origin.clone(),
    }));
    page.rows = rows;
    page.next = listing.next.map(|cursor| {
        let mut next: Vec<(String, String)> =
            params.iter().filter(|(key, _)| *key != "cursor").map(|(k, v)| (k.clone(), v.clone())).collect();
        next.push(("cursor".into(), cursor));
        next.iter()
            .map(|(key, value)| format!("{key}={}", super::encode_component(value)))
            .collect::<Vec<_>>()
            .join("&")
    });
    Ok(render(&page))
}

// ---------------------------------------------------------------------------------------
// A run

pub(super) struct Banner {
    pub class: &'static str,
    pub text: String,
    pub waiting: bool,
}

/// What an action's answer says, read from the outcomes store by its request id (so the
/// page shows what the coordinator decided, not what a link claims).
pub(super) async fn banner(server: &Server, request: Option<&str>) -> Result<Option<Banner>, PageError> {
    let Some(request) = request else { return Ok(None) };
    let Ok(id) = request.parse::<RequestId>() else { return Ok(None) };
    Ok(Some(match sluice_client::stores::outcome(&server.js, &id).await? {
        Some(outcome) => {
            let said = outcome.outcome.as_str();
            let by = if outcome.requested_by.is_empty() {
                String::new()
            } else {
                format!(" (asked by {})", outcome.requested_by)
            };
            Banner { class: said, text: format!("{}: {said}. {}{by}", outcome.action, outcome.reason), waiting: false }
        }
        None => Banner { class: "waiting", text: "Waiting for the coordinator's answer…".into(), waiting: true },
    }))
}

struct RunFacts {
    id: String,
    short: String,
    workflow: String,
    state: String,
    /// Ended: it may be retried; else it may be cancelled.
    terminal: bool,
    window: String,
    window_in_zone: Option<String>,
    origin: String,
    created: String,
    finished: String,
    params: Vec<(String, String)>,
    error: Option<String>,
    cancelled_by: Option<String>,
    trace: Option<String>,
}

struct SvgNode {
    name: String,
    title: String,
    label: String,
    state: String,
    href: String,
    x: u32,
    y: u32,
    text_x: u32,
    name_y: u32,
    label_y: u32,
}

struct Svg {
    width: u32,
    height: u32,
    nodes: Vec<SvgNode>,
    edges: Vec<String>,
    omitted: usize,
}

struct Bar {
    name: String,
    state: String,
    title: String,
    x: u32,
    y: u32,
    width: u32,
    text_y: u32,
}

struct Gantt {
    bars: Vec<Bar>,
    width: u32,
    height: u32,
    left: u32,
    axis_y: u32,
    from: String,
    to: String,
}

struct JobRow {
    name: String,
    href: String,
    state: String,
    label: String,
    attempts: u32,
    started: String,
    finished: String,
    duration: String,
    error: String,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    chrome: Chrome,
    run: RunFacts,
    banner: Option<Banner>,
    svg: Svg,
    node_width: u32,
    node_height: u32,
    gantt: Gantt,
    jobs: Vec<JobRow>,
}

/// A fan-out parent's children counted as people read them: `×2,000: 1,990 ✓ 8 ⟳ 2 ✗`.
fn fan_out_label(view: &RunView, job: &JobRecord) -> Option<String> {
    let counts = view.child_counts(&job.name);
    let total: usize = counts.values().sum();
    if total == 0 && job.children == 0 {
        return None;
    }
    let count = |states: &[JobState]| {
        states.iter().map(|state| counts.get(state.as_str()).copied().unwrap_or(0)).sum::<usize>()
    };
    let done = count(&[JobState::Completed]);
    let active =
        count(&[JobState::Queued, JobState::Running, JobState::Retrying, JobState::Waiting, JobState::Blocked]);
    let bad = count(&[JobState::Failed, JobState::Cancelled, JobState::Skipped]);
    Some(format!(
        "×{}: {} ✓ {} ⟳ {} ✗",
        thousands(total.max(job.children as usize)),
        thousands(done),
        thousands(active),
        thousands(bad)
    ))
}

fn thousands(number: usize) -> String {
    let digits = number.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The short line under a node's name.
fn node_label(view: &RunView, job: &JobRecord) -> String {
    if let Some(label) = fan_out_label(view, job) {
        return label;
    }
    match (job.state, job.started_at, job.finished_at) {
        (JobState::Running, _, _) => format!("running, attempt {}", job.attempts.max(1)),
        (JobState::Retrying, _, _) => format!("retrying after attempt {}", job.attempts),
        (_, Some(start), Some(end)) => format!("{} in {}", job.state.as_str(), duration(start, end)),
        (state, _, _) => state.as_str().to_owned(),
    }
}

pub(super) fn job_href(run: &RunId, path: &str) -> String {
    format!("/runs/{run}/jobs/{}", super::encode_component(path))
}

/// The `needs` of every top-level job: its own definition's when a retry changed it, else
/// the workflow's.
fn edges(view: &RunView, spec: Option<&WorkflowSpec>) -> Vec<(usize, usize)> {
    let index: BTreeMap<&str, usize> = view.jobs.iter().enumerate().map(|(at, job)| (job.name.as_str(), at)).collect();
    let mut edges = Vec::new();
    for (to, job) in view.jobs.iter().enumerate() {
        let needs = match (&job.definition, spec.and_then(|spec| spec.jobs.get(&job.name))) {
            (Some(definition), _) => definition.needs.clone(),
            (None, Some(definition)) => definition.needs.clone(),
            (None, None) => Vec::new(),
        };
        edges.extend(needs.iter().filter_map(|need| index.get(need.as_str())).map(|&from| (from, to)));
    }
    edges
}

fn svg(view: &RunView, spec: Option<&WorkflowSpec>) -> Svg {
    let drawn: Vec<&JobRecord> = view.jobs.iter().take(layout::NODES_MAX).collect();
    let placed = layout::layout(drawn.len(), &edges(view, spec));
    let nodes = drawn
        .iter()
        .zip(&placed.nodes)
        .map(|(job, at)| SvgNode {
            name: job.name.clone(),
            title: ellipsis(&job.name, 26),
            label: node_label(view, job),
            state: job.state.as_str().into(),
            href: job_href(&view.record.id, &job.name),
            x: at.x,
            y: at.y,
            text_x: at.x + 10,
            name_y: at.y + 19,
            label_y: at.y + 36,
        })
        .collect();
    Svg {
        width: placed.width,
        height: placed.height,
        nodes,
        edges: placed.edges.into_iter().map(|(_, _, path)| path).collect(),
        omitted: view.jobs.len().saturating_sub(layout::NODES_MAX),
    }
}

fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The timeline: a bar per top-level job that started, from its start to its end (or now).
fn gantt(view: &RunView, clock: &super::Zone) -> Gantt {
    const LEFT: u32 = 180;
    const TRACK: u32 = 760;
    const ROW: u32 = 20;
    let now = Utc::now();
    let spans: Vec<(&JobRecord, chrono::DateTime<Utc>, chrono::DateTime<Utc>)> = view
        .jobs
        .iter()
        .filter_map(|job| job.started_at.map(|start| (job, start, job.finished_at.unwrap_or(now))))
        .collect();
    let (Some(from), Some(to)) =
        (spans.iter().map(|(_, start, _)| *start).min(), spans.iter().map(|(_, _, end)| *end).max())
    else {
        return Gantt {
            bars: Vec::new(),
            width: 0,
            height: 0,
            left: LEFT,
            axis_y: 0,
            from: String::new(),
            to: String::new(),
        };
    };
    let total = (to - from).num_milliseconds().max(1) as f64;
    let bars = spans
        .iter()
        .enumerate()
        .map(|(row, (job, start, end))| {
            let x = LEFT + (((*start - from).num_milliseconds() as f64 / total) * TRACK as f64) as u32;
            let width = ((((*end - *start).num_milliseconds() as f64) / total) * TRACK as f64).max(2.0) as u32;
            Bar {
                name: ellipsis(&job.name, 24),
                state: job.state.as_str().into(),
                title: format!("{}: {} ({})", job.name, job.state.as_str(), duration(*start, *end)),
                x,
                y: 6 + row as u32 * ROW,
                width: width.min(LEFT + TRACK - x).max(2),
                text_y: 17 + row as u32 * ROW,
            }
        })
        .collect::<Vec<_>>();
    let axis_y = 20 + bars.len() as u32 * ROW;
    Gantt {
        width: LEFT + TRACK + 8,
        height: axis_y + 6,
        left: LEFT,
        axis_y,
        from: clock.show(from),
        to: clock.show(to),
        bars,
    }
}

enum Found {
    Run(Box<RunView>),
    /// Submitted; no coordinator has taken it yet.
    Pending,
    Missing,
}

async fn find_run(server: &Server, id: &RunId) -> Result<Found, PageError> {
    match locate(&server.js, id).await? {
        Located::Found(view) => Ok(Found::Run(view)),
        Located::Rejected(rejection) => {
            Err(PageError::new(StatusCode::NOT_FOUND, format!("run {id} was rejected: {}", rejection.reason)))
        }
        Located::Pending(_) => Ok(Found::Pending),
        Located::Unknown => Ok(Found::Missing),
    }
}

/// A run that exists (a pending one is 404 here: it has no jobs to show yet).
async fn load_run(server: &Server, id: &RunId) -> Result<Box<RunView>, PageError> {
    match find_run(server, id).await? {
        Found::Run(view) => Ok(view),
        Found::Pending => Err(PageError::new(
            StatusCode::NOT_FOUND,
            format!("run {id} is submitted; no coordinator has taken it yet"),
        )),
        Found::Missing => Err(PageError::new(StatusCode::NOT_FOUND, format!("no run {id}"))),
    }
}

/// Whether request `request` (a page's `?request=`) was applied and made run `id`: a
/// schedule's "run now" lands on its run's page before the run may be readable.
async fn made_by(server: &Server, request: Option<&str>, id: &RunId) -> Result<bool, PageError> {
    let Some(request) = request.and_then(|text| text.parse::<RequestId>().ok()) else { return Ok(false) };
    let outcome = sluice_client::stores::outcome(&server.js, &request).await?;
    Ok(outcome.is_some_and(|outcome| outcome.outcome == Outcome::Applied && outcome.run_id.as_ref() == Some(id)))
}

async fn spec_of(server: &Server, view: &RunView) -> Option<WorkflowSpec> {
    let yaml = sluice_client::specs::of_run(&server.js, &view.record).await.ok()?;
    WorkflowSpec::parse(&yaml).ok()
}

pub async fn run(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
    Query(query): Query<RequestQuery>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let id = run_id(&id)?;
    let view = match find_run(&server, &id).await? {
        Found::Run(view) => view,
        Found::Missing if !made_by(&server, query.request.as_deref(), &id).await? => {
            return Err(PageError::new(StatusCode::NOT_FOUND, format!("no run {id}")));
        }
        Found::Pending | Found::Missing => {
            // Submitted (a schedule's "run now" lands here): the page looks again until it runs.
            let message = format!("Run {id} is submitted; a coordinator has not taken it yet.");
            return Ok(render(&super::MessagePage {
                chrome,
                title: "Run submitted",
                message: &message,
                waiting: true,
            }));
        }
    };
    let spec = spec_of(&server, &view).await;
    let record = &view.record;
    let clock = &chrome.clock;
    let zone = spec.as_ref().map(WorkflowSpec::zone).unwrap_or(chrono_tz::Tz::UTC);
    let trace =
        match (&server.trace_ui_url, record.traceparent.as_deref().and_then(sluice_proto::trace::TraceParent::parse)) {
            (Some(base), Some(trace)) => Some(format!("{}/trace/{}", base.trim_end_matches('/'), trace.trace_id_hex())),
            _ => None,
        };
    let facts = RunFacts {
        id: record.id.to_string(),
        short: short(&record.id),
        workflow: record.workflow.clone(),
        state: record.state.as_str().into(),
        terminal: record.state.is_terminal(),
        window: window_text(&record.window),
        window_in_zone: (zone != chrono_tz::Tz::UTC).then(|| {
            let start = record.window.start.with_timezone(&zone).format("%Y-%m-%d %H:%M");
            let end = record.window.end.with_timezone(&zone).format("%Y-%m-%d %H:%M");
            format!("{start} → {end} in {}, the workflow's zone", zone.name())
        }),
        origin: record.origin.clone(),
        created: clock.show(record.created_at),
        finished: clock.maybe(record.finished_at),
        params: record.params.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        error: record.error.clone(),
        cancelled_by: record.cancelled_by.clone(),
        trace,
    };
    let jobs = view
        .jobs
        .iter()
        .map(|job| JobRow {
            name: job.name.clone(),
            href: job_href(&id, &job.name),
            state: job.state.as_str().into(),
            label: fan_out_label(&view, job).unwrap_or_default(),
            attempts: job.attempts,
            started: clock.maybe(job.started_at),
            finished: clock.maybe(job.finished_at),
            duration: match (job.started_at, job.finished_at) {
                (Some(start), Some(end)) => duration(start, end),
                _ => "-".into(),
            },
            error: job.error.as_deref().map(|error| ellipsis(error, 300)).unwrap_or_default(),
        })
        .collect();
    let page = RunPage {
        banner: banner(&server, query.request.as_deref()).await?,
        svg: svg(&view, spec.as_ref()),
        gantt: gantt(&view, clock),
        node_width: NODE_WIDTH,
        node_height: NODE_HEIGHT,
        run: facts,
        jobs,
        chrome,
    };
    Ok(render(&page))
}

/// What a live run page is sent: the run's state and each top-level job's.
fn snapshot(view: &RunView, clock: &super::Zone) -> serde_json::Value {
    let jobs: serde_json::Map<String, serde_json::Value> = view
        .jobs
        .iter()
        .map(|job| {
            let update = json!({
                "state": job.state.as_str(),
                "label": node_label(view, job),
                "detail": fan_out_label(view, job).unwrap_or_default(),
            });
            (job.name.clone(), update)
        })
        .collect();
    json!({
        "state": view.record.state.as_str(),
        "finished": view.record.finished_at.map(|time| clock.show(time)),
        "jobs": jobs,
    })
}

/// `GET /runs/{id}/events`: the run's state now, then again whenever its record or a job's
/// changes (pushed by KV watches), at most every [`EVENTS_EVERY`].
pub async fn run_events(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    let clock = session.zone.clone();
    let first = load_run(&server, &id).await?;
    let open = |name: &'static str| {
        let js = server.js.clone();
        async move {
            sluice_client::stores::open_bucket(&js, name)
                .await?
                .ok_or_else(|| sluice_client::ClientError::NotSetUp { missing: name.to_owned() })
        }
    };
    let (jobs, runs) = (open(sluice_proto::names::JOBS_BUCKET).await?, open(sluice_proto::names::RUNS_BUCKET).await?);
    let unavailable = |error: String| PageError::new(StatusCode::SERVICE_UNAVAILABLE, error);
    let mut job_changes = jobs.watch(format!("{id}.>")).await.map_err(|error| unavailable(error.to_string()))?;
    let mut run_changes = runs.watch(id.to_string()).await.map_err(|error| unavailable(error.to_string()))?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Event>(4);
    tokio::spawn(async move {
        let event = |view: &RunView| Event::default().event("run").data(snapshot(view, &clock).to_string());
        if sender.send(event(&first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                change = job_changes.next() => if change.is_none() { return },
                change = run_changes.next() => if change.is_none() { return },
                () = sender.closed() => return,
            }
            tokio::time::sleep(EVENTS_EVERY).await;
            match lookup(&server.js, &id).await {
                Ok(Lookup::Found(view)) => {
                    if sender.send(event(&view)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => return,
                Err(error) => tracing::warn!(%error, run = %id, "a live run page could not be updated"),
            }
        }
    });
    let stream = futures::stream::poll_fn(move |context| {
        receiver.poll_recv(context).map(|event| event.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

// ---------------------------------------------------------------------------------------
// A job

pub(super) struct AttemptRow {
    pub number: u32,
    pub worker: String,
    pub started: String,
    pub finished: String,
    pub duration: String,
    pub error: String,
}

impl AttemptRow {
    pub(super) fn of(attempt: &sluice_proto::AttemptRecord, clock: &super::Zone) -> Self {
        Self {
            number: attempt.attempt,
            worker: attempt.worker.clone(),
            started: clock.show(attempt.started_at),
            finished: clock.maybe(attempt.finished_at),
            duration: attempt.finished_at.map(|end| duration(attempt.started_at, end)).unwrap_or_else(|| "-".into()),
            error: attempt.error.clone().unwrap_or_default(),
        }
    }
}

struct ChildRow {
    name: String,
    state: String,
    attempts: u32,
    error: String,
}

struct JobFacts {
    run_id: String,
    run_short: String,
    workflow: String,
    path: String,
    parent: Option<String>,
    state: String,
    /// Not yet ended well: it may be marked succeeded or skipped.
    can_mark: bool,
    kind: String,
    pool: String,
    queued: String,
    started: String,
    finished: String,
    error: Option<String>,
    mark: Option<String>,
    attempts: Vec<AttemptRow>,
    attempts_omitted: u32,
    output: Option<String>,
    children: Vec<ChildRow>,
    children_total: usize,
    children_label: String,
    children_page: usize,
    children_pages: usize,
    children_previous: Option<usize>,
    children_next: Option<usize>,
    logs: LogView,
}

struct LogLineRow {
    at: String,
    stream: &'static str,
    text: String,
}

/// The log section of a job page: one attempt's lines, a page of them.
struct LogView {
    attempt: u32,
    attempts: Vec<u32>,
    lines: Vec<LogLineRow>,
    /// The page before this one ends before this stream sequence.
    earlier: Option<u64>,
    /// This is an earlier page: a link goes back to the newest.
    older: bool,
    /// Where the page follows the attempt's new lines, while it runs.
    follow: Option<String>,
    download: String,
}

async fn log_view(
    server: &Server,
    id: &RunId,
    path: &str,
    query: &RequestQuery,
    clock: &super::Zone,
) -> Result<LogView, PageError> {
    let target = crate::logs::Target::find(server, id, path, query.attempt).await?;
    let page = target.log(server).await?.before(query.before).await?;
    let older = query.before.is_some();
    // The API serves the follow and the download (it takes the page's session cookie). A
    // job path needs no escaping in a URL: the naming rule allows letters, digits, `_`, `-`,
    // and `.` between a parent and its child.
    let base = format!("/api/v1/runs/{id}/jobs/{path}/logs?attempt={}", target.attempt);
    Ok(LogView {
        attempt: target.attempt,
        attempts: (1..=target.job.attempts.max(1)).collect(),
        lines: page
            .batches
            .iter()
            .flat_map(|(_, batch)| batch.lines.iter())
            .map(|line| LogLineRow {
                at: clock.time_of_day(line.at),
                stream: line.stream.as_str(),
                text: line.text.clone(),
            })
            .collect(),
        earlier: page.earlier,
        older,
        follow: (!older && !target.over()).then(|| format!("{base}&follow=true&after={}", page.last)),
        download: format!("{base}&format=text"),
    })
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    chrome: Chrome,
    job: JobFacts,
    banner: Option<Banner>,
}

pub async fn job(
    State(server): State<Server>,
    session: Session,
    Path((id, path)): Path<(String, String)>,
    Query(query): Query<RequestQuery>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let id = run_id(&id)?;
    let view = load_run(&server, &id).await?;
    let Some(job) = view.all.get(&path) else {
        return Err(PageError::new(StatusCode::NOT_FOUND, format!("run {id} has no job `{path}`")));
    };
    let spec = spec_of(&server, &view).await;
    let definition = job.definition.as_deref().or_else(|| spec.as_ref().and_then(|spec| spec.jobs.get(&path)));
    let clock = &chrome.clock;
    let children: Vec<&JobRecord> = view.children_of(&path).collect();
    let pages = children.len().div_ceil(CHILDREN_PAGE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let facts = JobFacts {
        run_id: id.to_string(),
        run_short: short(&id),
        workflow: view.record.workflow.clone(),
        path: path.clone(),
        parent: job.parent.clone(),
        state: job.state.as_str().into(),
        can_mark: !matches!(job.state, JobState::Completed | JobState::Skipped),
        kind: definition.map(|definition| definition.run.clone()).unwrap_or_else(|| "-".into()),
        pool: match (spec.as_ref(), definition) {
            (Some(spec), Some(definition)) => spec.pool_of(definition),
            _ => "-".into(),
        },
        queued: clock.maybe(job.queued_at),
        started: clock.maybe(job.started_at),
        finished: clock.maybe(job.finished_at),
        error: job.error.clone(),
        mark: job
            .marked
            .as_ref()
            .map(|mark| format!("{} by {} at {}", mark.as_.as_str(), mark.by, clock.show(mark.at))),
        attempts: job.attempt_history.iter().map(|attempt| AttemptRow::of(attempt, clock)).collect(),
        attempts_omitted: job.attempts_omitted,
        output: job.output.as_ref().and_then(|output| serde_json::to_string_pretty(output).ok()),
        children_total: children.len(),
        children_label: fan_out_label(&view, job).unwrap_or_default(),
        children: children
            .iter()
            .skip((page - 1) * CHILDREN_PAGE)
            .take(CHILDREN_PAGE)
            .map(|child| ChildRow {
                name: child.name.clone(),
                state: child.state.as_str().into(),
                attempts: child.attempts,
                error: child.error.as_deref().map(|error| ellipsis(error, 200)).unwrap_or_default(),
            })
            .collect(),
        children_page: page,
        children_pages: pages,
        children_previous: (page > 1).then(|| page - 1),
        children_next: (page < pages).then(|| page + 1),
        logs: log_view(&server, &id, &path, &query, clock).await?,
    };
    Ok(render(&JobPage { banner: banner(&server, query.request.as_deref()).await?, chrome, job: facts }))
}

// ---------------------------------------------------------------------------------------
// Actions

#[derive(Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    job: Option<String>,
    /// `job`: come back to the job's page instead of the run's.
    #[serde(default)]
    back: Option<String>,
    /// A retry's edited workflow YAML (empty: the run's own).
    #[serde(default)]
    spec: Option<String>,
}

/// Sends the action as the session's user and goes back to the page, which then shows the
/// coordinator's answer.
async fn page_action(
    server: &Server,
    session: &Session,
    id: &RunId,
    form: &ActionForm,
    request: ControlRequest,
) -> Result<Response, PageError> {
    session.may_act(server, &form.csrf)?;
    let request_id = act(server, &session.user, request).await?.request_id();
    let page = match (form.back.as_deref(), form.job.as_deref()) {
        (Some("job"), Some(job)) => job_href(id, job),
        _ => format!("/runs/{id}"),
    };
    Ok(Redirect::to(&format!("{page}?request={request_id}")).into_response())
}

pub async fn cancel(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    page_action(&server, &session, &id, &form, ControlRequest::new(ControlAction::Cancel, Some(id), "")).await
}

pub async fn retry(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    let job = form.job.clone().filter(|job| !job.is_empty());
    let spec = form.spec.clone().filter(|spec| !spec.trim().is_empty());
    if let Some(yaml) = &spec {
        // Said here, at once; what it may change is the coordinator's to decide.
        WorkflowSpec::parse(yaml)
            .map_err(|error| PageError::new(StatusCode::BAD_REQUEST, format!("the edited spec: {error}")))?;
    }
    let request = ControlRequest { job, spec, ..ControlRequest::new(ControlAction::Retry, Some(id), "") };
    page_action(&server, &session, &id, &form, request).await
}

#[derive(Template)]
#[template(path = "retry.html")]
struct RetryPage {
    chrome: Chrome,
    id: String,
    short: String,
    workflow: String,
    yaml: String,
    /// The workflow's jobs: one may be retried alone (with what depends on it).
    jobs: Vec<String>,
}

/// `GET /runs/{id}/retry`: retry with an edited spec; the form holds the YAML the run
/// runs with now.
pub async fn retry_form(
    State(server): State<Server>,
    session: Session,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let chrome = session.chrome(&server);
    let id = run_id(&id)?;
    let view = load_run(&server, &id).await?;
    if !view.record.state.is_terminal() {
        return Err(PageError::new(
            StatusCode::CONFLICT,
            format!("run {id} is {}: a run is retried once it has ended", view.record.state.as_str()),
        ));
    }
    let yaml = sluice_client::specs::of_run(&server.js, &view.record).await?;
    Ok(render(&RetryPage {
        chrome,
        id: id.to_string(),
        short: short(&id),
        workflow: view.record.workflow.clone(),
        yaml,
        jobs: view.record.jobs.clone(),
    }))
}

#[derive(Deserialize)]
pub struct MarkForm {
    #[serde(default)]
    csrf: String,
    #[serde(rename = "as")]
    as_: sluice_proto::MarkAs,
}

/// `POST /runs/{id}/jobs/{path}/mark`: back to the job's page, which shows the answer.
pub async fn mark(
    State(server): State<Server>,
    session: Session,
    Path((id, path)): Path<(String, String)>,
    Form(form): Form<MarkForm>,
) -> Result<Response, PageError> {
    let id = run_id(&id)?;
    let action = ActionForm { csrf: form.csrf, job: Some(path.clone()), back: Some("job".into()), spec: None };
    let request = crate::api::mark_request(id, &path, form.as_, None)?;
    page_action(&server, &session, &id, &action, request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_counts_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(2_000), "2,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(ellipsis("abcdef", 4), "abc…");
        assert_eq!(ellipsis("abc", 4), "abc");
    }
}
