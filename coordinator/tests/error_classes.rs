//! The error-class table (DESIGN decision 9), a row at a time, with the errors a real
//! nats-server gives: deterministic failures are told apart from transient ones (retried)
//! and from fencing (another writer got in: the term ends).

use async_nats::jetstream::{self, kv, stream};
use sluice_coordinator::ServiceError;
use sluice_coordinator::error::{ErrorClass, NatsContext, revision_checked};

struct Server {
    _server: sluice_local_nats::NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
}

async fn server() -> Server {
    let server = sluice_local_nats::NatsServer::start_temporary().expect("nats-server (make tools)");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    Server { _server: server, client, js }
}

fn class<T: std::fmt::Debug>(result: Result<T, ServiceError>) -> ErrorClass {
    result.expect_err("the write must fail").class()
}

#[tokio::test]
async fn a_message_over_the_servers_max_payload_is_deterministic() {
    let server = server().await;
    let too_big = vec![0u8; server.client.server_info().max_payload + 1];
    let published = server.js.publish("sluice.test", too_big.into()).await.context("publishing");
    assert_eq!(class(published), ErrorClass::Deterministic);
}

#[tokio::test]
async fn a_message_over_the_streams_limit_is_deterministic() {
    let server = server().await;
    server
        .js
        .create_stream(stream::Config {
            name: "SMALL".into(),
            subjects: vec!["small.>".into()],
            max_message_size: 128,
            ..Default::default()
        })
        .await
        .expect("stream");
    let ack = server.js.publish("small.one", vec![0u8; 1024].into()).await.expect("sent").await.context("storing");
    assert_eq!(class(ack), ErrorClass::Deterministic);
}

#[tokio::test]
async fn a_write_based_on_a_stale_revision_is_fencing_and_a_redo_inside_the_coordinator_is_changed() {
    let server = server().await;
    let store = server
        .js
        .create_key_value(kv::Config { bucket: "revisions".into(), ..Default::default() })
        .await
        .expect("bucket");
    let first = store.put("schedule", "a".into()).await.expect("put");
    // Another writer gets in first.
    store.update("schedule", "b".into(), first).await.expect("the first update");
    let stale = store.update("schedule", "c".into(), first).await.context("writing schedule nightly");
    assert_eq!(class(stale), ErrorClass::Fencing);
    // The same loss on a record the coordinator redoes from a fresh read (schedules,
    // backfills, pools) is `Changed`, and retryable.
    let lost = revision_checked(store.update("schedule", "c".into(), first).await, "writing schedule nightly");
    match lost {
        Err(error @ ServiceError::Changed { .. }) => {
            assert!(error.is_retryable());
            assert_eq!(error.to_string(), "writing schedule nightly: the record changed while it was being written");
        }
        other => panic!("expected Changed, got {other:?}"),
    }
    let value = store.get("schedule").await.expect("get").expect("value");
    assert_eq!(&value[..], b"b", "the losing writes changed nothing");
}

#[tokio::test]
async fn no_responders_and_timeouts_are_transient() {
    let server = server().await;
    // No stream listens on the subject: JetStream has no responder.
    let unheard = server.js.publish("nobody.listens", "x".into()).await.expect("sent").await.context("storing");
    assert_eq!(class(unheard), ErrorClass::Transient);
    let request = server.client.request("nobody.answers", "x".into()).await.context("asking");
    assert_eq!(class(request), ErrorClass::Transient);
    let slow = tokio::time::timeout(std::time::Duration::from_millis(1), std::future::pending::<()>())
        .await
        .context("waiting");
    assert!(matches!(slow, Err(ref error) if error.class() == ErrorClass::Transient && error.is_retryable()));
}

#[test]
fn a_record_that_cannot_be_decoded_is_deterministic() {
    let error = sluice_proto::decode::<sluice_proto::JobEvent>(b"not msgpack").map_err(ServiceError::from);
    assert_eq!(class(error), ErrorClass::Deterministic);
}
