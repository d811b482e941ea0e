//! The batch/v1 Job one attempt runs as, built as a typed object from the job context
//! (placeholders substituted in each value, never in YAML text), and the checks that come
//! first: the image against the pool's allow-list, each secret against the pool's secrets.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec, ResourceRequirements, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::Digest;
use sluice_proto::pod::EnvValue;
use sluice_proto::{Window, placeholder};
use sluice_worker::JobContext;

use crate::allow::ImageAllowList;

/// Label every Job and pod of Sluice carries.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "sluice";
/// The run's id.
pub const LABEL_RUN_ID: &str = "sluice.dev/run-id";
/// The job path, or `x` and a hash of it when the path is no valid label value (too long).
pub const LABEL_JOB: &str = "sluice.dev/job";
/// The attempt number.
pub const LABEL_ATTEMPT: &str = "sluice.dev/attempt";
/// The pool (a hash like the job's when it is no valid label value).
pub const LABEL_POOL: &str = "sluice.dev/pool";
/// The full job path (labels are limited to 63 characters).
pub const ANNOTATION_JOB_PATH: &str = "sluice.dev/job-path";
/// The workflow.
pub const ANNOTATION_WORKFLOW: &str = "sluice.dev/workflow";
/// The worker that created the Job.
pub const ANNOTATION_WORKER: &str = "sluice.dev/worker";
/// The one container of the pod.
pub const CONTAINER: &str = "job";
/// The key a pool's Kubernetes Secret holds its value under: `{secret: NAME}` reads key
/// `value` of the Secret `NAME` in the pod namespace.
pub const SECRET_KEY: &str = "value";

/// What a pool's pod jobs may use: its images and its secrets.
#[derive(Clone, Debug, Default)]
pub struct PoolPolicy {
    pub images: ImageAllowList,
    /// The Kubernetes Secrets (in the pod namespace) this pool's jobs may read.
    pub secrets: BTreeSet<String>,
}

impl PoolPolicy {
    /// Why this attempt may not run (a permanent failure: the job is dead-lettered): no
    /// image, an image the allow-list refuses, a secret the pool does not have.
    pub fn admit<'a>(&self, ctx: &'a JobContext) -> Result<&'a str, String> {
        let image = ctx.image.as_deref().ok_or_else(|| {
            "a pod job needs an `image:` (a spawned child runs its workflow job's, and this one's has none)".to_owned()
        })?;
        self.images.check(image)?;
        for (name, value) in &ctx.env {
            if let EnvValue::Secret { secret } = value
                && !self.secrets.contains(secret)
            {
                let listed = if self.secrets.is_empty() {
                    "it has none (start its workers with --pod-secret NAME)".to_owned()
                } else {
                    format!("its secrets are {}", self.secrets.iter().cloned().collect::<Vec<_>>().join(", "))
                };
                return Err(format!(
                    "env `{name}`: secret `{secret}` is not available to pool `{}`: {listed}",
                    ctx.pool
                ));
            }
        }
        Ok(image)
    }
}

/// A label value for `text`: itself when Kubernetes accepts it (≤ 63 characters of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends), else `x` and 40 hex digits of its SHA-256.
pub fn label_value(text: &str) -> String {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid { text.to_owned() } else { format!("x{}", &hex(text.as_bytes())[..40]) }
}

fn hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The Job's name: one per (run, job path, generation, attempt), ≤ 63 characters of a DNS
/// label, so a retried create finds its own Job rather than making a second.
pub fn job_name(ctx: &JobContext) -> String {
    let key = format!("{}/{}/{}", ctx.run_id, ctx.job, ctx.generation);
    format!("sluice-{}-{}", &hex(key.as_bytes())[..16], ctx.attempt)
}

/// The label selector of every Job of this (run, job path), whatever the attempt.
pub fn selector_of_job(ctx: &JobContext) -> String {
    format!("{LABEL_RUN_ID}={},{LABEL_JOB}={}", label_value(&ctx.run_id.to_string()), label_value(&ctx.job))
}

/// The label selector of this attempt's pods.
pub fn selector_of_attempt(ctx: &JobContext) -> String {
    format!("{},{LABEL_ATTEMPT}={}", selector_of_job(ctx), ctx.attempt)
}

fn labels(ctx: &JobContext) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_RUN_ID.to_owned(), label_value(&ctx.run_id.to_string())),
        (LABEL_JOB.to_owned(), label_value(&ctx.job)),
        (LABEL_ATTEMPT.to_owned(), ctx.attempt.to_string()),
        (LABEL_POOL.to_owned(), label_value(&ctx.pool)),
    ])
}

/// The Job that runs this attempt of `ctx`'s job with `image` in `namespace`. Errors (a
/// placeholder without a value, resources Kubernetes would not read) are permanent.
pub fn build_job(
    ctx: &JobContext,
    window: &Window,
    config: &serde_json::Value,
    image: &str,
    namespace: &str,
) -> Result<Job, String> {
    let lookup = |name: &str| ctx.placeholder(window, name);
    let command = ctx
        .command
        .as_ref()
        .map(|command| command.iter().map(|arg| placeholder::substitute(arg, lookup)).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|error| format!("command: {error}"))?;
    let value = |name: &str, value: String| EnvVar { name: name.to_owned(), value: Some(value), value_from: None };
    let mut env = vec![
        value("SLUICE_RUN_ID", ctx.run_id.to_string()),
        value("SLUICE_WORKFLOW", ctx.workflow.clone()),
        value("SLUICE_JOB", ctx.job.clone()),
        value("SLUICE_ATTEMPT", ctx.attempt.to_string()),
        value("SLUICE_WORKER", ctx.worker_id.clone()),
        value("SLUICE_WINDOW_START", window.start_rfc3339()),
        value("SLUICE_WINDOW_END", window.end_rfc3339()),
        value("SLUICE_CONFIG", config.to_string()),
        value("SLUICE_PARAMS", serde_json::to_string(&ctx.params).unwrap_or_default()),
        value("SLUICE_INPUTS", serde_json::to_string(&ctx.inputs).unwrap_or_default()),
    ];
    for (name, header) in [("TRACEPARENT", &ctx.traceparent), ("TRACESTATE", &ctx.tracestate)] {
        if let Some(header) = header {
            env.push(value(name, header.clone()));
        }
    }
    for (name, entry) in &ctx.env {
        env.push(match entry {
            EnvValue::Value(text) => {
                value(name, placeholder::substitute(text, lookup).map_err(|error| format!("env `{name}`: {error}"))?)
            }
            EnvValue::Secret { secret } => EnvVar {
                name: name.clone(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: SECRET_KEY.to_owned(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }),
            },
        });
    }
    let resources = ctx.resources.as_ref().map(resource_requirements).transpose()?;
    let labels = labels(ctx);
    let annotations = BTreeMap::from([
        (ANNOTATION_JOB_PATH.to_owned(), ctx.job.clone()),
        (ANNOTATION_WORKFLOW.to_owned(), ctx.workflow.clone()),
        (ANNOTATION_WORKER.to_owned(), ctx.worker_id.clone()),
    ]);
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        command,
        env: Some(env),
        resources,
        ..Default::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        // Sluice retries attempts itself; a pod restarted in place would be an uncounted one.
        restart_policy: Some("Never".to_owned()),
        // The job talks to nobody's API unless its image is given a way to.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        ..Default::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(job_name(ctx)),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels.clone()),
            annotations: Some(annotations.clone()),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // One pod per attempt: retries are Sluice's, counted and delayed by its policy.
            backoff_limit: Some(0),
            // Kubernetes stops the pod at the timeout even if this worker is gone by then.
            active_deadline_seconds: ctx.timeout.map(|timeout| timeout.as_secs_f64().ceil().max(1.0) as i64),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    })
}

/// `resources:` as Kubernetes reads it; numbers (YAML `cpu: 1`) become quantity strings.
fn resource_requirements(resources: &serde_json::Value) -> Result<ResourceRequirements, String> {
    let mut normal = resources.clone();
    if let Some(map) = normal.as_object_mut() {
        for quantities in map.values_mut().filter_map(serde_json::Value::as_object_mut) {
            for quantity in quantities.values_mut() {
                if let serde_json::Value::Number(number) = quantity {
                    *quantity = serde_json::Value::String(number.to_string());
                }
            }
        }
    }
    serde_json::from_value(normal).map_err(|error| format!("resources: {error}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn window() -> Window {
        Window::parse("2024-03-01", sluice_proto::window::parse_zone("UTC").unwrap(), chrono::Utc::now()).unwrap()
    }

    fn ctx() -> JobContext {
        let mut ctx = JobContext::for_local_run("extract", 2);
        ctx.pool = "k8s".into();
        ctx.image = Some("ghcr.io/acme/etl:1.4".into());
        ctx.command = Some(vec!["python3".into(), "etl.py".into(), "{{start}}".into(), "{{params.table}}".into()]);
        ctx.params.insert("table".into(), "orders; rm -rf /".into());
        ctx.timeout = Some(Duration::from_millis(90_500));
        ctx.resources = Some(serde_json::json!({"limits": {"cpu": 2, "memory": "4Gi"}, "requests": {"cpu": "500m"}}));
        ctx.env = BTreeMap::from([
            ("DAY".into(), EnvValue::Value("{{start}}".into())),
            ("TOKEN".into(), EnvValue::Secret { secret: "api-token".into() }),
        ]);
        ctx
    }

    fn built(ctx: &JobContext) -> Job {
        build_job(ctx, &window(), &serde_json::json!({"k": 1}), "ghcr.io/acme/etl:1.4", "jobs").unwrap()
    }

    fn container(job: &Job) -> &Container {
        &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
    }

    fn env_var<'a>(job: &'a Job, name: &str) -> &'a EnvVar {
        container(job).env.as_ref().unwrap().iter().find(|var| var.name == name).unwrap()
    }

    #[test]
    fn the_job_carries_labels_to_find_it_and_runs_one_pod_with_no_retries() {
        let ctx = ctx();
        let job = built(&ctx);
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_RUN_ID], ctx.run_id.to_string());
        assert_eq!(labels[LABEL_JOB], "extract");
        assert_eq!(labels[LABEL_ATTEMPT], "2");
        assert_eq!(labels[LABEL_POOL], "k8s");
        assert_eq!(labels[LABEL_MANAGED_BY], "sluice");
        assert_eq!(job.metadata.namespace.as_deref(), Some("jobs"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(91), "90.5 s rounds up");
        assert_eq!(spec.template.metadata.as_ref().unwrap().labels.as_ref(), Some(labels));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let name = job.metadata.name.as_deref().unwrap();
        assert!(name.len() <= 63 && name.starts_with("sluice-") && name.ends_with("-2"), "{name}");
    }

    #[test]
    fn placeholders_are_substituted_in_the_typed_values_and_cannot_add_arguments() {
        let job = built(&ctx());
        let command = container(&job).command.as_ref().unwrap();
        assert_eq!(command, &["python3", "etl.py", "2024-03-01T00:00:00Z", "orders; rm -rf /"]);
        assert_eq!(env_var(&job, "DAY").value.as_deref(), Some("2024-03-01T00:00:00Z"));
        assert_eq!(env_var(&job, "SLUICE_WINDOW_END").value.as_deref(), Some("2024-03-02T00:00:00Z"));
        assert_eq!(env_var(&job, "SLUICE_CONFIG").value.as_deref(), Some(r#"{"k":1}"#));
        assert_eq!(env_var(&job, "SLUICE_ATTEMPT").value.as_deref(), Some("2"));
    }

    #[test]
    fn resources_are_kept_verbatim_with_numbers_as_quantities() {
        let job = built(&ctx());
        let resources = container(&job).resources.as_ref().unwrap();
        let limits = resources.limits.as_ref().unwrap();
        assert_eq!(limits["cpu"], Quantity("2".into()));
        assert_eq!(limits["memory"], Quantity("4Gi".into()));
        assert_eq!(resources.requests.as_ref().unwrap()["cpu"], Quantity("500m".into()));
    }

    #[test]
    fn a_secret_becomes_a_secret_key_ref_and_never_a_value() {
        let job = built(&ctx());
        let token = env_var(&job, "TOKEN");
        assert_eq!(token.value, None);
        let reference = token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((reference.name.as_str(), reference.key.as_str()), ("api-token", SECRET_KEY));
    }

    #[test]
    fn a_missing_param_is_an_error_naming_it() {
        let mut ctx = ctx();
        ctx.params.clear();
        let error = build_job(&ctx, &window(), &serde_json::Value::Null, "i", "jobs").unwrap_err();
        assert!(error.contains("command") && error.contains("table"), "{error}");
    }

    #[test]
    fn the_pool_admits_only_allowed_images_and_its_own_secrets() {
        let ctx = ctx();
        let policy = |images: &[&str], secrets: &[&str]| PoolPolicy {
            images: ImageAllowList::new(images.iter().map(|i| i.to_string()).collect()).unwrap(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(policy(&["ghcr.io/acme/*"], &["api-token"]).admit(&ctx), Ok("ghcr.io/acme/etl:1.4"));
        let image = policy(&["docker.io/*"], &["api-token"]).admit(&ctx).unwrap_err();
        assert!(image.contains("ghcr.io/acme/etl:1.4") && image.contains("`docker.io/*`"), "{image}");
        let secret = policy(&["ghcr.io/**"], &["db-password"]).admit(&ctx).unwrap_err();
        assert_eq!(
            secret,
            "env `TOKEN`: secret `api-token` is not available to pool `k8s`: its secrets are db-password"
        );
        let none = policy(&["ghcr.io/**"], &[]).admit(&ctx).unwrap_err();
        assert!(none.contains("--pod-secret"), "{none}");
        let mut imageless = ctx.clone();
        imageless.image = None;
        assert!(policy(&["**"], &[]).admit(&imageless).unwrap_err().contains("needs an `image:`"));
    }

    /// The example workflow validates, and each of its jobs builds into a Job.
    #[test]
    fn the_example_workflow_builds_into_jobs() {
        let spec = sluice_proto::WorkflowSpec::parse(include_str!("../../examples/workflows/pod-train.yaml")).unwrap();
        for (name, job) in &spec.jobs {
            let mut ctx = JobContext::for_local_run(name, 1);
            ctx.params = spec.params.clone();
            (ctx.command, ctx.resources, ctx.env) = (job.command.clone(), job.resources.clone(), job.env.clone());
            let image = job.image.as_deref().unwrap();
            let built = build_job(&ctx, &window(), &serde_json::Value::Null, image, "sluice-jobs").unwrap();
            assert_eq!(container(&built).image.as_deref(), Some(image), "{name}");
        }
    }

    #[test]
    fn label_values_that_kubernetes_would_refuse_become_hashes() {
        assert_eq!(label_value("fan.shard-1"), "fan.shard-1");
        let long = "a".repeat(64);
        let hashed = label_value(&long);
        assert_eq!(hashed.len(), 41);
        assert_ne!(hashed, label_value(&"a".repeat(65)));
        assert!(label_value("_pool").starts_with('x'));
    }
}
