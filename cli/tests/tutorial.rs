//! The README tutorial works as written: this test reads README.md (at the workspace root),
//! runs its marked blocks in order against a real stack (a private nats-server, a
//! `sluice coordinator` and a `sluice worker` process) with this build's `sluice` binary, in
//! a temporary working directory, and then checks what the tutorial promises. Editing the
//! README changes the test: a command that stops working fails it.
//!
//! # Markers
//!
//! A marker is one line, `<!-- tutorial: KIND ARGS, CLAUSE, ... -->`, right before a fenced
//! block (an HTML comment: GitHub does not show it). Every ```` ```sh ```` and
//! ```` ```yaml ```` block of the README needs one, so a new block is a decision, not an
//! accident. Kinds:
//!
//! - `stack (REASON)`: the block starts a local stack (`make demo`); the test starts its own
//!   nats-server, coordinator and worker here instead, and nowhere else.
//! - `skip (REASON)`: the block is not run; the reason says why (and what tests it instead).
//! - `file PATH`: the block is written to PATH in the working directory.
//! - `edit PATH`: the block is a piece of PATH as it should become: its first line occurs
//!   in PATH exactly once, and the block replaces that line and the lines after it, as many
//!   lines as the block has.
//! - `append PATH`: the block is appended to PATH.
//! - `restore PATH` (no block follows): PATH is written back as its `file` block had it.
//! - `same PATH`: the block shows PATH of the repository: their lines must be the same once
//!   comments and blank lines are left out (nothing is run).
//! - `run`: each line of the block is a command, run in order by `sh -c` with `sluice` on
//!   `PATH` (this build's binary) and `SLUICE_NATS_URL` pointing at the test's stack. A
//!   `# comment` is stripped first; blank lines are ignored. Each must exit 0, unless a
//!   clause says otherwise: `exit N` (every command of the block), or `"START" exit N`
//!   (the one command of the block that begins with START), each with an optional
//!   `(REASON)`.
//!
//! # Placeholders
//!
//! A command's `<run-id>` is replaced by the newest run (the first one `sluice runs -o json`
//! lists right before the command runs), and `<id>` by the newest dead letter (the last one
//! `sluice dlq list -o json` lists). Any other `<word>` fails the test.

// Progress goes to the test runner's output (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Longest one tutorial command may take before the test kills it and fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
enum Kind {
    Stack,
    Skip,
    File(String),
    Edit(String),
    Append(String),
    Restore(String),
    Same(String),
    Run,
}

/// What `exit` clauses of a `run` marker expect.
#[derive(Debug, Default)]
struct Exits {
    all: Option<i32>,
    /// (command start, code)
    by_start: Vec<(String, i32)>,
}

#[derive(Debug)]
struct Step {
    /// README line of the marker (1-based).
    line: usize,
    kind: Kind,
    exits: Exits,
    /// The fenced block after the marker: (README line, text) of each line.
    block: Vec<(usize, String)>,
}

fn readme_path() -> PathBuf {
    workspace_root().join("README.md")
}

/// Splits `text` at `separator` outside double quotes and parentheses.
fn split_outside(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let (mut quoted, mut depth) = (false, 0usize);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == separator && !quoted && depth == 0 {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("a part").push(c);
        }
    }
    parts.into_iter().map(|part| part.trim().to_owned()).collect()
}

/// `text` without a trailing `(reason)`, and whether it had one.
fn without_reason(text: &str) -> (&str, bool) {
    match text.find('(') {
        Some(open) if text.ends_with(')') => (text[..open].trim(), true),
        _ => (text.trim(), false),
    }
}

fn parse_marker(line: usize, marker: &str) -> (Kind, Exits) {
    let fail = |why: &str| -> ! { panic!("README.md:{line}: {why}: `{marker}`") };
    let clauses = split_outside(marker, ',');
    let (head, has_reason) = without_reason(&clauses[0]);
    let words: Vec<&str> = head.split_whitespace().collect();
    let path = || match words.as_slice() {
        [_, path] => (*path).to_owned(),
        _ => fail("this marker takes one path"),
    };
    let kind = match words.first().copied() {
        Some("stack") | Some("skip") if !has_reason => fail("say why, in parentheses"),
        Some("stack") => Kind::Stack,
        Some("skip") => Kind::Skip,
        Some("file") => Kind::File(path()),
        Some("edit") => Kind::Edit(path()),
        Some("append") => Kind::Append(path()),
        Some("restore") => Kind::Restore(path()),
        Some("same") => Kind::Same(path()),
        Some("run") if words.len() == 1 => Kind::Run,
        _ => fail("unknown marker"),
    };
    let mut exits = Exits::default();
    for clause in &clauses[1..] {
        if !matches!(kind, Kind::Run) {
            fail("only `run` takes clauses");
        }
        let (clause, _) = without_reason(clause);
        let (start, rest) = match clause.strip_prefix('"') {
            Some(rest) => {
                let close = rest.find('"').unwrap_or_else(|| fail("unclosed quote"));
                (Some(rest[..close].to_owned()), rest[close + 1..].trim())
            }
            None => (None, clause),
        };
        let code = rest
            .strip_prefix("exit ")
            .and_then(|code| code.trim().parse::<i32>().ok())
            .unwrap_or_else(|| fail("a clause is `exit N` or `\"START\" exit N`"));
        match start {
            Some(start) => exits.by_start.push((start, code)),
            None => exits.all = Some(code),
        }
    }
    (kind, exits)
}

/// The README's marked steps, in order. Panics on a `sh`/`yaml` block without a marker, a
/// marker without its block, or a marker it does not know.
fn parse_readme(readme: &str) -> Vec<Step> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut steps = Vec::new();
    let mut marker: Option<(usize, Kind, Exits)> = None;
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim();
        let number = index + 1;
        if let Some(rest) = line.strip_prefix("<!-- tutorial:") {
            let body = rest.strip_suffix("-->").unwrap_or_else(|| panic!("README.md:{number}: a marker is one line"));
            if let Some((at, kind, _)) = marker.take() {
                panic!("README.md:{at}: marker {kind:?} is not followed by its block");
            }
            let (kind, exits) = parse_marker(number, body.trim());
            if matches!(kind, Kind::Restore(_)) {
                steps.push(Step { line: number, kind, exits, block: Vec::new() });
            } else {
                marker = Some((number, kind, exits));
            }
            index += 1;
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            let mut block = Vec::new();
            index += 1;
            while index < lines.len() && !lines[index].trim_start().starts_with("```") {
                block.push((index + 1, lines[index].to_owned()));
                index += 1;
            }
            index += 1;
            match marker.take() {
                Some((at, kind, exits)) => {
                    let want = match kind {
                        Kind::Run | Kind::Stack => "sh",
                        Kind::Skip => lang,
                        _ => "yaml",
                    };
                    assert_eq!(lang, want, "README.md:{at}: marker {kind:?} is for a ```{want} block");
                    steps.push(Step { line: at, kind, exits, block });
                }
                None if lang == "sh" || lang == "yaml" => {
                    panic!(
                        "README.md:{number}: this ```{lang} block has no `<!-- tutorial: … -->` marker (see cli/tests/tutorial.rs)"
                    )
                }
                None => {}
            }
            continue;
        }
        if let Some((at, kind, _)) = &marker
            && !line.is_empty()
        {
            panic!("README.md:{at}: marker {kind:?} is not right before its block");
        }
        index += 1;
    }
    if let Some((at, kind, _)) = marker {
        panic!("README.md:{at}: marker {kind:?} is not followed by its block");
    }
    steps
}

/// The command without its `# comment` (a `#` at the start of a word, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return line[..at].trim(),
            _ => {}
        }
        previous = c;
    }
    line.trim()
}

fn block_text(block: &[(usize, String)]) -> String {
    block.iter().map(|(_, line)| format!("{line}\n")).collect()
}

/// Lines that carry YAML, without comments and trailing blanks.
fn yaml_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| strip_comment(&format!(" {line}")).to_owned())
        .map(|line| line.trim_end().to_owned())
        .filter(|line| !line.trim().is_empty())
        .collect()
}

/// The `.tools` directory holding the nats-server these tests run (it has the venv whose
/// Python the README's client example uses).
fn tools_dir() -> PathBuf {
    let server = sluice_testkit::local_nats::find_binary().expect("a nats-server (run scripts/install-tools.sh)");
    let server = fs::canonicalize(&server).unwrap_or(server);
    server
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|name| name == ".tools"))
        .map(Path::to_path_buf)
        .or_else(|| Some(workspace_root().join(".tools")).filter(|dir| dir.is_dir()))
        .expect("a .tools directory (run scripts/install-tools.sh)")
}

struct Tutorial {
    stack: Option<sluice_testkit::Stack>,
    /// Where the commands run (the README's "repository root": `examples/` and `.tools/`
    /// are links to the real ones).
    dir: PathBuf,
    bin: PathBuf,
    /// What each `file` marker wrote, for `restore`.
    written: Vec<(String, String)>,
    /// Runs each `<run-id>` stood for, in order.
    run_ids: Vec<String>,
}

impl Tutorial {
    fn stack(&self) -> &sluice_testkit::Stack {
        self.stack.as_ref().expect("the README's `stack` marker comes before the first command")
    }

    fn start_stack(&mut self) {
        assert!(self.stack.is_none(), "one `stack` marker");
        let mut stack = sluice_testkit::Stack::builder(SLUICE)
            .current_dir(&self.dir)
            .start()
            .unwrap_or_else(|error| panic!("a stack starts (run scripts/install-tools.sh): {error:#}"));
        stack.coordinator();
        stack.worker(&[]);
        stack.wait_until_set_up(Duration::from_secs(30)).expect("Sluice set up");
        stack.wait_for_workers("default", 1, Duration::from_secs(30)).expect("a worker");
        self.stack = Some(stack);
    }

    /// `sluice ARGS -o json` as the tutorial's commands run it, parsed.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        self.stack().sluice_json(args, 0)
    }

    fn fill_placeholders(&mut self, command: &str, at: usize) -> String {
        let mut out = String::new();
        let mut rest = command;
        while let Some(open) = rest.find('<') {
            let close = rest[open..].find('>').map(|close| open + close);
            let name = close.map(|close| &rest[open + 1..close]);
            let value = match name {
                Some("run-id") => {
                    let runs = self.json(&["runs"]);
                    let id = runs["runs"][0]["id"].as_str().expect("a run to stand for <run-id>").to_owned();
                    self.run_ids.push(id.clone());
                    id
                }
                Some("id") => {
                    let list = self.json(&["dlq", "list"]);
                    let letters = list["dead_letters"].as_array().expect("dead_letters");
                    letters.last().expect("a dead letter to stand for <id>")["id"].to_string()
                }
                Some(name) if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') => {
                    panic!(
                        "README.md:{at}: unknown placeholder <{name}> (cli/tests/tutorial.rs knows <run-id> and <id>)"
                    )
                }
                _ => {
                    out.push_str(&rest[..=open]);
                    rest = &rest[open + 1..];
                    continue;
                }
            };
            out.push_str(&rest[..open]);
            out.push_str(&value);
            rest = &rest[close.expect("closed") + 1..];
        }
        out.push_str(rest);
        out
    }

    fn run(&mut self, at: usize, line: &str, code: i32) {
        let command = self.fill_placeholders(strip_comment(line), at);
        let stdout = self.dir.join(".tutorial-stdout");
        let stderr = self.dir.join(".tutorial-stderr");
        let path = std::env::join_paths(
            std::iter::once(self.bin.clone())
                .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .expect("PATH");
        let started = Instant::now();
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new("sh")
                .args(["-c", &command])
                .current_dir(&self.dir)
                .env("PATH", path)
                .env("SLUICE_NATS_URL", self.stack().url())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(fs::File::create(&stdout).expect("stdout file"))
                .stderr(fs::File::create(&stderr).expect("stderr file"))
                .process_group(0)
                .spawn()
                .expect("sh runs")
        };
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break Some(status);
            }
            if started.elapsed() > STEP_TIMEOUT {
                let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (out, err) =
            (fs::read_to_string(&stdout).unwrap_or_default(), fs::read_to_string(&stderr).unwrap_or_default());
        // What a reader of the README would see (shown with --nocapture, or when the test fails).
        eprintln!("README.md:{at}: `{command}` → {:?} in {:.1?}", status.and_then(|s| s.code()), started.elapsed());
        for line in out.lines().chain(err.lines()).take(40) {
            eprintln!("    {line}");
        }
        match status {
            None => panic!(
                "README.md:{at}: `{command}` did not finish within {STEP_TIMEOUT:?}\nstdout:\n{out}\nstderr:\n{err}"
            ),
            Some(status) => assert_eq!(
                status.code(),
                Some(code),
                "README.md:{at}: `{command}` exited {status}, expected {code}\nstdout:\n{out}\nstderr:\n{err}"
            ),
        }
    }

    fn step(&mut self, step: &Step) {
        match &step.kind {
            Kind::Stack => self.start_stack(),
            Kind::Skip => {}
            Kind::File(path) => {
                let text = block_text(&step.block);
                fs::write(self.dir.join(path), &text).expect("write the file");
                self.written.push((path.clone(), text));
            }
            Kind::Restore(path) => {
                let (_, text) = self
                    .written
                    .iter()
                    .rev()
                    .find(|(written, _)| written == path)
                    .unwrap_or_else(|| panic!("README.md:{}: no `file {path}` before it", step.line));
                fs::write(self.dir.join(path), text).expect("restore the file");
            }
            Kind::Append(path) => {
                let mut text = fs::read_to_string(self.dir.join(path)).expect("the file to append to");
                text.push_str(&block_text(&step.block));
                fs::write(self.dir.join(path), text).expect("append");
            }
            Kind::Edit(path) => {
                let text = fs::read_to_string(self.dir.join(path)).expect("the file to edit");
                let mut lines: Vec<&str> = text.lines().collect();
                let first = step.block.first().map(|(_, line)| line.as_str()).expect("an edit block has lines");
                let found: Vec<usize> = (0..lines.len()).filter(|&index| lines[index] == first).collect();
                let [start] = found[..] else {
                    panic!("README.md:{}: `{first}` is in {path} {} times, not once", step.line, found.len())
                };
                let end = start + step.block.len();
                assert!(end <= lines.len(), "README.md:{}: the edit goes past the end of {path}", step.line);
                lines.splice(start..end, step.block.iter().map(|(_, line)| line.as_str()));
                fs::write(self.dir.join(path), lines.join("\n") + "\n").expect("edit");
            }
            Kind::Same(path) => {
                let file = fs::read_to_string(workspace_root().join(path))
                    .unwrap_or_else(|error| panic!("README.md:{}: {path}: {error}", step.line));
                assert_eq!(
                    yaml_lines(&block_text(&step.block)),
                    yaml_lines(&file),
                    "README.md:{}: the block is not what {path} holds",
                    step.line
                );
            }
            Kind::Run => {
                let commands: Vec<&(usize, String)> =
                    step.block.iter().filter(|(_, line)| !strip_comment(line).is_empty()).collect();
                for (start, _) in &step.exits.by_start {
                    let matching = commands.iter().filter(|(_, line)| line.starts_with(start.as_str())).count();
                    assert_eq!(matching, 1, "README.md:{}: `\"{start}\" exit` matches {matching} commands", step.line);
                }
                for (at, line) in commands {
                    let code = step
                        .exits
                        .by_start
                        .iter()
                        .find(|(start, _)| line.starts_with(start.as_str()))
                        .map(|(_, code)| *code)
                        .or(step.exits.all)
                        .unwrap_or(0);
                    self.run(*at, line, code);
                }
            }
        }
    }
}

fn jobs_by_name(status: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    status["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| (job["name"].as_str().expect("name").to_owned(), job.clone()))
        .collect()
}

#[test]
fn the_readme_tutorial_works_as_written() {
    let started = Instant::now();
    let readme = fs::read_to_string(readme_path()).expect("README.md");
    let steps = parse_readme(&readme);
    assert_eq!(steps.iter().filter(|step| matches!(step.kind, Kind::Stack)).count(), 1, "one `stack` marker");
    assert!(
        steps.iter().filter(|step| matches!(step.kind, Kind::Run)).count() >= 5,
        "the tutorial's commands are marked"
    );

    let root = tempfile::Builder::new().prefix("sluice-tutorial-").tempdir().expect("a temporary directory");
    let (dir, bin) = (root.path().join("work"), root.path().join("bin"));
    fs::create_dir_all(&dir).expect("work dir");
    fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(SLUICE, bin.join("sluice")).expect("link sluice");
    std::os::unix::fs::symlink(workspace_root().join("examples"), dir.join("examples")).expect("link examples");
    std::os::unix::fs::symlink(tools_dir(), dir.join(".tools")).expect("link .tools");

    let mut tutorial = Tutorial { stack: None, dir, bin, written: Vec::new(), run_ids: Vec::new() };
    for step in &steps {
        tutorial.step(step);
    }

    // What the tutorial promises.
    let stack = tutorial.stack();
    let manual = stack.sluice_json(&["runs", "--workflow", "sales-daily", "--origin", "manual"], 0);
    let manual = manual["runs"].as_array().expect("runs");
    assert_eq!(manual.len(), 2, "step 3 and step 5 each made a run: {manual:#?}");
    // Step 3: the first run succeeded (its `submit --wait` exited 0).
    assert_eq!(manual[1]["state"], "succeeded", "{manual:#?}");
    // Step 5: the broken run is the one `<run-id>` stood for when it was fixed; once fixed it
    // ends succeeded, `extract` did not run again, `clean` ran the fixed command after its
    // three failed attempts, and its dead letter is resolved.
    let broken = manual[0]["id"].as_str().expect("id");
    assert!(tutorial.run_ids.iter().any(|id| id == broken), "step 5's commands name the broken run");
    let status = stack.wait_for_run(broken, Duration::from_secs(60));
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let jobs = jobs_by_name(&status);
    assert_eq!(jobs["extract"]["attempts"], 1, "{status:#}");
    assert_eq!(jobs["clean"]["attempts"], 4, "three failed attempts, then the fixed one: {status:#}");
    let history = jobs["clean"]["attempt_history"].as_array().expect("clean's attempts");
    for attempt in &history[..3] {
        assert_eq!(attempt["error"], "`sh` exited with code 1", "each failed attempt has its error: {status:#}");
    }
    assert_eq!(history[3]["error"], serde_json::Value::Null, "{status:#}");
    let (first, last) = (&history[0], &history[history.len() - 1]);
    assert_ne!(first["spec_hash"], last["spec_hash"], "the last attempt ran the fixed file: {status:#}");
    assert_eq!(jobs["notify"]["state"], "completed", "{status:#}");
    // `notify` is `when: always`: it ran once `clean` had failed, before the fix.
    let notified = jobs["notify"]["attempt_history"][0]["finished_at"].as_str().expect("notify ran");
    let fixed = history[3]["started_at"].as_str().expect("the fixed attempt started");
    assert!(notified <= fixed, "notify ran after the failure, before the fix: {status:#}");
    let dead = stack.sluice_json(&["dlq", "list"], 0);
    assert_eq!(dead["dead_letters"], serde_json::json!([]), "every dead letter is resolved");
    // Step 6: the fan-out ran its 24 children.
    let sensors = stack.sluice_json(&["runs", "--workflow", "sensors-daily"], 0);
    let sensors_run = sensors["runs"][0]["id"].as_str().expect("a sensors run").to_owned();
    let status = stack.sluice_json(&["status", &sensors_run], 0);
    assert_eq!(status["state"], "succeeded", "{status:#}");
    let children = &jobs_by_name(&status)["calibrate-all"]["children"];
    assert_eq!(*children, serde_json::json!({"total": 24, "by_state": {"completed": 24}}), "{status:#}");
    // Step 7: the schedule runs on the workflow's zone; the backfill made one run per day but
    // for 2024-03-01, which had a successful run already.
    let schedules = stack.sluice_json(&["schedule", "list"], 0);
    assert_eq!(schedules["schedules"][0]["timezone"], "Europe/Berlin", "{schedules:#}");
    let backfills = stack.sluice_json(&["backfill", "list"], 0);
    let backfill = &backfills["backfills"][0];
    assert_eq!(backfill["state"], "succeeded", "{backfills:#}");
    assert_eq!(backfill["counts"]["total"], 91, "{backfills:#}");
    assert_eq!(backfill["counts"]["succeeded"], 90, "{backfills:#}");
    assert_eq!(backfill["counts"]["skipped"], 1, "{backfills:#}");
    // Step 7: every day of the backfilled range has a successful run.
    let audit =
        stack.sluice_json(&["audit", "sales-daily", "--from", "2024-01-01", "--to", "2024-03-31", "--missing"], 0);
    assert_eq!(audit["windows"], serde_json::json!([]), "no day is missing: {audit:#}");
    eprintln!("the tutorial took {:.1?}", started.elapsed());
}

#[test]
fn markers_say_what_each_block_is() {
    let readme = "<!-- tutorial: file a.yaml -->\n```yaml\nname: a\n```\n\n<!-- tutorial: restore a.yaml -->\n\
                  <!-- tutorial: run, \"sluice retry\" exit 1 (why, with a comma), exit 2 -->\n```sh\nsluice retry x # c\n```\n\
                  ```text\nnot a step\n```\n";
    let steps = parse_readme(readme);
    assert_eq!(steps.len(), 3);
    assert!(matches!(&steps[0].kind, Kind::File(path) if path == "a.yaml"));
    assert_eq!(steps[0].block, vec![(3, "name: a".to_owned())]);
    assert!(matches!(&steps[1].kind, Kind::Restore(path) if path == "a.yaml"));
    assert!(matches!(steps[2].kind, Kind::Run));
    assert_eq!(steps[2].exits.by_start, vec![("sluice retry".to_owned(), 1)]);
    assert_eq!(steps[2].exits.all, Some(2));
    assert_eq!(strip_comment("sluice retry x # c"), "sluice retry x");
    assert_eq!(strip_comment("echo '# kept' \"#too\" a#b"), "echo '# kept' \"#too\" a#b");
}

#[test]
#[should_panic(expected = "has no `<!-- tutorial: … -->` marker")]
fn a_block_without_a_marker_fails_the_test() {
    parse_readme("```sh\nsluice runs\n```\n");
}

#[test]
#[should_panic(expected = "say why")]
fn a_skip_says_why() {
    parse_readme("<!-- tutorial: skip -->\n```sh\nsluice runs\n```\n");
}
