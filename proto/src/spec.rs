//! The YAML workflow spec: parsing (strict: unknown keys are errors) and validation (cycles,
//! unknown or duplicate dependencies, names, kinds, durations, placeholders).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;

use chrono_tz::Tz;
use indexmap::IndexMap;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::limits::{
    JOB_DEFINITION_MAX_BYTES, NAME_MAX_CHARS, PARAM_VALUE_MAX_BYTES, PARAMS_MAX, PARAMS_MAX_BYTES,
    RECORD_OVERHEAD_BYTES, RUN_RECORD_MAX_BYTES, WORKFLOW_EXPANDED_MAX_BYTES, WORKFLOW_JOBS_MAX,
    WORKFLOW_YAML_MAX_BYTES,
};
use crate::notify::{NotifyRule, check_rules};
use crate::placeholder;
use crate::pod::{EnvValue, POD_KIND, check_env, check_image, check_resources};
use crate::retry::RetryPolicy;
use crate::schedule::{Schedule, ScheduleSpec};
use crate::window::parse_zone;

/// Pool used when neither the job nor `defaults` names one.
pub const DEFAULT_POOL: &str = "default";
/// The kind that runs a command.
pub const EXEC_KIND: &str = "exec";
/// The kinds every stock worker (`sluice worker`, `sluice dev`) runs, sorted; Rust workers
/// may register more.
pub const STOCK_KINDS: [&str; 4] = ["exec", "fail", "noop", "sleep"];

/// A workflow: named jobs and what each needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// IANA zone windows are computed in (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Defaults for `{{params.NAME}}`; `--param NAME=VALUE` overrides.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub defaults: Defaults,
    /// What a job's final failure does to the rest of the run.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Most jobs of one run (children included) in a worker's hands at once; no limit
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// When the workflow runs by itself (`sluice schedule apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Who is told of what: targets the coordinator's `--notify-targets` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<NotifyRule>,
    /// Jobs in the order written.
    pub jobs: IndexMap<String, JobSpec>,
}

/// The run's failure policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Start nothing new: jobs not yet started are skipped, running ones finish, and the
    /// run ends `failed`.
    #[default]
    Stop,
    /// Only the failed job's dependents are skipped; independent branches run to the end,
    /// then the run ends `failed`.
    Continue,
}

/// Exit code an `exec` job uses to say "do not retry" (EX_CONFIG from sysexits.h).
pub const EXEC_PERMANENT_EXIT_CODE: i32 = 78;

/// Settings every job inherits unless it sets its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
}

/// One job of a workflow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job kind: `exec`, `noop`, `sleep`, `fail`, or one a Rust worker registered.
    pub run: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub needs: Vec<String>,
    /// For `exec`: the program and its arguments (no shell).
    #[serde(default, deserialize_with = "command_list")]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// For `exec`: exit codes that mean the failure is permanent (no further attempts),
    /// besides 78, which always does.
    #[serde(default)]
    pub permanent_exit_codes: Vec<i32>,
    /// Most of this job's children in a worker's hands at once; no limit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    /// How many of this job's children may fail (finally) with the job still completing.
    /// When set, a child's failure is the parent's to judge: it neither fails the run nor
    /// triggers `on_failure` by itself. Absent: any failed child fails the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_child_failures: Option<u32>,
    /// When the job runs, given how the jobs it needs ended (default `on_success`).
    #[serde(default, skip_serializing_if = "When::is_default")]
    pub when: When,
    /// For `pod`: the container image (it must match the pool's `--allow-image` patterns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// For `pod`: Kubernetes `ResourceRequirements` (`limits`, `requests`), verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<serde_json::Value>,
    /// For `pod`: environment variables, each a value (placeholders substituted) or
    /// `{secret: NAME}`, a secret of the job's pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
}

/// A job's trigger rule: what must have happened to the jobs it needs for it to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Runs once every job it needs completed; skipped as soon as one cannot.
    #[default]
    OnSuccess,
    /// Runs once every job it needs is finished and at least one of them failed; skipped
    /// when they are finished and none failed.
    OnFailure,
    /// Runs once every job it needs is finished, however they ended (cleanup, notify).
    Always,
    /// A value that is none of the above, kept so that validation names the job and the
    /// values (serde's own error would name neither); a validated workflow never has it.
    #[serde(untagged)]
    Unknown(String),
}

impl When {
    /// The values a workflow may give, as written.
    pub const VALUES: [&'static str; 3] = ["on_success", "on_failure", "always"];

    pub fn is_default(&self) -> bool {
        *self == Self::OnSuccess
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
            Self::Unknown(value) => value,
        }
    }
}

/// Why a workflow was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("workflow is {bytes} bytes; the limit is {WORKFLOW_YAML_MAX_BYTES}")]
    TooLarge { bytes: usize },
    #[error("workflow YAML is not valid: {0}")]
    Yaml(String),
    #[error("{}", render_problems(.workflow, .problems))]
    Invalid { workflow: String, problems: Vec<String> },
}

fn render_problems(workflow: &str, problems: &[String]) -> String {
    let mut out = format!("workflow `{workflow}` is invalid:");
    for problem in problems {
        out.push_str("\n  - ");
        out.push_str(problem);
    }
    out
}

/// Whether `name` can be a job, pool, workflow or param name (a NATS subject token and KV key).
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name is empty"));
    }
    if name.chars().count() > NAME_MAX_CHARS {
        return Err(format!(
            "{what} name `{}…` is longer than {NAME_MAX_CHARS} characters",
            name.chars().take(20).collect::<String>()
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{what} name `{name}` may only use letters, digits, `_` and `-`"));
    }
    Ok(())
}

/// The `name:` of a workflow's YAML, read without validating the rest: what listings show of
/// a submission no coordinator has checked yet. `None` when it is over the size limit, is
/// not YAML with a valid name, or has none.
pub fn workflow_name(yaml: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    if yaml.len() > WORKFLOW_YAML_MAX_BYTES {
        return None;
    }
    let named: Named = serde_saphyr::from_str(yaml).ok()?;
    check_name("workflow", &named.name).ok()?;
    Some(named.name)
}

impl WorkflowSpec {
    /// Parses and validates workflow YAML.
    /// The content hash a spec is stored under in [`crate::names::SPECS_BUCKET`]: SHA-256 of
    /// the YAML as submitted, in lowercase hex (64 characters).
    pub fn hash(yaml: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(yaml.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
    }

    pub fn parse(yaml: &str) -> Result<Self, SpecError> {
        if yaml.len() > WORKFLOW_YAML_MAX_BYTES {
            return Err(SpecError::TooLarge { bytes: yaml.len() });
        }
        let spec: Self = serde_saphyr::from_str(yaml).map_err(|error| SpecError::Yaml(error.to_string()))?;
        spec.validate()?;
        let record_bytes = spec.run_record_bytes(yaml.len());
        if record_bytes > RUN_RECORD_MAX_BYTES {
            let problem = format!(
                "a run's record would be up to {record_bytes} bytes (the YAML, the list of its {} job names and params); the limit is {RUN_RECORD_MAX_BYTES}: use fewer or shorter job names",
                spec.jobs.len()
            );
            return Err(SpecError::Invalid { workflow: spec.name.clone(), problems: vec![problem] });
        }
        Ok(spec)
    }

    /// A bound on a run record of this workflow: what grows with the input is its YAML, the
    /// list of its jobs and its params (at most [`PARAMS_MAX_BYTES`]); the rest fits in
    /// [`RECORD_OVERHEAD_BYTES`].
    pub fn run_record_bytes(&self, yaml_bytes: usize) -> usize {
        let names: usize = self.jobs.keys().map(|name| name.len() + 2).sum();
        // `queued_at_start`: a hex digit per four jobs.
        let queued_at_start = self.jobs.len().div_ceil(4) + 4;
        yaml_bytes + names + queued_at_start + PARAMS_MAX_BYTES + PARAMS_MAX * 8 + RECORD_OVERHEAD_BYTES
    }

    /// Every problem at once, so a user fixes them in one round.
    pub fn validate(&self) -> Result<(), SpecError> {
        let mut problems = Vec::new();
        if let Err(problem) = check_name("workflow", &self.name) {
            problems.push(problem);
        }
        if let Some(zone) = &self.timezone
            && let Err(error) = parse_zone(zone)
        {
            problems.push(format!("timezone: {error}"));
        }
        for name in self.params.keys() {
            if let Err(problem) = check_name("param", name) {
                problems.push(problem);
            }
        }
        self.validate_defaults(&mut problems);
        if let Some(schedule) = &self.schedule
            && let Err(problem) = Schedule::from_spec(schedule, self.timezone.as_deref())
        {
            problems.push(format!("schedule: {problem}"));
        }
        problems.extend(check_rules(&self.notify));
        if self.max_parallel == Some(0) {
            problems.push("max_parallel must be at least 1 (leave it out for no limit)".into());
        }
        if self.jobs.is_empty() {
            problems.push("the workflow has no jobs: add at least one under `jobs:`".into());
        }
        if self.jobs.len() > WORKFLOW_JOBS_MAX {
            problems.push(format!("the workflow has {} jobs; the limit is {WORKFLOW_JOBS_MAX}", self.jobs.len()));
        }
        for (name, job) in &self.jobs {
            validate_job(name, job, &self.jobs, &mut problems);
        }
        check_expanded_sizes(&self.jobs, &mut problems);
        if problems.is_empty()
            && let Some(cycle) = self.find_cycle()
        {
            problems.push(format!("dependency cycle: {} (each job needs the next)", cycle.join(" -> ")));
        }
        if problems.is_empty() { Ok(()) } else { Err(SpecError::Invalid { workflow: self.name.clone(), problems }) }
    }

    fn validate_defaults(&self, problems: &mut Vec<String>) {
        if let Some(pool) = &self.defaults.pool
            && let Err(problem) = check_name("defaults.pool", pool)
        {
            problems.push(problem);
        }
        if let Some(retry) = &self.defaults.retry
            && let Err(problem) = retry.check()
        {
            problems.push(format!("defaults: {problem}"));
        }
        if self.defaults.timeout.is_some_and(|timeout| timeout.as_duration().is_zero()) {
            problems.push("defaults.timeout must be longer than 0s".into());
        }
    }

    /// A dependency cycle as job names, first repeated at the end, if there is one.
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        let mut graph = DiGraph::<&str, ()>::new();
        let nodes: HashMap<&str, NodeIndex> =
            self.jobs.keys().map(|name| (name.as_str(), graph.add_node(name.as_str()))).collect();
        for (name, job) in &self.jobs {
            for need in &job.needs {
                if let Some(&target) = nodes.get(need.as_str()) {
                    graph.add_edge(nodes[name.as_str()], target, ());
                }
            }
        }
        let components = petgraph::algo::tarjan_scc(&graph);
        let component = components
            .into_iter()
            .filter(|component| component.len() > 1)
            .min_by_key(|component| component.iter().map(|node| node.index()).min())?;
        let members: HashSet<NodeIndex> = component.iter().copied().collect();
        let start = *component.iter().min_by_key(|node| node.index())?;
        // Breadth-first search inside the component for the shortest way back to `start`.
        let mut came_from: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            let mut successors: Vec<NodeIndex> = graph.neighbors(node).filter(|next| members.contains(next)).collect();
            successors.sort();
            for next in successors {
                if next == start {
                    let mut path = vec![graph[start].to_owned()];
                    let mut at = node;
                    let mut reversed = Vec::new();
                    while at != start {
                        reversed.push(graph[at].to_owned());
                        at = came_from[&at];
                    }
                    path.extend(reversed.into_iter().rev());
                    path.push(graph[start].to_owned());
                    return Some(path);
                }
                if let std::collections::hash_map::Entry::Vacant(entry) = came_from.entry(next) {
                    entry.insert(node);
                    queue.push_back(next);
                }
            }
        }
        None
    }

    /// Job names so that each comes after everything it needs, otherwise in written order.
    /// Valid specs only (no cycles).
    pub fn topological_order(&self) -> Vec<String> {
        let index: HashMap<&str, usize> = self.jobs.keys().enumerate().map(|(i, name)| (name.as_str(), i)).collect();
        let mut waiting_on: Vec<usize> = self.jobs.values().map(|job| job.needs.len()).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); self.jobs.len()];
        for (i, job) in self.jobs.values().enumerate() {
            for need in &job.needs {
                if let Some(&n) = index.get(need.as_str()) {
                    dependents[n].push(i);
                }
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> =
            waiting_on.iter().enumerate().filter(|(_, count)| **count == 0).map(|(i, _)| Reverse(i)).collect();
        let mut order = Vec::with_capacity(self.jobs.len());
        while let Some(Reverse(i)) = ready.pop() {
            order.push(self.jobs.get_index(i).map(|(name, _)| name.clone()).unwrap_or_default());
            for &dependent in &dependents[i] {
                waiting_on[dependent] -= 1;
                if waiting_on[dependent] == 0 {
                    ready.push(Reverse(dependent));
                }
            }
        }
        order
    }

    /// The zone windows are computed in.
    /// The zone windows are computed in: the workflow's `timezone`, else its schedule's (one
    /// zone for scheduled runs, backfills and audits alike), else UTC.
    pub fn zone(&self) -> Tz {
        self.timezone
            .as_deref()
            .or_else(|| self.schedule.as_ref().and_then(|schedule| schedule.timezone.as_deref()))
            .and_then(|zone| parse_zone(zone).ok())
            .unwrap_or(chrono_tz::UTC)
    }

    pub fn pool_of(&self, job: &JobSpec) -> String {
        job.pool.clone().or_else(|| self.defaults.pool.clone()).unwrap_or_else(|| DEFAULT_POOL.to_owned())
    }

    pub fn retry_of(&self, job: &JobSpec) -> RetryPolicy {
        job.retry.clone().or_else(|| self.defaults.retry.clone()).unwrap_or_default()
    }

    pub fn timeout_of(&self, job: &JobSpec) -> Option<HumanDuration> {
        job.timeout.or(self.defaults.timeout)
    }

    /// The params a run gets: the workflow's defaults overridden by `overrides`, checked so
    /// every `{{params.NAME}}` a job uses has a value.
    pub fn resolve_params(&self, overrides: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, SpecError> {
        let mut params = self.params.clone();
        params.extend(overrides.iter().map(|(key, value)| (key.clone(), value.clone())));
        let mut problems = Vec::new();
        if params.len() > PARAMS_MAX {
            problems.push(format!("{} params given; the limit is {PARAMS_MAX}", params.len()));
        }
        for (name, value) in &params {
            if value.len() > PARAM_VALUE_MAX_BYTES {
                problems.push(format!("param `{name}` is {} bytes; the limit is {PARAM_VALUE_MAX_BYTES}", value.len()));
            }
        }
        let total: usize = params.iter().map(|(name, value)| name.len() + value.len()).sum();
        if total > PARAMS_MAX_BYTES {
            problems.push(format!("the params are {total} bytes together; the limit is {PARAMS_MAX_BYTES}"));
        }
        for name in overrides.keys() {
            if let Err(problem) = check_name("param", name) {
                problems.push(problem);
            }
        }
        for (name, job) in &self.jobs {
            for arg in job.command.iter().flatten() {
                if let Err(error) = placeholder::check(arg, Some(&params)) {
                    problems.push(format!("job `{name}`: {error}"));
                }
            }
        }
        if problems.is_empty() { Ok(params) } else { Err(SpecError::Invalid { workflow: self.name.clone(), problems }) }
    }
}

/// The size of each job's definition, and of all of them, once YAML aliases are expanded:
/// a small YAML can alias one `config` into megabytes, and every job message carries its
/// job's definition.
fn check_expanded_sizes(jobs: &IndexMap<String, JobSpec>, problems: &mut Vec<String>) {
    let mut total = 0usize;
    for (name, job) in jobs {
        let bytes = definition_bytes(job);
        total = total.saturating_add(bytes);
        if bytes > JOB_DEFINITION_MAX_BYTES {
            problems.push(format!(
                "job `{name}`: its definition is {bytes} bytes once YAML aliases are expanded, {} over the limit of {JOB_DEFINITION_MAX_BYTES}",
                bytes - JOB_DEFINITION_MAX_BYTES
            ));
        }
        if total > WORKFLOW_EXPANDED_MAX_BYTES {
            problems.push(format!(
                "the jobs' definitions pass {WORKFLOW_EXPANDED_MAX_BYTES} bytes together once YAML aliases are expanded (at job `{name}`)"
            ));
            return;
        }
    }
}

/// A job definition's size as it travels (its JSON form).
pub fn definition_bytes(job: &JobSpec) -> usize {
    serde_json::to_vec(job).map(|bytes| bytes.len()).unwrap_or(usize::MAX)
}

pub(crate) fn validate_job(name: &str, job: &JobSpec, jobs: &IndexMap<String, JobSpec>, problems: &mut Vec<String>) {
    if let Err(problem) = check_name("job", name) {
        problems.push(problem);
    }
    let mut problem = |text: String| problems.push(format!("job `{name}`: {text}"));
    if let Err(text) = check_name("kind (`run:`)", &job.run) {
        problem(text);
    }
    let is_pod = job.run == POD_KIND;
    match (&job.command, job.run == EXEC_KIND) {
        (None, true) => problem("`run: exec` needs a `command:` list, e.g. [python3, etl.py, \"{{start}}\"]".into()),
        (Some(command), true) if command.is_empty() => problem("`command:` is empty".into()),
        (Some(command), false) if is_pod && command.is_empty() => {
            problem("`command:` is empty (leave it out to run the image's entrypoint)".into())
        }
        (Some(_), false) if is_pod => {}
        // Only `exec` runs a command, so a kind given one is most likely a guess (`shell`).
        (Some(_), false) if !STOCK_KINDS.contains(&job.run.as_str()) => problem(format!(
            "unknown kind `{}` (`run:`): a `command:` runs with `run: exec`; the stock kinds are {}",
            job.run,
            STOCK_KINDS.join(", ")
        )),
        (Some(_), false) => problem(format!("`command:` is only used by `run: exec`, not by `run: {}`", job.run)),
        _ => {}
    }
    for arg in job.command.iter().flatten() {
        if let Err(error) = placeholder::check(arg, None) {
            problem(error.to_string());
        }
    }
    validate_pod_fields(job, is_pod, &mut problem);
    if let Some(pool) = &job.pool
        && let Err(text) = check_name("pool", pool)
    {
        problem(text);
    }
    if let Some(retry) = &job.retry
        && let Err(text) = retry.check()
    {
        problem(text);
    }
    if job.timeout.is_some_and(|timeout| timeout.as_duration().is_zero()) {
        problem("timeout must be longer than 0s".into());
    }
    if job.max_parallel == Some(0) {
        problem("max_parallel must be at least 1 (leave it out for no limit)".into());
    }
    if let Some(limit) = job.max_child_failures
        && limit as usize > crate::spawn::CHILDREN_MAX
    {
        problem(format!(
            "max_child_failures: {limit} is more than a job may spawn ({} children)",
            crate::spawn::CHILDREN_MAX
        ));
    }
    if !job.permanent_exit_codes.is_empty() && job.run != EXEC_KIND {
        problem("`permanent_exit_codes` is only used by `run: exec`".into());
    }
    for code in &job.permanent_exit_codes {
        if !(1..=255).contains(code) {
            problem(format!("permanent_exit_codes: {code} is not an exit code (1 to 255)"));
        }
    }
    match &job.when {
        When::Unknown(value) => {
            problem(format!("`when: {value}` is not a trigger rule; use one of {}", When::VALUES.join(", ")))
        }
        // It could never run: nothing it needs can fail.
        When::OnFailure if job.needs.is_empty() => {
            problem("`when: on_failure` runs after a job it needs failed, but it needs none: add `needs:`".into())
        }
        _ => {}
    }
    let mut seen = HashSet::new();
    for need in &job.needs {
        if need == name {
            problem("needs itself".into());
        } else if !seen.insert(need) {
            problem(format!("lists `{need}` twice in needs"));
        } else if !jobs.contains_key(need) {
            problem(format!("needs `{need}`, which is not a job of this workflow{}", suggestion(need, jobs.keys())));
        }
    }
}

/// `image`, `resources` and `env`: required, checked, or refused where only `pod` uses them.
fn validate_pod_fields(job: &JobSpec, is_pod: bool, problem: &mut impl FnMut(String)) {
    match (&job.image, is_pod) {
        (None, true) => problem("`run: pod` needs an `image:`, e.g. ghcr.io/acme/etl:1.4".into()),
        (Some(image), true) => check_image(image).into_iter().for_each(&mut *problem),
        (Some(_), false) => problem(format!("`image:` is only used by `run: pod`, not by `run: {}`", job.run)),
        (None, false) => {}
    }
    match (&job.resources, is_pod) {
        (Some(resources), true) => check_resources(resources).into_iter().for_each(&mut *problem),
        (Some(_), false) => problem(format!("`resources:` is only used by `run: pod`, not by `run: {}`", job.run)),
        (None, _) => {}
    }
    if !job.env.is_empty() && !is_pod {
        problem(format!("`env:` is only used by `run: pod`, not by `run: {}`", job.run));
    }
    check_env(&job.env).into_iter().for_each(problem);
}

/// `command:` as a list; a string gets an error that says so (it would not go through a
/// shell, so splitting it here would only guess).
fn command_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Vec<String>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of the program and its arguments")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self)
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
            let words: Vec<String> = text.split_whitespace().map(|word| format!("{word:?}")).collect();
            Err(E::custom(format!(
                "`command:` must be a list of the program and its arguments, e.g. [{}], not the string {text:?} (no shell runs it)",
                words.join(", ")
            )))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut args = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(256));
            while let Some(arg) = seq.next_element::<String>()? {
                args.push(arg);
            }
            Ok(Some(args))
        }
    }
    deserializer.deserialize_option(Visitor)
}

/// ` (did you mean `x`?)` for a near miss.
fn suggestion<'a>(wrong: &str, candidates: impl Iterator<Item = &'a String>) -> String {
    candidates
        .filter(|candidate| edit_distance(wrong, candidate) <= 2)
        .min_by_key(|candidate| edit_distance(wrong, candidate))
        .map(|candidate| format!(" (did you mean `{candidate}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            current.push((previous[j] + usize::from(ca != *cb)).min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

impl WorkflowSpec {
    /// What a rerun with `new` (`retry --spec`, `dlq replay --spec`) would change that it may
    /// not, one sentence each (empty: the rerun may use it). Only the definitions (`run`,
    /// `command`, `config`, `pool`, `retry`, `timeout`, exit codes, limits) of the jobs that
    /// run again (`reruns`) may change, and descriptions; adding or removing jobs, changing
    /// what a job needs, and changing the workflow's own settings are refused, naming them.
    pub fn rerun_changes(&self, new: &WorkflowSpec, reruns: impl Fn(&str) -> bool) -> Vec<String> {
        let mut problems = Vec::new();
        if new.name != self.name {
            problems.push(format!("the run's workflow is `{}`, the new spec's `{}`", self.name, new.name));
        }
        let settings = [
            ("timezone", self.timezone != new.timezone),
            ("params", self.params != new.params),
            ("defaults", self.defaults != new.defaults),
            ("on_failure", self.on_failure != new.on_failure),
            ("max_parallel", self.max_parallel != new.max_parallel),
            ("schedule", self.schedule != new.schedule),
        ];
        let changed: Vec<&str> = settings.iter().filter(|(_, changed)| *changed).map(|(name, _)| *name).collect();
        if !changed.is_empty() {
            problems.push(format!("it changes the workflow's {}", quoted(&changed)));
        }
        let added: Vec<&str> =
            new.jobs.keys().filter(|name| !self.jobs.contains_key(*name)).map(String::as_str).collect();
        if !added.is_empty() {
            problems.push(format!("it adds {}", jobs_named(&added)));
        }
        let removed: Vec<&str> =
            self.jobs.keys().filter(|name| !new.jobs.contains_key(*name)).map(String::as_str).collect();
        if !removed.is_empty() {
            problems.push(format!("it removes {}", jobs_named(&removed)));
        }
        let (mut needs, mut kept) = (Vec::new(), Vec::new());
        for (name, old) in &self.jobs {
            let Some(job) = new.jobs.get(name) else { continue };
            if job.needs != old.needs {
                needs.push(name.as_str());
            } else if !reruns(name) && definition(job) != definition(old) {
                kept.push(name.as_str());
            }
        }
        if !needs.is_empty() {
            let verb = if needs.len() == 1 { "needs" } else { "need" };
            problems.push(format!("it changes what {} {verb}", jobs_named(&needs)));
        }
        if !kept.is_empty() {
            let verb = if kept.len() == 1 { "does" } else { "do" };
            problems.push(format!("it changes {}, which {verb} not run again", jobs_named(&kept)));
        }
        problems
    }
}

/// A job's definition as a rerun compares it: what it runs, not what it needs or says.
fn definition(job: &JobSpec) -> JobSpec {
    JobSpec { needs: Vec::new(), description: None, ..job.clone() }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", ")
}

fn jobs_named(names: &[&str]) -> String {
    let word = if names.len() == 1 { "job" } else { "jobs" };
    format!("{word} {}", quoted(names))
}

impl fmt::Display for WorkflowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workflow `{}` ({} jobs)", self.name, self.jobs.len())
    }
}

#[cfg(test)]
mod tests;
