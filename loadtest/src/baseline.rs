//! The raw JetStream floor, with async-nats directly, on the same server settings Sluice
//! uses (file storage, work-queue retention, explicit acks).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

const SUBJECT: &str = "bench.work";

async fn work_queue(js: &jetstream::Context, name: &str) -> Result<(stream::Stream, consumer::PullConsumer)> {
    let stream = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{SUBJECT}.{name}")],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .context("creating a baseline stream")?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("pullers".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("creating a baseline consumer")?;
    Ok((stream, consumer))
}

/// Publishes `count` messages, keeping at most 1,024 acknowledgements in flight (as
/// Sluice's coordinator does), and waits for all of them.
async fn publish(js: &jetstream::Context, subject: &str, count: usize) -> Result<()> {
    let mut pending = std::collections::VecDeque::new();
    for index in 0..count {
        if pending.len() >= 1024
            && let Some(ack) = pending.pop_front()
        {
            let ack: jetstream::context::PublishAckFuture = ack;
            ack.await?;
        }
        pending.push_back(js.publish(subject.to_owned(), format!("{index}").into()).await?);
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

/// Fetches and acknowledges `count` messages with one puller.
async fn consume(consumer: &consumer::PullConsumer, count: usize) -> Result<()> {
    let mut done = 0;
    while done < count {
        let mut batch = consumer.fetch().max_messages((count - done).min(256)).messages().await?;
        while let Some(message) = batch.next().await {
            message.map_err(|error| anyhow::anyhow!(error))?.ack().await.map_err(|error| anyhow::anyhow!(error))?;
            done += 1;
        }
    }
    Ok(())
}

/// B1: `count` messages published and, at the same time, consumed and acked by 4 pullers.
/// Returns messages per second.
pub async fn b1(js: &jetstream::Context, count: usize) -> Result<f64> {
    let (_, consumer) = work_queue(js, "B1").await?;
    let started = Instant::now();
    let subject = format!("{SUBJECT}.B1");
    let publisher = publish(js, &subject, count);
    let shares: Vec<usize> = (0..4).map(|index| count / 4 + usize::from(index < count % 4)).collect();
    let pullers = futures::future::try_join_all(shares.iter().map(|share| {
        let consumer = consumer.clone();
        async move { consume(&consumer, *share).await }
    }));
    tokio::try_join!(publisher, pullers)?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// B2: publish 1, consume+ack; publish `count`, consume+ack all; publish 1, consume+ack.
/// Returns the wall time in seconds (the floor under a root → fan-out → join).
pub async fn b2(js: &jetstream::Context, count: usize) -> Result<f64> {
    let (_, consumer) = work_queue(js, "B2").await?;
    let subject = format!("{SUBJECT}.B2");
    let started = Instant::now();
    publish(js, &subject, 1).await?;
    consume(&consumer, 1).await?;
    let shares: Vec<usize> = (0..4).map(|index| count / 4 + usize::from(index < count % 4)).collect();
    let pullers = futures::future::try_join_all(shares.iter().map(|share| {
        let consumer = consumer.clone();
        async move { consume(&consumer, *share).await }
    }));
    tokio::try_join!(publish(js, &subject, count), pullers)?;
    publish(js, &subject, 1).await?;
    consume(&consumer, 1).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// B3: `steps` strict publish → consume → ack steps. Returns seconds per step.
pub async fn b3(js: &jetstream::Context, steps: usize) -> Result<f64> {
    let (_, consumer) = work_queue(js, "B3").await?;
    let subject = format!("{SUBJECT}.B3");
    let started = Instant::now();
    for _ in 0..steps {
        publish(js, &subject, 1).await?;
        consume(&consumer, 1).await?;
    }
    Ok(started.elapsed().as_secs_f64() / steps as f64)
}
