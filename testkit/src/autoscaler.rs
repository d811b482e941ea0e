//! A stand-in for KEDA (nats-jetstream trigger) and the HPA it drives, with their clocks
//! compressed to seconds, starting and SIGTERMing real `sluice worker` processes: what a
//! pool on Kubernetes would do, without a cluster.
//!
//! - The metric is read exactly as KEDA 2.x's `nats-jetstream` scaler reads it:
//!   `GET /jsz?acc=<account>&consumers=true&config=true` on the monitoring port, the account
//!   by name, the stream by name, the consumer by name; lag = `num_pending + num_ack_pending`;
//!   a stream without that consumer reports its `last_seq` (KEDA's fallback, which would
//!   scale an undeclared pool to its maximum); no such stream is an error ([`lag_from_jsz`]).
//! - The decision ([`Decider::decide`], pure, time passed in) follows KEDA's scale executor
//!   and the HPA: active when lag > `activationLagThreshold`; at 0 replicas an active
//!   trigger scales to 1 (KEDA); with replicas, inactive for `cooldownPeriod` scales to 0
//!   (KEDA); otherwise the HPA's desired = ceil(lag / `lagThreshold`) within
//!   [max(min, 1), max], unchanged within the 10% tolerance, and a scale-down takes the
//!   highest recommendation of the stabilisation window. A metric error changes nothing.
//! - [`Autoscaler`] is the shell: one [`tick`](Autoscaler::tick) per polling interval polls,
//!   decides, starts workers or SIGTERMs the newest ones (as a ReplicaSet deletes pods), and
//!   reaps those that finished draining; it records [`ScaleEvent`]s.
//!
//! Not modelled: the HPA's scale-up rate policies (at most doubling, or +4 pods, per 15 s:
//! they never bind with the few replicas of a test), readiness, and a cluster's consumer
//! leader lookup through `/varz` (the autoscaler polls one server).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::Stack;
use crate::monitoring;

/// The account KEDA names when the server has no accounts configured.
pub const GLOBAL_ACCOUNT: &str = "$G";

/// KEDA's trigger metadata (`type: nats-jetstream`).
#[derive(Clone, Debug)]
pub struct Trigger {
    /// `account`: `$G` on a server without accounts.
    pub account: String,
    /// `stream`.
    pub stream: String,
    /// `consumer`.
    pub consumer: String,
    /// `lagThreshold`: the target lag per replica (KEDA's default 10).
    pub lag_threshold: u64,
    /// `activationLagThreshold`: active only above this lag (KEDA's default 0).
    pub activation_lag_threshold: u64,
}

/// The ScaledObject's and the HPA's settings, in real time units (compressed by the test).
#[derive(Clone, Debug)]
pub struct Scaling {
    /// `minReplicaCount`.
    pub min_replicas: u32,
    /// `maxReplicaCount`.
    pub max_replicas: u32,
    /// `pollingInterval` (KEDA's default 30 s); the HPA is evaluated on the same tick.
    pub polling_interval: Duration,
    /// `cooldownPeriod` (KEDA's default 300 s): inactive this long before scaling to 0.
    pub cooldown: Duration,
    /// The HPA's `behavior.scaleDown.stabilizationWindowSeconds` (default 300 s).
    pub scale_down_stabilization: Duration,
    /// The HPA's tolerance (default 0.1): no change while lag / (target × replicas) is
    /// within it of 1.
    pub tolerance: f64,
}

/// What one poll of `/jsz` says about the consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The metric KEDA reports.
    pub lag: u64,
    /// Whether the consumer was there; without it the lag is the stream's last sequence.
    pub consumer_found: bool,
}

#[derive(Deserialize)]
struct Jsz {
    #[serde(default)]
    account_details: Vec<AccountDetail>,
}

#[derive(Deserialize)]
struct AccountDetail {
    name: String,
    #[serde(default)]
    stream_detail: Vec<StreamDetail>,
}

#[derive(Deserialize)]
struct StreamDetail {
    name: String,
    #[serde(default)]
    state: StreamState,
    #[serde(default)]
    consumer_detail: Vec<ConsumerDetail>,
}

#[derive(Deserialize, Default)]
struct StreamState {
    #[serde(default)]
    last_seq: u64,
}

#[derive(Deserialize)]
struct ConsumerDetail {
    name: String,
    #[serde(default)]
    num_pending: u64,
    #[serde(default)]
    num_ack_pending: u64,
}

/// The path KEDA requests (the account as given, unescaped, as KEDA formats it).
pub fn jsz_path(account: &str) -> String {
    format!("/jsz?acc={account}&consumers=true&config=true")
}

/// The lag KEDA computes from a `/jsz` body: the consumer's `num_pending + num_ack_pending`,
/// or the stream's `last_seq` when the stream has no such consumer. No such account or
/// stream is an error ("stream not found").
pub fn lag_from_jsz(body: &str, trigger: &Trigger) -> Result<Observed> {
    let jsz: Jsz = serde_json::from_str(body).context("decoding /jsz")?;
    let stream = jsz
        .account_details
        .iter()
        .filter(|account| account.name == trigger.account)
        .flat_map(|account| &account.stream_detail)
        .find(|stream| stream.name == trigger.stream);
    let Some(stream) = stream else {
        bail!("stream not found: no stream {} in account {} in /jsz", trigger.stream, trigger.account)
    };
    Ok(match stream.consumer_detail.iter().find(|consumer| consumer.name == trigger.consumer) {
        Some(consumer) => {
            Observed { lag: consumer.num_pending.saturating_add(consumer.num_ack_pending), consumer_found: true }
        }
        None => Observed { lag: stream.state.last_seq, consumer_found: false },
    })
}

/// Who decided a change, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Nothing to change (or the metric could not be read).
    Hold,
    /// KEDA: an active trigger at 0 replicas.
    FromZero,
    /// KEDA: inactive for the cooldown period.
    ToZero,
    /// The HPA: ceil(lag / lagThreshold), bounded and stabilised.
    Hpa,
}

/// The replicas wanted after one poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub desired: u32,
    pub why: Why,
}

/// KEDA's and the HPA's memory between polls: when the trigger was last active, and the
/// HPA's recent recommendations (for the scale-down stabilisation window).
#[derive(Clone, Debug)]
pub struct Decider {
    trigger: Trigger,
    scaling: Scaling,
    last_active: Option<Instant>,
    recommendations: VecDeque<(Instant, u32)>,
}

impl Decider {
    pub fn new(trigger: Trigger, scaling: Scaling) -> Self {
        Self { trigger, scaling, last_active: None, recommendations: VecDeque::new() }
    }

    /// The replicas wanted at `now`, with `current` replicas and the metric just read
    /// (`None`: it could not be read, and KEDA without a fallback changes nothing).
    pub fn decide(&mut self, now: Instant, current: u32, lag: Option<u64>) -> Decision {
        let hold = Decision { desired: current, why: Why::Hold };
        let Some(lag) = lag else { return hold };
        let active = lag > self.trigger.activation_lag_threshold;
        if active {
            self.last_active = Some(now);
        }
        let min = self.scaling.min_replicas;
        if current == 0 {
            // KEDA's scale executor: from zero to max(min, 1) once the trigger is active.
            return if active || min > 0 { Decision { desired: min.max(1), why: Why::FromZero } } else { hold };
        }
        if !active && min == 0 {
            let cooled =
                self.last_active.is_none_or(|last| now.saturating_duration_since(last) >= self.scaling.cooldown);
            if cooled {
                self.recommendations.clear();
                return Decision { desired: 0, why: Why::ToZero };
            }
        }
        let desired = self.hpa(now, current, lag);
        if desired == current { hold } else { Decision { desired, why: Why::Hpa } }
    }

    /// The HPA's replicas for an `AverageValue` target of `lagThreshold`, stabilised.
    fn hpa(&mut self, now: Instant, current: u32, lag: u64) -> u32 {
        let floor = self.scaling.min_replicas.max(1);
        let ceiling = self.scaling.max_replicas.max(floor);
        let target = self.trigger.lag_threshold.max(1);
        let ratio = lag as f64 / (target as f64 * f64::from(current));
        let raw = if (ratio - 1.0).abs() <= self.scaling.tolerance {
            current
        } else {
            u32::try_from(lag.div_ceil(target)).unwrap_or(u32::MAX)
        };
        let recommendation = raw.clamp(floor, ceiling);
        let window = self.scaling.scale_down_stabilization;
        while self.recommendations.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) > window) {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now, recommendation));
        // Up at once (the scale-up window is 0); down only as far as the highest
        // recommendation within the window.
        let highest = self.recommendations.iter().map(|(_, replicas)| *replicas).max().unwrap_or(recommendation);
        let mut desired = current;
        if desired < recommendation {
            desired = recommendation;
        }
        if desired > highest {
            desired = highest;
        }
        desired
    }
}

/// A change of the replica count.
#[derive(Clone, Debug)]
pub struct ScaleEvent {
    pub at: DateTime<Utc>,
    /// Since the autoscaler was made.
    pub elapsed: Duration,
    pub from: u32,
    pub to: u32,
    pub lag: u64,
    pub why: Why,
}

/// A worker that exited after a SIGTERM (or on its own, which a test treats as a failure).
#[derive(Clone, Debug)]
pub struct WorkerExit {
    /// The stack's index of the process, and its pid.
    pub process: usize,
    pub pid: i32,
    /// When it was sent SIGTERM (none if it exited unasked).
    pub terminated_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    /// SIGTERM to exit.
    pub drained_in: Option<Duration>,
    pub success: bool,
    /// It exited before it was told to.
    pub unasked: bool,
}

/// The moment the last live worker process of the pool exited (the pool truly at 0).
#[derive(Clone, Debug)]
pub struct AllStopped {
    pub at: DateTime<Utc>,
    pub elapsed: Duration,
}

/// A worker sent SIGTERM that has not exited yet.
#[derive(Clone, Debug)]
struct Draining {
    process: usize,
    pid: i32,
    told: Instant,
    told_at: DateTime<Utc>,
}

/// What one tick saw and did.
#[derive(Clone, Debug)]
pub struct Tick {
    pub observed: Option<Observed>,
    pub decision: Decision,
}

/// The shell around [`Decider`]: polls the stack's monitoring port, starts `sluice worker
/// --pool POOL ARGS` processes and SIGTERMs them.
pub struct Autoscaler {
    decider: Decider,
    trigger: Trigger,
    scaling: Scaling,
    monitor_port: u16,
    worker_args: Vec<String>,
    started: Instant,
    next_tick: Instant,
    /// Replicas: started and not told to stop, newest last.
    running: Vec<usize>,
    /// Told to stop, still draining: the process, its pid and when it was told.
    draining: Vec<Draining>,
    pub events: Vec<ScaleEvent>,
    pub exits: Vec<WorkerExit>,
    pub all_stopped: Vec<AllStopped>,
    /// Polls, polls without the consumer, polls that failed (with the last error).
    pub polls: u64,
    pub polls_without_consumer: u64,
    pub poll_errors: u64,
    pub last_error: Option<String>,
    pub last_lag: Option<u64>,
    pub peak_replicas: u32,
}

impl Autoscaler {
    /// An autoscaler for the pool `trigger.consumer` serves, polling `stack`'s monitoring
    /// port ([`crate::StackBuilder::monitoring`]); its workers run `sluice worker ARGS`
    /// (the pool among them).
    pub fn new(stack: &Stack, trigger: Trigger, scaling: Scaling, worker_args: &[&str]) -> Result<Self> {
        let Some(monitor_port) = stack.monitor_port() else {
            bail!("the stack's nats-server has no monitoring port: build it with .monitoring()")
        };
        let now = Instant::now();
        Ok(Self {
            decider: Decider::new(trigger.clone(), scaling.clone()),
            trigger,
            scaling,
            monitor_port,
            worker_args: worker_args.iter().map(|arg| (*arg).to_owned()).collect(),
            started: now,
            next_tick: now,
            running: Vec::new(),
            draining: Vec::new(),
            events: Vec::new(),
            exits: Vec::new(),
            all_stopped: Vec::new(),
            polls: 0,
            polls_without_consumer: 0,
            poll_errors: 0,
            last_error: None,
            last_lag: None,
            peak_replicas: 0,
        })
    }

    /// Replicas now (workers started and not told to stop).
    pub fn replicas(&self) -> u32 {
        self.running.len() as u32
    }

    /// Worker processes alive: replicas and those still draining.
    pub fn alive(&self) -> usize {
        self.running.len() + self.draining.len()
    }

    /// Reads the metric once, as KEDA does.
    pub fn poll(&self) -> Result<Observed> {
        let (status, body) = monitoring::get(self.monitor_port, &jsz_path(&self.trigger.account))?;
        if status != 200 {
            bail!("/jsz answered {status}: {body}");
        }
        lag_from_jsz(&body, &self.trigger)
    }

    /// One polling interval: reaps drained workers, polls, decides, scales.
    pub fn tick(&mut self, stack: &mut Stack) -> Tick {
        self.reap(stack);
        self.polls += 1;
        let observed = match self.poll() {
            Ok(observed) => {
                if !observed.consumer_found {
                    self.polls_without_consumer += 1;
                }
                self.last_lag = Some(observed.lag);
                Some(observed)
            }
            Err(error) => {
                self.poll_errors += 1;
                self.last_error = Some(format!("{error:#}"));
                None
            }
        };
        let current = self.replicas();
        let decision = self.decider.decide(Instant::now(), current, observed.map(|observed| observed.lag));
        if decision.desired != current {
            self.scale(stack, current, decision, observed.map_or(0, |observed| observed.lag));
        }
        Tick { observed, decision }
    }

    fn scale(&mut self, stack: &mut Stack, from: u32, decision: Decision, lag: u64) {
        let to = decision.desired;
        while self.replicas() < to {
            let args: Vec<&str> = self.worker_args.iter().map(String::as_str).collect();
            self.running.push(stack.worker(&args));
        }
        while self.replicas() > to {
            // A ReplicaSet deletes the newest pods first; Kubernetes sends them SIGTERM.
            let Some(process) = self.running.pop() else { break };
            self.terminate(stack, process);
        }
        self.peak_replicas = self.peak_replicas.max(to);
        self.events.push(ScaleEvent {
            at: Utc::now(),
            elapsed: self.started.elapsed(),
            from,
            to,
            lag,
            why: decision.why,
        });
    }

    fn terminate(&mut self, stack: &Stack, process: usize) {
        stack.signal(process, "TERM");
        self.draining.push(Draining { process, pid: stack.pid(process), told: Instant::now(), told_at: Utc::now() });
    }

    /// Notes the workers that exited: drained ones, and any that stopped unasked (which
    /// stop being replicas, as a crashed pod would until restarted).
    fn reap(&mut self, stack: &mut Stack) {
        let was_alive = self.alive();
        let mut still = Vec::new();
        for draining in std::mem::take(&mut self.draining) {
            if stack.is_running(draining.process) {
                still.push(draining);
            } else {
                let success = stack.wait_exit(draining.process, Duration::from_secs(1)).success();
                self.exits.push(WorkerExit {
                    process: draining.process,
                    pid: draining.pid,
                    terminated_at: Some(draining.told_at),
                    at: Utc::now(),
                    drained_in: Some(draining.told.elapsed()),
                    success,
                    unasked: false,
                });
            }
        }
        self.draining = still;
        let mut running = Vec::new();
        for process in std::mem::take(&mut self.running) {
            if stack.is_running(process) {
                running.push(process);
            } else {
                let success = stack.wait_exit(process, Duration::from_secs(1)).success();
                self.exits.push(WorkerExit {
                    process,
                    pid: stack.pid(process),
                    terminated_at: None,
                    at: Utc::now(),
                    drained_in: None,
                    success,
                    unasked: true,
                });
            }
        }
        self.running = running;
        if was_alive > 0 && self.alive() == 0 {
            self.all_stopped.push(AllStopped { at: Utc::now(), elapsed: self.started.elapsed() });
        }
    }

    /// Ticks every polling interval until `done` holds after a tick (it is given the
    /// autoscaler), or fails after `timeout` naming `what` and the state reached.
    pub fn run_until(
        &mut self,
        stack: &mut Stack,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now < self.next_tick {
                std::thread::sleep(self.next_tick - now);
            }
            self.next_tick = Instant::now() + self.scaling.polling_interval;
            self.tick(stack);
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "waited {timeout:?} for {what}: {} replicas, {} alive, last lag {:?}, last error {:?}\n{}",
                    self.replicas(),
                    self.alive(),
                    self.last_lag,
                    self.last_error,
                    self.report()
                );
            }
        }
    }

    /// The scale events, one a line: `+12.3s 1 → 4 lag 1873 (hpa)`, then the exits.
    pub fn report(&self) -> String {
        let mut text = String::new();
        for event in &self.events {
            text.push_str(&format!(
                "+{:>6.2}s {} → {} lag {} ({:?})\n",
                event.elapsed.as_secs_f64(),
                event.from,
                event.to,
                event.lag,
                event.why
            ));
        }
        for stopped in &self.all_stopped {
            text.push_str(&format!("+{:>6.2}s every worker has exited\n", stopped.elapsed.as_secs_f64()));
        }
        let drains: Vec<String> = self
            .exits
            .iter()
            .map(|exit| match exit.drained_in {
                Some(took) => format!("{:.1}s{}", took.as_secs_f64(), if exit.success { "" } else { " (failed)" }),
                None => "unasked".to_owned(),
            })
            .collect();
        text.push_str(&format!(
            "polls {} (without the consumer {}, failed {}); workers started {}, exited {}: SIGTERM→exit [{}]\n",
            self.polls,
            self.polls_without_consumer,
            self.poll_errors,
            self.exits.len() + self.alive(),
            self.exits.len(),
            drains.join(", ")
        ));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger() -> Trigger {
        Trigger {
            account: GLOBAL_ACCOUNT.into(),
            stream: "SLUICE_JOBS".into(),
            consumer: "pool-burst".into(),
            lag_threshold: 10,
            activation_lag_threshold: 0,
        }
    }

    fn scaling() -> Scaling {
        Scaling {
            min_replicas: 0,
            max_replicas: 4,
            polling_interval: Duration::from_millis(250),
            cooldown: Duration::from_secs(3),
            scale_down_stabilization: Duration::from_secs(5),
            tolerance: 0.1,
        }
    }

    fn jsz(consumers: &str) -> String {
        format!(
            r#"{{"server_id":"x","meta_cluster":{{"cluster_size":1}},"account_details":[{{"name":"$G","id":"$G","stream_detail":[
                {{"name":"OTHER","state":{{"last_seq":99}},"consumer_detail":[{{"name":"pool-burst","num_pending":1000,"num_ack_pending":1000}}]}},
                {{"name":"SLUICE_JOBS","state":{{"messages":12,"last_seq":4711}},"consumer_detail":[{consumers}]}}]}}]}}"#
        )
    }

    #[test]
    fn lag_is_pending_plus_ack_pending_of_the_named_consumer_of_the_named_stream() {
        let body = jsz(
            r#"{"name":"pool-other","num_pending":500,"num_ack_pending":5},{"stream_name":"SLUICE_JOBS","name":"pool-burst","num_pending":7,"num_ack_pending":3,"num_redelivered":2,"num_waiting":1}"#,
        );
        assert_eq!(lag_from_jsz(&body, &trigger()).unwrap(), Observed { lag: 10, consumer_found: true });
    }

    #[test]
    fn a_missing_consumer_reports_the_streams_last_sequence_and_a_missing_stream_is_an_error() {
        let body = jsz(r#"{"name":"pool-other","num_pending":500,"num_ack_pending":5}"#);
        assert_eq!(lag_from_jsz(&body, &trigger()).unwrap(), Observed { lag: 4711, consumer_found: false });
        let other_account = Trigger { account: "SLUICE".into(), ..trigger() };
        let error = lag_from_jsz(&body, &other_account).unwrap_err().to_string();
        assert!(error.contains("stream not found: no stream SLUICE_JOBS in account SLUICE"), "{error}");
        assert!(lag_from_jsz("{not json", &trigger()).is_err());
        assert_eq!(jsz_path("$G"), "/jsz?acc=$G&consumers=true&config=true");
    }

    /// Runs `decide` over (seconds since start, current replicas, lag) and returns the
    /// desired replicas of each step.
    fn steps(decider: &mut Decider, steps: &[(f64, u32, Option<u64>)]) -> Vec<(u32, Why)> {
        let start = Instant::now();
        steps
            .iter()
            .map(|(at, current, lag)| {
                let decision = decider.decide(start + Duration::from_secs_f64(*at), *current, *lag);
                (decision.desired, decision.why)
            })
            .collect()
    }

    #[test]
    fn an_idle_pool_stays_at_zero_and_lag_wakes_it_to_one_then_the_hpa_takes_it_to_the_bound() {
        let mut decider = Decider::new(trigger(), scaling());
        let got =
            steps(&mut decider, &[(0.0, 0, Some(0)), (1.0, 0, Some(2000)), (1.25, 1, Some(2000)), (1.5, 4, Some(35))]);
        assert_eq!(got, [(0, Why::Hold), (1, Why::FromZero), (4, Why::Hpa), (4, Why::Hold)]);
    }

    #[test]
    fn activation_needs_lag_above_the_threshold() {
        let mut decider = Decider::new(Trigger { activation_lag_threshold: 5, ..trigger() }, scaling());
        let got = steps(&mut decider, &[(0.0, 0, Some(5)), (1.0, 0, Some(6))]);
        assert_eq!(got, [(0, Why::Hold), (1, Why::FromZero)]);
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window_and_takes_its_highest_recommendation() {
        let mut decider = Decider::new(trigger(), scaling());
        let got = steps(
            &mut decider,
            &[
                (0.0, 4, Some(400)),
                (1.0, 4, Some(25)), // wants 3; the window still holds 4
                (3.0, 4, Some(12)), // wants 2
                (5.5, 4, Some(12)), // the 4 of t=0 has left the window: 3 (t=1) is the highest
                (6.5, 3, Some(12)), // t=1 left too: 2
            ],
        );
        assert_eq!(got, [(4, Why::Hold), (4, Why::Hold), (4, Why::Hold), (3, Why::Hpa), (2, Why::Hpa)]);
    }

    #[test]
    fn within_the_tolerance_nothing_changes() {
        let mut decider = Decider::new(trigger(), scaling());
        // 2 replicas, target 10 each: 21 is within 10% of 20, 23 is not.
        assert_eq!(steps(&mut decider, &[(0.0, 2, Some(21)), (0.5, 2, Some(23))]), [(2, Why::Hold), (3, Why::Hpa)]);
    }

    #[test]
    fn no_lag_scales_to_zero_only_after_the_cooldown_whatever_the_hpa_window_says() {
        let mut decider = Decider::new(trigger(), scaling());
        let got = steps(
            &mut decider,
            &[
                (0.0, 4, Some(400)),
                (1.0, 4, Some(0)), // inactive, cooling down; the HPA window keeps 4
                (2.9, 4, Some(0)),
                (3.0, 4, Some(0)), // 3 s since the last active poll
                (5.0, 0, Some(0)),
            ],
        );
        assert_eq!(got, [(4, Why::Hold), (4, Why::Hold), (4, Why::Hold), (0, Why::ToZero), (0, Why::Hold)]);
    }

    #[test]
    fn activity_during_the_cooldown_restarts_it() {
        let mut decider = Decider::new(trigger(), scaling());
        let got = steps(
            &mut decider,
            &[(0.0, 1, Some(3)), (2.0, 1, Some(0)), (2.5, 1, Some(1)), (5.0, 1, Some(0)), (5.6, 1, Some(0))],
        );
        assert_eq!(got, [(1, Why::Hold), (1, Why::Hold), (1, Why::Hold), (1, Why::Hold), (0, Why::ToZero)]);
    }

    #[test]
    fn an_unreadable_metric_changes_nothing() {
        let mut decider = Decider::new(trigger(), scaling());
        let got = steps(&mut decider, &[(0.0, 0, None), (1.0, 3, None), (100.0, 3, None)]);
        assert_eq!(got, [(0, Why::Hold), (3, Why::Hold), (3, Why::Hold)]);
    }

    #[test]
    fn the_bounds_hold_and_a_minimum_keeps_the_pool_up() {
        let mut decider = Decider::new(trigger(), Scaling { min_replicas: 2, ..scaling() });
        let got =
            steps(&mut decider, &[(0.0, 0, Some(0)), (1.0, 2, Some(100_000)), (2.0, 4, Some(0)), (20.0, 4, Some(0))]);
        assert_eq!(got, [(2, Why::FromZero), (4, Why::Hpa), (4, Why::Hold), (2, Why::Hpa)]);
    }
}
