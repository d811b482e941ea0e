//! Test harness: the `sluice` binary of this build on a [`sluice_testkit::Stack`] (a private
//! nats-server plus real `sluice coordinator` / `sluice worker` processes), with the helpers
//! the tests share. Everything but the binary's path and the working directory is testkit's.
#![allow(dead_code, unused_imports)]
// Test output goes to the test runner, not to a user's pipe (clippy.toml bans these in `sluice`).
#![allow(clippy::disallowed_macros)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use sluice_testkit::wait::wait_until;
pub use sluice_testkit::workflow::{Recorded, assert_ran_once_in_order, read_job_log, recording_job, recording_script};
pub use sluice_testkit::{COMMAND_TIMEOUT, text};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A testkit stack running this build's `sluice` from the workspace root; everything stops
/// on drop (and the processes' logs are printed if the test is failing).
pub struct Stack(sluice_testkit::Stack);

impl Stack {
    pub fn start() -> Self {
        Self::build(sluice_testkit::Stack::builder(SLUICE))
    }

    /// A stack whose nats-server runs without JetStream (started without `-js`).
    pub fn start_without_jetstream() -> Self {
        Self::build(sluice_testkit::Stack::builder(SLUICE).without_jetstream())
    }

    /// What a process the stack started wrote to stdout and stderr so far.
    pub fn process_log(&self, process: usize) -> String {
        self.log(process)
    }

    /// A stack whose nats-server limits JetStream's file storage to `bytes` (`max_file_store`).
    pub fn start_with_max_file_store(bytes: u64) -> Self {
        Self::build(sluice_testkit::Stack::builder(SLUICE).max_file_store(bytes))
    }

    /// A stack whose nats-server opens an existing JetStream store (a fixture's).
    pub fn start_with_store(store: PathBuf) -> Self {
        Self::build(sluice_testkit::Stack::builder(SLUICE).store(store))
    }

    /// A stack from a builder of the test's own (a nats-server configuration, say).
    pub fn start_from(builder: sluice_testkit::StackBuilder) -> Self {
        Self::build(builder)
    }

    fn build(builder: sluice_testkit::StackBuilder) -> Self {
        Self(
            builder
                .current_dir(workspace_root())
                .start()
                .unwrap_or_else(|error| panic!("a stack starts (run scripts/install-tools.sh): {error:#}")),
        )
    }
}

impl std::ops::Deref for Stack {
    type Target = sluice_testkit::Stack;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Stack {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The pid of the coordinator that holds the leadership lease, if one does.
pub fn leader_pid(stack: &Stack) -> Option<i32> {
    stack.leader_pid()
}

/// Waits until a coordinator has created Sluice's streams and buckets (the pool `default`
/// is declared last).
pub fn wait_until_set_up(stack: &Stack) {
    stack.wait_until_set_up(Duration::from_secs(30)).unwrap_or_else(|error| panic!("{error:#}"));
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Submits and waits; returns the final status JSON (exit code checked against `code`).
pub fn submit_and_wait(stack: &Stack, file: &Path, code: i32) -> serde_json::Value {
    stack.sluice_json(&["submit", file.to_str().expect("path"), "--wait"], code)
}

/// Starts `sluice server` on a free loopback port with a tokens file giving `operator` the
/// operator role and `viewer` the viewer role (each `(name, token)`), plus `extra` flags;
/// returns its address once it listens.
#[allow(dead_code)] // each test binary uses a part of this module
pub fn start_server(stack: &mut Stack, operator: (&str, &str), viewer: (&str, &str), extra: &[&str]) -> String {
    let tokens = stack.write(
        "tokens",
        &format!(
            "# who may use the server\n{} operator {}\n{} viewer {}\n",
            operator.0,
            sluice_server::auth::hash(operator.1),
            viewer.0,
            sluice_server::auth::hash(viewer.1)
        ),
    );
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
    let address = format!("127.0.0.1:{port}");
    let mut args = vec!["server", "--listen", &address, "--tokens", tokens.to_str().expect("path")];
    args.extend_from_slice(extra);
    stack.spawn("server", &args, &[]);
    wait_until(Duration::from_secs(30), "the server to listen", || std::net::TcpStream::connect(&address).is_ok());
    address
}
