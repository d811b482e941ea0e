//! The spans of a run, built from its records (pure): the run's span and one per job,
//! emitted by the coordinator when each ends. Their ids are derived
//! ([`sluice_proto::trace`]), so a job's span nests under its run's, and a worker's attempt
//! span under its job's, whichever process emits them and however long after a restart;
//! their times are the records' (`queued_at` … `finished_at`), not the emitting process's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sluice_proto::trace::{AttributeValue, Span, children_span_id, job_span_id, run_span_id};
use sluice_proto::{JobState, RunRecord, TraceParent};

use crate::engine::Run;

/// Children of one parent that get spans of their own by default (`--trace-child-spans`):
/// the rest are counted in one summary span, so a 100,000-child run stays viewable.
pub const CHILD_SPANS_PER_PARENT_DEFAULT: usize = 1000;
/// The most `--trace-child-spans` may be.
pub const CHILD_SPANS_PER_PARENT_MAX: usize = 100_000;

fn trace_of(record: &RunRecord) -> Option<TraceParent> {
    record.traceparent.as_deref().and_then(TraceParent::parse).filter(|trace| trace.sampled)
}

/// The span of a finished run: under the submitter's span when it sent one, else the
/// trace's root (the coordinator made the trace at the run's span).
pub fn run_span(record: &RunRecord) -> Option<Span> {
    let trace = trace_of(record)?;
    let id = record.id.to_string();
    let span_id = run_span_id(&id);
    let end = record.finished_at?;
    let mut attributes: Vec<(&'static str, AttributeValue)> = vec![
        ("sluice.run_id", id.into()),
        ("sluice.workflow", record.workflow.clone().into()),
        ("sluice.window.start", record.window.start_rfc3339().into()),
        ("sluice.window.end", record.window.end_rfc3339().into()),
        ("sluice.state", record.state.as_str().into()),
        ("sluice.origin", record.origin.clone().into()),
    ];
    if let Some(error) = &record.error {
        attributes.push(("sluice.error", error.clone().into()));
    }
    Some(Span {
        trace_id: trace.trace_id,
        span_id,
        parent_span_id: (trace.span_id != span_id).then_some(trace.span_id),
        name: format!("run {}", record.workflow),
        start: record.created_at,
        end,
        attributes,
        error: (record.state != sluice_proto::RunState::Succeeded)
            .then(|| record.error.clone().unwrap_or_else(|| format!("run {}", record.state.as_str()))),
    })
}

/// The span of job `path`'s current generation, once it has ended: queued (or, never
/// queued, started; or, never started, ended) to finished, under its parent job's span (a
/// spawned child) or the run's.
pub fn job_span(run: &Run, path: &str) -> Option<Span> {
    let record = run.record();
    let trace = trace_of(record)?;
    let job = run.job(path)?;
    let end = job.finished_at?;
    let run_id = record.id.to_string();
    let parent = match job.parent.as_deref() {
        Some(parent) => job_span_id(&run_id, parent, run.job(parent).map_or(0, |parent| parent.generation)),
        None => run_span_id(&run_id),
    };
    let start = job.queued_at.or(job.started_at).unwrap_or(end).min(end);
    let mut attributes: Vec<(&'static str, AttributeValue)> = vec![
        ("sluice.run_id", run_id.clone().into()),
        ("sluice.job", path.to_owned().into()),
        ("sluice.pool", run.pool_of(path).into()),
        ("sluice.state", job.state.as_str().into()),
        ("sluice.attempts", job.attempts.into()),
        ("sluice.generation", job.generation.into()),
    ];
    if let (Some(queued), Some(started)) = (job.queued_at, job.started_at) {
        attributes.push(("sluice.dispatch_latency_ms", millis(queued, started).into()));
    }
    if job.children > 0 {
        attributes.push(("sluice.children", job.children.into()));
    }
    if let Some(error) = &job.error {
        attributes.push(("sluice.error", error.clone().into()));
    }
    Some(Span {
        trace_id: trace.trace_id,
        span_id: job_span_id(&run_id, path, job.generation),
        parent_span_id: Some(parent),
        name: format!("job {path}"),
        start,
        end,
        attributes,
        error: (job.state == JobState::Failed).then(|| job.error.clone().unwrap_or_else(|| "failed".to_owned())),
    })
}

/// The span that stands for a parent's children beyond those with spans of their own:
/// how many, by final state, over the parent's span.
pub fn children_summary(run: &Run, parent: &str, counts: &BTreeMap<&'static str, u32>) -> Option<Span> {
    let mut span = job_span(run, parent)?;
    let total: u32 = counts.values().sum();
    let run_id = run.record().id.to_string();
    let generation = run.job(parent).map_or(0, |job| job.generation);
    span.parent_span_id = Some(span.span_id);
    span.span_id = children_span_id(&run_id, parent, generation);
    span.name = format!("{total} more children of {parent}");
    span.attributes = vec![
        ("sluice.run_id", run_id.into()),
        ("sluice.job", parent.to_owned().into()),
        ("sluice.children_without_spans", total.into()),
    ];
    for (state, count) in counts {
        span.attributes.push((children_state_key(state), (*count).into()));
    }
    span.error = None;
    Some(span)
}

fn children_state_key(state: &str) -> &'static str {
    match state {
        "completed" => "sluice.children.completed",
        "failed" => "sluice.children.failed",
        "cancelled" => "sluice.children.cancelled",
        _ => "sluice.children.skipped",
    }
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds().max(0)
}
