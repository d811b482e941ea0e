//! Child jobs a running job spawns (fan-out), and the small JSON outputs jobs hand on.
//!
//! A job's children are written by its worker, in batches, to `sluice.spawns.…` before the
//! job's `succeeded` event, which carries how many there are; the coordinator reads them
//! when it applies that event. So no single message or record grows with the number of
//! children, and children of a failed attempt are never started.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::ids::RunId;
use crate::messages::Versioned;
use crate::retry::RetryPolicy;
use crate::spec::{JobSpec, check_name, validate_job};

/// Largest job output, as JSON text.
pub const OUTPUT_MAX_BYTES: usize = 64 * 1024;
/// Most children one job may spawn.
pub const CHILDREN_MAX: usize = 100_000;
/// Largest encoded spawn batch; a job's children are split into batches under this.
pub const SPAWN_BATCH_MAX_BYTES: usize = 256 * 1024;
/// Deepest nesting of children (a child's child's …), so job paths stay short keys.
pub const CHILD_DEPTH_MAX: usize = 8;

/// One child, as a job writes it (Rust: `ctx.spawn`; exec: a JSON line in
/// `SLUICE_SPAWN_FILE`). The fields of a YAML job, with its `name`, and no `needs`:
/// children run in parallel, and whatever needs the parent waits for all of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildSpec {
    pub name: String,
    pub run: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permanent_exit_codes: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_child_failures: Option<u32>,
}

impl ChildSpec {
    /// A child of kind `run` with no other settings.
    pub fn new(name: impl Into<String>, run: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            run: run.into(),
            description: None,
            command: None,
            config: None,
            pool: None,
            retry: None,
            timeout: None,
            permanent_exit_codes: Vec::new(),
            max_parallel: None,
            max_child_failures: None,
        }
    }

    /// The job definition the child runs by, consuming the child (no copies of its fields).
    pub fn into_job_spec(self) -> JobSpec {
        JobSpec {
            run: self.run,
            description: self.description,
            needs: Vec::new(),
            command: self.command,
            config: self.config,
            pool: self.pool,
            retry: self.retry,
            timeout: self.timeout,
            permanent_exit_codes: self.permanent_exit_codes,
            max_parallel: self.max_parallel,
            max_child_failures: self.max_child_failures,
            when: crate::spec::When::default(),
            // Children cannot add an image, resources or env: they inherit their parent's
            // (decision 15), which the coordinator puts in their job messages.
            image: None,
            resources: None,
            env: Default::default(),
        }
    }

    /// The job definition the child runs by.
    pub fn to_job_spec(&self) -> JobSpec {
        JobSpec {
            run: self.run.clone(),
            description: self.description.clone(),
            needs: Vec::new(),
            command: self.command.clone(),
            config: self.config.clone(),
            pool: self.pool.clone(),
            retry: self.retry.clone(),
            timeout: self.timeout,
            permanent_exit_codes: self.permanent_exit_codes.clone(),
            max_parallel: self.max_parallel,
            max_child_failures: self.max_child_failures,
            when: crate::spec::When::default(),
            // Children cannot add an image, resources or env: they inherit their parent's
            // (decision 15), which the coordinator puts in their job messages.
            image: None,
            resources: None,
            env: Default::default(),
        }
    }

    /// Every problem with this child, by the rules of a YAML job.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = check_name("child", &self.name) {
            problems.push(problem);
            return problems;
        }
        let mut spec = self.to_job_spec();
        if spec.run == crate::pod::POD_KIND {
            // A pod child runs its parent's image (it cannot name one): judged as present.
            spec.image = Some("inherited".into());
        }
        validate_job(&self.name, &spec, &IndexMap::new(), &mut problems);
        problems
    }
}

/// Why a set of children cannot be spawned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    #[error("{what} line {line}: {message}")]
    Line { what: String, line: usize, message: String },
    #[error("child `{name}` is invalid: {}", .problems.join("; "))]
    Invalid { name: String, problems: Vec<String> },
    #[error("two children are named `{0}`; each child of a job needs its own name")]
    Duplicate(String),
    #[error("{0} children spawned; the limit is {CHILDREN_MAX}")]
    TooMany(usize),
    #[error("children nest deeper than {CHILD_DEPTH_MAX} levels")]
    TooDeep,
}

/// Checks a job's children: each valid, names unique, not too many.
pub fn check_children(children: &[ChildSpec]) -> Result<(), SpawnError> {
    if children.len() > CHILDREN_MAX {
        return Err(SpawnError::TooMany(children.len()));
    }
    let mut seen = std::collections::HashSet::with_capacity(children.len());
    for child in children {
        let problems = child.problems();
        if !problems.is_empty() {
            return Err(SpawnError::Invalid { name: child.name.chars().take(64).collect(), problems });
        }
        if !seen.insert(child.name.as_str()) {
            return Err(SpawnError::Duplicate(child.name.clone()));
        }
    }
    Ok(())
}

/// Reads children written one JSON object per line (blank lines are skipped); `what`
/// names the source in errors.
pub fn parse_child_lines(text: &str, what: &str) -> Result<Vec<ChildSpec>, SpawnError> {
    let mut children = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > crate::limits::JOB_DEFINITION_MAX_BYTES {
            return Err(SpawnError::Line {
                what: what.to_owned(),
                line: index + 1,
                message: format!(
                    "the child's definition is {} bytes; the limit is {}",
                    line.len(),
                    crate::limits::JOB_DEFINITION_MAX_BYTES
                ),
            });
        }
        let child: ChildSpec = serde_json::from_str(line).map_err(|error| SpawnError::Line {
            what: what.to_owned(),
            line: index + 1,
            message: error.to_string(),
        })?;
        children.push(child);
        if children.len() > CHILDREN_MAX {
            return Err(SpawnError::TooMany(children.len()));
        }
    }
    check_children(&children)?;
    Ok(children)
}

/// The path of a child job: its parent's path, a dot, its name. Names have no dots, so a
/// path says where in the tree a job is.
pub fn child_path(parent: &str, name: &str) -> String {
    format!("{parent}.{name}")
}

/// The parent of a job path, if it is a child.
pub fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('.').map(|(parent, _)| parent)
}

/// How deep a job path is (0 for a workflow job).
pub fn depth_of(path: &str) -> usize {
    path.matches('.').count()
}

/// Checks an output's size; returns its JSON length.
pub fn check_output(output: &serde_json::Value) -> Result<usize, String> {
    let bytes = serde_json::to_vec(output).map_err(|error| format!("the output is not JSON: {error}"))?.len();
    if bytes > OUTPUT_MAX_BYTES {
        return Err(format!("the output is {bytes} bytes of JSON; the limit is {OUTPUT_MAX_BYTES}"));
    }
    Ok(bytes)
}

/// A batch of one attempt's children, on `sluice.spawns.<run>.<generation>.<attempt>.<job>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpawnBatch {
    pub schema_version: u32,
    pub run_id: RunId,
    pub job: String,
    pub attempt: u32,
    pub generation: u32,
    pub children: Vec<ChildSpec>,
}

impl Versioned for SpawnBatch {
    const WHAT: &'static str = "spawn batch";
    fn schema_version(&self) -> u32 {
        self.schema_version
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_children_and_errors_name_the_line() {
        let children = parse_child_lines(
            "{\"name\": \"s1\", \"run\": \"noop\"}\n\n{\"name\": \"s2\", \"run\": \"exec\", \"command\": [\"true\"]}\n",
            "spawn file",
        )
        .unwrap();
        assert_eq!(children.len(), 2);
        assert_eq!(children[1].command.as_deref(), Some(&["true".to_owned()][..]));

        let error = parse_child_lines("{\"name\": \"a\", \"run\": \"noop\"}\n{\"nme\": \"b\"}", "spawn file");
        let text = error.unwrap_err().to_string();
        assert!(text.starts_with("spawn file line 2: unknown field `nme`"), "{text}");

        let error = parse_child_lines("{\"name\": \"a.b\", \"run\": \"noop\"}", "spawn file").unwrap_err();
        assert!(error.to_string().contains("may only use letters, digits"), "{error}");

        let error = parse_child_lines("{\"name\": \"a\", \"run\": \"exec\"}", "spawn file").unwrap_err();
        assert!(error.to_string().contains("needs a `command:`"), "{error}");

        let twice = "{\"name\": \"a\", \"run\": \"noop\"}\n{\"name\": \"a\", \"run\": \"noop\"}";
        assert_eq!(parse_child_lines(twice, "f").unwrap_err(), SpawnError::Duplicate("a".into()));

        let error = parse_child_lines("{\"name\": \"a\", \"run\": \"noop\", \"needs\": [\"b\"]}", "f").unwrap_err();
        assert!(error.to_string().contains("unknown field `needs`"), "{error}");
    }

    #[test]
    fn paths_and_outputs() {
        assert_eq!(child_path("fan", "s1"), "fan.s1");
        assert_eq!(parent_of("fan.s1.x"), Some("fan.s1"));
        assert_eq!(parent_of("fan"), None);
        assert_eq!(depth_of("fan.s1.x"), 2);
        assert!(check_output(&serde_json::json!({"rows": 3})).is_ok());
        let big = serde_json::Value::String("x".repeat(OUTPUT_MAX_BYTES));
        assert!(check_output(&big).unwrap_err().contains("the limit is 65536"));
    }
}
