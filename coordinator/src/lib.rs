//! sluice-coordinator: the DAG [`engine`] (a pure state machine) and the [`service`] that
//! drives it over NATS JetStream: submission intake, event handling, dispatch, recovery.
//!
//! Layout: [`engine`] decides; [`inbox`] is everything the leader's loop receives;
//! [`intake`] checks submissions; [`outbox`] carries out the engine's effects through
//! [`store`] (records) and [`dispatch`] (jobs, dead letters); [`spawns`] reads the
//! children jobs spawn; [`control`] applies control requests and answers each with an
//! outcome; [`timekeeper`] fires schedules and drives backfills (a task of its own each
//! leadership term); [`metrics`] counts what the engine noted and the outbox did (Prometheus); [`notify`]
//! makes notices of runs that end and jobs dead-lettered, and delivers them to the operator's targets;
//! [`leadership`] keeps one coordinator in charge; [`topology`] creates
//! streams and buckets, sized by [`storage`] to the JetStream store; [`service`] is the loop that ties them together. Reads and publishing helpers shared with clients live in `sluice-client`.

pub mod announce;
pub mod control;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod inbox;
pub mod index;
pub mod intake;
pub mod leadership;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod pools;
pub mod service;
pub mod spans;
pub mod spawns;
pub mod specs;
pub mod storage;
pub mod store;
pub mod timekeeper;
pub mod topology;

pub use error::ServiceError;
