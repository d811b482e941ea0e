//! Carries out what the engine decided: every save is written (revision-checked, in the
//! engine's order), then every dispatch, scheduled retry, dead letter, notice, withdrawal
//! and stop is published.
//! It owns the writer's state: the revisions the next writes are checked against, and the
//! schema each pool's workers read.

use std::collections::HashMap;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use sluice_proto::{DeadLetter, JobMessage, RunId};

use crate::dispatch::{
    PoolFacts, publish_dead_letters, publish_jobs, publish_retries, resolve_dead_letters, stop_run, withdraw,
    withdraw_job,
};
use crate::engine::{Effect, Run};
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::notify;
use crate::store::{self, Revisions, saves_of, write_all};

pub struct Outbox {
    pub js: jetstream::Context,
    /// The revision each run and job record was last written at, by this term.
    pub revisions: Revisions,
    /// The schema each pool's live workers read (from the registry, every few seconds):
    /// jobs are dispatched at it, so workers not yet upgraded can read them; and each
    /// pool's max timeout (from the pool records), which caps its jobs' timeouts.
    pub pools: PoolFacts,
    /// Trace ids of runs whose submitter sent none.
    pub rng: StdRng,
    /// What is counted of the effects carried out (and of the engine's inputs).
    pub metrics: Metrics,
}

impl Outbox {
    pub fn new(js: jetstream::Context, metrics: Metrics) -> Self {
        Self { js, revisions: Revisions::default(), pools: PoolFacts::default(), rng: StdRng::from_os_rng(), metrics }
    }

    /// Writes every save, then publishes every dispatch. `active` holds the runs the
    /// effects came from (records are read from it a chunk at a time, when written).
    pub async fn carry_out(&mut self, effects: Vec<Effect>, active: &HashMap<RunId, Run>) -> Result<(), ServiceError> {
        if effects.is_empty() {
            return Ok(());
        }
        let job_record = |run_id: &RunId, job: &str| active.get(run_id)?.job(job);
        let written = |took| self.metrics.written_in(took);
        write_all(&self.js, saves_of(&effects), &mut self.revisions, job_record, written).await?;
        let dispatches: Vec<(&RunId, &str, u32)> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Dispatch { run_id, job, generation } => Some((run_id, job.as_str(), *generation)),
                _ => None,
            })
            .collect();
        // A chunk at a time: the messages for a 100,000-child spawn are never all in memory.
        for chunk in dispatches.chunks(store::WRITE_CHUNK) {
            let messages: Vec<JobMessage> = chunk
                .iter()
                .filter_map(|&(run_id, job, generation)| {
                    let message = active.get(run_id)?.dispatch_message(job);
                    // A later effect dispatches the newer generation.
                    (message.generation == generation).then_some(message)
                })
                .collect();
            self.dispatch(&messages, active).await?;
        }
        let retries: Vec<(JobMessage, DateTime<Utc>)> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::ScheduleRetry { run_id, job, generation, after_attempt, at } => {
                    let message = active.get(run_id)?.retry_message(job, *after_attempt);
                    // A later effect dispatches the newer generation.
                    (message.generation == *generation).then_some((message, *at))
                }
                _ => None,
            })
            .collect();
        for chunk in retries.chunks(store::WRITE_CHUNK) {
            self.schedule(chunk, active).await?;
        }
        let letters: Vec<&DeadLetter> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::DeadLetter(letter) => Some(&**letter),
                _ => None,
            })
            .collect();
        publish_dead_letters(&self.js, &letters).await?;
        for letter in &letters {
            self.metrics.dead_lettered(&letter.job.pool);
        }
        // After the saves that make them true (a crash before leaves them to the next
        // leader's recovery, which makes the same notices again).
        notify::publish(&self.js, &notify::of_effects(&effects, active)).await?;
        for effect in &effects {
            match effect {
                Effect::Withdraw(run_id) => withdraw(&self.js, run_id).await?,
                Effect::WithdrawJob { run_id, job } => withdraw_job(&self.js, run_id, job).await?,
                Effect::StopRun(run_id) => stop_run(&self.js, run_id).await?,
                Effect::ResolveDeadLetters { run_id, jobs } => {
                    resolve_dead_letters(&self.js, run_id, jobs.as_deref()).await?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Publishes scheduled retries of active runs' jobs, at the schema each pool reads.
    pub async fn schedule(
        &mut self,
        retries: &[(JobMessage, DateTime<Utc>)],
        active: &HashMap<RunId, Run>,
    ) -> Result<(), ServiceError> {
        let batch: Vec<_> = retries
            .iter()
            .filter_map(|(message, at)| Some((message, active.get(&message.run_id)?.record(), *at)))
            .collect();
        publish_retries(&self.js, &batch, &self.pools).await?;
        Ok(())
    }

    /// Publishes job messages of active runs to their pools, at the schema each pool reads.
    pub async fn dispatch(
        &mut self,
        messages: &[JobMessage],
        active: &HashMap<RunId, Run>,
    ) -> Result<(), ServiceError> {
        let batch: Vec<_> =
            messages.iter().filter_map(|message| Some((message, active.get(&message.run_id)?.record()))).collect();
        publish_jobs(&self.js, &batch, &self.pools).await?;
        Ok(())
    }
}
