//! The `pod` kind itself: the I/O around the pure parts. One attempt = clear away orphans of
//! earlier attempts, create the Job, watch it (and its pod) to its end while streaming the
//! pod's log, delete it.

use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncBufReadExt, Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, WatchEvent, WatchParams};
use sluice_proto::{LogStream, Window};
use sluice_worker::logs::LogSink;
use sluice_worker::{JobContext, JobError, Output};
use tokio::task::JoinHandle;

use crate::error::PodError;
use crate::manifest::{CONTAINER, PoolPolicy, build_job, selector_of_attempt, selector_of_job};
use crate::outcome::{JobEnd, has_started, job_end, orphans, pod_exit, pod_problem, with_exit};

/// How often the attempt's pods are looked at (for a problem, or a log to follow).
pub const POD_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long a Job's end waits for the rest of its pod's log.
pub const LOG_DRAIN_WAIT: Duration = Duration::from_secs(5);
/// Longest a watch request stays open before it is renewed, in seconds (the API server's
/// limit applies too).
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Pause after a failed watch or read before trying again.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Most pods of one attempt looked at (a Job with `backoffLimit: 0` has one or two).
const PODS_LISTED_MAX: u32 = 16;
/// Most Jobs of one (run, job) listed when looking for orphans.
const ORPHANS_LISTED_MAX: u32 = 64;

/// Runs each attempt as a batch/v1 Job in one namespace.
#[derive(Clone)]
pub struct PodKind {
    client: kube::Client,
    namespace: String,
    policy: PoolPolicy,
    pod_check_interval: Duration,
}

impl PodKind {
    pub fn new(client: kube::Client, namespace: impl Into<String>, policy: PoolPolicy) -> Self {
        Self { client, namespace: namespace.into(), policy, pod_check_interval: POD_CHECK_INTERVAL }
    }

    /// Looks at pods this often (tests shorten it).
    pub fn with_pod_check_interval(mut self, interval: Duration) -> Self {
        self.pod_check_interval = interval;
        self
    }

    fn jobs(&self) -> Api<Job> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Deletes the Jobs earlier attempts of this (run, job) left (a worker died mid-attempt),
    /// recording what each had come to in its own attempt's history entry (`found_later`)
    /// and saying so in this attempt's log.
    async fn clear_orphans(&self, ctx: &JobContext) -> Result<(), PodError> {
        let listed = ListParams::default().labels(&selector_of_job(ctx)).limit(ORPHANS_LISTED_MAX);
        let found =
            self.jobs().list(&listed).await.map_err(|error| PodError::kube("listing earlier attempts' Jobs", error))?;
        for orphan in orphans(&found.items) {
            let attempt = orphan.attempt.map(|attempt| format!(" of attempt {attempt}")).unwrap_or_default();
            let text = format!(
                "sluice: the Job {}{attempt} was left by a worker that stopped; it had {}: deleting it and running afresh",
                orphan.name, orphan.status
            );
            tracing::warn!(run = %ctx.run_id, job = %ctx.job, orphan = %orphan.name, status = %orphan.status, "deleting an orphaned Job");
            ctx.log(&text);
            if let Some(earlier) = orphan.attempt {
                ctx.report_earlier_attempt(
                    earlier,
                    format!("its Job {}, found by attempt {}: {}; deleted", orphan.name, ctx.attempt, orphan.status),
                );
            }
            self.delete(&orphan.name).await?;
        }
        Ok(())
    }

    /// Deletes a Job and, in the background, its pods; one already gone is fine.
    pub async fn delete(&self, name: &str) -> Result<(), PodError> {
        match self.jobs().delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(PodError::kube(format!("deleting Job {name}"), error)),
        }
    }

    /// Watches the Job `name` until it ends, the attempt is cancelled or its pod cannot run,
    /// following the pod's log meanwhile.
    async fn watch(&self, ctx: &JobContext, name: &str) -> Result<Watched, PodError> {
        let mut log: Option<JoinHandle<()>> = None;
        let result = self.watch_inner(ctx, name, &mut log).await;
        if let Some(task) = log {
            // The log ends with the container; give it a moment, not for ever.
            let abort = task.abort_handle();
            if tokio::time::timeout(LOG_DRAIN_WAIT, task).await.is_err() {
                abort.abort();
            }
        }
        result
    }

    async fn watch_inner(
        &self,
        ctx: &JobContext,
        name: &str,
        log: &mut Option<JoinHandle<()>>,
    ) -> Result<Watched, PodError> {
        let jobs = self.jobs();
        let mut pods_checked = tokio::time::interval(self.pod_check_interval);
        'rewatch: loop {
            let current = match jobs.get_opt(name).await {
                Ok(Some(job)) => job,
                Ok(None) => return Err(PodError::Gone(name.to_owned())),
                Err(error) => {
                    tracing::warn!(%error, job = name, "cannot read a pod job's Job; retrying");
                    tokio::select! {
                        _ = ctx.cancelled() => return Ok(Watched::Cancelled),
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'rewatch,
                    }
                }
            };
            if let Some(end) = job_end(&current) {
                return Ok(Watched::Ended(self.explain(ctx, end).await));
            }
            let version = current.metadata.resource_version.clone().unwrap_or_else(|| "0".into());
            let params = WatchParams::default().fields(&format!("metadata.name={name}")).timeout(WATCH_TIMEOUT_SECS);
            let mut events = match jobs.watch(&params, &version).await {
                Ok(events) => events.boxed(),
                Err(error) => {
                    tracing::warn!(%error, job = name, "cannot watch a pod job's Job; retrying");
                    tokio::select! {
                        _ = ctx.cancelled() => return Ok(Watched::Cancelled),
                        _ = tokio::time::sleep(RETRY_PAUSE) => continue 'rewatch,
                    }
                }
            };
            loop {
                tokio::select! {
                    _ = ctx.cancelled() => return Ok(Watched::Cancelled),
                    event = events.next() => match event {
                        Some(Ok(WatchEvent::Added(job) | WatchEvent::Modified(job))) => {
                            if let Some(end) = job_end(&job) {
                                return Ok(Watched::Ended(self.explain(ctx, end).await));
                            }
                        }
                        Some(Ok(WatchEvent::Deleted(_))) => return Err(PodError::Gone(name.to_owned())),
                        Some(Ok(WatchEvent::Bookmark(_))) => {}
                        // Expired version, a broken stream, the watch's own timeout: read again.
                        Some(Ok(WatchEvent::Error(_)) | Err(_)) | None => continue 'rewatch,
                    },
                    _ = pods_checked.tick() => {
                        if let Some(problem) = self.check_pods(ctx, log).await {
                            return Ok(Watched::CannotRun(problem));
                        }
                    }
                }
            }
        }
    }

    /// Looks at the attempt's pods: a reason it can never run, or a log to start following.
    async fn check_pods(&self, ctx: &JobContext, log: &mut Option<JoinHandle<()>>) -> Option<String> {
        let listed = ListParams::default().labels(&selector_of_attempt(ctx)).limit(PODS_LISTED_MAX);
        let pods = match self.pods().list(&listed).await {
            Ok(pods) => pods.items,
            Err(error) => {
                tracing::warn!(%error, job = %ctx.job, "cannot list a pod job's pods");
                return None;
            }
        };
        if let Some(problem) = pods.iter().find_map(pod_problem) {
            return Some(problem);
        }
        if log.is_none()
            && let Some(pod) = pods.iter().find(|pod| has_started(pod))
            && let Some(pod_name) = pod.metadata.name.clone()
        {
            let (api, sink) = (self.pods(), ctx.log_sink().clone());
            *log = Some(tokio::spawn(async move { forward_log(&api, &pod_name, &sink).await }));
        }
        None
    }

    /// Adds what the pod said (its exit code) to a failure.
    async fn explain(&self, ctx: &JobContext, end: JobEnd) -> JobEnd {
        if !matches!(end, JobEnd::Failed { .. }) {
            return end;
        }
        let listed = ListParams::default().labels(&selector_of_attempt(ctx)).limit(PODS_LISTED_MAX);
        let exit = match self.pods().list(&listed).await {
            Ok(pods) => pods.items.iter().find_map(pod_exit),
            Err(_) => None,
        };
        with_exit(end, exit)
    }
}

/// How watching ended.
enum Watched {
    Ended(JobEnd),
    CannotRun(String),
    Cancelled,
}

/// The lines of `pod`'s log, followed until the container ends.
pub async fn log_lines(pods: &Api<Pod>, pod: &str) -> Result<impl Stream<Item = String> + use<>, kube::Error> {
    let params = LogParams { container: Some(CONTAINER.to_owned()), follow: true, ..LogParams::default() };
    let reader = pods.log_stream(pod, &params).await?;
    Ok(reader
        .lines()
        .take_while(|line| std::future::ready(line.is_ok()))
        .filter_map(|line| std::future::ready(line.ok())))
}

/// Sends `pod`'s log to the attempt's log (`sluice logs`), as `exec` sends stdout.
async fn forward_log(pods: &Api<Pod>, pod: &str, sink: &LogSink) {
    match log_lines(pods, pod).await {
        Ok(lines) => {
            let mut lines = std::pin::pin!(lines);
            while let Some(line) = lines.next().await {
                sink.line_waiting(LogStream::Stdout, &line).await;
            }
        }
        Err(error) => {
            tracing::warn!(%error, pod, "cannot follow a pod's log");
            sink.line(LogStream::Log, &format!("sluice: cannot follow the log of pod {pod}: {error}"));
        }
    }
}

#[async_trait]
impl sluice_worker::Job for PodKind {
    async fn perform(&self, ctx: &JobContext, window: &Window, config: &serde_json::Value) -> Result<Output, JobError> {
        let image = self.policy.admit(ctx).map_err(JobError::permanent)?;
        let job = build_job(ctx, window, config, image, &self.namespace).map_err(JobError::permanent)?;
        let name = job.metadata.name.clone().unwrap_or_default();
        self.clear_orphans(ctx).await?;
        match self.jobs().create(&PostParams::default(), &job).await {
            Ok(_) => {}
            // This very attempt's Job (a retried create whose first answer was lost).
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => return Err(PodError::kube(format!("creating Job {name}"), error).into()),
        }
        tracing::info!(run = %ctx.run_id, job = %ctx.job, attempt = ctx.attempt, kube_job = %name, "pod job created");
        let watched = self.watch(ctx, &name).await;
        // Whatever happened, the Job goes (a failed delete is logged: the next attempt's
        // orphan check finds it).
        if let Err(error) = self.delete(&name).await {
            tracing::warn!(%error, kube_job = %name, "the pod job's Job was not deleted");
            ctx.log(format!("sluice: the Job {name} was not deleted: {error}"));
        }
        match watched? {
            Watched::Ended(JobEnd::Succeeded) => Ok(Output::none()),
            Watched::Ended(JobEnd::Failed { message, permanent }) => {
                let message = format!("Job {name} failed: {message}");
                Err(if permanent {
                    JobError::permanent(message + " (a permanent failure: no further attempts)")
                } else {
                    JobError::retryable(message)
                })
            }
            Watched::Ended(JobEnd::TimedOut { message }) => Err(JobError::retryable(format!(
                "timed out: Job {name} passed its activeDeadlineSeconds ({message}); deleted"
            ))),
            Watched::CannotRun(problem) => Err(JobError::permanent(format!("Job {name}: {problem}; deleted"))),
            Watched::Cancelled => {
                Err(JobError::retryable(format!("Job {name} was deleted: the attempt was cancelled")))
            }
        }
    }
}

/// Lists Jobs by label (for tests and tools): the Jobs of every attempt of `ctx`'s job.
pub async fn jobs_of(client: &kube::Client, namespace: &str, ctx: &JobContext) -> Result<Vec<Job>, kube::Error> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default().labels(&selector_of_job(ctx))).await.map(|list| list.items)
}

/// A client from the in-cluster config (a worker in a pod) or KUBECONFIG / `~/.kube/config`.
pub async fn default_client() -> Result<kube::Client, kube::Error> {
    kube::Client::try_default().await
}
