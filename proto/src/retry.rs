//! Retry policy: how many attempts a job gets and how long to wait between them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::limits::RETRY_MAX_ATTEMPTS_LIMIT;

/// How the delay grows between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `initial`, `2 × initial`, `4 × initial`, … capped at `max`.
    #[default]
    Exponential,
    /// Always `initial`.
    Fixed,
}

/// `retry:` in `defaults` or on a job. Every field has a default, so `retry: {max_attempts: 5}`
/// is enough.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default = "default_initial")]
    pub initial: HumanDuration,
    #[serde(default = "default_max")]
    pub max: HumanDuration,
    /// Spread each delay randomly over [delay/2, delay] so retries of many jobs do not
    /// arrive together.
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_max() -> HumanDuration {
    HumanDuration::from_secs(600)
}
fn default_jitter() -> bool {
    true
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff: Backoff::default(),
            initial: default_initial(),
            max: default_max(),
            jitter: default_jitter(),
        }
    }
}

impl RetryPolicy {
    /// Checks the policy's own consistency; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if self.max_attempts > RETRY_MAX_ATTEMPTS_LIMIT {
            return Err(format!(
                "retry.max_attempts is {}, the limit is {RETRY_MAX_ATTEMPTS_LIMIT}",
                self.max_attempts
            ));
        }
        if self.initial > self.max {
            return Err(format!("retry.initial ({}) is longer than retry.max ({})", self.initial, self.max));
        }
        Ok(())
    }

    /// Whether attempt number `attempt` (1-based) that just failed may be followed by another.
    pub fn allows_another_after(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// Delay before the attempt after `failed_attempt`. `jitter_fraction` in [0, 1] comes
    /// from the caller's random source, so this stays deterministic.
    pub fn delay_after(&self, failed_attempt: u32, jitter_fraction: f64) -> Duration {
        let initial = self.initial.as_duration();
        let base = match self.backoff {
            Backoff::Fixed => initial,
            Backoff::Exponential => {
                let exponent = failed_attempt.saturating_sub(1).min(32);
                initial.saturating_mul(1u32 << exponent.min(31))
            }
        };
        let capped = base.min(self.max.as_duration());
        if self.jitter {
            let fraction = jitter_fraction.clamp(0.0, 1.0);
            capped.mul_f64(0.5 + 0.5 * fraction)
        } else {
            capped
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_and_caps() {
        let policy = RetryPolicy {
            jitter: false,
            initial: HumanDuration::from_secs(10),
            max: HumanDuration::from_secs(60),
            ..Default::default()
        };
        let delays: Vec<u64> = (1..=5).map(|attempt| policy.delay_after(attempt, 0.0).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_half_and_full_delay() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay_after(1, 0.0), Duration::from_secs(5));
        assert_eq!(policy.delay_after(1, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let policy = RetryPolicy { jitter: false, ..Default::default() };
        assert_eq!(policy.delay_after(u32::MAX, 0.0), Duration::from_secs(600));
    }
}
