//! Upgrades: a store written by schema 1 (checked in, `fixtures/README.md` says what it
//! holds) is opened by the current coordinator and worker, and every run in it finishes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_schema_1_store_is_restored_and_its_runs_finish() {
    let fixtures = workspace_root().join("cli/tests/fixtures");
    let unpacked = tempfile::Builder::new().prefix("sluice-schema1-").tempdir().expect("temp dir");
    let status = Command::new("tar")
        .arg("xzf")
        .arg(fixtures.join("schema1-store.tar.gz"))
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("tar runs");
    assert!(status.success(), "the fixture unpacks");
    let runs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("schema1-store.json")).unwrap()).unwrap();
    let run = |name: &str| runs[name].as_str().unwrap().to_owned();

    let mut stack = Stack::start_with_store(unpacked.path().join("store"));
    stack.coordinator();
    stack.worker(&[]);

    // `b` finished while no coordinator ran: its stored event moves the run on to `c`.
    let in_flight = stack.wait_for_run(&run("in_flight_run"), Duration::from_secs(60));
    assert_eq!(in_flight["state"], "succeeded", "{in_flight:#}");
    let states: Vec<&str> =
        in_flight["jobs"].as_array().unwrap().iter().map(|job| job["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["completed"; 3]);
    let b = &in_flight["jobs"][1];
    assert_eq!(b["attempts"], 1, "the old attempt is not run again: {b:#}");

    // The old runs are indexed once, at the first start: `runs` lists them.
    let listed = stack.sluice_json(&["runs", "--workflow", "upgrade-in-flight"], 0);
    assert_eq!(listed["runs"][0]["id"], run("in_flight_run").as_str(), "{listed:#}");

    // A submission that waited in the stream becomes a run.
    let pending = stack.wait_for_run(&run("pending_run"), Duration::from_secs(60));
    assert_eq!(pending["state"], "succeeded", "{pending:#}");

    // Log lines stored by the old worker are still shown.
    let logs = stack.sluice(&["logs", &run("in_flight_run"), "b"]);
    assert!(output_text(&logs).contains("finished b"), "{}", output_text(&logs));

    // The old dead letter is listed with its pool, and replays to success.
    let letters = stack.sluice_json(&["dlq", "list"], 0);
    let letter = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|letter| letter["run_id"] == run("dead_letter_run").as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the schema-1 dead letter is listed: {letters:#}"));
    assert_eq!(letter["pool"], "default");
    stack.sluice_json(&["dlq", "replay", &letter["id"].to_string()], 0);
    let replayed = stack.wait_for_run(&run("dead_letter_run"), Duration::from_secs(60));
    assert_eq!(replayed["state"], "succeeded", "{replayed:#}");
}

fn output_text(output: &std::process::Output) -> String {
    format!("{}{}", text(&output.stdout), text(&output.stderr))
}
