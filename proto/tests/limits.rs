//! Every stored value and message is bounded by construction: inputs are checked where they
//! enter (after YAML aliases are expanded), histories keep the first and the latest attempts,
//! free text is truncated, and the largest record each limit allows still fits the smallest
//! nats-server Sluice runs on.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sluice_proto::limits::*;
use sluice_proto::messages::{REDELIVERIES_KEPT, bounded_worker};
use sluice_proto::spawn::OUTPUT_MAX_BYTES;
use sluice_proto::{
    AttemptRecord, DeadLetter, JobMessage, JobRecord, JobSpec, JobState, Mark, MarkAs, RetryPolicy, RunId,
    SCHEMA_VERSION, Window, WorkflowSpec, encode,
};

fn time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2024-03-02T08:00:00Z").unwrap().to_utc()
}

/// A 2 KB workflow whose aliases expand one job's `config` to megabytes.
fn alias_bomb(copies_per_level: usize) -> String {
    let leaf = "x".repeat(220);
    let row = |alias: &str| vec![format!("*{alias}"); copies_per_level].join(", ");
    format!(
        "name: bomb\njobs:\n  small: {{ run: noop }}\n  big:\n    run: noop\n    config:\n      a: &a [\"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\", \"{leaf}\"]\n      b: &b [{}]\n      c: &c [{}]\n      d: [{}]\n",
        row("a"),
        row("b"),
        row("c")
    )
}

#[test]
fn aliases_that_expand_a_job_past_its_limit_are_refused_naming_the_job_and_the_excess() {
    let yaml = alias_bomb(10);
    assert!(yaml.len() < 4 * 1024, "the YAML itself is small: {} bytes", yaml.len());
    let error = WorkflowSpec::parse(&yaml).unwrap_err().to_string();
    assert!(error.contains("job `big`: its definition is"), "{error}");
    assert!(error.contains("once YAML aliases are expanded"), "{error}");
    assert!(error.contains(&format!("over the limit of {JOB_DEFINITION_MAX_BYTES}")), "{error}");
    assert!(!error.contains("job `small`"), "only the big job is named: {error}");
    // The same shape, small enough, is fine.
    assert!(WorkflowSpec::parse(&alias_bomb(2)).is_ok());
}

#[test]
fn a_workflow_over_the_yaml_limit_is_refused_with_its_size() {
    let padding = format!("# {}\n", "p".repeat(WORKFLOW_YAML_MAX_BYTES));
    let yaml = format!("name: w\njobs:\n  a: {{ run: noop }}\n{padding}");
    let error = WorkflowSpec::parse(&yaml).unwrap_err().to_string();
    assert_eq!(error, format!("workflow is {} bytes; the limit is {WORKFLOW_YAML_MAX_BYTES}", yaml.len()));
}

#[test]
fn a_run_record_that_would_pass_the_kv_limit_is_refused_at_parse() {
    // Long job names are most of the YAML: the run record lists them again.
    let mut yaml = String::from("name: names\njobs:\n");
    let mut index = 0;
    while yaml.len() < WORKFLOW_YAML_MAX_BYTES - 200 {
        yaml.push_str(&format!("  {:0>60}{index:04}: {{run: noop}}\n", "j"));
        index += 1;
        if index == WORKFLOW_JOBS_MAX {
            break;
        }
    }
    let spec_error = WorkflowSpec::parse(&yaml).unwrap_err().to_string();
    assert!(spec_error.contains("a run's record would be up to"), "{spec_error}");
    assert!(spec_error.contains(&format!("the limit is {RUN_RECORD_MAX_BYTES}")), "{spec_error}");
}

#[test]
fn params_are_bounded_one_by_one_and_together() {
    let spec = WorkflowSpec::parse("name: w\njobs:\n  a: { run: noop }\n").unwrap();
    let long = BTreeMap::from([("big".to_owned(), "v".repeat(PARAM_VALUE_MAX_BYTES + 1))]);
    let error = spec.resolve_params(&long).unwrap_err().to_string();
    assert!(error.contains(&format!("param `big` is {} bytes", PARAM_VALUE_MAX_BYTES + 1)), "{error}");
    let many: BTreeMap<String, String> =
        (0..20).map(|index| (format!("p{index}"), "v".repeat(PARAM_VALUE_MAX_BYTES))).collect();
    let error = spec.resolve_params(&many).unwrap_err().to_string();
    assert!(error.contains("the params are") && error.contains(&format!("the limit is {PARAMS_MAX_BYTES}")), "{error}");
}

fn attempt(number: u32, error_bytes: usize) -> AttemptRecord {
    AttemptRecord {
        attempt: number,
        started_at: time(),
        finished_at: Some(time()),
        error: Some("e".repeat(error_bytes)),
        worker: "w".repeat(WORKER_NAME_MAX_BYTES),
        redelivered_to: vec!["r".repeat(WORKER_NAME_MAX_BYTES); REDELIVERIES_KEPT],
        spec_hash: Some(sluice_proto::WorkflowSpec::hash("name: w")),
        found_later: Some("f".repeat(ATTEMPT_FOUND_LATER_MAX_BYTES)),
    }
}

fn blank_job() -> JobRecord {
    JobRecord {
        state: JobState::Failed,
        queued_at: Some(time()),
        started_at: Some(time()),
        finished_at: Some(time()),
        ..JobRecord::blank(RunId::new(), &"j".repeat(NAME_MAX_CHARS))
    }
}

#[test]
fn the_history_keeps_the_first_and_the_latest_attempts_and_counts_the_rest() {
    let mut job = blank_job();
    for number in 1..=100 {
        job.push_attempt(attempt(number, 10));
    }
    let kept: Vec<u32> = job.attempt_history.iter().map(|attempt| attempt.attempt).collect();
    let latest: Vec<u32> = (100 - ATTEMPTS_KEPT_LATEST as u32 + 1..=100).collect();
    assert_eq!(kept[0], 1);
    assert_eq!(&kept[1..], &latest[..]);
    assert_eq!(job.attempts_omitted, 100 - 1 - ATTEMPTS_KEPT_LATEST as u32);
}

#[test]
fn a_forged_worker_id_is_cut_to_its_limit() {
    let forged = "é".repeat(300_000);
    let kept = bounded_worker(&forged);
    assert!(kept.len() <= WORKER_NAME_MAX_BYTES + '…'.len_utf8(), "{}", kept.len());
    assert!(kept.starts_with("éé") && kept.ends_with('…'));
    assert_eq!(bounded_worker("worker-1"), "worker-1");
}

/// A job definition exactly at the limit.
fn largest_definition() -> JobSpec {
    let mut job: JobSpec = serde_json::from_value(serde_json::json!({ "run": "exec", "command": ["sh"] })).unwrap();
    let base = sluice_proto::spec::definition_bytes(&job);
    job.config = Some(serde_json::Value::String("c".repeat(JOB_DEFINITION_MAX_BYTES - base - 20)));
    assert!(sluice_proto::spec::definition_bytes(&job) <= JOB_DEFINITION_MAX_BYTES);
    job
}

fn largest_job_message() -> JobMessage {
    let definition = largest_definition();
    let params: BTreeMap<String, String> = (0..PARAMS_MAX_BYTES / (PARAM_VALUE_MAX_BYTES + NAME_MAX_CHARS))
        .map(|index| (format!("{index:0>64}"), "v".repeat(PARAM_VALUE_MAX_BYTES)))
        .collect();
    JobMessage {
        schema_version: SCHEMA_VERSION,
        run_id: RunId::new(),
        workflow: "w".repeat(NAME_MAX_CHARS),
        job: "j".repeat(NAME_MAX_CHARS),
        kind: definition.run.clone(),
        command: definition.command.clone(),
        config: definition.config.clone().unwrap_or_default(),
        window: Window::new(time().into(), (time() + chrono::Duration::days(1)).into()).unwrap(),
        params,
        pool: "p".repeat(NAME_MAX_CHARS),
        attempt_offset: 0,
        retry_base: Some(0),
        generation: 0,
        retry: RetryPolicy::default(),
        timeout_ms: Some(1),
        permanent_exit_codes: vec![1, 2, 3],
        needs: vec!["n".repeat(NAME_MAX_CHARS); 8],
        image: None,
        resources: None,
        env: Default::default(),
        batch_events: true,
    }
}

#[test]
fn the_largest_records_each_limit_allows_fit_their_bounds_and_the_server() {
    let message = encode(&largest_job_message()).unwrap();
    assert!(message.len() <= JOB_MESSAGE_MAX_BYTES, "job message {} > {JOB_MESSAGE_MAX_BYTES}", message.len());

    let mut job = blank_job();
    for number in 1..=RETRY_MAX_ATTEMPTS_LIMIT {
        job.push_attempt(attempt(number, ERROR_TEXT_MAX_BYTES));
    }
    job.error = Some("e".repeat(ERROR_TEXT_MAX_BYTES));
    job.output = Some(serde_json::Value::String("o".repeat(OUTPUT_MAX_BYTES - 2)));
    job.definition = Some(Arc::new(largest_definition()));
    job.parent = Some("p".repeat(NAME_MAX_CHARS * 8));
    job.marked = Some(Mark {
        as_: MarkAs::Succeeded,
        by: "u".repeat(REQUESTED_BY_MAX_BYTES),
        at: time(),
        request_id: Some(sluice_proto::RequestId::new()),
    });
    let record = encode(&job).unwrap();
    assert!(record.len() <= JOB_RECORD_MAX_BYTES, "job record {} > {JOB_RECORD_MAX_BYTES}", record.len());

    let letter = DeadLetter {
        schema_version: SCHEMA_VERSION,
        job: largest_job_message(),
        reason: "r".repeat(ERROR_TEXT_MAX_BYTES),
        attempts: job.attempt_history.clone(),
        dead_at: time(),
        attempts_omitted: job.attempts_omitted,
    };
    let letter = encode(&letter).unwrap();
    assert!(letter.len() <= DEAD_LETTER_MAX_BYTES, "dead letter {} > {DEAD_LETTER_MAX_BYTES}", letter.len());
    for (what, bytes) in [("job message", message.len()), ("job record", record.len()), ("dead letter", letter.len())] {
        assert!(bytes < SERVER_MAX_PAYLOAD_MIN_BYTES, "{what}: {bytes} bytes");
    }
}

#[test]
fn docs_limits_names_every_limit_of_the_contract() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/limits.rs")).unwrap();
    let doc = std::fs::read_to_string(root.join("../docs/limits.md")).unwrap();
    let missing: Vec<&str> = source
        .lines()
        .filter_map(|line| line.strip_prefix("pub const "))
        .filter_map(|rest| rest.split(':').next())
        .filter(|name| !doc.contains(&format!("`{name}`")))
        .collect();
    assert!(missing.is_empty(), "docs/limits.md does not name {missing:?}");
}
