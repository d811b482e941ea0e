//! The checked-in deploy/ is what `sluice deploy render` makes, kustomize builds it offline,
//! nats-server accepts the rendered configuration, and the objects say what the values say.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sluice_deploy::{Object, Values, layout, render};

fn repo_values() -> Vec<std::path::PathBuf> {
    sluice_deploy::values_files(&sluice_deploy::repo_deploy_dir().join("values")).unwrap()
}

fn prod() -> (Values, Vec<Object>) {
    let path = sluice_deploy::repo_deploy_dir().join("values/prod.yaml");
    let values = Values::read(&path).unwrap();
    let objects = render::objects(&values).unwrap();
    (values, objects)
}

fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Value {
    &objects
        .iter()
        .find(|object| object.kind == kind && object.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
        .value
}

#[test]
fn checked_in_deploy_matches_a_fresh_render() {
    let fresh = sluice_deploy::render_files(&repo_values()).unwrap();
    let on_disk = layout::read(&sluice_deploy::repo_deploy_dir()).unwrap();
    let stale: Vec<_> = on_disk.keys().filter(|path| !fresh.contains_key(*path)).collect();
    let missing: Vec<_> = fresh.keys().filter(|path| !on_disk.contains_key(*path)).collect();
    let differ: Vec<_> = fresh
        .iter()
        .filter(|(path, text)| on_disk.get(*path).is_some_and(|disk| disk != *text))
        .map(|(p, _)| p)
        .collect();
    assert!(
        stale.is_empty() && missing.is_empty() && differ.is_empty(),
        "deploy/ drifted from deploy/values: run `sluice deploy render` and commit deploy/\n\
         stale files: {stale:?}\nmissing files: {missing:?}\nchanged files: {differ:?}"
    );
    for (path, text) in &fresh {
        assert!(text.starts_with(layout::HEADER), "{} has no header", path.display());
    }
}

#[test]
fn render_out_writes_exactly_what_deploy_holds_and_replaces_stale_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("overlays/old")).unwrap();
    std::fs::write(dir.path().join("overlays/old/stale.yaml"), "x").unwrap();
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let fresh = sluice_deploy::render_files(&repo_values()).unwrap();
    layout::write(dir.path(), &fresh).unwrap();
    assert_eq!(layout::read(dir.path()).unwrap(), layout::read(&sluice_deploy::repo_deploy_dir()).unwrap());
    assert_eq!(std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(), "mine");
}

#[test]
fn kustomize_builds_every_overlay_offline() {
    for overlay in ["dev", "prod"] {
        let dir = sluice_deploy::repo_deploy_dir().join("overlays").join(overlay);
        let output = Command::new("kubectl").arg("kustomize").arg(&dir).output().expect("kubectl is on PATH");
        assert!(output.status.success(), "{overlay}: {}", String::from_utf8_lossy(&output.stderr));
        let text = String::from_utf8(output.stdout).unwrap();
        let rendered =
            sluice_deploy::render_file(&sluice_deploy::repo_deploy_dir().join(format!("values/{overlay}.yaml")))
                .unwrap();
        // Every object exactly once.
        assert_eq!(
            text.matches("\nkind: ").count() + usize::from(text.starts_with("kind: ")),
            rendered.len(),
            "{overlay}"
        );
    }
}

#[test]
fn nats_server_accepts_the_rendered_configuration() {
    let server = sluice_local_nats_binary();
    for file in repo_values() {
        let values = Values::read(&file).unwrap();
        let mut config = render::nats_server_config(&values).unwrap();
        let dir = tempfile::tempdir().unwrap();
        config["jetstream"]["store_dir"] = Value::String(dir.path().join("js").display().to_string());
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, serde_json::to_string(&config).unwrap()).unwrap();
        let output = Command::new(&server).arg("-t").arg("-c").arg(&path).output().unwrap();
        assert!(
            output.status.success(),
            "{}: nats-server -t refused the config: {}{}",
            file.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn sluice_local_nats_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        return path.into();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/nats-server");
    assert!(local.exists(), "no nats-server: run scripts/install-tools.sh or set SLUICE_NATS_SERVER");
    local
}

#[test]
fn workers_get_the_grace_their_longest_job_needs_and_pools_scale_from_zero() {
    let (values, objects) = prod();
    for pool in &values.pools {
        let name = render::worker_name(&pool.name);
        let grace = (pool.max_timeout.as_duration() + pool.drain.as_duration()).as_secs();
        let pod = match &pool.long_running {
            None => {
                let scaled = find(&objects, "ScaledObject", &name);
                assert_eq!(scaled["spec"]["minReplicaCount"], 0, "{name}");
                assert_eq!(scaled["spec"]["maxReplicaCount"], pool.max_replicas, "{name}");
                assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], name);
                assert_eq!(scaled["spec"]["cooldownPeriod"], pool.cooldown.as_duration().as_secs());
                let down = &scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"];
                assert_eq!(down["policies"][0], serde_json::json!({"periodSeconds": 60, "type": "Pods", "value": 1}));
                find(&objects, "PodDisruptionBudget", &name);
                find(&objects, "Deployment", &name)["spec"]["template"].clone()
            }
            Some(long) => {
                assert!(
                    !objects.iter().any(|o| o.kind == "Deployment" && o.name == name),
                    "{name}: a ScaledJob pool has no Deployment"
                );
                let job = find(&objects, "ScaledJob", &name);
                let args = job["spec"]["jobTargetRef"]["template"]["spec"]["containers"][0]["args"].clone();
                let args: Vec<String> = serde_json::from_value(args).unwrap();
                let at = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
                assert_eq!(at("--max-jobs"), Some(long.max_jobs.to_string()));
                assert_eq!(at("--exit-when-idle"), Some(long.exit_when_idle.to_string()));
                job["spec"]["jobTargetRef"]["template"].clone()
            }
        };
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], grace, "{name}");
        let container = &pod["spec"]["containers"][0];
        let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
        let at = |flag: &str| args.iter().position(|a| a == flag).map(|i| args[i + 1].clone());
        assert_eq!(at("--pool"), Some(pool.name.clone()));
        assert_eq!(at("--shutdown-grace"), Some(pool.max_timeout.to_string()));
        assert_eq!(at("--concurrency"), Some(pool.concurrency.to_string()));
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
        assert_scraped(&pod, &args, &name);
    }
}

/// Prometheus finds the pod's `/metrics` on the port its `--metrics-listen` serves.
fn assert_scraped(pod: &Value, args: &[String], who: &str) {
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true", "{who}");
    assert_eq!(annotations["prometheus.io/path"], "/metrics", "{who}");
    let port = annotations["prometheus.io/port"].as_str().unwrap();
    let listen = args.iter().position(|a| a == "--metrics-listen").map(|i| args[i + 1].clone()).unwrap();
    assert!(listen.ends_with(&format!(":{port}")), "{who}: scraped on {port}, listening on {listen}");
}

#[test]
fn the_pools_are_declared_at_start_with_their_max_timeout() {
    let (values, objects) = prod();
    let job = objects.iter().find(|o| o.kind == "Job").expect("a declare-pools Job");
    let containers = job.value["spec"]["template"]["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), values.pools.len());
    for (pool, container) in values.pools.iter().zip(containers) {
        let args: Vec<String> = serde_json::from_value(container["args"].clone()).unwrap();
        assert_eq!(&args[..3], ["pool", "apply", pool.name.as_str()]);
        let at = args.iter().position(|a| a == "--max-timeout").unwrap();
        assert_eq!(args[at + 1], pool.max_timeout.to_string());
    }
    // A changed pool makes a new Job (a Job's template cannot change).
    let mut changed = values.clone();
    changed.pools[0].max_timeout = "3h".parse().unwrap();
    let other = render::objects(&changed).unwrap();
    let other_job = other.iter().find(|o| o.kind == "Job").unwrap();
    assert_ne!(other_job.name, job.name);
}

#[test]
fn coordinator_runs_two_replicas_with_streams_replicated_like_nats() {
    for (file, replicas) in [("dev", "1"), ("prod", "3")] {
        let objects =
            sluice_deploy::render_file(&sluice_deploy::repo_deploy_dir().join(format!("values/{file}.yaml"))).unwrap();
        let deployment = find(&objects, "Deployment", "sluice-coordinator");
        assert_eq!(deployment["spec"]["replicas"], 2);
        let args: Vec<String> =
            serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap();
        let at = args.iter().position(|a| a == "--stream-replicas").unwrap();
        assert_eq!(args[at + 1], replicas, "{file}");
        assert_scraped(&deployment["spec"]["template"], &args, "the coordinator");
        let nats = find(&objects, "StatefulSet", "nats");
        assert_eq!(nats["spec"]["replicas"].to_string(), replicas, "{file}");
        assert!(nats["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"].is_string());
    }
}

#[test]
fn only_keda_reaches_the_monitoring_port() {
    let (values, objects) = prod();
    let policy = find(&objects, "NetworkPolicy", "nats");
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let monitor: Vec<_> = rules.iter().filter(|rule| rule["ports"][0]["port"] == render::NATS_MONITOR_PORT).collect();
    assert_eq!(monitor.len(), 1);
    assert_eq!(
        monitor[0]["from"],
        serde_json::json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": values.keda_namespace}}}])
    );
    let client: Vec<_> = rules.iter().filter(|rule| rule["ports"][0]["port"] == render::NATS_CLIENT_PORT).collect();
    assert_eq!(client.len(), 1);
    assert!(client[0]["from"][0]["namespaceSelector"].is_null(), "clients come from Sluice's own namespace only");
}

#[test]
fn no_secret_value_is_rendered() {
    let (_, objects) = prod();
    assert!(!objects.iter().any(|object| object.kind == "Secret"), "Secrets are made by the operator, never rendered");
    for object in &objects {
        let text = object.value.to_string();
        // An nkey seed starts with S and is 58 characters of base32.
        assert!(!text.contains("\"SU"), "{}: an nkey seed?", object.describe());
    }
}

/// The sample names the coordinator and the worker expose.
fn exposed_metric_names() -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = sluice_coordinator::metrics::series().into_iter().collect();
    names.extend(sluice_worker::metrics::SERIES.iter().map(|name| (*name).to_owned()));
    names
}

#[test]
fn the_dashboard_queries_only_metrics_sluice_exposes_and_ships_in_every_overlay() {
    let exposed = exposed_metric_names();
    assert!(exposed.contains("sluice_jobs_finished_total"), "{exposed:?}");
    let mut used = std::collections::BTreeSet::new();
    for expr in sluice_deploy::dashboard::queries() {
        let mut rest = expr;
        while let Some(at) = rest.find("sluice_") {
            let name: String =
                rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            assert!(exposed.contains(&name), "`{name}` in `{expr}` is no metric Sluice exposes: {exposed:?}");
            used.insert(name.clone());
            rest = &rest[at + name.len()..];
        }
    }
    for needed in [
        "sluice_jobs_finished_total",
        "sluice_dispatch_latency_seconds_bucket",
        "sluice_pool_queue_lag",
        "sluice_dead_letters_total",
        "sluice_coordinator_leader",
    ] {
        assert!(used.contains(needed), "the dashboard shows {needed}");
    }
    let (_, objects) = prod();
    let config_map = find(&objects, "ConfigMap", "sluice-grafana-dashboard");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let model: Value = serde_json::from_str(config_map["data"]["sluice.json"].as_str().unwrap()).unwrap();
    assert_eq!(model, sluice_deploy::dashboard::dashboard());
    assert_eq!(model["panels"].as_array().unwrap().len(), 8);
}

#[test]
fn dev_runs_a_pinned_jaeger_and_every_sluice_pod_sends_it_spans() {
    let objects = sluice_deploy::render_file(&sluice_deploy::repo_deploy_dir().join("values/dev.yaml")).unwrap();
    let jaeger = find(&objects, "Deployment", "jaeger");
    let image = jaeger["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap();
    assert!(image.starts_with("jaegertracing/jaeger:2."), "{image}");
    let service = find(&objects, "Service", "jaeger");
    let ports: Vec<i64> =
        service["spec"]["ports"].as_array().unwrap().iter().map(|port| port["port"].as_i64().unwrap()).collect();
    assert_eq!(ports, [4318, 16686]);
    let mut sluice_pods = 0;
    for object in objects.iter().filter(|o| o.kind == "Deployment" && o.name != "jaeger") {
        for container in object.value["spec"]["template"]["spec"]["containers"].as_array().unwrap() {
            let env = container["env"].as_array().unwrap_or_else(|| panic!("{}: no env", object.name));
            let endpoint = env.iter().find(|var| var["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
            assert_eq!(endpoint["value"], "http://jaeger.sluice.svc:4318", "{}", object.name);
            sluice_pods += 1;
        }
    }
    assert!(sluice_pods >= 3, "the coordinator and the workers");
}

#[test]
fn a_jaeger_image_that_is_not_pinned_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let dev = std::fs::read_to_string(sluice_deploy::repo_deploy_dir().join("values/dev.yaml")).unwrap();
    for image in ["jaegertracing/jaeger", "jaegertracing/jaeger:latest"] {
        let file = dir.path().join("dev.yaml");
        std::fs::write(&file, dev.replace("jaegertracing/jaeger:2.5.0", image)).unwrap();
        let error = Values::read(&file).unwrap_err().to_string();
        assert!(error.contains("jaeger.image") && error.contains(image), "{error}");
    }
}

#[test]
fn a_server_that_is_not_a_known_submitter_or_has_no_replicas_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let dev = std::fs::read_to_string(sluice_deploy::repo_deploy_dir().join("values/dev.yaml")).unwrap();
    for (from, to, expected) in [
        (
            "  submitter: sluice-server",
            "  submitter: nobody",
            "`server.submitter` `nobody` is not in nats.nkeys.submitters (dev, sluice-server)",
        ),
        ("  replicas: 1\n  submitter", "  replicas: 0\n  submitter", "`server.replicas` must be 1 to 20, not 0"),
    ] {
        let file = dir.path().join("dev.yaml");
        assert!(dev.contains(from), "{from}");
        std::fs::write(&file, dev.replace(from, to)).unwrap();
        let error = Values::read(&file).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
}

/// Every pod template in `object` (a Deployment's, a StatefulSet's, a Job's, a ScaledJob's).
fn pod_templates(object: &Object) -> Vec<&Value> {
    [&object.value["spec"]["template"], &object.value["spec"]["jobTargetRef"]["template"]]
        .into_iter()
        .filter(|template| !template.is_null())
        .collect()
}

#[test]
fn every_pod_that_connects_to_nats_is_let_in_by_the_network_policy() {
    for path in repo_values() {
        let values = Values::read(&path).unwrap();
        let objects = render::objects(&values).unwrap();
        let policy = find(&objects, "NetworkPolicy", "nats");
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        let client = rules.iter().find(|rule| rule["ports"][0]["port"] == render::NATS_CLIENT_PORT).unwrap();
        let allowed = client["from"][0]["podSelector"]["matchLabels"].as_object().unwrap();
        let mut clients = 0;
        for object in &objects {
            for template in pod_templates(object) {
                let connects = template["spec"]["containers"].as_array().unwrap().iter().any(|container| {
                    container["args"].as_array().is_some_and(|args| args.iter().any(|arg| arg == "--nats-url"))
                });
                if !connects {
                    continue;
                }
                clients += 1;
                let labels = template["metadata"]["labels"].as_object().unwrap();
                for (key, value) in allowed {
                    assert_eq!(
                        labels.get(key),
                        Some(value),
                        "{}: {}'s pods connect to NATS but lack the label its NetworkPolicy lets in ({key}={value})",
                        path.display(),
                        object.describe()
                    );
                }
            }
        }
        assert!(clients >= 4, "{}: the coordinator, the pool declarations, a pool and the server", path.display());
    }
}

/// The value after `flag` in a container's args.
fn arg_after<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = container["args"].as_array()?;
    let at = args.iter().position(|arg| arg == flag)?;
    args.get(at + 1)?.as_str()
}

#[test]
fn a_submitter_connects_under_its_identity_so_nats_lets_its_control_requests_through() {
    // An nkey names no user: without --nats-identity a request would go out on
    // sluice.control.anonymous.…, which a submitter's permissions do not allow.
    for path in repo_values() {
        let values = Values::read(&path).unwrap();
        let objects = render::objects(&values).unwrap();
        let mut submitters = Vec::new();
        for object in &objects {
            for template in pod_templates(object) {
                let volumes = template["spec"]["volumes"].as_array().cloned().unwrap_or_default();
                let Some(secret) =
                    volumes.iter().find(|v| v["name"] == "nats-nkey").and_then(|v| v["secret"]["secretName"].as_str())
                else {
                    continue;
                };
                let user = secret.trim_start_matches("sluice-nats-");
                let is_submitter =
                    user == sluice_deploy::values::DEPLOY_IDENTITY || values.nats.nkeys.submitters.contains_key(user);
                for container in template["spec"]["containers"].as_array().unwrap() {
                    let identity = arg_after(container, "--nats-identity");
                    if is_submitter {
                        assert_eq!(identity, Some(user), "{}: {}", path.display(), object.describe());
                        submitters.push(user.to_owned());
                    } else {
                        assert_eq!(identity, None, "{}: {}", path.display(), object.describe());
                    }
                }
            }
        }
        assert!(
            submitters.iter().any(|user| user == "deploy") && submitters.iter().any(|user| user == "sluice-server")
        );
    }
}
