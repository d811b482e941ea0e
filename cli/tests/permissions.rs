//! NATS roles against a real nats-server started with the configuration
//! `sluice_proto::roles::server_authorization` renders (issue 13, point 3): each role is
//! refused what it may not do — the server reports a permissions violation for exactly that
//! subject — and the same connection then does its own job; a whole workflow runs with
//! every process on its own least-privilege credentials (nkeys and passwords, and `.creds`
//! files on a server in operator mode); and TLS with a client certificate. nkeys, JWTs and
//! certificates are made here (`nkeys`, `rcgen`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{SLUICE, text, workspace_root};
use sluice_client::NatsOptions;
use sluice_client::connect::Secret;
use sluice_proto::RunId;
use sluice_proto::names;
use sluice_proto::roles::{Role, RoleUser, server_authorization};

/// How long a refusal may take to come back from the server.
const REFUSAL_WAIT: Duration = Duration::from_secs(5);

fn worker(pool: &str) -> Role {
    Role::Worker { pool: pool.to_owned() }
}

fn alice() -> Role {
    Role::Submitter { identity: "alice".to_owned() }
}

/// Credentials for each role, written to files in a directory of their own: nkeys for the
/// coordinator and the workers, passwords for the submitter and the viewer (both kinds a
/// deployment may use); or, for a server in operator mode, a `.creds` file (user JWT and
/// seed) for every role.
struct Credentials {
    dir: tempfile::TempDir,
    users: Vec<(Role, Login)>,
    /// The operator's server configuration, when the users are JWTs.
    operator: Option<serde_json::Value>,
}

enum Login {
    Nkey { seed_file: PathBuf },
    Password { password: String },
    Creds { file: PathBuf },
}

fn roles() -> [Role; 5] {
    [Role::Coordinator, worker("default"), worker("gpu"), alice(), Role::Viewer]
}

impl Credentials {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut users = Vec::new();
        for role in [Role::Coordinator, worker("default"), worker("gpu")] {
            let key = nkeys::KeyPair::new_user();
            let seed_file = dir.path().join(format!("{}.nk", role.user_name()));
            std::fs::write(&seed_file, format!("{}\n", key.seed().expect("a seed"))).expect("writing a seed");
            users.push((role, Login::Nkey { seed_file }));
        }
        for role in [alice(), Role::Viewer] {
            users.push((role.clone(), Login::Password { password: format!("{}-secret", role.user_name()) }));
        }
        Self { dir, users, operator: None }
    }

    /// Decentralised auth, as `nsc` sets it up: an operator, the account SLUICE (JetStream
    /// enabled) that it signs, and a user JWT per role signed by the account, carrying the
    /// role's permissions; the server resolves the account from memory.
    fn jwt() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let operator_jwt = jwt::sign(&operator, "sluice-test", &operator.public_key(), jwt::operator_claims());
        let account_jwt = jwt::sign(&operator, names::NATS_ACCOUNT, &account.public_key(), jwt::account_claims(true));
        // JetStream needs a system account in operator mode.
        let system = nkeys::KeyPair::new_account();
        let system_jwt = jwt::sign(&operator, "SYS", &system.public_key(), jwt::account_claims(false));
        let mut users = Vec::new();
        for role in roles() {
            let user = nkeys::KeyPair::new_user();
            let permissions = role.permissions().expect("valid permissions");
            let user_jwt = jwt::sign(&account, &role.user_name(), &user.public_key(), jwt::user_claims(&permissions));
            // Room for the rest of CONNECT and for roles that grow by half again.
            assert!(
                user_jwt.len() * 3 / 2 < jwt::CONTROL_LINE_BYTES,
                "{} bytes: raise the control line",
                user_jwt.len()
            );
            let file = dir.path().join(format!("{}.creds", role.user_name()));
            std::fs::write(&file, jwt::creds(&user_jwt, &user.seed().expect("a seed"))).expect("writing creds");
            users.push((role, Login::Creds { file }));
        }
        let config = serde_json::json!({
            "operator": operator_jwt,
            "resolver": "MEMORY",
            "resolver_preload": { account.public_key(): account_jwt, system.public_key(): system_jwt },
            "system_account": system.public_key(),
            // A role's JWT, sent in CONNECT, is longer than the default 4 KiB control line.
            "max_control_line": jwt::CONTROL_LINE_BYTES,
        });
        Self { dir, users, operator: Some(config) }
    }

    fn login(&self, role: &Role) -> &Login {
        &self.users.iter().find(|(known, _)| known == role).expect("a role with credentials").1
    }

    /// The nats-server configuration: these users in account SLUICE, plus `extra` keys.
    fn server_config(&self, extra: serde_json::Value) -> PathBuf {
        let users: Vec<RoleUser> = self
            .users
            .iter()
            .filter_map(|(role, login)| match login {
                Login::Nkey { seed_file } => {
                    let seed = std::fs::read_to_string(seed_file).expect("seed");
                    let key = nkeys::KeyPair::from_seed(seed.trim()).expect("a seed");
                    Some(RoleUser::nkey(role.clone(), key.public_key()))
                }
                Login::Password { password } => Some(RoleUser::password(role.clone(), password.clone())),
                Login::Creds { .. } => None,
            })
            .collect();
        let mut config = match &self.operator {
            Some(operator) => operator.clone(),
            None => server_authorization(&users).expect("a valid configuration"),
        };
        if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), extra) {
            config.extend(extra);
        }
        let path = self.dir.path().join("nats-server.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("JSON")).expect("writing the config");
        path
    }

    /// The environment a `sluice` process of `role` gets (as an operator would set it).
    fn env(&self, role: &Role) -> Vec<(String, String)> {
        match self.login(role) {
            Login::Nkey { seed_file } => vec![("SLUICE_NATS_NKEY".into(), seed_file.display().to_string())],
            Login::Password { password } => {
                vec![("SLUICE_NATS_USER".into(), role.user_name()), ("SLUICE_NATS_PASSWORD".into(), password.clone())]
            }
            // A JWT names no user the CLI can read: the identity says which role it is.
            Login::Creds { file } => vec![
                ("SLUICE_NATS_CREDS".into(), file.display().to_string()),
                ("SLUICE_NATS_IDENTITY".into(), role.user_name()),
            ],
        }
    }

    /// Connection options of `role` for in-test clients, with its inbox prefix.
    fn options(&self, role: &Role, url: &str) -> NatsOptions {
        let mut options = NatsOptions::new(url).with_default_inbox_prefix(role.inbox_prefix());
        match self.login(role) {
            Login::Nkey { seed_file } => options.nkey_file = Some(seed_file.clone()),
            Login::Password { password } => {
                options.user = Some(role.user_name());
                let file = self.dir.path().join(format!("{}.password", role.user_name()));
                std::fs::write(&file, format!("{password}\n")).expect("writing a password file");
                options.password = Some(Secret::File(file));
            }
            Login::Creds { file } => options.creds_file = Some(file.clone()),
        }
        options
    }
}

/// A connection of one role that records what the server complains about.
struct Conn {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    errors: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Conn {
    async fn open(options: &NatsOptions) -> Self {
        let (report, errors) = tokio::sync::mpsc::unbounded_channel();
        let client = options
            .connect_options("permissions-test")
            .expect("valid options")
            .event_callback(move |event| {
                let report = report.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = report.send(error.to_string());
                    }
                }
            })
            .connect(options.url.as_str())
            .await
            .expect("the role connects");
        let js = async_nats::jetstream::new(client.clone());
        Self { client, js, errors }
    }

    /// Publishes on `subject` (a JetStream API call too is a publish, with a reply subject)
    /// and waits for the server's permissions violation naming it.
    async fn refused(&mut self, subject: &str) {
        let inbox = self.client.new_inbox();
        self.client.publish_with_reply(subject.to_owned(), inbox, "{}".into()).await.expect("published");
        self.client.flush().await.expect("flushed");
        self.refused_as(&format!("Permissions Violation for Publish to \"{subject}\"")).await;
    }

    /// Waits for the server's complaint `expected`.
    async fn refused_as(&mut self, expected: &str) {
        let deadline = Instant::now() + REFUSAL_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.errors.recv()).await {
                Ok(Some(error)) if error.contains(expected) => return,
                Ok(Some(_other)) => continue,
                _ => panic!("no `{expected}` within {REFUSAL_WAIT:?}"),
            }
        }
    }
}

fn run_id() -> RunId {
    RunId::new()
}

/// A stack on a nats-server with the roles' configuration, its helpers reading as the viewer.
fn stack(credentials: &Credentials, extra: serde_json::Value) -> common::Stack {
    let config = credentials.server_config(extra);
    let viewer = credentials.options(&Role::Viewer, "nats://unused");
    common::Stack::start_from(sluice_testkit::Stack::builder(SLUICE).nats_config(config).client_options(viewer))
}

fn spawn_as(stack: &mut common::Stack, credentials: &Credentials, role: &Role, name: &str, args: &[&str]) -> usize {
    let env = credentials.env(role);
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    stack.spawn(name, args, &env)
}

fn sluice_as(stack: &common::Stack, credentials: &Credentials, role: &Role, args: &[&str]) -> std::process::Output {
    let env = credentials.env(role);
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    stack.sluice_with(args, &env)
}

#[test]
fn each_role_is_refused_what_it_may_not_do_and_then_does_its_job() {
    let credentials = Credentials::new();
    let mut stack = stack(&credentials, serde_json::json!({}));
    spawn_as(&mut stack, &credentials, &Role::Coordinator, "coordinator", &["coordinator"]);
    common::wait_until_set_up(&stack);
    // The submitter declares pool `gpu` (a control request under its own identity).
    let declared = sluice_as(&stack, &credentials, &alice(), &["pool", "apply", "gpu"]);
    assert!(declared.status.success(), "pool apply: {}", text(&declared.stderr));
    let url = stack.url();
    let id = run_id();
    let runs_stream = names::kv_stream(names::RUNS_BUCKET);
    stack.block_on(async {
        // A worker of pool `default`.
        let mut default = Conn::open(&credentials.options(&worker("default"), &url)).await;
        let own_pool = |js: async_nats::jetstream::Context| async move {
            let stream = js.get_stream_no_info(names::JOBS_STREAM).await.expect("the jobs stream");
            let consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&names::pool_consumer("default")).await.expect("its own pool's consumer");
            assert_eq!(consumer.cached_info().name, "pool-default");
            js.get_key_value(names::JOBS_BUCKET).await.expect("the job records (inputs)");
        };
        for forbidden in [
            // A submission, a job message (run as the worker's user), a control request.
            names::SUBMIT_SUBJECT.to_owned(),
            names::job_subject("default", &id, "a"),
            names::retry_subject("default", &id, "a"),
            names::control_subject("worker-default", None),
            // Reading runs: opening the bucket, or one record.
            names::js_api_stream_info(&runs_stream),
            names::js_api_direct_get_last(&runs_stream, &names::kv_subject(names::RUNS_BUCKET, &id.to_string())),
            // Fetching another pool's jobs.
            names::js_api_consumer_next(names::JOBS_STREAM, &names::pool_consumer("gpu")),
            // Another pool's subjects: events (a forged outcome), logs, children, dead letters.
            names::event_subject("gpu", &id, "a"),
            names::log_subject("gpu", &id, 1, "a"),
            names::spawn_subject("gpu", &id, "a", 0, 1),
            names::dlq_subject("gpu", Some(&id), Some("a")),
            // Another pool's registry keys and events, and any bucket write.
            names::kv_subject(names::WORKERS_BUCKET, &names::worker_key("gpu", "w1")),
            names::js_api_direct_get_last(names::EVENTS_STREAM, &names::event_subject("gpu", &id, "a")),
            names::kv_subject(names::JOBS_BUCKET, &names::job_key(&id, "a")),
        ] {
            default.refused(&forbidden).await;
            own_pool(default.js.clone()).await;
        }
        // A worker of pool `gpu` may not act for pool `default`.
        let mut gpu = Conn::open(&credentials.options(&worker("gpu"), &url)).await;
        for forbidden in [
            names::event_subject("default", &id, "a"),
            names::js_api_consumer_next(names::JOBS_STREAM, &names::pool_consumer("default")),
            format!("$JS.ACK.{}.{}.1.1.1.1.1.1.1", names::JOBS_STREAM, names::pool_consumer("default")),
        ] {
            gpu.refused(&forbidden).await;
            let stream = gpu.js.get_stream_no_info(names::JOBS_STREAM).await.expect("the jobs stream");
            let consumer: Result<async_nats::jetstream::consumer::PullConsumer, _> =
                stream.get_consumer(&names::pool_consumer("gpu")).await;
            consumer.expect("its own pool's consumer");
        }
        // The submitter: no job messages, no events, nobody else's control subjects, no
        // writes of records.
        let mut submitter = Conn::open(&credentials.options(&alice(), &url)).await;
        for forbidden in [
            names::job_subject("default", &id, "a"),
            names::event_subject("default", &id, "a"),
            names::log_subject("default", &id, 1, "a"),
            names::control_subject("bob", Some(&id)),
            names::control_subject(names::ANONYMOUS_IDENTITY, None),
            names::kv_subject(names::RUNS_BUCKET, &id.to_string()),
            names::js_api_consumer_next(names::JOBS_STREAM, &names::pool_consumer("default")),
            "$JS.API.STREAM.DELETE.SLUICE_JOBS".to_owned(),
        ] {
            submitter.refused(&forbidden).await;
            let stores = sluice_client::Stores::open(&submitter.js).await.expect("reads").expect("set up");
            assert_eq!(stores.run(&id).await.expect("reads runs"), None);
        }
        // The viewer: reads only.
        let mut viewer = Conn::open(&credentials.options(&Role::Viewer, &url)).await;
        for forbidden in [
            names::control_subject("viewer", Some(&id)),
            names::control_subject("alice", None),
            names::SUBMIT_SUBJECT.to_owned(),
            names::kv_subject(names::OUTCOMES_BUCKET, "x"),
        ] {
            viewer.refused(&forbidden).await;
            let pools = sluice_client::Stores::open(&viewer.js).await.expect("reads").expect("set up");
            assert!(pools.pools().await.expect("the pools").iter().any(|pool| pool.name == "gpu"));
        }
        // No role may read the shared inbox, where replies to anyone's requests would go, nor
        // another role's.
        for inbox in ["_INBOX.>".to_owned(), format!("{}.>", Role::Coordinator.inbox_prefix())] {
            let _subscription = viewer.client.subscribe(inbox.clone()).await.expect("subscribed locally");
            viewer.refused_as(&format!("Permissions Violation for Subscription to \"{inbox}\"")).await;
            assert!(!viewer.js.get_key_value(names::RUNS_BUCKET).await.expect("reads").name.is_empty());
        }
    });
}

/// Extract hands an output on, `flaky` fails once and is retried after a delay beyond the
/// worker's NAK limit (a retry the coordinator schedules), `fan` reads its inputs and
/// spawns three children, and everything logs.
const WORKFLOW: &str = r#"name: locked-down
jobs:
  extract:
    run: exec
    command: [sh, -c, 'echo extracting; echo "{\"rows\": 3}" > "$SLUICE_OUTPUT_FILE"']
  flaky:
    needs: [extract]
    run: fail
    config: { message: not yet, succeed_on_attempt: 2 }
    retry: { max_attempts: 2, initial: 1s, max: 1s, jitter: false }
  fan:
    needs: [extract, flaky]
    run: exec
    command: [sh, -c, 'cat "$SLUICE_INPUTS_FILE"; for i in 1 2 3; do echo "{\"name\": \"part-$i\", \"run\": \"noop\"}" >> "$SLUICE_SPAWN_FILE"; done']
"#;

#[test]
fn a_workflow_runs_with_every_process_on_its_own_least_privilege_credentials() {
    a_workflow_runs_on(&Credentials::new());
}

/// The same with `.creds` files (user JWTs) on a server in operator mode: the permissions
/// travel in the JWTs the account signed.
#[test]
fn a_workflow_runs_with_every_process_on_its_own_creds_file_under_an_operator() {
    a_workflow_runs_on(&Credentials::jwt());
}

fn a_workflow_runs_on(credentials: &Credentials) {
    let mut stack = stack(credentials, serde_json::json!({}));
    let coordinator = spawn_as(&mut stack, credentials, &Role::Coordinator, "coordinator", &["coordinator"]);
    let worker =
        spawn_as(&mut stack, credentials, &worker("default"), "worker", &["worker", "--max-nak-delay", "100ms"]);
    stack.wait_for_workers("default", 1, Duration::from_secs(30)).unwrap_or_else(|error| panic!("{error:#}"));
    let file = stack.write("locked.yaml", WORKFLOW);
    let submitted =
        sluice_as(&stack, credentials, &alice(), &["submit", file.to_str().unwrap(), "--wait", "-o", "json"]);
    assert!(submitted.status.success(), "submit --wait: {}\n{}", text(&submitted.stdout), text(&submitted.stderr));
    let run: serde_json::Value = serde_json::from_slice(&submitted.stdout).expect("JSON");
    let id = run["id"].as_str().expect("a run id").to_owned();
    assert_eq!(run["state"], "succeeded", "{run:#}");

    // The viewer reads it all.
    let status = sluice_as(&stack, credentials, &Role::Viewer, &["status", &id, "-o", "json"]);
    assert!(status.status.success(), "status: {}", text(&status.stderr));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("JSON");
    let job = |name: &str| {
        status["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|job| job["name"] == name))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(job("flaky")["attempts"], 2, "retried once, scheduled by the coordinator: {status:#}");
    assert_eq!(job("fan")["state"], "completed", "{status:#}");
    assert_eq!(job("fan")["children"]["total"], 3, "{status:#}");
    let logs = sluice_as(&stack, credentials, &Role::Viewer, &["logs", &id]);
    assert!(logs.status.success(), "logs: {}", text(&logs.stderr));
    assert!(text(&logs.stdout).contains("extracting"), "{}", text(&logs.stdout));
    assert!(
        text(&logs.stdout).contains("\"rows\":3") || text(&logs.stdout).contains("\"rows\": 3"),
        "fan read its input: {}",
        text(&logs.stdout)
    );
    for args in [vec!["runs"], vec!["workers"], vec!["pool", "list"]] {
        let output = sluice_as(&stack, credentials, &Role::Viewer, &args);
        assert!(output.status.success(), "{args:?}: {}", text(&output.stderr));
    }
    // A viewer's control request is refused by the server, and says so.
    let cancel = sluice_as(&stack, credentials, &Role::Viewer, &["cancel", &id]);
    assert!(!cancel.status.success());
    assert!(
        text(&cancel.stderr).contains("Permissions Violation for Publish to \"sluice.control.viewer."),
        "{}",
        text(&cancel.stderr)
    );
    // The submitter's requests go out under its identity.
    let retry = sluice_as(&stack, credentials, &alice(), &["retry", &id, "--job", "extract"]);
    assert!(retry.status.success(), "retry as alice: {}", text(&retry.stderr));

    // The Python SDK on the same credentials: a Python worker of pool `gpu` (a worker's
    // role) runs a fan-out that a Python client submitted as alice and waited for.
    let python_worker = python_sdk_runs_a_fan_out(&mut stack, credentials);
    // No process was refused anything while the workflows ran.
    for process in [coordinator, worker, python_worker] {
        assert!(!stack.log(process).contains("Permissions Violation"), "{}", stack.log(process));
    }
}

/// The Python worker's jobs for [`python_sdk_runs_a_fan_out`].
const PYTHON_JOBS: &str = r#"
import sluice

@sluice.job(name="py-part")
def part(item):
    return {"item": item}

@sluice.job(name="py-fan")
def fan(start, end, config, ctx):
    ctx.logger.info("fanning out")
    ctx.fan_out(part, [1, 2, 3])
"#;

/// The Python client's side: submits as alice, waits (a KV watch), prints the end.
const PYTHON_CLIENT: &str = r#"
import sys, sluice
client = sluice.Client()
run = client.wait(client.submit(sys.argv[1], window="2024-03-01"), timeout=60)
print(run.state.value, sum(1 for path in run.jobs if path.startswith("fan.")))
"#;

/// Runs a fan-out through the Python SDK, every process on its role's credentials from the
/// environment (the SDK reads the same `SLUICE_NATS_*` variables); returns the worker.
fn python_sdk_runs_a_fan_out(stack: &mut common::Stack, credentials: &Credentials) -> usize {
    let python = workspace_root().join(".tools/venv/bin/python");
    let jobs = stack.write("permjobs.py", PYTHON_JOBS);
    let jobs_dir = jobs.parent().expect("a directory").display().to_string();
    let declared = sluice_as(stack, credentials, &alice(), &["pool", "apply", "gpu"]);
    assert!(declared.status.success(), "pool apply gpu: {}", text(&declared.stderr));
    let gpu = worker("gpu");
    let mut env = credentials.env(&gpu);
    env.push(("SLUICE_NATS_INBOX_PREFIX".into(), gpu.inbox_prefix()));
    env.push(("PYTHONPATH".into(), jobs_dir));
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    let args = ["-m", "sluice", "worker", "permjobs", "--pool", "gpu", "--concurrency", "2"];
    let process = stack.spawn_program("python-worker", &python, &args, &env_refs);
    stack.wait_for_workers("gpu", 1, Duration::from_secs(30)).unwrap_or_else(|error| panic!("{error:#}"));
    let flow = stack.write("python.yaml", "name: py-locked\njobs:\n  fan: { run: py-fan, pool: gpu }\n");
    let script = stack.write("client.py", PYTHON_CLIENT);
    let mut client = std::process::Command::new(&python);
    client.arg(&script).arg(&flow).env("SLUICE_NATS_URL", stack.url());
    for (key, value) in credentials.env(&alice()) {
        client.env(key, value);
    }
    let output = client.env("SLUICE_NATS_INBOX_PREFIX", alice().inbox_prefix()).output().expect("python runs");
    assert!(
        output.status.success(),
        "the Python client: {}\n{}\nworker: {}",
        text(&output.stdout),
        text(&output.stderr),
        stack.log(process)
    );
    assert_eq!(text(&output.stdout).trim(), "succeeded 3", "{}", stack.log(process));
    process
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Tls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_tls(dir: &Path) -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("writing a PEM file");
        path
    };
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: rcgen gives every certificate the same one by default, and OpenSSL
    // (Python's ssl) takes a leaf whose issuer is its own subject for self-signed.
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Sluice test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(names.clone()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0].as_str());
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("a certificate");
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) =
        leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(vec!["viewer".into()], ExtendedKeyUsagePurpose::ClientAuth);
    Tls {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server_cert),
        server_key: write("server-key.pem", server_key),
        client_cert: write("client.pem", client_cert),
        client_key: write("client-key.pem", client_key),
    }
}

#[test]
fn over_tls_with_client_certificates_each_role_connects_only_with_the_ca_and_its_certificate() {
    let credentials = Credentials::new();
    let tls = make_tls(credentials.dir.path());
    let server_tls = serde_json::json!({"tls": {
        "cert_file": tls.server_cert, "key_file": tls.server_key, "ca_file": tls.ca, "verify": true, "timeout": 2
    }});
    let config = credentials.server_config(server_tls);
    let tls_options = |role: &Role| NatsOptions {
        tls_ca: Some(tls.ca.clone()),
        tls_cert: Some(tls.client_cert.clone()),
        tls_key: Some(tls.client_key.clone()),
        ..credentials.options(role, "nats://unused")
    };
    let mut stack = common::Stack::start_from(
        sluice_testkit::Stack::builder(SLUICE)
            .nats_config(config)
            .client_options(tls_options(&Role::Viewer))
            .env("SLUICE_NATS_TLS_CA", tls.ca.display().to_string())
            .env("SLUICE_NATS_TLS_CERT", tls.client_cert.display().to_string())
            .env("SLUICE_NATS_TLS_KEY", tls.client_key.display().to_string())
            .current_dir(workspace_root()),
    );
    spawn_as(&mut stack, &credentials, &Role::Coordinator, "coordinator", &["coordinator"]);
    common::wait_until_set_up(&stack);
    let runs = sluice_as(&stack, &credentials, &Role::Viewer, &["runs", "-o", "json"]);
    assert!(runs.status.success(), "runs over TLS: {}", text(&runs.stderr));
    // The Python SDK over the same TLS, as the viewer (its SLUICE_NATS_TLS_* variables), and
    // refused without its client certificate.
    let python_runs = |with_certificate: bool| {
        let mut command = std::process::Command::new(workspace_root().join(".tools/venv/bin/python"));
        command.args(["-c", "import sluice; print(len(sluice.Client().runs()))"]);
        command.env("SLUICE_NATS_URL", stack.url()).env("SLUICE_NATS_INBOX_PREFIX", Role::Viewer.inbox_prefix());
        command.env("SLUICE_NATS_TLS_CA", &tls.ca);
        if with_certificate {
            command.env("SLUICE_NATS_TLS_CERT", &tls.client_cert).env("SLUICE_NATS_TLS_KEY", &tls.client_key);
        }
        command.envs(credentials.env(&Role::Viewer)).output().expect("python runs")
    };
    let listed = python_runs(true);
    assert!(listed.status.success(), "Python over TLS: {}", text(&listed.stderr));
    assert_eq!(text(&listed.stdout).trim(), "0");
    assert!(!python_runs(false).status.success(), "the server requires a client certificate");
    // Without the client certificate, or without the CA, the connection is refused.
    let url = stack.url();
    stack.block_on(async {
        let no_client_cert = NatsOptions { tls_cert: None, tls_key: None, ..tls_options(&Role::Viewer) };
        let no_ca = NatsOptions { tls_ca: None, ..tls_options(&Role::Viewer) };
        for options in [no_client_cert, no_ca] {
            let options = NatsOptions { url: url.clone(), ..options };
            let error = sluice_client::connect_with(&options, "tls-test").await.expect_err("refused");
            assert!(matches!(error, sluice_client::ClientError::Refused { .. }), "{error}");
            assert!(error.to_string().contains("refused the connection: TLS"), "{error}");
        }
    });
}

/// NATS JWTs as `nsc` makes them (nats-io/jwt v2): a header and claims, base64url without
/// padding, signed with the issuer's nkey (ed25519). Only what the test needs.
mod jwt {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sluice_proto::roles::Permissions;

    /// The `max_control_line` a server needs for these users (docs/operations.md).
    pub const CONTROL_LINE_BYTES: usize = 16 * 1024;

    /// `claims` (the `nats` part) of `subject`, named `name`, issued and signed by `issuer`.
    pub fn sign(issuer: &nkeys::KeyPair, name: &str, subject: &str, claims: serde_json::Value) -> String {
        let header = serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"});
        let issued_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default();
        let body = serde_json::json!({
            "jti": uuid::Uuid::now_v7().simple().to_string().to_uppercase(),
            "iat": issued_at,
            "iss": issuer.public_key(),
            "name": name,
            "sub": subject,
            "nats": claims,
        });
        let encode = |value: &serde_json::Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON"));
        let signed = format!("{}.{}", encode(&header), encode(&body));
        let signature = issuer.sign(signed.as_bytes()).expect("signed");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    pub fn operator_claims() -> serde_json::Value {
        serde_json::json!({"type": "operator", "version": 2})
    }

    /// An account with no limits, and JetStream enabled (unlimited storage) or not.
    pub fn account_claims(jetstream: bool) -> serde_json::Value {
        let storage = if jetstream { -1 } else { 0 };
        serde_json::json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
                "conn": -1, "leaf": -1, "mem_storage": storage, "disk_storage": storage,
                "streams": storage, "consumer": storage,
            },
            "type": "account",
            "version": 2,
        })
    }

    /// A user with a role's permissions.
    pub fn user_claims(permissions: &Permissions) -> serde_json::Value {
        serde_json::json!({
            "pub": {"allow": permissions.publish.allow, "deny": permissions.publish.deny},
            "sub": {"allow": permissions.subscribe.allow, "deny": permissions.subscribe.deny},
            "subs": -1, "data": -1, "payload": -1,
            "type": "user",
            "version": 2,
        })
    }

    /// A `.creds` file: the user JWT and its seed, framed as `nsc` writes them.
    pub fn creds(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    }
}
