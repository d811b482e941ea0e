//! A job's trigger rule (`when:`) applied to how the jobs it needs ended: one pure function,
//! so every place that decides whether a job may start decides it the same way.

use sluice_proto::JobState;
use sluice_proto::spec::When;

/// What a job that has not started does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Trigger {
    /// Not yet decidable: something it needs (that matters to its rule) is unfinished.
    Wait,
    /// Its rule is met: it may start.
    Run,
    /// Its rule can no longer be met: it is skipped, for this reason.
    Skip(String),
}

/// Decides a job by its rule from the states of the jobs it needs, in the order it lists
/// them (the first one that decides is named).
///
/// - `on_success`: runs once every need completed; skipped as soon as one failed, was
///   skipped or cancelled (it cannot complete any more, so there is no point waiting).
/// - `on_failure`: once every need is finished, runs if at least one failed, else skipped.
///   A need skipped because something before it failed does not count as failed: list the
///   jobs whose failure matters.
/// - `always`: runs once every need is finished, however each ended.
pub(super) fn trigger<'a>(when: &When, needs: impl IntoIterator<Item = (&'a str, JobState)>) -> Trigger {
    let mut all_completed = true;
    let mut all_finished = true;
    let mut failed = false;
    for (need, state) in needs {
        match when {
            When::OnFailure | When::Always => {}
            // A validated workflow has no unknown rule; it is read as the default.
            When::OnSuccess | When::Unknown(_) => {
                if matches!(state, JobState::Failed | JobState::Skipped | JobState::Cancelled) {
                    return Trigger::Skip(format!("skipped: job `{need}` did not complete"));
                }
            }
        }
        all_completed &= state == JobState::Completed;
        all_finished &= state.is_terminal();
        failed |= state == JobState::Failed;
    }
    match when {
        When::OnSuccess | When::Unknown(_) if all_completed => Trigger::Run,
        When::OnSuccess | When::Unknown(_) => Trigger::Wait,
        _ if !all_finished => Trigger::Wait,
        When::Always => Trigger::Run,
        When::OnFailure if failed => Trigger::Run,
        When::OnFailure => Trigger::Skip("skipped: no job it needs failed (`when: on_failure`)".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    fn decide(when: When, states: &[JobState]) -> Trigger {
        let names = ["a", "b", "c"];
        trigger(&when, names.iter().copied().zip(states.iter().copied()))
    }

    fn skipped(trigger: &Trigger) -> bool {
        matches!(trigger, Trigger::Skip(_))
    }

    #[test]
    fn on_success_runs_when_all_completed_and_skips_as_soon_as_one_cannot() {
        assert_eq!(decide(When::OnSuccess, &[]), Trigger::Run, "nothing needed");
        assert_eq!(decide(When::OnSuccess, &[Completed, Completed]), Trigger::Run);
        assert_eq!(decide(When::OnSuccess, &[Completed, Running]), Trigger::Wait);
        assert_eq!(decide(When::OnSuccess, &[Blocked, Completed]), Trigger::Wait);
        assert_eq!(
            decide(When::OnSuccess, &[Running, Failed]),
            Trigger::Skip("skipped: job `b` did not complete".into()),
            "skipped at once, while `a` still runs, naming the need"
        );
        assert!(skipped(&decide(When::OnSuccess, &[Skipped, Completed])));
        assert!(skipped(&decide(When::OnSuccess, &[Cancelled])));
    }

    #[test]
    fn on_failure_waits_for_every_need_then_runs_only_if_one_failed() {
        assert_eq!(decide(When::OnFailure, &[Failed, Running]), Trigger::Wait, "waits for `b`");
        assert_eq!(decide(When::OnFailure, &[Failed, Completed]), Trigger::Run);
        assert_eq!(decide(When::OnFailure, &[Completed, Skipped, Failed]), Trigger::Run);
        assert!(skipped(&decide(When::OnFailure, &[Completed, Completed])), "everything succeeded");
        assert!(skipped(&decide(When::OnFailure, &[Skipped, Completed])), "a skip is not a failure");
        assert_eq!(decide(When::OnFailure, &[Completed, Retrying]), Trigger::Wait, "a retry may still fail");
    }

    #[test]
    fn always_runs_once_every_need_is_finished_however_it_ended() {
        assert_eq!(decide(When::Always, &[Completed, Completed]), Trigger::Run);
        assert_eq!(decide(When::Always, &[Failed, Skipped, Cancelled]), Trigger::Run);
        assert_eq!(decide(When::Always, &[Failed, Queued]), Trigger::Wait);
        assert_eq!(decide(When::Always, &[Waiting]), Trigger::Wait, "a parent waits for its children");
    }
}
