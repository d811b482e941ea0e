//! Measuring JetStream storage and sizing Sluice's two bounded streams to it, on real
//! nats-servers with a small `max_file_store` (what nats-server reserves is checked here,
//! not assumed: a stream reserves its whole `max_bytes`, one without reserves nothing).

use async_nats::jetstream::{self, stream};
use sluice_coordinator::ServiceError;
use sluice_coordinator::storage::{self, STORE_PROBE_API_CALLS_MAX};
use sluice_coordinator::topology::{self, TopologySettings};
use sluice_local_nats::{NatsServer, Options};
use sluice_proto::names;

const MIB: u64 = 1024 * 1024;

async fn server(options: Options) -> (NatsServer, jetstream::Context) {
    let server = NatsServer::start(options).expect("nats-server (make tools)");
    let client = async_nats::connect(server.url()).await.expect("connect");
    (server, jetstream::new(client))
}

async fn small(max_file_store: u64) -> (NatsServer, jetstream::Context) {
    server(Options::default().max_file_store(max_file_store)).await
}

async fn max_bytes(js: &jetstream::Context, name: &str) -> i64 {
    js.get_stream(name).await.unwrap().cached_info().config.max_bytes
}

fn other_stream(name: &str, max_bytes: i64) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("other.{name}")],
        storage: stream::StorageType::File,
        max_bytes,
        ..Default::default()
    }
}

async fn probe_is_gone(js: &jetstream::Context) -> bool {
    js.get_stream(names::STORE_PROBE_STREAM).await.is_err()
}

#[tokio::test]
async fn a_probe_finds_the_whole_store_to_the_mebibyte_and_leaves_nothing() {
    let (_server, js) = small(100 * MIB).await;
    let free = storage::probe_free(&js, 5 * 1024 * MIB, 1).await.unwrap();
    assert_eq!(free.bytes, 100 * MIB);
    assert!(free.api_calls <= STORE_PROBE_API_CALLS_MAX, "{free:?}");
    assert!(probe_is_gone(&js).await);
    // What it found is what a stream can take.
    js.create_stream(other_stream("ALL", (100 * MIB) as i64)).await.unwrap();
}

#[tokio::test]
async fn reservations_count_and_unlimited_streams_with_data_do_not() {
    let (_server, js) = small(100 * MIB).await;
    js.create_stream(other_stream("RESERVED", (30 * MIB) as i64)).await.unwrap();
    js.create_stream(other_stream("UNLIMITED", -1)).await.unwrap();
    for _ in 0..8 {
        js.publish("other.UNLIMITED", vec![7u8; 1_000_000].into()).await.unwrap().await.unwrap();
    }
    let free = storage::probe_free(&js, 5 * 1024 * MIB, 1).await.unwrap();
    assert_eq!(free.bytes, 70 * MIB);
    // Not past what was asked for.
    assert_eq!(storage::probe_free(&js, 20 * MIB, 1).await.unwrap().bytes, 20 * MIB);
}

#[tokio::test]
async fn a_probe_left_by_a_crash_is_deleted_first() {
    let (_server, js) = small(100 * MIB).await;
    js.create_stream(stream::Config {
        name: names::STORE_PROBE_STREAM.to_owned(),
        subjects: vec![names::STORE_PROBE_SUBJECT.to_owned()],
        max_bytes: (60 * MIB) as i64,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(storage::probe_free(&js, 5 * 1024 * MIB, 1).await.unwrap().bytes, 100 * MIB);
    assert!(probe_is_gone(&js).await);
}

#[tokio::test]
async fn a_probe_stops_at_its_request_limit_with_a_lower_bound() {
    let (_server, js) = small(100 * MIB).await;
    let free = storage::probe_free(&js, u64::MAX / 2, 1).await.unwrap();
    assert_eq!(free.api_calls, STORE_PROBE_API_CALLS_MAX);
    assert!(free.bytes <= 100 * MIB, "{free:?}");
    assert!(probe_is_gone(&js).await);
}

#[tokio::test]
async fn a_200_mib_store_gets_50_mib_of_logs_and_10_of_rejections_every_time() {
    let (_server, js) = small(200 * MIB).await;
    for _ in 0..2 {
        topology::ensure_with(&js, TopologySettings::default()).await.unwrap();
        assert_eq!(max_bytes(&js, names::LOGS_STREAM).await, (50 * MIB) as i64);
        assert_eq!(max_bytes(&js, names::REJECTED_STREAM).await, (10 * MIB) as i64);
        assert!(probe_is_gone(&js).await);
    }
}

#[tokio::test]
async fn streams_grow_and_shrink_with_the_setting_and_the_store() {
    let store = tempfile::tempdir().unwrap();
    let on_store =
        |bytes| Options { store_dir: Some(store.path().to_owned()), ..Default::default() }.max_file_store(bytes);
    let (mut server, js) = server(on_store(200 * MIB)).await;
    let mut settings = TopologySettings::default();
    settings.logs.max_bytes = 20 * MIB;
    topology::ensure_with(&js, settings).await.unwrap();
    assert_eq!(max_bytes(&js, names::LOGS_STREAM).await, (20 * MIB) as i64);
    // Grows to its share once the setting allows.
    topology::ensure_with(&js, TopologySettings::default()).await.unwrap();
    assert_eq!(max_bytes(&js, names::LOGS_STREAM).await, (50 * MIB) as i64);
    for _ in 0..30 {
        js.publish("sluice.logs.default.run.1.job", vec![7u8; 1_000_000].into()).await.unwrap().await.unwrap();
    }
    // The same store, restarted smaller: both shrink, and the logs drop their oldest lines.
    server.stop();
    drop(js);
    let (_server, js) = self::server(on_store(100 * MIB)).await;
    topology::ensure_with(&js, TopologySettings::default()).await.unwrap();
    assert_eq!(max_bytes(&js, names::LOGS_STREAM).await, (25 * MIB) as i64);
    assert_eq!(max_bytes(&js, names::REJECTED_STREAM).await, (5 * MIB) as i64);
    let logs = js.get_stream(names::LOGS_STREAM).await.unwrap().cached_info().state.clone();
    assert!(logs.bytes <= 25 * MIB && logs.bytes > 20 * MIB, "{logs:?}");
}

#[tokio::test]
async fn below_64_mib_the_topology_is_refused_as_fatal_naming_the_store() {
    let (_server, js) = small(40 * MIB).await;
    let Err(error) = topology::ensure_with(&js, TopologySettings::default()).await else {
        panic!("the topology was created on a 40 MiB store");
    };
    assert!(matches!(error, ServiceError::StoreTooSmall(ref refusal) if refusal.store_bytes == 40 * MIB), "{error}");
    assert!(error.is_fatal());
    assert!(error.to_string().contains("40 MiB") && error.to_string().contains("64 MiB"), "{error}");
    assert!(js.get_stream(names::LOGS_STREAM).await.is_err(), "nothing is created on a store too small");
}
