//! The JSON shapes of runs, jobs and their notifications: what `sluice status -o json` and
//! `sluice runs -o json` print and what the HTTP API answers, built in one place so the two
//! never drift (documented in docs/cli.md).

use chrono::{DateTime, Utc};
use serde_json::json;
use sluice_proto::schedule::Schedule;
use sluice_proto::{
    BackfillRecord, BackfillWindow, JobRecord, RunRecord, RunState, ScheduleRecord, WorkerRecord, WorkflowRecord,
    WorkflowSpec, names,
};

use crate::dead_letters::DeadLetterEntry;

use crate::runs::PendingRun;
use crate::view::RunView;

/// The display state of a submission no coordinator has taken yet.
pub const PENDING: &str = "pending";

/// A time as the JSON shapes write it: RFC 3339 in UTC with milliseconds, or `null`.
pub fn time(value: Option<DateTime<Utc>>) -> serde_json::Value {
    value
        .map(|time| json!(time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(serde_json::Value::Null)
}

/// A run as a row of `runs -o json`.
pub fn run_row(run: &RunRecord) -> serde_json::Value {
    json!({
        "id": run.id.to_string(),
        "workflow": run.workflow,
        "state": run.state.as_str(),
        "window": {"start": run.window.start_rfc3339(), "end": run.window.end_rfc3339()},
        "created_at": time(Some(run.created_at)),
        "finished_at": time(run.finished_at),
        "origin": run.origin,
    })
}

/// A pending submission as a row of `runs -o json`: the keys of a run's row, then
/// `submitted_at` (docs/cli.md).
pub fn pending_row(run: &PendingRun) -> serde_json::Value {
    json!({
        "id": run.id.to_string(),
        "workflow": run.workflow,
        "state": PENDING,
        "window": run.window.as_ref().map(|window| json!({"start": window.start_rfc3339(), "end": window.end_rfc3339()})),
        "created_at": null,
        "finished_at": null,
        "origin": run.origin,
        "submitted_at": time(Some(run.submitted_at)),
    })
}

/// The stable JSON shape of `status -o json` (documented in docs/cli.md).
pub fn view_json(view: &RunView) -> serde_json::Value {
    let record = &view.record;
    json!({
        "id": record.id.to_string(),
        "workflow": record.workflow,
        "state": record.state.as_str(),
        "window": {"start": record.window.start_rfc3339(), "end": record.window.end_rfc3339()},
        "params": record.params,
        "created_at": time(Some(record.created_at)),
        "finished_at": time(record.finished_at),
        "error": record.error,
        "trace_id": record.traceparent.as_deref().and_then(sluice_proto::TraceParent::parse).map(|parent| parent.trace_id_hex()),
        "spec_hash": record.spec_hash,
        "jobs": view.jobs.iter().map(|job| job_json(view, job)).collect::<Vec<_>>(),
        "cancelled_by": record.cancelled_by,
        "notifications": view.notifications.iter().map(notification_json).collect::<Vec<_>>(),
    })
}

/// One notification's delivery in `status -o json`.
pub fn notification_json(status: &sluice_proto::notify::NotifyStatus) -> serde_json::Value {
    json!({
        "event": status.event.as_str(),
        "target": status.target,
        "state": status.state.as_str(),
        "status_code": status.status_code,
        "attempts": status.attempts,
        "last_at": time(Some(status.last_at)),
        "error": status.error,
        "id": status.id,
    })
}

/// `status -o json` of a pending run: the keys of the run shape it has, then `submitted_at`
/// (docs/cli.md).
pub fn pending_json(run: &PendingRun) -> serde_json::Value {
    let mut out = pending_row(run);
    out["jobs"] = json!([]);
    out["notifications"] = json!([]);
    out
}

/// `status RUN --job J -o json`: the job, and a line for each of its children.
pub fn one_job_json(view: &RunView, job: &JobRecord) -> serde_json::Value {
    let mut out = job_json(view, job);
    out["run"] = json!(view.record.id.to_string());
    out["child_jobs"] = view
        .children_of(&job.name)
        .map(|child| {
            json!({"name": child.name, "state": child.state.as_str(), "attempts": child.attempts, "error": child.error})
        })
        .collect();
    out
}

pub fn job_json(view: &RunView, job: &JobRecord) -> serde_json::Value {
    let children = (job.children > 0).then(|| json!({"total": job.children, "by_state": view.child_counts(&job.name)}));
    json!({
        "name": job.name,
        "state": job.state.as_str(),
        "attempts": job.attempts,
        "started_at": time(job.started_at),
        "finished_at": time(job.finished_at),
        "error": job.error,
        "retry_at": time(job.retry_at),
        "output": job.output,
        "children": children,
        "attempt_history": job.attempt_history.iter().map(|attempt| json!({
            "attempt": attempt.attempt,
            "started_at": time(Some(attempt.started_at)),
            "finished_at": time(attempt.finished_at),
            "error": attempt.error,
            "worker": attempt.worker,
            "redelivered_to": attempt.redelivered_to,
            "spec_hash": attempt.spec_hash,
            "found_later": attempt.found_later,
        })).collect::<Vec<_>>(),
        "attempts_omitted": job.attempts_omitted,
        "marked": job.marked.as_ref().map(|mark| json!({"as": mark.as_.as_str(), "by": mark.by, "at": time(Some(mark.at))})),
    })
}

/// `sluice workers -o json`: every live worker and coordinator (KV `sluice-workers`).
pub fn workers_json(workers: &[WorkerRecord]) -> serde_json::Value {
    json!({"workers": workers.iter().map(|worker| json!({
        "worker_id": worker.worker_id,
        "pool": worker.pool,
        "kinds": worker.kinds,
        "protocol_versions": worker.protocol_versions,
        "version": worker.version,
        "slots": worker.slots,
        "busy": worker.busy,
        "started_at": time(Some(worker.started_at)),
        "leader": worker.leader,
    })).collect::<Vec<_>>()})
}

/// A dead letter as a row of `dlq list -o json`.
pub fn dead_letter_row(entry: &DeadLetterEntry) -> serde_json::Value {
    match &entry.letter {
        Some(letter) => json!({
            "id": entry.id,
            "run_id": letter.job.run_id.to_string(),
            "workflow": letter.job.workflow,
            "job": letter.job.job,
            "pool": letter.job.pool,
            "attempts": letter.attempts.len() + letter.attempts_omitted as usize,
            "reason": letter.reason,
            "dead_at": time(Some(letter.dead_at)),
        }),
        None => json!({"id": entry.id, "pool": entry.pool(), "raw": true, "reason": entry.reason}),
    }
}

/// One dead letter as `dlq show -o json` prints it: the job, its headers, every attempt.
pub fn dead_letter_json(entry: &DeadLetterEntry) -> serde_json::Value {
    let Some(letter) = &entry.letter else {
        return json!({"id": entry.id, "subject": entry.subject, "raw": true, "reason": entry.reason});
    };
    let attempts: Vec<serde_json::Value> = letter
        .attempts
        .iter()
        .map(|attempt| json!({"attempt": attempt.attempt, "started_at": time(Some(attempt.started_at)), "finished_at": time(attempt.finished_at), "error": attempt.error, "worker": attempt.worker}))
        .collect();
    let job = &letter.job;
    json!({
        "id": entry.id,
        "subject": entry.subject,
        "reason": letter.reason,
        "dead_at": time(Some(letter.dead_at)),
        "headers": {
            names::HEADER_MSG_ID: names::dead_letter_id(&job.run_id, &job.job, job.generation),
            names::HEADER_RUN_ID: job.run_id.to_string(),
            names::HEADER_JOB: job.job,
        },
        "job": {
            "run_id": job.run_id.to_string(), "workflow": job.workflow, "job": job.job, "kind": job.kind,
            "command": job.command, "config": job.config, "pool": job.pool,
            "window": {"start": job.window.start_rfc3339(), "end": job.window.end_rfc3339()},
            "params": job.params, "generation": job.generation, "attempt_offset": job.attempt_offset,
            "max_attempts": job.retry.max_attempts, "timeout_ms": job.timeout_ms,
        },
        "attempts": attempts,
        "attempts_omitted": letter.attempts_omitted,
    })
}

/// A schedule's rule, from the workflow its record holds; the reason when it cannot be read.
pub fn schedule_of(record: &ScheduleRecord) -> Result<Schedule, String> {
    let spec = WorkflowSpec::parse(&record.workflow).map_err(|error| error.to_string())?;
    Schedule::from_spec(&record.schedule, spec.timezone.as_deref())
}

/// The next `count` ticks a schedule fires at after `now` (none while it is paused).
pub fn next_ticks(
    record: &ScheduleRecord,
    schedule: &Schedule,
    now: DateTime<Utc>,
    count: usize,
) -> Vec<DateTime<Utc>> {
    let mut ticks = Vec::new();
    let mut cursor = now.max(record.handled_until);
    while !record.paused && ticks.len() < count {
        let Some(tick) = schedule.next_after(cursor) else { break };
        ticks.push(tick);
        cursor = tick;
    }
    ticks
}

/// A schedule as a row of `schedule list -o json`.
pub fn schedule_json(record: &ScheduleRecord, schedule: &Schedule, now: DateTime<Utc>) -> serde_json::Value {
    json!({
        "name": record.name,
        "cron": record.schedule.cron,
        "timezone": schedule.zone.name(),
        "window": record.schedule.window,
        "catchup": schedule.catchup.as_str(),
        "paused": record.paused,
        "next_tick": time(next_ticks(record, schedule, now, 1).first().copied()),
        "last_tick": time(record.last_tick),
        "last_run": record.last_run.map(|id| id.to_string()),
        "skipped_ticks": record.skipped_ticks,
    })
}

/// A workflow applied here, as a row of `workflow list -o json` (`workflow show -o json`
/// adds its `yaml`).
pub fn workflow_json(record: &WorkflowRecord) -> serde_json::Value {
    json!({
        "name": record.name,
        "description": record.description,
        "timezone": record.timezone.as_deref().unwrap_or("UTC"),
        "schedule": record.schedule,
        "jobs": record.jobs,
        "params": record.params,
        "spec_hash": record.spec_hash,
        "created_at": time(Some(record.created_at)),
        "updated_at": time(Some(record.updated_at)),
        "applied_by": record.applied_by,
    })
}

/// A control request no coordinator has answered yet, as `GET /api/v1/requests` lists it.
pub fn waiting_request_json(request: &sluice_proto::ControlRequest) -> serde_json::Value {
    json!({
        "request_id": request.request_id.map(|id| id.to_string()),
        "action": request.action_name(),
        "run_id": request.run_id.map(|id| id.to_string()),
        "requested_by": request.requested_by,
        "requested_at": time(Some(request.requested_at)),
    })
}

/// Windows by outcome.
pub fn backfill_counts(record: &BackfillRecord) -> serde_json::Value {
    let submitted = record.next as usize;
    let count = |wanted: RunState| {
        record.windows.iter().filter(|window| window.skip.is_none() && window.state == Some(wanted)).count()
    };
    let skipped = skipped_windows(record);
    let running = record.windows[..submitted.min(record.windows.len())]
        .iter()
        .filter(|window| window.skip.is_none() && !window.state.is_some_and(RunState::is_terminal))
        .count();
    json!({
        "total": record.windows.len(),
        "succeeded": count(RunState::Succeeded),
        "failed": count(RunState::Failed) + record.windows.iter().filter(|window| was_rejected(window)).count(),
        "cancelled": count(RunState::Cancelled),
        "running": running,
        "skipped": skipped,
        "pending": record.windows[submitted.min(record.windows.len())..].iter().filter(|window| window.skip.is_none()).count(),
    })
}

/// A backfill as `backfill list -o json` (`with_windows`: `backfill status -o json`) shows it.
pub fn backfill_json(record: &BackfillRecord, with_windows: bool) -> serde_json::Value {
    let mut value = json!({
        "id": record.id.to_string(),
        "workflow": record.workflow,
        "state": record.state.as_str(),
        "from": record.from,
        "to": record.to,
        "interval": record.interval,
        "max_parallel_runs": record.max_parallel_runs,
        "rerun": record.rerun.as_str(),
        "created_at": time(Some(record.created_at)),
        "finished_at": time(record.finished_at),
        "counts": backfill_counts(record),
    });
    if with_windows {
        value["windows"] = record
            .windows
            .iter()
            .enumerate()
            .map(|(index, window)| {
                let submitted = index < record.next as usize && window.skip.is_none();
                json!({
                    "start": window.window.start_rfc3339(),
                    "end": window.window.end_rfc3339(),
                    "run_id": submitted.then(|| window.run_id.to_string()),
                    "state": window.state.map(RunState::as_str).or(submitted.then_some("submitted")),
                    "skip": window.skip,
                })
            })
            .collect();
    }
    value
}

/// Whether the window's submission was rejected (that counts as failed, not skipped).
pub fn was_rejected(window: &BackfillWindow) -> bool {
    window.skip.as_deref().is_some_and(|skip| skip.starts_with("rejected"))
}

/// Windows the backfill skipped.
pub fn skipped_windows(record: &BackfillRecord) -> usize {
    record.windows.iter().filter(|window| window.skip.is_some() && !was_rejected(window)).count()
}

/// `sluice submit -o json` (and `POST /api/v1/runs`): `{"id", "workflow", "window": {"start",
/// "end"}, "duplicate"}`. For a duplicate, `workflow` and `window` are what was asked for.
pub fn submitted_json(
    published: &crate::submit::Published,
    workflow: &str,
    window: &sluice_proto::Window,
) -> serde_json::Value {
    json!({
        "id": published.run_id.to_string(),
        "workflow": workflow,
        "window": {"start": window.start_rfc3339(), "end": window.end_rfc3339()},
        "duplicate": published.duplicate,
    })
}
