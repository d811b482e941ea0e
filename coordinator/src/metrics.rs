//! The coordinator's Prometheus metrics (`sluice_…`), counted by the shell from what the
//! engine noted ([`Observed`]) and from what the outbox carried out.
//!
//! Labels are bounded: a pool (declared by an operator), a state or an outcome, never a
//! run id, a job path or a date. Pool gauges (lag, ack pending) are set by the leading
//! coordinator only and cleared when it steps down, so sums over coordinators do not count
//! a pool twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::{AttemptOutcome, Effect, Input, NotApplied, Observed, Run};

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
pub struct StateLabels {
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric of a coordinator. Cheap to clone (the handles are shared); one that was
/// never registered counts for nobody, which is what tests and `Settings::default` get.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
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
            }),
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

    /// Counts what `run` noted since the last call and empties its notes.
    pub fn take_from(&self, run: &mut Run) {
        for observed in run.take_observed() {
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

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
        }
    }
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
