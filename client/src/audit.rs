//! Which days were processed: a workflow's windows over a range, each with its latest run
//! and that run's job states (`sluice audit`, the API's and the UI's audit grid).

use std::collections::{HashMap, HashSet};

use async_nats::jetstream;
use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_json::json;
use sluice_proto::backfill::{key_of, latest_by_window};
use sluice_proto::limits::BACKFILL_WINDOWS_MAX;
use sluice_proto::{JobRecord, JobState, RunRecord, RunState, Window, WorkflowSpec};

use crate::error::ClientError;
use crate::stores::Stores;

/// One window of the grid: its latest run, if any ran, and that run's job states.
#[derive(Clone, Debug)]
pub struct Column {
    pub window: Window,
    pub run: Option<RunRecord>,
    pub states: HashMap<String, JobState>,
}

impl Column {
    /// The run's state, or `missing` when no run had this window.
    pub fn state(&self) -> &'static str {
        self.run.as_ref().map(|run| run.state.as_str()).unwrap_or("missing")
    }
}

/// The grid: windows oldest first, and every job their runs had, in dependency order.
#[derive(Clone, Debug)]
pub struct Grid {
    pub workflow: String,
    pub zone: Tz,
    pub jobs: Vec<String>,
    pub columns: Vec<Column>,
}

/// What to lay out.
#[derive(Clone, Debug)]
pub struct AuditQuery {
    pub workflow: String,
    /// First and last local day, both included.
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Each window's length; `None`: the windows its schedule's ticks process (an hourly
    /// schedule's hours), or days when it has no schedule.
    pub interval: Option<std::time::Duration>,
    /// The windows' zone; `None`: the workflow's (`workflow_zone`).
    pub zone: Option<Tz>,
    /// Only the windows without a successful run.
    pub missing_only: bool,
}

/// The zone a workflow's windows are in: that of the spec it runs with now (its schedule's,
/// else its newest run's; UTC when it has neither).
pub async fn workflow_zone(js: &jetstream::Context, workflow: &str) -> Result<Tz, ClientError> {
    let yaml = crate::specs::current_of_workflow(js, workflow).await?;
    Ok(yaml.and_then(|yaml| WorkflowSpec::parse(&yaml).ok()).map(|spec| spec.zone()).unwrap_or(chrono_tz::UTC))
}

/// Reads the grid: the range's runs from the index, then the job records of the windows'
/// latest runs, by direct gets many in flight at once (no consumer).
pub async fn grid(js: &jetstream::Context, query: &AuditQuery) -> Result<Grid, ClientError> {
    let zone = match query.zone {
        Some(zone) => zone,
        None => workflow_zone(js, &query.workflow).await?,
    };
    let windows = windows(js, query, zone).await?;
    let mut grid = Grid { workflow: query.workflow.clone(), zone, jobs: Vec::new(), columns: Vec::new() };
    let Some(stores) = Stores::open(js).await? else {
        grid.columns = windows.into_iter().map(|window| Column { window, run: None, states: HashMap::new() }).collect();
        return Ok(grid);
    };
    let runs = crate::runs::by_local_days(js, &query.workflow, query.from, query.to).await?;
    let latest = latest_by_window(&runs);
    let mut seen = HashSet::new();
    let mut shown = Vec::new();
    for window in windows {
        let run = latest.get(&key_of(&window)).map(|run| (*run).clone());
        if let Some(run) = &run {
            for name in &run.jobs {
                if seen.insert(name.clone()) {
                    grid.jobs.push(name.clone());
                }
            }
        }
        if query.missing_only && run.as_ref().is_some_and(|run| run.state == RunState::Succeeded) {
            continue;
        }
        shown.push((window, run));
    }
    let runs: Vec<&RunRecord> = shown.iter().filter_map(|(_, run)| run.as_ref()).collect();
    let mut jobs = workflow_jobs_of(&stores, &runs).await?;
    for (window, run) in shown {
        let states = run
            .as_ref()
            .and_then(|run| jobs.remove(&run.id))
            .map(|records| records.into_iter().map(|(name, job)| (name, job.state)).collect())
            .unwrap_or_default();
        grid.columns.push(Column { window, run, states });
    }
    Ok(grid)
}

/// The grid's columns: windows of the query's interval, else those of the workflow's
/// schedule, else days.
async fn windows(js: &jetstream::Context, query: &AuditQuery, zone: Tz) -> Result<Vec<Window>, ClientError> {
    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
    let schedule = match (query.interval, Stores::open(js).await?) {
        (None, Some(stores)) => stores.schedule(&query.workflow).await?,
        _ => None,
    };
    let evaluated = schedule.as_ref().and_then(|record| match crate::json::schedule_of(record) {
        Ok(schedule) => Some(schedule),
        Err(error) => {
            tracing::warn!(schedule = %record.name, %error, "a schedule cannot be read; the audit shows days");
            None
        }
    });
    if let Some(schedule) = evaluated {
        return schedule.windows_on_days(query.from, query.to, BACKFILL_WINDOWS_MAX).ok_or_else(|| {
            ClientError::Invalid(format!(
                "schedule {} has more than {BACKFILL_WINDOWS_MAX} windows from {} to {}: narrow the range, or give an interval",
                query.workflow, query.from, query.to
            ))
        });
    }
    Window::range(query.from, query.to, query.interval.unwrap_or(DAY), zone, BACKFILL_WINDOWS_MAX)
        .map_err(|error| ClientError::Invalid(error.to_string()))
}

/// The workflow jobs' records of each of `runs` (children unread), by KV gets, many in
/// flight at once.
async fn workflow_jobs_of(
    stores: &Stores,
    runs: &[&RunRecord],
) -> Result<HashMap<sluice_proto::RunId, HashMap<String, JobRecord>>, ClientError> {
    use futures::{StreamExt, TryStreamExt};
    // Owned inputs: the futures must be `Send` for any caller (the server's handlers).
    let pairs: Vec<(std::sync::Arc<RunRecord>, String)> = runs
        .iter()
        .flat_map(|run| {
            let run = std::sync::Arc::new((*run).clone());
            run.jobs.clone().into_iter().map(move |job| (run.clone(), job))
        })
        .collect();
    let records: Vec<Option<JobRecord>> = futures::stream::iter(pairs.clone().into_iter().map(|(run, job)| {
        let stores = stores.clone();
        async move { stores.job(&run, &job).await }
    }))
    .buffered(crate::runs::GETS_IN_FLIGHT)
    .try_collect()
    .await?;
    let mut jobs: HashMap<sluice_proto::RunId, HashMap<String, JobRecord>> = HashMap::new();
    for ((run, name), record) in pairs.into_iter().zip(records) {
        if let Some(record) = record {
            jobs.entry(run.id).or_default().insert(name, record);
        }
    }
    Ok(jobs)
}

/// `sluice audit -o json`: `{"workflow", "windows": [{start, end, run_id, state, jobs}]}`.
pub fn grid_json(grid: &Grid) -> serde_json::Value {
    let windows: Vec<serde_json::Value> = grid
        .columns
        .iter()
        .map(|column| {
            let jobs: serde_json::Map<String, serde_json::Value> = column
                .run
                .iter()
                .flat_map(|run| run.jobs.iter())
                .filter_map(|name| column.states.get(name).map(|state| (name.clone(), json!(state.as_str()))))
                .collect();
            json!({
                "start": column.window.start_rfc3339(),
                "end": column.window.end_rfc3339(),
                "run_id": column.run.as_ref().map(|run| run.id.to_string()),
                "state": column.state(),
                "jobs": jobs,
            })
        })
        .collect();
    json!({"workflow": grid.workflow, "windows": windows})
}
