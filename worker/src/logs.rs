//! Ships an attempt's log lines (exec stdout/stderr, Rust `ctx.log`) to `SLUICE_LOGS`, in
//! batches, so they outlive the worker and `sluice logs` can follow them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
#[derive(Clone, Debug, Default)]
pub struct LogSink {
    /// `None`: lines are discarded (jobs called outside a worker).
    attempt: Option<Arc<AttemptLog>>,
}

/// One attempt's log: the shipping task starts with the first line, so an attempt that
/// logs nothing (most short jobs) costs no task and no channel.
#[derive(Debug)]
struct AttemptLog {
    /// What the task needs; taken when it starts.
    start: Mutex<Option<(jetstream::Context, String, LogBatch)>>,
    sender: OnceLock<mpsc::Sender<LogLine>>,
    task: Mutex<Option<JoinHandle<()>>>,
    dropped: Arc<AtomicU64>,
    done: CancellationToken,
}

impl AttemptLog {
    fn sender(&self) -> Option<&mpsc::Sender<LogLine>> {
        if let Some(sender) = self.sender.get() {
            return Some(sender);
        }
        // stdout and stderr may write their first lines at once: one of them starts the task.
        let mut start = lock(&self.start);
        if let Some(sender) = self.sender.get() {
            return Some(sender);
        }
        let (js, subject, batch) = start.take()?;
        let (sender, receiver) = mpsc::channel(BUFFER_LINES);
        let task = tokio::spawn(ship(js, subject, receiver, self.dropped.clone(), self.done.clone(), batch));
        *lock(&self.task) = Some(task);
        Some(self.sender.get_or_init(|| sender))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LogSink {
    /// A sink that discards everything (jobs called outside a worker).
    pub fn discard() -> Self {
        Self::default()
    }

    /// Adds a line without waiting; if the buffer is full the line is dropped and counted.
    pub fn line(&self, stream: LogStream, text: &str) {
        let Some(attempt) = &self.attempt else { return };
        if attempt.sender().is_some_and(|sender| sender.try_send(line(stream, text)).is_err()) {
            attempt.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds a line, waiting for room (exec output: the process waits with it).
    pub async fn line_waiting(&self, stream: LogStream, text: &str) {
        let Some(attempt) = &self.attempt else { return };
        let Some(sender) = attempt.sender() else { return };
        if sender.send(line(stream, text)).await.is_err() {
            attempt.dropped.fetch_add(1, Ordering::Relaxed);
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

/// One attempt's log shipping.
pub struct Shipper {
    attempt: Arc<AttemptLog>,
}

impl Shipper {
    /// Prepares shipping the lines of `job`'s attempt `attempt` (the task starts with the
    /// first line).
    pub fn start(js: jetstream::Context, pool: &str, run_id: RunId, job: String, attempt: u32) -> Self {
        let subject = names::log_subject(pool, &run_id, attempt, &job);
        let batch = LogBatch { schema_version: SCHEMA_VERSION, run_id, job, attempt, lines: Vec::new() };
        Self {
            attempt: Arc::new(AttemptLog {
                start: Mutex::new(Some((js, subject, batch))),
                sender: OnceLock::new(),
                task: Mutex::new(None),
                dropped: Arc::new(AtomicU64::new(0)),
                done: CancellationToken::new(),
            }),
        }
    }

    pub fn sink(&self) -> LogSink {
        LogSink { attempt: Some(self.attempt.clone()) }
    }

    /// Waits (bounded) until every line written so far is stored; later lines are dropped.
    pub async fn finish(self) {
        self.attempt.done.cancel();
        let Some(task) = lock(&self.attempt.task).take() else { return };
        if tokio::time::timeout(FLUSH_WAIT, task).await.is_err() {
            tracing::warn!("log lines of an attempt were not all stored in time");
        }
    }
}

async fn ship(
    js: jetstream::Context,
    subject: String,
    mut receiver: mpsc::Receiver<LogLine>,
    dropped: Arc<AtomicU64>,
    done: CancellationToken,
    mut batch: LogBatch,
) {
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
