//! The coordinator's Prometheus metrics (`sluice_…`), counted by the shell from what the
//! engine noted ([`Observed`]) and from what the outbox carried out; and, given a
//! [`SpanSink`], the spans of runs and jobs as they end ([`crate::spans`]).
//!
//! Labels are bounded: a pool (declared by an operator), a state or an outcome, never a
//! run id, a job path or a date. Pool gauges (lag, ack pending) are set by the leading
//! coordinator only and cleared when it steps down, so sums over coordinators do not count
//! a pool twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use sluice_proto::RunId;
use sluice_proto::trace::SpanSink;

use crate::engine::{Effect, Input, NotApplied, Observed, Run};
use crate::spans;

/// Upper bounds of the run duration histogram, in seconds: a second to a day.
pub const RUN_DURATION_BUCKETS_S: [f64; 12] =
    [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 86_400.0];
/// Upper bounds of the dispatch latency histogram (a job queued → its attempt started), in
/// seconds: a millisecond to five minutes.
pub const DISPATCH_LATENCY_BUCKETS_S: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
/// Upper bounds of the engine apply time histogram, in seconds: a microsecond to a second.
pub const APPLY_BUCKETS_S: [f64; 13] = [1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 1.0];
/// Upper bounds of the KV write histogram (a pipelined batch of record writes, published
/// → last acknowledgement), in seconds.
pub const KV_WRITE_BUCKETS_S: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolStateLabels {
    pub pool: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcomeLabels {
    pub pool: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventResultLabels {
    pub event: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of a coordinator. Cheap to clone (the handles are shared); one that was
/// never registered counts for nobody, which is what tests and `Settings::default` get.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
    spans: Option<Arc<Spans>>,
}

/// Where run and job spans go, and how many children of a parent get their own.
#[derive(Debug)]
struct Spans {
    sink: Arc<dyn SpanSink>,
    child_spans_max: usize,
    /// Per (run, parent): children with spans so far, and the rest's final states.
    children: Mutex<HashMap<(RunId, String), Tally>>,
}

#[derive(Debug, Default)]
struct Tally {
    with_spans: usize,
    rest: BTreeMap<&'static str, u32>,
}

#[derive(Debug)]
struct Inner {
    jobs_finished: Family<PoolStateLabels, Counter>,
    attempts: Family<PoolOutcomeLabels, Counter>,
    redeliveries: Family<PoolLabels, Counter>,
    dead_letters: Family<PoolLabels, Counter>,
    runs_started: Counter,
    runs_finished: Family<StateLabels, Counter>,
    runs_active: Gauge,
    run_duration: Histograms<StateLabels>,
    dispatch_latency: Histograms<PoolLabels>,
    queue_lag: Family<PoolLabels, Gauge>,
    ack_pending: Family<PoolLabels, Gauge>,
    engine_apply: Histogram,
    kv_write: Histogram,
    leader: Gauge,
    terms: Counter,
    notification_attempts: Family<EventResultLabels, Counter>,
}

fn run_duration_histogram() -> Histogram {
    Histogram::new(RUN_DURATION_BUCKETS_S)
}

fn dispatch_latency_histogram() -> Histogram {
    Histogram::new(DISPATCH_LATENCY_BUCKETS_S)
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs_finished: Family::default(),
                attempts: Family::default(),
                redeliveries: Family::default(),
                dead_letters: Family::default(),
                runs_started: Counter::default(),
                runs_finished: Family::default(),
                runs_active: Gauge::default(),
                run_duration: Family::new_with_constructor(run_duration_histogram),
                dispatch_latency: Family::new_with_constructor(dispatch_latency_histogram),
                queue_lag: Family::default(),
                ack_pending: Family::default(),
                engine_apply: Histogram::new(APPLY_BUCKETS_S),
                kv_write: Histogram::new(KV_WRITE_BUCKETS_S),
                leader: Gauge::default(),
                terms: Counter::default(),
                notification_attempts: Family::default(),
            }),
            spans: None,
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry` under their `sluice_` names.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let m = &metrics.inner;
        let r = registry;
        r.register(
            "sluice_jobs_finished",
            "Jobs that reached a final state (completed, failed, cancelled, skipped), by pool",
            m.jobs_finished.clone(),
        );
        r.register(
            "sluice_job_attempts",
            "Attempts that ended, by pool and outcome: succeeded, retrying (failed, another follows) or failed (none follows)",
            m.attempts.clone(),
        );
        r.register(
            "sluice_job_redeliveries",
            "Attempts JetStream delivered again to another worker (the first worker stopped answering)",
            m.redeliveries.clone(),
        );
        r.register("sluice_dead_letters", "Jobs kept in the dead-letter stream, by pool", m.dead_letters.clone());
        r.register("sluice_runs_started", "Runs started by this coordinator", m.runs_started.clone());
        r.register("sluice_runs_finished", "Runs that ended, by final state", m.runs_finished.clone());
        r.register(
            "sluice_runs_active",
            "Runs this coordinator is advancing (0 when it does not lead)",
            m.runs_active.clone(),
        );
        r.register_with_unit(
            "sluice_run_duration",
            "Time from a run's creation to its end, by final state",
            Unit::Seconds,
            m.run_duration.clone(),
        );
        r.register_with_unit(
            "sluice_dispatch_latency",
            "Time from a job being queued (what it needs finished) to its attempt starting on a worker, by pool",
            Unit::Seconds,
            m.dispatch_latency.clone(),
        );
        r.register(
            "sluice_pool_queue_lag",
            "Job messages of a pool no worker has taken yet (leading coordinator only)",
            m.queue_lag.clone(),
        );
        r.register(
            "sluice_pool_ack_pending",
            "Job messages of a pool taken by workers and not yet settled (leading coordinator only)",
            m.ack_pending.clone(),
        );
        r.register_with_unit(
            "sluice_engine_apply",
            "Time the engine took to apply one input",
            Unit::Seconds,
            m.engine_apply.clone(),
        );
        r.register_with_unit(
            "sluice_kv_write",
            "Time from publishing a pipelined batch of record writes to its last acknowledgement",
            Unit::Seconds,
            m.kv_write.clone(),
        );
        r.register("sluice_coordinator_leader", "1 while this coordinator leads, else 0", m.leader.clone());
        r.register("sluice_coordinator_terms", "Terms this coordinator began leading", m.terms.clone());
        r.register(
            "sluice_notification_attempts",
            "POSTs of notices to their targets, by event and result: delivered, retrying (another follows) or failed (none follows)",
            m.notification_attempts.clone(),
        );
        metrics
    }

    /// Applies `input` to `run`, timing it, and counts what the run noted.
    pub fn apply(&self, run: &mut Run, input: Input, now: DateTime<Utc>) -> Result<Vec<Effect>, NotApplied> {
        let began = Instant::now();
        let applied = run.apply(input, now);
        self.applied_in(began.elapsed());
        self.take_from(run);
        applied
    }

    /// The same metrics, also emitting run and job spans to `sink`, with spans of their own
    /// for the first `child_spans_max` children of each parent to end.
    pub fn with_spans(self, sink: Arc<dyn SpanSink>, child_spans_max: usize) -> Self {
        let spans = Spans { sink, child_spans_max, children: Mutex::new(HashMap::new()) };
        Self { spans: Some(Arc::new(spans)), ..self }
    }

    /// Counts what `run` noted since the last call and empties its notes.
    pub fn take_from(&self, run: &mut Run) {
        for observed in run.take_observed() {
            if let Some(spans) = &self.spans {
                spans.emit(run, &observed);
            }
            self.count(run, observed);
        }
    }

    fn count(&self, run: &Run, observed: Observed) {
        let m = &self.inner;
        match observed {
            Observed::JobFinished { path, state } => {
                let labels = PoolStateLabels { pool: run.pool_of(&path), state: state.as_str() };
                m.jobs_finished.get_or_create(&labels).inc();
            }
            Observed::AttemptEnded { path, outcome } => {
                let labels = PoolOutcomeLabels { pool: run.pool_of(&path), outcome: outcome.as_str() };
                m.attempts.get_or_create(&labels).inc();
            }
            Observed::Redelivered { path } => {
                m.redeliveries.get_or_create(&PoolLabels { pool: run.pool_of(&path) }).inc();
            }
            Observed::Started { path, waited } => {
                let labels = PoolLabels { pool: run.pool_of(&path) };
                m.dispatch_latency.get_or_create(&labels).observe(waited.as_secs_f64());
            }
            Observed::RunFinished { state, took } => {
                let labels = StateLabels { state: state.as_str() };
                m.runs_finished.get_or_create(&labels).inc();
                m.run_duration.get_or_create(&labels).observe(took.as_secs_f64());
            }
        }
    }

    pub fn run_started(&self) {
        self.inner.runs_started.inc();
    }

    pub fn set_runs_active(&self, count: usize) {
        self.inner.runs_active.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn dead_lettered(&self, pool: &str) {
        self.inner.dead_letters.get_or_create(&PoolLabels { pool: pool.to_owned() }).inc();
    }

    pub fn applied_in(&self, took: Duration) {
        self.inner.engine_apply.observe(took.as_secs_f64());
    }

    pub fn written_in(&self, took: Duration) {
        self.inner.kv_write.observe(took.as_secs_f64());
    }

    /// A notice's POST ended; `next` says what follows it.
    pub fn notification_attempt(&self, event: &'static str, next: crate::notify::Next) {
        let result = match next {
            crate::notify::Next::Delivered => "delivered",
            crate::notify::Next::Retry(_) => "retrying",
            crate::notify::Next::GiveUp => "failed",
        };
        self.inner.notification_attempts.get_or_create(&EventResultLabels { event, result }).inc();
    }

    /// A term begins (`true`) or ends.
    pub fn leading(&self, leads: bool) {
        self.inner.leader.set(i64::from(leads));
        if leads {
            self.inner.terms.inc();
        } else {
            // Another coordinator reports the pools now.
            self.inner.queue_lag.clear();
            self.inner.ack_pending.clear();
            self.inner.runs_active.set(0);
        }
    }

    /// What a pool's consumer said last: messages waiting and messages taken but unsettled.
    pub fn pool_queue(&self, pool: &str, lag: u64, ack_pending: u64) {
        let labels = PoolLabels { pool: pool.to_owned() };
        self.inner.queue_lag.get_or_create(&labels).set(i64::try_from(lag).unwrap_or(i64::MAX));
        self.inner.ack_pending.get_or_create(&labels).set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
    }

    /// A pool no longer declared: its gauges go.
    pub fn forget_pool(&self, pool: &str) {
        let labels = PoolLabels { pool: pool.to_owned() };
        self.inner.queue_lag.remove(&labels);
        self.inner.ack_pending.remove(&labels);
    }
}

impl Spans {
    fn emit(&self, run: &Run, observed: &Observed) {
        match observed {
            Observed::JobFinished { path, state } => {
                let key = |parent: &str| (run.id(), parent.to_owned());
                let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(parent) = sluice_proto::spawn::parent_of(path) {
                    let tally = children.entry(key(parent)).or_default();
                    if tally.with_spans >= self.child_spans_max {
                        *tally.rest.entry(state.as_str()).or_default() += 1;
                        return;
                    }
                    tally.with_spans += 1;
                }
                // A parent that ends has no more children to count.
                let summary = children.remove(&key(path)).filter(|tally| !tally.rest.is_empty());
                drop(children);
                if let Some(span) = spans::job_span(run, path) {
                    self.sink.emit(span);
                }
                if let Some(span) = summary.and_then(|tally| spans::children_summary(run, path, &tally.rest)) {
                    self.sink.emit(span);
                }
            }
            Observed::RunFinished { .. } => {
                let id = run.id();
                self.children.lock().unwrap_or_else(PoisonError::into_inner).retain(|(run_id, _), _| *run_id != id);
                if let Some(span) = spans::run_span(run.record()) {
                    self.sink.emit(span);
                }
            }
            _ => {}
        }
    }
}

/// The kind of a metric family, for the sample names it exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every family [`Metrics::register`] registers (the test below holds them to the same).
pub const FAMILIES: [(&str, Kind); 16] = [
    ("sluice_jobs_finished", Kind::Counter),
    ("sluice_job_attempts", Kind::Counter),
    ("sluice_job_redeliveries", Kind::Counter),
    ("sluice_dead_letters", Kind::Counter),
    ("sluice_runs_started", Kind::Counter),
    ("sluice_runs_finished", Kind::Counter),
    ("sluice_runs_active", Kind::Gauge),
    ("sluice_run_duration_seconds", Kind::Histogram),
    ("sluice_dispatch_latency_seconds", Kind::Histogram),
    ("sluice_pool_queue_lag", Kind::Gauge),
    ("sluice_pool_ack_pending", Kind::Gauge),
    ("sluice_engine_apply_seconds", Kind::Histogram),
    ("sluice_kv_write_seconds", Kind::Histogram),
    ("sluice_coordinator_leader", Kind::Gauge),
    ("sluice_coordinator_terms", Kind::Counter),
    ("sluice_notification_attempts", Kind::Counter),
];

/// The sample names a family of `kind` exposes in Prometheus text (what queries name).
pub fn series_of(name: &str, kind: Kind) -> Vec<String> {
    match kind {
        Kind::Counter => vec![format!("{name}_total")],
        Kind::Gauge => vec![name.to_owned()],
        Kind::Histogram => ["_bucket", "_sum", "_count"].iter().map(|suffix| format!("{name}{suffix}")).collect(),
    }
}

/// Every sample name of a coordinator's metrics.
pub fn series() -> Vec<String> {
    FAMILIES.iter().flat_map(|(name, kind)| series_of(name, *kind)).collect()
}

/// How often the leader reads each pool's consumer for [`Metrics::pool_queue`]: scrapes
/// between two reads see the cached values.
pub const POOL_QUEUE_REFRESH: Duration = Duration::from_secs(5);

/// Keeps the pool gauges fresh while this coordinator leads (a task of the term, like the
/// timekeeper): every [`POOL_QUEUE_REFRESH`], each declared pool's consumer info. A read that
/// fails is logged and tried at the next tick; it never ends the term.
pub async fn watch_pools(
    topology: crate::topology::Topology,
    metrics: Metrics,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut known: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(POOL_QUEUE_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pools = match crate::pools::declared(&topology).await {
            Ok(pools) => pools,
            Err(error) => {
                tracing::debug!(%error, "cannot read the declared pools for their metrics");
                continue;
            }
        };
        for gone in known.difference(&pools) {
            metrics.forget_pool(gone);
        }
        let Ok(stream) = topology.js.get_stream(sluice_proto::names::JOBS_STREAM).await else { continue };
        for pool in &pools {
            match stream.consumer_info(sluice_proto::names::pool_consumer(pool)).await {
                Ok(info) => metrics.pool_queue(pool, info.num_pending, info.num_ack_pending as u64),
                Err(error) => tracing::debug!(%error, pool, "cannot read the pool's consumer for its metrics"),
            }
        }
        known = pools;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::TimeZone;
    use sluice_proto::{EventKind, JobEvent, RunId, Window, WorkflowSpec};

    use super::*;
    use crate::engine::NewRun;

    const YAML: &str = "name: m\njobs:\n  a: { run: noop, pool: gpu }\n  b: { run: noop, needs: [a] }\n";

    fn at(second: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 0, 0, 0).unwrap() + chrono::Duration::seconds(second)
    }

    fn new_run() -> NewRun {
        let zone = sluice_proto::window::parse_zone("UTC").unwrap();
        NewRun {
            id: RunId::new(),
            spec: WorkflowSpec::parse(YAML).unwrap(),
            spec_yaml: YAML.to_owned(),
            spec_hash: WorkflowSpec::hash(YAML),
            window: Window::parse("2024-02-29", zone, at(0)).unwrap(),
            params: BTreeMap::new(),
            idempotency_key: None,
            origin: sluice_proto::messages::ORIGIN_MANUAL.into(),
            traceparent: None,
            tracestate: None,
        }
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry).unwrap();
        text
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// A run of `a` (pool gpu: failed once, retried, redelivered, succeeded) and `b`.
    #[test]
    fn a_runs_inputs_are_counted_by_pool_and_every_family_is_listed() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let (mut run, _) = Run::start(new_run(), at(0));
        metrics.run_started();
        metrics.take_from(&mut run);
        let event = |run: &Run, job: &str, attempt: u32, kind: EventKind, second: i64| {
            JobEvent::new(run.id(), job, attempt, 0, kind, "w1", at(second))
        };
        let mut inputs = vec![event(&run, "a", 1, EventKind::Started, 2)];
        let mut failed = event(&run, "a", 1, EventKind::Failed, 3);
        failed.retry_at = Some(at(4));
        inputs.push(failed);
        inputs.push(event(&run, "a", 2, EventKind::Started, 4));
        let mut elsewhere = event(&run, "a", 2, EventKind::Started, 5);
        elsewhere.worker = "w2".into();
        inputs.push(elsewhere);
        inputs.push(event(&run, "a", 2, EventKind::Succeeded, 6));
        inputs.push(event(&run, "b", 1, EventKind::Started, 6));
        inputs.push(event(&run, "b", 1, EventKind::Succeeded, 10));
        for input in inputs {
            metrics.apply(&mut run, Input::Event(input), at(10)).unwrap();
        }
        metrics.dead_lettered("gpu");
        metrics.written_in(Duration::from_millis(2));
        metrics.leading(true);
        metrics.pool_queue("gpu", 3, 1);
        metrics.set_runs_active(1);
        metrics.notification_attempt("failed", crate::notify::Next::Retry(Duration::from_secs(1)));
        metrics.notification_attempt("failed", crate::notify::Next::Delivered);
        let text = text(&registry);
        for (series, expected) in [
            (r#"sluice_jobs_finished_total{pool="gpu",state="completed"}"#, 1.0),
            (r#"sluice_jobs_finished_total{pool="default",state="completed"}"#, 1.0),
            (r#"sluice_job_attempts_total{pool="gpu",outcome="retrying"}"#, 1.0),
            (r#"sluice_job_attempts_total{pool="gpu",outcome="succeeded"}"#, 1.0),
            (r#"sluice_job_redeliveries_total{pool="gpu"}"#, 1.0),
            (r#"sluice_dispatch_latency_seconds_count{pool="gpu"}"#, 1.0),
            (r#"sluice_dispatch_latency_seconds_sum{pool="gpu"}"#, 2.0),
            (r#"sluice_runs_finished_total{state="succeeded"}"#, 1.0),
            (r#"sluice_run_duration_seconds_sum{state="succeeded"}"#, 10.0),
            ("sluice_engine_apply_seconds_count", 7.0),
            (r#"sluice_pool_queue_lag{pool="gpu"}"#, 3.0),
            ("sluice_coordinator_terms_total", 1.0),
            (r#"sluice_notification_attempts_total{event="failed",result="retrying"}"#, 1.0),
            (r#"sluice_notification_attempts_total{event="failed",result="delivered"}"#, 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(expected), "{series} in\n{text}");
        }
        let typed: BTreeSet<String> =
            text.lines().filter_map(|line| Some(line.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned())).collect();
        let listed: BTreeSet<String> = FAMILIES
            .iter()
            .map(|(name, kind)| if *kind == Kind::Counter { format!("{name}_total") } else { (*name).to_owned() })
            .collect();
        assert_eq!(typed, listed, "FAMILIES lists exactly what is registered");
        metrics.leading(false);
        let standing = super::tests::text(&registry);
        assert_eq!(sample(&standing, r#"sluice_pool_queue_lag{pool="gpu"}"#), None, "a standby reports no pools");
        assert_eq!(sample(&standing, "sluice_coordinator_leader"), Some(0.0));
    }
}
