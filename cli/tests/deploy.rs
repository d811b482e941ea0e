//! `sluice deploy render` and `sluice deploy apply` as a user runs them (from the repository
//! root): `--out DIR` gives exactly what deploy/ holds, bad input exits 2 naming what is
//! wrong, and apply reaches a real kube-apiserver (v1.20.2 on loopback) through KUBECONFIG.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn sluice(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.args(args).current_dir(repo()).stdin(Stdio::null());
    match kubeconfig {
        Some(path) => command.env("KUBECONFIG", path),
        None => command.env("KUBECONFIG", "/nonexistent"),
    };
    command.output().unwrap()
}

fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = ["base", "overlays"].iter().map(|d| dir.join(d)).collect();
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn render_out_gives_exactly_what_deploy_holds() {
    let out = tempfile::tempdir().unwrap();
    let output = sluice(&["deploy", "render", "--out", &out.path().display().to_string()], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("wrote "));
    let rendered = files(out.path());
    assert!(rendered.len() > 20);
    assert_eq!(rendered, files(&repo().join("deploy")), "deploy/ drifted: run `sluice deploy render` and commit it");
}

#[test]
fn bad_values_and_unknown_overlays_exit_2_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let prod = std::fs::read_to_string(repo().join("deploy/values/prod.yaml")).unwrap();
    std::fs::write(
        &bad,
        prod.replace("    min_replicas: 0\n    max_replicas: 20", "    min_replicas: 30\n    max_replicas: 20"),
    )
    .unwrap();
    let output = sluice(&["deploy", "render", "--values", &bad.display().to_string()], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.yaml") && stderr.contains("`pools[0].min_replicas` is 30"), "{stderr}");

    let output = sluice(&["deploy", "apply", "--overlay", "staging"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("deploy/values/staging.yaml"));

    // One values file alone: its objects on stdout.
    let output = sluice(&["-o", "json", "deploy", "render", "--values", "deploy/values/dev.yaml"], None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let objects: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert!(objects.iter().any(|o| o["kind"] == "ScaledObject"));
}

#[test]
fn apply_dry_run_names_missing_apis_then_skips_them() {
    let api = sluice_testkit::kube_api::KubeApi::start().unwrap();
    let kubeconfig = api.kubeconfig();
    // No KEDA on this server: the kinds are named and nothing is written.
    let output = sluice(&["deploy", "apply", "--overlay", "dev", "--dry-run=server"], Some(&kubeconfig));
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("keda.sh/v1alpha1 ScaledObject") && stderr.contains("policy/v1 PodDisruptionBudget"),
        "{stderr}"
    );

    // A server-side dry run checks objects in namespaces that exist (the server refuses an
    // object whose namespace it does not have, even in a dry run).
    api.kubectl(&["create", "namespace", "sluice"]).unwrap();
    api.kubectl(&["create", "namespace", "sluice-jobs"]).unwrap();
    let output = sluice(
        &["-o", "json", "deploy", "apply", "--overlay", "dev", "--dry-run=server", "--skip-missing-apis"],
        Some(&kubeconfig),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        report["skipped_kinds"],
        serde_json::json!(["keda.sh/v1alpha1 ScaledObject", "policy/v1 PodDisruptionBudget"])
    );
    assert!(report["applied"].as_array().unwrap().len() > 10, "{report}");
    // A dry run stores nothing.
    let stored = api.kubectl(&["get", "deployments,statefulsets,configmaps", "-n", "sluice", "-o", "name"]).unwrap();
    assert!(!stored.contains("deployment") && !stored.contains("nats-config"), "{stored}");
}
