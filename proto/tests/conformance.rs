//! The conformance tables in `tests/conformance/` against the real functions. The Python SDK's
//! tests read the same tables (clients/python/tests/test_conformance.py), so both sides make
//! the same decisions; the worker's settlement rows are read by the worker crate's tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_proto::cron::Cron;
use sluice_proto::window::parse_zone;
use sluice_proto::{RetryPolicy, RunId, Window, names, placeholder};

fn table(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn rows<'a>(table: &'a Value, key: &str) -> &'a Vec<Value> {
    let rows = table[key].as_array().unwrap_or_else(|| panic!("no `{key}` rows"));
    assert!(!rows.is_empty(), "`{key}` has no rows");
    rows
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or_else(|| panic!("row {row} has no string `{key}`"))
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

#[test]
fn windows() {
    let table = table("windows");
    for row in rows(&table, "cases") {
        let zone = parse_zone(text(row, "zone")).unwrap();
        let parsed = Window::parse(text(row, "text"), zone, time(text(row, "now")));
        match row.get("error") {
            Some(error) => {
                let message = parsed.expect_err(&row.to_string()).to_string();
                assert!(message.contains(error.as_str().unwrap()), "{row}: {message}");
            }
            None => {
                let window = parsed.unwrap_or_else(|error| panic!("{row}: {error}"));
                assert_eq!(window.start_rfc3339(), text(row, "start"), "{row}");
                assert_eq!(window.end_rfc3339(), text(row, "end"), "{row}");
                if let Some(hours) = row.get("hours") {
                    assert_eq!((window.end - window.start).num_hours(), hours.as_i64().unwrap(), "{row}");
                }
            }
        }
    }
    for row in rows(&table, "zones") {
        match (parse_zone(text(row, "zone")), row.get("error")) {
            (Ok(_), None) => {}
            (Err(error), Some(expected)) => assert!(error.to_string().contains(expected.as_str().unwrap()), "{error}"),
            (result, _) => panic!("{row}: {result:?}"),
        }
    }
}

#[test]
fn placeholders() {
    let table = table("placeholders");
    for row in rows(&table, "substitute") {
        let values: BTreeMap<String, String> = serde_json::from_value(row["values"].clone()).unwrap();
        let result = placeholder::substitute(text(row, "text"), |name| values.get(name).cloned());
        match row.get("error") {
            Some(error) => {
                let message = result.expect_err(&row.to_string()).to_string();
                assert!(message.contains(error.as_str().unwrap()), "{row}: {message}");
            }
            None => assert_eq!(result.unwrap(), text(row, "out"), "{row}"),
        }
    }
    for row in rows(&table, "check") {
        let params: Option<BTreeMap<String, String>> = serde_json::from_value(row["params"].clone()).unwrap();
        let result = placeholder::check(text(row, "text"), params.as_ref());
        match row.get("error") {
            Some(error) => {
                let message = result.expect_err(&row.to_string()).to_string();
                assert!(message.contains(error.as_str().unwrap()), "{row}: {message}");
            }
            None => result.unwrap_or_else(|error| panic!("{row}: {error}")),
        }
    }
}

fn policy(row: &Value) -> RetryPolicy {
    serde_json::from_value(row["policy"].clone()).unwrap_or_else(|error| panic!("{row}: {error}"))
}

#[test]
fn retry_delays_and_attempts() {
    let table = table("retry");
    for row in rows(&table, "delays") {
        let attempt = u32::try_from(row["failed_attempt"].as_u64().unwrap()).unwrap();
        let delay = policy(row).delay_after(attempt, row["jitter_fraction"].as_f64().unwrap());
        assert_eq!(delay.as_millis(), u128::from(row["delay_ms"].as_u64().unwrap()), "{row}");
    }
    for row in rows(&table, "another") {
        let attempt = u32::try_from(row["failed_attempt"].as_u64().unwrap()).unwrap();
        assert_eq!(policy(row).allows_another_after(attempt), row["another"].as_bool().unwrap(), "{row}");
    }
}

#[test]
fn cron_next_fire() {
    let table = table("cron");
    for row in rows(&table, "cases") {
        let parsed = text(row, "cron").parse::<Cron>();
        if let Some(error) = row.get("error") {
            let message = parsed.expect_err(&row.to_string()).to_string();
            assert!(message.contains(error.as_str().unwrap()), "{row}: {message}");
            continue;
        }
        let cron = parsed.unwrap_or_else(|error| panic!("{row}: {error}"));
        let next = cron.next_after(parse_zone(text(row, "zone")).unwrap(), time(text(row, "after")));
        let expected = row["next"].as_str().map(time);
        assert_eq!(next, expected, "{row}");
    }
}

#[test]
fn names_every_client_uses() {
    let table = table("names");
    let constants: BTreeMap<&str, &str> = BTreeMap::from([
        ("SUBMIT_STREAM", names::SUBMIT_STREAM),
        ("SUBMIT_SUBJECT", names::SUBMIT_SUBJECT),
        ("JOBS_STREAM", names::JOBS_STREAM),
        ("EVENTS_STREAM", names::EVENTS_STREAM),
        ("REJECTED_STREAM", names::REJECTED_STREAM),
        ("DLQ_STREAM", names::DLQ_STREAM),
        ("CONTROL_STREAM", names::CONTROL_STREAM),
        ("SPAWNS_STREAM", names::SPAWNS_STREAM),
        ("LOGS_STREAM", names::LOGS_STREAM),
        ("INDEX_STREAM", names::INDEX_STREAM),
        ("INDEX_ALL_SUBJECT", names::INDEX_ALL_SUBJECT),
        ("RUNS_BUCKET", names::RUNS_BUCKET),
        ("JOBS_BUCKET", names::JOBS_BUCKET),
        ("IDEMPOTENCY_BUCKET", names::IDEMPOTENCY_BUCKET),
        ("ACTIVE_BUCKET", names::ACTIVE_BUCKET),
        ("POOLS_BUCKET", names::POOLS_BUCKET),
        ("WORKERS_BUCKET", names::WORKERS_BUCKET),
        ("OUTCOMES_BUCKET", names::OUTCOMES_BUCKET),
        ("SPECS_BUCKET", names::SPECS_BUCKET),
        ("HEADER_MSG_ID", names::HEADER_MSG_ID),
        ("HEADER_TRACEPARENT", names::HEADER_TRACEPARENT),
        ("HEADER_TRACESTATE", names::HEADER_TRACESTATE),
        ("HEADER_RUN_ID", names::HEADER_RUN_ID),
        ("HEADER_JOB", names::HEADER_JOB),
        ("HEADER_GENERATION", names::HEADER_GENERATION),
        ("HEADER_ATTEMPT_OFFSET", names::HEADER_ATTEMPT_OFFSET),
        ("HEADER_REASON", names::HEADER_REASON),
        ("HEADER_ORIGINAL_SUBJECT", names::HEADER_ORIGINAL_SUBJECT),
        ("HEADER_REQUEST_ID", names::HEADER_REQUEST_ID),
        ("HEADER_KV_OPERATION", names::HEADER_KV_OPERATION),
        ("ANONYMOUS_IDENTITY", names::ANONYMOUS_IDENTITY),
        ("UNKNOWN_TOKEN", names::UNKNOWN_TOKEN),
        ("COORDINATOR_POOL_TOKEN", names::COORDINATOR_POOL_TOKEN),
        ("STOP_SUBJECTS", names::STOP_SUBJECTS),
        ("DLQ_SUBJECTS", names::DLQ_SUBJECTS),
        ("DEFAULT_POOL", sluice_proto::spec::DEFAULT_POOL),
    ]);
    let listed: BTreeMap<&str, &str> = table["constants"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str().unwrap()))
        .collect();
    assert_eq!(listed, constants, "names.json's constants are proto/src/names.rs's");

    let sample = &table["sample"];
    let s = |key: &str| text(sample, key).to_owned();
    let n = |key: &str| u32::try_from(sample[key].as_u64().unwrap()).unwrap();
    let run: RunId = s("run_id").parse().unwrap();
    let (pool, job) = (s("pool"), s("job"));
    let computed: BTreeMap<&str, String> = BTreeMap::from([
        ("pool_filter", names::pool_filter(&pool)),
        ("pool_consumer", names::pool_consumer(&pool)),
        ("event_subject", names::event_subject(&pool, &run, &job)),
        ("spawn_subject", names::spawn_subject(&pool, &run, &job, n("generation"), n("attempt"))),
        ("log_subject", names::log_subject(&pool, &run, n("attempt"), &job)),
        ("run_logs_filter", names::run_logs_filter(&run)),
        ("rejected_subject", names::rejected_subject(Some(&run))),
        ("dlq_subject", names::dlq_subject(&pool, Some(&run), Some(&job))),
        ("control_subject", names::control_subject(&s("identity"), Some(&run))),
        ("stop_subject", names::stop_subject(&run)),
        ("dead_letter_id", names::dead_letter_id(&run, &job, n("generation"))),
        ("job_key", names::job_key(&run, &job)),
        ("kv_subject", names::kv_subject(&s("bucket"), &s("key"))),
        ("worker_key", names::worker_key(&pool, &s("worker_id"))),
        ("worker_token", names::worker_token(&s("host_worker"))),
        ("event_batch_subject", names::event_batch_subject(&pool, &s("host_worker"))),
        ("event_id", names::event_id(&run, &job, n("attempt"), n("generation"), &s("kind"))),
        ("start_event_id", names::start_event_id(&run, &job, n("attempt"), n("generation"), &s("worker"))),
        ("idempotency_kv_key", names::idempotency_kv_key(&s("key"))),
        ("dlq_run_filter", names::dlq_run_filter(&run)),
        ("run_jobs_filter", names::run_jobs_filter(&run)),
        ("index_workflow_subject", names::index_workflow_subject(&s("workflow"))),
        ("index_origin_subject", names::index_origin_subject(&s("origin"))),
        ("index_state_subject", names::index_state_subject(&s("state"))),
    ]);
    let functions = table["functions"].as_object().unwrap();
    // Sorted: serde_json keeps the file's order when another crate of the workspace turns on
    // its `preserve_order` feature.
    let listed: std::collections::BTreeSet<&str> = functions.keys().map(String::as_str).collect();
    assert_eq!(listed.into_iter().collect::<Vec<_>>(), computed.keys().copied().collect::<Vec<_>>());
    for (name, value) in computed {
        assert_eq!(value, text(&functions[name], "out"), "{name}");
    }
}
