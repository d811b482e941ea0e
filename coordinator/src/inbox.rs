//! Everything that reaches the leader's loop, as one stream of [`Inbound`] items: the
//! coordinator's four consumers (events, MAX_DELIVERIES advisories, control requests,
//! submissions) and what the term's own tasks (the [`crate::timekeeper`]) report.
//!
//! The loop takes one item at a time, applies it to the engine and carries out the effects
//! through the [`crate::outbox`]: nothing else in the shell receives messages.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, Message, consumer};
use futures::stream::{ReadyChunks, StreamExt};
use sluice_proto::names;
use tokio::sync::mpsc;

use crate::error::{NatsContext, ServiceError};
use crate::topology;

/// Most events handled (and written) as one batch.
pub const EVENT_BATCH_MAX: usize = 512;
/// Submissions, control requests and advisories pulled ahead of handling; each waits its
/// turn within the coordinator's ack wait.
const PREFETCH: usize = 16;
/// Reports from the term's tasks waiting to be taken (they are rare: one a few seconds).
const TASK_REPORTS_MAX: usize = 8;

/// One thing for the loop to handle.
#[derive(Debug)]
pub enum Inbound {
    /// Job events, in stream order (up to [`EVENT_BATCH_MAX`]).
    Events(Vec<Message>),
    /// JetStream gave up delivering a job.
    Advisory(Message),
    Control(Message),
    Submission(Message),
    /// The schema each pool's live workers read, freshly from the registry.
    PoolSchemas(BTreeMap<String, u32>),
    /// A term task failed: the term ends and the coordinator restarts from durable state.
    TaskFailed(ServiceError),
}

/// Where the term's tasks send what they have for the loop.
pub type Reports = mpsc::Sender<Inbound>;

/// The coordinator's consumers of one term, created before recovery and read after it.
pub struct Consumers {
    events: consumer::PullConsumer,
    advisories: consumer::PullConsumer,
    control: consumer::PullConsumer,
    submit: consumer::PullConsumer,
}

impl Consumers {
    /// Replaces the coordinator's consumers (see [`topology::coordinator_consumer`]), so what
    /// a previous leader had taken is delivered at once.
    pub async fn create(js: &jetstream::Context) -> Result<Self, ServiceError> {
        let open = |stream, durable, filter| topology::coordinator_consumer(js, stream, durable, filter);
        Ok(Self {
            submit: open(names::SUBMIT_STREAM, names::SUBMIT_CONSUMER, names::SUBMIT_SUBJECT).await?,
            events: open(names::EVENTS_STREAM, names::EVENTS_CONSUMER, names::EVENTS_SUBJECTS).await?,
            control: open(names::CONTROL_STREAM, names::CONTROL_CONSUMER, names::CONTROL_SUBJECTS).await?,
            advisories: open(names::ADVISORIES_STREAM, names::ADVISORIES_CONSUMER, names::MAX_DELIVERIES_SUBJECTS)
                .await?,
        })
    }

    /// How many control requests wait in the stream: those stored before this term began,
    /// which the loop applies before it takes any submission.
    pub async fn control_backlog(&self) -> Result<u64, ServiceError> {
        Ok(self.control.get_info().await.context("reading the control consumer")?.num_pending)
    }

    /// The next waiting control requests, [`PREFETCH`] at most; none when none waits.
    pub async fn fetch_control(&self, max: usize) -> Result<Vec<Message>, ServiceError> {
        use futures::TryStreamExt;
        let batch = self
            .control
            .fetch()
            .max_messages(max.clamp(1, PREFETCH))
            .messages()
            .await
            .context("fetching control requests")?;
        batch.try_collect().await.context("fetching control requests")
    }

    /// Starts pulling; returns the inbox and the sender the term's tasks report through.
    pub async fn subscribe(self) -> Result<(Inbox, Reports), ServiceError> {
        let pull = |consumer: consumer::PullConsumer, what: &'static str, batch: usize| async move {
            consumer.stream().max_messages_per_batch(batch).messages().await.context(format!("subscribing to {what}"))
        };
        let (reports, from_tasks) = mpsc::channel(TASK_REPORTS_MAX);
        let inbox = Inbox {
            from_tasks,
            events: pull(self.events, "events", EVENT_BATCH_MAX).await?.ready_chunks(EVENT_BATCH_MAX),
            advisories: pull(self.advisories, "advisories", PREFETCH).await?,
            control: pull(self.control, "control requests", PREFETCH).await?,
            submissions: pull(self.submit, "submissions", PREFETCH).await?,
        };
        Ok((inbox, reports))
    }
}

/// The loop's one source of work.
pub struct Inbox {
    from_tasks: mpsc::Receiver<Inbound>,
    events: ReadyChunks<consumer::pull::Stream>,
    advisories: consumer::pull::Stream,
    control: consumer::pull::Stream,
    submissions: consumer::pull::Stream,
}

impl Inbox {
    /// The next item. Priority: the term's tasks, then events (they finish work already
    /// started), advisories, control requests, and new submissions last.
    pub async fn next(&mut self) -> Result<Inbound, ServiceError> {
        tokio::select! {
            biased;
            report = self.from_tasks.recv() => {
                // The loop holds a sender of its own for the whole term, so this never ends.
                report.ok_or_else(|| ended("term tasks"))
            }
            batch = self.events.next() => {
                let batch = batch.ok_or_else(|| ended("events"))?;
                let messages = batch.into_iter().collect::<Result<Vec<_>, _>>().context("receiving events")?;
                Ok(Inbound::Events(messages))
            }
            advisory = self.advisories.next() => {
                Ok(Inbound::Advisory(advisory.ok_or_else(|| ended("advisories"))?.context("receiving an advisory")?))
            }
            request = self.control.next() => {
                let request = request.ok_or_else(|| ended("control requests"))?;
                Ok(Inbound::Control(request.context("receiving a control request")?))
            }
            submission = self.submissions.next() => {
                let submission = submission.ok_or_else(|| ended("submissions"))?;
                Ok(Inbound::Submission(submission.context("receiving a submission")?))
            }
        }
    }
}

fn ended(what: &str) -> ServiceError {
    ServiceError::Nats { context: format!("the {what} subscription ended"), source: "subscription closed".into() }
}
