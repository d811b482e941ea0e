//! sluice-client: what the `sluice` CLI, the HTTP server, the loadtest and users' own Rust
//! code use to talk to Sluice.
//!
//! - [`connect`]: connect to NATS ([`NatsOptions`]: URL, credentials, TLS, inbox prefix) and
//!   check the server version;
//! - [`stores`]: read runs, jobs, schedules, backfills, rejections and control outcomes;
//!   [`view`]: a run with its jobs as `sluice status` shows it; [`dead_letters`]: the
//!   dead-letter stream;
//! - [`runs`]: list runs a page at a time through the run index (newest first; by
//!   workflow, origin, state; by window day; by id suffix), and the submissions no
//!   coordinator has taken yet (`pending`);
//! - [`requests`]: submit a workflow, and send control requests (cancel, retry, replay,
//!   schedules, backfills, purges) that the coordinator answers;
//! - [`specs`]: workflow specs, stored once by hash;
//! - [`pipeline`]: pipelined publishing with bounded acknowledgements in flight.
//!
//! The client writes nothing but submissions and control requests: the coordinator is the
//! only writer of Sluice's streams and buckets, and every change a client wants is a
//! request it answers with a [`sluice_proto::ControlOutcome`].
//!
//! Connect, submit a workflow and follow the run to its end (this example also runs as the
//! integration test `client/tests/example.rs`):
//!
//! ```ignore
#![doc = include_str!("../examples/submit_and_follow.rs")]
//! ```

pub mod audit;
pub mod connect;
pub mod dead_letters;
pub mod error;
pub mod json;
pub mod logs;
pub mod outcomes;
pub mod pipeline;
pub mod requests;
pub mod runs;
pub mod specs;
pub mod stores;
pub mod submit;
pub mod view;

pub use connect::{NatsOptions, connect, connect_with};
pub use error::ClientError;
pub use stores::Stores;
pub use view::{Located, Lookup, RunView, locate, lookup};
