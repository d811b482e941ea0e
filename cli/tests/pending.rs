//! Submissions no coordinator has taken yet are shown `pending` (`runs`, `runs --state
//! pending`, `status`, an id suffix), and a cancel of one is a control request that makes
//! intake create the run `cancelled`, so none of its jobs ever reaches a worker.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sluice_proto::{ControlOutcome, Outcome, decode, names};

fn ids(listed: &serde_json::Value) -> Vec<(String, String)> {
    listed["runs"]
        .as_array()
        .unwrap_or_else(|| panic!("no runs in {listed:#}"))
        .iter()
        .map(|run| {
            (run["id"].as_str().unwrap_or_default().to_owned(), run["state"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The keys of a JSON object, in the order they were printed.
fn keys(value: &serde_json::Value) -> Vec<&str> {
    value.as_object().expect("an object").keys().map(String::as_str).collect()
}

/// Messages waiting in a stream.
fn waiting(stack: &Stack, stream: &str) -> u64 {
    stack.block_on(async {
        let client = async_nats::connect(stack.url()).await.expect("connects");
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.expect("the stream exists");
        stream.info().await.expect("stream info").state.messages
    })
}

fn outcome_of_cancel(stack: &Stack, run: &str) -> ControlOutcome {
    stack.block_on(async {
        use futures::TryStreamExt;
        let client = async_nats::connect(stack.url()).await.expect("connects");
        let js = async_nats::jetstream::new(client);
        let bucket = js.get_key_value(names::OUTCOMES_BUCKET).await.expect("outcomes bucket");
        let keys: Vec<String> = bucket.keys().await.expect("keys").try_collect().await.expect("keys");
        for key in keys {
            let bytes = bucket.get(&key).await.expect("get").expect("value");
            let outcome: ControlOutcome = decode(&bytes).expect("an outcome decodes");
            if outcome.action == "cancel" && outcome.run_id.map(|id| id.to_string()).as_deref() == Some(run) {
                return outcome;
            }
        }
        panic!("no answer to the cancel of {run}")
    })
}

#[test]
fn a_pending_submission_is_shown_and_a_cancel_before_any_coordinator_creates_it_cancelled() {
    let mut stack = Stack::start();
    // A coordinator sets Sluice up, then goes away: what follows waits for the next one.
    let first = stack.coordinator();
    wait_until_set_up(&stack);
    stack.signal(first, "TERM");
    stack.wait_exit(first, Duration::from_secs(20));
    stack.worker(&["--concurrency", "4"]);
    stack.wait_for_workers("default", 1, Duration::from_secs(30)).expect("the worker announces itself");

    let log = stack.job_log();
    let doomed = stack.write(
        "doomed.yaml",
        &format!(
            "name: doomed\njobs:\n  d1: {}\n  d2: {}\n",
            recording_job(&log, 0.0, &[]),
            recording_job(&log, 0.0, &["d1".to_owned()])
        ),
    );
    let bystander =
        stack.write("bystander.yaml", &format!("name: bystander\njobs:\n  b1: {}\n", recording_job(&log, 0.0, &[])));
    let doomed_id = stack.sluice_json(&["submit", doomed.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let bystander_id =
        stack.sluice_json(&["submit", bystander.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();

    // Both are listed, pending, newest first.
    let listed = stack.sluice_json(&["runs"], 0);
    assert_eq!(
        ids(&listed),
        [(bystander_id.clone(), "pending".to_owned()), (doomed_id.clone(), "pending".to_owned())],
        "{listed:#}"
    );
    let row = &listed["runs"][1];
    assert_eq!(
        keys(row),
        ["id", "workflow", "state", "window", "created_at", "finished_at", "origin", "submitted_at"],
        "the keys of a run's row, then submitted_at (docs/cli.md)"
    );
    assert_eq!(row["workflow"], "doomed", "{row:#}");
    assert!(row["submitted_at"].is_string(), "{row:#}");
    assert!(row["created_at"].is_null(), "{row:#}");
    let only = stack.sluice_json(&["runs", "--state", "pending", "--workflow", "doomed"], 0);
    assert_eq!(ids(&only), [(doomed_id.clone(), "pending".to_owned())], "{only:#}");
    assert_eq!(ids(&stack.sluice_json(&["runs", "--state", "pending", "--limit", "1"], 0)).len(), 1);
    assert!(ids(&stack.sluice_json(&["runs", "--state", "running"], 0)).is_empty(), "pending is not running");
    let human = stack.sluice(&["runs"]);
    assert!(text(&human.stdout).contains("pending"), "{}", text(&human.stdout));

    // `status` shows it pending, by its id or the end of it.
    let status = stack.sluice_json(&["status", &doomed_id], 0);
    assert_eq!(status["state"], "pending", "{status:#}");
    assert_eq!(status["workflow"], "doomed", "{status:#}");
    assert!(status["submitted_at"].is_string(), "{status:#}");
    assert_eq!(
        keys(&status),
        [
            "id",
            "workflow",
            "state",
            "window",
            "created_at",
            "finished_at",
            "origin",
            "submitted_at",
            "jobs",
            "notifications"
        ]
    );
    let suffix = &doomed_id[doomed_id.len() - 8..];
    assert_eq!(stack.sluice_json(&["status", suffix], 0)["id"], doomed_id.as_str());
    let human = stack.sluice(&["status", &doomed_id]);
    assert!(text(&human.stdout).contains("pending"), "{}", text(&human.stdout));

    // The cancel waits for an answer; the coordinator that starts next gives it.
    let cancel = Command::new(SLUICE)
        .args(["--nats-url", &stack.url(), "cancel", &doomed_id, "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sluice cancel starts");
    wait_until(Duration::from_secs(20), "the cancel request to be stored", || {
        waiting(&stack, names::CONTROL_STREAM) == 1
    });
    // The HTTP server's audit of actions lists it as waiting, with who asked.
    let address = start_server(&mut stack, ("alice", "alice-token"), ("bob", "bob-token"), &[]);
    let (status, body) = sluice_testkit::http::request(
        &address,
        "GET",
        "/api/v1/requests",
        &[("Authorization", "Bearer bob-token")],
        b"",
    )
    .expect("the server answers");
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let unanswered = &listed["waiting"];
    assert_eq!(unanswered.as_array().map(Vec::len), Some(1), "{listed:#}");
    assert_eq!(
        (unanswered[0]["action"].as_str(), unanswered[0]["run_id"].as_str(), unanswered[0]["requested_by"].as_str()),
        (Some("cancel"), Some(doomed_id.as_str()), Some(names::ANONYMOUS_IDENTITY)),
        "{listed:#}"
    );
    assert_eq!(listed["requests"], serde_json::json!([]), "none answered yet: {listed:#}");
    stack.coordinator();
    let cancelled = cancel.wait_with_output().expect("sluice cancel ends");
    assert_eq!(cancelled.status.code(), Some(0), "{}\n{}", text(&cancelled.stdout), text(&cancelled.stderr));

    let outcome = outcome_of_cancel(&stack, &doomed_id);
    assert_eq!(outcome.outcome, Outcome::Applied, "{outcome:?}");
    assert!(outcome.reason.contains("cancelled before it started"), "{outcome:?}");

    let bystander_end = stack.wait_for_run(&bystander_id, Duration::from_secs(60));
    assert_eq!(bystander_end["state"], "succeeded", "{bystander_end:#}");
    let doomed_end = stack.wait_for_run(&doomed_id, Duration::from_secs(30));
    assert_eq!(doomed_end["state"], "cancelled", "{doomed_end:#}");
    assert_eq!(doomed_end["cancelled_by"], names::ANONYMOUS_IDENTITY, "{doomed_end:#}");
    for job in doomed_end["jobs"].as_array().unwrap() {
        assert_eq!(job["state"], "cancelled", "{doomed_end:#}");
        assert_eq!(job["attempts"], 0, "{doomed_end:#}");
    }
    let ran = read_job_log(&log);
    assert!(ran.contains_key("b1"), "the bystander ran: {ran:?}");
    assert!(!ran.contains_key("d1") && !ran.contains_key("d2"), "no job of the cancelled run ran: {ran:?}");
    assert!(ids(&stack.sluice_json(&["runs", "--state", "pending"], 0)).is_empty(), "nothing pending any more");
    // Now a stored run like any other: cancelled, so a second cancel is a conflict.
    let again = stack.sluice(&["cancel", &doomed_id]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already finished"), "{}", text(&again.stderr));
    // No job of it is left anywhere for a worker.
    assert_eq!(waiting(&stack, names::JOBS_STREAM), 0);
    // Answered now: no longer waiting.
    let (_, body) = sluice_testkit::http::request(
        &address,
        "GET",
        "/api/v1/requests",
        &[("Authorization", "Bearer bob-token")],
        b"",
    )
    .expect("the server answers");
    let listed: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["waiting"], serde_json::json!([]), "{listed:#}");
}
