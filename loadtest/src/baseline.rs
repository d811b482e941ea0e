//! The raw JetStream floor: async-nats used the fastest honest way, on the same server
//! settings Sluice uses (file storage, work-queue retention, explicit acks).
//!
//! Honest means what Sluice pays for durability is paid here too: every publish waits for
//! JetStream's acknowledgement (pipelined, at most [`IN_FLIGHT`] outstanding), and every
//! message is acked with a plain ack (`+ACK` published, not confirmed), which is what
//! Sluice's worker and coordinator send. Fastest means persistent pulls
//! (`consumer.messages()`: a pull request stays open and is topped up), not a fetch per
//! batch, and the publisher and the pullers on two connections, as Sluice's coordinator and
//! worker are. Each baseline checks afterwards that its stream is empty (every message
//! consumed and its ack processed by the server), outside the timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::sync::watch;

const SUBJECT: &str = "bench.work";

/// Publish acknowledgements a publisher keeps outstanding (the coordinator pipelines its
/// dispatches too).
const IN_FLIGHT: usize = 1024;

/// Pullers that consume at once (Sluice's workloads have four worker slots).
const PULLERS: usize = 4;

/// Longest a baseline may wait for its messages or for the server to process its acks.
const TIMEOUT: Duration = Duration::from_secs(120);

/// How often the check that a stream is empty looks again (nothing signals it).
const EMPTY_POLL: Duration = Duration::from_millis(10);

/// The two connections of a baseline: one publishes, the other consumes.
pub struct Connections {
    pub publisher: jetstream::Context,
    pub consumer: jetstream::Context,
}

async fn work_queue(js: &Connections, name: &str) -> Result<(stream::Stream, consumer::PullConsumer)> {
    let stream = js
        .publisher
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{SUBJECT}.{name}")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating a baseline stream")?;
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("pullers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("creating a baseline consumer")?;
    // The consumer as the consuming connection sees it, so its pulls and acks go there.
    let consumer: consumer::PullConsumer = js
        .consumer
        .get_stream(name)
        .await
        .context("opening a baseline stream")?
        .get_consumer("pullers")
        .await
        .map_err(|error| anyhow::anyhow!(error))
        .context("opening a baseline consumer")?;
    Ok((stream, consumer))
}

/// Publishes `count` messages, keeping at most [`IN_FLIGHT`] acknowledgements outstanding,
/// and waits for every one of them.
async fn publish(js: &jetstream::Context, subject: &str, count: usize) -> Result<()> {
    let mut pending = std::collections::VecDeque::with_capacity(IN_FLIGHT.min(count));
    for index in 0..count {
        if pending.len() >= IN_FLIGHT
            && let Some(ack) = pending.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await.context("a baseline publish was not stored")?;
        }
        pending.push_back(js.publish(subject.to_owned(), format!("{index}").into()).await?);
    }
    for ack in pending {
        ack.await.context("a baseline publish was not stored")?;
    }
    Ok(())
}

/// [`PULLERS`] persistent pulls on one consumer, acking every message; `consumed` counts
/// the messages acked so far.
struct Pullers {
    consumed: watch::Receiver<usize>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl Pullers {
    /// Starts the pulls (their pull requests are open before this returns).
    async fn start(consumer: &consumer::PullConsumer, pullers: usize) -> Result<Self> {
        let (count, consumed) = watch::channel(0usize);
        let count = Arc::new(count);
        let mut tasks = Vec::with_capacity(pullers);
        for _ in 0..pullers {
            let mut messages = consumer.messages().await.context("opening a persistent pull")?;
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(message) = messages.next().await {
                    let message = message.map_err(|error| anyhow::anyhow!(error)).context("pulling")?;
                    message.ack().await.map_err(|error| anyhow::anyhow!(error)).context("acking")?;
                    count.send_modify(|n| *n += 1);
                }
                Ok(())
            }));
        }
        Ok(Self { consumed, tasks })
    }

    /// Waits until `total` messages have been acked (in all).
    async fn until(&mut self, total: usize) -> Result<()> {
        let reached = tokio::time::timeout(TIMEOUT, self.consumed.wait_for(|n| *n >= total)).await.map(|r| r.is_ok());
        match reached {
            Ok(true) => Ok(()),
            Ok(false) => bail!("the baseline's pullers stopped after {} of {total} messages", *self.consumed.borrow()),
            Err(_) => {
                bail!("the baseline's pullers acked {} of {total} messages in {TIMEOUT:?}", *self.consumed.borrow())
            }
        }
    }

    /// Stops the pulls; an error one of them hit is returned.
    async fn stop(self) -> Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks {
            match task.await {
                Ok(result) => result?,
                Err(error) if error.is_cancelled() => {}
                Err(error) => bail!("a baseline puller panicked: {error}"),
            }
        }
        Ok(())
    }
}

/// After a baseline: the consuming connection's acks have reached the server, and the
/// server has processed them (a work-queue stream deletes a message when it is acked), so
/// every message was consumed and acked. Polled: nothing signals an empty stream.
async fn assert_drained(js: &Connections, stream: &mut stream::Stream, sent: usize) -> Result<()> {
    js.consumer.client().flush().await.context("flushing the baseline's acks")?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let info = stream.info().await.context("reading a baseline stream")?;
        if info.state.messages == 0 && info.state.last_sequence == sent as u64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "baseline stream {}: {} of {sent} messages still unacked after {TIMEOUT:?} (last sequence {})",
                info.config.name,
                info.state.messages,
                info.state.last_sequence
            );
        }
        tokio::time::sleep(EMPTY_POLL).await;
    }
}

/// B1: `count` messages published (pipelined) and, at the same time, consumed and acked by
/// 4 persistent pulls. Returns messages per second.
pub async fn b1(js: &Connections, count: usize) -> Result<f64> {
    let (mut stream, consumer) = work_queue(js, "B1").await?;
    let subject = format!("{SUBJECT}.B1");
    let mut pullers = Pullers::start(&consumer, PULLERS).await?;
    let started = Instant::now();
    let publisher = publish(&js.publisher, &subject, count);
    tokio::try_join!(publisher, pullers.until(count))?;
    let seconds = started.elapsed().as_secs_f64();
    pullers.stop().await?;
    assert_drained(js, &mut stream, count).await?;
    Ok(count as f64 / seconds)
}

/// B2: publish 1, consume+ack; publish `count` (pipelined), consume+ack all (4 persistent
/// pulls); publish 1, consume+ack. Returns the wall time in seconds (the floor under a
/// root → fan-out → join).
pub async fn b2(js: &Connections, count: usize) -> Result<f64> {
    let (mut stream, consumer) = work_queue(js, "B2").await?;
    let subject = format!("{SUBJECT}.B2");
    let mut pullers = Pullers::start(&consumer, PULLERS).await?;
    let started = Instant::now();
    publish(&js.publisher, &subject, 1).await?;
    pullers.until(1).await?;
    tokio::try_join!(publish(&js.publisher, &subject, count), pullers.until(1 + count))?;
    publish(&js.publisher, &subject, 1).await?;
    pullers.until(count + 2).await?;
    let seconds = started.elapsed().as_secs_f64();
    pullers.stop().await?;
    assert_drained(js, &mut stream, count + 2).await?;
    Ok(seconds)
}

/// B3: `steps` strict steps on one persistent pull: publish (ack awaited) → the message
/// arrives → ack → the next publish. Returns seconds per step.
pub async fn b3(js: &Connections, steps: usize) -> Result<f64> {
    let (mut stream, consumer) = work_queue(js, "B3").await?;
    let subject = format!("{SUBJECT}.B3");
    let mut messages = consumer.messages().await.context("opening a persistent pull")?;
    let started = Instant::now();
    for step in 0..steps {
        publish(&js.publisher, &subject, 1).await?;
        let message = tokio::time::timeout(TIMEOUT, messages.next())
            .await
            .with_context(|| format!("B3 step {step}: no message within {TIMEOUT:?}"))?
            .with_context(|| format!("B3 step {step}: the pull ended"))?
            .map_err(|error| anyhow::anyhow!(error))
            .context("pulling")?;
        message.ack().await.map_err(|error| anyhow::anyhow!(error)).context("acking")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(messages);
    assert_drained(js, &mut stream, steps).await?;
    Ok(seconds / steps as f64)
}
