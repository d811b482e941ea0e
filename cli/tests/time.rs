//! Schedules, backfills and the audit, through real coordinators, workers and a real
//! nats-server. Where waiting for real ticks would be slow, the tests move the schedule's
//! own clock instead: they set how far its ticks were handled, as after an outage.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use sluice_proto::{ScheduleRecord, decode, encode, names};

/// Runs of `workflow`, oldest first, as `runs -o json` lists them.
fn runs(stack: &Stack, workflow: &str) -> Vec<serde_json::Value> {
    let mut runs =
        stack.sluice_json(&["runs", "--workflow", workflow, "--limit", "1000"], 0)["runs"].as_array().unwrap().clone();
    runs.reverse();
    runs
}

fn window_start(run: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(run["window"]["start"].as_str().unwrap()).unwrap().to_utc()
}

/// Rewrites a schedule's record as if its ticks were handled only up to `until`.
fn set_handled_until(stack: &Stack, name: &str, until: DateTime<Utc>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(stack.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let kv = js.get_key_value(names::SCHEDULES_BUCKET).await.unwrap();
        let entry = kv.entry(name).await.unwrap().unwrap();
        let mut record: ScheduleRecord = decode(&entry.value).unwrap();
        record.handled_until = until;
        kv.update(name, encode(&record).unwrap().into(), entry.revision).await.unwrap();
    });
}

/// A schedule every two seconds fires once per tick while two coordinators run and the
/// leader is killed: the windows of its runs are consecutive, none twice, none missing.
#[test]
fn a_schedule_fires_exactly_once_per_tick_across_a_leader_kill() {
    let mut stack = Stack::start();
    let coordinators = [stack.coordinator(), stack.coordinator()];
    stack.worker(&["--concurrency", "8"]);
    let file = stack.write(
        "ticker.yaml",
        "name: ticker\nschedule: { cron: \"*/2 * * * * *\", window: last 2s, catchup: none }\njobs:\n  a: { run: noop }\n",
    );
    let applied = stack.sluice_json(&["schedule", "apply", file.to_str().unwrap()], 0);
    assert_eq!(applied["catchup"], "none");
    wait_until(Duration::from_secs(30), "three scheduled runs", || runs(&stack, "ticker").len() >= 3);
    // Kill the leader: the other takes over and fires the ticks it missed, each once.
    let leader = leader_pid(&stack).expect("a coordinator leads");
    let leading = coordinators.into_iter().find(|process| stack.pid(*process) == leader).expect("the leader is ours");
    stack.kill(leading);
    let before = runs(&stack, "ticker").len();
    wait_until(Duration::from_secs(40), "runs after the failover", || runs(&stack, "ticker").len() >= before + 5);
    stack.sluice_json(&["schedule", "pause", "ticker"], 0);
    let listed = stack.sluice_json(&["schedule", "list"], 0);
    assert_eq!(listed["schedules"][0]["paused"], true);
    assert!(listed["schedules"][0]["next_tick"].is_null());
    let all = runs(&stack, "ticker");
    let starts: Vec<DateTime<Utc>> = all.iter().map(window_start).collect();
    let distinct: BTreeSet<DateTime<Utc>> = starts.iter().copied().collect();
    assert_eq!(distinct.len(), starts.len(), "a tick ran twice: {starts:?}");
    let sorted: Vec<DateTime<Utc>> = distinct.into_iter().collect();
    for pair in sorted.windows(2) {
        assert_eq!((pair[1] - pair[0]).num_seconds(), 2, "a tick is missing between {} and {}", pair[0], pair[1]);
    }
}

/// After an outage longer than the on-time grace, `catchup` decides what runs: `none`
/// nothing, `latest` the last missed tick, `all` every one (bounded). Ticks are hourly, at a
/// minute half an hour from now (so none is ever on time); the outage is simulated by moving
/// the schedule's handled-until mark five hours back.
#[test]
fn catchup_policies_decide_what_an_outage_missed() {
    use chrono::Timelike;
    let mut stack = Stack::start();
    stack.worker(&[]);
    // Schedules are applied through a coordinator, which then goes away: the outage.
    let first = stack.coordinator();
    let now = Utc::now();
    let minute = (now.minute() + 30) % 60;
    for catchup in ["none", "latest", "all"] {
        let file = stack.write(
            &format!("{catchup}.yaml"),
            &format!(
                "name: hourly-{catchup}\nschedule: {{ cron: \"{minute} * * * *\", window: previous_hour, catchup: {catchup} }}\njobs:\n  a: {{ run: noop }}\n"
            ),
        );
        stack.sluice_json(&["schedule", "apply", file.to_str().unwrap()], 0);
    }
    stack.kill(first);
    for catchup in ["none", "latest", "all"] {
        set_handled_until(&stack, &format!("hourly-{catchup}"), now - chrono::Duration::hours(5));
    }
    stack.coordinator();
    // The most recent missed tick, and the hour before its hour (its window).
    let mut tick = now.with_minute(minute).unwrap().with_second(0).unwrap().with_nanosecond(0).unwrap();
    if tick > now {
        tick -= chrono::Duration::hours(1);
    }
    let latest_window_start = tick.with_minute(0).unwrap() - chrono::Duration::hours(1);
    for (catchup, count) in [("none", 0usize), ("latest", 1), ("all", 5)] {
        let name = format!("hourly-{catchup}");
        wait_until(Duration::from_secs(30), "the schedule to be handled", || {
            let listed = stack.sluice_json(&["schedule", "list"], 0);
            let record = listed["schedules"].as_array().unwrap().iter().find(|s| s["name"] == name.as_str()).cloned();
            record.is_some_and(|record| record["skipped_ticks"].as_u64() == Some(5 - count as u64))
        });
        wait_until(Duration::from_secs(30), "the catch-up runs to finish", || {
            let all = runs(&stack, &name);
            all.len() == count && all.iter().all(|run| run["state"] == "succeeded")
        });
        if let Some(newest) = runs(&stack, &name).iter().max_by_key(|run| window_start(run)) {
            assert_eq!(window_start(newest), latest_window_start, "{newest:#}");
        }
    }
}

/// A backfill runs each window once, at most N at a time, goes on after the CLI's Ctrl-C and
/// a coordinator kill, and the audit shows which windows ran; a second backfill for the
/// missing windows runs only those.
#[test]
fn a_backfill_survives_ctrl_c_and_a_coordinator_kill_and_the_audit_shows_the_grid() {
    let mut stack = Stack::start();
    let coordinator = stack.coordinator();
    stack.worker(&["--concurrency", "8"]);
    let log = stack.job_log();
    let script = format!(
        "echo \"start $SLUICE_WINDOW_START $(date +%s%N)\" >> {log}; sleep 0.4; echo \"end $SLUICE_WINDOW_START $(date +%s%N)\" >> {log}",
        log = log.display()
    );
    let file = stack.write(
        "daily.yaml",
        &format!(
            "name: daily\ntimezone: Europe/Berlin\njobs:\n  load:\n    run: exec\n    command: [sh, -c, {}]\n  check:\n    needs: [load]\n    run: noop\n",
            serde_json::to_string(&script).unwrap()
        ),
    );
    let mut cli = Command::new(SLUICE)
        .args([
            "backfill",
            file.to_str().unwrap(),
            "--from",
            "2024-03-01",
            "--to",
            "2024-03-08",
            "--max-parallel-runs",
            "2",
        ])
        .env("SLUICE_NATS_URL", stack.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the first window to start", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("start"))
    });
    Command::new("kill").args(["-INT", &cli.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "backfill did not return on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = cli.wait_with_output().unwrap();
    let printed = text(&output.stdout);
    assert!(output.status.success(), "{printed}{}", text(&output.stderr));
    let id = printed.split_whitespace().nth(1).unwrap().trim_end_matches(':').to_owned();
    assert!(printed.contains("the backfill goes on"), "{printed}");

    stack.kill(coordinator);
    stack.coordinator();
    wait_until(Duration::from_secs(90), "the backfill to finish", || {
        let status = stack.sluice(&["backfill", "status", &id, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&status.stdout).is_ok_and(|status| !status["finished_at"].is_null())
    });
    let status = stack.sluice_json(&["backfill", "status", &id], 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    assert_eq!(status["counts"]["succeeded"], 8);
    let all = runs(&stack, "daily");
    assert_eq!(all.len(), 8, "one run per window, none twice");
    let starts: BTreeSet<String> = all.iter().map(|run| run["window"]["start"].as_str().unwrap().to_owned()).collect();
    assert_eq!(starts.len(), 8);
    assert!(starts.contains("2024-03-01T00:00:00+01:00"), "{starts:?}");

    // At most two windows ran at once, from the jobs' own recorded times.
    let mut points = Vec::new();
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        points.push((parts[2].parse::<u128>().unwrap(), if parts[0] == "start" { 1 } else { -1 }));
    }
    points.sort();
    let (mut running, mut peak) = (0, 0);
    for (_, delta) in points {
        running += delta;
        peak = peak.max(running);
    }
    assert!(peak <= 2, "{peak} windows ran at once with --max-parallel-runs 2");

    let audit = stack.sluice_json(&["audit", "daily", "--from", "2024-02-29", "--to", "2024-03-09"], 0);
    let windows = audit["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 10);
    assert_eq!(windows[0]["state"], "missing");
    assert!(windows[0]["run_id"].is_null());
    assert_eq!(windows[1]["start"], "2024-03-01T00:00:00+01:00");
    assert_eq!(windows[1]["jobs"], serde_json::json!({"load": "completed", "check": "completed"}));
    let missing = stack.sluice_json(&["audit", "daily", "--from", "2024-02-29", "--to", "2024-03-09", "--missing"], 0);
    let missing: Vec<&str> =
        missing["windows"].as_array().unwrap().iter().map(|w| w["start"].as_str().unwrap()).collect();
    assert_eq!(missing, ["2024-02-29T00:00:00+01:00", "2024-03-09T00:00:00+01:00"]);

    let again = stack.sluice_json(
        &["backfill", file.to_str().unwrap(), "--from", "2024-03-01", "--to", "2024-03-09", "--rerun", "missing"],
        0,
    );
    assert_eq!(again["counts"]["skipped"], 8);
    assert_eq!(again["counts"]["succeeded"], 1);
    assert_eq!(runs(&stack, "daily").len(), 9);
    let listed = stack.sluice_json(&["backfill", "list"], 0);
    assert_eq!(listed["backfills"].as_array().unwrap().len(), 2);
}

/// A backfill never holds more than its `--max-parallel-runs`, so scheduled runs still get
/// workers while it runs; cancelled, it starts no new windows and its running runs end.
#[test]
fn a_backfill_leaves_room_for_scheduled_runs_and_can_be_cancelled() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&["--concurrency", "4"]);
    let gate = stack.dir.path().join("gate");
    let file = stack.write(
        "slow.yaml",
        &format!(
            "name: slow\njobs:\n  wait:\n    run: exec\n    command: [sh, -c, 'while [ ! -e {} ]; do sleep 0.05; done']\n",
            gate.display()
        ),
    );
    let created = stack.sluice_json(
        &["backfill", file.to_str().unwrap(), "--from", "2024-03-01", "--to", "2024-03-10", "--detach"],
        0,
    );
    let id = created["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "two runs to be running", || {
        runs(&stack, "slow").iter().filter(|run| run["state"] == "running").count() == 2
    });
    let nightly = stack.write(
        "nightly.yaml",
        "name: nightly\nschedule: { cron: \"0 2 * * *\" }\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a] }\n",
    );
    stack.sluice_json(&["schedule", "apply", nightly.to_str().unwrap()], 0);
    let scheduled = stack.sluice_json(&["schedule", "trigger", "nightly", "--wait"], 0);
    assert_eq!(scheduled["state"], "succeeded", "the scheduled run got workers: {scheduled:#}");
    assert_eq!(runs(&stack, "slow").len(), 2, "the backfill still holds only its two runs");

    stack.sluice_json(&["backfill", "cancel", &id], 0);
    wait_until(Duration::from_secs(30), "the backfill to end", || {
        let status = stack.sluice(&["backfill", "status", &id, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&status.stdout).is_ok_and(|status| !status["finished_at"].is_null())
    });
    let status = stack.sluice(&["backfill", "status", &id, "-o", "json"]);
    assert_eq!(status.status.code(), Some(1), "a cancelled backfill exits 1");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["state"], "cancelled");
    assert_eq!(status["counts"]["cancelled"], 2);
    assert_eq!(status["counts"]["pending"], 8);
    let all = runs(&stack, "slow");
    assert_eq!(all.len(), 2, "no window started after the cancel");
    assert!(all.iter().all(|run| run["state"] == "cancelled"));
}

/// Bad input to the time commands is refused with a message naming what is wrong.
#[test]
fn bad_schedules_backfills_and_audits_are_refused_clearly() {
    let mut stack = Stack::start();
    stack.coordinator();
    stack.worker(&[]);
    let plain = stack.write("plain.yaml", "name: plain\njobs:\n  a: { run: noop }\n");
    let bad_cron =
        stack.write("cron.yaml", "name: cron\nschedule: { cron: \"61 * * * *\" }\njobs:\n  a: { run: noop }\n");
    let bad_window = stack.write(
        "window.yaml",
        "name: window\nschedule: { cron: \"@daily\", window: tomorrow }\njobs:\n  a: { run: noop }\n",
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["schedule", "apply", plain.to_str().unwrap()], "has no `schedule:` section"),
        (vec!["schedule", "apply", bad_cron.to_str().unwrap()], "minute 61 is out of range 0-59"),
        (vec!["schedule", "apply", bad_window.to_str().unwrap()], "window `tomorrow`"),
        (vec!["schedule", "pause", "nope"], "no schedule `nope`"),
        (vec!["schedule", "trigger", "nope"], "no schedule `nope`"),
        (vec!["backfill", plain.to_str().unwrap(), "--from", "2024-03-05", "--to", "2024-03-01"], "is before --from"),
        (
            vec!["backfill", plain.to_str().unwrap(), "--from", "March", "--to", "2024-03-01"],
            "--from `March` is not a day",
        ),
        (
            vec!["backfill", plain.to_str().unwrap(), "--from", "2020-01-01", "--to", "2024-01-01", "--interval", "1h"],
            "more than 2000 windows",
        ),
        (vec!["backfill", "status", "not-an-id"], "backfill id"),
        (vec!["audit", "plain", "--from", "2024-03-01", "--to", "yesterday"], "--to `yesterday` is not a day"),
    ];
    for (args, expected) in cases {
        let output = stack.sluice(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    // A valid schedule can be triggered by hand, paused, resumed and deleted.
    let daily = stack.write(
        "daily.yaml",
        "name: daily\nschedule: { cron: \"0 3 * * *\", timezone: America/Los_Angeles }\njobs:\n  a: { run: noop }\n",
    );
    stack.sluice_json(&["schedule", "apply", daily.to_str().unwrap()], 0);
    let triggered = stack.sluice_json(&["schedule", "trigger", "daily", "--wait"], 0);
    assert_eq!(triggered["state"], "succeeded", "{triggered:#}");
    stack.sluice_json(&["schedule", "pause", "daily"], 0);
    stack.sluice_json(&["schedule", "resume", "daily"], 0);
    stack.sluice_json(&["schedule", "delete", "daily"], 0);
    let listed: HashMap<String, serde_json::Value> =
        serde_json::from_value(stack.sluice_json(&["schedule", "list"], 0)).unwrap();
    assert_eq!(listed["schedules"], serde_json::json!([]));
}
