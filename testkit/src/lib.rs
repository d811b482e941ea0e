//! sluice-testkit (dev only, never published): what the integration tests (`cli/tests`) and
//! the loadtest share to run Sluice for real.
//!
//! - [`Stack`]: a private nats-server (temporary, on an existing store, or an external URL)
//!   plus `sluice coordinator` / `sluice worker` processes of a given binary, each logging to
//!   a file in the stack's temporary directory; on drop every child is killed and reaped,
//!   and the logs are printed when the thread is panicking (a failing test shows them);
//! - [`usage()`]: a process's CPU seconds and peak RSS, from /proc;
//! - [`wait`]: bounded waits: Sluice set up (`sluice_client::requests::wait_until_set_up`),
//!   and by KV watches N workers of a pool in the registry and a run's end;
//!   [`wait::wait_until`] polls the conditions no signal tells (a file appearing);
//! - [`workflow`]: submissions through `sluice_client::requests::submit`, and recording jobs
//!   whose start and end lines show the order jobs ran in;
//! - [`find_sluice`]: the `sluice` binary next to the running executable;
//! - [`autoscaler`]: KEDA's nats-jetstream scaler and the HPA, compressed to seconds, scaling
//!   real `sluice worker` processes on `/jsz`;
//! - [`cluster`]: a JetStream cluster of nats-servers on loopback;
//! - [`http`]: a loopback HTTP receiver that records requests and answers as told (webhooks);
//! - [`monitoring`]: a nats-server's monitoring endpoint (`/jsz`, `/healthz`);
//! - [`kube_api`]: a real kube-apiserver (v1.20.2, cached build) with etcd on loopback.
//!
//! Every wait is bounded and its error names what it waited for. The blocking helpers on
//! [`Stack`] (for synchronous tests) run on a runtime of the stack's own; async code (the
//! loadtest) calls the functions in [`wait`] and [`workflow`] directly.

pub mod autoscaler;
mod binary;
pub mod cluster;
pub mod http;
pub mod kube_api;
pub mod monitoring;
mod server;
mod stack;
mod usage;
pub mod wait;
pub mod workflow;

pub use binary::find_sluice;
pub use server::Server;
pub use sluice_local_nats::{self as local_nats, NatsServer};
pub use stack::{COMMAND_TIMEOUT, Stack, StackBuilder, text};
pub use usage::{Usage, usage};

/// Connects to NATS at `url` the way every Sluice client does (checking the server's
/// version), and returns a JetStream context.
pub async fn connect(url: &str) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = sluice_client::connect(url, "sluice-testkit").await?;
    Ok(async_nats::jetstream::new(client))
}
