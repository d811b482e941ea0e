//! Publishing ready jobs to their pools, and finding out after a restart whether a `queued`
//! job's message really reached JetStream.

use std::collections::BTreeMap;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use sluice_proto::{DeadLetter, JobMessage, RunId, RunRecord, TraceParent, encode, names};

use crate::error::{NatsContext, ServiceError};
use sluice_client::pipeline::{Outgoing, publish_all};

/// What publishing a job depends on besides the job: the pools' settings and workers.
#[derive(Clone, Debug, Default)]
pub struct PoolFacts {
    /// The schema each pool's live workers read (the current one for a pool not listed).
    pub schemas: BTreeMap<String, u32>,
    /// Each pool's `max_timeout` in milliseconds (pools without one are not listed).
    pub max_timeouts: BTreeMap<String, u64>,
}

/// Publishes jobs without waiting in between, then waits for every acknowledgement.
/// `Nats-Msg-Id` makes a re-publish inside the duplicate window a no-op. Each job is
/// encoded at the schema its pool's live workers read, so a pool mid-upgrade keeps
/// running, with its timeout capped at its pool's `max_timeout`.
pub async fn publish_jobs(
    js: &jetstream::Context,
    jobs: &[(&JobMessage, &RunRecord)],
    pools: &PoolFacts,
) -> Result<usize, ServiceError> {
    let mut outgoing = Vec::with_capacity(jobs.len());
    for &(message, run) in jobs {
        let attempt = message.attempt_offset + 1;
        let mut headers = job_headers(message, run);
        headers.insert(
            names::HEADER_MSG_ID,
            names::dispatch_id(&message.run_id, &message.job, attempt, message.generation).as_str(),
        );
        outgoing.push(Outgoing {
            subject: names::job_subject(&message.pool, &message.run_id, &message.job),
            headers,
            payload: encode_for_pool(message, pools)?.into(),
            what: format!("job {} of run {}", message.job, message.run_id),
        });
    }
    Ok(publish_all(js, outgoing).await?.len())
}

/// Publishes scheduled retries (decision 8): each job message as a JetStream message
/// schedule on `sluice.retries.…`, due at its time, which JetStream then publishes to the
/// job's subject; until then it is nobody's pending work (an autoscaled pool may sleep).
/// A repeat inside the duplicate window is a no-op (`Nats-Msg-Id`).
pub async fn publish_retries(
    js: &jetstream::Context,
    retries: &[(&JobMessage, &RunRecord, DateTime<Utc>)],
    pools: &PoolFacts,
) -> Result<usize, ServiceError> {
    let mut outgoing = Vec::with_capacity(retries.len());
    for &(message, run, at) in retries {
        let attempt = message.attempt_offset + 1;
        let mut headers = job_headers(message, run);
        headers.insert(
            names::HEADER_MSG_ID,
            names::retry_id(&message.run_id, &message.job, attempt, message.generation).as_str(),
        );
        headers.insert(names::HEADER_SCHEDULE, schedule_at(at).as_str());
        headers.insert(
            names::HEADER_SCHEDULE_TARGET,
            names::job_subject(&message.pool, &message.run_id, &message.job).as_str(),
        );
        outgoing.push(Outgoing {
            subject: names::retry_subject(&message.pool, &message.run_id, &message.job),
            headers,
            payload: encode_for_pool(message, pools)?.into(),
            what: format!("the retry of job {} of run {}", message.job, message.run_id),
        });
    }
    Ok(publish_all(js, outgoing).await?.len())
}

/// `@at <RFC 3339>` in whole seconds, rounded up: a retry never fires early.
pub fn schedule_at(at: DateTime<Utc>) -> String {
    let whole_seconds = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
    let due = DateTime::from_timestamp(whole_seconds, 0).unwrap_or(at);
    format!("@at {}", due.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The headers every job message carries (its dedup id aside): run, job, generation and
/// attempt offset, and the run's trace at the job's span (derived: the job's span, emitted
/// from its record when it ends, is the parent of every attempt's span).
fn job_headers(message: &JobMessage, run: &RunRecord) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in names::job_headers(&message.run_id, &message.job, message.generation, message.attempt_offset) {
        headers.insert(name, value.as_ref());
    }
    if let Some(parent) = run.traceparent.as_deref().and_then(TraceParent::parse) {
        let span = sluice_proto::trace::job_span_id(&message.run_id.to_string(), &message.job, message.generation);
        headers.insert(names::HEADER_TRACEPARENT, parent.at(span).to_string().as_str());
        if let Some(state) = &run.tracestate {
            headers.insert(names::HEADER_TRACESTATE, state.as_str());
        }
    }
    headers
}

/// A job message at the schema its pool reads, with its timeout capped at the pool's
/// `max_timeout`. Only a pool with older workers or a max timeout pays for a copy; the
/// layout of a job message is the same at schemas 1 and 2.
fn encode_for_pool(message: &JobMessage, pools: &PoolFacts) -> Result<Vec<u8>, ServiceError> {
    let schema = pools.schemas.get(&message.pool).copied().unwrap_or(message.schema_version);
    let max_timeout = pools.max_timeouts.get(&message.pool).copied();
    let timeout_ms = crate::pools::capped_timeout(message.timeout_ms, max_timeout);
    if schema == message.schema_version && timeout_ms == message.timeout_ms {
        return Ok(encode(message)?);
    }
    Ok(encode(&JobMessage { schema_version: schema, timeout_ms, ..message.clone() })?)
}

/// Whether a `queued` (or `retrying`) job needs no re-publish: its message or scheduled
/// retry is still in the jobs stream, or a worker already reported on it (a worker publishes its event before acknowledging, so
/// a message gone from the jobs stream with no event pending was never published).
/// Call only while no events are being handled.
pub async fn reached_workers(js: &jetstream::Context, message: &JobMessage) -> Result<bool, ServiceError> {
    let jobs = js.get_stream_no_info(names::JOBS_STREAM).await.context("opening the jobs stream")?;
    let subject = names::job_subject(&message.pool, &message.run_id, &message.job);
    if present(jobs.direct_get_last_for_subject(subject).await)? {
        return Ok(true);
    }
    // A scheduled retry not yet due.
    let retry = names::retry_subject(&message.pool, &message.run_id, &message.job);
    if present(jobs.direct_get_last_for_subject(retry).await)? {
        return Ok(true);
    }
    let events = js.get_stream_no_info(names::EVENTS_STREAM).await.context("opening the events stream")?;
    if present(
        events.direct_get_last_for_subject(names::event_subject(&message.pool, &message.run_id, &message.job)).await,
    )? {
        return Ok(true);
    }
    // An event a schema-1 worker stored before an upgrade.
    present(events.direct_get_last_for_subject(names::compat::event_subject(&message.run_id, &message.job)).await)
}

fn present<T>(result: Result<T, jetstream::stream::DirectGetError>) -> Result<bool, ServiceError> {
    match result {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(false),
        Err(error) => Err(error).context("looking up a dispatched job"),
    }
}

/// Keeps dead letters in `SLUICE_DLQ`, waiting until each is stored. Their `Nats-Msg-Id`
/// (one per job and generation) makes a repeat after a crash a no-op.
pub async fn publish_dead_letters(js: &jetstream::Context, letters: &[&DeadLetter]) -> Result<(), ServiceError> {
    let mut outgoing = Vec::with_capacity(letters.len());
    for letter in letters {
        let job = &letter.job;
        let mut headers = HeaderMap::new();
        headers.insert(names::HEADER_MSG_ID, names::dead_letter_id(&job.run_id, &job.job, job.generation).as_str());
        headers.insert(names::HEADER_RUN_ID, job.run_id.to_string().as_str());
        headers.insert(names::HEADER_JOB, job.job.as_str());
        outgoing.push(Outgoing {
            subject: names::dlq_subject(&job.pool, Some(&job.run_id), Some(&job.job)),
            headers,
            payload: encode(*letter)?.into(),
            what: format!("the dead letter of job {} of run {}", job.job, job.run_id),
        });
    }
    publish_all(js, outgoing).await?;
    Ok(())
}

/// Removes a cancelled run's job messages from every pool (queued, or waiting out a retry
/// delay), in two purges whatever the number of jobs.
pub async fn withdraw(js: &jetstream::Context, run_id: &RunId) -> Result<(), ServiceError> {
    let stream = js.get_stream_no_info(names::JOBS_STREAM).await.context("opening the jobs stream")?;
    for filter in names::run_job_filters(run_id) {
        stream.purge().filter(filter).await.context(format!("withdrawing the jobs of run {run_id}"))?;
    }
    Ok(())
}

/// Removes one job's queued message and scheduled retry (a job marked by hand).
pub async fn withdraw_job(js: &jetstream::Context, run_id: &RunId, job: &str) -> Result<(), ServiceError> {
    let stream = js.get_stream_no_info(names::JOBS_STREAM).await.context("opening the jobs stream")?;
    for filter in names::job_filters(run_id, job) {
        stream.purge().filter(filter).await.context(format!("withdrawing job `{job}` of run {run_id}"))?;
    }
    Ok(())
}

/// Purges of dead letters in flight at once.
const PURGES_IN_FLIGHT: usize = 64;

/// Deletes the dead letters of `jobs` of a run (every one of the run's when `None`).
pub async fn resolve_dead_letters(
    js: &jetstream::Context,
    run_id: &RunId,
    jobs: Option<&[String]>,
) -> Result<(), ServiceError> {
    let stream = js.get_stream_no_info(names::DLQ_STREAM).await.context("opening the DLQ")?;
    let filters = match jobs {
        None => vec![names::dlq_run_filter(run_id)],
        Some(jobs) => jobs.iter().map(|job| names::dlq_job_filter(run_id, job)).collect(),
    };
    // Concurrently: a retry of a spawn may resolve thousands of children's dead letters.
    futures::stream::iter(filters)
        .map(|filter| {
            let stream = &stream;
            async move { stream.purge().filter(filter).await.context(format!("resolving dead letters of run {run_id}")) }
        })
        .buffer_unordered(PURGES_IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Tells every worker to stop the running jobs of `run_id` (core NATS: a worker that misses
/// it finishes the job, whose late event changes nothing).
pub async fn stop_run(js: &jetstream::Context, run_id: &RunId) -> Result<(), ServiceError> {
    let client = js.client();
    client.publish(names::stop_subject(run_id), bytes::Bytes::new()).await.context("telling workers to stop a run")?;
    client.flush().await.context("telling workers to stop a run")
}

/// Keeps a message nobody can read in the dead-letter stream as it came, with the reason
/// and its first subject in headers.
pub async fn publish_raw_dead_letter(
    js: &jetstream::Context,
    original: Option<&names::JobSubject<'_>>,
    original_subject: &str,
    payload: bytes::Bytes,
    reason: &str,
) -> Result<(), ServiceError> {
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_REASON, reason);
    headers.insert(names::HEADER_ORIGINAL_SUBJECT, original_subject);
    let ack = js
        .publish_with_headers(
            match original {
                Some(job) => names::dlq_subject(job.pool, Some(&job.run_id), Some(job.job)),
                None => names::dlq_subject(sluice_proto::spec::DEFAULT_POOL, None, None),
            },
            headers,
            payload,
        )
        .await
        .context("dead-lettering a raw job")?;
    ack.await.context("confirming a raw dead letter")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_scheduled_retry_is_due_on_a_whole_second_never_early() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).single().unwrap();
        assert_eq!(schedule_at(now), "@at 2026-12-01T09:00:00Z");
        assert_eq!(schedule_at(now + chrono::Duration::milliseconds(1)), "@at 2026-12-01T09:00:01Z");
    }
}
