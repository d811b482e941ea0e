//! The nats-server a stack runs against: its own (temporary, or on a given store), or an
//! external one named by URL.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use sluice_local_nats::{NatsServer, Options};

use crate::usage::{Usage, usage};

/// A nats-server: one this process started (stopped on drop), or an external one.
pub struct Server {
    own: Option<NatsServer>,
    url: String,
}

impl Server {
    /// A fresh server on a random loopback port with a temporary store.
    pub fn temporary() -> Result<Self> {
        Self::own(NatsServer::start_temporary())
    }

    /// A server on an existing JetStream store directory (a fixture's, say).
    pub fn with_store(store: PathBuf) -> Result<Self> {
        Self::own(NatsServer::start(Options { store_dir: Some(store), ..Default::default() }))
    }

    /// A fresh server without JetStream.
    pub fn without_jetstream() -> Result<Self> {
        Self::own(NatsServer::start(Options { without_jetstream: true, ..Default::default() }))
    }

    /// A fresh server with this configuration file (users and permissions, TLS).
    pub fn with_config(file: PathBuf) -> Result<Self> {
        Self::own(NatsServer::start(Options { config_file: Some(file), ..Default::default() }))
    }

    /// A server started with these options (a small file store, say).
    pub fn with_options(options: Options) -> Result<Self> {
        Self::own(NatsServer::start(options))
    }

    /// A server someone else runs; this one never starts or stops it.
    pub fn external(url: &str) -> Self {
        Self { own: None, url: url.to_owned() }
    }

    /// The external server at `url` if one is given, else a fresh temporary one.
    pub fn start(external: Option<&str>) -> Result<Self> {
        Self::start_with(external, Options::default())
    }

    /// The external server at `url` if one is given, else a fresh one with `options`.
    pub fn start_with(external: Option<&str>, options: Options) -> Result<Self> {
        match external {
            Some(url) => Ok(Self::external(url)),
            None => Self::with_options(options),
        }
    }

    fn own(server: Result<NatsServer, sluice_local_nats::LocalNatsError>) -> Result<Self> {
        let server = server.context("starting nats-server (`make tools` installs it)")?;
        Ok(Self { url: server.url(), own: Some(server) })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The server this process started, if it did.
    pub fn local(&mut self) -> Option<&mut NatsServer> {
        self.own.as_mut()
    }

    /// The monitoring port on 127.0.0.1 of the server this process started, if it has one.
    pub fn monitor_port(&self) -> Option<u16> {
        self.own.as_ref().and_then(NatsServer::monitor_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.own.as_ref().and_then(NatsServer::pid)
    }

    /// The server's CPU and peak memory so far (none for an external server).
    pub fn usage(&self) -> Option<Usage> {
        self.pid().map(usage)
    }

    /// Kills the server at once (SIGKILL), as a crash would. Panics for an external one.
    pub fn kill(&mut self) {
        self.expect_own("kill").kill();
    }

    /// Stops the server gracefully (SIGTERM). Panics for an external one.
    pub fn stop(&mut self) {
        self.expect_own("stop").stop();
    }

    /// Starts the server again on the same port and store (after `stop` or `kill`).
    pub fn restart(&mut self) -> Result<()> {
        let Some(server) = self.own.as_mut() else { bail!("cannot restart the external nats-server {}", self.url) };
        server.restart().context("restarting nats-server")
    }

    fn expect_own(&mut self, what: &str) -> &mut NatsServer {
        let url = self.url.clone();
        self.own.as_mut().unwrap_or_else(|| panic!("cannot {what} the external nats-server {url}"))
    }
}
