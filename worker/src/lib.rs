//! sluice-worker: write a job once, run it anywhere Sluice dispatches it.
//!
//! - [`Job`]: the trait a job implements (`perform(ctx, window, config)`), registered by
//!   kind name in a [`Registry`]. Stock kinds: `exec`, `noop`, `sleep`, `fail` ([`kinds`]).
//! - [`runtime`]: pulls jobs of one pool from JetStream and runs them, a producer →
//!   executor → completer pipeline: the producer (`runtime/producer.rs`) fetches for free
//!   slots, plus a few ahead while jobs are short; the executor (`runtime/executor.rs`) runs
//!   one attempt with in-progress acks and returns how it ended; the completer
//!   (`runtime/completer.rs`) reports it (`runtime/reporter.rs`) and acks, retries or
//!   terminates the message. It drains on SIGTERM. The worker announces itself in KV
//!   `sluice-workers` while it runs (`runtime/announce.rs`) and refuses to start in a pool
//!   that is not declared or whose live workers serve other kinds.
//! - [`metrics`]: the worker's Prometheus metrics (attempts by outcome, durations, slots).
//! - [`WorkerConfig`] ([`config`]) says how a worker runs; [`limits`] names every fixed
//!   bound; [`WorkerError`] ([`error`]) says whether a failure may pass; [`nats`] connects
//!   and opens a pool's consumer (created by the coordinator when the pool is declared).

pub mod config;
pub mod error;
pub mod job;
pub mod kinds;
pub mod limits;
pub mod logs;
pub mod metrics;
pub mod nats;
pub mod registry;
pub mod runtime;
pub mod stops;

pub use config::WorkerConfig;
pub use error::WorkerError;
pub use job::{Job, JobContext, JobError, Output};
pub use registry::Registry;
pub use sluice_proto::{ChildSpec, Window};
