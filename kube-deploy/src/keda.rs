//! KEDA's ScaledObject and ScaledJob (keda.sh/v1alpha1), as typed as the fields we set.
//! The CRDs (deploy/crds/, KEDA's own) are the authority on their schema; these structs only
//! keep us from writing them by hand.

use std::collections::BTreeMap;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::api::batch::v1::JobSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

pub const API_VERSION: &str = "keda.sh/v1alpha1";
/// KEDA's scaler for JetStream consumer lag.
pub const NATS_JETSTREAM_TRIGGER: &str = "nats-jetstream";

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObject {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: ScaledObjectSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTarget,
    pub polling_interval: i32,
    pub cooldown_period: i32,
    pub min_replica_count: i32,
    pub max_replica_count: i32,
    pub advanced: Advanced,
    pub triggers: Vec<Trigger>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTarget {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Advanced {
    pub horizontal_pod_autoscaler_config: HpaConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HpaConfig {
    pub behavior: HorizontalPodAutoscalerBehavior,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledJob {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: ScaledJobSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaledJobSpec {
    pub job_target_ref: JobSpec,
    pub polling_interval: i32,
    pub min_replica_count: i32,
    pub max_replica_count: i32,
    pub successful_jobs_history_limit: i32,
    pub failed_jobs_history_limit: i32,
    pub triggers: Vec<Trigger>,
}

/// The settings of one pool's `nats-jetstream` trigger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JetStreamLag<'a> {
    /// `host:port` of the NATS monitoring endpoint (no scheme).
    pub monitoring_endpoint: &'a str,
    pub pool: &'a str,
    pub lag_threshold: u32,
    pub activation_lag_threshold: u32,
}

/// The trigger KEDA's nats-jetstream scaler reads: lag = `num_pending + num_ack_pending` of
/// the pool's consumer on the jobs stream, in account `SLUICE`. Metadata values are strings
/// (KEDA's schema leaves them an open string map: a unit test checks keys and values).
pub fn jetstream_trigger(lag: &JetStreamLag<'_>) -> Trigger {
    let metadata = [
        ("natsServerMonitoringEndpoint", lag.monitoring_endpoint.to_owned()),
        ("account", sluice_proto::names::NATS_ACCOUNT.to_owned()),
        ("stream", sluice_proto::names::JOBS_STREAM.to_owned()),
        ("consumer", sluice_proto::names::pool_consumer(lag.pool)),
        ("lagThreshold", lag.lag_threshold.to_string()),
        ("activationLagThreshold", lag.activation_lag_threshold.to_string()),
        ("useHttps", "false".to_owned()),
    ];
    Trigger {
        kind: NATS_JETSTREAM_TRIGGER,
        metadata: metadata.into_iter().map(|(key, value)| (key.to_owned(), value)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_jetstream_trigger_has_exactly_the_keys_keda_reads() {
        let trigger = jetstream_trigger(&JetStreamLag {
            monitoring_endpoint: "nats-headless.sluice.svc.cluster.local:8222",
            pool: "gpu",
            lag_threshold: 7,
            activation_lag_threshold: 0,
        });
        let value = serde_json::to_value(&trigger).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "nats-jetstream",
                "metadata": {
                    "natsServerMonitoringEndpoint": "nats-headless.sluice.svc.cluster.local:8222",
                    "account": "SLUICE",
                    "stream": "SLUICE_JOBS",
                    "consumer": "pool-gpu",
                    "lagThreshold": "7",
                    "activationLagThreshold": "0",
                    "useHttps": "false",
                }
            })
        );
        // KEDA parses the endpoint as host:port (it adds the scheme itself).
        let endpoint = &trigger.metadata["natsServerMonitoringEndpoint"];
        assert!(
            !endpoint.contains("://") && endpoint.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        );
    }
}
