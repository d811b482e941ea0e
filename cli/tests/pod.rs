//! `run: pod` end to end: a real nats-server, `sluice coordinator`, `sluice worker
//! --pod-namespace` talking to a real kube-apiserver v1.20.2 (testkit's `kube_api`), and
//! `sluice submit --wait`. There is no kubelet: the test plays the Job controller by
//! patching each Job's status (kubectl), and the run follows.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sluice_testkit::kube_api::KubeApi;

/// The names of the Jobs in namespace `jobs` whose job label is `job`.
fn jobs_named(api: &KubeApi, job: &str) -> Vec<String> {
    let listed = api
        .kubectl(&[
            "get",
            "jobs",
            "-n",
            "jobs",
            "-l",
            &format!("sluice.dev/job={job}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .unwrap();
    listed.split_whitespace().map(str::to_owned).collect()
}

/// Waits for the one Job of `job`, then marks it succeeded as a Job controller would.
fn succeed(api: &KubeApi, job: &str) -> serde_json::Value {
    let mut names = Vec::new();
    wait_until(Duration::from_secs(60), &format!("the Job of `{job}`"), || {
        names = jobs_named(api, job);
        !names.is_empty()
    });
    assert_eq!(names.len(), 1, "one Job per attempt: {names:?}");
    let stored: serde_json::Value =
        serde_json::from_str(&api.kubectl(&["get", "job", &names[0], "-n", "jobs", "-o", "json"]).unwrap()).unwrap();
    let status = r#"{"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}}"#;
    api.kubectl(&["patch", "job", &names[0], "-n", "jobs", "--subresource=status", "--type=merge", "-p", status])
        .unwrap();
    wait_until(Duration::from_secs(30), &format!("the Job of `{job}` to be deleted"), || {
        jobs_named(api, job).is_empty()
    });
    stored
}

const WORKFLOW: &str = r#"name: pod-e2e
defaults:
  pool: k8s
jobs:
  extract:
    run: pod
    image: ghcr.io/acme/etl:1.4
    command: [python3, etl.py, "{{start}}"]
    resources: {limits: {cpu: 1, memory: 1Gi}, requests: {cpu: 250m}}
    env:
      MODE: full
      TOKEN: {secret: api-token}
    timeout: 10m
  load:
    run: pod
    needs: [extract]
    image: ghcr.io/acme/load:2
"#;

#[test]
fn a_pod_workflow_runs_as_kubernetes_jobs_an_image_off_the_list_is_dead_lettered_cancel_deletes_the_job_and_an_orphan_is_recorded()
 {
    let api = KubeApi::start().unwrap();
    api.kubectl(&["create", "namespace", "jobs"]).unwrap();
    let mut stack = Stack::start();
    stack.coordinator();
    wait_until_set_up(&stack);
    // A short ack wait, so the job of a killed worker comes back soon (below).
    stack.sluice_json(&["pool", "apply", "k8s", "--ack-wait", "2s"], 0);
    // Pod flags without a namespace, or no cluster to reach: refused before connecting.
    let lone = stack.sluice(&["worker", "--pool", "k8s", "--allow-image", "ghcr.io/acme/*"]);
    assert_eq!(lone.status.code(), Some(2), "{}", text(&lone.stderr));
    assert!(text(&lone.stderr).contains("--pod-namespace"), "{}", text(&lone.stderr));
    let nowhere = Command::new(SLUICE)
        .args(["worker", "--pool", "k8s", "--pod-namespace", "jobs"])
        .env("SLUICE_NATS_URL", stack.url())
        .env("KUBECONFIG", stack.dir.path().join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", stack.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(2), "{}", text(&nowhere.stderr));
    assert!(text(&nowhere.stderr).contains("no Kubernetes client"), "{}", text(&nowhere.stderr));
    let kubeconfig = api.kubeconfig().display().to_string();
    let args = [
        "worker",
        "--pool",
        "k8s",
        "--pod-namespace",
        "jobs",
        "--allow-image",
        "ghcr.io/acme/*",
        "--pod-secret",
        "api-token",
    ];
    let worker = stack.spawn("worker", &args, &[("KUBECONFIG", kubeconfig.as_str())]);
    stack.wait_for_workers("k8s", 1, Duration::from_secs(30)).unwrap();
    let listed = stack.sluice_json(&["workers"], 0);
    let kinds =
        listed["workers"].as_array().unwrap().iter().find(|worker| worker["pool"] == "k8s").unwrap()["kinds"].clone();
    assert!(kinds.as_array().unwrap().contains(&serde_json::json!("pod")), "{kinds}");

    let file = stack.write("pod.yaml", WORKFLOW);
    let mut submit = Command::new(SLUICE)
        .args(["submit", "--wait", "--window", "2024-03-01"])
        .arg(&file)
        .env("SLUICE_NATS_URL", stack.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the Job of `extract`", || !jobs_named(&api, "extract").is_empty());
    assert!(jobs_named(&api, "load").is_empty(), "`load` needs `extract`: no Job of it before `extract` succeeds");
    let extract = succeed(&api, "extract");
    let container = &extract["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], serde_json::json!(["python3", "etl.py", "2024-03-01T00:00:00Z"]));
    assert_eq!(container["resources"]["limits"], serde_json::json!({"cpu": "1", "memory": "1Gi"}));
    let env = container["env"].as_array().unwrap();
    let token = env.iter().find(|var| var["name"] == "TOKEN").unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "api-token", "key": "value", "optional": false})
    );
    assert_eq!(extract["spec"]["activeDeadlineSeconds"], 600);
    assert_eq!(extract["metadata"]["labels"]["sluice.dev/attempt"], "1");
    succeed(&api, "load");
    let mut status = None;
    wait_until(Duration::from_secs(60), "sluice submit --wait to end", || {
        status = submit.try_wait().unwrap();
        status.is_some()
    });
    let output = submit.wait_with_output().unwrap();
    assert_eq!(status.and_then(|status| status.code()), Some(0), "{}{}", text(&output.stdout), text(&output.stderr));

    // An image the pool does not allow: permanent, so the job is dead-lettered with a reason
    // naming the image and the patterns, and nothing is created in the cluster.
    let evil = stack.write(
        "evil.yaml",
        "name: evil\njobs:\n  grab:\n    run: pod\n    pool: k8s\n    image: docker.io/evil:latest\n",
    );
    let refused = stack.sluice(&["submit", "--wait", evil.to_str().unwrap()]);
    let said = format!("{}{}", text(&refused.stdout), text(&refused.stderr));
    assert_ne!(refused.status.code(), Some(0), "{said}");
    let letters = stack.sluice_json(&["dlq", "list"], 0).to_string();
    assert!(
        letters.contains("image `docker.io/evil:latest` is not allowed") && letters.contains("ghcr.io/acme/*"),
        "{letters}"
    );
    assert!(jobs_named(&api, "grab").is_empty());

    // `sluice cancel` while the pod job runs: the worker deletes its Job.
    let slow = stack.write(
        "slow.yaml",
        "name: slow\njobs:\n  crunch:\n    run: pod\n    pool: k8s\n    image: ghcr.io/acme/crunch:1\n",
    );
    let submitted = stack.sluice_json(&["submit", slow.to_str().unwrap()], 0);
    let run = submitted["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(60), "the Job of `crunch`", || !jobs_named(&api, "crunch").is_empty());
    let cancelled = stack.sluice(&["cancel", &run]);
    assert_eq!(cancelled.status.code(), Some(0), "{}", text(&cancelled.stderr));
    wait_until(Duration::from_secs(30), "the cancelled run's Job to be deleted", || {
        jobs_named(&api, "crunch").is_empty()
    });
    let ended = stack.wait_for_run(&run, Duration::from_secs(30));
    assert_eq!(ended["state"], "cancelled", "{ended:#}");

    // A worker killed mid-attempt leaves its Job running. The next attempt finds it by its
    // labels, records what it had come to in attempt 1's entry of the history, deletes it
    // and runs afresh.
    let resume = stack.write(
        "resume.yaml",
        "name: resume\njobs:\n  resume:\n    run: pod\n    pool: k8s\n    image: ghcr.io/acme/resume:1\n",
    );
    let submitted = stack.sluice_json(&["submit", resume.to_str().unwrap()], 0);
    let run = submitted["id"].as_str().unwrap().to_owned();
    let mut first = Vec::new();
    wait_until(Duration::from_secs(60), "attempt 1's Job of `resume`", || {
        first = jobs_named(&api, "resume");
        !first.is_empty()
    });
    let active = r#"{"status": {"active": 1}}"#;
    api.kubectl(&["patch", "job", &first[0], "-n", "jobs", "--subresource=status", "--type=merge", "-p", active])
        .unwrap();
    stack.kill(worker);
    stack.spawn("worker", &args, &[("KUBECONFIG", kubeconfig.as_str())]);
    wait_until(
        Duration::from_secs(60),
        "attempt 2's Job to replace the orphan",
        || matches!(jobs_named(&api, "resume").as_slice(), [only] if *only != first[0]),
    );
    let second = succeed(&api, "resume");
    assert_eq!(second["metadata"]["labels"]["sluice.dev/attempt"], "2");
    let ended = stack.wait_for_run(&run, Duration::from_secs(30));
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    let job = ended["jobs"].as_array().unwrap().iter().find(|job| job["name"] == "resume").unwrap();
    let history = job["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{job:#}");
    let found = history[0]["found_later"].as_str().unwrap_or_default();
    assert!(
        found.contains(&first[0]) && found.contains("found by attempt 2: still running (1 active pod); deleted"),
        "attempt 1 says what became of its Job: {job:#}"
    );
    assert!(history[1]["found_later"].is_null(), "{job:#}");
    let shown = stack.sluice(&["status", &run]);
    assert!(text(&shown.stdout).contains(&format!("found later: its Job {}", first[0])), "{}", text(&shown.stdout));
}
