//! The container image (issue 13): no image can be built on this machine (no Docker), so
//! - the Dockerfile's rules are checked by parsing it (multi-stage, bases pinned by digest,
//!   `--locked`, a numeric unprivileged runtime user, exec-form entrypoint, the build context
//!   without `target/`);
//! - the binary runs the way the image runs it: as uid 10001 (when the test is root; as the
//!   current unprivileged user otherwise), with no HOME, an unwritable working directory `/`
//!   and nothing in the environment but PATH and the NATS URL. A coordinator, a worker and
//!   `submit --wait` run a workflow whose exec job checks the uid it runs as.
//!
//! The binary is this profile's build of `sluice`, not a release build: `make test` does not
//! spend minutes on a second, optimised build, and the profile changes nothing about which
//! paths or privileges the binary needs.

// A failing run prints its processes' logs (clippy.toml bans these macros in `sluice`).
#![allow(clippy::disallowed_macros)]

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The runtime user the Dockerfile creates (and Kubernetes' runAsUser in deploy/).
const IMAGE_UID: u32 = 10001;
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
}

/// One Dockerfile instruction: keyword (upper case) and its arguments, continuations joined.
#[derive(Debug, Clone, PartialEq)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Parses a Dockerfile: comments and blank lines dropped, `\` continuations joined (comment
/// lines inside a continuation are skipped, as BuildKit does).
fn parse(text: &str) -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        current.push_str(body.trim());
        current.push(' ');
        if !continues {
            let line = std::mem::take(&mut current);
            let line = line.trim();
            if let Some((keyword, args)) = line.split_once(char::is_whitespace) {
                instructions.push(Instruction { keyword: keyword.to_uppercase(), args: args.trim().to_owned() });
            } else if !line.is_empty() {
                instructions.push(Instruction { keyword: line.to_uppercase(), args: String::new() });
            }
        }
    }
    instructions
}

/// A build stage: its base image (ARG defaults substituted), name and instructions.
#[derive(Debug)]
struct Stage {
    image: String,
    name: Option<String>,
    body: Vec<Instruction>,
}

fn stages(instructions: &[Instruction]) -> Vec<Stage> {
    let mut args = HashMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions {
        match instruction.keyword.as_str() {
            "ARG" if stages.is_empty() => {
                if let Some((name, value)) = instruction.args.split_once('=') {
                    args.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
            "FROM" => {
                let words: Vec<&str> = instruction.args.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let mut image = words.first().copied().unwrap_or_default().to_owned();
                for (name, value) in &args {
                    image = image.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
                }
                let name = match words.as_slice() {
                    [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
                    _ => None,
                };
                stages.push(Stage { image, name, body: Vec::new() });
            }
            _ => {
                if let Some(stage) = stages.last_mut() {
                    stage.body.push(instruction.clone());
                }
            }
        }
    }
    stages
}

/// Every rule the Dockerfile keeps; the reasons it breaks them, empty when it keeps them all.
fn broken_rules(dockerfile: &str, dockerignore: &str) -> Vec<String> {
    let mut broken = Vec::new();
    let stages = stages(&parse(dockerfile));
    if stages.len() < 2 {
        broken.push(format!("not multi-stage: {} stage(s)", stages.len()));
    }
    let names: Vec<&str> = stages.iter().filter_map(|stage| stage.name.as_deref()).collect();
    for stage in &stages {
        // A stage built FROM an earlier one inherits that one's pin.
        if names.contains(&stage.image.as_str()) {
            continue;
        }
        if !pinned(&stage.image) {
            broken.push(format!("base image not pinned by tag and digest: {}", stage.image));
        }
    }
    let releases: Vec<&str> = stages
        .iter()
        .filter_map(|stage| {
            ["bookworm", "trixie", "bullseye"].into_iter().find(|release| stage.image.contains(release))
        })
        .collect();
    if releases.windows(2).any(|pair| pair[0] != pair[1]) {
        broken.push(format!("stages on different Debian releases (glibc mismatch): {releases:?}"));
    }
    let builds: Vec<&Instruction> = stages
        .iter()
        .flat_map(|stage| &stage.body)
        .filter(|instruction| instruction.keyword == "RUN" && instruction.args.contains("cargo build"))
        .collect();
    if builds.is_empty() || !builds.iter().all(|run| run.args.contains("--locked") && run.args.contains("--release")) {
        broken.push("no `cargo build --locked --release`".to_owned());
    }
    match stages.last() {
        None => broken.push("no stage".to_owned()),
        Some(runtime) => {
            if runtime.body.iter().any(|instruction| instruction.keyword == "RUN" && instruction.args.contains("cargo"))
            {
                broken.push("the runtime stage runs cargo (the toolchain must stay in the build stage)".to_owned());
            }
            if !runtime.body.iter().any(|i| i.keyword == "COPY" && i.args.starts_with("--from=")) {
                broken.push("the runtime stage copies nothing from the build stage".to_owned());
            }
            match runtime.body.iter().rev().find(|instruction| instruction.keyword == "USER") {
                None => broken.push("the runtime stage has no USER: it would run as root".to_owned()),
                Some(user) => {
                    let uid = user.args.split(':').next().unwrap_or_default();
                    match uid.parse::<u32>() {
                        Ok(0) => broken.push("the runtime USER is root (uid 0)".to_owned()),
                        Ok(_) => {}
                        // runAsNonRoot can only verify a numeric uid.
                        Err(_) => broken.push(format!("the runtime USER is not a numeric uid: {}", user.args)),
                    }
                }
            }
            match runtime.body.iter().rev().find(|instruction| instruction.keyword == "ENTRYPOINT") {
                Some(entrypoint) if serde_json::from_str::<Vec<String>>(&entrypoint.args).is_ok() => {}
                Some(entrypoint) => broken.push(format!("ENTRYPOINT is not exec form (JSON): {}", entrypoint.args)),
                None => broken.push("no ENTRYPOINT".to_owned()),
            }
        }
    }
    let ignored: Vec<&str> = dockerignore.lines().map(str::trim).collect();
    for needed in ["target", ".tools"] {
        if !ignored.contains(&needed) {
            broken.push(format!(".dockerignore does not exclude {needed}"));
        }
    }
    broken
}

/// `name:tag@sha256:<64 hex>`: the tag says what it is meant to be, the digest what it is.
fn pinned(image: &str) -> bool {
    let Some((reference, digest)) = image.split_once("@sha256:") else {
        return false;
    };
    let tagged = reference.rsplit('/').next().is_some_and(|last| last.contains(':'));
    tagged && digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

#[test]
fn the_dockerfile_keeps_its_rules() {
    let broken = broken_rules(&repo_file("Dockerfile"), &repo_file(".dockerignore"));
    assert!(broken.is_empty(), "Dockerfile breaks its rules:\n{}", broken.join("\n"));
    let stages = stages(&parse(&repo_file("Dockerfile")));
    let runtime = stages.last().unwrap();
    let user = runtime.body.iter().rev().find(|i| i.keyword == "USER").unwrap();
    assert_eq!(user.args, format!("{IMAGE_UID}:{IMAGE_UID}"), "the uid deploy/ and this test run as");
}

/// The checker catches each kind of break (so the test above can fail).
#[test]
fn the_rule_check_names_each_break() {
    let good = repo_file("Dockerfile");
    let ignore = "target\n.tools\n";
    assert_eq!(broken_rules(&good, ignore), Vec::<String>::new());
    let cases = [
        (good.replace("@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082", ""), "not pinned"),
        (good.replace("USER 10001:10001", "USER 0"), "root"),
        (good.replace("USER 10001:10001", "USER sluice"), "numeric"),
        (good.replace("USER 10001:10001", ""), "no USER"),
        (good.replace("--locked ", ""), "--locked"),
        (good.replace(r#"ENTRYPOINT ["/usr/local/bin/sluice"]"#, "ENTRYPOINT /usr/local/bin/sluice"), "exec form"),
        (good.replace("debian:bookworm-slim", "debian:trixie-slim"), "different Debian releases"),
    ];
    for (dockerfile, expected) in cases {
        let broken = broken_rules(&dockerfile, ignore);
        assert!(
            broken.iter().any(|reason| reason.contains(expected)),
            "expected a break naming {expected:?}: {broken:?}"
        );
    }
    assert!(broken_rules(&good, ".tools\n").iter().any(|reason| reason.contains("exclude target")));
    // A single-stage file.
    let single = "FROM rust:1.95@sha256:".to_owned()
        + &"a".repeat(64)
        + "\nRUN cargo build --locked --release\nUSER 1\nENTRYPOINT [\"x\"]\n";
    assert!(broken_rules(&single, ignore).iter().any(|reason| reason.contains("multi-stage")));
}

/// Children killed and reaped when the test ends, however it ends.
struct Processes(Vec<(String, Child, PathBuf)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (name, child, log) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- {name}\n{}", std::fs::read_to_string(log).unwrap_or_default());
            }
        }
    }
}

/// A field of a running process's /proc status (`Uid:`, `Groups:`), without its name.
fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with(field)).unwrap();
    line[field.len()..].trim().to_owned()
}

#[test]
fn the_binary_runs_a_workflow_as_an_unprivileged_user_without_home_or_writable_paths() {
    // Root (CI and this machine) can switch to the image's uid; anyone else already is
    // unprivileged and runs as themself.
    let own_uid = std::fs::metadata("/proc/self").unwrap().uid();
    let is_root = own_uid == 0;
    let uid = if is_root { IMAGE_UID } else { own_uid };
    assert_ne!(uid, 0);
    let server = sluice_testkit::Server::temporary().unwrap();

    // A directory the user can read: the binary and the workflow (a test's temp dir is 0700).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let binary = dir.path().join("sluice");
    std::fs::copy(sluice_testkit::find_sluice(None).unwrap(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let workflow = dir.path().join("uid.yaml");
    // Exit 78 is a permanent failure: a wrong uid ends the run at once instead of retrying.
    let check = format!(r#"[ "$(id -u)" = {uid} ] && [ ! -w / ] && [ ! -d "$HOME" ] || exit 78"#);
    let yaml = serde_json::json!({
        "name": "uid-check",
        "jobs": {"whoami": {"run": "exec", "command": ["sh", "-c", check]}},
    });
    std::fs::write(&workflow, serde_json::to_string(&yaml).unwrap()).unwrap();
    std::fs::set_permissions(&workflow, std::fs::Permissions::from_mode(0o644)).unwrap();

    let logs = tempfile::tempdir().unwrap();
    let command = |args: &[&str]| {
        let mut command = Command::new(&binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .env("SLUICE_NATS_URL", server.url())
            .current_dir("/")
            .stdin(Stdio::null());
        if is_root {
            // std drops root's supplementary groups when it sets the uid as root.
            command.uid(IMAGE_UID).gid(IMAGE_UID);
        }
        command
    };
    let mut processes = Processes(Vec::new());
    for (name, args) in [("coordinator", &["coordinator"][..]), ("worker", &["worker"][..])] {
        let log = logs.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command(args).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
        processes.0.push((name.to_owned(), child, log));
    }

    let log = logs.path().join("submit.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut submit = command(&["submit", &workflow.display().to_string(), "--wait"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = submit.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < RUN_TIMEOUT, "submit --wait did not end within {RUN_TIMEOUT:?}");
        // The coordinator and worker must still be up (and are the uid's).
        for (name, child, _) in &mut processes.0 {
            assert!(child.try_wait().unwrap().is_none(), "{name} exited early");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "the run did not succeed as uid {uid}: {status}\n{output}");
    assert!(output.contains("succeeded"), "{output}");
    for (name, child, _) in &processes.0 {
        let uids = proc_status(child.id(), "Uid:");
        assert_eq!(uids.split_whitespace().next(), Some(uid.to_string().as_str()), "{name} runs as uid {uid}: {uids}");
        if is_root {
            assert_eq!(proc_status(child.id(), "Groups:"), "", "{name} keeps no supplementary group of root");
        }
    }
}
