//! The state diagrams in `proto/src/state.rs` and docs/architecture.md name every state: a
//! state added to the enums but not drawn (or drawn but gone) fails here.

use std::path::PathBuf;

use sluice_proto::{JobState, RunState};

/// The first ``` block of `text` that draws the job and run diagrams.
fn diagram(text: &str, prefix: &str) -> String {
    let lines: Vec<String> = text.lines().map(|line| line.strip_prefix(prefix).unwrap_or(line).to_owned()).collect();
    let start = lines.iter().position(|line| line.trim_start().starts_with("job:")).expect("a job diagram");
    let end = lines[start..].iter().position(|line| line.trim_start().starts_with("```")).expect("its end") + start;
    lines[start..end].join("\n")
}

fn words(diagram: &str) -> Vec<String> {
    diagram.split(|c: char| !c.is_ascii_alphabetic()).filter(|word| !word.is_empty()).map(str::to_owned).collect()
}

#[test]
fn both_diagrams_name_every_job_and_run_state() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/state.rs")).unwrap();
    let architecture = std::fs::read_to_string(root.join("../docs/architecture.md")).unwrap();
    for (name, drawn) in
        [("proto/src/state.rs", diagram(&source, "//! ")), ("docs/architecture.md", diagram(&architecture, ""))]
    {
        let (job, run) = drawn.split_once("run:").expect("a run diagram after the job diagram");
        let (job, run) = (words(job), words(run));
        for state in JobState::ALL {
            assert!(
                job.iter().any(|word| word == state.as_str()),
                "{name}: the job diagram lacks `{}`",
                state.as_str()
            );
        }
        for state in RunState::ALL {
            assert!(
                run.iter().any(|word| word == state.as_str()),
                "{name}: the run diagram lacks `{}`",
                state.as_str()
            );
        }
    }
}
