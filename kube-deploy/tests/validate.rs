//! Every rendered object validates against the Kubernetes 1.33 schemas in strict mode (PyPI
//! `kubernetes-validate`), every ScaledObject/ScaledJob against KEDA's schemas (npm
//! `@kubernetes-models/keda`) and against the structural schema of KEDA's own CRDs
//! (deploy/crds/), with unknown fields refused. scripts/install-tools.sh installs the tools
//! into .tools/ (`make test` runs it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use sluice_deploy::Object;

fn tools_dir() -> PathBuf {
    std::env::var_os("SLUICE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools"))
}

fn every_rendered_object() -> Vec<(String, Object)> {
    let dir = sluice_deploy::repo_deploy_dir().join("values");
    let mut out = Vec::new();
    for file in sluice_deploy::values_files(&dir).unwrap() {
        let overlay = sluice_deploy::overlay_name(&file);
        for object in sluice_deploy::render_file(&file).unwrap() {
            out.push((overlay.clone(), object));
        }
    }
    out
}

fn is_keda(object: &Object) -> bool {
    object.api_version.starts_with("keda.sh/")
}

/// Runs kubernetes-validate on `values` (one file each): (success, output).
fn kubernetes_validate(values: &[(String, &Value)]) -> (bool, String) {
    let binary = tools_dir().join("venv/bin/kubernetes-validate");
    assert!(binary.exists(), "no {}: run scripts/install-tools.sh", binary.display());
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, value) in values {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
        files.push(path);
    }
    let output = Command::new(binary).args(["--strict", "-k", "1.33", "--no-warn"]).args(&files).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn every_kubernetes_object_validates_strictly_against_1_33() {
    let objects = every_rendered_object();
    let plain: Vec<(String, &Value)> = objects
        .iter()
        .filter(|(_, object)| !is_keda(object))
        .enumerate()
        .map(|(i, (overlay, object))| (format!("{i}-{overlay}-{}-{}", object.kind, object.name), &object.value))
        .collect();
    assert!(plain.len() > 20, "{}", plain.len());
    let (ok, output) = kubernetes_validate(&plain);
    assert!(ok, "kubernetes-validate --strict -k 1.33 refused rendered objects:\n{output}");
    assert!(!output.contains("ERROR"), "{output}");

    // The check can fail: an unknown field and a wrong type are refused.
    let mut unknown = plain[0].1.clone();
    unknown["metadata"]["colour"] = json!("blue");
    let mut wrong_type = objects.iter().find(|(_, o)| o.kind == "Deployment").unwrap().1.value.clone();
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!("long");
    for (what, value) in [("unknown field", unknown), ("wrong type", wrong_type)] {
        let (ok, output) = kubernetes_validate(&[("bad".to_owned(), &value)]);
        assert!(!ok && output.contains("did not validate"), "{what}: {output}");
    }
}

fn keda_validate(values: &[&Value]) -> (bool, String) {
    let modules = tools_dir().join("node/node_modules");
    assert!(
        modules.join("@kubernetes-models/keda").exists(),
        "no @kubernetes-models/keda in {}: run scripts/install-tools.sh",
        modules.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/validate/keda.mjs");
    let mut child = Command::new("node")
        .arg(script)
        .env("SLUICE_NODE_MODULES", modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is on PATH");
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(values).unwrap()).unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn every_scaled_object_and_scaled_job_validates_against_kedas_schema() {
    let objects = every_rendered_object();
    let keda: Vec<&Value> = objects.iter().filter(|(_, o)| is_keda(o)).map(|(_, o)| &o.value).collect();
    assert!(keda.iter().any(|v| v["kind"] == "ScaledJob") && keda.iter().any(|v| v["kind"] == "ScaledObject"));
    let (ok, output) = keda_validate(&keda);
    assert!(ok, "@kubernetes-models/keda refused rendered objects:\n{output}");
    assert_eq!(output.lines().filter(|line| line.starts_with("ok ")).count(), keda.len(), "{output}");

    let mut bad = keda[0].clone();
    bad["spec"]["minReplicaCount"] = json!("none");
    let (ok, output) = keda_validate(&[&bad]);
    assert!(!ok && output.contains("minReplicaCount"), "{output}");
}

/// The `openAPIV3Schema` of the served version of a KEDA CRD in deploy/crds/.
fn crd_schema(kind: &str) -> Value {
    let file = format!("keda.sh_{}s.yaml", kind.to_ascii_lowercase());
    let text = std::fs::read_to_string(sluice_deploy::repo_deploy_dir().join("crds").join(file)).unwrap();
    let crd: Value = serde_saphyr::from_str(&text).unwrap();
    crd["spec"]["versions"].as_array().unwrap().iter().find(|v| v["name"] == "v1alpha1").unwrap()["schema"]["openAPIV3Schema"]
        .clone()
}

/// Checks `value` against a CRD's structural schema: types, required fields, enums, and no
/// field the schema does not declare (what a 1.20 apiserver prunes silently instead of refusing).
fn structural_errors(path: &str, value: &Value, schema: &Value, errors: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) && schema.get("properties").is_none() {
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&json!(true));
    let type_ok = match (schema.get("type").and_then(Value::as_str), value) {
        _ if int_or_string => value.is_i64() || value.is_string(),
        (None, _) => true,
        (Some("object"), Value::Object(_)) | (Some("array"), Value::Array(_)) | (Some("string"), Value::String(_)) => {
            true
        }
        (Some("boolean"), Value::Bool(_)) => true,
        (Some("integer"), v) => v.is_i64() || v.is_u64(),
        (Some("number"), v) => v.is_number(),
        _ => false,
    };
    if !type_ok {
        errors.push(format!("{path}: expected {}, found {value}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        errors.push(format!("{path}: {value} is not one of {allowed:?}"));
    }
    match value {
        Value::Object(map) => {
            for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                if let Some(key) = required.as_str()
                    && !map.contains_key(key)
                {
                    errors.push(format!("{path}: missing required field {key}"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(child_schema), _) => structural_errors(&child_path, child, child_schema, errors),
                    (None, Some(Value::Object(any))) => {
                        structural_errors(&child_path, child, &Value::Object(any.clone()), errors)
                    }
                    (None, Some(Value::Bool(true))) => {}
                    // `metadata` has no properties in a CRD schema: the server checks it itself.
                    (None, _) if properties.is_none() && path.is_empty() => {}
                    (None, _)
                        if properties.is_none()
                            && schema.get("type") == Some(&json!("object"))
                            && path.ends_with("metadata") => {}
                    (None, _) => errors.push(format!("{child_path}: unknown field")),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    structural_errors(&format!("{path}[{i}]"), item, item_schema, errors);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn keda_objects_fit_kedas_own_crds_with_no_unknown_field() {
    let objects = every_rendered_object();
    let mut checked = 0;
    for (overlay, object) in objects.iter().filter(|(_, o)| is_keda(o)) {
        let schema = crd_schema(&object.kind);
        let mut errors = Vec::new();
        structural_errors("", &object.value, &schema, &mut errors);
        assert!(errors.is_empty(), "{overlay} {}: {errors:#?}", object.describe());
        checked += 1;
    }
    assert!(checked >= 3, "{checked}");

    // The check can fail: an unknown field and a wrong type are found.
    let (_, scaled) = objects.iter().find(|(_, o)| o.kind == "ScaledObject").unwrap();
    let mut unknown = scaled.value.clone();
    unknown["spec"]["cooldownPeriods"] = json!(30);
    let mut wrong = scaled.value.clone();
    wrong["spec"]["pollingInterval"] = json!("10s");
    for (bad, expected) in
        [(unknown, ".spec.cooldownPeriods: unknown field"), (wrong, ".spec.pollingInterval: expected")]
    {
        let mut errors = Vec::new();
        structural_errors("", &bad, &crd_schema("ScaledObject"), &mut errors);
        assert!(errors.iter().any(|e| e.starts_with(expected)), "{expected}: {errors:?}");
    }
}
