//! Why a pod job's attempt could not be carried out, and whether another attempt may be.

use sluice_worker::JobError;

/// A failure talking to Kubernetes about an attempt.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A request failed; `retryable` says whether the same request may succeed later.
    #[error("{context}: {message}")]
    Kube { context: String, message: String, retryable: bool },
    /// Someone else deleted the attempt's Job.
    #[error("the Job {0} was deleted while it ran (not by Sluice)")]
    Gone(String),
}

impl PodError {
    /// The API server refusing a request for its content (400 bad request, 403 forbidden:
    /// the worker's RBAC, 404, 422 invalid) repeats every time; timeouts, conflicts, throttling,
    /// server errors and lost connections may pass.
    pub fn kube(context: impl Into<String>, error: kube::Error) -> Self {
        let retryable = match &error {
            kube::Error::Api(status) => !matches!(status.code, 400 | 403 | 404 | 422),
            _ => true,
        };
        let message = match &error {
            kube::Error::Api(status) if status.code == 403 => {
                format!(
                    "{error} (the worker's service account needs RBAC to create, watch and delete batch/v1 Jobs and read pods and their logs)"
                )
            }
            _ => error.to_string(),
        };
        Self::Kube { context: context.into(), message, retryable }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Kube { retryable, .. } => *retryable,
            Self::Gone(_) => true,
        }
    }
}

impl From<PodError> for JobError {
    fn from(error: PodError) -> Self {
        if error.is_retryable() {
            JobError::retryable(error.to_string())
        } else {
            JobError::permanent(error.to_string())
        }
    }
}
