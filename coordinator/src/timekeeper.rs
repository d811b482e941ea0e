//! Schedules and backfills, driven by the leading coordinator once a second. Both only
//! publish ordinary submissions, each with a key that makes a second publish harmless (a
//! schedule tick's idempotency key, a backfill window's pre-chosen run id), so a crash, a
//! restart or two coordinators overlapping never make two runs of one tick or window.
//! Every decision about time is in [`sluice_proto::schedule`], which takes the clock as an
//! argument.
//!
//! It runs as a task of its own for each leadership term ([`keep`]), beside the loop that
//! handles events, so a long pass (many schedules, wide backfills) never holds events up.
//! Its writes to schedule, backfill and pool records are revision-checked like the loop's
//! own: when both change one record at once, the later write reads it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sluice_proto::schedule::Schedule;
use sluice_proto::{
    BackfillRecord, ControlAction, ControlRequest, RunState, SCHEMA_VERSION, ScheduleRecord, Submission, WorkflowSpec,
    encode, names,
};

use sluice_client::{ClientError, requests, stores};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::announce;
use crate::error::{NatsContext, ServiceError};
use crate::inbox::{Inbound, Reports};
use crate::store;
use crate::topology::Topology;

/// How often schedules and backfills are looked at (a tick fires within about this).
pub const EVERY: Duration = Duration::from_secs(1);
/// Passes between copies of the workers' kinds into the pool records (and the pools'
/// schemas sent to the loop).
const POOL_KINDS_EVERY_PASSES: u32 = 5;

/// The timekeeper of one leadership term: a [`pass`] every [`EVERY`], and at once when `wake`
/// is notified (a backfill's run ended: its next window need not wait for the clock), and
/// every few passes the pools' kinds and schemas refreshed from the registry, until `term` is
/// cancelled (a pass in progress stops at once). A failure is reported to the loop, which
/// ends the term.
pub async fn keep(topology: Topology, reports: Reports, wake: Arc<Notify>, term: CancellationToken) {
    let mut clock = tokio::time::interval(EVERY);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes = 0u32;
    loop {
        let done = tokio::select! {
            _ = term.cancelled() => return,
            done = async {
                let timed = tokio::select! {
                    _ = clock.tick() => true,
                    _ = wake.notified() => false,
                };
                if !timed {
                    // Woken early: only the pass (the pools' refresh keeps to the clock).
                    return pass(&topology, Utc::now()).await.map(|()| None);
                }
                let done = tick(&topology, passes).await;
                passes = passes.wrapping_add(1);
                done
            } => done,
        };
        let report = match done {
            Ok(None) => None,
            Ok(Some(schemas)) => Some(Inbound::PoolSchemas(schemas)),
            Err(error) => Some(Inbound::TaskFailed(error)),
        };
        let failed = matches!(report, Some(Inbound::TaskFailed(_)));
        if let Some(report) = report
            && reports.send(report).await.is_err()
        {
            return;
        }
        if failed {
            return;
        }
    }
}

/// One pass at the current time; every few passes, the pools' schemas too.
async fn tick(topology: &Topology, passes: u32) -> Result<Option<BTreeMap<String, u32>>, ServiceError> {
    pass(topology, Utc::now()).await?;
    if (passes + 1).is_multiple_of(POOL_KINDS_EVERY_PASSES) {
        return Ok(Some(announce::refresh_pools(topology).await?));
    }
    Ok(None)
}

/// The identity the coordinator's own control requests go out under (a cancelled
/// backfill cancels its runs through the same path a user's cancel takes).
pub const COORDINATOR_IDENTITY: &str = "coordinator";

/// One pass over every schedule and backfill at `now`.
pub async fn pass(topology: &Topology, now: DateTime<Utc>) -> Result<(), ServiceError> {
    for key in keys(topology, &topology.schedules, names::SCHEDULES_BUCKET).await? {
        schedule(topology, &key, now).await?;
    }
    for key in keys(topology, &topology.backfills, names::BACKFILLS_BUCKET).await? {
        backfill(topology, &key, now).await?;
    }
    Ok(())
}

async fn keys(topology: &Topology, store: &kv::Store, bucket: &str) -> Result<Vec<String>, ServiceError> {
    // One cheap request when there is nothing (the common case), instead of a key listing.
    let stream = topology.js.get_stream_no_info(format!("KV_{bucket}")).await.context("opening a bucket")?;
    if stream.get_info().await.context("reading a bucket's state")?.state.messages == 0 {
        return Ok(Vec::new());
    }
    match store.keys().await {
        Ok(keys) => keys.try_collect().await.context("listing keys"),
        Err(error) => Err(error).context("listing keys"),
    }
}

/// A record with its revision; an unreadable one is reported and skipped, not fatal.
async fn entry<T: serde::de::DeserializeOwned + sluice_proto::messages::Versioned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, ServiceError> {
    match stores::entry(store, key).await {
        Err(ClientError::Codec(error)) => {
            tracing::error!(%error, key, "record cannot be read; skipped");
            Ok(None)
        }
        other => Ok(other?),
    }
}

/// Submits the runs of ticks that are due, then records how far ticks are handled. A
/// record changed meanwhile (a user paused it, another coordinator got there first) fails
/// the revision check and is looked at again on the next pass.
async fn schedule(topology: &Topology, name: &str, now: DateTime<Utc>) -> Result<(), ServiceError> {
    let Some((mut record, revision)) = entry::<ScheduleRecord>(&topology.schedules, name).await? else {
        return Ok(());
    };
    if record.paused {
        return Ok(());
    }
    let evaluated = WorkflowSpec::parse(&record.workflow)
        .map_err(|error| error.to_string())
        .and_then(|spec| Ok((Schedule::from_spec(&record.schedule, spec.timezone.as_deref())?, spec)));
    let (schedule, spec) = match evaluated {
        Ok(evaluated) => evaluated,
        Err(error) => {
            tracing::error!(schedule = name, %error, "schedule cannot be evaluated; skipped");
            return Ok(());
        }
    };
    let plan = schedule.plan(record.handled_until, now);
    if plan.fire.is_empty() && plan.skipped == 0 {
        return Ok(());
    }
    for tick in &plan.fire {
        let key = names::schedule_tick_key(name, tick);
        let submission = Submission {
            schema_version: SCHEMA_VERSION,
            run_id: sluice_proto::RunId::new(),
            workflow: record.workflow.clone(),
            window: Some(schedule.window.at(*tick, schedule.zone)),
            params: Default::default(),
            idempotency_key: Some(key.clone()),
            submitted_at: Some(*tick),
            origin: Some(sluice_proto::messages::schedule_origin(name)),
        };
        let (_, duplicate) = requests::submit(&topology.js, &submission, &key).await?;
        record.last_tick = Some(*tick);
        if !duplicate {
            record.last_run = Some(submission.run_id);
            tracing::info!(schedule = name, %tick, run = %submission.run_id, "scheduled run submitted");
        }
    }
    if plan.skipped > 0 {
        tracing::warn!(schedule = name, skipped = plan.skipped, catchup = %schedule.catchup, "missed ticks dropped");
        // Before the record moves on: a pass whose write is lost makes the same notice again.
        crate::notify::publish(
            &topology.js,
            &crate::notify::schedule_missed(&spec, plan.skipped, record.handled_until, now),
        )
        .await?;
    }
    record.handled_until = plan.handled_until;
    record.skipped_ticks += plan.skipped as u64;
    record.updated_at = now;
    if let Err(error) = topology.schedules.update(name, encode(&record)?.into(), revision).await {
        tracing::info!(schedule = name, %error, "schedule changed meanwhile; looking again next pass");
    }
    Ok(())
}

/// Keeps up to `max_parallel_runs` of a backfill's windows in flight, in order; finishes
/// the backfill when every window's run has ended; carries out a cancellation.
async fn backfill(topology: &Topology, key: &str, now: DateTime<Utc>) -> Result<(), ServiceError> {
    let Some((mut record, revision)) = entry::<BackfillRecord>(&topology.backfills, key).await? else {
        return Ok(());
    };
    if record.finished_at.is_some() {
        return Ok(());
    }
    let cancelled = record.state == RunState::Cancelled;
    let mut changed = false;
    let mut in_flight = 0;
    if cancelled {
        // A pass that submitted windows may have lost its write to the user's cancel: a window
        // past `next` whose run exists was submitted, and must be seen (and cancelled) too.
        let reach = (record.next as usize + record.max_parallel_runs as usize).min(record.windows.len());
        for index in record.next as usize..reach {
            let window = &record.windows[index];
            if window.skip.is_none() && store::load_run(topology, &window.run_id).await?.is_some() {
                record.next = index as u32 + 1;
                changed = true;
            }
        }
    }
    let submitted = record.next as usize;
    for window in record.windows.iter_mut().take(submitted) {
        if window.skip.is_some() || window.state.is_some_and(RunState::is_terminal) {
            continue;
        }
        let state = match store::load_run(topology, &window.run_id).await? {
            Some(run) => Some(run.state),
            None => match stores::rejection(&topology.js, &window.run_id).await {
                Ok(Some(rejection)) => {
                    window.skip = Some(format!("rejected: {}", rejection.reason));
                    Some(RunState::Failed)
                }
                _ => None,
            },
        };
        if state != window.state {
            window.state = state;
            changed = true;
        }
        if cancelled && state == Some(RunState::Running) {
            let cancel = ControlRequest::new(ControlAction::Cancel, Some(window.run_id), COORDINATOR_IDENTITY);
            requests::send_control(&topology.js, COORDINATOR_IDENTITY, &cancel).await?;
        }
        if !state.is_some_and(RunState::is_terminal) {
            in_flight += 1;
        }
    }
    while !cancelled && (record.next as usize) < record.windows.len() && in_flight < record.max_parallel_runs {
        let window = &record.windows[record.next as usize];
        record.next += 1;
        changed = true;
        if window.skip.is_some() {
            continue;
        }
        let submission = Submission {
            schema_version: SCHEMA_VERSION,
            run_id: window.run_id,
            workflow: record.spec_yaml.clone(),
            window: Some(window.window),
            params: Default::default(),
            idempotency_key: None,
            submitted_at: Some(now),
            origin: Some(sluice_proto::messages::backfill_origin(&record.id)),
        };
        requests::submit(&topology.js, &submission, &window.run_id.to_string()).await?;
        in_flight += 1;
    }
    let all_submitted = cancelled || record.next as usize == record.windows.len();
    if all_submitted && in_flight == 0 {
        let failed = record.windows.iter().any(|window| {
            window.skip.as_deref().is_some_and(|skip| skip.starts_with("rejected"))
                || matches!(window.state, Some(RunState::Failed | RunState::Cancelled))
        });
        if !cancelled {
            record.state = if failed { RunState::Failed } else { RunState::Succeeded };
        }
        record.finished_at = Some(now);
        changed = true;
        tracing::info!(backfill = key, state = record.state.as_str(), "backfill finished");
    }
    if changed && let Err(error) = topology.backfills.update(key, encode(&record)?.into(), revision).await {
        tracing::info!(backfill = key, %error, "backfill changed meanwhile; looking again next pass");
    }
    Ok(())
}
