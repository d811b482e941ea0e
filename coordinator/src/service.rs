//! The coordinator service: the thin shell around the [`crate::engine`]. One task owns every
//! active run: it takes one item at a time from the [`Inbox`] (events, advisories, control
//! requests, submissions, reports of the term's tasks), turns it into an engine input,
//! applies it, has the [`Outbox`] write the resulting records and publish the dispatches,
//! and only then acknowledges. The [`crate::timekeeper`] runs beside it, one task per
//! leadership term.
//!
//! Any NATS failure restarts the loop from durable state, so nothing lives only in memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Message};
use chrono::Utc;
use sluice_proto::{
    ControlAction, ControlRequest, DeadLetter, EventBatch, EventKind, JobEvent, JobMessage, JobState, PendingCancel,
    RefusalKind, Rejection, RunId, RunState, TraceParent, WorkflowSpec, decode, encode, names,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::announce;
use crate::control::{self, Answer};
use crate::dispatch::{publish_raw_dead_letter, reached_workers};
use crate::engine::{Effect, Input, NewSpec, NotApplied, Run};
use crate::error::{ErrorClass, NatsContext, ServiceError};
use crate::inbox::{Consumers, Inbound};
use crate::index::{self, Index};
use crate::intake;
use crate::leadership;
use crate::metrics::{self, Metrics};
use crate::notify::{self, NotifySettings};
use crate::outbox::Outbox;
use crate::pools;
use crate::spawns;
use crate::specs::{self, StoredSpecs, Unreadable};
use crate::store::{self, saves_of};
use crate::timekeeper;
use crate::topology::{self, Topology};
use sluice_client::stores;
use sluice_proto::trace;

/// Which request stores a workflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applying {
    Workflow,
    Schedule,
}

/// Times a control request is redone from a fresh read when its revision-checked write
/// loses to another (then the term restarts, and the request is delivered again).
const CHANGED_REDO_MAX: u32 = 5;
/// Pause before restarting after a failure, doubling up to the maximum.
const RESTART_DELAY_INITIAL: Duration = Duration::from_millis(200);
const RESTART_DELAY_MAX: Duration = Duration::from_secs(5);

/// What an operator may set on a coordinator.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub topology: topology::TopologySettings,
    /// Where the coordinator counts (registered by the caller; unregistered by default).
    pub metrics: Metrics,
    /// The targets workflows may notify (none by default) and the UI's address.
    pub notify: Arc<NotifySettings>,
}

/// What a coordinator is doing, for readiness probes ([`run_observed`] publishes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not campaigning yet: checking the server.
    Starting,
    /// Campaigning while another coordinator leads (or none yet): ready to take over.
    Standby,
    /// Won the lease: setting up the topology and loading the running runs.
    TakingOver,
    /// Leading: advancing runs.
    Leading,
    /// A term failed; restarting from durable state after a pause.
    Restarting,
    /// Returned (shut down, or a server it cannot run on).
    Stopped,
}

impl Phase {
    /// Serving its role: a standby is ready (it takes over when the leader goes), and so is
    /// a leader once it advances runs.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Standby | Self::Leading)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::TakingOver => "taking_over",
            Self::Leading => "leading",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// Runs the coordinator until `shutdown` is cancelled: campaigns for leadership, leads
/// while it holds the lease, and restarts from durable state after any failure (for example
/// while the nats-server restarts). Any number may run; one leads at a time. [`run_with`]
/// with default settings.
pub async fn run(client: async_nats::Client, shutdown: CancellationToken) -> Result<(), ServiceError> {
    run_with(client, Settings::default(), shutdown).await
}

/// Campaigns for leadership and advances runs while leading, until `shutdown`.
pub async fn run_with(
    client: async_nats::Client,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    run_observed(client, settings, shutdown, watch::channel(Phase::Starting).0).await
}

/// [`run_with`], publishing what the coordinator is doing on `phase` (for health probes).
pub async fn run_observed(
    client: async_nats::Client,
    settings: Settings,
    shutdown: CancellationToken,
    phase: watch::Sender<Phase>,
) -> Result<(), ServiceError> {
    let result = observed(client, settings, shutdown, &phase).await;
    phase.send_replace(Phase::Stopped);
    result
}

async fn observed(
    client: async_nats::Client,
    settings: Settings,
    shutdown: CancellationToken,
    phase: &watch::Sender<Phase>,
) -> Result<(), ServiceError> {
    topology::check_server(&client)?;
    // `host/pid/unique`: says which process leads.
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "coordinator".into());
    let holder = format!("{host}/{}/{}", std::process::id(), RunId::new());
    // Its registry id: the holder without the separators a KV key cannot hold.
    let id: String = holder.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    // Watched by the announcer, so the registry says who leads as soon as it changes.
    let leading = tokio::sync::watch::Sender::new(false);
    // Stops with the campaign, which may end on its own (a server it cannot run on).
    let announcing = shutdown.child_token();
    let announcer = tokio::spawn(announce::coordinator(
        jetstream::new(client.clone()),
        id,
        leading.subscribe(),
        announcing.clone(),
    ));
    let result = campaign(&client, &holder, settings, &leading, &shutdown, phase).await;
    announcing.cancel();
    let _ = announcer.await;
    result
}

/// Leads whenever it holds the lease, restarting from durable state after a failure.
async fn campaign(
    client: &async_nats::Client,
    holder: &str,
    settings: Settings,
    leading: &tokio::sync::watch::Sender<bool>,
    shutdown: &CancellationToken,
    phase: &watch::Sender<Phase>,
) -> Result<(), ServiceError> {
    let mut delay = RESTART_DELAY_INITIAL;
    loop {
        let js = jetstream::new(client.clone());
        let outcome = lead(&js, holder, &settings, leading, shutdown, phase).await;
        if shutdown.is_cancelled() {
            return Ok(());
        }
        match outcome {
            Ok(()) => delay = RESTART_DELAY_INITIAL,
            Err(error) if error.is_fatal() => {
                tracing::error!(%error, "the coordinator cannot run on this server; stopping");
                return Err(error);
            }
            Err(error) => {
                phase.send_replace(Phase::Restarting);
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "coordinator loop failed; restarting from durable state");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RESTART_DELAY_MAX);
            }
        }
    }
}

/// One term: wait for the lease, serve while holding it, give it up when done.
async fn lead(
    js: &jetstream::Context,
    holder: &str,
    settings: &Settings,
    leading: &tokio::sync::watch::Sender<bool>,
    shutdown: &CancellationToken,
    phase: &watch::Sender<Phase>,
) -> Result<(), ServiceError> {
    let leases = leadership::bucket(js, settings.topology.replicas).await?;
    phase.send_replace(Phase::Standby);
    let Some(mut lease) = leadership::acquire(&leases, holder, shutdown).await else { return Ok(()) };
    phase.send_replace(Phase::TakingOver);
    tracing::info!(%holder, "leading: this coordinator advances runs");
    settings.metrics.leading(true);
    let lost = shutdown.child_token();
    let stop_renewing = CancellationToken::new();
    let keeper = {
        let (stop, lost) = (stop_renewing.clone(), lost.clone());
        tokio::spawn(async move {
            lease.keep(stop, lost).await;
            lease
        })
    };
    let served = match topology::ensure_with(js, settings.topology).await {
        Ok(topology) => {
            // Announced once the stores exist, so the registry can hold the announcement.
            leading.send_replace(true);
            Coordinator::new(js.clone(), &topology, settings.metrics.clone(), settings.notify.clone())
                .serve(&topology, &lost, phase)
                .await
        }
        Err(error) => Err(error),
    };
    leading.send_replace(false);
    settings.metrics.leading(false);
    stop_renewing.cancel();
    if let Ok(lease) = keeper.await {
        lease.release().await;
    }
    if lost.is_cancelled() && !shutdown.is_cancelled() {
        tracing::warn!("stepped down: leadership lost");
    }
    served
}

struct Coordinator {
    js: jetstream::Context,
    /// The run index's writer (chains and the running set), this term's.
    index: Index,
    /// Runs that were running while in memory: when they end, the index records it.
    ran: HashSet<RunId>,
    /// The declared pools (a submission naming another is rejected); refreshed when a
    /// `pool apply` is applied.
    pools: BTreeSet<String>,
    active: HashMap<RunId, Run>,
    /// Runs cancelled while their submission waited (kept in KV `sluice-active` too): intake
    /// creates them `cancelled`.
    cancelled_pending: HashMap<RunId, PendingCancel>,
    outbox: Outbox,
    /// The specs known to be in `sluice-specs`.
    specs: StoredSpecs,
    /// Wakes the timekeeper before its next second when a backfill's run ends, so the
    /// backfill's next window starts at once instead of up to a second later.
    timekeeper: Arc<Notify>,
    /// The targets a workflow's `notify:` may name, for the notifier and for intake.
    notify: Arc<NotifySettings>,
}

impl Coordinator {
    fn new(js: jetstream::Context, topology: &Topology, metrics: Metrics, notify: Arc<NotifySettings>) -> Self {
        Self {
            index: Index::new(topology),
            ran: HashSet::new(),
            pools: BTreeSet::new(),
            active: HashMap::new(),
            cancelled_pending: HashMap::new(),
            outbox: Outbox::new(js.clone(), metrics),
            specs: StoredSpecs::default(),
            timekeeper: Arc::new(Notify::new()),
            notify,
            js,
        }
    }

    async fn serve(
        &mut self,
        topology: &Topology,
        term: &CancellationToken,
        phase: &watch::Sender<Phase>,
    ) -> Result<(), ServiceError> {
        let topology = topology.clone();
        self.refresh_pools(&topology).await?;
        self.outbox.pools.schemas = announce::refresh_pools(&topology).await?;
        let consumers = Consumers::create(&self.js).await?;
        self.cancelled_pending = index::pending_cancels(&topology).await?;
        self.recover(&topology).await?;
        self.apply_control_backlog(&topology, &consumers).await?;
        // `reports` stays here for the whole term, so the inbox never sees its tasks end.
        let (mut inbox, reports) = consumers.subscribe().await?;
        // The timekeeper lives exactly as long as this term: it stops when serving ends, by
        // any path, before another term can start one of its own.
        let tasks = term.child_token();
        let _stop_tasks = tasks.clone().drop_guard();
        tokio::spawn(metrics::watch_pools(topology.clone(), self.outbox.metrics.clone(), tasks.clone()));
        tokio::spawn(notify::deliver(
            self.js.clone(),
            topology.notifications.clone(),
            self.notify.clone(),
            self.outbox.metrics.clone(),
            tasks.clone(),
        ));
        tokio::spawn(timekeeper::keep(topology.clone(), reports.clone(), self.timekeeper.clone(), tasks));
        tracing::info!(active_runs = self.active.len(), "coordinator ready");
        phase.send_replace(Phase::Leading);
        loop {
            let inbound = tokio::select! {
                biased;
                _ = term.cancelled() => return Ok(()),
                inbound = inbox.next() => inbound?,
            };
            self.handle(&topology, inbound).await?;
            self.outbox.metrics.set_runs_active(self.active.len());
        }
    }

    /// Reads the declared pools: their names, and the max timeouts that cap their jobs'.
    async fn refresh_pools(&mut self, topology: &Topology) -> Result<(), ServiceError> {
        let records = pools::declared_records(topology).await?;
        self.outbox.pools.max_timeouts = pools::max_timeouts(&records);
        self.pools = records.into_iter().map(|pool| pool.name).collect();
        Ok(())
    }

    /// One item of the inbox, through the engine and the outbox.
    async fn handle(&mut self, topology: &Topology, inbound: Inbound) -> Result<(), ServiceError> {
        match inbound {
            Inbound::Events(messages) => self.handle_events(topology, messages).await,
            Inbound::Advisory(message) => self.handle_max_deliveries(topology, message).await,
            Inbound::Control(message) => self.handle_control(topology, message).await,
            Inbound::Submission(message) => self.handle_submission(topology, message).await,
            Inbound::PoolSchemas(schemas) => {
                self.outbox.pools.schemas = schemas;
                Ok(())
            }
            Inbound::TaskFailed(error) => Err(error),
        }
    }

    /// Applies the control requests stored before this term, before any submission is
    /// taken: a cancel sent while no coordinator ran must find its run's submission still
    /// pending, so that intake, taking the submission next, creates the run `cancelled`
    /// instead of running it. (Within a term the inbox prefers control requests too, and a
    /// submission taken first makes the cancel an ordinary one.)
    async fn apply_control_backlog(&mut self, topology: &Topology, consumers: &Consumers) -> Result<(), ServiceError> {
        let mut left = consumers.control_backlog().await?;
        while left > 0 {
            let batch = consumers.fetch_control(usize::try_from(left).unwrap_or(usize::MAX)).await?;
            if batch.is_empty() {
                break;
            }
            left = left.saturating_sub(batch.len() as u64);
            for message in batch {
                self.handle_control(topology, message).await?;
            }
        }
        Ok(())
    }

    /// Loads every running run, finishes what a crash interrupted, and re-publishes queued
    /// jobs whose message never reached JetStream, and retries never scheduled. Runs before any event is handled.
    async fn recover(&mut self, topology: &Topology) -> Result<(), ServiceError> {
        let now = Utc::now();
        let mut effects = Vec::new();
        for id in index::running_runs(topology, &mut self.index).await? {
            effects.extend(self.load(topology, &id, now).await?);
            if self.active.contains_key(&id) {
                // A crash between a run's final record and its index update: the eviction
                // below finishes that update.
                self.ran.insert(id);
            } else if store::load_run(topology, &id).await?.is_none() {
                // A key written for a run whose record never came to be (a run that cannot be
                // restored keeps its key, and is tried again by the next leader).
                self.index.forget(&id).await?;
            }
        }
        self.execute(effects).await?;
        // Notices a crash may have kept from the outbox: the same ids as first made, so a
        // target already told is not told again.
        let notices: Vec<_> = self.active.values().flat_map(notify::of_restored).collect();
        notify::publish(&self.js, &notices).await?;
        let mut lost = Vec::new();
        for run in self.active.values() {
            for job in run.jobs_in(JobState::Queued) {
                let message = run.dispatch_message(&job.name);
                if !reached_workers(&self.js, &message).await? {
                    lost.push(message);
                }
            }
        }
        if !lost.is_empty() {
            tracing::warn!(jobs = lost.len(), "re-publishing queued jobs a crash kept from their pools");
            self.outbox.dispatch(&lost, &self.active).await?;
        }
        // A retry this coordinator was to schedule when a crash came between the job's
        // `retrying` record and the schedule (decision 8).
        let mut unscheduled = Vec::new();
        for run in self.active.values() {
            for job in run.jobs_in(JobState::Retrying) {
                let message = run.retry_message(&job.name, job.attempts);
                if !reached_workers(&self.js, &message).await? {
                    unscheduled.push((message, job.retry_at.unwrap_or(now)));
                }
            }
        }
        if !unscheduled.is_empty() {
            tracing::warn!(jobs = unscheduled.len(), "scheduling retries a crash kept from their pools");
            self.outbox.schedule(&unscheduled, &self.active).await?;
        }
        self.evict_finished().await?;
        Ok(())
    }

    /// Loads a run into memory with its records' revisions; returns the effects that finish
    /// what a crash interrupted. A run that is missing or cannot be restored stays out.
    async fn load(
        &mut self,
        topology: &Topology,
        id: &RunId,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<Effect>, ServiceError> {
        let Some((record, revision)) = store::load_run_revision(topology, id).await? else { return Ok(Vec::new()) };
        let loaded = stores::run_jobs(&self.js, id).await?;
        self.outbox.revisions.remember_run(id, revision);
        let mut jobs = HashMap::with_capacity(loaded.len());
        for (name, (job, revision)) in loaded {
            self.outbox.revisions.remember_job(id, &name, revision);
            jobs.insert(name, job);
        }
        // A workflow job still in the state the run began with has no record yet: its first
        // write must find none (0), as a later one must find the revision it read.
        for name in record.jobs.iter().filter(|name| !jobs.contains_key(*name)) {
            self.outbox.revisions.remember_job(id, name, 0);
        }
        let spec = match specs::of_run(topology, &record).await {
            Ok(spec) => spec,
            Err(Unreadable::Failed(error)) => return Err(error),
            Err(Unreadable::Broken(reason)) => {
                tracing::error!(run = %id, %reason, "run cannot be restored (its spec); leaving it as stored");
                return Ok(Vec::new());
            }
        };
        match Run::restore(record, spec, jobs, now) {
            Ok((run, reconcile)) => {
                if !run.record().state.is_terminal() {
                    self.ran.insert(*id);
                }
                self.active.insert(*id, run);
                Ok(reconcile)
            }
            Err(error) => {
                tracing::error!(%error, "run cannot be restored; leaving it as stored");
                Ok(Vec::new())
            }
        }
    }

    async fn handle_events(&mut self, topology: &Topology, messages: Vec<Message>) -> Result<(), ServiceError> {
        let now = Utc::now();
        let mut effects = Vec::new();
        let mut spawned = Vec::new();
        for event in messages.iter().flat_map(|message| events_in(&message.subject, &message.payload)) {
            let run_id = event.run_id;
            // A worker's report of an attempt in a run that has ended (it ran beside or after
            // the attempt that ended its job): loaded, so the attempt is on record.
            if !self.active.contains_key(&run_id) && (event.kind == EventKind::Started || event.started_at.is_some()) {
                effects.extend(self.load(topology, &run_id, now).await?);
            }
            let Some(run) = self.active.get_mut(&run_id) else {
                tracing::debug!(run = %run_id, job = %event.job, "event for a run that is not stored");
                continue;
            };
            let mut more = match self.outbox.metrics.apply(run, Input::Event(event), now) {
                Ok(more) => more,
                Err(ignored) => {
                    tracing::debug!(run = %run_id, %ignored, "event changed nothing");
                    continue;
                }
            };
            if let Some(event) = children_wanted(&mut more) {
                // A spawn is carried out on its own: its children's records are written
                // before the parent's, and a later event of this batch that saves a child
                // again must not move that child's write after the parent's.
                self.execute(std::mem::take(&mut effects)).await?;
                spawned.push(JobEvent::clone(&event));
                let children = spawns::read(&self.js, &event).await?;
                let Some(run) = self.active.get_mut(&run_id) else { continue };
                match self.outbox.metrics.apply(run, Input::ChildrenRead { event, children }, now) {
                    Ok(more) => self.execute(more).await?,
                    Err(ignored) => tracing::debug!(run = %run_id, %ignored, "event changed nothing"),
                }
            } else if effects.is_empty() {
                effects = more;
            } else {
                effects.extend(more);
            }
        }
        self.execute(effects).await?;
        for message in &messages {
            message.ack().await.context("acknowledging an event")?;
        }
        for event in &spawned {
            spawns::forget(&self.js, event).await;
        }
        self.evict_finished().await?;
        Ok(())
    }

    async fn handle_submission(&mut self, topology: &Topology, message: Message) -> Result<(), ServiceError> {
        let submitted = header(&message, names::HEADER_TRACEPARENT).and_then(|text| TraceParent::parse(&text));
        let tracestate = header(&message, names::HEADER_TRACESTATE);
        let checked =
            intake::check(&message.payload, submitted.map(|parent| parent.to_string()), tracestate, Utc::now());
        let run_id = match checked {
            Err(rejection) => {
                let run_id = rejection.run_id;
                self.reject(rejection).await?;
                run_id
            }
            Ok(mut new) => {
                let id = new.id;
                // The run's span is the trace's root unless the submitter's span is its parent.
                let traceparent = submitted.unwrap_or_else(|| {
                    TraceParent::new_root(&mut self.outbox.rng).at(trace::run_span_id(&id.to_string()))
                });
                new.traceparent = Some(traceparent.to_string());
                let checked = intake::check_pools(&new.spec, &self.pools)
                    .and_then(|()| self.notify.targets.check_workflow(&new.spec));
                if let Err(reason) = checked {
                    self.reject(rejection_for(id, &new.spec.name, reason, message.payload.len())).await?;
                } else if let Some(existing) = self.claim_idempotency_key(topology, &new).await? {
                    let reason = format!(
                        "duplicate submission: idempotency key {:?} already started run {existing}",
                        new.idempotency_key.unwrap_or_default()
                    );
                    self.reject(rejection_for(id, &new.spec.name, reason, message.payload.len())).await?;
                } else if self.active.contains_key(&id) || store::load_run(topology, &id).await?.is_some() {
                    // A redelivery of a submission already turned into a run.
                    tracing::debug!(run = %id, "submission already accepted");
                } else {
                    let workflow = new.spec.name.clone();
                    let started = match self.cancelled_pending.get(&id).cloned() {
                        Some(cancel) => self.start_cancelled(topology, new, &cancel).await,
                        None => self.start(topology, new).await,
                    };
                    match started {
                        Ok(()) => {
                            tracing::info!(run = %id, %workflow, trace_id = %traceparent.trace_id_hex(), "run started")
                        }
                        // Bounded by construction, so this is a backstop: the one input that
                        // cannot be stored is rejected, and what comes after it goes on.
                        Err(error) if error.class() == ErrorClass::Deterministic => {
                            tracing::error!(run = %id, %error, "a run that cannot be stored is rejected");
                            self.abandon(&id).await?;
                            let reason = format!("the run cannot be stored: {error}");
                            self.reject(rejection_for(id, &workflow, reason, message.payload.len())).await?;
                        }
                        Err(error) => return Err(error),
                    }
                }
                Some(id)
            }
        };
        // The submission is taken (its run stored, or it is rejected): a cancel kept for it
        // has done its work.
        if let Some(id) = run_id
            && self.cancelled_pending.remove(&id).is_some()
        {
            index::forget_pending_cancel(topology, &id).await?;
        }
        message.ack().await.context("acknowledging a submission")?;
        self.evict_finished().await?;
        Ok(())
    }

    /// Creates a run: indexed, its records written, its first jobs dispatched.
    async fn start(&mut self, topology: &Topology, new: crate::engine::NewRun) -> Result<(), ServiceError> {
        let id = new.id;
        // Stored before any record names it.
        self.specs.put(topology, &new.spec_hash, &new.spec_yaml).await?;
        let (mut run, effects) = Run::start(new, Utc::now());
        self.outbox.metrics.run_started();
        self.outbox.metrics.take_from(&mut run);
        // Indexed before its record exists: a stored run is always listed.
        self.index.running(run.record(), true).await?;
        self.ran.insert(id);
        // The run record must not exist yet (its jobs may, from a creation a crash cut short).
        self.outbox.revisions.remember_run(&id, 0);
        self.active.insert(id, run);
        self.execute(effects).await
    }

    /// Creates a run that was cancelled while its submission waited for a coordinator: its
    /// records are written `cancelled` (every job too) with who cancelled it, and nothing is
    /// dispatched, so no worker ever sees its jobs.
    async fn start_cancelled(
        &mut self,
        topology: &Topology,
        new: crate::engine::NewRun,
        cancel: &PendingCancel,
    ) -> Result<(), ServiceError> {
        let id = new.id;
        let now = Utc::now();
        // Its record names its spec like any run's.
        self.specs.put(topology, &new.spec_hash, &new.spec_yaml).await?;
        let (mut run, mut effects) = Run::start(new, now);
        self.outbox.metrics.run_started();
        match self.outbox.metrics.apply(&mut run, Input::Cancel, now) {
            Ok(cancelled) => {
                effects.extend(cancelled);
                // Nothing was published, so there is nothing to withdraw or stop.
                effects.retain(|effect| {
                    !matches!(effect, Effect::Dispatch { .. } | Effect::Withdraw(_) | Effect::StopRun(_))
                });
            }
            // A run just started is running, which the engine always cancels.
            Err(not_applied) => {
                tracing::error!(run = %id, %not_applied, "a new run refused its pending cancel; it runs")
            }
        }
        let by = if cancel.requested_by.is_empty() { "unknown" } else { cancel.requested_by.as_str() };
        for effect in &mut effects {
            // The run leaves memory right after these writes, so the stored record is the
            // one that needs to say it (the engine's copy is not read again).
            if let Effect::SaveRun(record) = effect
                && record.state == RunState::Cancelled
            {
                record.cancelled_by = Some(by.to_owned());
            }
        }
        tracing::info!(run = %id, cancelled_by = by, "run created cancelled: it was cancelled while pending");
        self.index.running(run.record(), true).await?;
        self.ran.insert(id);
        self.outbox.revisions.remember_run(&id, 0);
        self.active.insert(id, run);
        self.execute(effects).await
    }

    /// Forgets a run whose creation failed for good (a write too large for the server). Its
    /// record is the last of its saves, and its dispatches are bounded below any server the
    /// coordinator runs on, so no run record was stored; job records written before the
    /// failure stay orphaned, out of every listing (index readers skip runs that never were).
    async fn abandon(&mut self, id: &RunId) -> Result<(), ServiceError> {
        if let Some(run) = self.active.remove(id) {
            self.outbox.revisions.forget_run(run.record());
        }
        self.ran.remove(id);
        self.index.forget(id).await
    }

    /// Claims the submission's idempotency key for its run. Returns the other run that
    /// holds it, if any. A redelivered submission finds its own run id and goes on.
    async fn claim_idempotency_key(
        &self,
        topology: &Topology,
        new: &crate::engine::NewRun,
    ) -> Result<Option<RunId>, ServiceError> {
        let Some(key) = &new.idempotency_key else {
            return Ok(None);
        };
        let kv_key = names::idempotency_kv_key(key);
        match topology.idempotency.create(&kv_key, new.id.to_string().into()).await {
            Ok(_) => Ok(None),
            Err(error) if error.kind() == jetstream::kv::CreateErrorKind::AlreadyExists => {
                let holder = topology.idempotency.get(&kv_key).await.context("reading an idempotency key")?;
                let holder = holder
                    .and_then(|bytes| std::str::from_utf8(&bytes).ok().and_then(|text| text.parse::<RunId>().ok()));
                Ok(holder.filter(|holder| *holder != new.id))
            }
            Err(error) => Err(error).context("claiming an idempotency key"),
        }
    }

    async fn reject(&mut self, rejection: Rejection) -> Result<(), ServiceError> {
        tracing::warn!(run = ?rejection.run_id.map(|id| id.to_string()), reason = %rejection.reason, "submission rejected");
        let subject = names::rejected_subject(rejection.run_id.as_ref());
        let ack = self.js.publish(subject, encode(&rejection)?.into()).await.context("recording a rejection")?;
        ack.await.context("confirming a rejection")?;
        Ok(())
    }

    /// Carries out effects of the active runs.
    async fn execute(&mut self, effects: Vec<Effect>) -> Result<(), ServiceError> {
        self.outbox.carry_out(effects, &self.active).await
    }

    /// JetStream gave up on a job message (its workers kept dying before they could report):
    /// the job fails finally and is dead-lettered, then the message leaves the jobs stream.
    async fn handle_max_deliveries(&mut self, topology: &Topology, message: Message) -> Result<(), ServiceError> {
        #[derive(serde::Deserialize)]
        struct MaxDeliveries {
            stream_seq: u64,
            deliveries: u64,
        }
        let advisory: MaxDeliveries = match serde_json::from_slice(&message.payload) {
            Ok(advisory) => advisory,
            Err(error) => {
                tracing::error!(%error, "dropping a MAX_DELIVERIES advisory that cannot be read");
                message.ack().await.context("acknowledging an advisory")?;
                return Ok(());
            }
        };
        let jobs = self.js.get_stream_no_info(names::JOBS_STREAM).await.context("opening the jobs stream")?;
        let stored = match jobs.direct_get(advisory.stream_seq).await {
            Ok(stored) => Some(stored),
            Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => None,
            Err(error) => return Err(error).context("reading a job that reached max_deliver"),
        };
        if let Some(stored) = stored {
            let reason = format!(
                "JetStream gave up after {} deliveries: the workers running it kept dying",
                advisory.deliveries
            );
            tracing::warn!(subject = %stored.subject, %reason, "dead-lettering a job");
            match decode::<JobMessage>(&stored.payload) {
                Ok(job) => self.fail_finally(topology, &job, advisory.deliveries, reason).await?,
                Err(error) => {
                    let original = names::parse_job_subject(&stored.subject);
                    let reason = format!("{reason}; the job message cannot be decoded: {error}");
                    publish_raw_dead_letter(
                        &self.js,
                        original.as_ref(),
                        &stored.subject,
                        stored.payload.clone(),
                        &reason,
                    )
                    .await?;
                }
            }
            jobs.delete_message(advisory.stream_seq).await.context("removing a job that reached max_deliver")?;
        }
        message.ack().await.context("acknowledging an advisory")?;
        self.evict_finished().await?;
        Ok(())
    }

    /// Fails a job's current attempt with no attempt to follow, as its worker would have.
    async fn fail_finally(
        &mut self,
        topology: &Topology,
        job: &JobMessage,
        deliveries: u64,
        reason: String,
    ) -> Result<(), ServiceError> {
        let now = Utc::now();
        if !self.active.contains_key(&job.run_id) {
            let reconcile = self.load(topology, &job.run_id, now).await?;
            self.execute(reconcile).await?;
        }
        let Some(run) = self.active.get_mut(&job.run_id) else { return Ok(()) };
        let input = Input::DeliveriesExhausted {
            job: job.job.clone(),
            generation: job.generation,
            attempt_offset: job.attempt_offset,
            deliveries,
            reason,
        };
        match self.outbox.metrics.apply(run, input, now) {
            Ok(effects) => self.execute(effects).await,
            Err(ignored) => {
                tracing::info!(run = %job.run_id, %ignored, "the job that reached max_deliver had already finished");
                Ok(())
            }
        }
    }

    /// A client's request: applied, answered with an outcome once what it reports is
    /// durable, then acknowledged. A redelivered request that was answered already (a crash
    /// came between its answer and its ack) is not applied again.
    async fn handle_control(&mut self, topology: &Topology, message: Message) -> Result<(), ServiceError> {
        let request: ControlRequest = match decode::<ControlRequest>(&message.payload) {
            Ok(request) => request.attributed(message.subject.as_str()),
            Err(error) => {
                tracing::error!(%error, subject = %message.subject, "a control request cannot be decoded");
                let id = header(&message, names::HEADER_REQUEST_ID).and_then(|text| text.parse().ok());
                if let Some(outcome) = control::unreadable(id, &error, Utc::now()) {
                    control::answer(topology, &outcome).await?;
                }
                message.ack().await.context("acknowledging a control request")?;
                return Ok(());
            }
        };
        if !control::answered(topology, request.request_id).await? {
            let now = Utc::now();
            let mut redone = 0;
            let answer = loop {
                // Boxed: the futures of every action, inline, made the loop's future overflow a 2 MiB
                // worker stack in debug builds (an embedded coordinator, the Rust example's test).
                match Box::pin(self.apply_control(topology, &request, now)).await {
                    // The timekeeper wrote the same schedule, backfill or pool meanwhile.
                    Err(ServiceError::Changed { what }) if redone < CHANGED_REDO_MAX => {
                        tracing::debug!(%what, "redoing a control request from a fresh read");
                        redone += 1;
                    }
                    other => break other?,
                }
            };
            tracing::info!(
                action = request.action_name(),
                run = ?request.run_id.map(|id| id.to_string()),
                requested_by = %request.requested_by,
                refused = ?answer.refused,
                reason = %answer.reason,
                "control request answered"
            );
            if let Some(outcome) = answer.outcome(&request, now) {
                control::answer(topology, &outcome).await?;
            }
        }
        message.ack().await.context("acknowledging a control request")?;
        self.evict_finished().await?;
        Ok(())
    }

    async fn apply_control(
        &mut self,
        topology: &Topology,
        request: &ControlRequest,
        now: chrono::DateTime<Utc>,
    ) -> Result<Answer, ServiceError> {
        match &request.action {
            ControlAction::Cancel | ControlAction::Retry | ControlAction::Mark { .. } => {
                self.control_run(topology, request, now).await
            }
            ControlAction::DlqPurge { workflow, pool } => {
                control::dlq_purge(topology, workflow.as_deref(), pool.as_deref()).await
            }
            ControlAction::ScheduleApply { workflow } => {
                self.workflow_apply(topology, workflow, &request.requested_by, Applying::Schedule, now).await
            }
            ControlAction::WorkflowApply { workflow } => {
                self.workflow_apply(topology, workflow, &request.requested_by, Applying::Workflow, now).await
            }
            ControlAction::WorkflowDelete { name } => control::workflow_delete(topology, name).await,
            // Each run as its own request, from here: a `control_run` one call deeper made the
            // loop's future overflow a 2 MiB worker stack in debug builds.
            ControlAction::Bulk(bulk) => {
                let runs = match control::bulk_requests(request, bulk) {
                    Ok(runs) => runs,
                    Err(refused) => return Ok(refused),
                };
                let mut tally = control::BulkTally::default();
                for one in runs {
                    let answer = self.control_run(topology, &one, now).await?;
                    tally.add(one.run_id, answer);
                }
                Ok(tally.answer(bulk))
            }
            ControlAction::SchedulePause { name } => control::schedule_pause(topology, name, true, now).await,
            ControlAction::ScheduleResume { name } => control::schedule_pause(topology, name, false, now).await,
            ControlAction::ScheduleDelete { name } => control::schedule_delete(topology, name).await,
            ControlAction::ScheduleTrigger { name } => {
                control::schedule_trigger(topology, name, request.run_id, now).await
            }
            ControlAction::BackfillCreate(backfill) => control::backfill_create(topology, backfill, now).await,
            ControlAction::BackfillCancel { id } => control::backfill_cancel(topology, id).await,
            ControlAction::PoolApply(settings) => {
                let answer = pools::apply(topology, settings, now).await?;
                self.refresh_pools(topology).await?;
                Ok(answer)
            }
        }
    }

    /// Stores a workflow (`workflow apply`, or `schedule apply`, which needs a schedule), and
    /// applies its schedule when it has one: what it names is checked as a submission's is,
    /// so a workflow applied here can be started.
    async fn workflow_apply(
        &mut self,
        topology: &Topology,
        yaml: &str,
        by: &str,
        applying: Applying,
        now: chrono::DateTime<Utc>,
    ) -> Result<Answer, ServiceError> {
        let spec = match WorkflowSpec::parse(yaml) {
            Ok(spec) => spec,
            Err(error) => return Ok(Answer::refused(RefusalKind::Invalid, error.to_string())),
        };
        if applying == Applying::Schedule && spec.schedule.is_none() {
            return Ok(Answer::refused(
                RefusalKind::Invalid,
                format!("workflow `{}` has no `schedule:` section", spec.name),
            ));
        }
        let checked = intake::check_pools(&spec, &self.pools).and_then(|()| self.notify.targets.check_workflow(&spec));
        if let Err(reason) = checked {
            return Ok(Answer::refused(RefusalKind::Invalid, reason));
        }
        if let Some(schedule) = &spec.schedule
            && let Err(error) = sluice_proto::schedule::Schedule::from_spec(schedule, spec.timezone.as_deref())
        {
            return Ok(Answer::refused(RefusalKind::Invalid, error));
        }
        let hash = WorkflowSpec::hash(yaml);
        self.specs.put(topology, &hash, yaml).await?;
        let verb = control::workflow_store(topology, &spec, &hash, by, now).await?;
        let mut reason = format!("workflow {} {verb}", spec.name);
        if spec.schedule.is_some() {
            let scheduled = control::schedule_apply(topology, yaml, now).await?;
            if scheduled.refused.is_some() {
                return Ok(scheduled);
            }
            reason = match applying {
                Applying::Schedule => scheduled.reason,
                Applying::Workflow => format!("{reason}; {}", scheduled.reason),
            };
        }
        Ok(Answer::applied(reason, vec![spec.name]))
    }

    /// Cancel, retry, replay or mark of a run. The run is loaded from the store if it is not
    /// active (a finished run can be retried).
    async fn control_run(
        &mut self,
        topology: &Topology,
        request: &ControlRequest,
        now: chrono::DateTime<Utc>,
    ) -> Result<Answer, ServiceError> {
        let action = request.action_name();
        let Some(id) = request.run_id else {
            return Ok(Answer::refused(RefusalKind::Invalid, format!("a {action} request must name a run")));
        };
        let dlq = self.js.get_stream_no_info(names::DLQ_STREAM).await.context("opening the DLQ")?;
        let letter = match request.dead_letter {
            Some(sequence) => match dead_letter(&dlq, sequence).await? {
                Some(letter) => Some((sequence, letter)),
                None => {
                    return Ok(Answer::refused(
                        RefusalKind::NotFound,
                        format!("dead letter {sequence} is gone: replayed or purged already (see `sluice dlq list`)"),
                    ));
                }
            },
            None => None,
        };
        if !self.active.contains_key(&id) {
            let reconcile = self.load(topology, &id, now).await?;
            self.execute(reconcile).await?;
        }
        let Some(run) = self.active.get_mut(&id) else {
            return self.control_pending(topology, request, id, now).await;
        };
        // A dead letter left behind by a crash after its job ran again stands for attempts
        // that are no longer the job's: replaying it would run finished work again.
        if let Some((sequence, Some(letter))) = &letter
            && let Some(job) = run.job(&letter.job.job)
            && job.generation > letter.job.generation
        {
            let refusal = format!(
                "dead letter {sequence} is resolved: job `{}` ran again since (now generation {})",
                letter.job.job, job.generation
            );
            forget_dead_letter(&dlq, *sequence).await?;
            return Ok(Answer::refused(RefusalKind::Conflict, refusal));
        }
        let spec = match &request.spec {
            Some(yaml) if request.action != ControlAction::Cancel => {
                match new_spec(yaml, &self.pools, &self.notify.targets) {
                    Ok(spec) => Some((spec, yaml)),
                    Err(reason) => return Ok(Answer::refused(RefusalKind::Invalid, reason)),
                }
            }
            _ => None,
        };
        let input = match &request.action {
            ControlAction::Cancel => Input::Cancel,
            ControlAction::Mark { job, as_, output } => {
                if let Some(refusal) = control::mark_problem(*as_, output.as_ref()) {
                    return Ok(Answer::refused(RefusalKind::Invalid, refusal));
                }
                Input::Mark {
                    job: job.clone(),
                    as_: *as_,
                    output: output.clone(),
                    by: request.requested_by.clone(),
                    request_id: request.request_id,
                }
            }
            _ => Input::Rerun { only: request.job.clone(), spec: spec.as_ref().map(|(spec, _)| spec.clone()) },
        };
        let state_before = run.record().state;
        let effects = match self.outbox.metrics.apply(run, input, now) {
            Ok(effects) => effects,
            Err(NotApplied::Refused(refused)) => {
                return Ok(Answer::refused(control::refusal_kind(&refused), refused.to_string()));
            }
            // A control input is refused or applied; nothing else comes back.
            Err(NotApplied::Ignored(ignored)) => {
                return Ok(Answer::refused(RefusalKind::Conflict, ignored.to_string()));
            }
        };
        if let Some((spec, yaml)) = &spec {
            // Before the run record that names it is saved.
            self.specs.put(topology, &spec.hash, yaml).await?;
        }
        let Some(run) = self.active.get_mut(&id) else {
            return Ok(Answer::refused(RefusalKind::NotFound, format!("no run {id}")));
        };
        let changed = saved_jobs(&effects);
        // A finished run retried runs again: back in the running set before its record says so.
        // A failed run a mark finished at once goes through it too, so the index records
        // its new end when it leaves memory.
        let state = run.record().state;
        let marked_to_an_end = matches!(request.action, ControlAction::Mark { .. }) && state != state_before;
        if (state == sluice_proto::RunState::Running || marked_to_an_end) && self.ran.insert(id) {
            self.index.running(run.record(), false).await?;
        }
        self.execute(effects).await?;
        if let Some((sequence, _)) = letter {
            // Usually resolved with its job's other dead letters already.
            forget_dead_letter(&dlq, sequence).await?;
        }
        let reason = match &request.action {
            ControlAction::Cancel => format!("run {id} cancelled: {} jobs stopped", changed.len()),
            ControlAction::Mark { job, as_, .. } => {
                format!("run {id}: job `{job}` marked {} by {}", as_.as_str(), request.requested_by)
            }
            _ => format!("run {id}: {} jobs queued again", changed.len()),
        };
        Ok(Answer::applied(reason, changed).about(Some(id)))
    }

    /// A cancel or retry of a run that is not stored: a cancel of a submission still pending
    /// is kept (durably, then in memory) for intake, which creates the run `cancelled`;
    /// anything else is refused.
    async fn control_pending(
        &mut self,
        topology: &Topology,
        request: &ControlRequest,
        id: RunId,
        now: chrono::DateTime<Utc>,
    ) -> Result<Answer, ServiceError> {
        let action = request.action_name();
        let is_cancel = request.action == ControlAction::Cancel;
        if let Some(kept) = self.cancelled_pending.get(&id) {
            // The same request again (a crash came before its answer) was applied.
            if is_cancel && kept.request_id.is_some() && kept.request_id == request.request_id {
                return Ok(pending_cancelled(id));
            }
            return Ok(Answer::refused(
                RefusalKind::Conflict,
                format!("run {id} was cancelled already, before it started (by {})", kept.requested_by),
            ));
        }
        if sluice_client::runs::find_pending(&self.js, &id).await?.is_none() {
            return Ok(Answer::refused(RefusalKind::NotFound, format!("no run {id}")));
        }
        if !is_cancel {
            return Ok(Answer::refused(
                RefusalKind::Conflict,
                format!(
                    "run {id} is pending: no coordinator has taken its submission yet, so there is nothing to {action}"
                ),
            ));
        }
        let cancel = PendingCancel {
            schema_version: sluice_proto::SCHEMA_VERSION,
            run_id: id,
            request_id: request.request_id,
            requested_by: sluice_proto::messages::truncate_error(
                &request.requested_by,
                sluice_proto::limits::REQUESTED_BY_MAX_BYTES,
            ),
            at: now,
        };
        index::remember_pending_cancel(topology, &cancel).await?;
        self.cancelled_pending.insert(id, cancel);
        Ok(pending_cancelled(id))
    }

    /// Finished runs leave memory: a year of runs costs disk, not RAM.
    /// The index records the end of the runs that ran here (their final records are
    /// stored by now), and they leave memory.
    async fn evict_finished(&mut self) -> Result<(), ServiceError> {
        let finished: Vec<RunId> = self.active.iter().filter(|(_, run)| run.is_finished()).map(|(id, _)| *id).collect();
        for id in finished {
            let Some(run) = self.active.remove(&id) else { continue };
            let record = run.record();
            tracing::info!(run = %id, workflow = %record.workflow, state = record.state.as_str(), "run finished");
            if sluice_proto::messages::is_backfill_origin(&record.origin) {
                self.timekeeper.notify_one();
            }
            self.outbox.revisions.forget_run(record);
            if self.ran.remove(&id) {
                self.index.finished(record).await?;
            }
        }
        Ok(())
    }
}

/// A `--spec` for a rerun, parsed and checked as a submission's would be.
fn new_spec(yaml: &str, pools: &BTreeSet<String>, targets: &notify::Targets) -> Result<NewSpec, String> {
    let spec = WorkflowSpec::parse(yaml).map_err(|error| format!("--spec: {error}"))?;
    intake::check_pools(&spec, pools)
        .and_then(|()| targets.check_workflow(&spec))
        .map_err(|reason| format!("--spec: {reason}"))?;
    Ok(NewSpec { spec: Arc::new(spec), hash: WorkflowSpec::hash(yaml) })
}

/// The answer to a cancel of a pending run.
fn pending_cancelled(id: RunId) -> Answer {
    Answer::applied(
        format!("run {id} cancelled before it started: it is created cancelled when a coordinator takes its submission, and none of its jobs runs"),
        Vec::new(),
    )
    .about(Some(id))
}

/// The job paths a list of effects saves: what a control request changed, in order.
fn saved_jobs(effects: &[Effect]) -> Vec<String> {
    saves_of(effects)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::SaveJob { job, .. } => Some(job.to_string()),
            _ => None,
        })
        .collect()
}

/// The dead letter at `sequence`: `None` when it is gone, `Some(None)` when it is there but
/// raw (a job nobody could read).
async fn dead_letter(
    dlq: &jetstream::stream::Stream<()>,
    sequence: u64,
) -> Result<Option<Option<DeadLetter>>, ServiceError> {
    match dlq.direct_get(sequence).await {
        Ok(stored) => Ok(Some(decode::<DeadLetter>(&stored.payload).ok())),
        Err(error) if error.kind() == jetstream::stream::DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context(format!("reading dead letter {sequence}")),
    }
}

/// Deletes a dead letter; one already gone is fine (two replays, a purge meanwhile).
async fn forget_dead_letter(dlq: &jetstream::stream::Stream<()>, sequence: u64) -> Result<(), ServiceError> {
    use jetstream::stream::DeleteMessageErrorKind;
    match dlq.delete_message(sequence).await {
        Ok(_) => Ok(()),
        // "no message found", or "sequence not found" (as a failed delete).
        Err(error)
            if matches!(error.kind(), DeleteMessageErrorKind::JetStream(ref js)
                if js.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                    || (js.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                        && (js.to_string().contains("no message found") || js.to_string().contains("not found")))) =>
        {
            Ok(())
        }
        Err(error) => Err(error).context(format!("removing dead letter {sequence}")),
    }
}

fn header(message: &Message, name: &str) -> Option<String> {
    message.headers.as_ref().and_then(|headers| headers.get(name)).map(|value| value.as_str().to_owned())
}

fn rejection_for(run_id: RunId, workflow: &str, reason: String, payload_bytes: usize) -> Rejection {
    Rejection {
        schema_version: sluice_proto::SCHEMA_VERSION,
        received_at: Utc::now(),
        run_id: Some(run_id),
        workflow: Some(workflow.to_owned()),
        reason,
        payload_bytes: payload_bytes as u64,
    }
}

/// The success whose children the engine asks for, when that is what `effects` say (an
/// [`Effect::ReadChildren`] always comes alone).
/// The events a message on the events stream carries: one, or an [`EventBatch`]'s. One that
/// cannot be decoded is dropped (logged, naming the subject); a batch's others still count.
fn events_in(subject: &str, payload: &[u8]) -> Vec<JobEvent> {
    let dropped = |error: &dyn std::fmt::Display| {
        tracing::error!(subject, %error, "dropping an event that cannot be decoded");
    };
    if !names::is_event_batch_subject(subject) {
        return match decode(payload) {
            Ok(event) => vec![event],
            Err(error) => {
                dropped(&error);
                Vec::new()
            }
        };
    }
    let batch: EventBatch = match decode(payload) {
        Ok(batch) => batch,
        Err(error) => {
            dropped(&error);
            return Vec::new();
        }
    };
    batch.events.iter().filter_map(|bytes| decode(bytes).map_err(|error| dropped(&error)).ok()).collect()
}

fn children_wanted(effects: &mut Vec<Effect>) -> Option<Box<JobEvent>> {
    if !matches!(effects.as_slice(), [Effect::ReadChildren(_)]) {
        return None;
    }
    match effects.pop() {
        Some(Effect::ReadChildren(event)) => Some(event),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use sluice_proto::{RunId, SCHEMA_VERSION, encode};

    use super::*;

    fn event(job: &str, kind: EventKind) -> JobEvent {
        JobEvent::new(RunId::new(), job, 1, 0, kind, "w-1", Utc::now())
    }

    fn batch(elements: Vec<Vec<u8>>) -> Vec<u8> {
        let events = elements.into_iter().map(serde_bytes::ByteBuf::from).collect();
        encode(&EventBatch { schema_version: SCHEMA_VERSION, worker: "w-1".into(), events }).unwrap()
    }

    #[test]
    fn a_single_event_is_read_from_its_own_subject() {
        let started = event("a", EventKind::Started);
        let subject = names::event_subject("default", &started.run_id, "a");
        assert_eq!(events_in(&subject, &encode(&started).unwrap()), [started]);
        assert!(events_in(&subject, b"not msgpack").is_empty());
    }

    #[test]
    fn a_batch_gives_its_events_in_order_and_an_unreadable_one_does_not_hide_the_rest() {
        let (a, b) = (event("a", EventKind::Started), event("b", EventKind::Succeeded));
        let payload = batch(vec![encode(&a).unwrap(), b"garbage".to_vec(), encode(&b).unwrap()]);
        assert_eq!(events_in(&names::event_batch_subject("default", "w-1"), &payload), [a.clone(), b]);
        // A batch on a single event's subject is not an event; garbage on a batch's is nothing.
        assert!(events_in(&names::event_subject("default", &a.run_id, "a"), &payload).is_empty());
        assert!(events_in(&names::event_batch_subject("default", "w-1"), b"garbage").is_empty());
    }
}
