//! How a worker runs: [`WorkerConfig`], its defaults and the check of its settings.

use std::time::Duration;

use sluice_proto::spec::check_name;

use crate::error::WorkerError;
use crate::limits::{CONCURRENCY_MAX, PREFETCH_MAX};

/// Jobs run at once, unless set.
pub const CONCURRENCY_DEFAULT: usize = 4;
/// Jobs fetched ahead per slot while jobs are short: a worker then holds at most four jobs
/// per slot, Celery's default prefetch multiplier.
pub const PREFETCH_PER_SLOT_DEFAULT: usize = 3;
/// How long running jobs may take to finish on shutdown before they are handed back:
/// unlimited (`None`), so a drain never kills a running job. A job's own timeout (capped at
/// its pool's `max_timeout`) bounds the wait.
pub const SHUTDOWN_GRACE_DEFAULT: Option<Duration> = None;
/// Most jobs `--max-jobs` may ask for.
pub const MAX_JOBS_MAX: u64 = 1_000_000_000;
/// Default longest retry delay waited out with a NAK; longer ones become message schedules.
pub const NAK_DELAY_MAX_DEFAULT: Duration = Duration::from_secs(30);
/// How long a worker waits, once Sluice is set up, for its pool to be declared before it
/// refuses to start (a pool declared meanwhile, by `sluice pool apply`, is served).
pub const POOL_WAIT_DEFAULT: Duration = Duration::from_secs(10);

// The defaults are settings `check` accepts.
const _: () = assert!(CONCURRENCY_DEFAULT >= 1 && CONCURRENCY_DEFAULT <= CONCURRENCY_MAX);
const _: () = assert!(CONCURRENCY_DEFAULT * PREFETCH_PER_SLOT_DEFAULT <= PREFETCH_MAX);

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub pool: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// On shutdown, how long running jobs may take to finish before they are handed back
    /// (`None`: until they finish).
    pub shutdown_grace: Option<Duration>,
    /// Shown in `status` for each attempt.
    pub worker_id: String,
    /// Retry delays up to this are a NAK with delay (the message stays pending, which keeps
    /// an autoscaled pool awake); longer ones become JetStream message schedules.
    pub nak_delay_max: Duration,
    /// Once Sluice is set up, how long to wait for the pool to be declared before refusing
    /// to start. (The pool's ack wait and max deliveries are its declaration's, read from
    /// its consumer: `sluice pool apply`.)
    pub pool_wait: Duration,
    /// Jobs fetched beyond the free slots while jobs are short (0: only for free slots);
    /// [`default_prefetch`] of the concurrency by default.
    pub prefetch: usize,
    /// Stop (and drain) once this many jobs have been run here (`--max-jobs`, for KEDA
    /// ScaledJobs); never fetches more than are left.
    pub max_jobs: Option<u64>,
    /// Stop once no job has run or waited here for this long (`--exit-when-idle`).
    pub exit_when_idle: Option<Duration>,
}

/// Three jobs ahead per slot (at most [`PREFETCH_MAX`]): a worker then holds at most four
/// jobs per slot, Celery's default prefetch multiplier. Set `prefetch` with this when
/// changing `concurrency`.
pub fn default_prefetch(concurrency: usize) -> usize {
    concurrency.saturating_mul(PREFETCH_PER_SLOT_DEFAULT).min(PREFETCH_MAX)
}

impl WorkerConfig {
    pub fn new(pool: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        Self {
            pool: pool.into(),
            concurrency: CONCURRENCY_DEFAULT,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            worker_id: format!("{host}-{}", std::process::id()),
            nak_delay_max: NAK_DELAY_MAX_DEFAULT,
            pool_wait: POOL_WAIT_DEFAULT,
            prefetch: default_prefetch(CONCURRENCY_DEFAULT),
            max_jobs: None,
            exit_when_idle: None,
        }
    }

    /// Refuses settings the runtime cannot honour; the message names the setting.
    pub fn check(&self) -> Result<(), WorkerError> {
        let invalid = |problem: String| WorkerError::Config(format!("invalid worker setting: {problem}"));
        check_name("pool", &self.pool).map_err(invalid)?;
        if self.concurrency == 0 || self.concurrency > CONCURRENCY_MAX {
            return Err(invalid(format!("concurrency must be 1 to {CONCURRENCY_MAX}, not {}", self.concurrency)));
        }
        if self.prefetch > PREFETCH_MAX {
            return Err(invalid(format!("prefetch must be 0 to {PREFETCH_MAX}, not {}", self.prefetch)));
        }
        if let Some(jobs) = self.max_jobs
            && !(1..=MAX_JOBS_MAX).contains(&jobs)
        {
            return Err(invalid(format!("max jobs must be 1 to {MAX_JOBS_MAX}, not {jobs}")));
        }
        if self.exit_when_idle == Some(Duration::ZERO) {
            return Err(invalid("exit when idle must be longer than 0s".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefetch_is_three_per_slot_up_to_the_limit() {
        assert_eq!(default_prefetch(4), 12);
        assert_eq!(default_prefetch(1), 3);
        assert_eq!(default_prefetch(CONCURRENCY_MAX), PREFETCH_MAX);
        assert_eq!(default_prefetch(usize::MAX), PREFETCH_MAX);
    }

    #[test]
    fn the_defaults_pass_the_check() {
        assert!(WorkerConfig::new("default").check().is_ok());
    }

    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        let refused = |change: fn(&mut WorkerConfig)| {
            let mut config = WorkerConfig::new("default");
            change(&mut config);
            config.check().map_err(|error| error.to_string())
        };
        let zero = refused(|config| config.concurrency = 0);
        assert_eq!(zero, Err("invalid worker setting: concurrency must be 1 to 1024, not 0".into()));
        let many = refused(|config| config.concurrency = CONCURRENCY_MAX + 1);
        assert_eq!(many, Err("invalid worker setting: concurrency must be 1 to 1024, not 1025".into()));
        let prefetch = refused(|config| config.prefetch = PREFETCH_MAX + 1);
        assert_eq!(prefetch, Err("invalid worker setting: prefetch must be 0 to 1024, not 1025".into()));
        assert!(refused(|config| config.pool = "no spaces".into()).is_err());
        let jobs = refused(|config| config.max_jobs = Some(0));
        assert_eq!(jobs, Err("invalid worker setting: max jobs must be 1 to 1000000000, not 0".into()));
        let idle = refused(|config| config.exit_when_idle = Some(Duration::ZERO));
        assert_eq!(idle, Err("invalid worker setting: exit when idle must be longer than 0s".into()));
        assert_eq!(refused(|config| config.prefetch = PREFETCH_MAX), Ok(()));
    }
}
