//! `sluice deploy apply` against a real kube-apiserver (v1.20.2 with etcd on loopback, from
//! `sluice_testkit::kube_api`; no kubelet, so API contracts only): server-side apply is
//! idempotent, a conflicting field manager gets a clear error, kinds the server lacks are
//! named (or skipped, exactly those), KEDA's real CRDs register and refuse a bad ScaledObject,
//! and every ServiceAccount may do exactly what its role needs.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::Discovery;
use serde_json::json;
use sluice_deploy::apply::{ApplyError, ApplyOptions, apply};
use sluice_deploy::{Object, render};
use sluice_testkit::kube_api::KubeApi;

/// How long KEDA's CRDs may take to be served after they are created.
const CRD_TIMEOUT: Duration = Duration::from_secs(30);

async fn client(api: &KubeApi) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(api.kubeconfig()).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

fn overlay(name: &str) -> Vec<Object> {
    sluice_deploy::render_file(&sluice_deploy::repo_deploy_dir().join(format!("values/{name}.yaml"))).unwrap()
}

/// KEDA's CRDs a 1.20 apiserver accepts. Its ScaledJob CRD embeds a current pod template
/// whose list-map keys carry `default: ""`, which 1.20's CRD validation refuses: ScaledJobs
/// are checked by the schemas offline (tests/validate.rs) and skipped here like any kind the
/// server lacks.
const CRDS_1_20: [&str; 2] = ["scaledobjects", "triggerauthentications"];

/// Registers KEDA's CRDs (deploy/crds/, KEDA's own, unchanged) and waits (bounded) until the
/// server serves their kinds. Created as KEDA's install does, not server-side applied: 1.20's
/// typed apply refuses their CEL rules (`x-kubernetes-validations`, 1.25+), which a plain
/// create drops (kubectl's client-side check would refuse them too: `--validate=false`).
async fn register_keda(api: &KubeApi, client: &kube::Client) {
    let dir = sluice_deploy::repo_deploy_dir().join("crds");
    for name in CRDS_1_20 {
        let path = dir.join(format!("keda.sh_{name}.yaml"));
        api.kubectl(&["create", "--validate=false", "-f", &path.display().to_string()]).unwrap();
    }
    let started = Instant::now();
    loop {
        let discovery = Discovery::new(client.clone()).run().await.unwrap();
        let served = ["ScaledObject", "TriggerAuthentication"]
            .iter()
            .all(|kind| discovery.resolve_gvk(&GroupVersionKind::gvk("keda.sh", "v1alpha1", kind)).is_some());
        if served {
            return;
        }
        assert!(started.elapsed() < CRD_TIMEOUT, "KEDA's CRDs not served after {CRD_TIMEOUT:?}");
        // Polling discovery is how a client learns a CRD is established.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const SKIP: ApplyOptions = ApplyOptions { dry_run: false, skip_missing_apis: true };

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_names_missing_apis_skips_exactly_them_is_idempotent_and_refuses_conflicts() {
    let api = KubeApi::start().unwrap();
    let client = client(&api).await;
    let objects = overlay("prod");

    // Without KEDA: both KEDA kinds and 1.20's missing policy/v1 are named, nothing is written.
    let error = apply(&client, &objects, ApplyOptions::default()).await.unwrap_err();
    let ApplyError::MissingApis { kinds } = &error else { panic!("{error}") };
    assert_eq!(
        kinds,
        &["keda.sh/v1alpha1 ScaledJob", "keda.sh/v1alpha1 ScaledObject", "policy/v1 PodDisruptionBudget"]
    );
    assert!(error.to_string().contains("--skip-missing-apis"), "{error}");
    assert!(!api.kubectl(&["get", "namespaces", "-o", "name"]).unwrap().contains("namespace/sluice\n"));

    register_keda(&api, &client).await;
    let lacking = ["keda.sh/v1alpha1 ScaledJob", "policy/v1 PodDisruptionBudget"];
    let error = apply(&client, &objects, ApplyOptions::default()).await.unwrap_err();
    assert!(matches!(&error, ApplyError::MissingApis { kinds } if kinds == &lacking), "{error}");

    // Skipped: exactly the kinds 1.20 lacks (policy/v1 PodDisruptionBudget, and KEDA's
    // ScaledJob whose CRD it cannot register; the autoscaling/v2 behaviour is inside KEDA's
    // ScaledObject, which is served here).
    let first = apply(&client, &objects, SKIP).await.unwrap();
    assert_eq!(first.skipped_kinds, lacking);
    let skipped = objects.iter().filter(|o| o.kind == "PodDisruptionBudget" || o.kind == "ScaledJob").count();
    assert_eq!(first.skipped_objects.len(), skipped);
    assert!(first.skipped_objects.contains(&"ScaledJob sluice/worker-batch".to_owned()), "{:?}", first.skipped_objects);
    assert_eq!(first.applied.len(), objects.len() - skipped);
    let stored = api
        .kubectl(&["get", "scaledobject,deployment,statefulset,job,networkpolicy", "-n", "sluice", "-o", "name"])
        .unwrap();
    for expected in [
        "scaledobject.keda.sh/worker-default",
        "deployment.apps/worker-default",
        "statefulset.apps/nats",
        "networkpolicy.networking.k8s.io/nats",
    ] {
        assert!(stored.contains(expected), "{expected} not in {stored}");
    }

    // A second apply changes nothing: no spec changes (generations stay), and no object is
    // written again, except that 1.20 rewrites Jobs and StatefulSets whose server-added
    // fields sit inside what sluice applies (a Job's generated selector labels, a claim
    // template's status) with a new resourceVersion and the same content.
    let second = apply(&client, &objects, SKIP).await.unwrap();
    assert_eq!(first.applied.len(), second.applied.len());
    for (a, b) in first.applied.iter().zip(&second.applied) {
        assert_eq!((&a.object, a.generation), (&b.object, b.generation), "a second apply changed a spec");
        let rewritten_by_1_20 = a.object.starts_with("Job ") || a.object.starts_with("StatefulSet ");
        if !rewritten_by_1_20 {
            assert_eq!(a.resource_version, b.resource_version, "{}: a second apply wrote it again", a.object);
        }
    }
    let same = |report: &sluice_deploy::apply::ApplyReport| {
        report.applied.iter().map(|a| (a.object.clone(), a.generation)).collect::<Vec<_>>()
    };

    // A dry run of a change stores nothing.
    let mut changed = objects.clone();
    for object in changed.iter_mut().filter(|o| o.kind == "StatefulSet") {
        object.value["spec"]["replicas"] = json!(5);
    }
    let dry = apply(&client, &changed, ApplyOptions { dry_run: true, skip_missing_apis: true }).await.unwrap();
    assert_eq!(dry.applied.len(), first.applied.len());
    let replicas =
        api.kubectl(&["get", "statefulset", "nats", "-n", "sluice", "-o", "jsonpath={.spec.replicas}"]).unwrap();
    assert_eq!(replicas, "3", "the dry run changed the stored StatefulSet");
    assert_eq!(same(&apply(&client, &objects, SKIP).await.unwrap()), same(&first));

    // Another manager takes a field sluice owns: sluice's apply fails, naming the object, the
    // manager and the field, and does not force.
    let deployments: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "sluice",
        &kube::discovery::ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&()),
    );
    let intruder = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "sluice-coordinator", "namespace": "sluice"},
        "spec": {"replicas": 5},
    });
    deployments
        .patch("sluice-coordinator", &PatchParams::apply("intruder").force(), &Patch::Apply(&intruder))
        .await
        .unwrap();
    let error = apply(&client, &objects, SKIP).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ApplyError::Conflict { .. }), "{message}");
    assert!(
        message.contains("Deployment sluice/sluice-coordinator")
            && message.contains("intruder")
            && message.contains(".spec.replicas"),
        "{message}"
    );
    let replicas = api
        .kubectl(&["get", "deployment", "sluice-coordinator", "-n", "sluice", "-o", "jsonpath={.spec.replicas}"])
        .unwrap();
    assert_eq!(replicas, "5", "sluice forced a conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_crds_refuse_a_bad_scaled_object_and_service_accounts_may_do_exactly_their_jobs() {
    let api = KubeApi::start().unwrap();
    let client = client(&api).await;
    register_keda(&api, &client).await;
    let objects = overlay("prod");
    apply(&client, &objects, SKIP).await.unwrap();

    // A wrong type is refused by KEDA's schema, naming the field.
    let scaled = objects.iter().find(|o| o.kind == "ScaledObject").unwrap();
    let mut bad = scaled.clone();
    bad.name = "bad".to_owned();
    bad.value["metadata"]["name"] = json!("bad");
    bad.value["spec"]["minReplicaCount"] = json!("zero");
    let error = apply(&client, std::slice::from_ref(&bad), ApplyOptions::default()).await.unwrap_err();
    assert!(matches!(&error, ApplyError::Refused { .. }) && error.to_string().contains("minReplicaCount"), "{error}");
    // What the 1.20 server cannot check: an unknown field is pruned, not refused (strict field
    // validation came in 1.25); the offline CRD-schema test (tests/validate.rs) refuses it.
    let mut unknown = scaled.clone();
    unknown.name = "unknown".to_owned();
    unknown.value["metadata"]["name"] = json!("unknown");
    unknown.value["spec"]["cooldownPeriods"] = json!(30);
    apply(&client, std::slice::from_ref(&unknown), ApplyOptions::default()).await.unwrap();
    let stored = api.kubectl(&["get", "scaledobject", "unknown", "-n", "sluice", "-o", "json"]).unwrap();
    assert!(!stored.contains("cooldownPeriods") && stored.contains("cooldownPeriod"), "{stored}");

    // RBAC: the worker of the pod pool may run batch/v1 Jobs in its pod namespace, find their
    // pods and read their logs; nothing else, nowhere else. Every other account may do nothing.
    let values = sluice_deploy::Values::read(&sluice_deploy::repo_deploy_dir().join("values/prod.yaml")).unwrap();
    let pod_pool = values.pools.iter().find(|p| p.pod_namespace.is_some()).unwrap();
    let pod_ns = pod_pool.pod_namespace.as_deref().unwrap();
    let worker = render::worker_name(&pod_pool.name);
    let allowed = [
        ("create", "jobs.batch"),
        ("get", "jobs.batch"),
        ("list", "jobs.batch"),
        ("watch", "jobs.batch"),
        ("delete", "jobs.batch"),
        ("get", "pods"),
        ("list", "pods"),
        ("watch", "pods"),
        ("get", "pods/log"),
    ];
    let denied = [
        ("update", "jobs.batch"),
        ("patch", "jobs.batch"),
        ("deletecollection", "jobs.batch"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "pods/exec"),
        ("get", "secrets"),
        ("list", "secrets"),
        ("create", "cronjobs.batch"),
        ("create", "deployments.apps"),
        ("get", "configmaps"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
    ];
    let mut table = Vec::new();
    for (verb, resource) in allowed {
        table.push((worker.as_str(), pod_ns, verb, resource, true));
        // Not in Sluice's own namespace.
        table.push((worker.as_str(), "sluice", verb, resource, false));
    }
    for (verb, resource) in denied {
        table.push((worker.as_str(), pod_ns, verb, resource, false));
    }
    let accounts: Vec<String> =
        objects.iter().filter(|o| o.kind == "ServiceAccount" && o.name != worker).map(|o| o.name.clone()).collect();
    assert!(accounts.len() >= 5, "{accounts:?}");
    for account in &accounts {
        for (verb, resource) in allowed {
            table.push((account.as_str(), pod_ns, verb, resource, false));
        }
        for (verb, resource) in [("get", "secrets"), ("list", "pods"), ("create", "jobs.batch"), ("get", "configmaps")]
        {
            table.push((account.as_str(), "sluice", verb, resource, false));
        }
    }
    let wrong: Vec<String> = table
        .iter()
        .filter(|(sa, ns, verb, resource, expected)| {
            api.can_i(("sluice", sa), ns, verb, resource).unwrap() != *expected
        })
        .map(|(sa, ns, verb, resource, expected)| format!("{sa} {verb} {resource} in {ns}: expected {expected}"))
        .collect();
    assert!(wrong.is_empty(), "RBAC differs from the table:\n{}", wrong.join("\n"));
}
