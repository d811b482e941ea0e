//! A worker's Prometheus metrics (`sluice_worker_…`), by pool: attempts run here by
//! outcome, how long they took, and the slots busy and free (read from the slot semaphore at
//! each scrape, so never stale). Several workers may share one [`Metrics`] (`sluice dev`
//! runs one per pool in a process): each registers its slots with [`Metrics::track_slots`].

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sluice_proto::trace::SpanSink;
use tokio::sync::Semaphore;

/// Upper bounds of the attempt duration histogram, in seconds: a millisecond to a day.
pub const ATTEMPT_DURATION_BUCKETS_S: [f64; 16] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 86_400.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabels {
    pub pool: String,
    pub outcome: &'static str,
}

/// Every sample name the worker's metrics expose in Prometheus text (what queries name; the
/// test below holds it to what is registered).
pub const SERIES: [&str; 6] = [
    "sluice_worker_attempts_total",
    "sluice_worker_attempt_duration_seconds_bucket",
    "sluice_worker_attempt_duration_seconds_sum",
    "sluice_worker_attempt_duration_seconds_count",
    "sluice_worker_slots",
    "sluice_worker_slots_busy",
];

/// Every metric of the workers of a process. Cheap to clone; unregistered by default.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
    /// Where attempt spans go (none: no spans).
    spans: Option<Arc<dyn SpanSink>>,
}

#[derive(Debug)]
struct Inner {
    attempts: Family<PoolOutcomeLabels, Counter>,
    attempt_duration: Family<PoolLabels, Histogram, fn() -> Histogram>,
    slots: Arc<Slots>,
}

fn attempt_duration_histogram() -> Histogram {
    Histogram::new(ATTEMPT_DURATION_BUCKETS_S)
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                attempts: Family::default(),
                attempt_duration: Family::new_with_constructor(attempt_duration_histogram),
                slots: Arc::new(Slots::default()),
            }),
            spans: None,
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry` under their `sluice_worker_` names.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let m = &metrics.inner;
        registry.register(
            "sluice_worker_attempts",
            "Attempts this process's workers ran to an end, by pool and outcome: succeeded, retrying, failed, handed_back (shutdown), stopped (run cancelled)",
            m.attempts.clone(),
        );
        registry.register_with_unit(
            "sluice_worker_attempt_duration",
            "Time an attempt's work took, from its start to its outcome, by pool",
            Unit::Seconds,
            m.attempt_duration.clone(),
        );
        registry.register_collector(Box::new(m.slots.clone()));
        metrics
    }

    /// The same metrics, also emitting each attempt's span to `sink` when it ends.
    pub fn with_spans(self, sink: Arc<dyn SpanSink>) -> Self {
        Self { spans: Some(sink), ..self }
    }

    /// Where attempt spans go, if anywhere.
    pub fn spans(&self) -> Option<&Arc<dyn SpanSink>> {
        self.spans.as_ref()
    }

    /// An attempt of a `pool` job ended with `outcome` after `took`.
    pub fn attempt_ended(&self, pool: &str, outcome: &'static str, took: Duration) {
        let m = &self.inner;
        m.attempts.get_or_create(&PoolOutcomeLabels { pool: pool.to_owned(), outcome }).inc();
        m.attempt_duration.get_or_create(&PoolLabels { pool: pool.to_owned() }).observe(took.as_secs_f64());
    }

    /// Reports a worker's slots (`total` of them) while `slots` lives.
    pub fn track_slots(&self, pool: &str, slots: &Arc<Semaphore>, total: usize) {
        let mut tracked = self.inner.slots.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        tracked.retain(|slot| slot.slots.strong_count() > 0);
        tracked.push(Tracked { pool: pool.to_owned(), slots: Arc::downgrade(slots), total });
    }
}

/// The slots of the workers of a process, read at each scrape.
#[derive(Debug, Default)]
struct Slots {
    tracked: Mutex<Vec<Tracked>>,
}

#[derive(Debug)]
struct Tracked {
    pool: String,
    slots: Weak<Semaphore>,
    total: usize,
}

/// Busy and total slots per pool, of the workers still running.
fn slot_counts(tracked: &[Tracked]) -> std::collections::BTreeMap<&str, (usize, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for slot in tracked {
        let Some(slots) = slot.slots.upgrade() else { continue };
        let (busy, total) = counts.entry(slot.pool.as_str()).or_insert((0, 0));
        *busy += slot.total.saturating_sub(slots.available_permits());
        *total += slot.total;
    }
    counts
}

fn gauge(count: usize) -> ConstGauge {
    ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
}

/// Picks one count of a pool's (busy, total) slots.
type SlotCount = fn(&(usize, usize)) -> usize;

impl Collector for Slots {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tracked = self.tracked.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = slot_counts(&tracked);
        let families: [(&str, &str, SlotCount); 2] = [
            ("sluice_worker_slots", "Jobs this process's workers may run at once, by pool", |(_, total)| *total),
            ("sluice_worker_slots_busy", "Slots running a job's work now, by pool", |(busy, _)| *busy),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool, count) in &counts {
                gauge(value(count)).encode(family.encode_family(&PoolLabels { pool: (*pool).to_owned() })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_summed_per_pool_and_a_stopped_worker_drops_out() {
        let (a, b, c) = (Arc::new(Semaphore::new(4)), Arc::new(Semaphore::new(2)), Arc::new(Semaphore::new(8)));
        let _taken = (a.clone().try_acquire_many_owned(3).unwrap(), b.clone().try_acquire_owned().unwrap());
        let metrics = Metrics::default();
        metrics.track_slots("default", &a, 4);
        metrics.track_slots("default", &b, 2);
        metrics.track_slots("gpu", &c, 8);
        {
            let tracked = metrics.inner.slots.tracked.lock().unwrap();
            let counts = slot_counts(&tracked);
            assert_eq!(counts.get("default"), Some(&(4, 6)));
            assert_eq!(counts.get("gpu"), Some(&(0, 8)));
        }
        drop(c);
        let tracked = metrics.inner.slots.tracked.lock().unwrap();
        assert_eq!(slot_counts(&tracked).get("gpu"), None);
    }

    #[test]
    fn the_text_has_every_worker_family_with_its_pool() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let slots = Arc::new(Semaphore::new(3));
        metrics.track_slots("etl", &slots, 3);
        metrics.attempt_ended("etl", "succeeded", Duration::from_millis(20));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "sluice_worker_attempts_total{pool=\"etl\",outcome=\"succeeded\"} 1",
            "sluice_worker_attempt_duration_seconds_count{pool=\"etl\"} 1",
            "sluice_worker_slots{pool=\"etl\"} 3",
            "sluice_worker_slots_busy{pool=\"etl\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        let exposed: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        assert_eq!(exposed, SERIES.into_iter().collect(), "SERIES lists exactly what is exposed");
    }
}
