//! sluice-coordinator: the DAG [`engine`] (a pure state machine) and the [`service`] that
//! drives it over NATS JetStream: submission intake, event handling, dispatch, recovery.

pub mod engine;
