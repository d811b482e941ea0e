//! The worker's decisions against the conformance tables in proto/tests/conformance/, which
//! the Python worker is tested against too: how an attempt's message settles (retry.json)
//! and what each placeholder stands for (placeholders.json).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::{Value, json};
use sluice_proto::{JobMessage, Window};

use super::completer::{Ending, Series, Settlement, settle};
use crate::job::JobContext;

fn table(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/conformance").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z").unwrap_or_default().to_utc()
}

fn job_of(row: &Value) -> JobMessage {
    let mut job = json!({
        "schema_version": 2, "run_id": "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b", "workflow": "w", "job": "a",
        "kind": "noop", "window": {"start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z"},
        "pool": "default", "retry": row["policy"], "attempt_offset": row.get("attempt_offset").cloned().unwrap_or(json!(0)),
    });
    if let Some(base) = row.get("retry_base") {
        job["retry_base"] = base.clone();
    }
    serde_json::from_value(job).unwrap_or_else(|error| panic!("{row}: {error}"))
}

fn ending(name: &str) -> Ending {
    match name {
        "succeeded" => Ending::Succeeded,
        "retryable" => Ending::Failed { retryable: true },
        "permanent" => Ending::Failed { retryable: false },
        "undecodable" => Ending::Undecodable,
        "newer_schema" => Ending::NewerSchema,
        "unknown_kind" => Ending::UnknownKind,
        "handed_back" => Ending::HandedBack,
        "stopped" => Ending::Stopped,
        other => panic!("retry.json: unknown ending `{other}`"),
    }
}

#[test]
fn settlement_rows() {
    let table = table("retry.json");
    let nak_max = Duration::from_millis(table["nak_delay_max_ms"].as_u64().unwrap_or_default());
    let rows = table["settlement"].as_array().cloned().unwrap_or_default();
    assert!(!rows.is_empty());
    for row in rows {
        let job = job_of(&row);
        let attempt = u32::try_from(row["attempt"].as_u64().unwrap_or_default()).unwrap_or_default();
        let settled = settle(
            Some(Series::of(&job, attempt)),
            ending(row["ending"].as_str().unwrap_or("")),
            nak_max,
            now(),
            &mut StdRng::seed_from_u64(1),
        );
        let delay_ms = |delay: Duration| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let (kind, delay) = match settled {
            Settlement::Ack => ("ack", None),
            Settlement::Nak { delay, .. } => ("nak", Some(delay.map(delay_ms).unwrap_or(0))),
            Settlement::ScheduleRetry { delay, .. } => ("schedule_retry", Some(delay_ms(delay))),
            Settlement::Term => ("term", None),
        };
        assert_eq!(kind, row["settlement"].as_str().unwrap_or(""), "{row}");
        if let Some(expected) = row.get("delay_ms") {
            assert_eq!(delay, expected.as_u64(), "{row}");
        }
    }
}

#[test]
fn placeholder_values() {
    let table = table("placeholders.json");
    let values = &table["values"];
    let window: Window = serde_json::from_value(values["window"].clone()).unwrap_or_else(|error| panic!("{error}"));
    let mut ctx = JobContext::for_local_run(values["job"].as_str().unwrap_or(""), 1);
    ctx.run_id = values["run_id"].as_str().unwrap_or("").parse().unwrap_or_else(|error| panic!("{error}"));
    ctx.attempt = u32::try_from(values["attempt"].as_u64().unwrap_or_default()).unwrap_or_default();
    ctx.params = serde_json::from_value(values["params"].clone()).unwrap_or_default();
    let expect = values["expect"].as_object().cloned().unwrap_or_default();
    assert!(!expect.is_empty());
    for (name, value) in expect {
        assert_eq!(ctx.placeholder(&window, &name).as_deref(), value.as_str(), "{name}");
    }
}
