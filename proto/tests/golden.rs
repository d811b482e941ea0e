//! Golden byte vectors pin the wire format: a change that breaks one is a protocol version
//! bump, not a refactor. Regenerate deliberately with `SLUICE_BLESS=1 cargo test -p sluice-proto --test golden`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_proto::messages::Versioned;
use sluice_proto::{
    AttemptRecord, BackfillRecord, BackfillRequest, BackfillWindow, BulkAction, BulkRequest, ChildSpec, ControlAction,
    ControlOutcome, ControlRequest, DeadLetter, EventBatch, EventKind, JobEvent, JobMessage, JobRecord, JobState,
    LogBatch, LogLine, LogStream, Outcome, PendingCancel, PoolRecord, RefusalKind, Rejection, RequestId, Rerun,
    RetryPolicy, RunId, RunIndexEntry, RunRecord, RunState, SCHEMA_VERSION, ScheduleRecord, SpawnBatch, Submission,
    Window, WorkerRecord, WorkflowRecord, decode, encode,
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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let path = dir.join(format!("{name}.msgpack"));
    let bytes = encode(&value).unwrap();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden =
        std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error} (bless with SLUICE_BLESS=1)", path.display()));
    assert_eq!(bytes, golden, "{name}: encoding changed; that is a protocol change");
    assert_eq!(decode::<T>(&golden).unwrap(), value, "{name}: golden bytes decode to the same value");
    // What schema 1 wrote still reads: the same value, at version 1.
    let v1 = dir.join("v1").join(format!("{name}.msgpack"));
    if let Ok(old) = std::fs::read(&v1) {
        let mut expected = serde_json::to_value(&value).unwrap();
        expected["schema_version"] = serde_json::json!(1);
        let expected: T = serde_json::from_value(expected).unwrap();
        assert_eq!(decode::<T>(&old).unwrap(), expected, "{name}: the schema-1 vector reads as schema 1 wrote it");
    }
}

/// Every schema-1 vector is still checked by a test above (none is left unread).
#[test]
fn every_schema_1_vector_is_still_read() {
    let source = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden.rs")).unwrap();
    let v1 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1");
    for entry in std::fs::read_dir(v1).unwrap() {
        let name = entry.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned();
        assert!(source.contains(&format!("\"{name}\"")), "tests/golden/v1/{name}.msgpack is checked by no test");
    }
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
            origin: None,
        },
    );
}

#[test]
fn run_index_entry() {
    check(
        "run_index_entry",
        RunIndexEntry {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            workflow: "w".into(),
            window_start: time("2024-03-01T08:00:00Z"),
            created_at: time("2024-03-02T08:00:00Z"),
            origin: "backfill:0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b".into(),
            state: Some(RunState::Failed),
            finished_at: Some(time("2024-03-02T08:01:00Z")),
            previous: Some(41),
        },
    );
}

fn job_message_value() -> JobMessage {
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
        image: None,
        resources: None,
        env: Default::default(),
        retry_base: None,
        batch_events: false,
    }
}

#[test]
fn job_message() {
    check("job_message", job_message_value());
    // What a coordinator that reads event batches dispatches.
    check("job_message_batch_events", JobMessage { batch_events: true, ..job_message_value() });
}

#[test]
fn event_batch() {
    let started = JobEvent::new(run_id(), "load", 1, 0, EventKind::Started, "worker-1", time("2024-03-02T08:00:04Z"));
    let succeeded = JobEvent {
        kind: EventKind::Succeeded,
        at: time("2024-03-02T08:00:05Z"),
        started_at: Some(time("2024-03-02T08:00:04Z")),
        output: Some(serde_json::json!({"rows": 3})),
        ..started.clone()
    };
    let events = [&started, &succeeded].map(|event| serde_bytes::ByteBuf::from(encode(event).unwrap())).to_vec();
    let batch = EventBatch { schema_version: SCHEMA_VERSION, worker: "worker-1".into(), events };
    check("event_batch", batch.clone());
    let read: Vec<JobEvent> = batch.events.iter().map(|bytes| decode(bytes).unwrap()).collect();
    assert_eq!(read, [started, succeeded], "each element is a job event as it is encoded alone");
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
            schedule_retry: false,
            earlier: Vec::new(),
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
            schedule_retry: false,
            earlier: Vec::new(),
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
            schedule_retry: false,
            earlier: Vec::new(),
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
            spec_hash: None,
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
            origin: "manual".into(),
            queued_at_start: None,
            cancelled_by: None,
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
                spec_hash: None,
                found_later: None,
            }],
            parent: None,
            definition: None,
            children: 0,
            output: None,
            attempts_omitted: 0,
            marked: None,
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

#[test]
fn notice() {
    use sluice_proto::notify::{FailedJob, Notice, NotifyEvent};
    let at = time("2024-03-02T08:00:47.050Z");
    let id = Notice::run_finished_id(&run_id(), "data-team", NotifyEvent::Failed, at);
    check(
        "notice",
        Notice {
            run_id: Some(run_id()),
            window: Some(window()),
            state: Some(RunState::Failed),
            origin: Some("schedule:daily".into()),
            failed_jobs: vec![FailedJob { job: "load".into(), error: "exit status 3".into(), attempts: 2 }],
            failed_jobs_omitted: 1,
            ..Notice::new(id, NotifyEvent::Failed, "data-team", "daily", at)
        },
    );
}

#[test]
fn notify_status() {
    use sluice_proto::notify::{DeliveryState, NotifyEvent, NotifyStatus};
    check(
        "notify_status",
        NotifyStatus {
            schema_version: SCHEMA_VERSION,
            id: format!("{}.data-team.dead_letter.1.load", run_id()),
            event: NotifyEvent::DeadLetter,
            target: "data-team".into(),
            run_id: Some(run_id()),
            state: DeliveryState::Pending,
            status_code: Some(500),
            attempts: 2,
            last_at: time("2024-03-02T08:00:49Z"),
            error: Some("the target answered HTTP 500".into()),
        },
    );
}

fn request_id() -> RequestId {
    "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7c".parse().unwrap()
}

#[test]
fn dead_letter() {
    check(
        "dead_letter",
        DeadLetter {
            schema_version: SCHEMA_VERSION,
            job: job_message_value(),
            reason: "attempts exhausted: exit code 1".into(),
            attempts: vec![AttemptRecord {
                attempt: 1,
                started_at: time("2024-03-02T08:00:01Z"),
                finished_at: Some(time("2024-03-02T08:00:02Z")),
                error: Some("exit code 1".into()),
                worker: "worker-1".into(),
                redelivered_to: vec![],
                spec_hash: None,
                found_later: None,
            }],
            dead_at: time("2024-03-02T08:00:02Z"),
            attempts_omitted: 0,
        },
    );
}

#[test]
fn control_requests_and_outcomes() {
    check(
        "control_request",
        ControlRequest {
            schema_version: SCHEMA_VERSION,
            request_id: Some(request_id()),
            requested_by: "alice".into(),
            run_id: Some(run_id()),
            action: ControlAction::Retry,
            job: Some("clean".into()),
            requested_at: time("2024-03-02T08:00:00Z"),
            dead_letter: Some(7),
            spec: None,
        },
    );
    check(
        "control_request_schedule",
        ControlRequest {
            schema_version: SCHEMA_VERSION,
            request_id: Some(request_id()),
            requested_by: "alice".into(),
            run_id: None,
            action: ControlAction::SchedulePause { name: "nightly".into() },
            job: None,
            requested_at: time("2024-03-02T08:00:00Z"),
            dead_letter: None,
            spec: None,
        },
    );
    check(
        "control_request_backfill",
        ControlRequest {
            schema_version: SCHEMA_VERSION,
            request_id: Some(request_id()),
            requested_by: "alice".into(),
            run_id: None,
            action: ControlAction::BackfillCreate(BackfillRequest {
                id: run_id(),
                workflow: "name: w\njobs:\n  a: { run: noop }\n".into(),
                from: "2024-03-01".into(),
                to: "2024-03-31".into(),
                interval: "1d".into(),
                max_parallel_runs: 2,
                rerun: Rerun::Failed,
            }),
            job: None,
            requested_at: time("2024-03-02T08:00:00Z"),
            dead_letter: None,
            spec: None,
        },
    );
    check(
        "control_request_bulk",
        ControlRequest {
            schema_version: SCHEMA_VERSION,
            request_id: Some(request_id()),
            requested_by: "alice".into(),
            run_id: None,
            action: ControlAction::Bulk(BulkRequest {
                action: BulkAction::Retry,
                runs: vec![run_id()],
                selection: "workflow=w state=failed window_from=2024-03-01 window_to=2024-03-31".into(),
            }),
            job: None,
            requested_at: time("2024-03-02T08:00:00Z"),
            dead_letter: None,
            spec: None,
        },
    );
    check(
        "control_outcome",
        ControlOutcome {
            schema_version: SCHEMA_VERSION,
            request_id: request_id(),
            run_id: Some(run_id()),
            action: "retry".into(),
            outcome: Outcome::Refused,
            kind: Some(RefusalKind::Conflict),
            reason: "job `b` needs `a`, which did not complete".into(),
            changed: vec![],
            changed_total: 0,
            requested_by: "alice".into(),
            at: time("2024-03-02T08:00:01Z"),
        },
    );
    check(
        "pending_cancel",
        PendingCancel {
            schema_version: SCHEMA_VERSION,
            run_id: run_id(),
            request_id: Some(request_id()),
            requested_by: "alice".into(),
            at: time("2024-03-02T08:00:01Z"),
        },
    );
}

/// A request from a client of schema 1 (no request id, no identity) still decodes: it is
/// applied, and gets no answer since it names no key for one.
#[test]
fn a_schema_1_control_request_still_decodes() {
    #[derive(Serialize)]
    struct OldRequest<'a> {
        schema_version: u32,
        run_id: &'a str,
        action: &'a str,
        job: Option<&'a str>,
        requested_at: &'a str,
        dead_letter: Option<u64>,
    }
    let bytes = rmp_serde::to_vec_named(&OldRequest {
        schema_version: 1,
        run_id: "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b",
        action: "cancel",
        job: None,
        requested_at: "2024-03-02T08:00:00Z",
        dead_letter: None,
    })
    .unwrap();
    let request: ControlRequest = decode(&bytes).unwrap();
    assert_eq!(request.run_id, Some(run_id()));
    assert_eq!(request.action, ControlAction::Cancel);
    assert_eq!(request.request_id, None);
}

#[test]
fn schedule_and_backfill_records() {
    check(
        "schedule_record",
        ScheduleRecord {
            schema_version: SCHEMA_VERSION,
            name: "nightly".into(),
            workflow: "name: nightly\nschedule: { cron: \"0 2 * * *\" }\njobs:\n  a: { run: noop }\n".into(),
            schedule: serde_json::from_value(serde_json::json!({"cron": "0 2 * * *"})).unwrap(),
            paused: false,
            handled_until: time("2024-03-02T02:00:00Z"),
            created_at: time("2024-03-01T00:00:00Z"),
            updated_at: time("2024-03-01T00:00:00Z"),
            last_tick: Some(time("2024-03-02T02:00:00Z")),
            last_run: Some(run_id()),
            skipped_ticks: 0,
        },
    );
    check(
        "workflow_record",
        WorkflowRecord {
            schema_version: SCHEMA_VERSION,
            name: "nightly".into(),
            spec_hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            description: Some("Loads the day's orders".into()),
            timezone: Some("Europe/Berlin".into()),
            schedule: Some("0 2 * * *".into()),
            jobs: 3,
            params: vec!["region".into()],
            created_at: time("2024-03-01T00:00:00Z"),
            updated_at: time("2024-03-02T00:00:00Z"),
            applied_by: "alice".into(),
        },
    );
    check(
        "backfill_record",
        BackfillRecord {
            schema_version: SCHEMA_VERSION,
            id: run_id(),
            workflow: "w".into(),
            spec_yaml: "name: w\njobs:\n  a: { run: noop }\n".into(),
            from: "2024-03-01".into(),
            to: "2024-03-01".into(),
            interval: "1d".into(),
            max_parallel_runs: 2,
            rerun: Rerun::Missing,
            state: RunState::Running,
            created_at: time("2024-03-02T08:00:00Z"),
            finished_at: None,
            windows: vec![BackfillWindow {
                window: window(),
                run_id: run_id(),
                skip: None,
                state: Some(RunState::Running),
            }],
            next: 1,
        },
    );
}

#[test]
fn pool_and_worker_records() {
    check(
        "pool_record",
        PoolRecord {
            schema_version: SCHEMA_VERSION,
            name: "highmem".into(),
            ack_wait_ms: 30_000,
            max_deliver: 120,
            max_timeout_ms: Some(7_200_000),
            kinds: vec!["exec".into(), "noop".into()],
            declared_at: time("2024-03-01T00:00:00Z"),
            updated_at: time("2024-03-02T00:00:00Z"),
        },
    );
    check(
        "worker_record",
        WorkerRecord {
            schema_version: SCHEMA_VERSION,
            worker_id: "host-1-4242".into(),
            pool: "highmem".into(),
            kinds: vec!["exec".into(), "noop".into()],
            protocol_versions: vec![SCHEMA_VERSION],
            version: "0.1.0".into(),
            slots: 8,
            busy: 3,
            started_at: time("2024-03-02T08:00:00Z"),
            leader: false,
        },
    );
}

/// Every versioned message type has a golden vector: a new type without one fails here.
#[test]
fn every_versioned_type_has_a_golden_vector() {
    let covered: BTreeMap<&str, &str> = BTreeMap::from([
        ("Submission", "submission"),
        ("JobMessage", "job_message"),
        ("JobEvent", "job_event"),
        ("RunRecord", "run_record"),
        ("JobRecord", "job_record"),
        ("DeadLetter", "dead_letter"),
        ("ControlRequest", "control_request"),
        ("ControlOutcome", "control_outcome"),
        ("ScheduleRecord", "schedule_record"),
        ("WorkflowRecord", "workflow_record"),
        ("BackfillRecord", "backfill_record"),
        ("LogBatch", "log_batch"),
        ("Rejection", "rejection"),
        ("Notice", "notice"),
        ("NotifyStatus", "notify_status"),
        ("SpawnBatch", "spawn_batch"),
        ("PoolRecord", "pool_record"),
        ("WorkerRecord", "worker_record"),
        ("RunIndexEntry", "run_index_entry"),
        ("PendingCancel", "pending_cancel"),
        ("EventBatch", "event_batch"),
    ]);
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut versioned = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|extension| extension != "rs") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("versioned!(") {
                versioned.push(rest.split(',').next().unwrap().trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("impl Versioned for ")
                && !rest.starts_with('$')
            {
                versioned.push(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    }
    assert!(versioned.len() >= covered.len(), "found only {versioned:?}");
    for name in &versioned {
        let file = covered.get(name.as_str()).unwrap_or_else(|| panic!("{name} is versioned but has no golden vector"));
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{file}.msgpack"));
        assert!(path.exists(), "{name}: {} is missing", path.display());
    }
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
