//! sluice-pod: the `pod` job kind, Argo-style: each attempt of a `run: pod` job is one
//! Kubernetes batch/v1 Job (one pod, `backoffLimit: 0`: Sluice does the retries).
//!
//! - [`manifest`] builds the typed Job from the job context (placeholders substituted in the
//!   typed values, never in YAML text; labels for the run, job path, attempt and pool;
//!   `activeDeadlineSeconds` from the timeout; `{secret: NAME}` as a `secretKeyRef`) and
//!   admits the attempt first: its image must match the pool's `--allow-image` patterns
//!   ([`allow`]) and its secrets be among the pool's `--pod-secret` names.
//! - [`outcome`] reads a Job's and its pod's status: succeeded, failed (retryable; exit code
//!   78 permanent), timed out, or a pod that can never run (image pull, bad spec: permanent);
//!   and which Jobs earlier attempts left behind.
//! - [`kind`] does the I/O: deletes orphans, creates the Job, watches it while following the
//!   pod's log into the attempt's log, deletes it at the end, on cancellation and on timeout.
//!
//! kube and k8s-openapi live here only, so the worker crate stays free of them.

pub mod allow;
pub mod error;
pub mod kind;
pub mod manifest;
pub mod outcome;

pub use allow::ImageAllowList;
pub use error::PodError;
pub use kind::PodKind;
pub use manifest::PoolPolicy;
pub use sluice_proto::pod::POD_KIND;
