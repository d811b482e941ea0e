//! `sluice dev` (what `make demo` runs): starts its own nats-server, coordinator and worker,
//! and a Python worker beside them (`--worker-command`), runs the example workflows (the
//! Python ETL among them) to success, and stops everything cleanly on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// What `make demo` runs beside the stack: a Python worker (the SDK, installed by
/// scripts/install-tools.sh) for the Python ETL's pool.
const PYTHON_WORKER: &str =
    "PYTHONPATH=examples/python-jobs exec .tools/venv/bin/sluice-py worker --pool python etl_jobs";

/// Kills the `dev` process if the test panics before it stopped it.
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill").args(["-INT", &self.0.to_string()]).status();
        }
    }
}

/// The body of `GET /metrics` on `address`.
fn scrape(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

#[test]
fn dev_runs_the_example_workflows_with_a_python_worker_beside_it_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut dev = Command::new(SLUICE)
        .args(["dev", "examples/workflows/etl-daily.yaml", "examples/workflows/sensors-fanout.yaml"])
        .arg("examples/python-jobs/etl.yaml")
        .args(["--worker-command", PYTHON_WORKER])
        .args(["--port", &port.to_string(), "--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("nats"))
        .env("ETL_DATA_DIR", dir.path().join("data"))
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A failed assertion must not leave the stack running (its children hold the cargo lock).
    let _kill_on_panic = KillOnPanic(dev.id());
    let (lines_tx, lines_rx) = mpsc::channel();
    let stdout = dev.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut output = Vec::new();
    let wait_for = |needle: &str, output: &mut Vec<String>| {
        loop {
            let line = lines_rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no `{needle}` in:\n{}", output.join("\n")));
            output.push(line.clone());
            if line.contains(needle) {
                return;
            }
        }
    };
    wait_for("The stack stays up", &mut output);
    let text = output.join("\n");
    assert!(text.contains("succeeded"), "{text}");
    for job in ["extract", "clean", "check-freshness", "aggregate", "report", "calibrate-all"] {
        assert!(
            text.contains(job) && text.lines().any(|line| line.contains(job) && line.contains("completed")),
            "{job} in:\n{text}"
        );
    }
    assert!(!text.contains("failed"), "{text}");
    assert!(text.contains("24: 24 completed"), "the fan-out's children, in:\n{text}");
    for job in ["transform", "load"] {
        assert!(
            text.lines().any(|line| line.contains(job) && line.contains("completed")),
            "the Python ETL's {job} in:\n{text}"
        );
    }
    let python = text
        .lines()
        .find_map(|line| line.split("(pid ").nth(1)?.split(',').next()?.parse::<i32>().ok())
        .unwrap_or_else(|| panic!("the Python worker's pid in:\n{text}"));
    assert!(dir.path().join("data").read_dir().unwrap().next().is_some(), "the ETL wrote its data");
    // One registry for the coordinator and the worker, where `dev` said it is.
    let address = text
        .lines()
        .find_map(|line| line.strip_prefix("metrics")?.trim().strip_prefix("http://")?.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("the metrics address in:\n{text}"));
    let metrics = scrape(address);
    for line in [
        r#"sluice_runs_finished_total{state="succeeded"} 3"#,
        r#"sluice_jobs_finished_total{pool="python",state="completed"} 2"#,
        r#"sluice_worker_slots{pool="default"} 4"#,
        "sluice_coordinator_leader 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }

    Command::new("kill").args(["-INT", &dev.id().to_string()]).status().unwrap();
    wait_for("stopped", &mut output);
    let status = dev.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nats-server stopped with it");
    let gone = Command::new("kill").args(["-0", &python.to_string()]).stderr(Stdio::null()).status().unwrap();
    assert!(!gone.success(), "the Python worker (pid {python}) stopped with it");
}
