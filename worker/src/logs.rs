//! Ships an attempt's log lines (exec stdout/stderr, Rust `ctx.log`) to `SLUICE_LOGS`, in
//! batches, so they outlive the worker and `sluice logs` can follow them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use sluice_proto::limits::LOG_LINE_MAX_BYTES;
use sluice_proto::{LogBatch, LogLine, LogStream, RunId, SCHEMA_VERSION, encode, names};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Lines buffered between a job and its shipper; a full buffer slows exec output down
/// (and drops Rust `ctx.log` lines, counted), so memory stays bounded.
const BUFFER_LINES: usize = 4096;
/// Most lines in one batch.
const BATCH_LINES: usize = 500;
/// Largest batch, in bytes of text.
const BATCH_BYTES: usize = 128 * 1024;
/// How long a line may wait for others before its batch goes out.
const BATCH_LINGER: Duration = Duration::from_millis(100);
/// How long the end of an attempt waits for its last lines to be stored.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Where a job writes log lines. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LogSink {
    sender: Option<mpsc::Sender<LogLine>>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink that discards everything (jobs called outside a worker).
    pub fn discard() -> Self {
        Self { sender: None, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Adds a line without waiting; if the buffer is full the line is dropped and counted.
    pub fn line(&self, stream: LogStream, text: &str) {
        if let Some(sender) = &self.sender
            && sender.try_send(line(stream, text)).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a line, waiting for room (exec output: the process waits with it).
    pub async fn line_waiting(&self, stream: LogStream, text: &str) {
        if let Some(sender) = &self.sender
            && sender.send(line(stream, text)).await.is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn line(stream: LogStream, text: &str) -> LogLine {
    let mut end = text.len().min(LOG_LINE_MAX_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    LogLine { at: Utc::now(), stream, text: text[..end].to_owned() }
}

/// The task that publishes one attempt's lines.
pub struct Shipper {
    sink: LogSink,
    done: CancellationToken,
    task: JoinHandle<()>,
}

impl Shipper {
    /// Starts shipping the lines of `job`'s attempt `attempt`.
    pub fn start(js: jetstream::Context, run_id: RunId, job: String, attempt: u32) -> Self {
        let (sender, receiver) = mpsc::channel(BUFFER_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let sink = LogSink { sender: Some(sender), dropped: dropped.clone() };
        let done = CancellationToken::new();
        let batch = LogBatch { schema_version: SCHEMA_VERSION, run_id, job, attempt, lines: Vec::new() };
        let task = tokio::spawn(ship(js, receiver, dropped, done.clone(), batch));
        Self { sink, done, task }
    }

    pub fn sink(&self) -> LogSink {
        self.sink.clone()
    }

    /// Waits (bounded) until every line written so far is stored; later lines are dropped.
    pub async fn finish(self) {
        self.done.cancel();
        if tokio::time::timeout(FLUSH_WAIT, self.task).await.is_err() {
            tracing::warn!("log lines of an attempt were not all stored in time");
        }
    }
}

async fn ship(
    js: jetstream::Context,
    mut receiver: mpsc::Receiver<LogLine>,
    dropped: Arc<AtomicU64>,
    done: CancellationToken,
    mut batch: LogBatch,
) {
    let subject = names::log_subject(&batch.run_id, &batch.job);
    let mut reported_drops = 0;
    // Once the attempt is over, only what is already buffered goes out.
    let mut finishing = false;
    loop {
        let first = if finishing {
            receiver.try_recv().ok()
        } else {
            tokio::select! {
                biased;
                line = receiver.recv() => line,
                _ = done.cancelled() => {
                    finishing = true;
                    receiver.try_recv().ok()
                }
            }
        };
        let Some(first) = first else { break };
        let mut bytes = first.text.len();
        batch.lines.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_LINGER;
        while batch.lines.len() < BATCH_LINES && bytes < BATCH_BYTES {
            let next = if finishing {
                receiver.try_recv().ok()
            } else {
                tokio::select! {
                    biased;
                    line = tokio::time::timeout_at(deadline, receiver.recv()) => line.ok().flatten(),
                    _ = done.cancelled() => {
                        finishing = true;
                        continue;
                    }
                }
            };
            let Some(line) = next else { break };
            bytes += line.text.len();
            batch.lines.push(line);
        }
        let drops = dropped.load(Ordering::Relaxed);
        if drops > reported_drops {
            let text = format!(
                "sluice: {} log lines dropped (the job logged faster than they could be stored)",
                drops - reported_drops
            );
            batch.lines.push(line(LogStream::Log, &text));
            reported_drops = drops;
        }
        publish(&js, &subject, &batch).await;
        batch.lines.clear();
    }
}

async fn publish(js: &jetstream::Context, subject: &str, batch: &LogBatch) {
    let payload = match encode(batch) {
        Ok(payload) => payload,
        Err(error) => return tracing::warn!(%error, "log batch not encoded"),
    };
    let stored = async { js.publish(subject.to_owned(), payload.into()).await?.await.map_err(async_nats::Error::from) };
    if let Err(error) = stored.await {
        tracing::warn!(%error, lines = batch.lines.len(), "log lines not stored");
    }
}
