//! A real Kubernetes API server for tests: Debian's etcd and kube-apiserver v1.20.2 (built once
//! by `scripts/kube-apiserver.sh` into a cache outside the clone; `make test` runs it), both on
//! loopback with random ports and a temporary directory, stopped and removed on drop.
//!
//! There is no kubelet and no controller manager: the server checks API contracts (schemas,
//! server-side apply, RBAC, CRDs) and stores objects; nothing runs them. A test that needs a
//! Job to finish plays the kubelet by patching the Job's status.
//!
//! This module has no Kubernetes client dependency (testkit stays light): it hands out the
//! server URL, an admin bearer token, the server's CA certificate and a kubeconfig file, from
//! which a test builds its own `kube::Client` or runs `kubectl --kubeconfig`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::prelude::{BASE64_STANDARD, Engine as _};
use sluice_local_nats::free_port;

/// The apiserver version `scripts/kube-apiserver.sh` builds (its cache key).
pub const KUBE_VERSION: &str = "1.20.2";
/// How long the server may take to answer `/readyz` ok (about 2 s when the machine is idle;
/// much longer while a build shares the cores).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between readiness polls. Not a synchronisation sleep: polling is how a client learns
/// the server is ready (nothing signals it).
const READY_POLL: Duration = Duration::from_millis(200);
/// The service range the apiserver allocates cluster IPs from: only a range, no traffic goes
/// there (there is no proxy).
const SERVICE_RANGE: &str = "10.231.0.0/24";

/// The cached kube-apiserver binary: `$SLUICE_KUBE_APISERVER`, else where
/// `scripts/kube-apiserver.sh` puts it (`$SLUICE_CACHE_DIR` or `~/.cache/sluice`).
pub fn find_apiserver() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_KUBE_APISERVER").map(PathBuf::from) {
        if !path.is_file() {
            bail!("no kube-apiserver at {} (given by SLUICE_KUBE_APISERVER)", path.display());
        }
        return Ok(path);
    }
    let cache = match std::env::var_os("SLUICE_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/sluice"),
    };
    let path = cache.join(format!("kube-apiserver-{KUBE_VERSION}/bin/kube-apiserver"));
    if !path.is_file() {
        bail!(
            "no kube-apiserver at {}: build it with scripts/kube-apiserver.sh (`make test` and `make tools` run it; \
             the first build takes about ten minutes)",
            path.display()
        );
    }
    Ok(path)
}

/// A running etcd + kube-apiserver pair. Dropping it kills both and removes their files.
pub struct KubeApi {
    etcd: Child,
    apiserver: Child,
    url: String,
    token: String,
    dir: tempfile::TempDir,
}

impl KubeApi {
    /// Starts etcd and the apiserver and waits until `/readyz` is ok.
    pub fn start() -> Result<Self> {
        let binary = find_apiserver()?;
        let etcd_binary = which("etcd")
            .context("etcd is not on PATH (Debian's etcd-server; scripts/kube-apiserver.sh installs it)")?;
        let dir = tempfile::Builder::new().prefix("sluice-kube-api-").tempdir()?;
        let path = dir.path();
        let (etcd_client, etcd_peer, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_log = std::fs::File::create(path.join("etcd.log"))?;
        let etcd = Command::new(etcd_binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", path.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{etcd_peer}"))
            .stdin(Stdio::null())
            .stdout(etcd_log.try_clone()?)
            .stderr(etcd_log)
            .spawn()
            .context("starting etcd")?;

        // One admin in system:masters; tests act as service accounts through impersonation.
        let token = random_hex(16)?;
        std::fs::write(path.join("tokens.csv"), format!("{token},admin,admin,system:masters\n"))?;
        openssl(&["genrsa", "-out", &text(&path.join("sa.key")), "2048"])?;
        openssl(&["rsa", "-in", &text(&path.join("sa.key")), "-pubout", "-out", &text(&path.join("sa.pub"))])?;

        let api_log = std::fs::File::create(path.join("kube-apiserver.log"))?;
        let apiserver = Command::new(&binary)
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_client}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--insecure-port=0"])
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", path.join("certs").display()))
            .arg(format!("--token-auth-file={}", path.join("tokens.csv").display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", path.join("sa.pub").display()))
            .arg(format!("--service-account-signing-key-file={}", path.join("sa.key").display()))
            .arg(format!("--service-cluster-ip-range={SERVICE_RANGE}"))
            .arg("--enable-priority-and-fairness=false")
            .stdin(Stdio::null())
            .stdout(api_log.try_clone()?)
            .stderr(api_log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;

        let mut api = Self { etcd, apiserver, url: format!("https://127.0.0.1:{api_port}"), token, dir };
        api.wait_ready()?;
        api.write_kubeconfig()?;
        Ok(api)
    }

    /// Polls `/readyz` (with the admin token; the server's certificate is self-signed and read
    /// from its cert dir once it exists) until ok, or fails with the end of both logs.
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.apiserver.try_wait()? {
                bail!("kube-apiserver exited ({status}) before it was ready:\n{}", self.logs());
            }
            if let Some(status) = self.etcd.try_wait()? {
                bail!("etcd exited ({status}) before the apiserver was ready:\n{}", self.logs());
            }
            let ok = Command::new("curl")
                .args(["-ksf", "-o", "/dev/null", "-H"])
                .arg(format!("Authorization: Bearer {}", self.token))
                .arg(format!("{}/readyz", self.url))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running curl")?
                .success();
            if ok {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("kube-apiserver not ready after {READY_TIMEOUT:?}:\n{}", self.logs());
            }
            std::thread::sleep(READY_POLL);
        }
    }

    fn write_kubeconfig(&self) -> Result<()> {
        // A kubeconfig is YAML, and JSON is YAML: built as a value, never as text.
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url,
                "certificate-authority-data": BASE64_STANDARD.encode(std::fs::read(self.ca_path())?),
            }}],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin", "namespace": "default"}}],
            "current-context": "test",
        });
        std::fs::write(self.kubeconfig(), serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A bearer token of a user in `system:masters`.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// The server's self-signed serving certificate (PEM), its own CA. It names
    /// `localhost` and 127.0.0.1.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs/apiserver.crt")
    }

    /// A kubeconfig for the admin (current context `test`, namespace `default`): for
    /// `kubectl --kubeconfig` and `KUBECONFIG`, which `kube::Client::try_default()` reads.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `kubectl --kubeconfig <this server's>` with `args`: the output on success, an error
    /// with stderr otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running kubectl (it is on this machine's image; see platform-facts)")?;
        if !output.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl auth can-i VERB RESOURCE -n NAMESPACE --as=system:serviceaccount:SA_NS:SA`:
    /// whether the service account `(SA_NS, SA)` may, in `namespace`. `resource` may carry a subresource (`pods/log`).
    pub fn can_i(&self, service_account: (&str, &str), namespace: &str, verb: &str, resource: &str) -> Result<bool> {
        let (sa_namespace, sa) = service_account;
        let output = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(["auth", "can-i", verb, resource, "-n", namespace])
            .arg(format!("--as=system:serviceaccount:{sa_namespace}:{sa}"))
            .stdin(Stdio::null())
            .output()
            .context("running kubectl auth can-i")?;
        // Exit 0 with "yes", 1 with "no"; anything else is an error.
        match (output.status.code(), String::from_utf8_lossy(&output.stdout).trim()) {
            (Some(0), "yes") => Ok(true),
            (Some(1), "no") => Ok(false),
            (code, out) => bail!(
                "kubectl auth can-i {verb} {resource} -n {namespace} as {sa_namespace}:{sa}: exit {code:?}, {out} {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        }
    }

    /// The last lines of both logs (for failure messages).
    pub fn logs(&self) -> String {
        ["etcd.log", "kube-apiserver.log"]
            .iter()
            .map(|name| format!("--- {name}\n{}", tail(&self.dir.path().join(name), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file()))
}

fn openssl(args: &[&str]) -> Result<()> {
    let output = Command::new("openssl").args(args).stdin(Stdio::null()).output().context("running openssl")?;
    if !output.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness itself, against the real server: ready, kubectl works, and RBAC answers
    /// for a service account that has no role (everything denied) and for the admin.
    #[test]
    fn a_real_apiserver_starts_and_answers_kubectl_and_rbac() {
        let api = KubeApi::start().unwrap();
        let namespaces = api.kubectl(&["get", "namespaces", "-o", "name"]).unwrap();
        assert!(namespaces.contains("namespace/default"), "{namespaces}");
        assert!(!api.can_i(("default", "nobody"), "default", "create", "jobs.batch").unwrap());
        let admin = api.kubectl(&["auth", "can-i", "create", "jobs.batch"]).unwrap();
        assert_eq!(admin.trim(), "yes");
    }
}
