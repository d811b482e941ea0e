//! Values → Kubernetes objects, built from `k8s-openapi` types (and [`crate::keda`]'s), never
//! from YAML text. Pure: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec};
use k8s_openapi::api::autoscaling::v2::{HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscalerBehavior};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    KeyToPath, Namespace, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
    Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use sluice_proto::roles::{Role as NatsRole, RoleUser};

use crate::keda::{self, JetStreamLag};
use crate::values::{DEPLOY_IDENTITY, PoolValues, Resources, SyncInterval, Values};

/// NATS client port.
pub const NATS_CLIENT_PORT: i32 = 4222;
/// NATS cluster (route) port.
pub const NATS_CLUSTER_PORT: i32 = 6222;
/// NATS monitoring port (`/healthz`, `/varz`, `/jsz`: what KEDA polls; no authentication).
pub const NATS_MONITOR_PORT: i32 = 8222;
/// The port of `--metrics-listen` (`/healthz`, `/readyz`, `/metrics`) in every Sluice pod.
pub const METRICS_PORT: i32 = 9090;
/// Largest NATS message, in bytes (Sluice needs at least 1 MiB).
pub const NATS_MAX_PAYLOAD_BYTES: u64 = 2 * 1024 * 1024;
/// Share of each NATS volume JetStream may fill, in percent (the rest: the server's own files
/// and room to compact).
pub const JETSTREAM_STORE_PERCENT: u64 = 90;
/// Where each Sluice container finds its nkey seed (from Secret `sluice-nats-<user>`).
pub const NKEY_DIR: &str = "/var/run/sluice/nats";
/// The uid Sluice and NATS containers run as (not root; the Dockerfile's user).
pub const RUN_AS_USER: i64 = 10001;
/// How often KEDA polls a pool's lag, in seconds.
pub const KEDA_POLLING_SECONDS: i32 = 10;
/// Kept finished Kubernetes Jobs of a ScaledJob pool.
pub const SCALED_JOB_HISTORY: i32 = 5;
/// Finished declare-pools Jobs are deleted after this, in seconds.
pub const DECLARE_POOLS_TTL_SECONDS: i32 = 3600;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "sluice";

/// One rendered object: its identity and its JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub value: Value,
}

impl Object {
    fn new<T: serde::Serialize>(typed: &T) -> Self {
        // Serialising plain data structs cannot fail; a Null here would be caught by every test.
        Self::from_value(serde_json::to_value(typed).unwrap_or(Value::Null))
    }

    /// An object from its JSON (e.g. a CRD read from a file); identity fields missing from
    /// it are left empty.
    pub fn from_value(value: Value) -> Self {
        let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
        Self {
            api_version: text("/apiVersion").unwrap_or_default(),
            kind: text("/kind").unwrap_or_default(),
            name: text("/metadata/name").unwrap_or_default(),
            namespace: text("/metadata/namespace"),
            value,
        }
    }

    /// `kind/name` (with the namespace when there is one), for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Why values cannot be rendered (they passed [`Values::check`], so only the NATS roles can
/// refuse a name).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("NATS users: {0}")]
    Roles(#[from] sluice_proto::roles::RoleError),
}

/// Every object of an installation, in apply order (namespaces first).
pub fn objects(values: &Values) -> Result<Vec<Object>, RenderError> {
    let ns = values.namespace.as_str();
    let mut out = Vec::new();
    out.push(Object::new(&namespace(ns)));
    let mut pod_namespaces: Vec<&str> =
        values.pools.iter().filter_map(|pool| pool.pod_namespace.as_deref()).filter(|pod_ns| *pod_ns != ns).collect();
    pod_namespaces.sort_unstable();
    pod_namespaces.dedup();
    for pod_ns in pod_namespaces {
        out.push(Object::new(&namespace(pod_ns)));
    }

    // NATS.
    out.push(Object::new(&service_account(ns, "nats")));
    out.push(Object::new(&nats_config(values)?));
    out.push(Object::new(&nats_headless_service(ns)));
    out.push(Object::new(&nats_client_service(ns)));
    out.push(Object::new(&nats_statefulset(values)));
    out.push(Object::new(&pdb(ns, "nats", labels("nats", None))));
    out.push(Object::new(&nats_network_policy(values)));

    // Coordinator, and the Job that declares the pools.
    out.push(Object::new(&service_account(ns, "sluice-coordinator")));
    out.push(Object::new(&coordinator_deployment(values)));
    out.push(Object::new(&pdb(ns, "sluice-coordinator", labels("coordinator", None))));
    out.push(Object::new(&dashboard_config_map(ns)));
    if let Some(monitor) = &values.service_monitor {
        let meta = |name: &str, labels| meta(Some(ns), name, labels);
        out.push(Object::new(&crate::monitor::metrics_service(meta)));
        out.push(Object::new(&crate::monitor::service_monitor(ns, monitor, meta)));
    }
    if let Some(jaeger) = &values.jaeger {
        let (deployment, service) = jaeger_objects(values, jaeger);
        out.push(Object::new(&deployment));
        out.push(Object::new(&service));
    }
    if let Some(server) = &values.server {
        out.push(Object::new(&service_account(ns, "sluice-server")));
        let (deployment, service) = server_objects(values, server);
        out.push(Object::new(&deployment));
        out.push(Object::new(&service));
        out.push(Object::new(&pdb(ns, "sluice-server", labels("server", None))));
    }
    out.push(Object::new(&service_account(ns, "sluice-declare-pools")));
    out.push(Object::new(&declare_pools_job(values)));

    // One set per pool.
    for pool in &values.pools {
        let name = worker_name(&pool.name);
        let mut account = service_account(ns, &name);
        account.automount_service_account_token = Some(pool.pod_namespace.is_some());
        out.push(Object::new(&account));
        if let Some(pod_ns) = &pool.pod_namespace {
            out.push(Object::new(&pod_role(pod_ns, &name)));
            out.push(Object::new(&pod_role_binding(pod_ns, ns, &name)));
        }
        match &pool.long_running {
            None => {
                out.push(Object::new(&worker_deployment(values, pool)));
                out.push(Object::new(&pdb(ns, &name, labels("worker", Some(&pool.name)))));
                out.push(Object::new(&scaled_object(values, pool)));
            }
            Some(_) => out.push(Object::new(&scaled_job(values, pool))),
        }
    }
    Ok(out)
}

/// `worker-<pool>`: the pool's Deployment, ServiceAccount, ScaledObject (and NATS user).
pub fn worker_name(pool: &str) -> String {
    format!("worker-{pool}")
}

/// The NATS users of an installation, with their roles and public nkeys.
pub fn nats_users(values: &Values) -> Vec<RoleUser> {
    let keys = &values.nats.nkeys;
    let mut users = vec![
        RoleUser::nkey(NatsRole::Coordinator, &keys.coordinator),
        RoleUser::nkey(NatsRole::Viewer, &keys.viewer),
        RoleUser::nkey(NatsRole::Submitter { identity: DEPLOY_IDENTITY.to_owned() }, &keys.deploy),
    ];
    for (identity, key) in &keys.submitters {
        users.push(RoleUser::nkey(NatsRole::Submitter { identity: identity.clone() }, key));
    }
    for pool in &values.pools {
        users.push(RoleUser::nkey(NatsRole::Worker { pool: pool.name.clone() }, &pool.nkey));
    }
    users
}

/// The Secret holding a NATS user's nkey seed (key `nkey`); made by the operator, never here.
pub fn nkey_secret(user: &str) -> String {
    format!("sluice-nats-{user}")
}

fn labels(component: &str, pool: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "sluice".to_owned()),
        ("app.kubernetes.io/component".to_owned(), component.to_owned()),
    ]);
    if let Some(pool) = pool {
        labels.insert("sluice.dev/pool".to_owned(), pool.to_owned());
    }
    labels
}

fn meta(namespace: Option<&str>, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    let mut all = labels;
    all.insert("app.kubernetes.io/part-of".to_owned(), "sluice".to_owned());
    all.insert("app.kubernetes.io/managed-by".to_owned(), FIELD_MANAGER.to_owned());
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(all),
        ..ObjectMeta::default()
    }
}

fn selector(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector { match_labels: Some(labels), ..LabelSelector::default() }
}

fn namespace(name: &str) -> Namespace {
    Namespace { metadata: meta(None, name, BTreeMap::new()), ..Namespace::default() }
}

fn service_account(ns: &str, name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(Some(ns), name, BTreeMap::new()),
        // Only workers that create pods talk to the Kubernetes API.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn resources(values: &Resources) -> Option<ResourceRequirements> {
    let map = |from: &BTreeMap<String, String>| {
        (!from.is_empty())
            .then(|| from.iter().map(|(name, quantity)| (name.clone(), Quantity(quantity.clone()))).collect())
    };
    let requirements =
        ResourceRequirements { requests: map(&values.requests), limits: map(&values.limits), ..Default::default() };
    (requirements.requests.is_some() || requirements.limits.is_some()).then_some(requirements)
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), ..Default::default() }),
        ..SecurityContext::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        run_as_non_root: Some(true),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".to_owned(), ..Default::default() }),
        ..PodSecurityContext::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    // The protocol is spelled out: server-side apply keys port lists by (port, protocol), and
    // servers before 1.20's defaulting fix refuse an element without it.
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: number,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn http_probe(path: &str, port_name: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port_name.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

// ---- NATS ----------------------------------------------------------------------------------

fn nats_headless_host(ns: &str) -> String {
    format!("nats-headless.{ns}.svc.cluster.local")
}

/// The URL every Sluice process connects to.
pub fn nats_url(ns: &str) -> String {
    format!("nats://nats.{ns}.svc.cluster.local:{NATS_CLIENT_PORT}")
}

/// What KEDA polls: the headless service, so that in a cluster KEDA can reach each server as
/// `<pod>.nats-headless…` (the server names are the pod names) to find a consumer's leader.
pub fn monitoring_endpoint(ns: &str) -> String {
    format!("{}:{NATS_MONITOR_PORT}", nats_headless_host(ns))
}

/// The nats-server configuration (JSON, which nats-server reads): ports, JetStream on the
/// volume with the chosen `sync_interval`, cluster routes for more than one server, and the
/// one account `SLUICE` with every role's user and permissions.
pub fn nats_server_config(values: &Values) -> Result<Value, RenderError> {
    let ns = values.namespace.as_str();
    let store_bytes = crate::values::storage_bytes(&values.nats.storage).unwrap_or(0) / 100 * JETSTREAM_STORE_PERCENT;
    let sync_interval = match &values.nats.sync_interval {
        SyncInterval::Always => "always".to_owned(),
        SyncInterval::Every(every) => every.to_string(),
    };
    let mut config = json!({
        "port": NATS_CLIENT_PORT,
        "http_port": NATS_MONITOR_PORT,
        "max_payload": NATS_MAX_PAYLOAD_BYTES,
        "lame_duck_duration": "30s",
        "jetstream": {
            "store_dir": "/data/jetstream",
            "max_file_store": store_bytes,
            "sync_interval": sync_interval,
        },
    });
    if values.nats.replicas > 1 {
        let routes: Vec<String> = (0..values.nats.replicas)
            .map(|i| format!("nats://nats-{i}.{}:{NATS_CLUSTER_PORT}", nats_headless_host(ns)))
            .collect();
        config["cluster"] = json!({ "name": "sluice", "port": NATS_CLUSTER_PORT, "routes": routes });
    }
    let authorization = sluice_proto::roles::server_authorization(&nats_users(values))?;
    if let (Some(config), Value::Object(auth)) = (config.as_object_mut(), authorization) {
        config.extend(auth);
    }
    Ok(config)
}

fn nats_config(values: &Values) -> Result<ConfigMap, RenderError> {
    let config = nats_server_config(values)?;
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    Ok(ConfigMap {
        metadata: meta(Some(&values.namespace), "nats-config", labels("nats", None)),
        data: Some(BTreeMap::from([("nats.conf".to_owned(), text)])),
        ..ConfigMap::default()
    })
}

/// The Grafana dashboard ([`crate::dashboard`]), for Grafana's dashboard sidecar (it loads
/// ConfigMaps labelled `grafana_dashboard: "1"` from any namespace it watches).
fn dashboard_config_map(ns: &str) -> ConfigMap {
    let mut labels = labels("dashboard", None);
    labels.insert("grafana_dashboard".to_owned(), "1".to_owned());
    let text = serde_json::to_string_pretty(&crate::dashboard::dashboard()).unwrap_or_default();
    ConfigMap {
        metadata: meta(Some(ns), "sluice-grafana-dashboard", labels),
        data: Some(BTreeMap::from([("sluice.json".to_owned(), text)])),
        ..ConfigMap::default()
    }
}

fn service_port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port: number,
        protocol: Some("TCP".to_owned()),
        target_port: Some(IntOrString::String(name.to_owned())),
        ..ServicePort::default()
    }
}

fn nats_headless_service(ns: &str) -> Service {
    Service {
        metadata: meta(Some(ns), "nats-headless", labels("nats", None)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            // Routes must resolve before the servers are ready (they become ready together).
            publish_not_ready_addresses: Some(true),
            selector: Some(labels("nats", None)),
            ports: Some(vec![
                service_port("client", NATS_CLIENT_PORT),
                service_port("cluster", NATS_CLUSTER_PORT),
                service_port("monitor", NATS_MONITOR_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn nats_client_service(ns: &str) -> Service {
    Service {
        metadata: meta(Some(ns), "nats", labels("nats", None)),
        spec: Some(ServiceSpec {
            selector: Some(labels("nats", None)),
            ports: Some(vec![service_port("client", NATS_CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn nats_statefulset(values: &Values) -> StatefulSet {
    let ns = values.namespace.as_str();
    let nats = &values.nats;
    let container = Container {
        name: "nats".to_owned(),
        image: Some(nats.image.clone()),
        // The server's name is its pod's: KEDA finds a consumer's leader by it.
        args: Some(["--config", "/etc/nats/nats.conf", "--name", "$(POD_NAME)"].map(str::to_owned).to_vec()),
        env: Some(vec![EnvVar {
            name: "POD_NAME".to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".to_owned(), ..Default::default() }),
                ..Default::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            port("client", NATS_CLIENT_PORT),
            port("cluster", NATS_CLUSTER_PORT),
            port("monitor", NATS_MONITOR_PORT),
        ]),
        resources: resources(&nats.resources),
        // Ready once JetStream is up (and, in a cluster, has caught up with its peers).
        readiness_probe: Some(http_probe("/healthz?js-enabled-only=true", "monitor", 10, 3)),
        liveness_probe: Some(http_probe("/healthz?js-server-only=true", "monitor", 30, 3)),
        startup_probe: Some(http_probe("/healthz", "monitor", 10, 90)),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: "/etc/nats".to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount { name: "data".to_owned(), mount_path: "/data".to_owned(), ..Default::default() },
        ]),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    };
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".to_owned()), ..ObjectMeta::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
            storage_class_name: nats.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(nats.storage.clone()))])),
                ..Default::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: meta(Some(ns), "nats", labels("nats", None)),
        spec: Some(StatefulSetSpec {
            replicas: Some(nats.replicas as i32),
            service_name: Some("nats-headless".to_owned()),
            // All servers start at once: a cluster forms only when its routes are up.
            pod_management_policy: Some("Parallel".to_owned()),
            selector: selector(labels("nats", None)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels("nats", None)), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some("nats".to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    // Lame-duck mode (30 s) moves clients away before the server stops.
                    termination_grace_period_seconds: Some(60),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "config".to_owned(),
                        config_map: Some(ConfigMapVolumeSource {
                            name: "nats-config".to_owned(),
                            ..Default::default()
                        }),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Only KEDA's namespace reaches the monitoring port (it has no authentication); clients in
/// Sluice's namespace reach the client port; the servers reach each other's routes.
fn nats_network_policy(values: &Values) -> NetworkPolicy {
    let ns = values.namespace.as_str();
    let tcp = |number: i32| NetworkPolicyPort {
        protocol: Some("TCP".to_owned()),
        port: Some(IntOrString::Int(number)),
        ..Default::default()
    };
    let from_namespace = |name: &str| NetworkPolicyPeer {
        namespace_selector: Some(selector(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            name.to_owned(),
        )]))),
        ..Default::default()
    };
    let from_pods = |labels: BTreeMap<String, String>| NetworkPolicyPeer {
        pod_selector: Some(selector(labels)),
        ..Default::default()
    };
    let (key, value) = NATS_CLIENT_LABEL;
    let sluice_pods = BTreeMap::from([(key.to_owned(), value.to_owned())]);
    NetworkPolicy {
        metadata: meta(Some(ns), "nats", labels("nats", None)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(labels("nats", None))),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![from_pods(sluice_pods)]),
                    ports: Some(vec![tcp(NATS_CLIENT_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![from_pods(labels("nats", None))]),
                    ports: Some(vec![tcp(NATS_CLUSTER_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![from_namespace(&values.keda_namespace)]),
                    ports: Some(vec![tcp(NATS_MONITOR_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn pdb(ns: &str, name: &str, labels_: BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(Some(ns), name, labels_.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(labels_)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

// ---- Sluice processes ----------------------------------------------------------------------

/// The NATS connection flags of a role (decision 13): nkey seed from the mounted Secret, the
/// role's own inbox prefix.
fn nats_args(ns: &str, role: &NatsRole) -> Vec<String> {
    let mut args = vec![
        "--nats-url".to_owned(),
        nats_url(ns),
        "--nats-nkey".to_owned(),
        format!("{NKEY_DIR}/nkey"),
        "--nats-inbox-prefix".to_owned(),
        role.inbox_prefix(),
    ];
    // An nkey names no user: a submitter says who it is, or its control requests would go
    // out on `sluice.control.anonymous.…`, which its permissions do not allow.
    if let NatsRole::Submitter { identity } = role {
        args.extend(["--nats-identity".to_owned(), identity.clone()]);
    }
    args
}

fn common_env(values: &Values) -> Option<Vec<EnvVar>> {
    values.effective_otlp_endpoint().map(|endpoint| {
        vec![EnvVar { name: "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), value: Some(endpoint), ..EnvVar::default() }]
    })
}

/// The port `sluice server` listens on (the UI, the API, `/healthz`, `/readyz`).
pub const SERVER_PORT: i32 = 8080;
/// Where the server finds its tokens file and its session key (from their Secrets).
pub const SERVER_TOKENS_DIR: &str = "/var/run/sluice/tokens";
pub const SERVER_SESSION_DIR: &str = "/var/run/sluice/session";

/// A Secret's one key as a read-only file `path` in a volume named `name`.
fn secret_file_volume(name: &str, secret: &str, key: &str, path: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![KeyToPath { key: key.to_owned(), path: path.to_owned(), ..Default::default() }]),
            default_mode: Some(0o400),
            ..Default::default()
        }),
        ..Volume::default()
    }
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount { name: name.to_owned(), mount_path: path.to_owned(), read_only: Some(true), ..Default::default() }
}

/// `sluice server --listen 0.0.0.0:8080 --tokens … --session-key-file …` as the server's
/// submitter, and the Service `sluice-server` in front of its replicas.
fn server_objects(values: &Values, server: &crate::values::ServerValues) -> (Deployment, Service) {
    let ns = values.namespace.as_str();
    let role = NatsRole::Submitter { identity: server.submitter.clone() };
    let mut args = vec![
        "server".to_owned(),
        "--listen".to_owned(),
        format!("0.0.0.0:{SERVER_PORT}"),
        "--tokens".to_owned(),
        format!("{SERVER_TOKENS_DIR}/tokens"),
        "--session-key-file".to_owned(),
        format!("{SERVER_SESSION_DIR}/key"),
    ];
    if let Some(url) = &server.trace_ui_url {
        args.extend(["--trace-ui-url".to_owned(), url.clone()]);
    }
    args.extend(["--metrics-listen".to_owned(), format!("0.0.0.0:{METRICS_PORT}")]);
    args.extend(nats_args(ns, &role));
    let mut container = sluice_container(values, "server", args, true);
    if let Some(ports) = &mut container.ports {
        ports.push(port("http", SERVER_PORT));
    }
    container.resources = resources(&server.resources);
    container.volume_mounts = Some(vec![
        nkey_mount(),
        read_only_mount("tokens", SERVER_TOKENS_DIR),
        read_only_mount("session-key", SERVER_SESSION_DIR),
    ]);
    let component = labels("server", None);
    let deployment = Deployment {
        metadata: meta(Some(ns), "sluice-server", component.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(server.replicas),
            selector: selector(component.clone()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(nats_client(scraped(component.clone()))),
                    annotations: Some(scrape_annotations()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some("sluice-server".to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    containers: vec![container],
                    volumes: Some(vec![
                        nkey_volume(&role),
                        secret_file_volume("tokens", &server.tokens_secret, "tokens", "tokens"),
                        secret_file_volume("session-key", &server.session_secret, "key", "key"),
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta(Some(ns), "sluice-server", component.clone()),
        spec: Some(ServiceSpec {
            selector: Some(component),
            ports: Some(vec![service_port("http", SERVER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    (deployment, service)
}

/// Jaeger's OTLP/HTTP receiver port (what `OTEL_EXPORTER_OTLP_ENDPOINT` points at).
pub const JAEGER_OTLP_HTTP_PORT: i32 = 4318;
/// Jaeger's UI port.
pub const JAEGER_UI_PORT: i32 = 16686;

/// The Jaeger of `values.jaeger`: one replica (spans in memory), OTLP/HTTP and the UI on a
/// Service `jaeger`.
fn jaeger_objects(values: &Values, jaeger: &crate::values::JaegerValues) -> (Deployment, Service) {
    let ns = values.namespace.as_str();
    let component = labels("jaeger", None);
    let container = Container {
        name: "jaeger".to_owned(),
        image: Some(jaeger.image.clone()),
        ports: Some(vec![port("otlp-http", JAEGER_OTLP_HTTP_PORT), port("ui", JAEGER_UI_PORT)]),
        readiness_probe: Some(http_probe("/", "ui", 10, 3)),
        resources: resources(&jaeger.resources),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: meta(Some(ns), "jaeger", component.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: selector(component.clone()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(component.clone()), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    containers: vec![container],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    let service = Service {
        metadata: meta(Some(ns), "jaeger", component.clone()),
        spec: Some(ServiceSpec {
            selector: Some(component),
            ports: Some(vec![service_port("otlp-http", JAEGER_OTLP_HTTP_PORT), service_port("ui", JAEGER_UI_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    (deployment, service)
}

fn nkey_volume(role: &NatsRole) -> Volume {
    Volume {
        name: "nats-nkey".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(nkey_secret(&role.user_name())),
            items: Some(vec![KeyToPath { key: "nkey".to_owned(), path: "nkey".to_owned(), ..Default::default() }]),
            default_mode: Some(0o400),
            ..Default::default()
        }),
        ..Volume::default()
    }
}

fn nkey_mount() -> VolumeMount {
    VolumeMount {
        name: "nats-nkey".to_owned(),
        mount_path: NKEY_DIR.to_owned(),
        read_only: Some(true),
        ..Default::default()
    }
}

fn sluice_container(values: &Values, name: &str, args: Vec<String>, probes: bool) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(values.image.clone()),
        args: Some(args),
        env: common_env(values),
        ports: probes.then(|| vec![port(crate::monitor::METRICS_PORT_NAME, METRICS_PORT)]),
        readiness_probe: probes.then(|| http_probe("/readyz", "metrics", 5, 3)),
        liveness_probe: probes.then(|| http_probe("/healthz", "metrics", 10, 6)),
        volume_mounts: Some(vec![nkey_mount()]),
        security_context: Some(restricted_container_security()),
        ..Container::default()
    }
}

fn coordinator_deployment(values: &Values) -> Deployment {
    let ns = values.namespace.as_str();
    let role = NatsRole::Coordinator;
    let mut args = vec!["coordinator".to_owned()];
    args.extend(nats_args(ns, &role));
    args.extend([
        "--stream-replicas".to_owned(),
        values.stream_replicas().to_string(),
        "--metrics-listen".to_owned(),
        format!("0.0.0.0:{METRICS_PORT}"),
    ]);
    let mut container = sluice_container(values, "coordinator", args, true);
    container.resources = resources(&values.coordinator.resources);
    let component = labels("coordinator", None);
    Deployment {
        metadata: meta(Some(ns), "sluice-coordinator", component.clone()),
        spec: Some(DeploymentSpec {
            // Two: one leads (the KV lease decides), one stands by, ready to take over.
            replicas: Some(2),
            selector: selector(component.clone()),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(nats_client(scraped(component))),
                    annotations: Some(scrape_annotations()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some("sluice-coordinator".to_owned()),
                    automount_service_account_token: Some(false),
                    security_context: Some(pod_security()),
                    containers: vec![container],
                    volumes: Some(vec![nkey_volume(&role)]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The pools' `sluice pool apply` commands (decision 6), one container each.
pub fn declare_pool_args(values: &Values, pool: &PoolValues) -> Vec<String> {
    let mut args = vec!["pool".to_owned(), "apply".to_owned(), pool.name.clone()];
    args.extend(nats_args(&values.namespace, &NatsRole::Submitter { identity: DEPLOY_IDENTITY.to_owned() }));
    args.extend(["--max-timeout".to_owned(), pool.max_timeout.to_string()]);
    args
}

/// A Job that declares every pool once the coordinator answers (a control request waits for
/// one), so each `pool-<pool>` consumer exists before any worker has run and KEDA sees its
/// lag. Not an initContainer of the coordinator: the request needs a running coordinator.
/// Its name carries a hash of what it declares: a Job's template cannot change, so changed
/// pools make a new Job (the old ones are deleted an hour after they finish).
fn declare_pools_job(values: &Values) -> Job {
    let ns = values.namespace.as_str();
    let role = NatsRole::Submitter { identity: DEPLOY_IDENTITY.to_owned() };
    let containers: Vec<Container> = values
        .pools
        .iter()
        .map(|pool| sluice_container(values, &format!("declare-{}", pool.name), declare_pool_args(values, pool), false))
        .collect();
    let component = labels("declare-pools", None);
    let pod_labels = nats_client(component.clone());
    // The whole template is immutable in a Job: its labels are part of what names it.
    let digest = fnv1a(&serde_json::to_string(&(&containers, &pod_labels)).unwrap_or_default());
    Job {
        metadata: meta(Some(ns), &format!("sluice-declare-pools-{:08x}", digest as u32), component.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(10),
            ttl_seconds_after_finished: Some(DECLARE_POOLS_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(pod_labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    service_account_name: Some("sluice-declare-pools".to_owned()),
                    automount_service_account_token: Some(false),
                    restart_policy: Some("OnFailure".to_owned()),
                    security_context: Some(pod_security()),
                    containers,
                    volumes: Some(vec![nkey_volume(&role)]),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

/// A stable 64-bit FNV-1a hash (object names must not change between renders or builds).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Seconds a stopping worker pod is given: the pool's `max_timeout` (a running job may take
/// that long) plus its drain time.
pub fn termination_grace_seconds(pool: &PoolValues) -> i64 {
    (pool.max_timeout.as_duration() + pool.drain.as_duration()).as_secs() as i64
}

/// `sluice worker …` for a pool.
pub fn worker_args(values: &Values, pool: &PoolValues) -> Vec<String> {
    let role = NatsRole::Worker { pool: pool.name.clone() };
    let mut args = vec!["worker".to_owned()];
    args.extend(nats_args(&values.namespace, &role));
    args.extend([
        "--pool".to_owned(),
        pool.name.clone(),
        "--concurrency".to_owned(),
        pool.concurrency.to_string(),
        // Running jobs may finish (up to the pool's max_timeout); the drain covers the rest.
        "--shutdown-grace".to_owned(),
        pool.max_timeout.to_string(),
        "--metrics-listen".to_owned(),
        format!("0.0.0.0:{METRICS_PORT}"),
    ]);
    if let Some(pod_ns) = &pool.pod_namespace {
        args.extend(["--pod-namespace".to_owned(), pod_ns.clone()]);
        // The pod kind refuses every image and secret the pool does not list (decision 15:
        // a pod job's `{secret: NAME}` is the Kubernetes Secret NAME, if listed here).
        for pattern in &pool.allow_images {
            args.extend(["--allow-image".to_owned(), pattern.clone()]);
        }
        for secret in &pool.secrets {
            args.extend(["--pod-secret".to_owned(), secret.clone()]);
        }
    }
    if let Some(long) = &pool.long_running {
        args.extend([
            "--max-jobs".to_owned(),
            long.max_jobs.to_string(),
            "--exit-when-idle".to_owned(),
            long.exit_when_idle.to_string(),
        ]);
    }
    args
}

/// A pod's labels with [`crate::monitor::SCRAPE_LABEL`]: the metrics Service selects it.
/// The label of the pods that connect to NATS: its NetworkPolicy lets in these, and only
/// these, on the client port.
pub const NATS_CLIENT_LABEL: (&str, &str) = ("sluice.dev/nats-client", "true");

fn nats_client(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let (key, value) = NATS_CLIENT_LABEL;
    labels.insert(key.to_owned(), value.to_owned());
    labels
}

fn scraped(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let (key, value) = crate::monitor::SCRAPE_LABEL;
    labels.insert(key.to_owned(), value.to_owned());
    labels
}

/// The annotations Prometheus's Kubernetes service discovery (the common
/// `prometheus.io/*` relabelling) reads to scrape a pod's `/metrics` on [`METRICS_PORT`].
pub fn scrape_annotations() -> BTreeMap<String, String> {
    [
        ("prometheus.io/scrape", "true".to_owned()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", "/metrics".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

fn worker_pod(values: &Values, pool: &PoolValues, restart_policy: Option<&str>) -> PodTemplateSpec {
    let role = NatsRole::Worker { pool: pool.name.clone() };
    let name = worker_name(&pool.name);
    let mut container = sluice_container(values, "worker", worker_args(values, pool), true);
    container.resources = resources(&pool.resources);
    let volumes = vec![nkey_volume(&role)];
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(nats_client(scraped(labels("worker", Some(&pool.name))))),
            annotations: Some(scrape_annotations()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name),
            automount_service_account_token: Some(pool.pod_namespace.is_some()),
            security_context: Some(pod_security()),
            termination_grace_period_seconds: Some(termination_grace_seconds(pool)),
            restart_policy: restart_policy.map(str::to_owned),
            containers: vec![container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

fn worker_deployment(values: &Values, pool: &PoolValues) -> Deployment {
    let component = labels("worker", Some(&pool.name));
    Deployment {
        metadata: meta(Some(&values.namespace), &worker_name(&pool.name), component.clone()),
        spec: Some(DeploymentSpec {
            // KEDA owns the replica count: leaving it unset keeps a re-apply from resetting it.
            replicas: None,
            selector: selector(component),
            template: worker_pod(values, pool, None),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn trigger(values: &Values, pool: &PoolValues) -> keda::Trigger {
    keda::jetstream_trigger(&JetStreamLag {
        monitoring_endpoint: &monitoring_endpoint(&values.namespace),
        pool: &pool.name,
        lag_threshold: pool.lag_threshold,
        activation_lag_threshold: pool.activation_lag_threshold,
    })
}

/// Scale-down: one pod per minute after five minutes of lower lag, so a burst does not
/// make pods come and go, and a stopping pod has its whole grace to finish what it runs.
fn scale_down_behavior() -> HorizontalPodAutoscalerBehavior {
    HorizontalPodAutoscalerBehavior {
        scale_down: Some(HPAScalingRules {
            stabilization_window_seconds: Some(300),
            select_policy: Some("Min".to_owned()),
            policies: Some(vec![HPAScalingPolicy { type_: "Pods".to_owned(), value: 1, period_seconds: 60 }]),
            ..Default::default()
        }),
        scale_up: Some(HPAScalingRules {
            stabilization_window_seconds: Some(0),
            select_policy: Some("Max".to_owned()),
            policies: Some(vec![
                HPAScalingPolicy { type_: "Percent".to_owned(), value: 100, period_seconds: 15 },
                HPAScalingPolicy { type_: "Pods".to_owned(), value: 4, period_seconds: 15 },
            ]),
            ..Default::default()
        }),
    }
}

fn scaled_object(values: &Values, pool: &PoolValues) -> keda::ScaledObject {
    let name = worker_name(&pool.name);
    keda::ScaledObject {
        api_version: keda::API_VERSION,
        kind: "ScaledObject",
        metadata: meta(Some(&values.namespace), &name, labels("worker", Some(&pool.name))),
        spec: keda::ScaledObjectSpec {
            scale_target_ref: keda::ScaleTarget { api_version: "apps/v1", kind: "Deployment", name },
            polling_interval: KEDA_POLLING_SECONDS,
            cooldown_period: pool.cooldown.as_duration().as_secs() as i32,
            min_replica_count: pool.min_replicas as i32,
            max_replica_count: pool.max_replicas as i32,
            advanced: keda::Advanced {
                horizontal_pod_autoscaler_config: keda::HpaConfig { behavior: scale_down_behavior() },
            },
            triggers: vec![trigger(values, pool)],
        },
    }
}

fn scaled_job(values: &Values, pool: &PoolValues) -> keda::ScaledJob {
    let name = worker_name(&pool.name);
    keda::ScaledJob {
        api_version: keda::API_VERSION,
        kind: "ScaledJob",
        metadata: meta(Some(&values.namespace), &name, labels("worker", Some(&pool.name))),
        spec: keda::ScaledJobSpec {
            job_target_ref: JobSpec {
                parallelism: Some(1),
                completions: Some(1),
                // A worker that fails is not retried as a Job: its jobs go back to JetStream,
                // and KEDA starts another worker while there is lag.
                backoff_limit: Some(0),
                template: worker_pod(values, pool, Some("Never")),
                ..JobSpec::default()
            },
            polling_interval: KEDA_POLLING_SECONDS,
            min_replica_count: pool.min_replicas as i32,
            max_replica_count: pool.max_replicas as i32,
            successful_jobs_history_limit: SCALED_JOB_HISTORY,
            failed_jobs_history_limit: SCALED_JOB_HISTORY,
            triggers: vec![trigger(values, pool)],
        },
    }
}

// ---- RBAC for pools that run jobs as pods --------------------------------------------------

/// What a worker of a pool with `pod_namespace` may do there: run its jobs as batch/v1 Jobs
/// (create, watch, delete them), find their pods and read their logs. Nothing else.
pub fn pod_role_rules() -> Vec<PolicyRule> {
    let rule = |group: &str, resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|verb| (*verb).to_owned()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule("batch", "jobs", &["create", "get", "list", "watch", "delete"]),
        rule("", "pods", &["get", "list", "watch"]),
        rule("", "pods/log", &["get"]),
    ]
}

fn pod_role(pod_ns: &str, name: &str) -> Role {
    Role { metadata: meta(Some(pod_ns), name, BTreeMap::new()), rules: Some(pod_role_rules()) }
}

fn pod_role_binding(pod_ns: &str, ns: &str, name: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta(Some(pod_ns), name, BTreeMap::new()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: name.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_owned(),
            namespace: Some(ns.to_owned()),
            ..Subject::default()
        }]),
    }
}
