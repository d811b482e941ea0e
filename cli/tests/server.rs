//! `sluice server`'s HTTP API through real processes (nats-server, coordinator, worker, the
//! server): runs listed and read in exactly the CLI's `-o json` shapes, bad input answered
//! 400 naming the field, unknown ids 404, tokens checked (401 without, 403 for a viewer that
//! acts), actions answered by their control outcome (applied with the token's name as
//! `requested_by`, refused 409), dead letters read and replayed, the audit grid, schedules
//! paused, resumed and triggered, an attempt's log read a page at a time and followed, and a
//! non-loopback listen without tokens refused.

mod common;

use std::time::Duration;

use common::*;
use sluice_testkit::http::request;

const ALICE: &str = "alice-secret-token";
const BOB: &str = "bob-secret-token";

struct Api {
    address: String,
}

impl Api {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
        let bearer = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let (status, text) = request(&self.address, method, path, &headers, body.as_bytes()).unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text:?}"));
        (status, json)
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        self.call("GET", path, token, "")
    }
}

fn error_of(answer: &(u16, serde_json::Value)) -> (u16, String, String) {
    let error = &answer.1["error"];
    (answer.0, error["kind"].as_str().unwrap_or("").to_owned(), error["message"].as_str().unwrap_or("").to_owned())
}

#[test]
fn the_api_reads_runs_as_the_cli_does_checks_tokens_and_acts_through_control_outcomes() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    wait_until_set_up(&stack);
    let api = Api { address: start_server(&mut stack, ("alice", ALICE), ("bob", BOB), &[]) };

    let file = stack.write(
        "flaky.yaml",
        "name: flaky\njobs:\n  a: { run: noop }\n  b: { run: fail, needs: [a], retry: { max_attempts: 1 } }\n",
    );
    let failed = submit_and_wait(&stack, &file, 1);
    let id = failed["id"].as_str().unwrap().to_owned();

    // Reads: the same JSON as the CLI's.
    let (status, run) = api.get(&format!("/api/v1/runs/{id}"), Some(BOB));
    assert_eq!(status, 200, "{run}");
    assert_eq!(run, stack.sluice_json(&["status", &id], 0), "GET /api/v1/runs/ID is `status -o json`");
    let (status, page) = api.get("/api/v1/runs?workflow=flaky&limit=10", Some(BOB));
    assert_eq!(status, 200, "{page}");
    assert_eq!(page, stack.sluice_json(&["runs", "--workflow", "flaky", "--limit", "10"], 0));
    assert_eq!(page["runs"][0]["id"], id.as_str());
    let (status, workers) = api.get("/api/v1/workers", Some(BOB));
    assert_eq!(status, 200, "{workers}");
    let pools: Vec<&str> = workers["workers"].as_array().unwrap().iter().filter_map(|w| w["pool"].as_str()).collect();
    assert!(pools.contains(&"default") && pools.contains(&"_coordinator"), "{workers}");
    assert_eq!(workers, stack.sluice_json(&["workers"], 0), "GET /api/v1/workers is `workers -o json`");
    let (status, document) = api.get("/api/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");

    // Bad input names what is wrong; unknown ids and routes are 404.
    for (path, expected) in [
        ("/api/v1/runs?limit=0", "limit must be 1 to 1000, not `0`"),
        ("/api/v1/runs?state=exploded", "state: unknown state `exploded`"),
        ("/api/v1/runs?colour=red", "unknown parameter `colour`"),
        ("/api/v1/runs?cursor=nonsense", "`nonsense` is not a cursor"),
        ("/api/v1/runs/not-a-run", "id: `not-a-run` is not a run id"),
    ] {
        let (status, kind, message) = error_of(&api.get(path, Some(ALICE)));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }
    let unknown = sluice_proto::RunId::new();
    let (status, kind, _) = error_of(&api.get(&format!("/api/v1/runs/{unknown}"), Some(ALICE)));
    assert_eq!((status, kind.as_str()), (404, "not_found"));
    assert_eq!(error_of(&api.get("/api/v1/nothing-here", Some(ALICE))).0, 404);

    // Tokens: none, unknown, a viewer acting.
    assert_eq!(error_of(&api.get("/api/v1/runs", None)).1, "unauthorized");
    assert_eq!(error_of(&api.get("/api/v1/runs", Some("guess"))).0, 401);
    let (status, kind, message) = error_of(&api.call("POST", &format!("/api/v1/runs/{id}/retry"), Some(BOB), ""));
    assert_eq!((status, kind.as_str()), (403, "forbidden"), "{message}");

    // Actions: refused with the coordinator's reason, or applied as the token's owner.
    let (status, kind, message) = error_of(&api.call("POST", &format!("/api/v1/runs/{id}/cancel"), Some(ALICE), ""));
    assert_eq!((status, kind.as_str()), (409, "conflict"), "a finished run cannot be cancelled: {message}");
    let (status, kind, message) =
        error_of(&api.call("POST", &format!("/api/v1/runs/{id}/retry"), Some(ALICE), r#"{"jobs": ["b"]}"#));
    assert_eq!((status, kind.as_str()), (400, "invalid"));
    assert!(message.contains("unknown field `jobs`"), "{message}");
    let (status, retried) = api.call("POST", &format!("/api/v1/runs/{id}/retry"), Some(ALICE), r#"{"job": "b"}"#);
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["outcome"]["outcome"], "applied");
    // The coordinator records who asked under the identity that sent it (the server's).
    let by = retried["outcome"]["requested_by"].as_str().unwrap();
    assert!(by.ends_with("/alice"), "{by}");
    assert_eq!(retried["outcome"]["changed"], serde_json::json!(["b"]));
    let again = stack.wait_for_run(&id, Duration::from_secs(60));
    assert_eq!(again["jobs"][1]["attempt_history"].as_array().map(Vec::len), Some(2), "{again}");

    // Dead letters: `b` failed for good twice, so it is there; read as the CLI reads them.
    let (status, letters) = api.get("/api/v1/dlq?workflow=flaky", Some(BOB));
    assert_eq!(status, 200, "{letters}");
    assert_eq!(letters, stack.sluice_json(&["dlq", "list", "--workflow", "flaky"], 0));
    let first = letters["dead_letters"][0]["id"].as_u64().unwrap_or_else(|| panic!("no dead letter: {letters}"));
    assert_eq!(letters["dead_letters"][0]["job"], "b");
    let (status, letter) = api.get(&format!("/api/v1/dlq/{first}"), Some(BOB));
    assert_eq!(status, 200, "{letter}");
    assert_eq!(letter, stack.sluice_json(&["dlq", "show", &first.to_string()], 0));
    for (path, expected) in [
        ("/api/v1/dlq/seven", "id: `seven` is not a dead letter id"),
        ("/api/v1/dlq?colour=red", "unknown parameter `colour`"),
        ("/api/v1/dlq?pool=a.b", "pool: pool name `a.b` may only use"),
    ] {
        let (status, kind, message) = error_of(&api.get(path, Some(BOB)));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }
    assert_eq!(error_of(&api.get("/api/v1/dlq/999999", Some(BOB))).0, 404);
    let replay = format!("/api/v1/dlq/{first}/replay");
    assert_eq!(error_of(&api.call("POST", &replay, Some(BOB), "")).0, 403, "a viewer cannot replay");
    let (status, replayed) = api.call("POST", &replay, Some(ALICE), "");
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed["outcome"]["action"], "replay");
    assert_eq!(error_of(&api.call("POST", &replay, Some(ALICE), "")).0, 404, "replayed: it is gone");

    // The audit grid: `sluice audit -o json`.
    let day = (chrono::Utc::now().date_naive() - chrono::Duration::days(1)).to_string();
    let (status, grid) = api.get(&format!("/api/v1/workflows/flaky/audit?from={day}&to={day}"), Some(BOB));
    assert_eq!(status, 200, "{grid}");
    assert_eq!(grid, stack.sluice_json(&["audit", "flaky", "--from", &day, "--to", &day], 0));
    assert_eq!(grid["windows"][0]["run_id"], id.as_str(), "{grid}");
    for (path, expected) in [
        ("/api/v1/workflows/flaky/audit?from=2024-02-30", "from: 2024-02-30 does not exist: February 2024 has 29 days"),
        ("/api/v1/workflows/flaky/audit?to=yesterday", "to `yesterday` is not a day such as 2024-03-01"),
        ("/api/v1/workflows/flaky/audit?from=2024-03-02&to=2024-03-01", "from 2024-03-02 is after to 2024-03-01"),
        ("/api/v1/workflows/flaky/audit?missing=maybe", "missing must be true or false, not `maybe`"),
        ("/api/v1/workflows/flaky/audit?colour=red", "unknown parameter `colour`"),
    ] {
        let (status, kind, message) = error_of(&api.get(path, Some(BOB)));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }

    // Schedules: listed as the CLI lists them; paused, resumed and triggered by an operator.
    let nightly = stack.write(
        "nightly.yaml",
        "name: nightly\nschedule: { cron: \"30 2 * * *\", window: yesterday }\njobs:\n  only: { run: noop }\n",
    );
    stack.sluice_json(&["schedule", "apply", nightly.to_str().unwrap()], 0);
    let (status, listed) = api.get("/api/v1/schedules", Some(BOB));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, stack.sluice_json(&["schedule", "list"], 0));
    assert_eq!(error_of(&api.call("POST", "/api/v1/schedules/nightly/pause", Some(BOB), "")).0, 403);
    let (status, paused) = api.call("POST", "/api/v1/schedules/nightly/pause", Some(ALICE), "");
    assert_eq!(status, 200, "{paused}");
    assert_eq!(api.get("/api/v1/schedules", Some(BOB)).1["schedules"][0]["paused"], true);
    assert_eq!(api.call("POST", "/api/v1/schedules/nightly/resume", Some(ALICE), "").0, 200);
    assert_eq!(error_of(&api.call("POST", "/api/v1/schedules/nightly/explode", Some(ALICE), "")).0, 404);
    assert_eq!(error_of(&api.call("POST", "/api/v1/schedules/nobody/pause", Some(ALICE), "")).0, 404);
    let (status, triggered) = api.call("POST", "/api/v1/schedules/nightly/trigger", Some(ALICE), "");
    assert_eq!(status, 200, "{triggered}");
    let run = triggered["outcome"]["run_id"].as_str().unwrap_or_else(|| panic!("no run id: {triggered}")).to_owned();
    assert_eq!(stack.wait_for_run(&run, Duration::from_secs(60))["state"], "succeeded");

    // An hourly schedule's audit columns are its hours, and the run a trigger made is in its.
    let hourly = stack.write(
        "hourly.yaml",
        "name: hourly\nschedule: { cron: \"5 * * * *\", window: previous_hour }\njobs:\n  only: { run: noop }\n",
    );
    stack.sluice_json(&["schedule", "apply", hourly.to_str().unwrap()], 0);
    // Paused, so only the trigger's run is in the grid (a tick at :05 would add one).
    assert_eq!(api.call("POST", "/api/v1/schedules/hourly/pause", Some(ALICE), "").0, 200);
    let (_, triggered) = api.call("POST", "/api/v1/schedules/hourly/trigger", Some(ALICE), "");
    let hour_run = triggered["outcome"]["run_id"].as_str().unwrap_or_else(|| panic!("{triggered}")).to_owned();
    let hour_run_json = stack.wait_for_run(&hour_run, Duration::from_secs(60));
    let day = &hour_run_json["window"]["start"].as_str().unwrap()[..10];
    let (status, grid) = api.get(&format!("/api/v1/workflows/hourly/audit?from={day}&to={day}"), Some(BOB));
    assert_eq!(status, 200, "{grid}");
    let windows = grid["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 24, "a UTC day's hours: {grid}");
    let ran: Vec<&serde_json::Value> = windows.iter().filter(|window| !window["run_id"].is_null()).collect();
    assert_eq!(ran.len(), 1, "{grid}");
    assert_eq!(
        (ran[0]["run_id"].as_str(), ran[0]["start"].clone()),
        (Some(hour_run.as_str()), hour_run_json["window"]["start"].clone())
    );
    assert_eq!(grid, stack.sluice_json(&["audit", "hourly", "--from", day, "--to", day], 0), "the CLI's grid");
    let (_, by_day) = api.get(&format!("/api/v1/workflows/hourly/audit?from={day}&to={day}&interval=1d"), Some(BOB));
    assert_eq!(by_day["windows"].as_array().map(Vec::len), Some(1), "an interval overrides: {by_day}");
    let (status, _, message) =
        error_of(&api.get("/api/v1/workflows/hourly/audit?from=2024-01-01&to=2024-12-31", Some(BOB)));
    assert_eq!(status, 400, "{message}");
    assert!(message.contains("narrow the range"), "{message}");

    // Backfills: created by workflow name, read as the CLI reads them, bad input named.
    let (from, to) = (
        (chrono::Utc::now().date_naive() - chrono::Duration::days(4)).to_string(),
        (chrono::Utc::now().date_naive() - chrono::Duration::days(3)).to_string(),
    );
    let body = format!(r#"{{"workflow": "nightly", "from": "{from}", "to": "{to}", "max_parallel_runs": 1}}"#);
    assert_eq!(error_of(&api.call("POST", "/api/v1/backfills", Some(BOB), &body)).0, 403);
    let (status, created) = api.call("POST", "/api/v1/backfills", Some(ALICE), &body);
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["outcome"]["action"], "backfill_create");
    let (_, listed) = api.get("/api/v1/backfills", Some(BOB));
    let backfill = listed["backfills"][0]["id"].as_str().unwrap_or_else(|| panic!("{listed}")).to_owned();
    wait_until(Duration::from_secs(60), "the backfill to finish", || {
        !api.get(&format!("/api/v1/backfills/{backfill}"), Some(BOB)).1["finished_at"].is_null()
    });
    let (status, status_json) = api.get(&format!("/api/v1/backfills/{backfill}"), Some(BOB));
    assert_eq!(status, 200);
    assert_eq!(status_json, stack.sluice_json(&["backfill", "status", &backfill], 0));
    assert_eq!(status_json["counts"]["succeeded"], 2, "{status_json}");
    assert_eq!(api.get("/api/v1/backfills", Some(BOB)).1, stack.sluice_json(&["backfill", "list"], 0));
    for (body, expected) in [
        (
            format!(r#"{{"workflow": "ghost", "from": "{from}", "to": "{to}"}}"#),
            "workflow: `ghost` is not applied here",
        ),
        (
            format!(r#"{{"workflow": "nightly", "from": "{from}", "to": "{to}", "max_parallel_runs": 0}}"#),
            "max_parallel_runs must be 1 to 64, not 0",
        ),
        (format!(r#"{{"workflow": "nightly", "from": "{to}", "to": "nope"}}"#), "to `nope` is not a day"),
        (
            format!(r#"{{"workflow": "nightly", "from": "{from}", "to": "{to}", "rerun": "some"}}"#),
            "unknown variant `some`",
        ),
    ] {
        let (status, kind, message) = error_of(&api.call("POST", "/api/v1/backfills", Some(ALICE), &body));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{body}: {message}");
        assert!(message.contains(expected), "{body}: {message}");
    }
    let unknown = sluice_proto::RunId::new();
    assert_eq!(error_of(&api.call("POST", &format!("/api/v1/backfills/{unknown}/cancel"), Some(ALICE), "")).0, 404);

    // Mark: a failed job ended by hand; bad bodies name what is wrong.
    let failed = submit_and_wait(&stack, &file, 1)["id"].as_str().unwrap().to_owned();
    let mark = format!("/api/v1/runs/{failed}/jobs/b/mark");
    for (body, expected) in [
        (r#"{"as": "maybe"}"#, "unknown variant `maybe`, expected `succeeded` or `skipped`"),
        (r#"{"as": "skipped", "output": 1}"#, "output: only a job marked succeeded has an output"),
        ("", "body: EOF while parsing"),
    ] {
        let (status, kind, message) = error_of(&api.call("POST", &mark, Some(ALICE), body));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{body}: {message}");
        assert!(message.contains(expected), "{body}: {message}");
    }
    assert_eq!(error_of(&api.call("POST", &mark, Some(BOB), r#"{"as": "skipped"}"#)).0, 403);
    let (status, marked) = api.call("POST", &mark, Some(ALICE), r#"{"as": "succeeded", "output": {"rows": 3}}"#);
    assert_eq!(status, 200, "{marked}");
    assert_eq!(marked["outcome"]["action"], "mark");
    let ended = stack.wait_for_run(&failed, Duration::from_secs(60));
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let (status, kind, _) = error_of(&api.call(
        "POST",
        &format!("/api/v1/runs/{failed}/jobs/ghost/mark"),
        Some(ALICE),
        r#"{"as": "skipped"}"#,
    ));
    assert_eq!((status, kind.as_str()), (404, "not_found"), "an unknown job");

    // The audit of actions: every request answered, newest first, who asked and the answer,
    // paged without overlap.
    let (status, page) = api.get("/api/v1/requests", Some(BOB));
    assert_eq!(status, 200, "{page}");
    let requests = page["requests"].as_array().unwrap();
    assert_eq!(requests[0]["action"], "mark", "the newest first: {page}");
    assert_eq!(requests[0]["outcome"], "refused", "the ghost job's mark: {page}");
    assert!(requests.iter().any(|r| r["action"] == "cancel" && r["kind"] == "conflict"), "{page}");
    // Through the server, as its NATS identity on behalf of alice; the CLI's, as its own.
    for request in requests {
        let by = request["requested_by"].as_str().unwrap();
        let through_cli = request["action"] == "schedule_apply";
        assert_eq!(by.ends_with("/alice"), !through_cli, "{request}");
    }
    let ids: Vec<&str> = requests.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    let (_, newest) = api.get("/api/v1/requests?limit=2", Some(BOB));
    assert_eq!(newest["requests"].as_array().unwrap().len(), 2, "{newest}");
    let earlier = newest["earlier"].as_u64().unwrap_or_else(|| panic!("older ones: {newest}"));
    let (_, older) = api.get(&format!("/api/v1/requests?limit=2&before={earlier}"), Some(BOB));
    let paged: Vec<&str> = newest["requests"]
        .as_array()
        .unwrap()
        .iter()
        .chain(older["requests"].as_array().unwrap())
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(paged, ids[..paged.len()], "two pages of two are the first four");
    for (path, expected) in [
        ("/api/v1/requests?limit=0", "limit must be 1 to 200"),
        ("/api/v1/requests?before=x", "before must be a whole number"),
        ("/api/v1/requests?who=alice", "unknown parameter `who`"),
    ] {
        let (status, kind, message) = error_of(&api.get(path, Some(BOB)));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }

    // A bulk action by filter: counted first (dry_run), then one request for that count.
    let brittle =
        stack.write("brittle.yaml", "name: brittle\njobs:\n  only: { run: fail, retry: { max_attempts: 1 } }\n");
    let mut brittle_ids: Vec<String> =
        (0..2).map(|_| submit_and_wait(&stack, &brittle, 1)["id"].as_str().unwrap().to_owned()).collect();
    let bulk = |ask: serde_json::Value, token| api.call("POST", "/api/v1/runs/bulk", Some(token), &ask.to_string());
    let (status, preview) =
        bulk(serde_json::json!({"action": "retry", "workflow": "brittle", "state": "failed", "dry_run": true}), ALICE);
    assert_eq!((status, preview["count"].as_u64()), (200, Some(2)), "{preview}");
    let mut previewed: Vec<String> =
        preview["runs"].as_array().unwrap().iter().map(|run| run["id"].as_str().unwrap().to_owned()).collect();
    previewed.sort();
    brittle_ids.sort();
    assert_eq!(previewed, brittle_ids);
    for (ask, code, expected) in [
        (
            serde_json::json!({"action": "retry", "workflow": "brittle", "state": "failed", "expect": 3}),
            409,
            "not the 3 confirmed",
        ),
        (serde_json::json!({"action": "retry", "state": "failed"}), 400, "workflow:"),
        (serde_json::json!({"action": "explode", "workflow": "brittle"}), 400, "action:"),
        (serde_json::json!({"action": "retry", "workflow": "brittle", "state": "pending"}), 400, "state:"),
        (serde_json::json!({"action": "retry", "workflow": "ghost"}), 400, "no run matches"),
        (serde_json::json!({"action": "retry", "workflow": "brittle", "window_from": "2024-03-01"}), 400, "window_to"),
        (serde_json::json!({"action": "retry", "workflow": "brittle", "limit": 3}), 400, "unknown field `limit`"),
    ] {
        let (status, _, message) = error_of(&bulk(ask.clone(), ALICE));
        assert_eq!(status, code, "{ask}: {message}");
        assert!(message.contains(expected), "{ask}: {message}");
    }
    let retry_all = serde_json::json!({"action": "retry", "workflow": "brittle", "state": "failed", "expect": 2});
    let (status, kind, _) = error_of(&bulk(retry_all.clone(), BOB));
    assert_eq!((status, kind.as_str()), (403, "forbidden"));
    let (status, retried) = bulk(retry_all, ALICE);
    assert_eq!(status, 200, "{retried}");
    let outcome = &retried["outcome"];
    assert_eq!(
        (outcome["action"].as_str(), outcome["changed_total"].as_u64()),
        (Some("bulk_retry"), Some(2)),
        "{outcome}"
    );
    assert!(outcome["requested_by"].as_str().is_some_and(|by| by.ends_with("alice")), "{outcome}");
    for id in &brittle_ids {
        wait_until(Duration::from_secs(30), "a bulk-retried run to fail again", || {
            let (_, run) = api.get(&format!("/api/v1/runs/{id}"), Some(BOB));
            run["state"] == "failed" && run["jobs"][0]["attempts"] == 2
        });
    }
}

#[test]
fn without_tokens_only_a_loopback_address_is_served() {
    let stack = Stack::start();
    let output = stack.sluice(&["server", "--listen", "0.0.0.0:0"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen 0.0.0.0:0 is not a loopback address: without --tokens FILE"), "{stderr}");
    let bad = stack.write("tokens", "carol admin 00\n");
    let output = stack.sluice(&["server", "--tokens", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 1: role `admin` is not `viewer` or `operator`"), "{stderr}");
}

/// The lines of an API log page, as (stream, text).
fn page_lines(page: &serde_json::Value) -> Vec<(String, String)> {
    page["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines: {page}"))
        .iter()
        .map(|line| (line["stream"].as_str().unwrap().to_owned(), line["text"].as_str().unwrap().to_owned()))
        .collect()
}

/// The `data` of each server-sent event named `name`, as JSON.
fn events(body: &str, name: &str) -> Vec<serde_json::Value> {
    body.split("\n\n")
        .filter(|event| event.lines().any(|line| line == format!("event: {name}")))
        .map(|event| {
            let data: String = event.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
            serde_json::from_str(&data).unwrap_or_else(|_| panic!("event {name}: {data:?}"))
        })
        .collect()
}

#[test]
fn logs_are_read_a_page_at_a_time_per_attempt_followed_and_downloaded() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    wait_until_set_up(&stack);
    let api = Api { address: start_server(&mut stack, ("alice", ALICE), ("bob", BOB), &[]) };
    let flag = stack.write("flag", "");
    std::fs::remove_file(&flag).unwrap();
    let go = flag.with_file_name("go");
    // Attempt 1 says one thing and fails; attempt 2 prints 1,200 lines (several batches of
    // at most 500), one to stderr, then waits for `go` before its last line.
    let script = format!(
        "if [ ! -e {flag} ]; then touch {flag}; echo attempt-one; exit 1; fi; \
         i=1; while [ $i -le 1200 ]; do echo \"line $i\"; i=$((i+1)); done; echo oops >&2; \
         while [ ! -e {go} ]; do sleep 0.05; done; echo last",
        flag = flag.display(),
        go = go.display()
    );
    let file = stack.write(
        "chatty.yaml",
        &format!(
            "name: chatty\njobs:\n  talk:\n    run: exec\n    retry: {{ max_attempts: 2, initial: 100ms, jitter: false }}\n    command: [sh, -c, {}]\n",
            serde_json::to_string(&script).unwrap()
        ),
    );
    let id = stack.sluice_json(&["submit", file.to_str().unwrap()], 0)["id"].as_str().unwrap().to_owned();
    let logs = format!("/api/v1/runs/{id}/jobs/talk/logs");
    // Everything stored so far, as the download has it (stdout and stderr are batched
    // apart, so `oops` may be stored in a batch before or after the last stdout lines).
    let bearer = format!("Bearer {BOB}");
    let stored = || {
        let path = format!("{logs}?attempt=2&format=text");
        request(&api.address, "GET", &path, &[("Authorization", &bearer)], b"")
            .map(|(_, text)| text)
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(30), "attempt 2 to log its 1,200th line and oops", || {
        let text = stored();
        text.contains(" stdout line 1200\n") && text.contains(" stderr oops\n")
    });

    // The newest page of the latest attempt, then earlier pages back to its start: every
    // line once, in order, and never a whole log in one page.
    let (_, newest) = api.get(&logs, Some(BOB));
    assert_eq!(newest["over"], false, "{newest}");
    let mut pages = vec![newest.clone()];
    while let Some(earlier) = pages.last().unwrap()["earlier"].as_u64() {
        let (status, page) = api.get(&format!("{logs}?attempt=2&before={earlier}"), Some(BOB));
        assert_eq!(status, 200, "{page}");
        pages.push(page);
        assert!(pages.len() < 10, "the pages never reach the start");
    }
    assert!(pages.len() >= 2, "1,200 lines are more than one page");
    for page in &pages {
        assert!(page_lines(page).len() < 1000, "a page shows at most 999 lines");
    }
    let all: Vec<(String, String)> = pages.iter().rev().flat_map(page_lines).collect();
    let stdout: Vec<&str> =
        all.iter().filter(|(stream, _)| stream == "stdout").map(|(_, text)| text.as_str()).collect();
    let expected: Vec<String> = (1..=1200).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout, expected.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(all.contains(&("stderr".to_owned(), "oops".to_owned())), "stderr is kept as stderr");
    // Forward from the start: the first lines.
    let (_, first) = api.get(&format!("{logs}?attempt=2&after=0"), Some(BOB));
    assert_eq!(page_lines(&first)[0].1, "line 1", "{first}");
    // Attempt 1 has its own lines.
    let (_, one) = api.get(&format!("{logs}?attempt=1"), Some(BOB));
    assert_eq!(page_lines(&one), vec![("stdout".to_owned(), "attempt-one".to_owned())]);
    assert_eq!((one["over"].as_bool(), one["earlier"].is_null()), (Some(true), true), "{one}");

    // A follow from the newest page's end: what the attempt logs after it, then `end` once
    // the attempt is over and every line was sent.
    let address = api.address.clone();
    let after = newest["last"].as_u64().unwrap();
    let follow_path = format!("{logs}?follow=true&after={after}");
    let follower = std::thread::spawn(move || {
        request(&address, "GET", &follow_path, &[("Authorization", &format!("Bearer {BOB}"))], b"").unwrap()
    });
    std::fs::write(&go, "").unwrap();
    let (status, body) = follower.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let followed: Vec<String> =
        events(&body, "lines").iter().flat_map(|event| page_lines(event).into_iter().map(|(_, text)| text)).collect();
    assert_eq!(followed, vec!["last".to_owned()], "{body}");
    assert_eq!(events(&body, "end").len(), 1, "{body}");
    assert_eq!(stack.wait_for_run(&id, Duration::from_secs(30))["state"], "succeeded");
    // The download: the whole attempt, a line each, `TIME STREAM TEXT`.
    let (status, text) = request(
        &api.address,
        "GET",
        &format!("{logs}?format=text"),
        &[("Authorization", &format!("Bearer {BOB}"))],
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let downloaded: Vec<&str> = text.lines().collect();
    assert_eq!(downloaded.len(), 1202, "1,200 lines, oops and last");
    assert!(downloaded[0].ends_with(" stdout line 1"), "{}", downloaded[0]);
    assert!(downloaded.iter().any(|line| line.ends_with(" stderr oops")), "{text}");
    assert!(downloaded[1201].ends_with(" stdout last"), "{}", downloaded[1201]);

    // Bad input names the parameter; an attempt or job that is not there is 404.
    for (query, expected) in [
        ("?attempt=0", "attempt must be 1 or more"),
        ("?before=soon", "before must be a whole number"),
        ("?follow=maybe", "follow must be true or false"),
        ("?lines=5", "unknown parameter `lines`"),
        ("?before=5&after=3", "before reads back from a point"),
    ] {
        let (status, kind, message) = error_of(&api.get(&format!("{logs}{query}"), Some(BOB)));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{query}: {message}");
        assert!(message.contains(expected), "{query}: {message}");
    }
    let (status, _, message) = error_of(&api.get(&format!("{logs}?attempt=3"), Some(BOB)));
    assert_eq!(status, 404);
    assert!(message.contains("has no attempt 3 (its attempts are 1 to 2)"), "{message}");
    let (status, _, message) = error_of(&api.get(&format!("/api/v1/runs/{id}/jobs/nope/logs"), Some(BOB)));
    assert_eq!(status, 404);
    assert!(message.contains("has no job `nope`"), "{message}");
    assert_eq!(error_of(&api.get(&logs, None)).1, "unauthorized");
}

#[test]
fn the_openapi_document_is_valid_openapi_3_1() {
    let validator = workspace_root().join(".tools/venv/bin/openapi-spec-validator");
    let document = workspace_root().join("server/openapi.json");
    let check = |path: &std::path::Path| {
        let output = std::process::Command::new(&validator)
            .arg(path)
            .output()
            .unwrap_or_else(|error| panic!("{}: {error} (scripts/install-tools.sh installs it)", validator.display()));
        (output.status.success(), format!("{}{}", text(&output.stdout), text(&output.stderr)))
    };
    let (valid, output) = check(&document);
    assert!(valid, "{output}");
    // The validator is no rubber stamp: a parameter in a place OpenAPI 3.1 has not is refused.
    let mut broken: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&document).unwrap()).unwrap();
    broken["paths"]["/api/v1/runs"]["get"]["parameters"][0]["in"] = serde_json::json!("body");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, broken.to_string()).unwrap();
    let (valid, output) = check(&path);
    assert!(!valid, "{output}");
}

#[test]
fn runs_are_started_by_a_known_workflows_name_or_by_yaml_as_submit_starts_them() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    wait_until_set_up(&stack);
    let api = Api { address: start_server(&mut stack, ("alice", ALICE), ("bob", BOB), &[]) };
    let yaml =
        "name: regional\ntimezone: Europe/Berlin\njobs:\n  say: { run: exec, command: [echo, '{{params.region}}'] }\n";
    let body = |value: serde_json::Value| value.to_string();

    // By YAML, for a day in the workflow's zone, with a parameter.
    let (status, started) = api.call(
        "POST",
        "/api/v1/runs",
        Some(ALICE),
        &body(serde_json::json!({"spec": yaml, "window": "2024-03-01", "params": {"region": "eu"}})),
    );
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["workflow"], "regional");
    assert_eq!(started["window"]["start"], "2024-03-01T00:00:00+01:00", "midnight in Berlin");
    assert_eq!(started["duplicate"], false);
    let first = started["id"].as_str().unwrap().to_owned();
    let run = stack.wait_for_run(&first, Duration::from_secs(30));
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["params"]["region"], "eu");

    // By name: it runs as the newest run's YAML; an idempotency key answers once.
    let ask =
        body(serde_json::json!({"workflow": "regional", "params": {"region": "us"}, "idempotency_key": "us-once"}));
    let (status, by_name) = api.call("POST", "/api/v1/runs", Some(ALICE), &ask);
    assert_eq!(status, 201, "{by_name}");
    let second = by_name["id"].as_str().unwrap().to_owned();
    assert_eq!(stack.wait_for_run(&second, Duration::from_secs(30))["params"]["region"], "us");
    let (status, again) = api.call("POST", "/api/v1/runs", Some(ALICE), &ask);
    assert_eq!((status, again["duplicate"].as_bool()), (200, Some(true)), "{again}");
    assert_eq!(again["id"], second.as_str());

    // The runs of a window range, by window: two more days, then the first two days only.
    for day in ["2024-03-03", "2024-03-02"] {
        let ask = serde_json::json!({"spec": yaml, "window": day, "params": {"region": "eu"}});
        let (status, started) = api.call("POST", "/api/v1/runs", Some(ALICE), &body(ask));
        assert_eq!(status, 201, "{started}");
        stack.wait_for_run(started["id"].as_str().unwrap(), Duration::from_secs(30));
    }
    let range = "/api/v1/runs?workflow=regional&window_from=2024-03-01&window_to=2024-03-02";
    let (status, page) = api.get(&format!("{range}&sort=window"), Some(BOB));
    assert_eq!(status, 200, "{page}");
    let starts: Vec<&str> =
        page["runs"].as_array().unwrap().iter().map(|run| run["window"]["start"].as_str().unwrap()).collect();
    assert_eq!(starts, ["2024-03-02T00:00:00+01:00", "2024-03-01T00:00:00+01:00"], "{page}");
    let cli = ["runs", "--workflow", "regional", "--window-from", "2024-03-01", "--window-to", "2024-03-02"];
    assert_eq!(page, stack.sluice_json(&[&cli[..], &["--sort", "window"]].concat(), 0), "the CLI's list");
    let (_, one) = api.get(&format!("{range}&sort=window&limit=1"), Some(BOB));
    let cursor = one["next"].as_str().unwrap_or_else(|| panic!("a second page: {one}")).to_owned();
    let (_, two) = api.get(&format!("{range}&sort=window&limit=1&cursor={cursor}"), Some(BOB));
    assert_eq!(
        (one["runs"][0]["id"].clone(), two["runs"][0]["id"].clone()),
        (page["runs"][0]["id"].clone(), page["runs"][1]["id"].clone())
    );
    assert!(two["next"].is_null(), "{two}");
    for (path, expected) in [
        ("/api/v1/runs?workflow=regional&window_from=2024-03-01", "window_from and window_to go together"),
        ("/api/v1/runs?window_from=2024-03-01&window_to=2024-03-02", "give workflow"),
        ("/api/v1/runs?workflow=regional&window_from=2024-03-02&window_to=2024-03-01", "is after window_to"),
        ("/api/v1/runs?workflow=regional&window_from=March&window_to=2024-03-01", "window_from must be a day"),
        ("/api/v1/runs?workflow=regional&sort=window", "sort=window orders a window range"),
        ("/api/v1/runs?sort=oldest", "sort must be newest or window"),
    ] {
        let (status, kind, message) = error_of(&api.get(path, Some(BOB)));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }

    // What is wrong is named; a workflow nobody ran is 404; a viewer may not start runs.
    for (ask, expected) in [
        (serde_json::json!({}), "give `workflow`"),
        (serde_json::json!({"workflow": "regional", "spec": yaml}), "give `workflow`"),
        (serde_json::json!({"spec": yaml}), "params:"),
        (serde_json::json!({"spec": "name: x\njobs: {}\n"}), "spec:"),
        (serde_json::json!({"workflow": "regional", "params": {"region": "eu"}, "window": "someday"}), "window:"),
        (serde_json::json!({"workflow": "bad name"}), "workflow:"),
        (serde_json::json!({"workflow": "regional", "when": "now"}), "unknown field `when`"),
        (
            serde_json::json!({"workflow": "regional", "params": {"region": "eu"}, "idempotency_key": ""}),
            "idempotency_key",
        ),
    ] {
        let (status, kind, message) = error_of(&api.call("POST", "/api/v1/runs", Some(ALICE), &body(ask.clone())));
        assert_eq!((status, kind.as_str()), (400, "invalid"), "{ask}: {message}");
        assert!(message.contains(expected), "{ask}: {message}");
    }
    let (status, _, message) =
        error_of(&api.call("POST", "/api/v1/runs", Some(ALICE), &body(serde_json::json!({"workflow": "never-ran"}))));
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("`never-ran` is not applied here"), "{message}");
    let (status, kind, _) = error_of(&api.call("POST", "/api/v1/runs", Some(BOB), &ask));
    assert_eq!((status, kind.as_str()), (403, "forbidden"));

    // A workflow applied here is started by name, as applied: in the CLI's shapes.
    let applied_yaml =
        "name: stored\nparams: { who: nobody }\njobs:\n  hi: { run: exec, command: [echo, 'hi {{params.who}}'] }\n";
    let (status, applied) =
        api.call("POST", "/api/v1/workflows", Some(ALICE), &body(serde_json::json!({"yaml": applied_yaml})));
    assert_eq!(status, 200, "{applied}");
    assert_eq!(applied["outcome"]["reason"], "workflow stored created", "{applied}");
    let (status, listed) = api.get("/api/v1/workflows", Some(BOB));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, stack.sluice_json(&["workflow", "list"], 0), "the CLI's list");
    let names: Vec<&str> =
        listed["workflows"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["stored"], "{listed}");
    let (status, one) = api.get("/api/v1/workflows/stored", Some(BOB));
    assert_eq!((status, one["yaml"].as_str()), (200, Some(applied_yaml)), "{one}");
    assert_eq!((one["jobs"].clone(), one["params"].clone()), (serde_json::json!(1), serde_json::json!(["who"])));
    assert_eq!(one["applied_by"].as_str().map(|by| by.ends_with("alice")), Some(true), "{one}");
    let (status, started) =
        api.call("POST", "/api/v1/runs", Some(ALICE), &body(serde_json::json!({"workflow": "stored"})));
    assert_eq!(status, 201, "{started}");
    let run = stack.wait_for_run(started["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!((run["state"].as_str(), run["params"]["who"].as_str()), (Some("succeeded"), Some("nobody")), "{run:#}");
    for (method, path, ask, code, expected) in [
        ("POST", "/api/v1/workflows", serde_json::json!({"yaml": "name: x\njobs: {}\n"}), 400, "yaml:"),
        ("POST", "/api/v1/workflows", serde_json::json!({"spec": applied_yaml}), 400, "unknown field `spec`"),
        (
            "POST",
            "/api/v1/workflows",
            serde_json::json!({"yaml": "name: elsewhere\njobs:\n  a: { run: noop, pool: nowhere }\n"}),
            400,
            "nowhere",
        ),
        ("GET", "/api/v1/workflows/ghost", serde_json::json!(null), 404, "workflows: stored"),
        ("GET", "/api/v1/workflows/a.b", serde_json::json!(null), 400, "name:"),
        ("DELETE", "/api/v1/workflows/ghost", serde_json::json!(null), 404, "no workflow `ghost`"),
    ] {
        let ask = if ask.is_null() { String::new() } else { body(ask) };
        let (status, _, message) = error_of(&api.call(method, path, Some(ALICE), &ask));
        assert_eq!(status, code, "{method} {path}: {message}");
        assert!(message.contains(expected), "{method} {path}: {message}");
    }
    let (status, kind, _) = error_of(&api.call("DELETE", "/api/v1/workflows/stored", Some(BOB), ""));
    assert_eq!((status, kind.as_str()), (403, "forbidden"));
    let (status, deleted) = api.call("DELETE", "/api/v1/workflows/stored", Some(ALICE), "");
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(api.get("/api/v1/workflows", Some(BOB)).1["workflows"], serde_json::json!([]));
    // Its run stays, and so it is still known by its newest run's YAML.
    let (status, again) =
        api.call("POST", "/api/v1/runs", Some(ALICE), &body(serde_json::json!({"workflow": "stored"})));
    assert_eq!(status, 201, "{again}");

    let bearer = format!("Bearer {ALICE}");
    let (status, text) = request(
        &api.address,
        "POST",
        "/api/v1/runs",
        &[("Authorization", &bearer), ("traceparent", "nonsense")],
        ask.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("traceparent"), "{text}");
}
