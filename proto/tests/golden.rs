//! Golden byte vectors pin the wire format: a change that breaks one is a protocol version
//! bump, not a refactor. Regenerate deliberately with `SLUICE_BLESS=1 cargo test -p sluice-proto --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::messages::Versioned;
use sluice_proto::{
    AttemptRecord, ChildSpec, EventKind, JobEvent, JobMessage, JobRecord, JobState, LogBatch, LogLine, LogStream,
    Rejection, RetryPolicy, RunId, RunRecord, RunState, SCHEMA_VERSION, SpawnBatch, Submission, Window, decode, encode,
};

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

fn run_id() -> RunId {
    "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b".parse().unwrap()
}

fn window() -> Window {
    Window::new(
        DateTime::parse_from_rfc3339("2024-03-01T00:00:00-08:00").unwrap(),
        DateTime::parse_from_rfc3339("2024-03-02T00:00:00-08:00").unwrap(),
    )
    .unwrap()
}

fn check<T: Serialize + DeserializeOwned + Versioned + PartialEq + std::fmt::Debug>(name: &str, value: T) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.msgpack"));
    let bytes = encode(&value).unwrap();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden =
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error} (bless with SLUICE_BLESS=1)", path.display()));
    assert_eq!(bytes, golden, "{name}: encoding changed; that is a protocol change");
    assert_eq!(decode::<T>(&golden).unwrap(), value, "{name}: golden bytes decode to the same value");
}

#[test]
fn submission() {
    check(
        "submission",
        Submission {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            workflow: "name: w\njobs:\n  a: { run: noop }\n".into(),
            window: Some(window()),
            params: BTreeMap::from([("region".into(), "eu".into())]),
            idempotency_key: Some("2024-03-01".into()),
            submitted_at: Some(time("2024-03-02T08:00:00Z")),
        },
    );
}

#[test]
fn job_message() {
    check(
        "job_message",
        JobMessage {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            workflow: "w".into(),
            job: "extract".into(),
            kind: "exec".into(),
            command: Some(vec!["python3".into(), "etl.py".into(), "{{start}}".into()]),
            config: serde_json::json!({"model": "v3", "threshold": 0.5}),
            window: window(),
            params: BTreeMap::new(),
            pool: "default".into(),
            attempt_offset: 0,
            generation: 0,
            retry: RetryPolicy::default(),
            timeout_ms: Some(1_800_000),
            permanent_exit_codes: vec![3],
            // Fields added later and left empty keep the bytes of schema version 1.
            needs: vec![],
            retry_base: None,
        },
    );
}

#[test]
fn job_event() {
    check(
        "job_event",
        JobEvent {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            job: "extract".into(),
            attempt: 2,
            generation: 0,
            kind: EventKind::Failed,
            at: time("2024-03-02T08:00:05Z"),
            worker: "worker-1".into(),
            error: Some("exit code 1".into()),
            retry_at: Some(time("2024-03-02T08:00:25Z")),
            output: None,
            spawned: 0,
            started_at: None,
        },
    );
    check(
        "job_event_spawned",
        JobEvent {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            job: "per-sensor".into(),
            attempt: 1,
            generation: 0,
            kind: EventKind::Succeeded,
            at: time("2024-03-02T08:00:05Z"),
            worker: "worker-1".into(),
            error: None,
            retry_at: None,
            output: Some(serde_json::json!({"sensors": 2})),
            spawned: 2,
            started_at: None,
        },
    );
    // An outcome with the attempt's start time.
    check(
        "job_event_short",
        JobEvent {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            job: "load".into(),
            attempt: 1,
            generation: 0,
            kind: EventKind::Succeeded,
            at: time("2024-03-02T08:00:05.020Z"),
            worker: "worker-1".into(),
            error: None,
            retry_at: None,
            output: None,
            spawned: 0,
            started_at: Some(time("2024-03-02T08:00:05.001Z")),
        },
    );
    check(
        "spawn_batch",
        SpawnBatch {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            job: "per-sensor".into(),
            attempt: 1,
            generation: 0,
            children: vec![
                ChildSpec { config: Some(serde_json::json!({"sensor": "s1"})), ..ChildSpec::new("s1", "calibrate") },
                ChildSpec {
                    command: Some(vec!["python3".into(), "sensor.py".into(), "s2".into()]),
                    ..ChildSpec::new("s2", "exec")
                },
            ],
        },
    );
    check(
        "log_batch",
        LogBatch {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            job: "extract".into(),
            attempt: 1,
            lines: vec![LogLine {
                at: time("2024-03-02T08:00:01Z"),
                stream: LogStream::Stdout,
                text: "rows: 42".into(),
            }],
        },
    );
}

#[test]
fn run_and_job_records() {
    check(
        "run_record",
        RunRecord {
            schema_version: SCHEMA_VERSION,
            id: run_id(),
            workflow: "w".into(),
            spec_yaml: "name: w\njobs:\n  a: { run: noop }\n".into(),
            window: window(),
            params: BTreeMap::new(),
            state: RunState::Running,
            created_at: time("2024-03-02T08:00:00Z"),
            finished_at: None,
            idempotency_key: None,
            error: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
            jobs: vec!["a".into()],
        },
    );
    check(
        "job_record",
        JobRecord {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            name: "a".into(),
            state: JobState::Completed,
            attempts: 1,
            attempt_offset: 0,
            generation: 0,
            queued_at: Some(time("2024-03-02T08:00:00Z")),
            started_at: Some(time("2024-03-02T08:00:01Z")),
            finished_at: Some(time("2024-03-02T08:00:02Z")),
            retry_at: None,
            error: None,
            attempt_history: vec![AttemptRecord {
                attempt: 1,
                started_at: time("2024-03-02T08:00:01Z"),
                finished_at: Some(time("2024-03-02T08:00:02Z")),
                error: None,
                worker: "worker-1".into(),
                redelivered_to: vec![],
            }],
            parent: None,
            definition: None,
            children: 0,
            output: None,
        },
    );
}

#[test]
fn rejection() {
    check(
        "rejection",
        Rejection {
            schema_version: SCHEMA_VERSION,
            received_at: time("2024-03-02T08:00:00Z"),
            run_id: Some(run_id()),
            workflow: None,
            reason: "not a valid submission message".into(),
            payload_bytes: 12,
        },
    );
}

/// Readers ignore fields they do not know and fill optional ones they miss.
#[test]
fn unknown_fields_are_ignored_and_optional_ones_default() {
    #[derive(Serialize)]
    struct NewerSubmission<'a> {
        schema_version: u32,
        run_id: &'a str,
        workflow: &'a str,
        priority: u8,
    }
    let bytes = rmp_serde::to_vec_named(&NewerSubmission {
        schema_version: 1,
        run_id: "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b",
        workflow: "name: w",
        priority: 9,
    })
    .unwrap();
    let submission: Submission = decode(&bytes).unwrap();
    assert_eq!(submission.run_id, run_id());
    assert!(submission.params.is_empty() && submission.window.is_none());

    #[derive(Serialize)]
    struct MissingWorkflow<'a> {
        schema_version: u32,
        run_id: &'a str,
    }
    let bytes =
        rmp_serde::to_vec_named(&MissingWorkflow { schema_version: 1, run_id: "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b" })
            .unwrap();
    let error = decode::<Submission>(&bytes).unwrap_err().to_string();
    assert!(error.contains("workflow"), "the error names the missing field: {error}");
}
