//! One attempt's log lines a page at a time (the API's `…/logs`, the job page): the newest
//! page, the page before a point, what came after one, and a follow. Nobody holds a whole
//! log: a page reads at most [`LOG_PAGE_BATCHES_MAX`] batches, and a tail finds where its
//! page starts by bisecting the stream's sequence numbers with the server's own counts.

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull::OrderedConfig},
};
use futures::{Stream, StreamExt};
use sluice_proto::{LogBatch, RunId, decode, names};

use crate::error::{ClientError, NatsContext};

/// Batches one page reads at most (a batch is at most 500 lines and 128 KiB: a page at most
/// 8 MiB, most far less).
pub const LOG_PAGE_BATCHES_MAX: u64 = 64;
/// Lines a tail page shows at least, when the log has them (whole batches: at most 499 more).
pub const LOG_PAGE_LINES: usize = 500;

/// Batches of one attempt's log, oldest first, each with its stream sequence.
#[derive(Clone, Debug, Default)]
pub struct LogPage {
    pub batches: Vec<(u64, LogBatch)>,
    /// Where the page before this one ends (pass it as `before`); `None`: this page starts
    /// the log.
    pub earlier: Option<u64>,
    /// The sequence to follow from (pass it as `after`): the page's last batch, or where the
    /// read ended when it found none.
    pub last: u64,
    /// Whether more batches than the page read were already stored after it.
    pub more: bool,
}

impl LogPage {
    /// Lines in the page.
    pub fn lines(&self) -> usize {
        self.batches.iter().map(|(_, batch)| batch.lines.len()).sum()
    }
}

/// One attempt's log in stream `SLUICE_LOGS`.
pub struct AttemptLog {
    stream: Option<jetstream::stream::Stream>,
    filter: String,
    what: String,
}

impl AttemptLog {
    /// The log of attempt `attempt` of job `job` (its own lines, not its children's).
    pub async fn open(js: &jetstream::Context, run: &RunId, job: &str, attempt: u32) -> Result<Self, ClientError> {
        // No logs stream: nothing was ever logged on this server.
        let stream = js.get_stream(names::LOGS_STREAM).await.ok();
        Ok(Self {
            stream,
            filter: names::attempt_logs_filter(run, attempt, job),
            what: format!("reading the log of {job} attempt {attempt} of run {run}"),
        })
    }

    /// The page that ends just before sequence `before` (`None`: the newest page).
    pub async fn before(&self, before: Option<u64>) -> Result<LogPage, ClientError> {
        let Some(stream) = &self.stream else { return Ok(LogPage::default()) };
        let info = stream.get_info().await.context(self.what.clone())?;
        let stored_end = info.state.last_sequence + 1;
        let end = before.unwrap_or(stored_end).min(stored_end);
        let first = info.state.first_sequence.max(1);
        // One consumer from the start counts the attempt's batches, and a log of a page or
        // less (most) is read through it: every consumer costs the server one of a stream's
        // (bounded) consumers until it expires.
        let mut from_first = self.one_shot(stream, first).await?;
        let all = from_first.info().await.context(self.what.clone())?.num_pending;
        let after_end = if end >= stored_end { 0 } else { self.count_from(end).await? };
        let total = all.saturating_sub(after_end);
        if total == 0 || end <= first {
            return Ok(LogPage { last: end.saturating_sub(1), ..LogPage::default() });
        }
        let want = total.min(LOG_PAGE_BATCHES_MAX);
        let mut batches = if total <= LOG_PAGE_BATCHES_MAX {
            self.read_through(from_first, want).await?
        } else {
            let mut search = Bisect::new(first, end);
            while let Some(probe) = search.probe() {
                let count = self.count_from(probe).await?.saturating_sub(after_end);
                search.feed(probe, count >= want);
            }
            let start = self.one_shot(stream, search.found()).await?;
            self.read_through(start, want).await?
        };
        // Retention may have removed batches since the counts: never show what came later.
        batches.retain(|(seq, _)| *seq < end);
        let kept = keep_tail(&batches, LOG_PAGE_LINES);
        batches.drain(..batches.len() - kept);
        let earlier = ((kept as u64) < total).then(|| batches.first().map(|(seq, _)| *seq)).flatten();
        let last = batches.last().map(|(seq, _)| *seq).unwrap_or(end - 1);
        Ok(LogPage { batches, earlier, last, more: after_end > 0 })
    }

    /// The batches stored after sequence `after`, at most [`LOG_PAGE_BATCHES_MAX`].
    pub async fn after(&self, after: u64) -> Result<LogPage, ClientError> {
        if self.stream.is_none() {
            return Ok(LogPage { last: after, ..LogPage::default() });
        }
        let Some(stream) = &self.stream else { return Ok(LogPage { last: after, ..LogPage::default() }) };
        let mut consumer = self.one_shot(stream, after + 1).await?;
        let pending = consumer.info().await.context(self.what.clone())?.num_pending;
        let batches = self.read_through(consumer, pending.min(LOG_PAGE_BATCHES_MAX)).await?;
        let last = batches.last().map(|(seq, _)| *seq).unwrap_or(after);
        Ok(LogPage { batches, earlier: None, last, more: pending > LOG_PAGE_BATCHES_MAX })
    }

    /// Every batch stored after `after`, and each one stored later, as it comes.
    pub async fn follow(
        &self,
        after: u64,
    ) -> Result<impl Stream<Item = Result<(u64, LogBatch), ClientError>> + Send + Unpin + use<>, ClientError> {
        let Some(stream) = &self.stream else {
            return Ok(futures::stream::empty().left_stream());
        };
        let what = self.what.clone();
        let messages = self.consumer(stream, after + 1).await?.messages().await.context(what.clone())?;
        Ok(messages
            .filter_map(move |message| {
                futures::future::ready(match message.context(what.clone()) {
                    Ok(message) => decoded(&message).map(Ok),
                    Err(error) => Some(Err(error)),
                })
            })
            .right_stream())
    }

    /// How many batches of this attempt are stored after sequence `seq`.
    pub async fn stored_after(&self, seq: u64) -> Result<u64, ClientError> {
        self.count_from(seq + 1).await
    }

    /// How many batches of this attempt the stream holds from sequence `seq` on (the
    /// server counts them for a consumer starting there).
    async fn count_from(&self, seq: u64) -> Result<u64, ClientError> {
        let Some(stream) = &self.stream else { return Ok(0) };
        let mut consumer = self.one_shot(stream, seq).await?;
        Ok(consumer.info().await.context(self.what.clone())?.num_pending)
    }

    /// An ordered consumer of this attempt's batches from sequence `seq` (a follow: it
    /// recovers from a lost message by itself).
    async fn consumer(
        &self,
        stream: &jetstream::stream::Stream,
        seq: u64,
    ) -> Result<jetstream::consumer::Consumer<OrderedConfig>, ClientError> {
        stream
            .create_consumer(OrderedConfig {
                filter_subject: self.filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) },
                ..Default::default()
            })
            .await
            .context(self.what.clone())
    }

    /// A consumer for one count or one page from sequence `seq`.
    async fn one_shot(
        &self,
        stream: &jetstream::stream::Stream,
        seq: u64,
    ) -> Result<jetstream::consumer::PullConsumer, ClientError> {
        let policy = DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) };
        crate::stores::one_shot_consumer(stream, vec![self.filter.clone()], policy).await.context(self.what.clone())
    }

    /// The first `count` batches `consumer` delivers.
    async fn read_through(
        &self,
        consumer: jetstream::consumer::PullConsumer,
        count: u64,
    ) -> Result<Vec<(u64, LogBatch)>, ClientError> {
        let mut batches = Vec::new();
        if count == 0 {
            return Ok(batches);
        }
        let mut messages = consumer.messages().await.context(self.what.clone())?;
        let mut seen = 0;
        while seen < count {
            let next = tokio::time::timeout(crate::stores::READ_STALL, messages.next())
                .await
                .map_err(|_| ClientError::Stalled(self.what.clone()))?;
            let Some(message) = next else { break };
            let message = message.context(self.what.clone())?;
            seen += 1;
            if let Some(batch) = decoded(&message) {
                batches.push(batch);
            }
        }
        Ok(batches)
    }
}

fn decoded(message: &jetstream::Message) -> Option<(u64, LogBatch)> {
    let seq = message.info().ok()?.stream_sequence;
    match decode::<LogBatch>(&message.payload) {
        Ok(batch) => Some((seq, batch)),
        Err(error) => {
            tracing::warn!(%error, seq, "log lines that cannot be read are skipped");
            None
        }
    }
}

/// How many batches, from the newest back, a tail page keeps: the fewest whole batches
/// holding `lines` lines (all of them when they hold fewer).
fn keep_tail(batches: &[(u64, LogBatch)], lines: usize) -> usize {
    let mut held = 0;
    for (kept, (_, batch)) in batches.iter().rev().enumerate() {
        held += batch.lines.len();
        if held >= lines {
            return kept + 1;
        }
    }
    batches.len()
}

/// The largest sequence in `[lo, hi)` for which a monotone test (true at `lo`, false at
/// `hi`, never true again once false) holds: a tail page's first batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bisect {
    lo: u64,
    hi: u64,
}

impl Bisect {
    fn new(lo: u64, hi: u64) -> Self {
        Self { lo, hi }
    }

    /// The next sequence to test, or `None` once found.
    fn probe(&self) -> Option<u64> {
        (self.hi - self.lo > 1).then(|| self.lo + (self.hi - self.lo) / 2)
    }

    fn feed(&mut self, probe: u64, holds: bool) {
        if holds {
            self.lo = probe;
        } else {
            self.hi = probe;
        }
    }

    fn found(&self) -> u64 {
        self.lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use sluice_proto::{LogLine, LogStream, SCHEMA_VERSION};

    /// The tail's first batch, found the way `before` finds it, against a stream whose
    /// attempt's batches sit at `ours` among other messages.
    fn start_of_tail(ours: &[u64], first: u64, end: u64, want: u64) -> (u64, usize) {
        let count_from = |seq: u64| ours.iter().filter(|&&s| s >= seq && s < end).count() as u64;
        let mut search = Bisect::new(first, end);
        let mut probes = 0;
        while let Some(probe) = search.probe() {
            probes += 1;
            search.feed(probe, count_from(probe) >= want);
        }
        (search.found(), probes)
    }

    #[test]
    fn the_tail_starts_at_the_batch_that_leaves_exactly_the_page_after_it() {
        // Batches of this attempt at 3, 10, 11, 40, 41, 42, 99 among 100 messages.
        let ours = [3, 10, 11, 40, 41, 42, 99];
        assert_eq!(start_of_tail(&ours, 1, 101, 3).0, 41);
        assert_eq!(start_of_tail(&ours, 1, 101, 7).0, 3);
        assert_eq!(start_of_tail(&ours, 1, 101, 1).0, 99);
        // Before 41: the two before it are 11 and 40.
        assert_eq!(start_of_tail(&ours, 1, 41, 2).0, 11);
        // The stream's first message is the attempt's first batch.
        assert_eq!(start_of_tail(&[5, 6], 5, 7, 2).0, 5);
    }

    #[test]
    fn a_tail_of_a_long_stream_takes_a_logarithmic_number_of_counts() {
        let ours: Vec<u64> = (1..=1_000_000).step_by(7).collect();
        let (start, probes) = start_of_tail(&ours, 1, 1_000_001, 64);
        assert_eq!(start, ours[ours.len() - 64]);
        assert!(probes <= 20, "{probes} counts");
    }

    fn batch(lines: usize) -> LogBatch {
        let line = LogLine { at: Utc::now(), stream: LogStream::Stdout, text: "x".into() };
        LogBatch {
            schema_version: SCHEMA_VERSION,
            run_id: RunId::new(),
            job: "a".into(),
            attempt: 1,
            lines: vec![line; lines],
        }
    }

    #[test]
    fn a_tail_keeps_the_fewest_whole_batches_that_hold_a_page() {
        let batches: Vec<(u64, LogBatch)> =
            [300, 200, 100, 450].iter().enumerate().map(|(i, n)| (i as u64, batch(*n))).collect();
        assert_eq!(keep_tail(&batches, 500), 2, "450 + 100");
        assert_eq!(keep_tail(&batches, 450), 1);
        assert_eq!(keep_tail(&batches, 10_000), 4, "all when they hold fewer");
        assert_eq!(keep_tail(&[], 500), 0);
    }
}
