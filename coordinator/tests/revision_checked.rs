//! A revision-checked write that loses to another write of the same record is told apart
//! from a NATS failure (the loop redoes such a control request instead of restarting), on a
//! real nats-server.

use async_nats::jetstream::{self, kv};
use sluice_coordinator::ServiceError;
use sluice_coordinator::error::revision_checked;

#[tokio::test]
async fn a_write_that_lost_to_another_is_changed_and_retryable() {
    let server = sluice_local_nats::NatsServer::start_temporary().expect("nats-server (make tools)");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client);
    let store =
        js.create_key_value(kv::Config { bucket: "revisions".into(), ..Default::default() }).await.expect("bucket");
    let first = store.put("schedule", "a".into()).await.expect("put");
    // Another writer (the timekeeper) gets in first.
    store.update("schedule", "b".into(), first).await.expect("the first update");
    let lost = revision_checked(store.update("schedule", "c".into(), first).await, "writing schedule nightly");
    match lost {
        Err(error @ ServiceError::Changed { .. }) => {
            assert!(error.is_retryable());
            assert_eq!(error.to_string(), "writing schedule nightly: the record changed while it was being written");
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    let value = store.get("schedule").await.expect("get").expect("value");
    assert_eq!(&value[..], b"b", "the losing write changed nothing");
}
