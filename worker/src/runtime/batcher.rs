//! The event batcher: one task per worker that sends the events of many attempts as one
//! message (an [`EventBatch`]), so a busy worker stores one event message for a handful of
//! jobs instead of two per job, and the coordinator consumes one.
//!
//! Group commit: a batch goes out at once while fewer than [`EVENT_BATCHES_IN_FLIGHT`] are
//! waiting for JetStream's acknowledgement, so an idle worker's outcome waits for nothing (a
//! chain's step costs what it did with single events); otherwise outcomes gather until an
//! acknowledgement comes back or the batch is full. The decisions are the pure
//! [`flush_now`] and [`batch_len`].
//!
//! Only outcomes whose message is then removed (acked or TERMed) travel here, and only for
//! jobs whose message says `batch_events` (a coordinator that reads batches dispatched
//! them). Starts, and outcomes after which the job comes straight back (a NAK), are stored
//! on the job's own subject: a redelivery reads the job's latest event there
//! ([`super::redelivery`]) to charge the right attempt. An outcome whose batch was not
//! stored is stored on its own by its attempt ([`super::reporter`]); the coordinator
//! ignores an event it already applied. Batches carry no `Nats-Msg-Id`: none is published
//! twice.

use std::collections::VecDeque;

use async_nats::jetstream;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_proto::limits::{EVENT_BATCH_MAX_BYTES, EVENTS_PER_BATCH_MAX};
use sluice_proto::{EventBatch, JobEvent, SCHEMA_VERSION, encode, names};
use tokio::sync::{mpsc, oneshot};

use crate::error::WorkerError;
use crate::limits::EVENT_BATCHES_IN_FLIGHT;

/// Resolves once the event's batch is stored; an error (or a dropped sender) says it was not.
pub(crate) type Stored = oneshot::Receiver<Result<(), String>>;

/// Where attempts hand their outcomes to the batcher task. The queue is unbounded in type
/// only: each attempt has at most one event in it, and a worker holds at most its slots plus
/// its prefetch of attempts.
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

/// An event waiting to be sent.
struct Queued {
    bytes: Vec<u8>,
    stored: oneshot::Sender<Result<(), String>>,
}

impl Batcher {
    /// Starts the batcher task of a worker of `pool`; it ends once the batcher is dropped and
    /// what it holds is sent and acknowledged.
    pub(crate) fn start(js: jetstream::Context, pool: &str, worker: &str) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let sender = Sender { js, subject: names::event_batch_subject(pool, worker), worker: worker.to_owned() };
        tokio::spawn(run(sender, receiver));
        Self { queue }
    }

    /// Queues an outcome: what it returns says when it is stored.
    pub(crate) fn outcome(&self, event: &JobEvent) -> Result<Stored, WorkerError> {
        let bytes = encode(event).map_err(|error| WorkerError::encode("encoding an event", error))?;
        let (stored, receiver) = oneshot::channel();
        // The task ends only once every batcher handle is gone, so this cannot fail while
        // `self` lives; if it did, the dropped sender reads as "not stored".
        let _ = self.queue.send(Queued { bytes, stored });
        Ok(receiver)
    }
}

/// How many outcomes are waiting, and how many bytes they make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Gathered {
    pub(crate) events: usize,
    pub(crate) bytes: usize,
}

/// Whether the gathered outcomes go out now, with `in_flight` batches unacknowledged: while
/// fewer than [`EVENT_BATCHES_IN_FLIGHT`] are, always; otherwise once a batch is full.
pub(crate) fn flush_now(gathered: Gathered, in_flight: usize) -> bool {
    gathered.events > 0
        && (in_flight < EVENT_BATCHES_IN_FLIGHT
            || gathered.events >= EVENTS_PER_BATCH_MAX
            || gathered.bytes >= EVENT_BATCH_MAX_BYTES)
}

/// How many of the waiting events (their sizes, oldest first) the next batch takes: as many
/// as fit [`EVENTS_PER_BATCH_MAX`] and [`EVENT_BATCH_MAX_BYTES`], and at least one (an event
/// bigger than a batch travels alone).
pub(crate) fn batch_len(sizes: impl IntoIterator<Item = usize>) -> usize {
    let mut bytes = 0;
    let mut count = 0;
    for size in sizes.into_iter().take(EVENTS_PER_BATCH_MAX) {
        if count > 0 && bytes + size > EVENT_BATCH_MAX_BYTES {
            break;
        }
        bytes += size;
        count += 1;
    }
    count
}

/// What publishes the batches.
struct Sender {
    js: jetstream::Context,
    subject: String,
    worker: String,
}

/// Batches go out in the order their outcomes came, on the worker's one connection (the one
/// its starts take, so a job's start is stored before its outcome).
async fn run(sender: Sender, mut queue: mpsc::UnboundedReceiver<Queued>) {
    let mut waiting: VecDeque<Queued> = VecDeque::new();
    let mut gathered = Gathered::default();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        while let Ok(item) = queue.try_recv() {
            gather(&mut waiting, &mut gathered, item);
        }
        while flush_now(gathered, in_flight.len()) {
            let count = batch_len(waiting.iter().map(|item| item.bytes.len()));
            let batch: Vec<Queued> = waiting.drain(..count).collect();
            gathered.events -= count;
            gathered.bytes -= batch.iter().map(|item| item.bytes.len()).sum::<usize>();
            if let Some(acknowledged) = sender.send(batch).await {
                in_flight.push(acknowledged);
            }
        }
        if !open && waiting.is_empty() && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            item = queue.recv(), if open => match item {
                Some(item) => gather(&mut waiting, &mut gathered, item),
                None => open = false,
            },
        }
    }
}

fn gather(waiting: &mut VecDeque<Queued>, gathered: &mut Gathered, item: Queued) {
    gathered.events += 1;
    gathered.bytes += item.bytes.len();
    waiting.push_back(item);
}

impl Sender {
    /// Publishes one batch; returns what tells its events' attempts once it is stored.
    /// A batch that cannot be published tells them at once that it was not.
    async fn send(&self, batch: Vec<Queued>) -> Option<impl Future<Output = ()> + use<>> {
        let mut events = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for item in batch {
            events.push(serde_bytes::ByteBuf::from(item.bytes));
            waiters.push(item.stored);
        }
        let fail = |waiters: Vec<oneshot::Sender<Result<(), String>>>, why: String| {
            tracing::warn!(events = waiters.len(), %why, "an event batch was not sent; each event is stored on its own");
            for waiter in waiters {
                let _ = waiter.send(Err(why.clone()));
            }
        };
        let batch = EventBatch { schema_version: SCHEMA_VERSION, worker: self.worker.clone(), events };
        let payload = match encode(&batch) {
            Ok(payload) => payload,
            Err(error) => {
                fail(waiters, error.to_string());
                return None;
            }
        };
        let ack = match self.js.publish(self.subject.clone(), payload.into()).await {
            Ok(ack) => ack,
            Err(error) => {
                fail(waiters, error.to_string());
                return None;
            }
        };
        Some(async move {
            match ack.await {
                Ok(_) => {
                    for waiter in waiters {
                        let _ = waiter.send(Ok(()));
                    }
                }
                Err(error) => fail(waiters, error.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(events: usize, bytes: usize) -> Gathered {
        Gathered { events, bytes }
    }

    #[test]
    fn nothing_waiting_sends_nothing() {
        for in_flight in 0..=EVENT_BATCHES_IN_FLIGHT + 1 {
            assert!(!flush_now(Gathered::default(), in_flight), "{in_flight} in flight");
        }
    }

    #[test]
    fn an_idle_worker_sends_at_once() {
        for in_flight in 0..EVENT_BATCHES_IN_FLIGHT {
            assert!(flush_now(gathered(1, 100), in_flight), "{in_flight} in flight");
        }
    }

    #[test]
    fn outcomes_gather_while_batches_are_in_flight_until_one_is_full() {
        let busy = EVENT_BATCHES_IN_FLIGHT;
        assert!(!flush_now(gathered(1, 100), busy));
        assert!(!flush_now(gathered(EVENTS_PER_BATCH_MAX - 1, 100), busy + 3));
        assert!(flush_now(gathered(EVENTS_PER_BATCH_MAX, 100), busy), "full by count");
        assert!(flush_now(gathered(2, EVENT_BATCH_MAX_BYTES), busy), "full by bytes");
    }

    #[test]
    fn a_batch_takes_what_fits_in_order_and_at_least_one() {
        assert_eq!(batch_len([]), 0);
        assert_eq!(batch_len([10, 20, 30]), 3);
        assert_eq!(batch_len(vec![1; EVENTS_PER_BATCH_MAX + 5]), EVENTS_PER_BATCH_MAX);
        let half = EVENT_BATCH_MAX_BYTES / 2;
        assert_eq!(batch_len([half, half, 1]), 2, "exactly full");
        assert_eq!(batch_len([half, half + 1, 1]), 1, "the second would not fit");
        assert_eq!(batch_len([EVENT_BATCH_MAX_BYTES * 2, 1]), 1, "an oversized event goes alone");
        assert_eq!(batch_len([1, EVENT_BATCH_MAX_BYTES * 2]), 1, "and not with the one before it");
    }
}
