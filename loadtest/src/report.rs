//! Results: `bench/results.json` and the table in docs/performance.md.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// One figure.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    /// The raw-JetStream figure it compares with, if any.
    pub baseline: Option<f64>,
    /// value / baseline (for times, lower is better; for rates, higher).
    pub ratio: Option<f64>,
}

impl Row {
    pub fn new(workload: &str, metric: &str, value: f64, unit: &str) -> Self {
        Self { workload: workload.into(), metric: metric.into(), value, unit: unit.into(), baseline: None, ratio: None }
    }

    pub fn against(mut self, baseline: f64, ratio: f64) -> Self {
        self.baseline = Some(baseline);
        self.ratio = Some(ratio);
        self
    }
}

/// Every figure of one run, with the machine it ran on, and the targets judged.
#[derive(Serialize)]
pub struct Suite {
    machine: serde_json::Value,
    /// Issue 14's targets (and W6's from issue 11), each judged on this run's figures.
    targets: Vec<Verdict>,
    results: Vec<Row>,
}

/// One target: its gate, the figure it judges (if that workload ran) and the outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub workload: String,
    pub metric: String,
    pub gate: String,
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    /// `met`, `missed`, `reported` (no gate) or `not run`.
    pub verdict: String,
}

/// What the issues ask: (workload, metric, check, gate). Ratios are against the baseline
/// measured in the same invocation.
const TARGETS: &[(&str, &str, Target, &str)] = &[
    ("W1", "throughput", Target::RatioAtLeast(0.35), "≥ 35% of B1"),
    // Issue 15's: exporting every span and serving metrics cost at most 10% of W1's rate.
    ("W1-traced", "throughput", Target::RatioAtLeast(0.90), "≥ 90% of untraced W1"),
    ("W1-traced", "spans dropped", Target::ValueAtMost(0.0), "none"),
    ("W2-static", "wall time", Target::RatioAtMost(3.0), "≤ 3× B2"),
    ("W2-spawned", "wall time", Target::RatioAtMost(3.0), "≤ 3× B2"),
    ("W3", "time per step", Target::RatioAtMost(2.0), "≤ 2× B3"),
    ("intake", "first job dispatched", Target::ValueAtMost(150.0), "≤ 150 ms"),
    ("W4", "wall time", Target::ValueAtMost(5.0), "≤ 5 s"),
    // The row is in MiB; the 100 MB is 100,000,000 bytes = 95.37 MiB.
    ("W4", "coordinator peak RSS", Target::ValueAtMost(100e6 / 1048576.0), "≤ 100 MB"),
    // Issue 17's: the Python worker, same workload and slots as W1.
    ("W1-py", "throughput", Target::ValueAtLeast(3000.0), "≥ 3,000 jobs/s"),
    ("W5", "runs per second", Target::Reported, "reported"),
    ("W5", "run latency p99", Target::Reported, "reported"),
    // W6's baseline is the same query's p95 on the smaller store (1,000 runs; 100,000 after).
    ("W6", "newest 50 p95", Target::RatioAtMost(1.5), "≤ 1.5× at 1,000 runs"),
    ("W6", "workflow's newest 50 p95", Target::RatioAtMost(1.5), "≤ 1.5× at 1,000 runs"),
    ("W6", "window range p95", Target::RatioAtMost(1.5), "≤ 1.5× at 1,000 runs"),
    // Issue 16's: the UI and the API on W6's 100,000 runs, and a run of 10,000 children.
    ("W7", crate::pages::METRICS[0], Target::ValueAtMost(300.0), "≤ 300 ms"),
    ("W7", crate::pages::METRICS[1], Target::ValueAtMost(300.0), "≤ 300 ms"),
    ("W7", crate::pages::METRICS[2], Target::ValueAtMost(300.0), "≤ 300 ms"),
    ("W7", crate::pages::METRICS[3], Target::ValueAtMost(300.0), "≤ 300 ms"),
    ("W7", crate::pages::METRICS[4], Target::ValueAtMost(300.0), "≤ 300 ms"),
    ("W7", crate::pages::METRICS[5], Target::ValueAtMost(300.0), "≤ 300 ms"),
    ("W7", crate::pages::METRICS[6], Target::ValueAtMost(300.0), "≤ 300 ms"),
];

#[derive(Clone, Copy)]
enum Target {
    RatioAtLeast(f64),
    RatioAtMost(f64),
    ValueAtMost(f64),
    ValueAtLeast(f64),
    /// Reported, not gated.
    Reported,
}

impl Target {
    fn judge(self, row: &Row) -> &'static str {
        let met = match self {
            Self::RatioAtLeast(limit) => row.ratio.is_some_and(|ratio| ratio >= limit),
            Self::RatioAtMost(limit) => row.ratio.is_some_and(|ratio| ratio <= limit),
            Self::ValueAtMost(limit) => row.value <= limit,
            Self::ValueAtLeast(limit) => row.value >= limit,
            Self::Reported => return "reported",
        };
        if met { "met" } else { "missed" }
    }
}

impl Suite {
    /// `sync_interval`: the JetStream sync interval of the servers (`default`, `always`).
    pub fn new(quick: bool, sluice: &Path, sync_interval: &str) -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("model name").map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        });
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| text.lines().find_map(|line| line.strip_prefix("MemTotal:").map(str::to_owned)))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| (kib / 1048576.0 * 10.0).round() / 10.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|text| text.trim().to_owned());
        let nats = sluice_testkit::local_nats::find_binary()
            .ok()
            .and_then(|path| std::process::Command::new(path).arg("--version").output().ok())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
        let profile = if sluice.components().any(|part| part.as_os_str() == "release") { "release" } else { "debug" };
        Self {
            machine: serde_json::json!({
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "cpu_model": cpu_model,
                "memory_gib": memory_gib,
                "os": std::env::consts::OS,
                "kernel": kernel,
                "nats_server": nats,
                "sluice_build": profile,
                "quick": quick,
                "storage": "file",
                "sync_interval": sync_interval,
                "worker_slots": 4,
                "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
            }),
            targets: Vec::new(),
            results: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Row) {
        self.results.push(row);
    }

    pub fn extend(&mut self, rows: Vec<Row>) {
        self.results.extend(rows);
    }

    /// The value of a row pushed before, if that workload ran.
    pub fn value(&self, workload: &str, metric: &str) -> Option<f64> {
        self.results.iter().find(|row| row.workload == workload && row.metric == metric).map(|row| row.value)
    }

    fn verdict(&self, row: &Row) -> Option<String> {
        let (_, _, target, text) = TARGETS.iter().find(|(w, m, _, _)| *w == row.workload && *m == row.metric)?;
        Some(match target {
            Target::Reported => "reported".to_owned(),
            _ => format!("{} ({text})", target.judge(row)),
        })
    }

    /// Every target, judged on the rows so far.
    pub fn judge(&self) -> Vec<Verdict> {
        TARGETS
            .iter()
            .map(|(workload, metric, target, gate)| {
                let row = self.results.iter().find(|row| row.workload == *workload && row.metric == *metric);
                Verdict {
                    workload: (*workload).into(),
                    metric: (*metric).into(),
                    gate: (*gate).into(),
                    value: row.map(|row| row.value),
                    unit: row.map(|row| row.unit.clone()),
                    baseline: row.and_then(|row| row.baseline),
                    ratio: row.and_then(|row| row.ratio),
                    verdict: row.map(|row| target.judge(row)).unwrap_or("not run").into(),
                }
            })
            .collect()
    }

    /// The Markdown table of the targets.
    pub fn targets_table(&self) -> String {
        let mut out =
            String::from("| target | gate | value | baseline | ratio | verdict |\n|---|---|---|---|---|---|\n");
        for verdict in self.judge() {
            out.push_str(&format!(
                "| {} {} | {} | {} | {} | {} | **{}** |\n",
                verdict.workload,
                verdict.metric,
                verdict.gate,
                verdict
                    .value
                    .map(|value| format!("{} {}", format_number(value), verdict.unit.clone().unwrap_or_default()))
                    .unwrap_or_default(),
                verdict.baseline.map(format_number).unwrap_or_default(),
                verdict.ratio.map(|ratio| format!("{ratio:.2}")).unwrap_or_default(),
                verdict.verdict
            ));
        }
        out
    }

    /// The Markdown table of every figure.
    pub fn table(&self) -> String {
        let mut out =
            String::from("| workload | metric | value | baseline | ratio | target |\n|---|---|---|---|---|---|\n");
        for row in &self.results {
            out.push_str(&format!(
                "| {} | {} | {} {} | {} | {} | {} |\n",
                row.workload,
                row.metric,
                format_number(row.value),
                row.unit,
                row.baseline.map(format_number).unwrap_or_default(),
                row.ratio.map(|ratio| format!("{ratio:.2}")).unwrap_or_default(),
                self.verdict(row).unwrap_or_default()
            ));
        }
        out
    }

    /// Writes the JSON, and the results section of `doc` (between its markers).
    pub fn write(&mut self, out: &Path, doc: Option<&Path>) -> Result<()> {
        self.targets = self.judge();
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
        if let Some(doc) = doc {
            let text = std::fs::read_to_string(doc).unwrap_or_default();
            let (start, end) = ("<!-- results:start -->", "<!-- results:end -->");
            let section = format!(
                "{start}\nMachine: `{}`\n\n{}\n{}{end}",
                serde_json::to_string(&self.machine)?,
                self.targets_table(),
                self.table()
            );
            let updated = match (text.find(start), text.find(end)) {
                (Some(a), Some(b)) if a < b => format!("{}{section}{}", &text[..a], &text[b + end.len()..]),
                _ => format!("{text}\n{section}\n"),
            };
            std::fs::write(doc, updated).with_context(|| format!("writing {}", doc.display()))?;
        }
        Ok(())
    }
}

fn format_number(value: f64) -> String {
    if value.is_nan() {
        "n/a".into()
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}
