//! The pod kind against a real kube-apiserver v1.20.2 (`sluice_testkit::kube_api`). There is
//! no kubelet and no Job controller: the test plays them by patching the Job's (and a pod's)
//! status, and checks what the kind creates, how it reads each end, and that it deletes.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use sluice_pod::manifest::{LABEL_ATTEMPT, LABEL_JOB, LABEL_RUN_ID, build_job, job_name};
use sluice_pod::{ImageAllowList, PodKind, PoolPolicy};
use sluice_proto::Window;
use sluice_proto::pod::EnvValue;
use sluice_testkit::kube_api::KubeApi;
use sluice_worker::{Job as _, JobContext, JobError, Output};

/// How long a test waits for the kind to create or delete a Job.
const WAIT: Duration = Duration::from_secs(30);
/// Pause between looks at the server while waiting (polling is how a client learns of an
/// object without a watch of its own).
const POLL: Duration = Duration::from_millis(50);

async fn client(api: &KubeApi) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A namespace with the `default` service account the ServiceAccount admission plugin wants
/// for pods (no controller creates it here).
async fn namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let object: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces.create(&PostParams::default(), &object).await.unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
    accounts.create(&PostParams::default(), &account).await.unwrap();
}

fn kind(client: &kube::Client, namespace: &str) -> PodKind {
    let policy = PoolPolicy {
        images: ImageAllowList::new(vec!["ghcr.io/acme/*".into()]).unwrap(),
        secrets: ["api-token".to_owned()].into(),
    };
    PodKind::new(client.clone(), namespace, policy).with_pod_check_interval(Duration::from_millis(100))
}

fn ctx(job: &str, attempt: u32) -> JobContext {
    let mut ctx = JobContext::for_local_run(job, attempt);
    ctx.pool = "k8s".into();
    ctx.image = Some("ghcr.io/acme/etl:1.4".into());
    ctx.command = Some(vec!["python3".into(), "etl.py".into(), "{{start}}".into()]);
    ctx.timeout = Some(Duration::from_secs(600));
    ctx.resources = Some(serde_json::json!({"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "500m"}}));
    ctx.env = BTreeMap::from([
        ("MODE".into(), EnvValue::Value("full".into())),
        ("TOKEN".into(), EnvValue::Secret { secret: "api-token".into() }),
    ]);
    ctx
}

fn window() -> Window {
    Window::parse("2024-03-01", sluice_proto::window::parse_zone("UTC").unwrap(), chrono::Utc::now()).unwrap()
}

/// Runs an attempt in the background.
fn start(kind: &PodKind, ctx: &JobContext) -> tokio::task::JoinHandle<Result<Output, JobError>> {
    let (kind, ctx) = (kind.clone(), ctx.clone());
    tokio::spawn(async move { kind.perform(&ctx, &window(), &serde_json::json!({"k": 1})).await })
}

/// Waits until `check` holds for the Job `name` (`None`: it does not exist).
async fn wait_for(jobs: &Api<Job>, name: &str, what: &str, check: impl Fn(Option<&Job>) -> bool) -> Option<Job> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let job = jobs.get_opt(name).await.unwrap();
        if check(job.as_ref()) {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "Job {name}: {what} did not happen within {WAIT:?}");
        tokio::time::sleep(POLL).await;
    }
}

async fn created(jobs: &Api<Job>, name: &str) -> Job {
    wait_for(jobs, name, "created", |job| job.is_some()).await.unwrap()
}

async fn deleted(jobs: &Api<Job>, name: &str) {
    wait_for(jobs, name, "deleted", |job| job.is_none()).await;
}

/// Plays the Job controller: sets the Job's status.
async fn set_status(jobs: &Api<Job>, name: &str, status: serde_json::Value) {
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": status})))
        .await
        .unwrap();
}

async fn finished(task: tokio::task::JoinHandle<Result<Output, JobError>>) -> Result<Output, JobError> {
    tokio::time::timeout(WAIT, task).await.expect("the attempt ended in time").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_kind_creates_watches_maps_and_deletes_jobs_on_a_real_apiserver() {
    let api = KubeApi::start().unwrap();
    let client = client(&api).await;
    namespace(&client, "jobs").await;
    let kind = kind(&client, "jobs");
    let jobs: Api<Job> = Api::namespaced(client.clone(), "jobs");

    // Succeeded: the Job the server stored is the one Sluice meant, and it goes at the end.
    let ctx1 = ctx("extract", 1);
    let name = job_name(&ctx1);
    let running = start(&kind, &ctx1);
    let stored = created(&jobs, &name).await;
    let labels = stored.metadata.labels.clone().unwrap();
    assert_eq!(
        (labels[LABEL_RUN_ID].as_str(), labels[LABEL_JOB].as_str()),
        (ctx1.run_id.to_string().as_str(), "extract")
    );
    let spec = stored.spec.clone().unwrap();
    assert_eq!((spec.backoff_limit, spec.active_deadline_seconds), (Some(0), Some(600)));
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.command.as_ref().unwrap()[2], "2024-03-01T00:00:00Z");
    let resources = serde_json::to_value(container.resources.as_ref().unwrap()).unwrap();
    assert_eq!(resources, serde_json::json!({"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "500m"}}));
    let token = container.env.as_ref().unwrap().iter().find(|var| var.name == "TOKEN").unwrap();
    assert_eq!(token.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name, "api-token");
    set_status(
        &jobs,
        &name,
        serde_json::json!({"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}),
    )
    .await;
    assert_eq!(finished(running).await, Ok(Output::none()));
    deleted(&jobs, &name).await;

    // Failed: retryable, with the reason, and deleted.
    let ctx2 = ctx("load", 1);
    let name = job_name(&ctx2);
    let running = start(&kind, &ctx2);
    created(&jobs, &name).await;
    let failed = serde_json::json!({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}], "failed": 1});
    set_status(&jobs, &name, failed).await;
    let error = finished(running).await.unwrap_err();
    assert!(error.retryable && error.message.contains("BackoffLimitExceeded"), "{error:?}");
    deleted(&jobs, &name).await;

    // Kubernetes' deadline (the job's timeout): a timeout, and deleted.
    let ctx3 = ctx("report", 1);
    let name = job_name(&ctx3);
    let running = start(&kind, &ctx3);
    created(&jobs, &name).await;
    let deadline = serde_json::json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]});
    set_status(&jobs, &name, deadline).await;
    let error = finished(running).await.unwrap_err();
    assert!(error.retryable && error.message.starts_with("timed out"), "{error:?}");
    deleted(&jobs, &name).await;

    // Cancelled (`sluice cancel`, the worker's timeout or shutdown): the Job is deleted.
    let ctx4 = ctx("slow", 1);
    let name = job_name(&ctx4);
    let running = start(&kind, &ctx4);
    created(&jobs, &name).await;
    ctx4.cancellation_token().cancel();
    let error = finished(running).await.unwrap_err();
    assert!(error.message.contains("cancelled"), "{error:?}");
    deleted(&jobs, &name).await;

    // A pod that can never run (its image cannot be pulled): permanent, and deleted.
    let ctx5 = ctx("pull", 1);
    let name = job_name(&ctx5);
    let running = start(&kind, &ctx5);
    let stored = created(&jobs, &name).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "jobs");
    let template = stored.spec.unwrap().template;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{name}-abcde")),
            labels: template.metadata.unwrap().labels,
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    };
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let waiting = serde_json::json!({"status": {"containerStatuses": [{"name": "job", "image": "ghcr.io/acme/etl:1.4", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"ghcr.io/acme/etl:1.4\""}}}]}});
    pods.patch_status(&format!("{name}-abcde"), &PatchParams::default(), &Patch::Merge(waiting)).await.unwrap();
    let error = finished(running).await.unwrap_err();
    assert!(!error.retryable && error.message.contains("ImagePullBackOff"), "{error:?}");
    deleted(&jobs, &name).await;

    // Orphans: attempt 1's Job, left by a worker that died, is deleted by attempt 2, which
    // runs afresh.
    let first = ctx("resume", 1);
    let orphan = build_job(&first, &window(), &serde_json::Value::Null, "ghcr.io/acme/etl:1.4", "jobs").unwrap();
    let orphan_name = orphan.metadata.name.clone().unwrap();
    jobs.create(&PostParams::default(), &orphan).await.unwrap();
    set_status(&jobs, &orphan_name, serde_json::json!({"active": 1})).await;
    let mut second = first.clone();
    second.attempt = 2;
    let name = job_name(&second);
    let running = start(&kind, &second);
    let stored = created(&jobs, &name).await;
    assert_eq!(stored.metadata.labels.unwrap()[LABEL_ATTEMPT], "2");
    assert!(
        jobs.get_opt(&orphan_name).await.unwrap().is_none(),
        "attempt 1's Job is gone before attempt 2's is created"
    );
    set_status(&jobs, &name, serde_json::json!({"succeeded": 1})).await;
    assert_eq!(finished(running).await, Ok(Output::none()));
    deleted(&jobs, &name).await;
    let reported = second.reported_earlier();
    assert!(
        matches!(reported.as_slice(), [earlier] if earlier.attempt == 1
            && earlier.found.contains(&orphan_name) && earlier.found.contains("still running (1 active pod)")),
        "attempt 2 reports what it found of attempt 1, for attempt 1's record: {reported:?}"
    );

    // Refused before anything is created: an image off the list, a secret the pool lacks.
    let mut evil = ctx("evil", 1);
    evil.image = Some("docker.io/evil:latest".into());
    let error = kind.perform(&evil, &window(), &serde_json::Value::Null).await.unwrap_err();
    assert!(
        !error.retryable && error.message.contains("docker.io/evil:latest") && error.message.contains("ghcr.io/acme/*"),
        "{error:?}"
    );
    let mut greedy = ctx("greedy", 1);
    greedy.env.insert("DB".into(), EnvValue::Secret { secret: "db-password".into() });
    let error = kind.perform(&greedy, &window(), &serde_json::Value::Null).await.unwrap_err();
    assert!(
        !error.retryable && error.message.contains("secret `db-password` is not available to pool `k8s`"),
        "{error:?}"
    );
    let left = jobs.list(&Default::default()).await.unwrap();
    assert!(
        left.items.is_empty(),
        "no Job is left: {:?}",
        left.items.iter().map(|job| job.metadata.name.clone()).collect::<Vec<_>>()
    );
}
