//! A job delivered again: which attempt it is, from what is on record, not from the delivery
//! count (decision 8).
//!
//! An attempt is charged when its `started` event or its outcome is stored. JetStream also
//! redelivers when nothing ran (a start that could not be stored, a NATS outage that stopped
//! the in-progress acks, a job handed back before it started), and those deliveries must not
//! use up `max_attempts`. So a redelivery reads what is stored — the job's latest event still
//! waiting in the events stream, then the coordinator's job record — and [`plan`] decides:
//! the job already ended (its outcome is stored: settle the message, run nothing), the message
//! belongs to an older dispatch, or it runs as the attempt after the last one on record. Its
//! `started` event is then stored before the work begins, so every execution is on record.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use sluice_proto::{EventKind, JobEvent, JobMessage, JobRecord, JobState, decode, names};

use crate::error::WorkerError;

/// What a redelivered job's records say to do with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Run it as attempt `attempt`. `open`: the worker of the attempt before it, if that one
    /// started and has no outcome on record (it died, or an outage kept its report back).
    Run { attempt: u32, open: Option<String> },
    /// Its outcome is stored already (the last delivery's ack was lost): run nothing.
    Ended { why: String },
}

/// Decides what a redelivery of `job` is, from the latest stored event of the job (`last`,
/// if one is still in the events stream) and the coordinator's record of it (`record`).
pub(crate) fn plan(job: &JobMessage, last: Option<&JobEvent>, record: Option<&JobRecord>) -> Plan {
    let newer = last.map(|event| event.generation).into_iter().chain(record.map(|record| record.generation)).max();
    if let Some(newer) = newer.filter(|generation| *generation > job.generation) {
        return Plan::Ended {
            why: format!(
                "the job was dispatched again (generation {newer}) since this message (generation {})",
                job.generation
            ),
        };
    }
    let last = last.filter(|event| event.generation == job.generation);
    let record = record.filter(|record| record.generation == job.generation);
    if let Some(event) = last
        && (event.kind == EventKind::Succeeded || (event.kind == EventKind::Failed && event.retry_at.is_none()))
    {
        return Plan::Ended { why: format!("attempt {} already {}", event.attempt, event.kind.as_str()) };
    }
    if let Some(record) = record
        && (record.state.is_terminal() || record.state == JobState::Waiting)
    {
        return Plan::Ended { why: format!("the job is already {}", record.state.as_str()) };
    }
    let on_record = [last.map(|event| event.attempt), record.map(|record| record.attempts)].into_iter().flatten().max();
    let before = on_record.unwrap_or(0).max(job.attempt_offset);
    let open_start = last.filter(|event| event.kind == EventKind::Started && event.attempt == before);
    let open_record = record
        .and_then(|record| record.attempt_history.last())
        .filter(|attempt| attempt.attempt == before && attempt.finished_at.is_none());
    let open = match (open_start, open_record) {
        (Some(event), _) => Some(event.worker.clone()),
        (None, Some(attempt)) if last.is_none_or(|event| event.attempt < before) => Some(attempt.worker.clone()),
        _ => None,
    };
    Plan::Run { attempt: before.saturating_add(1), open }
}

/// Reads what [`plan`] needs: the latest event of `job` still in the events stream, then its
/// record (in that order: the coordinator stores an event's effect before it removes the
/// event, so an outcome is always in one of the two).
pub(crate) async fn on_record(
    js: &jetstream::Context,
    job_records: &jetstream::kv::Store,
    job: &JobMessage,
) -> Result<(Option<JobEvent>, Option<JobRecord>), WorkerError> {
    let events = js
        .get_stream_no_info(names::EVENTS_STREAM)
        .await
        .map_err(|error| WorkerError::nats("opening the events stream", error))?;
    let subject = names::event_subject(&job.pool, &job.run_id, &job.job);
    // A direct get names the subject in its API subject, so NATS permissions can limit a
    // worker to its own pool's events.
    let last = match events.direct_get_last_for_subject(&subject).await {
        Ok(message) => decode::<JobEvent>(&message.payload).ok(),
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => None,
        Err(error) => return Err(WorkerError::nats("reading the job's latest event", error)),
    };
    let record = job_records
        .get(names::job_key(&job.run_id, &job.job))
        .await
        .map_err(|error| WorkerError::nats("reading the job's record", error))?
        .and_then(|bytes| decode::<JobRecord>(&bytes).ok());
    Ok((last, record))
}

/// Whether `worker` of `pool` has an event batch the coordinator has not applied yet (the
/// events stream is a work queue: an applied batch is gone). A direct get of the worker's
/// batch subject, within what a pool's NATS permissions allow.
pub(crate) async fn batch_waiting(js: &jetstream::Context, pool: &str, worker: &str) -> Result<bool, WorkerError> {
    let events = js
        .get_stream_no_info(names::EVENTS_STREAM)
        .await
        .map_err(|error| WorkerError::nats("opening the events stream", error))?;
    match events.direct_get_last_for_subject(names::event_batch_subject(pool, worker)).await {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(false),
        Err(error) => Err(WorkerError::nats("reading a worker's latest event batch", error)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono::Utc;
    use sluice_proto::{AttemptRecord, RetryPolicy, RunId, SCHEMA_VERSION, Window};

    use super::*;

    pub(crate) fn job(generation: u32, attempt_offset: u32) -> JobMessage {
        JobMessage {
            schema_version: SCHEMA_VERSION,
            run_id: RunId::new(),
            workflow: "w".into(),
            job: "load".into(),
            kind: "exec".into(),
            command: None,
            config: serde_json::Value::Null,
            window: Window { start: Utc::now().fixed_offset(), end: Utc::now().fixed_offset() },
            params: Default::default(),
            pool: "default".into(),
            attempt_offset,
            retry_base: None,
            generation,
            retry: RetryPolicy::default(),
            timeout_ms: None,
            permanent_exit_codes: Vec::new(),
            needs: Vec::new(),
            image: None,
            resources: None,
            env: Default::default(),
            batch_events: true,
        }
    }

    fn event(job: &JobMessage, attempt: u32, kind: EventKind, retry: bool) -> JobEvent {
        let mut event = JobEvent::new(job.run_id, &job.job, attempt, job.generation, kind, "w1", Utc::now());
        event.retry_at = retry.then(Utc::now);
        event
    }

    fn record(job: &JobMessage, state: JobState, attempts: u32) -> JobRecord {
        JobRecord {
            state,
            attempts,
            attempt_offset: job.attempt_offset,
            generation: job.generation,
            ..JobRecord::blank(job.run_id, &job.job)
        }
    }

    fn attempt(attempt: u32, finished_at: Option<chrono::DateTime<Utc>>) -> AttemptRecord {
        AttemptRecord {
            attempt,
            started_at: Utc::now(),
            finished_at,
            error: None,
            worker: "w1".into(),
            redelivered_to: Vec::new(),
            spec_hash: None,
            found_later: None,
        }
    }

    #[test]
    fn a_redelivery_with_nothing_on_record_is_the_first_attempt_again_not_a_charged_one() {
        // The start could not be stored (a full store, an outage): nothing ran on record.
        let job = job(0, 0);
        assert_eq!(plan(&job, None, Some(&record(&job, JobState::Queued, 0))), Plan::Run { attempt: 1, open: None });
        assert_eq!(plan(&job, None, None), Plan::Run { attempt: 1, open: None });
        // A scheduled retry's copy starts after its offset.
        let copy = self::job(0, 3);
        assert_eq!(
            plan(&copy, None, Some(&record(&copy, JobState::Retrying, 3))),
            Plan::Run { attempt: 4, open: None }
        );
    }

    #[test]
    fn a_stored_start_without_an_outcome_charges_that_attempt_and_names_its_worker() {
        let job = job(0, 0);
        let open = |attempt| Plan::Run { attempt, open: Some("w1".to_owned()) };
        // Still in the events stream (the coordinator has not read it yet)…
        assert_eq!(plan(&job, Some(&event(&job, 1, EventKind::Started, false)), None), open(2));
        // …or applied to the record.
        let mut running = record(&job, JobState::Running, 2);
        running.attempt_history.push(attempt(2, None));
        assert_eq!(plan(&job, None, Some(&running)), open(3));
        // The record's open attempt is an older one than the stream's latest outcome.
        let failed = event(&job, 2, EventKind::Failed, true);
        assert_eq!(plan(&job, Some(&failed), Some(&running)), Plan::Run { attempt: 3, open: None });
    }

    #[test]
    fn a_failure_with_a_retry_due_makes_this_delivery_the_next_attempt() {
        let job = job(0, 0);
        let failed = event(&job, 2, EventKind::Failed, true);
        let mut running = record(&job, JobState::Running, 2);
        running.attempt_history.push(attempt(2, Some(Utc::now())));
        assert_eq!(plan(&job, Some(&failed), Some(&running)), Plan::Run { attempt: 3, open: None });
    }

    #[test]
    fn a_stored_outcome_means_the_job_ended_and_nothing_runs_again() {
        let job = job(0, 0);
        let succeeded = event(&job, 1, EventKind::Succeeded, false);
        assert!(
            matches!(plan(&job, Some(&succeeded), None), Plan::Ended { why } if why == "attempt 1 already succeeded")
        );
        let failed = event(&job, 4, EventKind::Failed, false);
        assert!(matches!(plan(&job, Some(&failed), None), Plan::Ended { why } if why == "attempt 4 already failed"));
        for state in [JobState::Completed, JobState::Failed, JobState::Cancelled, JobState::Waiting] {
            let stored = record(&job, state, 1);
            assert!(matches!(plan(&job, None, Some(&stored)), Plan::Ended { .. }), "{state:?}");
        }
    }

    #[test]
    fn a_message_of_an_older_dispatch_runs_nothing() {
        let old = job(0, 0);
        let rerun = job(1, 2);
        let stored = JobRecord { run_id: old.run_id, ..record(&rerun, JobState::Queued, 2) };
        assert!(matches!(plan(&old, None, Some(&stored)), Plan::Ended { why } if why.contains("generation 1")));
        // What an older dispatch left on record does not count for a newer one.
        let older_start = JobEvent { generation: 0, ..event(&rerun, 7, EventKind::Started, false) };
        let finished_before = JobEvent { generation: 0, ..event(&rerun, 2, EventKind::Failed, false) };
        assert_eq!(plan(&rerun, Some(&older_start), None), Plan::Run { attempt: 3, open: None });
        assert_eq!(plan(&rerun, Some(&finished_before), None), Plan::Run { attempt: 3, open: None });
    }
}
