//! sluice-coordinator: the DAG [`engine`] (a pure state machine) and the [`service`] that
//! drives it over NATS JetStream: submission intake, event handling, dispatch, recovery.
//!
//! Layout: [`engine`] decides; [`intake`] checks submissions; [`store`] and [`dispatch`]
//! write records and publish jobs; [`spawns`] reads the children jobs spawn; [`control`]
//! applies control requests and answers each with an outcome; [`timekeeper`] fires
//! schedules and drives backfills; [`leadership`] keeps one coordinator in charge;
//! [`topology`] creates streams and buckets; [`service`] is the loop that ties them
//! together. Reads and publishing helpers shared with clients live in `sluice-client`.

pub mod announce;
pub mod control;
pub mod dispatch;
pub mod engine;
pub mod error;
pub mod index;
pub mod intake;
pub mod leadership;
pub mod pools;
pub mod service;
pub mod spawns;
pub mod store;
pub mod timekeeper;
pub mod topology;

pub use error::ServiceError;
