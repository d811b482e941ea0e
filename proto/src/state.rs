//! Run and job states: closed enums, each documented with what moves a job in and out.
//!
//! ```text
//! job:  blocked ──deps done──▶ queued ──worker starts──▶ running ──ok──▶ completed
//!          │                     ▲                          │
//!          │                     └──── retrying ◀──error────┤ (attempts left)
//!          │                                                ├──error, none left──▶ failed
//!          │                                                └──ok, spawned children──▶ waiting
//!          │                                  waiting ──all children completed──▶ completed
//!          │                                          └──a child did not complete──▶ failed
//!          └──a dependency failed──▶ skipped          cancel: any unfinished job ──▶ cancelled
//! run:  running ──every job completed──▶ succeeded
//!          ├──a job failed, nothing left running──▶ failed
//!          └──sluice cancel──▶ cancelled
//! ```
//!
//! docs/architecture.md draws the same diagrams; `tests/state_diagrams.rs` checks that both
//! name every state.

use serde::{Deserialize, Serialize};

/// State of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted; some job is not finished. Left when every job is terminal.
    Running,
    /// Every job completed.
    Succeeded,
    /// A job failed (its attempts are over).
    Failed,
    /// Cancelled by a user before it finished.
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 4] = [Self::Running, Self::Succeeded, Self::Failed, Self::Cancelled];

    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// State of one job of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a job it needs. Left for `queued` when all have completed, or for
    /// `skipped` when one of them failed.
    Blocked,
    /// Written to the state store and published to its pool's subject; no worker has
    /// started it yet. Left for `running` when a worker reports the start.
    Queued,
    /// A worker runs it. Left for `completed`, `retrying` or `failed`.
    Running,
    /// An attempt failed and another is due after the retry delay. Left for `running`.
    Retrying,
    /// Its own work is done and it spawned children: it holds no worker and ends
    /// `completed` when all of them complete, `failed` when any of them does not.
    Waiting,
    /// Its work is done. Terminal.
    Completed,
    /// Its attempts are over or its error was permanent. Terminal.
    Failed,
    /// Cancelled by a user. Terminal.
    Cancelled,
    /// Never ran because a job it needs failed or the run stopped. Terminal.
    Skipped,
}

impl JobState {
    pub const ALL: [JobState; 9] = [
        Self::Blocked,
        Self::Queued,
        Self::Running,
        Self::Retrying,
        Self::Waiting,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Skipped,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled | Self::Skipped)
    }

    /// In a worker's hands or about to be: the run cannot end while any job is.
    pub fn is_in_flight(self) -> bool {
        matches!(self, Self::Queued | Self::Running | Self::Retrying)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_wire_names() {
        for state in JobState::ALL {
            let wire = rmp_serde::to_vec_named(&state).unwrap();
            let text: String = rmp_serde::from_slice(&wire).unwrap();
            assert_eq!(text, state.as_str());
        }
        for state in RunState::ALL {
            assert_eq!(RunState::parse(state.as_str()), Some(state));
        }
    }
}
