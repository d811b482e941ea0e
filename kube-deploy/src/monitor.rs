//! The Prometheus Operator's `ServiceMonitor` (`monitoring.coreos.com/v1`) for clusters that
//! scrape by it instead of by the `prometheus.io/*` pod annotations: typed here (no crate
//! ships the CRD's types), only the fields Sluice sets, and the headless Service `sluice-metrics`
//! it selects, whose endpoints are every coordinator and worker pod (those labelled
//! [`SCRAPE_LABEL`]). Rendered only when the values ask (`service_monitor:`): applying one on
//! a cluster without the operator's CRDs fails.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::render::METRICS_PORT;
use crate::values::ServiceMonitorValues;

/// On every coordinator and worker pod: what the metrics Service selects.
pub const SCRAPE_LABEL: (&str, &str) = ("sluice.dev/metrics", "true");
/// The metrics Service's name, and its port's (the pods' container port is named the same).
pub const METRICS_SERVICE: &str = "sluice-metrics";
pub const METRICS_PORT_NAME: &str = "metrics";

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitor {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: ServiceMonitorSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Which Services' endpoints to scrape.
    pub selector: LabelSelector,
    pub namespace_selector: NamespaceSelector,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceSelector {
    pub match_names: Vec<String>,
}

/// One scraped port of the selected Services.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The Service port's name.
    pub port: String,
    pub path: String,
    pub interval: String,
    pub scheme: &'static str,
}

fn service_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "sluice".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "metrics".to_owned()),
    ])
}

/// The headless Service whose endpoints are the Sluice pods' metrics ports.
/// `meta` makes an object's metadata (namespace and common labels) from a name and labels.
pub fn metrics_service(meta: impl Fn(&str, BTreeMap<String, String>) -> ObjectMeta) -> Service {
    Service {
        metadata: meta(METRICS_SERVICE, service_labels()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(BTreeMap::from([(SCRAPE_LABEL.0.to_owned(), SCRAPE_LABEL.1.to_owned())])),
            ports: Some(vec![ServicePort {
                name: Some(METRICS_PORT_NAME.to_owned()),
                port: METRICS_PORT,
                protocol: Some("TCP".to_owned()),
                target_port: Some(IntOrString::String(METRICS_PORT_NAME.to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The ServiceMonitor selecting [`metrics_service`]; `values.labels` are what the cluster's
/// Prometheus selects ServiceMonitors by (kube-prometheus-stack: `release: <its name>`).
pub fn service_monitor(
    ns: &str,
    values: &ServiceMonitorValues,
    meta: impl Fn(&str, BTreeMap<String, String>) -> ObjectMeta,
) -> ServiceMonitor {
    let mut labels = service_labels();
    labels.extend(values.labels.clone());
    ServiceMonitor {
        api_version: "monitoring.coreos.com/v1",
        kind: "ServiceMonitor",
        metadata: meta("sluice", labels),
        spec: ServiceMonitorSpec {
            selector: LabelSelector { match_labels: Some(service_labels()), ..LabelSelector::default() },
            namespace_selector: NamespaceSelector { match_names: vec![ns.to_owned()] },
            endpoints: vec![Endpoint {
                port: METRICS_PORT_NAME.to_owned(),
                path: "/metrics".to_owned(),
                interval: values.interval.clone(),
                scheme: "http",
            }],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta { name: Some(name.to_owned()), labels: Some(labels), ..ObjectMeta::default() }
    }

    #[test]
    fn the_monitor_selects_the_metrics_service_by_its_labels_and_port_name() {
        let values = ServiceMonitorValues {
            interval: "15s".to_owned(),
            labels: BTreeMap::from([("release".to_owned(), "kube-prometheus-stack".to_owned())]),
        };
        let monitor = service_monitor("sluice", &values, meta);
        let service = metrics_service(meta);
        let service_labels = service.metadata.labels.clone().unwrap();
        let selected = monitor.spec.selector.match_labels.clone().unwrap();
        assert!(selected.iter().all(|(key, value)| service_labels.get(key) == Some(value)), "{selected:?}");
        assert_eq!(monitor.metadata.labels.as_ref().unwrap()["release"], "kube-prometheus-stack");
        assert_eq!(monitor.spec.namespace_selector.match_names, ["sluice"]);
        let ports = service.spec.as_ref().unwrap().ports.clone().unwrap();
        assert_eq!(monitor.spec.endpoints.len(), 1);
        assert_eq!(Some(monitor.spec.endpoints[0].port.clone()), ports[0].name);
        assert_eq!(ports[0].target_port, Some(IntOrString::String(METRICS_PORT_NAME.to_owned())));
        assert_eq!(monitor.spec.endpoints[0].path, "/metrics");
        assert_eq!(monitor.spec.endpoints[0].interval, "15s");
        // The CRD's field names (camelCase), as the operator reads them.
        let json = serde_json::to_value(&monitor).unwrap();
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["kind"], "ServiceMonitor");
        assert_eq!(json["spec"]["namespaceSelector"]["matchNames"][0], "sluice");
        assert_eq!(json["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"], "metrics");
        assert_eq!(json["spec"]["endpoints"][0]["port"], "metrics");
        assert_eq!(
            service.spec.unwrap().selector.unwrap(),
            BTreeMap::from([(SCRAPE_LABEL.0.to_owned(), SCRAPE_LABEL.1.to_owned())])
        );
    }

    #[test]
    fn rendered_with_the_values_every_scraped_pod_carries_the_label_and_the_named_port() {
        let mut values = crate::Values::parse("dev.yaml", include_str!("../../deploy/values/dev.yaml")).unwrap();
        assert!(values.service_monitor.is_none(), "off in the overlays: it needs the operator's CRDs");
        let plain = crate::render::objects(&values).unwrap();
        assert!(plain.iter().all(|object| object.kind != "ServiceMonitor"));
        values.service_monitor = Some(ServiceMonitorValues { interval: "30s".to_owned(), labels: BTreeMap::new() });
        let objects = crate::render::objects(&values).unwrap();
        let kinds = |kind: &str, name: &str| objects.iter().filter(|o| o.kind == kind && o.name == name).count();
        assert_eq!((kinds("ServiceMonitor", "sluice"), kinds("Service", METRICS_SERVICE)), (1, 1));
        let pods: Vec<&serde_json::Value> = objects
            .iter()
            .filter(|object| object.kind == "Deployment" && object.name != "jaeger")
            .filter_map(|object| object.value.pointer("/spec/template"))
            .collect();
        assert!(pods.len() >= 2, "the coordinator and the workers");
        for pod in pods {
            assert_eq!(pod["metadata"]["labels"][SCRAPE_LABEL.0], SCRAPE_LABEL.1, "{pod}");
            assert_eq!(pod["spec"]["containers"][0]["ports"][0]["name"], METRICS_PORT_NAME, "{pod}");
        }
    }
}
