//! The completer: turns an attempt's outcome into its event and its ack, NAK, retry or TERM.
//!
//! [`settle`] decides (pure); the completer stores what a success hands on, reports the
//! outcome, then settles the message.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{AckKind, Message};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::Rng;
use sluice_proto::spawn::{CHILD_DEPTH_MAX, SPAWN_BATCH_MAX_BYTES, SpawnError, check_children, check_output, depth_of};
use sluice_proto::spec::check_name;
use sluice_proto::{
    ChildSpec, EventKind, JobEvent, JobMessage, RetryPolicy, RunId, SCHEMA_VERSION, SpawnBatch, encode, names,
};

use super::Shared;
use super::delivery::header;
use super::executor::{Attempt, Outcome};
use super::reporter::{Report, Reporter, error_text, store_event};
use crate::error::WorkerError;
use crate::job::{JobError, Output};
use crate::limits::NEWER_SCHEMA_NAK_DELAY_MS;

/// Turns an attempt into its event and the settlement of its message. A trait, so that
/// settling can be batched without the executor knowing.
#[async_trait]
pub(crate) trait Completer: Send + Sync {
    /// Reports how the attempt ended, then settles `message`. The event is durable before
    /// the message is settled, so the coordinator never misses an outcome.
    async fn complete(&self, message: Message, attempt: Attempt);
}

/// Settles each attempt on its own, as soon as it ends.
pub(crate) struct InlineCompleter {
    shared: Arc<Shared>,
}

impl InlineCompleter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl Completer for InlineCompleter {
    async fn complete(&self, message: Message, attempt: Attempt) {
        match attempt {
            Attempt::Undecodable { delivered, reason } => undecodable(&self.shared, &message, delivered, reason).await,
            Attempt::NewerSchema { version } => newer_schema(&self.shared, &message, version).await,
            Attempt::Held { job } => {
                tracing::info!(job, "redelivered while it runs here: the running attempt settles it");
            }
            Attempt::Deferred { job, worker, why } => {
                tracing::info!(
                    job,
                    worker,
                    ?why,
                    "redelivered while its last attempt may still report: offered again later"
                );
                // Not the ack wait, which may be hours.
                let delay = why.delay();
                let settlement = Settlement::Nak { delay: Some(delay), retry_at: Utc::now() + delay };
                acknowledge(&message, settlement, &job).await;
            }
            Attempt::Ended { job, why } => {
                tracing::info!(job, why, "redelivered after it ended: acknowledged, nothing run again");
                acknowledge(&message, Settlement::Ack, &job).await;
            }
            Attempt::Read { reporter, outcome } => complete_read(&self.shared, &reporter, &message, outcome).await,
        }
    }
}

/// How an attempt ended, as far as settling it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The work succeeded and what it hands on is stored.
    Succeeded,
    /// The work failed; a retryable failure is retried while attempts are left.
    Failed { retryable: bool },
    /// The message cannot be decoded.
    Undecodable,
    /// The job is of a newer schema than this worker reads.
    NewerSchema,
    /// No kind of that name is registered.
    UnknownKind,
    /// The worker shut down while the job ran.
    HandedBack,
    /// The start could not be reported; nothing ran.
    Unreported,
    /// Its run was cancelled.
    Stopped,
}

impl Ending {
    /// Whether this ending is reported with an event: a stopped job's run is already
    /// written off, an unreported start leaves nothing to report, and a job of a newer
    /// schema is not this worker's to report on (no attempt of it ran).
    fn is_reported(self) -> bool {
        !matches!(self, Self::Stopped | Self::Unreported | Self::NewerSchema)
    }
}

/// Where an attempt stands in its retry series.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Series<'a> {
    /// 1 for the series' first attempt (a `retry` or replay starts a new series).
    pub(crate) attempt: u32,
    pub(crate) policy: &'a RetryPolicy,
}

impl<'a> Series<'a> {
    pub(crate) fn of(job: &'a JobMessage, attempt: u32) -> Self {
        Self { attempt: attempt.saturating_sub(job.retry_base()), policy: &job.retry }
    }
}

/// What becomes of a job's message once its event is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Done: remove it.
    Ack,
    /// Redeliver after `delay` (`None`: at once); the next attempt is due at `retry_at`.
    /// Short delays only: a NAK-delayed message counts as pending work and keeps an
    /// autoscaled pool awake.
    Nak { delay: Option<Duration>, retry_at: DateTime<Utc> },
    /// Remove it, and leave the retry due `at` to the coordinator, which publishes it as a
    /// JetStream message schedule (decision 8: no worker publishes into the jobs stream);
    /// the delay was `delay`.
    ScheduleRetry { at: DateTime<Utc>, delay: Duration },
    /// Final (attempts over, permanent error, unreadable, unknown kind): remove it without
    /// success; the coordinator dead-letters the job from its failed event.
    Term,
}

impl Settlement {
    /// When the next attempt is due, for the event; none once the job is done.
    fn retry_at(self) -> Option<DateTime<Utc>> {
        match self {
            Self::Nak { retry_at, .. } => Some(retry_at),
            Self::ScheduleRetry { at, .. } => Some(at),
            Self::Ack | Self::Term => None,
        }
    }

    /// The acknowledgement that settles the message (a scheduled retry's copy, published by
    /// the coordinator, carries the job on, so its original is acked).
    fn ack_kind(self) -> AckKind {
        match self {
            Self::Ack | Self::ScheduleRetry { .. } => AckKind::Ack,
            Self::Nak { delay, .. } => AckKind::Nak(delay),
            Self::Term => AckKind::Term,
        }
    }
}

/// Decides what becomes of an attempt that ended with `ending`, at `now`. A retryable
/// failure with attempts left in its `series` is retried after the policy's delay
/// (jittered by `rng`): a NAK with that delay up to `nak_delay_max`, a scheduled message
/// beyond it. `series` is `None` when the job cannot be read (nothing is retried then).
pub(crate) fn settle(
    series: Option<Series<'_>>,
    ending: Ending,
    nak_delay_max: Duration,
    now: DateTime<Utc>,
    rng: &mut impl Rng,
) -> Settlement {
    match ending {
        Ending::Succeeded | Ending::Stopped => Settlement::Ack,
        // Given back as it came: another worker may take it at once.
        Ending::HandedBack | Ending::Unreported => Settlement::Nak { delay: None, retry_at: now },
        // Never dead-lettered for that: a worker that reads it runs it. Not at once, though:
        // if only old workers are up, an immediate NAK would spin through its deliveries.
        Ending::NewerSchema => {
            let delay = Duration::from_millis(NEWER_SCHEMA_NAK_DELAY_MS);
            Settlement::Nak { delay: Some(delay), retry_at: now + delay }
        }
        Ending::Failed { retryable: false } | Ending::Undecodable | Ending::UnknownKind => Settlement::Term,
        Ending::Failed { retryable: true } => match series {
            Some(series) if series.policy.allows_another_after(series.attempt) => {
                retry(series, nak_delay_max, now, rng)
            }
            _ => Settlement::Term,
        },
    }
}

fn retry(series: Series<'_>, nak_delay_max: Duration, now: DateTime<Utc>, rng: &mut impl Rng) -> Settlement {
    let delay = series.policy.delay_after(series.attempt, rng.random::<f64>());
    let retry_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
    if delay <= nak_delay_max {
        Settlement::Nak { delay: Some(delay), retry_at }
    } else {
        Settlement::ScheduleRetry { at: retry_at, delay }
    }
}

/// How an attempt ended, as `sluice_worker_attempts_total` labels it; `None` for a job
/// this worker does not read (nothing ran).
pub(crate) fn outcome_label(ending: Ending, settlement: Settlement) -> Option<&'static str> {
    Some(match ending {
        Ending::Succeeded => "succeeded",
        Ending::Stopped => "stopped",
        Ending::HandedBack | Ending::Unreported => "handed_back",
        Ending::NewerSchema => return None,
        Ending::Failed { .. } | Ending::Undecodable | Ending::UnknownKind => match settlement {
            Settlement::Nak { .. } | Settlement::ScheduleRetry { .. } => "retrying",
            Settlement::Ack | Settlement::Term => "failed",
        },
    })
}

/// Settles an attempt of a job that was read: stores what a success hands on, decides,
/// reports the outcome, then settles the message.
async fn complete_read(shared: &Shared, reporter: &Reporter, message: &Message, outcome: Outcome) {
    let job = &reporter.job;
    let now = Utc::now();
    let (ending, mut report) = describe(reporter, outcome).await;
    let series = Series::of(job, reporter.attempt);
    let settlement = settle(Some(series), ending, shared.config.nak_delay_max, now, &mut rand::rng());
    if let Some(outcome) = outcome_label(ending, settlement) {
        let took = (now - reporter.began()).to_std().unwrap_or_default();
        shared.metrics.attempt_ended(&shared.config.pool, outcome, took);
        if let Some(sink) = shared.metrics.spans()
            && let Some(span) = reporter.span(now, outcome, report.error.as_deref())
        {
            sink.emit(span);
        }
    }
    if !ending.is_reported() {
        if ending == Ending::Stopped {
            // The run was cancelled: the coordinator already wrote the job off.
            tracing::info!(run = %job.run_id, job = %job.job, "job stopped: its run was cancelled");
        }
        return acknowledge(message, settlement, &job.job).await;
    }
    let kind = if ending == Ending::Succeeded { EventKind::Succeeded } else { EventKind::Failed };
    let error = report.error.as_deref().unwrap_or("");
    tracing::info!(run = %job.run_id, job = %job.job, attempt = reporter.attempt, outcome = kind.as_str(), error, "job finished");
    reporter.free_slot();
    report.retry_at = settlement.retry_at();
    report.schedule_retry = matches!(settlement, Settlement::ScheduleRetry { .. });
    let removed = matches!(settlement, Settlement::Ack | Settlement::ScheduleRetry { .. } | Settlement::Term);
    if let Err(publish_error) = reporter.store_outcome(message, kind, report, removed).await {
        // Only at shutdown: the job is redelivered, and its stored start charges this attempt.
        tracing::error!(error = %publish_error, job = %job.job, "cannot report the outcome; the job will be redelivered");
        return;
    }
    reporter.confirm_start().await;
    acknowledge(message, settlement, &job.job).await;
}

/// The ending and what the event says, once a success's output and children are stored
/// (a success whose output or children are refused fails after all).
async fn describe(reporter: &Reporter, outcome: Outcome) -> (Ending, Report) {
    let report =
        |error: Option<String>| Report { error, retry_at: None, schedule_retry: false, output: None, spawned: 0 };
    let failed = |error: JobError| (Ending::Failed { retryable: error.retryable }, report(Some(error.message)));
    match outcome {
        Outcome::Succeeded(output, children) => match hand_on(reporter, output, children).await {
            Ok((output, spawned)) => (Ending::Succeeded, Report { output, spawned, ..report(None) }),
            Err(error) => failed(error),
        },
        Outcome::Failed(error) => failed(error),
        Outcome::UnknownKind(reason) => (Ending::UnknownKind, report(Some(reason))),
        Outcome::HandedBack => {
            let reason = "handed back: the worker shut down before the job finished";
            (Ending::HandedBack, report(Some(reason.to_owned())))
        }
        Outcome::Unreported => (Ending::Unreported, report(None)),
        Outcome::Stopped => (Ending::Stopped, report(None)),
    }
}

/// Settles the message. Not confirmed: a lost ack only brings the message back after its
/// ack wait, and the coordinator ignores the repeated attempt's outcome (its event is
/// already stored).
async fn acknowledge(message: &Message, settlement: Settlement, job: &str) {
    let acked = match settlement.ack_kind() {
        AckKind::Ack => message.ack().await,
        kind => message.ack_with(kind).await,
    };
    if let Err(error) = acked {
        tracing::warn!(%error, job, "acknowledging the job failed; it may be delivered again");
    }
}

/// Checks what a successful attempt hands on and stores its children (before its event):
/// returns the output and how many children there are, or why the attempt fails after all.
async fn hand_on(
    reporter: &Reporter,
    output: Output,
    children: Vec<ChildSpec>,
) -> Result<(Option<serde_json::Value>, u32), JobError> {
    if let Some(value) = &output.value {
        check_output(value).map_err(JobError::permanent)?;
    }
    if children.is_empty() {
        return Ok((output.value, 0));
    }
    check_children(&children).map_err(|error| JobError::permanent(error.to_string()))?;
    if depth_of(&reporter.job.job) + 1 > CHILD_DEPTH_MAX {
        return Err(JobError::permanent(SpawnError::TooDeep.to_string()));
    }
    let count = u32::try_from(children.len()).unwrap_or(u32::MAX);
    store_children(reporter, children).await?;
    Ok((output.value, count))
}

/// Publishes the children in batches of at most half [`SPAWN_BATCH_MAX_BYTES`], then waits
/// until all are stored.
async fn store_children(reporter: &Reporter, children: Vec<ChildSpec>) -> Result<(), JobError> {
    let job = &reporter.job;
    let subject = names::spawn_subject(&job.pool, &job.run_id, &job.job, job.generation, reporter.attempt);
    let mut acks = Vec::new();
    let mut batch = SpawnBatch {
        schema_version: SCHEMA_VERSION,
        run_id: job.run_id,
        job: job.job.clone(),
        attempt: reporter.attempt,
        generation: job.generation,
        children: Vec::new(),
    };
    let mut bytes = 0;
    let total = children.len();
    for (index, child) in children.into_iter().enumerate() {
        // JSON is longer than MessagePack: a safe estimate of the batch's size.
        bytes += serde_json::to_vec(&child).map(|encoded| encoded.len()).unwrap_or(0);
        batch.children.push(child);
        if bytes >= SPAWN_BATCH_MAX_BYTES / 2 || index + 1 == total {
            let payload = encode(&batch).map_err(|error| JobError::permanent(error.to_string()))?;
            let mut headers = HeaderMap::new();
            headers.insert(names::HEADER_MSG_ID, format!("{subject}.{}", acks.len()).as_str());
            let ack = reporter
                .shared
                .js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(|error| JobError::retryable(format!("storing the children: {error}")))?;
            acks.push(ack);
            batch.children.clear();
            bytes = 0;
        }
    }
    for ack in acks {
        ack.await.map_err(|error| JobError::retryable(format!("storing the children: {error}")))?;
    }
    Ok(())
}

/// A job message that cannot be decoded: report it against the run and job named in its
/// headers (if any), then TERM it so it is not redelivered for ever.
async fn undecodable(shared: &Shared, message: &Message, delivered: u32, reason: String) {
    tracing::error!(subject = %message.subject, %reason, "job message cannot be decoded");
    if let Some(mut event) = event_from_headers(message, delivered, &shared.config.worker_id) {
        event.error = Some(error_text(format!("job message cannot be decoded: {reason}")));
        if let Err(error) = store_event(shared, message, &event).await {
            tracing::error!(%error, "cannot report the undecodable job; it will be redelivered");
            return;
        }
    } else if let Err(error) = raw_dead_letter(shared, message, &reason).await {
        // No run to report to: the raw bytes go to the dead-letter stream, or stay here.
        tracing::error!(%error, "cannot dead-letter the undecodable job; it will be redelivered");
        return;
    }
    let settlement = settle(None, Ending::Undecodable, shared.config.nak_delay_max, Utc::now(), &mut rand::rng());
    acknowledge(message, settlement, message.subject.as_str()).await;
}

/// A job of a newer schema than this build reads: handed back untouched (a NAK after
/// `NEWER_SCHEMA_NAK_DELAY_MS`, so it does not come straight back), with no event and no dead letter, so no attempt of it is recorded and a worker
/// that reads its schema runs it. The coordinator dispatches a new schema to a pool only
/// once every live worker of the pool announces it, so this is the rare worker that is late.
async fn newer_schema(shared: &Shared, message: &Message, version: u32) {
    tracing::warn!(
        subject = %message.subject,
        version,
        "job has schema_version {version}; this worker reads versions up to {SCHEMA_VERSION}: handing it back untouched (upgrade this worker)"
    );
    let settlement = settle(None, Ending::NewerSchema, shared.config.nak_delay_max, Utc::now(), &mut rand::rng());
    acknowledge(message, settlement, message.subject.as_str()).await;
}

/// A failed event for the run and job an unreadable message's headers name, if they do.
fn event_from_headers(message: &Message, delivered: u32, worker: &str) -> Option<JobEvent> {
    let run_id = header(message, names::HEADER_RUN_ID).and_then(|text| text.parse::<RunId>().ok())?;
    // A child's path is names joined by dots: each part must be a valid name.
    let job =
        header(message, names::HEADER_JOB).filter(|job| job.split('.').all(|part| check_name("job", part).is_ok()))?;
    let number = |name: &str| header(message, name).and_then(|text| text.parse::<u32>().ok()).unwrap_or(0);
    let (generation, offset) = (number(names::HEADER_GENERATION), number(names::HEADER_ATTEMPT_OFFSET));
    Some(JobEvent::new(
        run_id,
        &job,
        offset.saturating_add(delivered),
        generation,
        EventKind::Failed,
        worker,
        Utc::now(),
    ))
}

/// Keeps a job message nobody can read in the dead-letter stream, as it came, with the
/// reason and its subject in headers (`sluice dlq list` shows it).
async fn raw_dead_letter(shared: &Shared, message: &Message, reason: &str) -> Result<(), WorkerError> {
    let mut headers = HeaderMap::new();
    headers.insert(names::HEADER_REASON, format!("job message cannot be decoded: {reason}").as_str());
    headers.insert(names::HEADER_ORIGINAL_SUBJECT, message.subject.as_str());
    // The headers may still name the run and job when the payload cannot be read.
    let run_id = header(message, names::HEADER_RUN_ID).and_then(|text| text.parse::<sluice_proto::RunId>().ok());
    let job = header(message, names::HEADER_JOB).filter(|job| names::is_subject_path(job));
    let subject = names::dlq_subject(&shared.config.pool, run_id.as_ref(), job.as_deref());
    let ack = shared.js.publish_with_headers(subject, headers, message.payload.clone()).await;
    ack.map_err(|error| WorkerError::nats("dead-lettering an undecodable job", error))?
        .await
        .map_err(|error| WorkerError::nats("dead-lettering an undecodable job", error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use sluice_proto::{Backoff, HumanDuration};

    use super::*;

    const NAK_DELAY_MAX: Duration = Duration::from_secs(30);

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).single().unwrap_or_default()
    }

    /// 3 attempts, 10 s, 20 s, 40 s … up to 600 s, no jitter.
    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            initial: HumanDuration::from_secs(10),
            max: HumanDuration::from_secs(600),
            jitter: false,
        }
    }

    #[test]
    fn each_ending_is_labelled_as_the_attempts_metric_counts_it() {
        let now = now();
        let nak = Settlement::Nak { delay: None, retry_at: now };
        let later = Settlement::ScheduleRetry { at: now, delay: Duration::from_secs(60) };
        let failed = Ending::Failed { retryable: true };
        assert_eq!(outcome_label(Ending::Succeeded, Settlement::Ack), Some("succeeded"));
        assert_eq!(outcome_label(failed, nak), Some("retrying"));
        assert_eq!(outcome_label(failed, later), Some("retrying"));
        assert_eq!(outcome_label(failed, Settlement::Term), Some("failed"));
        assert_eq!(outcome_label(Ending::UnknownKind, Settlement::Term), Some("failed"));
        assert_eq!(outcome_label(Ending::HandedBack, nak), Some("handed_back"));
        assert_eq!(outcome_label(Ending::Stopped, Settlement::Ack), Some("stopped"));
        assert_eq!(outcome_label(Ending::NewerSchema, nak), None, "nothing ran");
    }

    fn settle_with(policy: &RetryPolicy, attempt: u32, ending: Ending, seed: u64) -> Settlement {
        let series = Series { attempt, policy };
        settle(Some(series), ending, NAK_DELAY_MAX, now(), &mut StdRng::seed_from_u64(seed))
    }

    fn after(delay: Duration) -> DateTime<Utc> {
        now() + chrono::Duration::from_std(delay).unwrap_or_default()
    }

    #[test]
    fn a_success_or_a_stopped_job_is_acked() {
        assert_eq!(settle_with(&policy(), 1, Ending::Succeeded, 0), Settlement::Ack);
        assert_eq!(settle_with(&policy(), 3, Ending::Succeeded, 0), Settlement::Ack);
        assert_eq!(settle_with(&policy(), 1, Ending::Stopped, 0), Settlement::Ack);
    }

    #[test]
    fn a_handed_back_or_unreported_job_is_naked_without_delay() {
        let at_once = Settlement::Nak { delay: None, retry_at: now() };
        assert_eq!(settle_with(&policy(), 1, Ending::HandedBack, 0), at_once);
        // Even on the last attempt: the worker, not the job, gave up.
        assert_eq!(settle_with(&policy(), 3, Ending::HandedBack, 0), at_once);
        assert_eq!(settle_with(&policy(), 1, Ending::Unreported, 0), at_once);
    }

    #[test]
    fn a_job_of_a_newer_schema_goes_back_after_a_pause_without_an_event_even_past_its_attempts() {
        let delay = Duration::from_millis(NEWER_SCHEMA_NAK_DELAY_MS);
        let later = Settlement::Nak { delay: Some(delay), retry_at: now() + delay };
        let unread = settle(None, Ending::NewerSchema, NAK_DELAY_MAX, now(), &mut StdRng::seed_from_u64(0));
        assert_eq!(unread, later);
        assert_eq!(settle_with(&policy(), 99, Ending::NewerSchema, 0), later);
        assert!(!Ending::NewerSchema.is_reported(), "no event: no attempt is charged");
    }

    #[test]
    fn a_permanent_failure_an_unknown_kind_or_an_unreadable_job_is_final() {
        assert_eq!(settle_with(&policy(), 1, Ending::Failed { retryable: false }, 0), Settlement::Term);
        assert_eq!(settle_with(&policy(), 1, Ending::UnknownKind, 0), Settlement::Term);
        assert_eq!(settle_with(&policy(), 1, Ending::Undecodable, 0), Settlement::Term);
        let unread = settle(None, Ending::Undecodable, NAK_DELAY_MAX, now(), &mut StdRng::seed_from_u64(0));
        assert_eq!(unread, Settlement::Term);
        // Without a policy nothing is retried.
        let retryable = settle(None, Ending::Failed { retryable: true }, NAK_DELAY_MAX, now(), &mut rand::rng());
        assert_eq!(retryable, Settlement::Term);
    }

    #[test]
    fn a_retryable_failure_with_attempts_left_waits_the_policys_delay_with_a_nak() {
        let first = settle_with(&policy(), 1, Ending::Failed { retryable: true }, 0);
        let ten = Duration::from_secs(10);
        assert_eq!(first, Settlement::Nak { delay: Some(ten), retry_at: after(ten) });
        let second = settle_with(&policy(), 2, Ending::Failed { retryable: true }, 0);
        let twenty = Duration::from_secs(20);
        assert_eq!(second, Settlement::Nak { delay: Some(twenty), retry_at: after(twenty) });
    }

    #[test]
    fn the_last_attempt_and_any_beyond_it_are_final() {
        assert!(matches!(settle_with(&policy(), 2, Ending::Failed { retryable: true }, 0), Settlement::Nak { .. }));
        assert_eq!(settle_with(&policy(), 3, Ending::Failed { retryable: true }, 0), Settlement::Term);
        assert_eq!(settle_with(&policy(), 4, Ending::Failed { retryable: true }, 0), Settlement::Term);
        let once = RetryPolicy { max_attempts: 1, ..policy() };
        assert_eq!(settle_with(&once, 1, Ending::Failed { retryable: true }, 0), Settlement::Term);
    }

    #[test]
    fn a_delay_up_to_the_nak_limit_is_a_nak_and_beyond_it_a_scheduled_retry() {
        let thirty = Duration::from_secs(30);
        let at_limit = RetryPolicy { initial: HumanDuration::from_secs(30), ..policy() };
        let failed = Ending::Failed { retryable: true };
        assert_eq!(
            settle_with(&at_limit, 1, failed, 0),
            Settlement::Nak { delay: Some(thirty), retry_at: after(thirty) }
        );
        let just_under = thirty - Duration::from_millis(1);
        let tighter =
            settle(Some(Series { attempt: 1, policy: &at_limit }), failed, just_under, now(), &mut rand::rng());
        assert_eq!(tighter, Settlement::ScheduleRetry { at: after(thirty), delay: thirty });
        // The third attempt of the default-like policy waits 40 s: scheduled.
        let long = RetryPolicy { max_attempts: 5, ..policy() };
        let forty = Duration::from_secs(40);
        assert_eq!(settle_with(&long, 3, failed, 0), Settlement::ScheduleRetry { at: after(forty), delay: forty });
    }

    #[test]
    fn jitter_spreads_a_delay_over_its_second_half() {
        let jittered = RetryPolicy { jitter: true, ..policy() };
        let (low, high) = (Duration::from_secs(5), Duration::from_secs(10));
        let mut delays = Vec::new();
        for seed in 0..200 {
            let Settlement::Nak { delay: Some(delay), retry_at } =
                settle_with(&jittered, 1, Ending::Failed { retryable: true }, seed)
            else {
                panic!("seed {seed}: a 5-10 s delay must be a NAK");
            };
            assert!(low <= delay && delay <= high, "seed {seed}: {delay:?} outside [5 s, 10 s]");
            assert_eq!(retry_at, after(delay), "seed {seed}");
            delays.push(delay);
        }
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 100, "200 seeds gave only {} distinct delays", delays.len());
    }

    #[test]
    fn the_same_seed_settles_the_same_way() {
        let jittered = RetryPolicy { jitter: true, max_attempts: 10, ..policy() };
        for attempt in 1..10 {
            for seed in [0, 1, 42, u64::MAX] {
                let once = settle_with(&jittered, attempt, Ending::Failed { retryable: true }, seed);
                let again = settle_with(&jittered, attempt, Ending::Failed { retryable: true }, seed);
                assert_eq!(once, again, "attempt {attempt}, seed {seed}");
            }
        }
    }

    fn job(attempt_offset: u32, retry_base: Option<u32>) -> JobMessage {
        JobMessage {
            schema_version: SCHEMA_VERSION,
            run_id: RunId::new(),
            workflow: "w".into(),
            job: "extract".into(),
            kind: "exec".into(),
            command: None,
            config: serde_json::Value::Null,
            window: sluice_proto::Window { start: now().fixed_offset(), end: now().fixed_offset() },
            params: Default::default(),
            pool: "default".into(),
            attempt_offset,
            retry_base,
            generation: 0,
            retry: policy(),
            timeout_ms: None,
            permanent_exit_codes: vec![],
            needs: vec![],
            image: None,
            resources: None,
            env: Default::default(),
            batch_events: true,
        }
    }

    #[test]
    fn the_series_counts_from_its_retry_base() {
        // A `retry` after 5 attempts: attempt 7 is the series' second.
        let retried = job(5, None);
        assert_eq!(Series::of(&retried, 7).attempt, 2);
        // A scheduled retry moved the offset to 7, not the base: attempt 8 is the third, the last.
        let rescheduled = job(7, Some(5));
        let series = Series::of(&rescheduled, 8);
        assert_eq!(series.attempt, 3);
        let failed = Ending::Failed { retryable: true };
        assert_eq!(settle(Some(series), failed, NAK_DELAY_MAX, now(), &mut rand::rng()), Settlement::Term);
        let second = Series::of(&rescheduled, 7);
        assert!(matches!(settle(Some(second), failed, NAK_DELAY_MAX, now(), &mut rand::rng()), Settlement::Nak { .. }));
    }

    #[test]
    fn each_settlement_has_its_acknowledgement_and_retry_time() {
        let (delay, at) = (Duration::from_secs(40), after(Duration::from_secs(40)));
        assert!(matches!(Settlement::Ack.ack_kind(), AckKind::Ack));
        assert!(matches!(Settlement::ScheduleRetry { at, delay }.ack_kind(), AckKind::Ack));
        assert!(matches!(Settlement::Term.ack_kind(), AckKind::Term));
        let nak = Settlement::Nak { delay: Some(delay), retry_at: at };
        assert!(matches!(nak.ack_kind(), AckKind::Nak(Some(d)) if d == delay));
        assert_eq!(nak.retry_at(), Some(at));
        assert_eq!(Settlement::ScheduleRetry { at, delay }.retry_at(), Some(at));
        assert_eq!(Settlement::Ack.retry_at(), None);
        assert_eq!(Settlement::Term.retry_at(), None);
    }

    #[test]
    fn only_stopped_unreported_and_newer_schema_attempts_go_without_an_event() {
        assert!(!Ending::Stopped.is_reported());
        assert!(!Ending::Unreported.is_reported());
        assert!(!Ending::NewerSchema.is_reported());
        for ending in [
            Ending::Succeeded,
            Ending::Failed { retryable: true },
            Ending::Failed { retryable: false },
            Ending::Undecodable,
            Ending::UnknownKind,
            Ending::HandedBack,
        ] {
            assert!(ending.is_reported(), "{ending:?}");
        }
    }
}
