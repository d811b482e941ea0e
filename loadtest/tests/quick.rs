//! `sluice-loadtest --quick` runs the whole suite end to end against real processes and
//! writes every figure the standard run does (a smoke test: numbers from a debug build say
//! nothing about speed; `make bench` measures).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_quick_suite_runs_every_baseline_and_workload() {
    let loadtest = PathBuf::from(env!("CARGO_BIN_EXE_sluice-loadtest"));
    let sluice = loadtest.with_file_name("sluice");
    assert!(sluice.exists(), "{} is missing: build it first (cargo build -p sluice; make test does)", sluice.display());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results.json");
    let doc = dir.path().join("performance.md");
    std::fs::write(
        &doc,
        "# Performance\n\nprose kept\n<!-- results:start -->\nold\n<!-- results:end -->\nmore prose\n",
    )
    .unwrap();
    let output = Command::new(&loadtest)
        .args(["--quick", "--sluice"])
        .arg(&sluice)
        .arg("--out")
        .arg(&out)
        .arg("--doc")
        .arg(&doc)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(results["machine"]["quick"], true);
    assert_eq!(results["machine"]["sync_interval"], "default");
    let rows = results["results"].as_array().unwrap();
    for (workload, metric) in [
        ("B1", "throughput"),
        ("B2", "wall time"),
        ("B3", "time per step"),
        ("W1", "throughput"),
        ("W1-py", "throughput"),
        ("intake", "first job dispatched"),
        ("W2-static", "wall time"),
        ("W2-spawned", "wall time"),
        ("W3", "time per step"),
        ("W4", "wall time"),
        ("W4", "coordinator peak RSS"),
        ("W5", "runs per second"),
        ("W5", "run latency p99"),
        ("W5", "dispatch latency p99"),
        ("W6", "newest 50 p95"),
        ("W6", "workflow's newest 50 p95"),
        ("W6", "window range p95"),
        ("W7", "run page of 10,000 children p95"),
        ("W7", "audit page, a year p95"),
    ] {
        let row = rows
            .iter()
            .find(|row| row["workload"] == workload && row["metric"] == metric)
            .unwrap_or_else(|| panic!("no {workload} {metric} in {results:#}"));
        assert!(row["value"].as_f64().unwrap() > 0.0, "{row}");
    }
    for (workload, metric) in
        [("W1", "throughput"), ("W2-static", "wall time"), ("W2-spawned", "wall time"), ("W3", "time per step")]
    {
        let row = rows.iter().find(|row| row["workload"] == workload && row["metric"] == metric).unwrap();
        assert!(row["baseline"].as_f64().unwrap() > 0.0 && row["ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Every target is judged on this run's figures: none is left "not run".
    let targets = results["targets"].as_array().unwrap();
    assert!(targets.len() >= 9, "{targets:?}");
    for target in targets {
        assert!(["met", "missed", "reported"].contains(&target["verdict"].as_str().unwrap()), "{target}");
    }
    let doc = std::fs::read_to_string(&doc).unwrap();
    assert!(doc.contains("prose kept") && doc.contains("more prose") && !doc.contains("\nold\n"), "{doc}");
    assert!(doc.contains("| W3 | time per step |"), "{doc}");
    assert!(doc.contains("| intake first job dispatched | ≤ 150 ms |"), "{doc}");
}
