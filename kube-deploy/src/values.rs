//! The values files (`deploy/values/<overlay>.yaml`): what differs between installations,
//! typed and bounded. Unknown keys are refused; every error names the key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_proto::HumanDuration;

/// Largest values file read, in bytes.
pub const VALUES_MAX_BYTES: usize = 256 * 1024;
/// Most pools one values file declares.
pub const POOLS_MAX: usize = 64;
/// Longest Kubernetes-facing name we build objects from (pool names become `worker-<pool>`,
/// namespace names are used as is), in characters: 63 (a DNS label) less `worker-`.
pub const KUBE_NAME_MAX_CHARS: usize = 40;
/// Most replicas of one worker pool.
pub const POOL_REPLICAS_MAX: u32 = 1000;
/// Most jobs one worker runs at once (the worker's own `--concurrency` limit).
pub const CONCURRENCY_MAX: u32 = 1024;
/// Replica counts a NATS cluster may have (JetStream needs a quorum: odd sizes, at most 5).
pub const NATS_REPLICAS_ALLOWED: [u32; 3] = [1, 3, 5];
/// Longest `max_timeout` of a pool: the pod's termination grace is built from it.
pub const MAX_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Most image patterns one pool lists (the pod kind's own limit).
pub const ALLOW_IMAGES_MAX: usize = 256;
/// Longest image pattern, in bytes (the pod kind's own limit).
pub const ALLOW_IMAGE_MAX_BYTES: usize = 1024;
/// Most secrets one pool lists.
pub const POOL_SECRETS_MAX: usize = 64;
/// Most jobs `--max-jobs` lets one ScaledJob worker run before it exits.
pub const MAX_JOBS_MAX: u32 = 10_000;

/// A values file, as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Values {
    /// The namespace Sluice (NATS, coordinator, workers) runs in.
    pub namespace: String,
    /// The `sluice` image (by digest in production).
    pub image: String,
    /// The namespace KEDA runs in: the only one that may reach NATS's monitoring port.
    #[serde(default = "default_keda_namespace")]
    pub keda_namespace: String,
    /// Where spans go: an OTLP/HTTP base URL (`/v1/traces` is appended), passed as
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; none: the Jaeger below if there is one, else no export.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// A Jaeger (v2, all in one, spans in memory) in the namespace, receiving OTLP: for a
    /// cluster without a tracing backend of its own.
    #[serde(default)]
    pub jaeger: Option<JaegerValues>,
    /// A Prometheus Operator `ServiceMonitor` (and the Service it selects) beside the
    /// `prometheus.io/*` pod annotations; only for a cluster with the operator's CRDs.
    #[serde(default)]
    pub service_monitor: Option<ServiceMonitorValues>,
    #[serde(default)]
    pub coordinator: CoordinatorValues,
    /// `sluice server` (the web UI and the HTTP API) behind a Service `sluice-server`; none:
    /// not deployed.
    #[serde(default)]
    pub server: Option<ServerValues>,
    pub nats: NatsValues,
    pub pools: Vec<PoolValues>,
}

fn default_keda_namespace() -> String {
    "keda".to_owned()
}

/// The coordinator Deployment (always two replicas: the KV lease picks the leader).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorValues {
    #[serde(default)]
    pub resources: Resources,
}

/// The ServiceMonitor ([`crate::monitor`]).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceMonitorValues {
    /// How often Prometheus scrapes each pod (a Prometheus duration, e.g. `30s`).
    #[serde(default = "default_scrape_interval")]
    pub interval: String,
    /// Labels the cluster's Prometheus selects ServiceMonitors by (kube-prometheus-stack:
    /// `release: <its release name>`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_scrape_interval() -> String {
    "30s".to_owned()
}

/// The `sluice server` Deployment. Stateless: any number of replicas share sessions
/// through the session key Secret.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerValues {
    #[serde(default = "default_server_replicas")]
    pub replicas: i32,
    /// The submitter (a key of `nats.nkeys.submitters`) it reads and acts as; each action
    /// also names the signed-in person (`<submitter>/<name>`).
    pub submitter: String,
    /// The Secret holding the tokens file (key `tokens`: lines `NAME ROLE SHA256-OF-TOKEN`).
    #[serde(default = "default_tokens_secret")]
    pub tokens_secret: String,
    /// The Secret holding the session key (key `key`, at least 32 bytes).
    #[serde(default = "default_session_secret")]
    pub session_secret: String,
    /// A trace UI's base URL as people's browsers reach it (e.g. Jaeger's behind an
    /// Ingress), for the run pages' links; none: no links.
    #[serde(default)]
    pub trace_ui_url: Option<String>,
    #[serde(default)]
    pub resources: Resources,
}

fn default_server_replicas() -> i32 {
    2
}

fn default_tokens_secret() -> String {
    "sluice-server-tokens".to_owned()
}

fn default_session_secret() -> String {
    "sluice-server-session".to_owned()
}

/// Replicas of the server at most.
pub const SERVER_REPLICAS_MAX: i32 = 20;

/// The Jaeger Deployment.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JaegerValues {
    /// `jaegertracing/jaeger` at a pinned version (a tag other than `latest`, or a digest).
    pub image: String,
    #[serde(default)]
    pub resources: Resources,
}

/// The NATS StatefulSet.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsValues {
    /// The nats-server image (2.12 or newer: Sluice uses message schedules).
    pub image: String,
    /// 1 (one server, R1 streams) or 3/5 (a cluster, R3 streams).
    pub replicas: u32,
    /// Size of each server's JetStream volume, e.g. `20Gi` (`Mi`, `Gi` or `Ti`).
    pub storage: String,
    /// Storage class of the volumes; none: the cluster's default.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// `always` (flush before acknowledging) or a duration such as `2m` (nats-server's
    /// default: acknowledged writes can be lost on power failure). See docs/operations.md.
    pub sync_interval: SyncInterval,
    #[serde(default)]
    pub resources: Resources,
    /// Public nkeys (`U…`) of the NATS users; each one's seed lives only in the Kubernetes
    /// Secret `sluice-nats-<user>` (key `nkey`), never in git.
    pub nkeys: NatsNkeys,
}

/// The NATS users besides the workers (whose nkeys are in their pools).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsNkeys {
    pub coordinator: String,
    pub viewer: String,
    /// The submitter identity `deploy`, which the declare-pools Job uses.
    pub deploy: String,
    /// More submitter identities (people, CI, the HTTP server), by identity.
    #[serde(default)]
    pub submitters: BTreeMap<String, String>,
}

/// JetStream's `sync_interval`.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncInterval {
    Always,
    Every(HumanDuration),
}

impl Serialize for SyncInterval {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Always => serializer.serialize_str("always"),
            Self::Every(duration) => duration.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for SyncInterval {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "always" {
            return Ok(Self::Always);
        }
        text.parse::<HumanDuration>()
            .map(Self::Every)
            .map_err(|error| serde::de::Error::custom(format!("`always` or a duration: {error}")))
    }
}

/// Requests and limits, Kubernetes quantities by resource name (`cpu`, `memory`, …).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// One worker pool.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolValues {
    /// The pool's name (lower-case letters, digits and `-` here: it names Kubernetes objects).
    pub name: String,
    /// Public nkey of the pool's NATS user `worker-<pool>` (seed: Secret `sluice-nats-worker-<pool>`).
    pub nkey: String,
    /// Jobs one worker runs at once (`--concurrency`).
    pub concurrency: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Lag (pending + unacknowledged jobs) per replica KEDA aims for.
    pub lag_threshold: u32,
    /// Lag above which a pool at zero wakes up.
    #[serde(default)]
    pub activation_lag_threshold: u32,
    /// The longest timeout a job of this pool may have (`sluice pool apply --max-timeout`);
    /// a running job may take this long to finish when its pod is stopped.
    pub max_timeout: HumanDuration,
    /// Time beyond `max_timeout` a stopping worker needs to hand back what it has not started
    /// and flush its last events.
    #[serde(default = "default_drain")]
    pub drain: HumanDuration,
    /// How long the pool must have had no lag before KEDA scales it to zero.
    #[serde(default = "default_cooldown")]
    pub cooldown: HumanDuration,
    #[serde(default)]
    pub resources: Resources,
    /// Kubernetes Secrets (in `pod_namespace`) whose key `value` the pool's `pod` jobs may use
    /// as `{secret: NAME}` (`--pod-secret`). Only for pools with `pod_namespace`: secrets for
    /// `exec` jobs (a worker's `--secrets-dir`) are not there yet.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Image patterns (globs) the pool's `pod` jobs may use (`--allow-image`); with none, the
    /// pod kind refuses every image. Only for pools with `pod_namespace`.
    #[serde(default)]
    pub allow_images: Vec<String>,
    /// Run this pool as a KEDA ScaledJob (one Kubernetes Job per worker that exits after
    /// `max_jobs` jobs or when idle) instead of a scaled Deployment.
    #[serde(default)]
    pub long_running: Option<LongRunning>,
    /// Jobs of kind `pod` run in this namespace (the worker gets RBAC for batch/v1 Jobs there).
    #[serde(default)]
    pub pod_namespace: Option<String>,
}

fn default_drain() -> HumanDuration {
    HumanDuration::from_secs(30)
}

fn default_cooldown() -> HumanDuration {
    HumanDuration::from_secs(300)
}

/// A pool's ScaledJob settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LongRunning {
    /// `--max-jobs`: jobs one worker runs before it exits.
    pub max_jobs: u32,
    /// `--exit-when-idle`: a worker with nothing to do for this long exits.
    pub exit_when_idle: HumanDuration,
}

/// What is wrong with a values file; always names the file, and the key where one is to blame.
#[derive(Debug, thiserror::Error)]
pub enum ValuesError {
    #[error("cannot read {file}: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file} is larger than {VALUES_MAX_BYTES} bytes")]
    TooLarge { file: String },
    #[error("{file}: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: `{key}` {message}")]
    Invalid { file: String, key: String, message: String },
}

impl ValuesError {
    /// Always false: a values file does not fix itself.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

impl Values {
    /// Reads and checks a values file.
    pub fn read(path: &Path) -> Result<Self, ValuesError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ValuesError::Read { file: file.clone(), source })?;
        Self::parse(&file, &text)
    }

    /// Parses and checks the text of a values file named `file` (for messages).
    pub fn parse(file: &str, text: &str) -> Result<Self, ValuesError> {
        if text.len() > VALUES_MAX_BYTES {
            return Err(ValuesError::TooLarge { file: file.to_owned() });
        }
        let values: Self = serde_saphyr::from_str(text)
            .map_err(|error| ValuesError::Yaml { file: file.to_owned(), message: error.to_string() })?;
        values.check().map_err(|(key, message)| ValuesError::Invalid { file: file.to_owned(), key, message })?;
        Ok(values)
    }

    /// Where every Sluice pod sends its spans: `otlp_endpoint`, else the Jaeger's Service.
    pub fn effective_otlp_endpoint(&self) -> Option<String> {
        self.otlp_endpoint.clone().or_else(|| {
            self.jaeger
                .as_ref()
                .map(|_| format!("http://jaeger.{}.svc:{}", self.namespace, crate::render::JAEGER_OTLP_HTTP_PORT))
        })
    }

    /// The checks serde cannot make: `(key, what is wrong)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        kube_name("namespace", &self.namespace)?;
        kube_name("keda_namespace", &self.keda_namespace)?;
        non_empty("image", &self.image)?;
        non_empty("nats.image", &self.nats.image)?;
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(("otlp_endpoint".into(), format!("must be an http:// or https:// URL, not `{endpoint}`")));
        }
        if let Some(jaeger) = &self.jaeger {
            let pinned = jaeger.image.contains('@')
                || jaeger
                    .image
                    .rsplit_once(':')
                    .is_some_and(|(_, tag)| !tag.is_empty() && tag != "latest" && !tag.contains('/'));
            if !pinned {
                return Err((
                    "jaeger.image".into(),
                    format!("must name a pinned version, e.g. jaegertracing/jaeger:2.5.0, not `{}`", jaeger.image),
                ));
            }
        }
        if !NATS_REPLICAS_ALLOWED.contains(&self.nats.replicas) {
            return Err((
                "nats.replicas".into(),
                format!("must be one of {NATS_REPLICAS_ALLOWED:?} (a JetStream quorum), not {}", self.nats.replicas),
            ));
        }
        storage_bytes(&self.nats.storage).map_err(|message| ("nats.storage".to_owned(), message))?;
        if let Some(class) = &self.nats.storage_class {
            kube_name("nats.storage_class", class)?;
        }
        resources("coordinator.resources", &self.coordinator.resources)?;
        if let Some(server) = &self.server {
            if !(1..=SERVER_REPLICAS_MAX).contains(&server.replicas) {
                return Err((
                    "server.replicas".into(),
                    format!("must be 1 to {SERVER_REPLICAS_MAX}, not {}", server.replicas),
                ));
            }
            if !self.nats.nkeys.submitters.contains_key(&server.submitter) {
                let known: Vec<&str> = self.nats.nkeys.submitters.keys().map(String::as_str).collect();
                return Err((
                    "server.submitter".into(),
                    format!("`{}` is not in nats.nkeys.submitters ({})", server.submitter, known.join(", ")),
                ));
            }
            kube_name("server.tokens_secret", &server.tokens_secret)?;
            kube_name("server.session_secret", &server.session_secret)?;
            if let Some(url) = &server.trace_ui_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(("server.trace_ui_url".into(), format!("must be an http:// or https:// URL, not `{url}`")));
            }
            resources("server.resources", &server.resources)?;
        }
        let nkeys = &self.nats.nkeys;
        nkey("nats.nkeys.coordinator", &nkeys.coordinator)?;
        nkey("nats.nkeys.viewer", &nkeys.viewer)?;
        nkey("nats.nkeys.deploy", &nkeys.deploy)?;
        for (identity, key) in &nkeys.submitters {
            kube_name(&format!("nats.nkeys.submitters.{identity}"), identity)?;
            if [DEPLOY_IDENTITY, "coordinator", "viewer"].contains(&identity.as_str())
                || identity.starts_with("worker-")
            {
                return Err((format!("nats.nkeys.submitters.{identity}"), "is a name another role uses".into()));
            }
            nkey(&format!("nats.nkeys.submitters.{identity}"), key)?;
        }
        resources("nats.resources", &self.nats.resources)?;
        if self.pools.is_empty() || self.pools.len() > POOLS_MAX {
            return Err(("pools".into(), format!("must list 1 to {POOLS_MAX} pools, not {}", self.pools.len())));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (index, pool) in self.pools.iter().enumerate() {
            let key = |field: &str| format!("pools[{index}].{field}");
            pool_name(&key("name"), &pool.name)?;
            nkey(&key("nkey"), &pool.nkey)?;
            if !seen.insert(pool.name.as_str()) {
                return Err((key("name"), format!("pool `{}` is listed twice", pool.name)));
            }
            if pool.concurrency == 0 || pool.concurrency > CONCURRENCY_MAX {
                return Err((key("concurrency"), format!("must be 1 to {CONCURRENCY_MAX}, not {}", pool.concurrency)));
            }
            if pool.max_replicas == 0 || pool.max_replicas > POOL_REPLICAS_MAX {
                return Err((
                    key("max_replicas"),
                    format!("must be 1 to {POOL_REPLICAS_MAX}, not {}", pool.max_replicas),
                ));
            }
            if pool.min_replicas > pool.max_replicas {
                return Err((
                    key("min_replicas"),
                    format!("is {}, more than max_replicas ({})", pool.min_replicas, pool.max_replicas),
                ));
            }
            if pool.lag_threshold == 0 {
                return Err((key("lag_threshold"), "must be at least 1".into()));
            }
            let timeout = pool.max_timeout.as_duration();
            if timeout.is_zero() || timeout > MAX_TIMEOUT_MAX {
                return Err((
                    key("max_timeout"),
                    format!("must be more than 0s and at most {}", HumanDuration::from_duration(MAX_TIMEOUT_MAX)),
                ));
            }
            if pool.drain.as_duration() < std::time::Duration::from_secs(5) {
                return Err((key("drain"), "must be at least 5s (the worker flushes its last events)".into()));
            }
            resources(&key("resources"), &pool.resources)?;
            if pool.secrets.len() > POOL_SECRETS_MAX {
                return Err((key("secrets"), format!("lists more than {POOL_SECRETS_MAX} secrets")));
            }
            for (i, secret) in pool.secrets.iter().enumerate() {
                kube_name(&format!("pools[{index}].secrets[{i}]"), secret)?;
            }
            if let Some(long) = &pool.long_running
                && (long.max_jobs == 0 || long.max_jobs > MAX_JOBS_MAX)
            {
                return Err((
                    key("long_running.max_jobs"),
                    format!("must be 1 to {MAX_JOBS_MAX}, not {}", long.max_jobs),
                ));
            }
            if let Some(namespace) = &pool.pod_namespace {
                kube_name(&key("pod_namespace"), namespace)?;
            } else if !pool.secrets.is_empty() {
                return Err((
                    key("secrets"),
                    "needs pod_namespace: secrets reach `pod` jobs as Kubernetes Secrets (secrets for exec jobs are not supported yet)".into(),
                ));
            } else if !pool.allow_images.is_empty() {
                return Err((key("allow_images"), "needs pod_namespace: only `pod` jobs run images".into()));
            }
            if pool.allow_images.len() > ALLOW_IMAGES_MAX {
                return Err((key("allow_images"), format!("lists more than {ALLOW_IMAGES_MAX} patterns")));
            }
            for (i, pattern) in pool.allow_images.iter().enumerate() {
                if pattern.is_empty() || pattern.len() > ALLOW_IMAGE_MAX_BYTES {
                    return Err((
                        format!("pools[{index}].allow_images[{i}]"),
                        format!("must be 1 to {ALLOW_IMAGE_MAX_BYTES} bytes"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Replicas of every Sluice stream and bucket: 1 on one server, 3 on a cluster.
    pub fn stream_replicas(&self) -> u32 {
        self.nats.replicas.min(3)
    }
}

/// The submitter identity of the Job that declares the pools.
pub const DEPLOY_IDENTITY: &str = "deploy";

/// An nkey user public key: 56 characters of base32 starting with `U`. (Only public keys
/// belong in a values file; a seed starts with `S`.)
fn nkey(key: &str, value: &str) -> Result<(), (String, String)> {
    if value.starts_with('S') {
        return Err((
            key.into(),
            "holds an nkey seed: only public keys (`U…`) belong here; put the seed in the Secret".into(),
        ));
    }
    let ok = value.len() == 56
        && value.starts_with('U')
        && value.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b));
    if !ok {
        return Err((
            key.into(),
            "is not an nkey user public key (56 characters of A-Z and 2-7, starting with U)".into(),
        ));
    }
    Ok(())
}

fn non_empty(key: &str, value: &str) -> Result<(), (String, String)> {
    if value.trim().is_empty() {
        return Err((key.into(), "is empty".into()));
    }
    Ok(())
}

/// A DNS label (RFC 1123): what namespaces, secrets and our object names must be.
fn kube_name(key: &str, name: &str) -> Result<(), (String, String)> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        return Err((key.into(), format!("`{name}` is not a DNS label (a-z, 0-9 and `-`, at most 63 characters)")));
    }
    Ok(())
}

/// A pool name both Sluice (`[A-Za-z0-9_-]`) and Kubernetes (a DNS label) accept, short
/// enough to prefix.
fn pool_name(key: &str, name: &str) -> Result<(), (String, String)> {
    sluice_proto::spec::check_name("pool", name).map_err(|message| (key.to_owned(), message))?;
    kube_name(key, name)?;
    if name.len() > KUBE_NAME_MAX_CHARS {
        return Err((key.into(), format!("`{name}` is longer than {KUBE_NAME_MAX_CHARS} characters")));
    }
    Ok(())
}

fn resources(key: &str, resources: &Resources) -> Result<(), (String, String)> {
    for (which, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
        for (name, quantity) in map {
            if !is_quantity(quantity) {
                return Err((format!("{key}.{which}.{name}"), format!("`{quantity}` is not a Kubernetes quantity")));
            }
        }
    }
    Ok(())
}

/// A Kubernetes quantity: a decimal number and an optional suffix (`m`, `k`, `Mi`, `G`, …).
pub fn is_quantity(text: &str) -> bool {
    const SUFFIXES: [&str; 14] = ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let digits_end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number_ok =
        !number.is_empty() && number.matches('.').count() <= 1 && !number.starts_with('.') && !number.ends_with('.');
    number_ok && SUFFIXES.contains(&suffix)
}

/// Bytes of a volume size written `<N>Mi`, `<N>Gi` or `<N>Ti`.
pub fn storage_bytes(text: &str) -> Result<u64, String> {
    let units = [("Mi", 1u64 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40)];
    for (suffix, unit) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            let count: u64 = number.parse().map_err(|_| format!("`{text}` must be a whole number of Mi, Gi or Ti"))?;
            if count == 0 {
                return Err("must be more than 0".into());
            }
            return count.checked_mul(unit).ok_or_else(|| format!("`{text}` is too large"));
        }
    }
    Err(format!("`{text}` must be a whole number of Mi, Gi or Ti (e.g. 20Gi)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "namespace: sluice
image: sluice:test
nats:
  image: nats:2.15.1
  replicas: 1
  storage: 1Gi
  sync_interval: always
  nkeys:
    coordinator: UBIDFIZD2ZZMFUOIDBEVEVHNJVMNXLMBNYGK34BSH5ZHIDL7P5CMMU3F
    viewer: UCKKYB7UZJHHUYQSPP4XZJGOJ5Y4VKR4GMPMY6EDZC2D2T3F52JVEFXR
    deploy: UAWV5DAR2WW4DABN57RZVZENLLI64BZHCMUK4RQB4GPHAR7NOB5I2ULP
pools:
  - name: default
    nkey: UCGYHVKVFPOMTMRR3OWMF4BBXBYEA4JBS4NRC2YSVQ7TN4XFILWE7UWT
    concurrency: 4
    min_replicas: 0
    max_replicas: 3
    lag_threshold: 10
    max_timeout: 1h
";

    fn values_files() -> Vec<std::path::PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/values");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_values_file_parses_and_keeps_min_replicas_at_most_max() {
        let files = values_files();
        let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert!(names.contains(&"dev.yaml".to_owned()) && names.contains(&"prod.yaml".to_owned()), "{names:?}");
        for file in files {
            let values = Values::read(&file).unwrap_or_else(|error| panic!("{error}"));
            for pool in &values.pools {
                assert!(pool.min_replicas <= pool.max_replicas, "{}: pool {}", file.display(), pool.name);
                assert!(pool.max_replicas >= 1, "{}: pool {}", file.display(), pool.name);
            }
        }
    }

    #[test]
    fn min_above_max_is_refused_naming_the_key() {
        let text = MINIMAL.replace("min_replicas: 0", "min_replicas: 5");
        let error = Values::parse("x.yaml", &text).unwrap_err().to_string();
        assert!(error.contains("`pools[0].min_replicas` is 5, more than max_replicas (3)"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused_naming_them() {
        for (text, key) in [
            (format!("{MINIMAL}replica: 2\n"), "replica"),
            (MINIMAL.replace("    max_timeout: 1h", "    max_timeout: 1h\n    maxReplicas: 4"), "maxReplicas"),
            (MINIMAL.replace("  sync_interval: always", "  sync_interval: always\n  sync: always"), "sync"),
        ] {
            let error = Values::parse("x.yaml", &text).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains("unknown field"), "{key}: {error}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (MINIMAL.replace("replicas: 1\n", "replicas: 2\n"), "`nats.replicas`"),
            (MINIMAL.replace("storage: 1Gi", "storage: 1G"), "`nats.storage`"),
            (MINIMAL.replace("name: default", "name: Default_1"), "`pools[0].name`"),
            (MINIMAL.replace("concurrency: 4", "concurrency: 0"), "`pools[0].concurrency`"),
            (MINIMAL.replace("max_timeout: 1h", "max_timeout: 2d"), "`pools[0].max_timeout`"),
            (MINIMAL.replace("namespace: sluice", "namespace: Sluice"), "`namespace`"),
            (format!("{MINIMAL}    resources: {{requests: {{cpu: lots}}}}\n"), "`pools[0].resources.requests.cpu`"),
            // Secrets and images are for pod jobs only (the worker has no --secrets-dir yet).
            (format!("{MINIMAL}    secrets: [dsn]\n"), "`pools[0].secrets`"),
            (format!("{MINIMAL}    allow_images: [\"busybox:*\"]\n"), "`pools[0].allow_images`"),
            (format!("{MINIMAL}    pod_namespace: jobs\n    allow_images: [\"\"]\n"), "`pools[0].allow_images[0]`"),
        ];
        for (text, key) in cases {
            let error = Values::parse("x.yaml", &text).unwrap_err().to_string();
            assert!(error.starts_with("x.yaml: ") && error.contains(key), "{key}: {error}");
        }
        let error = Values::parse("x.yaml", &MINIMAL.replace("sync_interval: always", "sync_interval: sometimes"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("sync_interval") && error.contains("`always` or a duration"), "{error}");
    }

    #[test]
    fn quantities() {
        for good in ["1", "250m", "1.5", "512Mi", "2Gi", "1k"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.", ".5", "1GB", "1..2", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
        assert_eq!(storage_bytes("2Gi"), Ok(2 << 30));
        assert!(storage_bytes("0Gi").is_err());
    }
}
