//! sluice-coordinator: the DAG [`engine`] (a pure state machine) and the [`service`] that
//! drives it over NATS JetStream: submission intake, event handling, dispatch, recovery.
//!
//! Layout: [`engine`] decides; [`intake`] checks submissions; [`store`] and [`dispatch`]
//! write records and publish jobs ([`pipeline`] bounds what is in flight); [`spawns`] reads
//! the children jobs spawn; [`timekeeper`] fires schedules and drives backfills;
//! [`requests`] publishes submissions and control requests (the CLI uses it too);
//! [`leadership`] keeps one coordinator in charge; [`topology`] creates streams and
//! buckets; [`service`] is the loop that ties them together.

pub mod dispatch;
pub mod engine;
pub mod error;
pub mod intake;
pub mod leadership;
pub mod pipeline;
pub mod requests;
pub mod service;
pub mod spawns;
pub mod store;
pub mod timekeeper;
pub mod topology;

pub use error::ServiceError;
