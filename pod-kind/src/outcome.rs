//! What a Job's (and its pod's) status means for the attempt, and which Jobs are orphans.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use sluice_proto::spec::EXEC_PERMANENT_EXIT_CODE;

use crate::manifest::LABEL_ATTEMPT;

/// How a Job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    /// Its pod failed; `permanent` when it exited with 78 (as `exec` jobs say "do not retry").
    Failed {
        message: String,
        permanent: bool,
    },
    /// `activeDeadlineSeconds` passed: the job's timeout.
    TimedOut {
        message: String,
    },
}

/// The end of `job`, if it has ended: its `Complete` or `Failed` condition, else its pod
/// counts (a Job whose status a controller has not summed up yet).
pub fn job_end(job: &Job) -> Option<JobEnd> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        let message = condition.message.clone().unwrap_or_default();
        match (condition.type_.as_str(), condition.reason.as_deref()) {
            ("Complete", _) => return Some(JobEnd::Succeeded),
            ("Failed", Some("DeadlineExceeded")) => return Some(JobEnd::TimedOut { message }),
            ("Failed", reason) => {
                let message = match reason {
                    Some(reason) if message.is_empty() => reason.to_owned(),
                    Some(reason) => format!("{reason}: {message}"),
                    None => message,
                };
                return Some(JobEnd::Failed { message, permanent: false });
            }
            _ => {}
        }
    }
    if status.succeeded.unwrap_or(0) > 0 {
        return Some(JobEnd::Succeeded);
    }
    if status.failed.unwrap_or(0) > 0 {
        return Some(JobEnd::Failed { message: "its pod failed".into(), permanent: false });
    }
    None
}

/// Container waiting reasons no retry fixes: the image cannot be had, or the pod's spec
/// cannot be run (a missing Secret or key, a bad command).
const PERMANENT_WAITING: [&str; 6] = [
    "ErrImageNeverPull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why `pod` can never run, if it cannot (its container waits for a reason in
/// [`PERMANENT_WAITING`]).
pub fn pod_problem(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status.container_statuses.iter().flatten().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        PERMANENT_WAITING.contains(&reason).then(|| match waiting.message.as_deref() {
            Some(message) if !message.is_empty() => format!("the pod cannot run: {reason}: {message}"),
            _ => format!("the pod cannot run: {reason}"),
        })
    })
}

/// How `pod`'s container ended, if it did: its exit code and reason.
pub fn pod_exit(pod: &Pod) -> Option<(i32, Option<String>)> {
    let status = pod.status.as_ref()?;
    status.container_statuses.iter().flatten().find_map(|container| {
        let terminated = container.state.as_ref()?.terminated.as_ref()?;
        Some((terminated.exit_code, terminated.reason.clone()))
    })
}

/// Whether the pod's container has started, so its log can be read.
pub fn has_started(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|status| {
        status.container_statuses.iter().flatten().any(|container| {
            container.state.as_ref().is_some_and(|state| state.running.is_some() || state.terminated.is_some())
        })
    })
}

/// A failure's message with what the pod said (exit code 78 makes it permanent).
pub fn with_exit(end: JobEnd, exit: Option<(i32, Option<String>)>) -> JobEnd {
    match (end, exit) {
        (JobEnd::Failed { message, .. }, Some((code, reason))) => {
            let reason = reason.map(|reason| format!(" ({reason})")).unwrap_or_default();
            JobEnd::Failed {
                message: format!("{message}; its container exited with code {code}{reason}"),
                permanent: code == EXEC_PERMANENT_EXIT_CODE,
            }
        }
        (end, _) => end,
    }
}

/// A Job an earlier attempt of the same (run, job) left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Orphan {
    pub name: String,
    pub attempt: Option<u32>,
    /// What it had come to: succeeded, failed (why), timed out, running.
    pub status: String,
}

/// The orphans among `found` (Jobs of this run and job path), oldest attempt first: every
/// one, since this attempt's own Job is created only after they are gone.
pub fn orphans(found: &[Job]) -> Vec<Orphan> {
    let mut orphans: Vec<Orphan> = found
        .iter()
        .filter(|job| job.metadata.deletion_timestamp.is_none())
        .map(|job| Orphan {
            name: job.metadata.name.clone().unwrap_or_default(),
            attempt: job.metadata.labels.as_ref().and_then(|labels| labels.get(LABEL_ATTEMPT)?.parse().ok()),
            status: describe(job),
        })
        .collect();
    orphans.sort_by_key(|orphan| (orphan.attempt, orphan.name.clone()));
    orphans
}

/// A Job's state in a few words.
pub fn describe(job: &Job) -> String {
    match job_end(job) {
        Some(JobEnd::Succeeded) => "succeeded".into(),
        Some(JobEnd::Failed { message, .. }) => format!("failed ({message})"),
        Some(JobEnd::TimedOut { .. }) => "timed out".into(),
        None => match job.status.as_ref().and_then(|status| status.active).unwrap_or(0) {
            0 => "not running yet".into(),
            active => format!("still running ({active} active pod{})", if active == 1 { "" } else { "s" }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sluice-x-1", "labels": {LABEL_ATTEMPT: "1"}},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn conditions_map_to_success_failure_and_timeout() {
        let complete = job(serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}));
        assert_eq!(job_end(&complete), Some(JobEnd::Succeeded));
        let failed = job(
            serde_json::json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        assert_eq!(
            job_end(&failed),
            Some(JobEnd::Failed {
                message: "BackoffLimitExceeded: Job has reached the specified backoff limit".into(),
                permanent: false
            })
        );
        let deadline = job(
            serde_json::json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}),
        );
        assert!(matches!(job_end(&deadline), Some(JobEnd::TimedOut { .. })));
    }

    #[test]
    fn a_running_job_or_a_false_condition_has_not_ended() {
        assert_eq!(job_end(&job(serde_json::json!({"active": 1}))), None);
        assert_eq!(job_end(&job(serde_json::json!({"conditions": [{"type": "Failed", "status": "False"}]}))), None);
        assert_eq!(job_end(&Job::default()), None);
    }

    #[test]
    fn counts_stand_in_for_conditions() {
        assert_eq!(job_end(&job(serde_json::json!({"succeeded": 1}))), Some(JobEnd::Succeeded));
        assert!(matches!(
            job_end(&job(serde_json::json!({"failed": 1}))),
            Some(JobEnd::Failed { permanent: false, .. })
        ));
    }

    #[test]
    fn image_pull_and_config_errors_are_permanent_problems() {
        let waiting = |reason: &str| {
            pod(
                serde_json::json!({"containerStatuses": [{"name": "job", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "details"}}}]}),
            )
        };
        assert_eq!(
            pod_problem(&waiting("ImagePullBackOff")).as_deref(),
            Some("the pod cannot run: ImagePullBackOff: details")
        );
        assert!(pod_problem(&waiting("CreateContainerConfigError")).is_some());
        assert_eq!(pod_problem(&waiting("ContainerCreating")), None, "still starting");
        assert_eq!(pod_problem(&waiting("ErrImagePull")), None, "a pull may succeed on the kubelet's retry");
    }

    #[test]
    fn exit_code_78_makes_a_failure_permanent_and_every_failure_names_its_code() {
        let failed = JobEnd::Failed { message: "BackoffLimitExceeded".into(), permanent: false };
        assert_eq!(
            with_exit(failed.clone(), Some((78, Some("Error".into())))),
            JobEnd::Failed {
                message: "BackoffLimitExceeded; its container exited with code 78 (Error)".into(),
                permanent: true
            }
        );
        assert!(matches!(with_exit(failed, Some((1, None))), JobEnd::Failed { permanent: false, .. }));
        assert_eq!(with_exit(JobEnd::Succeeded, Some((0, None))), JobEnd::Succeeded);
    }

    #[test]
    fn orphans_are_listed_oldest_first_with_what_they_came_to() {
        let mut second = job(serde_json::json!({"active": 1}));
        second.metadata.name = Some("sluice-x-2".into());
        second.metadata.labels = Some([(LABEL_ATTEMPT.to_owned(), "2".to_owned())].into());
        let first = job(serde_json::json!({"succeeded": 1}));
        let found = orphans(&[second, first]);
        assert_eq!(
            found,
            vec![
                Orphan { name: "sluice-x-1".into(), attempt: Some(1), status: "succeeded".into() },
                Orphan { name: "sluice-x-2".into(), attempt: Some(2), status: "still running (1 active pod)".into() },
            ]
        );
        let mut going: Job = job(serde_json::json!({}));
        going.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2026-01-01T00:00:00Z")).unwrap());
        assert!(orphans(&[going]).is_empty(), "a Job being deleted is no orphan to delete again");
    }
}
