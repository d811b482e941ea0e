//! Control requests that are not about one active run (schedules, backfills, dead-letter
//! purges), and the answer every request gets: a [`ControlOutcome`] in KV
//! `sluice-outcomes`, written once, after what it reports is durable.

use chrono::{DateTime, NaiveDate, Utc};
use sluice_client::{dead_letters, requests, stores};
use sluice_proto::limits::{BACKFILL_WINDOWS_MAX, OUTCOME_CHANGED_MAX, REQUESTED_BY_MAX_BYTES};
use sluice_proto::messages::truncate_error;
use sluice_proto::schedule::Schedule;
use sluice_proto::{
    BackfillRecord, BackfillRequest, ControlOutcome, ControlRequest, HumanDuration, MarkAs, Outcome, RefusalKind,
    RequestId, RunId, RunState, SCHEMA_VERSION, ScheduleRecord, Submission, Window, WorkflowRecord, WorkflowSpec,
    encode, names,
};

use crate::error::{NatsContext, ServiceError, revision_checked};
use crate::topology::Topology;

/// Most windows of one backfill in flight at once.
pub const BACKFILL_MAX_PARALLEL_RUNS_LIMIT: u32 = 64;

/// What applying a request came to, before it becomes a [`ControlOutcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub run_id: Option<RunId>,
    pub refused: Option<RefusalKind>,
    pub reason: String,
    pub changed: Vec<String>,
}

impl Answer {
    pub fn applied(reason: impl Into<String>, changed: Vec<String>) -> Self {
        Self { run_id: None, refused: None, reason: reason.into(), changed }
    }

    pub fn refused(kind: RefusalKind, reason: impl Into<String>) -> Self {
        Self { run_id: None, refused: Some(kind), reason: reason.into(), changed: Vec::new() }
    }

    pub fn about(mut self, run_id: Option<RunId>) -> Self {
        self.run_id = self.run_id.or(run_id);
        self
    }

    /// The stored answer to `request` (none for a request without an id: an older client's).
    pub fn outcome(self, request: &ControlRequest, at: DateTime<Utc>) -> Option<ControlOutcome> {
        let changed_total = self.changed.len() as u64;
        let mut changed = self.changed;
        changed.truncate(OUTCOME_CHANGED_MAX);
        Some(ControlOutcome {
            schema_version: SCHEMA_VERSION,
            request_id: request.request_id?,
            run_id: self.run_id.or(request.run_id),
            action: request.action_name().to_owned(),
            outcome: if self.refused.is_some() { Outcome::Refused } else { Outcome::Applied },
            kind: self.refused,
            reason: self.reason,
            changed,
            changed_total,
            requested_by: truncate(&request.requested_by),
            at,
        })
    }
}

fn truncate(text: &str) -> String {
    truncate_error(text, REQUESTED_BY_MAX_BYTES)
}

/// Whether a request was answered already: a request redelivered after a crash that came
/// after its answer is not applied twice.
pub async fn answered(topology: &Topology, id: Option<RequestId>) -> Result<bool, ServiceError> {
    let Some(id) = id else { return Ok(false) };
    Ok(topology.outcomes.get(id.to_string()).await.context("reading a control outcome")?.is_some())
}

/// Stores an answer. Created, never overwritten: the first answer stands.
pub async fn answer(topology: &Topology, outcome: &ControlOutcome) -> Result<(), ServiceError> {
    use async_nats::jetstream::kv::CreateErrorKind;
    match topology.outcomes.create(outcome.request_id.to_string(), encode(outcome)?.into()).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == CreateErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error).context("storing a control outcome"),
    }
}

/// Creates or updates a schedule from a workflow's YAML. An update keeps what was handled
/// and whether it is paused: no tick runs twice, and none before the schedule existed runs.
pub async fn schedule_apply(topology: &Topology, yaml: &str, now: DateTime<Utc>) -> Result<Answer, ServiceError> {
    let spec = match WorkflowSpec::parse(yaml) {
        Ok(spec) => spec,
        Err(error) => return Ok(Answer::refused(RefusalKind::Invalid, error.to_string())),
    };
    let Some(schedule_spec) = spec.schedule.clone() else {
        return Ok(Answer::refused(
            RefusalKind::Invalid,
            format!("workflow `{}` has no `schedule:` section", spec.name),
        ));
    };
    if let Err(error) = Schedule::from_spec(&schedule_spec, spec.timezone.as_deref()) {
        return Ok(Answer::refused(RefusalKind::Invalid, error));
    }
    let existing = stores::entry::<ScheduleRecord>(&topology.schedules, &spec.name).await?;
    let (record, verb) = match &existing {
        Some((old, _)) => (
            ScheduleRecord { workflow: yaml.to_owned(), schedule: schedule_spec, updated_at: now, ..old.clone() },
            "updated",
        ),
        None => (
            ScheduleRecord {
                schema_version: SCHEMA_VERSION,
                name: spec.name.clone(),
                workflow: yaml.to_owned(),
                schedule: schedule_spec,
                paused: false,
                handled_until: now,
                created_at: now,
                updated_at: now,
                last_tick: None,
                last_run: None,
                skipped_ticks: 0,
            },
            "created",
        ),
    };
    let payload = encode(&record)?;
    let what = format!("writing schedule {}", spec.name);
    match existing {
        Some((_, revision)) => {
            revision_checked(topology.schedules.update(&spec.name, payload.into(), revision).await, what)?
        }
        None => topology.schedules.create(&spec.name, payload.into()).await.context(what)?,
    };
    Ok(Answer::applied(format!("schedule {} {verb}", spec.name), vec![spec.name]))
}

/// What the workflow store keeps of `spec` (stored under `spec_hash`), applied by `by`:
/// an update keeps when it was first applied.
pub fn workflow_record(
    spec: &WorkflowSpec,
    spec_hash: &str,
    existing: Option<&WorkflowRecord>,
    by: &str,
    now: DateTime<Utc>,
) -> WorkflowRecord {
    WorkflowRecord {
        schema_version: SCHEMA_VERSION,
        name: spec.name.clone(),
        spec_hash: spec_hash.to_owned(),
        description: spec.description.clone(),
        timezone: spec.timezone.clone(),
        schedule: spec.schedule.as_ref().map(|schedule| schedule.cron.clone()),
        jobs: u32::try_from(spec.jobs.len()).unwrap_or(u32::MAX),
        params: spec.params.keys().cloned().collect(),
        created_at: existing.map_or(now, |old| old.created_at),
        updated_at: now,
        applied_by: truncate(by),
    }
}

/// Stores a workflow's record (its spec is stored already, under `spec_hash`); says
/// whether it was `created` or `updated`.
pub async fn workflow_store(
    topology: &Topology,
    spec: &WorkflowSpec,
    spec_hash: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<&'static str, ServiceError> {
    let existing = stores::entry::<WorkflowRecord>(&topology.workflows, &spec.name).await?;
    let record = workflow_record(spec, spec_hash, existing.as_ref().map(|(old, _)| old), by, now);
    let payload = encode(&record)?;
    let what = format!("writing workflow {}", spec.name);
    Ok(match existing {
        Some((_, revision)) => {
            revision_checked(topology.workflows.update(&spec.name, payload.into(), revision).await, what)?;
            "updated"
        }
        None => {
            topology.workflows.create(&spec.name, payload.into()).await.context(what)?;
            "created"
        }
    })
}

/// Forgets a workflow and its schedule; its runs stay.
pub async fn workflow_delete(topology: &Topology, name: &str) -> Result<Answer, ServiceError> {
    let stored = stores::entry::<WorkflowRecord>(&topology.workflows, name).await?;
    let scheduled = stores::entry::<ScheduleRecord>(&topology.schedules, name).await?;
    if stored.is_none() && scheduled.is_none() {
        let names: Vec<String> = stores::load_all::<WorkflowRecord>(&topology.workflows)
            .await?
            .into_iter()
            .map(|record| record.name)
            .collect();
        let known = if names.is_empty() { "there are none".to_owned() } else { names.join(", ") };
        return Ok(Answer::refused(RefusalKind::NotFound, format!("no workflow `{name}`; workflows: {known}")));
    }
    // The schedule first: a crash between the two leaves a workflow that no longer fires,
    // and the request, delivered again, finishes.
    if scheduled.is_some() {
        topology.schedules.delete(name).await.context(format!("deleting schedule {name}"))?;
    }
    if stored.is_some() {
        topology.workflows.delete(name).await.context(format!("deleting workflow {name}"))?;
    }
    let also = if scheduled.is_some() { ", and its schedule" } else { "" };
    Ok(Answer::applied(format!("workflow {name} deleted{also}; its runs stay"), vec![name.to_owned()]))
}

/// A bulk action's runs, each as its own request (no id of its own: only the bulk request
/// is answered), or the refusal of a bulk naming too few or too many. A bulk delivered again
/// after a crash finds the runs it retried running, and its answer says so.
pub fn bulk_requests(
    request: &ControlRequest,
    bulk: &sluice_proto::BulkRequest,
) -> Result<Vec<ControlRequest>, Answer> {
    use sluice_proto::limits::BULK_RUNS_MAX;
    if bulk.runs.is_empty() || bulk.runs.len() > BULK_RUNS_MAX {
        return Err(Answer::refused(
            RefusalKind::Invalid,
            format!("a bulk {} names 1 to {BULK_RUNS_MAX} runs, not {}", bulk.action.as_str(), bulk.runs.len()),
        ));
    }
    let action = match bulk.action {
        sluice_proto::BulkAction::Retry => sluice_proto::ControlAction::Retry,
        sluice_proto::BulkAction::Cancel => sluice_proto::ControlAction::Cancel,
    };
    Ok(bulk
        .runs
        .iter()
        .map(|id| ControlRequest {
            schema_version: request.schema_version,
            request_id: None,
            requested_by: request.requested_by.clone(),
            run_id: Some(*id),
            action: action.clone(),
            job: None,
            requested_at: request.requested_at,
            dead_letter: None,
            spec: None,
        })
        .collect())
}

/// What a bulk action came to, run by run.
#[derive(Debug, Default)]
pub struct BulkTally {
    applied: Vec<RunId>,
    refused: Vec<(RunId, String)>,
}

/// Refusal reasons a bulk action's answer quotes, at most.
const BULK_REASONS_SAID: usize = 3;
/// Longest filter text a bulk action's answer repeats, in bytes.
const BULK_SELECTION_SAID_MAX_BYTES: usize = 512;

impl BulkTally {
    pub fn add(&mut self, id: Option<RunId>, answer: Answer) {
        let Some(id) = id else { return };
        match answer.refused {
            None => self.applied.push(id),
            Some(_) => self.refused.push((id, answer.reason)),
        }
    }

    /// Applied when any run was (its `changed` lists them); refused, as a conflict, when
    /// none was.
    pub fn answer(self, bulk: &sluice_proto::BulkRequest) -> Answer {
        let verb = match bulk.action {
            sluice_proto::BulkAction::Retry => "retried",
            sluice_proto::BulkAction::Cancel => "cancelled",
        };
        let total = self.applied.len() + self.refused.len();
        let mut reason = format!("{} of {total} runs {verb}", self.applied.len());
        if !self.refused.is_empty() {
            let said: Vec<String> =
                self.refused.iter().take(BULK_REASONS_SAID).map(|(id, why)| format!("{id}: {why}")).collect();
            let more = self.refused.len().saturating_sub(BULK_REASONS_SAID);
            let more = if more > 0 { format!("; and {more} more") } else { String::new() };
            reason.push_str(&format!("; {} refused ({}{more})", self.refused.len(), said.join("; ")));
        }
        reason.push_str(&format!(" [{}]", truncate_error(&bulk.selection, BULK_SELECTION_SAID_MAX_BYTES)));
        if self.applied.is_empty() {
            return Answer::refused(RefusalKind::Conflict, reason);
        }
        Answer::applied(reason, self.applied.iter().map(ToString::to_string).collect())
    }
}

/// A schedule's record, or the refusal that names the schedules there are.
async fn schedule_record(
    topology: &Topology,
    name: &str,
) -> Result<Result<(ScheduleRecord, u64), Answer>, ServiceError> {
    if let Some(found) = stores::entry(&topology.schedules, name).await? {
        return Ok(Ok(found));
    }
    let names: Vec<String> =
        stores::load_all::<ScheduleRecord>(&topology.schedules).await?.into_iter().map(|record| record.name).collect();
    let known = if names.is_empty() { "there are none".to_owned() } else { names.join(", ") };
    Ok(Err(Answer::refused(RefusalKind::NotFound, format!("no schedule `{name}`; schedules: {known}"))))
}

/// Pauses or resumes a schedule. Ticks while paused are not caught up: resuming means
/// "from now on".
pub async fn schedule_pause(
    topology: &Topology,
    name: &str,
    paused: bool,
    now: DateTime<Utc>,
) -> Result<Answer, ServiceError> {
    let (mut record, revision) = match schedule_record(topology, name).await? {
        Ok(found) => found,
        Err(refused) => return Ok(refused),
    };
    if record.paused && !paused {
        record.handled_until = now;
    }
    record.paused = paused;
    record.updated_at = now;
    let written = topology.schedules.update(name, encode(&record)?.into(), revision).await;
    revision_checked(written, format!("writing schedule {name}"))?;
    let word = if paused { "paused" } else { "resumed" };
    Ok(Answer::applied(format!("schedule {name} {word}"), vec![name.to_owned()]))
}

pub async fn schedule_delete(topology: &Topology, name: &str) -> Result<Answer, ServiceError> {
    if let Err(refused) = schedule_record(topology, name).await? {
        return Ok(refused);
    }
    topology.schedules.delete(name).await.context(format!("deleting schedule {name}"))?;
    Ok(Answer::applied(format!("schedule {name} deleted"), vec![name.to_owned()]))
}

/// Starts one run of a schedule now, for the window its schedule gives a tick now. The
/// run id is the request's (the client follows it); publishing it twice makes one run.
pub async fn schedule_trigger(
    topology: &Topology,
    name: &str,
    run_id: Option<RunId>,
    now: DateTime<Utc>,
) -> Result<Answer, ServiceError> {
    let (record, _) = match schedule_record(topology, name).await? {
        Ok(found) => found,
        Err(refused) => return Ok(refused),
    };
    let evaluated = WorkflowSpec::parse(&record.workflow)
        .map_err(|error| error.to_string())
        .and_then(|spec| Schedule::from_spec(&record.schedule, spec.timezone.as_deref()));
    let schedule = match evaluated {
        Ok(schedule) => schedule,
        Err(error) => return Ok(Answer::refused(RefusalKind::Conflict, format!("schedule {name} is broken: {error}"))),
    };
    let run_id = run_id.unwrap_or_default();
    let window = schedule.window.at(now, schedule.zone);
    let submission = Submission {
        schema_version: SCHEMA_VERSION,
        run_id,
        workflow: record.workflow.clone(),
        window: Some(window),
        params: Default::default(),
        idempotency_key: None,
        submitted_at: Some(now),
        origin: Some(sluice_proto::messages::schedule_origin(name)),
    };
    requests::submit(&topology.js, &submission, &run_id.to_string()).await?;
    Ok(Answer::applied(
        format!("triggered run {run_id} of schedule {name} (window {window})"),
        vec![run_id.to_string()],
    )
    .about(Some(run_id)))
}

/// Checks a backfill request and the windows it covers; the refusal says what is wrong.
pub fn backfill_windows(request: &BackfillRequest) -> Result<(WorkflowSpec, Vec<Window>), String> {
    let spec = WorkflowSpec::parse(&request.workflow).map_err(|error| error.to_string())?;
    let day = |flag: &str, text: &str| {
        NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map_err(|_| format!("{flag} `{text}` is not a day such as 2024-03-01"))
    };
    let (from, to) = (day("--from", &request.from)?, day("--to", &request.to)?);
    let interval: HumanDuration = request.interval.parse().map_err(|error| format!("--interval: {error}"))?;
    if request.max_parallel_runs == 0 || request.max_parallel_runs > BACKFILL_MAX_PARALLEL_RUNS_LIMIT {
        return Err(format!(
            "--max-parallel-runs must be 1 to {BACKFILL_MAX_PARALLEL_RUNS_LIMIT}, not {}",
            request.max_parallel_runs
        ));
    }
    spec.resolve_params(&Default::default()).map_err(|error| error.to_string())?;
    let windows = Window::range(from, to, interval.as_duration(), spec.zone(), BACKFILL_WINDOWS_MAX)
        .map_err(|error| error.to_string())?;
    Ok((spec, windows))
}

/// Plans a backfill's windows from the runs recorded so far and stores it; the timekeeper
/// drives it from then on.
pub async fn backfill_create(
    topology: &Topology,
    request: &BackfillRequest,
    now: DateTime<Utc>,
) -> Result<Answer, ServiceError> {
    let (spec, windows) = match backfill_windows(request) {
        Ok(checked) => checked,
        Err(reason) => return Ok(Answer::refused(RefusalKind::Invalid, reason)),
    };
    // The runs recorded for the range's days, through the index (not every run ever made).
    let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
        return Ok(Answer::refused(RefusalKind::Invalid, "the range has no windows"));
    };
    let (from, to) = (first.start.date_naive(), last.start.date_naive());
    let runs = sluice_client::runs::by_local_days(&topology.js, &spec.name, from, to).await?;
    let record = BackfillRecord {
        schema_version: SCHEMA_VERSION,
        id: request.id,
        workflow: spec.name.clone(),
        spec_yaml: request.workflow.clone(),
        from: request.from.trim().to_owned(),
        to: request.to.trim().to_owned(),
        interval: request.interval.clone(),
        max_parallel_runs: request.max_parallel_runs,
        rerun: request.rerun,
        state: RunState::Running,
        created_at: now,
        finished_at: None,
        windows: sluice_proto::backfill::plan(windows, &runs, request.rerun),
        next: 0,
    };
    use async_nats::jetstream::kv::CreateErrorKind;
    match topology.backfills.create(request.id.to_string(), encode(&record)?.into()).await {
        Ok(_) => {}
        Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
            return Ok(Answer::refused(RefusalKind::Conflict, format!("backfill {} exists already", request.id)));
        }
        Err(error) => return Err(error).context("creating a backfill"),
    }
    let skipped = record.windows.iter().filter(|window| window.skip.is_some()).count();
    Ok(Answer::applied(
        format!("backfill {}: {} windows of {} ({skipped} skipped)", request.id, record.windows.len(), spec.name),
        vec![request.id.to_string()],
    ))
}

/// Stops a backfill: no new windows start; the timekeeper cancels the running ones.
pub async fn backfill_cancel(topology: &Topology, id: &RunId) -> Result<Answer, ServiceError> {
    let Some((mut record, revision)) = stores::entry::<BackfillRecord>(&topology.backfills, &id.to_string()).await?
    else {
        return Ok(Answer::refused(
            RefusalKind::NotFound,
            format!("no backfill {id} (sluice backfill list shows them)"),
        ));
    };
    if record.state != RunState::Running {
        return Ok(Answer::refused(
            RefusalKind::Conflict,
            format!("backfill {id} is already {}", record.state.as_str()),
        ));
    }
    record.state = RunState::Cancelled;
    let written = topology.backfills.update(id.to_string(), encode(&record)?.into(), revision).await;
    revision_checked(written, format!("cancelling backfill {id}"))?;
    Ok(Answer::applied(
        format!("backfill {id} cancelled: no new windows start; running ones are being cancelled"),
        vec![id.to_string()],
    ))
}

/// Deletes the dead letters that match the filters.
pub async fn dlq_purge(
    topology: &Topology,
    workflow: Option<&str>,
    pool: Option<&str>,
) -> Result<Answer, ServiceError> {
    let letters = dead_letters::load(&topology.js).await?;
    let stream = topology.js.get_stream_no_info(names::DLQ_STREAM).await.context("opening the DLQ")?;
    let mut purged = Vec::new();
    for letter in letters.iter().filter(|letter| letter.matches(workflow, pool)) {
        match stream.delete_message(letter.id).await {
            Ok(_) => purged.push(letter.id.to_string()),
            // Gone meanwhile (replayed, or purged by an earlier request): nothing to do.
            Err(error)
                if matches!(error.kind(), async_nats::jetstream::stream::DeleteMessageErrorKind::JetStream(_)) =>
            {
                tracing::debug!(id = letter.id, %error, "dead letter already gone")
            }
            Err(error) => return Err(error).context(format!("deleting dead letter {}", letter.id)),
        }
    }
    Ok(Answer::applied(format!("purged {} dead letters", purged.len()), purged))
}

/// The answer to a request whose payload cannot be read, when its header named its id.
pub fn unreadable(
    id: Option<RequestId>,
    error: &sluice_proto::CodecError,
    at: DateTime<Utc>,
) -> Option<ControlOutcome> {
    Some(ControlOutcome {
        schema_version: SCHEMA_VERSION,
        request_id: id?,
        run_id: None,
        action: "unknown".to_owned(),
        outcome: Outcome::Refused,
        kind: Some(RefusalKind::Invalid),
        reason: format!("the request cannot be read: {error}"),
        changed: Vec::new(),
        changed_total: 0,
        requested_by: String::new(),
        at,
    })
}

/// How the engine's refusal of a cancel, retry or mark is answered.
pub fn refusal_kind(refused: &crate::engine::Refused) -> RefusalKind {
    use crate::engine::Refused;
    match refused {
        Refused::UnknownJob { .. } => RefusalKind::NotFound,
        Refused::SpecChange { .. } => RefusalKind::Invalid,
        Refused::Finished { .. }
        | Refused::StillRunning { .. }
        | Refused::NothingToRetry { .. }
        | Refused::InFlight { .. }
        | Refused::NeedsFirst { .. }
        | Refused::MarkCancelled { .. }
        | Refused::AlreadySucceeded { .. }
        | Refused::AlreadySkipped { .. }
        | Refused::MarkRunning { .. }
        | Refused::NotMarkable { .. } => RefusalKind::Conflict,
    }
}

/// What is wrong with a mark's output, if anything: it must fit the limit of a job's own
/// output, and only a success has one. (The CLI checks the same, naming its flags; this is
/// for any other client.)
pub fn mark_problem(as_: MarkAs, output: Option<&serde_json::Value>) -> Option<String> {
    let output = output?;
    if as_ != MarkAs::Succeeded {
        return Some("a job marked skipped has no output: give one only with `succeeded`".to_owned());
    }
    sluice_proto::spawn::check_output(output).err().map(|problem| format!("the mark's output: {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::ControlAction;

    fn request() -> ControlRequest {
        ControlRequest::new(ControlAction::Retry, Some(RunId::new()), "alice")
    }

    fn bulk(runs: usize) -> sluice_proto::BulkRequest {
        sluice_proto::BulkRequest {
            action: sluice_proto::BulkAction::Retry,
            runs: (0..runs).map(|_| RunId::new()).collect(),
            selection: "workflow=etl state=failed".into(),
        }
    }

    #[test]
    fn a_bulk_action_is_applied_when_any_run_was_and_says_what_was_refused() {
        let asked = bulk(6);
        let mut tally = BulkTally::default();
        tally.add(Some(asked.runs[0]), Answer::applied("1 job queued again", vec!["a".into()]));
        for (index, id) in asked.runs[1..].iter().enumerate() {
            tally.add(Some(*id), Answer::refused(RefusalKind::Conflict, format!("busy {index}")));
        }
        let answer = tally.answer(&asked);
        assert_eq!(answer.refused, None);
        assert_eq!(answer.changed, vec![asked.runs[0].to_string()]);
        assert!(answer.reason.starts_with("1 of 6 runs retried; 5 refused ("), "{}", answer.reason);
        assert!(answer.reason.contains(&format!("{}: busy 0", asked.runs[1])), "{}", answer.reason);
        assert!(!answer.reason.contains("busy 3"), "only the first reasons: {}", answer.reason);
        assert!(answer.reason.contains("and 2 more") && answer.reason.ends_with("[workflow=etl state=failed]"));

        let asked = bulk(2);
        let mut tally = BulkTally::default();
        for id in &asked.runs {
            tally.add(Some(*id), Answer::refused(RefusalKind::Conflict, "still running".to_owned()));
        }
        let answer = tally.answer(&asked);
        assert_eq!(answer.refused, Some(RefusalKind::Conflict), "none retried: {}", answer.reason);
        assert!(answer.changed.is_empty());
    }

    #[test]
    fn an_applied_answer_becomes_an_outcome_with_what_changed() {
        let request = request();
        let at = Utc::now();
        let outcome =
            Answer::applied("2 jobs queued again", vec!["a".into(), "b".into()]).outcome(&request, at).unwrap();
        assert_eq!(outcome.request_id, request.request_id.unwrap());
        assert_eq!(outcome.run_id, request.run_id);
        assert_eq!(outcome.outcome, Outcome::Applied);
        assert_eq!(outcome.kind, None);
        assert_eq!(outcome.action, "retry");
        assert_eq!(outcome.changed, ["a", "b"]);
        assert_eq!(outcome.changed_total, 2);
        assert_eq!(outcome.requested_by, "alice");
        assert_eq!(outcome.at, at);
    }

    #[test]
    fn a_refusal_keeps_its_kind_and_a_replay_is_named_so() {
        let mut request = request();
        request.dead_letter = Some(7);
        let outcome =
            Answer::refused(RefusalKind::NotFound, "dead letter 7 is gone").outcome(&request, Utc::now()).unwrap();
        assert_eq!(outcome.outcome, Outcome::Refused);
        assert_eq!(outcome.kind, Some(RefusalKind::NotFound));
        assert_eq!(outcome.action, "replay");
    }

    #[test]
    fn changed_is_bounded_but_counted() {
        let changed: Vec<String> = (0..OUTCOME_CHANGED_MAX + 5).map(|i| format!("parent.c{i}")).collect();
        let outcome = Answer::applied("many", changed).outcome(&request(), Utc::now()).unwrap();
        assert_eq!(outcome.changed.len(), OUTCOME_CHANGED_MAX);
        assert_eq!(outcome.changed_total, (OUTCOME_CHANGED_MAX + 5) as u64);
        assert!(encode(&outcome).unwrap().len() < 64 * 1024, "an outcome stays a small value");
    }

    #[test]
    fn a_request_without_an_id_gets_no_outcome() {
        let mut request = request();
        request.request_id = None;
        assert_eq!(Answer::applied("ok", Vec::new()).outcome(&request, Utc::now()), None);
    }

    #[test]
    fn refusals_map_to_kinds() {
        use crate::engine::Refused;
        let run_id = RunId::new();
        assert_eq!(refusal_kind(&Refused::UnknownJob { run_id, job: "x".into() }), RefusalKind::NotFound);
        assert_eq!(refusal_kind(&Refused::Finished { run_id, state: "succeeded" }), RefusalKind::Conflict);
        assert_eq!(refusal_kind(&Refused::StillRunning { run_id }), RefusalKind::Conflict);
        assert_eq!(refusal_kind(&Refused::NeedsFirst { job: "b".into(), need: "a".into() }), RefusalKind::Conflict);
        assert_eq!(refusal_kind(&Refused::MarkRunning { job: "b".into() }), RefusalKind::Conflict);
        assert_eq!(
            refusal_kind(&Refused::AlreadySucceeded { job: "b".into(), by: String::new() }),
            RefusalKind::Conflict
        );
    }

    #[test]
    fn a_marks_output_is_bounded_and_only_for_a_success() {
        let small = serde_json::json!({"rows": 3});
        assert_eq!(mark_problem(MarkAs::Succeeded, Some(&small)), None);
        assert_eq!(mark_problem(MarkAs::Skipped, None), None);
        assert!(mark_problem(MarkAs::Skipped, Some(&small)).unwrap().contains("no output"));
        let big = serde_json::Value::String("x".repeat(sluice_proto::spawn::OUTPUT_MAX_BYTES));
        assert!(mark_problem(MarkAs::Succeeded, Some(&big)).unwrap().contains("the limit is 65536"));
    }

    #[test]
    fn bad_backfill_requests_are_refused_naming_the_problem() {
        let good = BackfillRequest {
            id: RunId::new(),
            workflow: "name: w\njobs:\n  a: { run: noop }\n".into(),
            from: "2024-03-01".into(),
            to: "2024-03-03".into(),
            interval: "1d".into(),
            max_parallel_runs: 2,
            rerun: Default::default(),
        };
        assert_eq!(backfill_windows(&good).unwrap().1.len(), 3);
        let cases = [
            (BackfillRequest { from: "March".into(), ..good.clone() }, "--from `March` is not a day"),
            (BackfillRequest { to: "2024-02-01".into(), ..good.clone() }, "before --from"),
            (BackfillRequest { max_parallel_runs: 0, ..good.clone() }, "--max-parallel-runs must be 1 to 64, not 0"),
            (BackfillRequest { interval: "soon".into(), ..good.clone() }, "--interval"),
            (BackfillRequest { workflow: "name: w\njobs: {}\n".into(), ..good.clone() }, "no jobs"),
        ];
        for (request, needle) in cases {
            let error = backfill_windows(&request).unwrap_err();
            assert!(error.contains(needle), "{error:?} should say {needle:?}");
        }
    }

    #[test]
    fn a_request_is_attributed_to_the_identity_its_subject_names() {
        let subject = |identity: &str| names::control_subject(identity, None);
        let by = |claimed: &str, subject: &str| {
            ControlRequest::new(sluice_proto::ControlAction::Cancel, None, claimed).attributed(subject).requested_by
        };
        assert_eq!(by("alice", &subject("alice")), "alice");
        assert_eq!(by("", &subject("alice")), "alice", "an anonymous payload is the sender's");
        assert_eq!(by("coordinator", &subject("mallory")), "mallory/coordinator", "a claim never hides the sender");
        assert_eq!(by("alice", &subject("http")), "http/alice");
        assert_eq!(by("alice", "not.a.control.subject"), "alice", "no identity to go by: as sent");
        let long = "x".repeat(REQUESTED_BY_MAX_BYTES * 2);
        let cut = by(&long, &subject("http"));
        assert!(cut.starts_with("http/x") && cut.len() == REQUESTED_BY_MAX_BYTES, "{cut}");
    }
}
