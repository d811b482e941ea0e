//! `/api/v1`: runs (list with filters and cursor pagination, get), the live workers, and
//! the first actions (cancel, retry). Reads answer in the CLI's `-o json` shapes (`sluice_client::json`);
//! actions are control requests that wait up to [`ACTION_WAIT`] for their outcome: 200 with
//! it when applied, 404 / 409 / 400 when refused, 202 with the request id when the
//! coordinator has not answered yet.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_client::ClientError;
use sluice_client::dead_letters::DeadLetterEntry;
use sluice_client::json::{dead_letter_json, dead_letter_row, pending_json, pending_row, run_row, view_json};
use sluice_client::runs::{Listing, PAGE_MAX, PendingChoice, RunFilter};
use sluice_client::view::{Located, locate};
use sluice_proto::schedule::Schedule;
use sluice_proto::{
    ControlAction, ControlOutcome, ControlRequest, Outcome, RefusalKind, RequestId, RunId, RunState, ScheduleRecord,
    WorkflowSpec,
};

use crate::Server;
use crate::auth::{LOCAL_USER, Role, User};
use crate::error::ApiError;

/// How long an action waits for the coordinator's answer before it answers 202.
pub const ACTION_WAIT: Duration = Duration::from_secs(30);
/// Runs a page holds unless `limit` says otherwise.
pub const RUNS_LIMIT_DEFAULT: usize = 50;
/// Largest request body an action takes, in bytes (a retry's spec is at most the workflow
/// limit, plus room).
pub const ACTION_BODY_MAX_BYTES: usize = sluice_proto::limits::WORKFLOW_YAML_MAX_BYTES + 16 * 1024;

/// Every route, as (method, path): the OpenAPI document lists exactly these (a test says
/// so), and [`router`] serves them.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/api/v1/openapi.json"),
    ("get", "/api/v1/runs"),
    ("post", "/api/v1/runs"),
    ("post", "/api/v1/runs/bulk"),
    ("get", "/api/v1/runs/{id}"),
    ("post", "/api/v1/runs/{id}/cancel"),
    ("post", "/api/v1/runs/{id}/retry"),
    ("post", "/api/v1/runs/{id}/jobs/{job}/mark"),
    ("get", "/api/v1/runs/{id}/jobs/{job}/logs"),
    ("get", "/api/v1/workers"),
    ("get", "/api/v1/requests"),
    ("get", "/api/v1/dlq"),
    ("get", "/api/v1/dlq/{id}"),
    ("post", "/api/v1/dlq/{id}/replay"),
    ("get", "/api/v1/schedules"),
    ("post", "/api/v1/schedules/{name}/pause"),
    ("post", "/api/v1/schedules/{name}/resume"),
    ("post", "/api/v1/schedules/{name}/trigger"),
    ("get", "/api/v1/workflows"),
    ("post", "/api/v1/workflows"),
    ("get", "/api/v1/workflows/{name}"),
    ("delete", "/api/v1/workflows/{name}"),
    ("get", "/api/v1/workflows/{name}/audit"),
    ("get", "/api/v1/backfills"),
    ("post", "/api/v1/backfills"),
    ("get", "/api/v1/backfills/{id}"),
    ("post", "/api/v1/backfills/{id}/cancel"),
];

pub fn router() -> Router<Server> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/runs", get(list_runs).post(crate::submit::api))
        .route("/api/v1/runs/bulk", post(bulk_action))
        .route("/api/v1/runs/{id}", get(get_run))
        .route("/api/v1/runs/{id}/cancel", post(cancel))
        .route("/api/v1/runs/{id}/retry", post(retry))
        .route("/api/v1/runs/{id}/jobs/{job}/mark", post(mark))
        .route("/api/v1/runs/{id}/jobs/{job}/logs", get(crate::logs::api))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/requests", get(list_requests))
        .route("/api/v1/dlq", get(list_dead_letters))
        .route("/api/v1/dlq/{id}", get(get_dead_letter))
        .route("/api/v1/dlq/{id}/replay", post(replay_dead_letter))
        .route("/api/v1/schedules", get(list_schedules))
        .route("/api/v1/schedules/{name}/{action}", post(change_schedule))
        .route("/api/v1/workflows", get(list_workflows).post(apply_workflow))
        .route("/api/v1/workflows/{name}", get(get_workflow).delete(delete_workflow))
        .route("/api/v1/workflows/{name}/audit", get(audit_grid))
        .route("/api/v1/backfills", get(list_backfills).post(create_backfill))
        .route("/api/v1/backfills/{id}", get(get_backfill))
        .route("/api/v1/backfills/{id}/cancel", post(cancel_backfill))
        .route("/api/v1/{*rest}", axum::routing::any(no_route))
}

/// The header a cookie session's API request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

impl FromRequestParts<Server> for User {
    type Rejection = ApiError;

    /// The token's owner (`Authorization: Bearer TOKEN`), or a UI session's (whose requests
    /// that act must carry its CSRF token in `X-CSRF-Token`); without a tokens file, the
    /// local operator.
    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, ApiError> {
        if parts.headers.get(header::AUTHORIZATION).is_none()
            && let Some((user, cookie)) = crate::ui::session_user(server, &parts.headers)
        {
            let reads = parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
            let csrf = parts.headers.get(CSRF_HEADER).and_then(|value| value.to_str().ok()).unwrap_or("");
            if !reads && !server.session_key.csrf_matches(&cookie, csrf) {
                return Err(ApiError::forbidden(
                    "a request with a session cookie that acts needs the session's CSRF token in X-CSRF-Token",
                ));
            }
            return Ok(user);
        }
        let Some(tokens) = &server.tokens else {
            return Ok(User { name: LOCAL_USER.to_owned(), role: Role::Operator });
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized("no `Authorization: Bearer TOKEN` header"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|text| text.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("the Authorization header is not `Bearer TOKEN`"))?;
        tokens.user(token).cloned().ok_or_else(|| ApiError::unauthorized("the token is not known"))
    }
}

impl User {
    /// Acting needs the `operator` role.
    pub(crate) fn may_act(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Operator => Ok(()),
            Role::Viewer => {
                Err(ApiError::forbidden(format!("{} is a viewer: acting needs the operator role", self.name)))
            }
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route (the routes are in /api/v1/openapi.json)")
}

/// The parameters `GET /api/v1/runs` takes.
const RUNS_PARAMETERS: [&str; 8] =
    ["workflow", "state", "origin", "window_from", "window_to", "sort", "limit", "cursor"];

/// A runs listing's parameters, checked: what `GET /api/v1/runs` and the runs page take.
pub(crate) struct RunsQuery {
    filter: RunFilter,
    choice: PendingChoice,
    /// The first and last local day a run's window starts on (both given, or neither).
    window: Option<(chrono::NaiveDate, chrono::NaiveDate)>,
    order: sluice_client::runs::Order,
    limit: usize,
    cursor: Option<String>,
}

impl RunsQuery {
    /// Every problem is a 400 naming its parameter.
    pub(crate) fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        if let Some(unknown) = params.keys().find(|name| !RUNS_PARAMETERS.contains(&name.as_str())) {
            return Err(ApiError::invalid(format!(
                "unknown parameter `{unknown}` (parameters: {})",
                RUNS_PARAMETERS.join(", ")
            )));
        }
        let pending_only = params.get("state").is_some_and(|state| state == sluice_client::json::PENDING);
        let state = match params.get("state").filter(|_| !pending_only) {
            Some(text) => Some(RunState::parse(text).ok_or_else(|| {
                ApiError::invalid(format!(
                    "state: unknown state `{text}`: use pending, running, succeeded, failed or cancelled"
                ))
            })?),
            None => None,
        };
        if let Some(workflow) = params.get("workflow") {
            sluice_proto::spec::check_name("workflow", workflow)
                .map_err(|problem| ApiError::invalid(format!("workflow: {problem}")))?;
        }
        if let Some(origin) = params.get("origin") {
            sluice_proto::messages::check_origin(origin)
                .map_err(|problem| ApiError::invalid(format!("origin: {problem}")))?;
        }
        let limit = limit_param(params, RUNS_LIMIT_DEFAULT, PAGE_MAX)?;
        let cursor = params.get("cursor").cloned();
        if pending_only && cursor.is_some() {
            return Err(ApiError::invalid("state=pending lists one page (up to limit 1000): it takes no cursor"));
        }
        let choice = if pending_only { PendingChoice::Only } else { PendingChoice::Included };
        let filter =
            RunFilter { workflow: params.get("workflow").cloned(), state, origin: params.get("origin").cloned() };
        let names = sluice_client::runs::RangeNames {
            from: "window_from",
            to: "window_to",
            sort: "sort",
            workflow: "workflow",
        };
        let text = |name: &str| params.get(name).map(String::as_str);
        let (window, order) = sluice_client::runs::range_and_order(
            text("window_from"),
            text("window_to"),
            text("sort"),
            filter.workflow.is_some(),
            &names,
        )?;
        if window.is_some() && pending_only {
            return Err(ApiError::invalid("a window range lists stored runs: it takes no state=pending"));
        }
        Ok(Self { filter, choice, window, order, limit, cursor })
    }

    pub(crate) async fn list(&self, js: &async_nats::jetstream::Context) -> Result<Listing, ApiError> {
        if let Some(range) = self.window {
            let page = sluice_client::runs::in_window_range(
                js,
                &self.filter,
                range,
                self.order,
                self.limit,
                self.cursor.as_deref(),
            )
            .await?;
            return Ok(Listing { pending: Vec::new(), runs: page.runs, next: page.next });
        }
        Ok(sluice_client::runs::list_with_pending(js, &self.filter, self.choice, self.limit, self.cursor.as_deref())
            .await?)
    }
}

impl RunsQuery {
    /// Every stored run that matches, newest first, a page at a time; more than `max` is
    /// refused, saying to narrow the filter.
    pub(crate) async fn select(
        mut self,
        js: &async_nats::jetstream::Context,
        max: usize,
    ) -> Result<Vec<sluice_proto::RunRecord>, ApiError> {
        self.limit = PAGE_MAX;
        self.cursor = None;
        let mut runs = Vec::new();
        loop {
            let page = self.list(js).await?;
            runs.extend(page.runs);
            if runs.len() > max {
                return Err(ApiError::invalid(format!(
                    "the filter matches more than {max} runs, the most one bulk action touches: narrow it (a window range, a state)"
                )));
            }
            match page.next {
                Some(next) => self.cursor = Some(next),
                None => return Ok(runs),
            }
        }
    }
}

/// `POST /api/v1/runs/bulk`: a bulk action by filter; `dry_run` says which runs it would
/// touch, else it goes as one control request.
async fn bulk_action(State(server): State<Server>, user: User, body: Bytes) -> Result<Response, ApiError> {
    user.may_act()?;
    let ask: crate::bulk::BulkAsk =
        serde_json::from_slice(&body).map_err(|error| ApiError::invalid(format!("body: {error}")))?;
    let selected = ask.select(&server.js).await?;
    if ask.dry_run {
        let runs: Vec<Value> = selected.runs.iter().map(run_row).collect();
        let value = json!({"action": selected.action.as_str(), "count": runs.len(), "runs": runs});
        return Ok(Json(value).into_response());
    }
    answer(&server, &user, selected.request(ask.expect)?).await
}

/// `GET /api/v1/runs`: `runs -o json`'s shape (`{"runs": [...], "next": cursor}`), pending
/// submissions first, then runs newest first.
async fn list_runs(
    State(server): State<Server>,
    _user: User,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let page = RunsQuery::parse(&params)?.list(&server.js).await?;
    let mut runs: Vec<Value> = page.pending.iter().map(pending_row).collect();
    runs.extend(page.runs.iter().map(run_row));
    Ok(Json(json!({"runs": runs, "next": page.next})))
}

/// `GET /api/v1/workers`: `sluice workers -o json`.
async fn workers(State(server): State<Server>, _user: User) -> Result<Json<Value>, ApiError> {
    let workers = sluice_client::stores::live_workers(&server.js).await?;
    Ok(Json(sluice_client::json::workers_json(&workers)))
}

/// The filters of a dead-letter listing, checked: what `GET /api/v1/dlq` and the dead
/// letters page take (absent: every dead letter).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeadLetterFilter {
    pub workflow: Option<String>,
    pub pool: Option<String>,
}

impl DeadLetterFilter {
    pub(crate) fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        if let Some(unknown) = params.keys().find(|name| !["workflow", "pool"].contains(&name.as_str())) {
            return Err(ApiError::invalid(format!("unknown parameter `{unknown}` (parameters: workflow, pool)")));
        }
        for (name, value) in params {
            sluice_proto::spec::check_name(name, value)
                .map_err(|problem| ApiError::invalid(format!("{name}: {problem}")))?;
        }
        Ok(Self { workflow: params.get("workflow").cloned(), pool: params.get("pool").cloned() })
    }

    /// The matching dead letters, oldest first.
    pub(crate) async fn load(&self, js: &async_nats::jetstream::Context) -> Result<Vec<DeadLetterEntry>, ApiError> {
        let letters = sluice_client::dead_letters::load(js).await?;
        Ok(letters.into_iter().filter(|entry| entry.matches(self.workflow.as_deref(), self.pool.as_deref())).collect())
    }
}

/// `GET /api/v1/dlq`: `dlq list -o json`.
async fn list_dead_letters(
    State(server): State<Server>,
    _user: User,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let letters = DeadLetterFilter::parse(&params)?.load(&server.js).await?;
    Ok(Json(json!({"dead_letters": letters.iter().map(dead_letter_row).collect::<Vec<_>>()})))
}

pub(crate) fn dead_letter_id(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid(format!("id: `{text}` is not a dead letter id (a number from GET /api/v1/dlq)")))
}

/// A dead letter, or 404 naming it.
pub(crate) async fn dead_letter(server: &Server, id: u64) -> Result<DeadLetterEntry, ApiError> {
    sluice_client::dead_letters::one(&server.js, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {id} (replayed, purged, or never was)")))
}

/// `GET /api/v1/dlq/{id}`: `dlq show -o json`.
async fn get_dead_letter(
    State(server): State<Server>,
    _user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = dead_letter(&server, dead_letter_id(&id)?).await?;
    Ok(Json(dead_letter_json(&entry)))
}

/// The request that replays `entry`, or 400 when nobody could read it.
pub(crate) fn replay_request(entry: &DeadLetterEntry, spec: Option<String>) -> Result<ControlRequest, ApiError> {
    entry.replay_request(spec).ok_or_else(|| {
        ApiError::invalid(format!(
            "dead letter {} could not be read, so it cannot be replayed: {}",
            entry.id, entry.reason
        ))
    })
}

/// The body of a replay: a workflow whose definitions the job that runs again takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    spec: Option<String>,
}

/// `POST /api/v1/dlq/{id}/replay`: the job is queued again in a fresh series of attempts.
async fn replay_dead_letter(
    State(server): State<Server>,
    user: User,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    user.may_act()?;
    let entry = dead_letter(&server, dead_letter_id(&id)?).await?;
    let body: ReplayBody = json_body(&body)?;
    answer(&server, &user, replay_request(&entry, body.spec)?).await
}

/// An action's optional JSON body (empty: every field absent).
fn json_body<T: Default + serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| ApiError::invalid(format!("body: {error}")))
}

/// Every schedule that can be read, with its rule evaluated (a schedule whose workflow no
/// longer parses is left out and logged).
pub(crate) async fn schedules(
    js: &async_nats::jetstream::Context,
) -> Result<Vec<(ScheduleRecord, Schedule)>, ApiError> {
    let Some(stores) = sluice_client::Stores::open(js).await? else { return Ok(Vec::new()) };
    let mut evaluated = Vec::new();
    for record in stores.schedules().await? {
        match sluice_client::json::schedule_of(&record) {
            Ok(schedule) => evaluated.push((record, schedule)),
            Err(error) => tracing::warn!(schedule = %record.name, %error, "a schedule cannot be read; not shown"),
        }
    }
    Ok(evaluated)
}

/// `GET /api/v1/schedules`: `schedule list -o json`.
async fn list_schedules(State(server): State<Server>, _user: User) -> Result<Json<Value>, ApiError> {
    let now = chrono::Utc::now();
    let values: Vec<Value> = schedules(&server.js)
        .await?
        .iter()
        .map(|(record, schedule)| sluice_client::json::schedule_json(record, schedule, now))
        .collect();
    Ok(Json(json!({"schedules": values})))
}

/// The control request of a schedule action (`pause`, `resume`, `trigger`), checked; a
/// trigger's run id is chosen here so the run can be followed at once.
pub(crate) fn schedule_request(name: &str, action: &str) -> Result<ControlRequest, ApiError> {
    sluice_proto::spec::check_name("schedule", name)
        .map_err(|problem| ApiError::invalid(format!("name: {problem}")))?;
    let name = name.to_owned();
    Ok(match action {
        "pause" => ControlRequest::new(ControlAction::SchedulePause { name }, None, ""),
        "resume" => ControlRequest::new(ControlAction::ScheduleResume { name }, None, ""),
        "trigger" => ControlRequest::new(ControlAction::ScheduleTrigger { name }, Some(RunId::new()), ""),
        other => {
            return Err(ApiError::not_found(format!(
                "no schedule action `{other}` (there are pause, resume and trigger)"
            )));
        }
    })
}

/// `POST /api/v1/schedules/{name}/pause|resume|trigger`; a trigger's outcome names the run
/// it made in `run_id`.
async fn change_schedule(
    State(server): State<Server>,
    user: User,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    user.may_act()?;
    answer(&server, &user, schedule_request(&name, &action)?).await
}

/// Days an audit grid shows unless told otherwise.
pub const AUDIT_DAYS_DEFAULT: i64 = 30;

/// The parameters `GET /api/v1/workflows/{name}/audit` takes.
const AUDIT_PARAMETERS: [&str; 5] = ["from", "to", "interval", "timezone", "missing"];

/// `GET /api/v1/workflows/{name}/audit`: `sluice audit -o json`, by default the last 30 days
/// (to today, in the workflow's zone).
async fn audit_grid(
    State(server): State<Server>,
    _user: User,
    Path(name): Path<String>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    if let Some(unknown) = params.keys().find(|key| !AUDIT_PARAMETERS.contains(&key.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown parameter `{unknown}` (parameters: {})",
            AUDIT_PARAMETERS.join(", ")
        )));
    }
    sluice_proto::spec::check_name("workflow", &name)
        .map_err(|problem| ApiError::invalid(format!("name: {problem}")))?;
    let zone = match params.get("timezone") {
        Some(text) => {
            sluice_proto::window::parse_zone(text).map_err(|error| ApiError::invalid(format!("timezone: {error}")))?
        }
        None => sluice_client::audit::workflow_zone(&server.js, &name).await?,
    };
    let day = |key: &str| params.get(key).map(|text| sluice_proto::window::day_of(key, text)).transpose();
    let to =
        day("to").map_err(ApiError::invalid)?.unwrap_or_else(|| chrono::Utc::now().with_timezone(&zone).date_naive());
    let from = day("from").map_err(ApiError::invalid)?.unwrap_or(to - chrono::Duration::days(AUDIT_DAYS_DEFAULT - 1));
    if from > to {
        return Err(ApiError::invalid(format!("from {from} is after to {to}")));
    }
    let interval = match params.get("interval") {
        Some(text) => Some(
            text.parse::<sluice_proto::HumanDuration>()
                .map_err(|error| ApiError::invalid(format!("interval: {error}")))?
                .as_duration(),
        ),
        None => None,
    };
    let missing_only = match params.get("missing").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::invalid(format!("missing must be true or false, not `{other}`"))),
    };
    let query = sluice_client::audit::AuditQuery { workflow: name, from, to, interval, zone: Some(zone), missing_only };
    let grid = sluice_client::audit::grid(&server.js, &query).await?;
    Ok(Json(sluice_client::audit::grid_json(&grid)))
}

/// Most runs of one backfill in flight at once (the coordinator checks it too).
pub const BACKFILL_PARALLEL_MAX: u32 = 64;

/// A backfill as a form or a body asks for one: the workflow by name (it runs as its
/// schedule's or newest run's YAML), days, interval, parallelism, which windows rerun.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackfillAsk {
    pub workflow: String,
    pub from: String,
    pub to: String,
    #[serde(default = "one_day")]
    pub interval: String,
    #[serde(default = "two")]
    pub max_parallel_runs: u32,
    #[serde(default)]
    pub rerun: sluice_proto::Rerun,
}

fn one_day() -> String {
    "1d".into()
}

fn two() -> u32 {
    2
}

impl Default for BackfillAsk {
    /// An empty form: no workflow or days yet, the other fields at their defaults.
    fn default() -> Self {
        Self {
            workflow: String::new(),
            from: String::new(),
            to: String::new(),
            interval: one_day(),
            max_parallel_runs: two(),
            rerun: sluice_proto::Rerun::Missing,
        }
    }
}

/// A backfill asked for, checked and planned: what it would do, before it is created.
pub(crate) struct BackfillPlan {
    pub request: sluice_proto::BackfillRequest,
    pub windows: Vec<sluice_proto::BackfillWindow>,
}

impl BackfillAsk {
    /// Checks every field (a 400 names it) and plans the windows as the coordinator will.
    pub(crate) async fn plan(&self, js: &async_nats::jetstream::Context) -> Result<BackfillPlan, ApiError> {
        let invalid = |field: &str, problem: String| ApiError::invalid(format!("{field}: {problem}"));
        sluice_proto::spec::check_name("workflow", &self.workflow).map_err(|problem| invalid("workflow", problem))?;
        let from = sluice_proto::window::day_of("from", &self.from).map_err(ApiError::invalid)?;
        let to = sluice_proto::window::day_of("to", &self.to).map_err(ApiError::invalid)?;
        let interval: sluice_proto::HumanDuration =
            self.interval.parse().map_err(|error| invalid("interval", format!("{error}")))?;
        if !(1..=BACKFILL_PARALLEL_MAX).contains(&self.max_parallel_runs) {
            return Err(ApiError::invalid(format!(
                "max_parallel_runs must be 1 to {BACKFILL_PARALLEL_MAX}, not {}",
                self.max_parallel_runs
            )));
        }
        let yaml = sluice_client::specs::current_of_workflow(js, &self.workflow).await?.ok_or_else(|| {
            invalid("workflow", format!("`{}` is not applied here (`sluice workflow apply`), has no schedule and no run, so its YAML is unknown", self.workflow))
        })?;
        let spec = sluice_proto::WorkflowSpec::parse(&yaml).map_err(|error| invalid("workflow", error.to_string()))?;
        let windows = sluice_proto::Window::range(
            from,
            to,
            interval.as_duration(),
            spec.zone(),
            sluice_proto::limits::BACKFILL_WINDOWS_MAX,
        )
        .map_err(|error| ApiError::invalid(error.to_string()))?;
        let runs = sluice_client::runs::by_local_days(js, &self.workflow, from, to).await?;
        let request = sluice_proto::BackfillRequest {
            id: RunId::new(),
            workflow: yaml,
            from: from.to_string(),
            to: to.to_string(),
            interval: interval.to_string(),
            max_parallel_runs: self.max_parallel_runs,
            rerun: self.rerun,
        };
        Ok(BackfillPlan { windows: sluice_proto::backfill::plan(windows, &runs, self.rerun), request })
    }
}

/// `GET /api/v1/backfills`: `backfill list -o json`.
async fn list_backfills(State(server): State<Server>, _user: User) -> Result<Json<Value>, ApiError> {
    let records = match sluice_client::Stores::open(&server.js).await? {
        Some(stores) => stores.backfills().await?,
        None => Vec::new(),
    };
    let values: Vec<Value> = records.iter().map(|record| sluice_client::json::backfill_json(record, false)).collect();
    Ok(Json(json!({"backfills": values})))
}

/// `GET /api/v1/workflows`: `workflow list -o json`.
async fn list_workflows(State(server): State<Server>, _user: User) -> Result<Json<Value>, ApiError> {
    let records = match sluice_client::Stores::open(&server.js).await? {
        Some(stores) => stores.workflows().await?,
        None => Vec::new(),
    };
    Ok(Json(json!({"workflows": records.iter().map(sluice_client::json::workflow_json).collect::<Vec<_>>()})))
}

/// The body of `POST /api/v1/workflows`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkflowBody {
    yaml: String,
}

/// `POST /api/v1/workflows`: `workflow apply`; answered with the outcome and
/// `Location: /api/v1/workflows/{name}`.
async fn apply_workflow(State(server): State<Server>, user: User, body: Bytes) -> Result<Response, ApiError> {
    user.may_act()?;
    let body: WorkflowBody =
        serde_json::from_slice(&body).map_err(|error| ApiError::invalid(format!("body: {error}")))?;
    let spec = WorkflowSpec::parse(&body.yaml).map_err(|error| ApiError::invalid(format!("yaml: {error}")))?;
    let request = ControlRequest::new(ControlAction::WorkflowApply { workflow: body.yaml }, None, "");
    let mut response = answer(&server, &user, request).await?;
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("/api/v1/workflows/{}", spec.name)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// A stored workflow, or 404 naming those there are.
async fn workflow(server: &Server, name: &str) -> Result<sluice_proto::WorkflowRecord, ApiError> {
    sluice_proto::spec::check_name("workflow", name)
        .map_err(|problem| ApiError::invalid(format!("name: {problem}")))?;
    let Some(stores) = sluice_client::Stores::open(&server.js).await? else {
        return Err(ApiError::not_found(format!("no workflow `{name}`; workflows: there are none")));
    };
    if let Some(record) = stores.workflow(name).await? {
        return Ok(record);
    }
    let names: Vec<String> = stores.workflows().await?.into_iter().map(|record| record.name).collect();
    let known = if names.is_empty() { "there are none".to_owned() } else { names.join(", ") };
    Err(ApiError::not_found(format!("no workflow `{name}`; workflows: {known}")))
}

/// `GET /api/v1/workflows/{name}`: `workflow show NAME -o json` (the record and its YAML).
async fn get_workflow(
    State(server): State<Server>,
    _user: User,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = workflow(&server, &name).await?;
    let yaml = sluice_client::specs::read(&server.js, &record.spec_hash).await?.ok_or_else(|| {
        ApiError::from(ClientError::Invalid(format!("workflow {name}: its spec {} is missing", record.spec_hash)))
    })?;
    let mut value = sluice_client::json::workflow_json(&record);
    value["yaml"] = json!(yaml);
    Ok(Json(value))
}

/// `DELETE /api/v1/workflows/{name}`: `workflow delete NAME` (its schedule goes too; its
/// runs stay).
async fn delete_workflow(
    State(server): State<Server>,
    user: User,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    user.may_act()?;
    sluice_proto::spec::check_name("workflow", &name)
        .map_err(|problem| ApiError::invalid(format!("name: {problem}")))?;
    answer(&server, &user, ControlRequest::new(ControlAction::WorkflowDelete { name }, None, "")).await
}

/// A backfill, or 404 naming it.
pub(crate) async fn backfill(server: &Server, text: &str) -> Result<sluice_proto::BackfillRecord, ApiError> {
    let id: RunId =
        text.parse().map_err(|_| ApiError::invalid(format!("id: `{text}` is not a backfill id (a UUIDv7)")))?;
    let stores = sluice_client::Stores::open(&server.js).await?;
    let record = match stores {
        Some(stores) => stores.backfill(&id).await?,
        None => None,
    };
    record.ok_or_else(|| ApiError::not_found(format!("no backfill {id}")))
}

/// `GET /api/v1/backfills/{id}`: `backfill status ID -o json`.
async fn get_backfill(
    State(server): State<Server>,
    _user: User,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(sluice_client::json::backfill_json(&backfill(&server, &id).await?, true)))
}

/// `POST /api/v1/backfills`: creates it; answered with the outcome and
/// `Location: /api/v1/backfills/{id}`.
async fn create_backfill(State(server): State<Server>, user: User, body: Bytes) -> Result<Response, ApiError> {
    user.may_act()?;
    let ask: BackfillAsk =
        serde_json::from_slice(&body).map_err(|error| ApiError::invalid(format!("body: {error}")))?;
    let plan = ask.plan(&server.js).await?;
    let id = plan.request.id;
    let request = ControlRequest::new(ControlAction::BackfillCreate(plan.request), None, "");
    let mut response = answer(&server, &user, request).await?;
    if let Ok(value) = axum::http::HeaderValue::from_str(&format!("/api/v1/backfills/{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// `POST /api/v1/backfills/{id}/cancel`: no new windows start, running ones are cancelled.
async fn cancel_backfill(
    State(server): State<Server>,
    user: User,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    user.may_act()?;
    let record = backfill(&server, &id).await?;
    answer(&server, &user, ControlRequest::new(ControlAction::BackfillCancel { id: record.id }, None, "")).await
}

pub(crate) fn run_id(text: &str) -> Result<RunId, ApiError> {
    text.parse().map_err(|_| ApiError::invalid(format!("id: `{text}` is not a run id (a UUIDv7)")))
}

/// The parameters `GET /api/v1/requests` takes.
const REQUESTS_PARAMETERS: [&str; 2] = ["before", "limit"];
/// Outcomes a requests page holds unless `limit` says otherwise.
pub const REQUESTS_LIMIT_DEFAULT: usize = 50;

/// A requests page's parameters, checked: `(before, limit)`.
pub(crate) fn requests_query(params: &BTreeMap<String, String>) -> Result<(Option<u64>, usize), ApiError> {
    if let Some(unknown) = params.keys().find(|name| !REQUESTS_PARAMETERS.contains(&name.as_str())) {
        return Err(ApiError::invalid(format!(
            "unknown parameter `{unknown}` (parameters: {})",
            REQUESTS_PARAMETERS.join(", ")
        )));
    }
    let before = match params.get("before") {
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("before must be a whole number, not `{text}`")))?,
        ),
        None => None,
    };
    let limit = limit_param(params, REQUESTS_LIMIT_DEFAULT, sluice_client::outcomes::OUTCOMES_PAGE_MAX)?;
    Ok((before, limit))
}

/// `limit`: `default` when absent, else 1 to `max` (a 400 naming it otherwise).
fn limit_param(params: &BTreeMap<String, String>, default: usize, max: usize) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=max).contains(limit))
            .ok_or_else(|| ApiError::invalid(format!("limit must be 1 to {max}, not `{text}`"))),
    }
}

/// `GET /api/v1/requests`: the control requests answered lately (kept 7 days), newest
/// first: `{"requests": [ControlOutcome], "earlier": before-cursor or null, "waiting":
/// [request]}`; `waiting` (those no coordinator has answered yet) on the first page only.
async fn list_requests(
    State(server): State<Server>,
    _user: User,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let (before, limit) = requests_query(&params)?;
    let page = sluice_client::outcomes::recent(&server.js, before, limit).await?;
    let waiting = match before {
        None => sluice_client::outcomes::unanswered(&server.js, limit).await?,
        Some(_) => Vec::new(),
    };
    let waiting: Vec<Value> = waiting.iter().map(sluice_client::json::waiting_request_json).collect();
    Ok(Json(json!({"requests": page.outcomes, "earlier": page.earlier, "waiting": waiting})))
}

/// `GET /api/v1/runs/{id}`: `status -o json`'s shape (a pending run's too).
async fn get_run(State(server): State<Server>, _user: User, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = run_id(&id)?;
    match locate(&server.js, &id).await? {
        Located::Found(view) => Ok(Json(view_json(&view))),
        Located::Rejected(rejection) => {
            Err(ApiError::not_found(format!("run {id} was rejected: {}", rejection.reason)))
        }
        Located::Pending(pending) => Ok(Json(pending_json(&pending))),
        Located::Unknown => Err(ApiError::not_found(format!("no run {id}"))),
    }
}

/// `POST /api/v1/runs/{id}/cancel`.
async fn cancel(State(server): State<Server>, user: User, Path(id): Path<String>) -> Result<Response, ApiError> {
    user.may_act()?;
    let id = run_id(&id)?;
    answer(&server, &user, ControlRequest::new(ControlAction::Cancel, Some(id), "")).await
}

/// The body of a retry: a job to run again (with what depends on it), a workflow whose
/// definitions the jobs that run again take; both optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    spec: Option<String>,
}

/// `POST /api/v1/runs/{id}/retry`.
async fn retry(
    State(server): State<Server>,
    user: User,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    user.may_act()?;
    let id = run_id(&id)?;
    let body: RetryBody = json_body(&body)?;
    let request =
        ControlRequest { job: body.job, spec: body.spec, ..ControlRequest::new(ControlAction::Retry, Some(id), "") };
    answer(&server, &user, request).await
}

/// What an action got: the coordinator's answer, or, when none came within
/// [`ACTION_WAIT`], the id to look it up by later.
pub(crate) enum Answer {
    Outcome(ControlOutcome),
    Waiting(RequestId),
}

impl Answer {
    /// The request this answers, to look its outcome up by.
    pub(crate) fn request_id(&self) -> RequestId {
        match self {
            Answer::Outcome(outcome) => outcome.request_id,
            Answer::Waiting(id) => *id,
        }
    }
}

/// The body of a mark: how the job ends, and (when succeeded) the output jobs that need it
/// read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkBody {
    #[serde(rename = "as")]
    as_: sluice_proto::MarkAs,
    #[serde(default)]
    output: Option<Value>,
}

/// The request that ends `job` of run `id` by hand, checked.
pub(crate) fn mark_request(
    id: RunId,
    job: &str,
    as_: sluice_proto::MarkAs,
    output: Option<Value>,
) -> Result<ControlRequest, ApiError> {
    if let Some(output) = &output {
        if as_ != sluice_proto::MarkAs::Succeeded {
            return Err(ApiError::invalid("output: only a job marked succeeded has an output"));
        }
        sluice_proto::spawn::check_output(output).map_err(|problem| ApiError::invalid(format!("output: {problem}")))?;
    }
    let action = ControlAction::Mark { job: job.to_owned(), as_, output };
    Ok(ControlRequest::new(action, Some(id), ""))
}

/// `POST /api/v1/runs/{id}/jobs/{job}/mark`: `{"as": "succeeded" | "skipped", "output"?}`.
async fn mark(
    State(server): State<Server>,
    user: User,
    Path((id, job)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    user.may_act()?;
    let id = run_id(&id)?;
    let body: MarkBody = serde_json::from_slice(&body).map_err(|error| ApiError::invalid(format!("body: {error}")))?;
    answer(&server, &user, mark_request(id, &job, body.as_, body.output)?).await
}

/// Sends `request` as `user` and waits for its outcome.
pub(crate) async fn act(server: &Server, user: &User, request: ControlRequest) -> Result<Answer, ApiError> {
    let request = ControlRequest { requested_by: user.name.clone(), ..request };
    let id = sluice_client::requests::send_control(&server.js, &server.identity, &request).await?;
    match sluice_client::requests::await_outcome(&server.js, &id, request.action_name(), ACTION_WAIT).await {
        Ok(outcome) => Ok(Answer::Outcome(outcome)),
        Err(ClientError::NoAnswer { .. }) => Ok(Answer::Waiting(id)),
        Err(other) => Err(other.into()),
    }
}

/// [`act`], answered as the API answers: 200 with the outcome when applied; 404 / 409 / 400
/// when refused; 202 with the request id when the coordinator has not answered yet.
async fn answer(server: &Server, user: &User, request: ControlRequest) -> Result<Response, ApiError> {
    match act(server, user, request).await? {
        Answer::Outcome(outcome) => {
            let reason = outcome.reason.clone();
            match (outcome.outcome, outcome.kind) {
                (Outcome::Applied, _) => Ok(Json(json!({"outcome": outcome})).into_response()),
                (Outcome::Refused, Some(RefusalKind::NotFound)) => Err(ApiError::not_found(reason)),
                (Outcome::Refused, Some(RefusalKind::Conflict)) => Err(ApiError::conflict(reason)),
                (Outcome::Refused, _) => Err(ApiError::invalid(reason)),
            }
        }
        Answer::Waiting(id) => Ok((StatusCode::ACCEPTED, Json(json!({"request_id": id.to_string()}))).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let document: Value = serde_json::from_str(crate::OPENAPI).unwrap();
        assert_eq!(document["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
        let mut documented = BTreeSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let served: BTreeSet<(String, String)> =
            ROUTES.iter().map(|(method, path)| ((*method).to_owned(), (*path).to_owned())).collect();
        assert_eq!(documented, served, "openapi.json and ROUTES drifted");
    }
}
