use super::*;

fn invalid(yaml: &str) -> String {
    WorkflowSpec::parse(yaml).expect_err("should be refused").to_string()
}

const ETL: &str = r#"
name: air-quality-daily
timezone: America/Los_Angeles
params: { region: eu }
defaults:
  pool: default
  retry: { max_attempts: 5, backoff: exponential, initial: 10s, max: 10m }
  timeout: 30m
jobs:
  ingest:
    run: exec
    command: [python3, -m, etl.main, ingest, "{{start}}", "{{end}}", "{{params.region}}"]
  calibrate:
    needs: [ingest]
    run: calibrate
    config: { model: v3, threshold: 0.5 }
  report:
    needs: [calibrate]
    run: exec
    pool: highmem
    timeout: 5m
    command: [python3, -m, etl.main, report]
"#;

#[test]
fn parses_the_design_example_with_effective_settings() {
    let spec = WorkflowSpec::parse(ETL).unwrap();
    assert_eq!(spec.name, "air-quality-daily");
    assert_eq!(spec.jobs.keys().collect::<Vec<_>>(), ["ingest", "calibrate", "report"]);
    let report = &spec.jobs["report"];
    assert_eq!(spec.pool_of(report), "highmem");
    assert_eq!(spec.pool_of(&spec.jobs["ingest"]), "default");
    assert_eq!(spec.retry_of(report).max_attempts, 5);
    assert_eq!(spec.timeout_of(report).unwrap().to_string(), "5m");
    assert_eq!(spec.jobs["calibrate"].config.as_ref().unwrap()["model"], "v3");
    assert_eq!(spec.zone().name(), "America/Los_Angeles");
    assert_eq!(spec.resolve_params(&BTreeMap::new()).unwrap()["region"], "eu");
}

#[test]
fn unknown_keys_are_errors_not_silently_dropped() {
    let message = invalid("name: w\njobs:\n  a: { run: noop }\n  b: { run: noop, need: [a] }\n");
    assert!(message.contains("unknown field `need`"), "{message}");
}

#[test]
fn a_cycle_is_printed_as_a_path() {
    let message =
        invalid("name: w\njobs:\n  x: { run: noop, needs: [y] }\n  y: { run: noop, needs: [x] }\n  z: { run: noop }\n");
    assert!(message.contains("dependency cycle: x -> y -> x"), "{message}");
    let longer = invalid(
        "name: w\njobs:\n  a: { run: noop, needs: [c] }\n  b: { run: noop, needs: [a] }\n  c: { run: noop, needs: [b] }\n",
    );
    assert!(longer.contains("a -> c -> b -> a"), "{longer}");
}

#[test]
fn dependency_mistakes_name_the_jobs() {
    let message = invalid(
        "name: w\njobs:\n  ingest: { run: noop }\n  load: { run: noop, needs: [ingset, load, ingest, ingest] }\n",
    );
    assert!(
        message.contains("job `load`: needs `ingset`, which is not a job of this workflow (did you mean `ingest`?)"),
        "{message}"
    );
    assert!(message.contains("job `load`: needs itself"), "{message}");
    assert!(message.contains("job `load`: lists `ingest` twice"), "{message}");
}

#[test]
fn duplicate_job_names_are_refused() {
    let message = invalid("name: w\njobs:\n  a: { run: noop }\n  a: { run: noop }\n");
    assert!(message.to_lowercase().contains("duplicate"), "{message}");
}

#[test]
fn empty_workflows_and_bad_fields_are_refused() {
    assert!(invalid("name: w\njobs: {}\n").contains("has no jobs"));
    let message = invalid("name: w\njobs:\n  a: { run: exec }\n  b: { run: noop, command: [x] }\n");
    assert!(message.contains("job `a`: `run: exec` needs a `command:`"), "{message}");
    assert!(message.contains("job `b`: `command:` is only used by `run: exec`"), "{message}");
    let duration = invalid("name: w\njobs:\n  c: { run: noop, timeout: 10 }\n");
    assert!(duration.contains("invalid duration `10`"), "{duration}");
    let names = invalid("name: w\njobs:\n  \"a.b\": { run: noop }\n");
    assert!(names.contains("job name `a.b` may only use"), "{names}");
    let retry = invalid("name: w\ndefaults: { retry: { max_attempts: 0 } }\njobs:\n  a: { run: noop }\n");
    assert!(retry.contains("max_attempts must be at least 1"), "{retry}");
    let zone = invalid("name: w\ntimezone: Mars/Base\njobs:\n  a: { run: noop }\n");
    assert!(zone.contains("unknown time zone `Mars/Base`"), "{zone}");
    let placeholder = invalid("name: w\njobs:\n  a: { run: exec, command: [echo, \"{{strat}}\"] }\n");
    assert!(placeholder.contains("unknown placeholder `{{strat}}`"), "{placeholder}");
}

#[test]
fn max_child_failures_is_bounded_by_the_children_a_job_may_spawn() {
    let spec = WorkflowSpec::parse("name: w\njobs:\n  a: { run: noop, max_child_failures: 3 }\n").unwrap();
    assert_eq!(spec.jobs["a"].max_child_failures, Some(3));
    let message = invalid("name: w\njobs:\n  a: { run: noop, max_child_failures: 100001 }\n");
    assert!(
        message.contains("job `a`: max_child_failures: 100001 is more than a job may spawn (100000 children)"),
        "{message}"
    );
    let negative = invalid("name: w\njobs:\n  a: { run: noop, max_child_failures: -1 }\n");
    assert!(negative.contains("max_child_failures"), "{negative}");
}

#[test]
fn missing_params_are_named() {
    let spec =
        WorkflowSpec::parse("name: w\njobs:\n  a: { run: exec, command: [echo, \"{{params.day}}\"] }\n").unwrap();
    let message = spec.resolve_params(&BTreeMap::new()).unwrap_err().to_string();
    assert!(message.contains("`{{params.day}}` has no value"), "{message}");
    let given = BTreeMap::from([("day".to_owned(), "mon".to_owned())]);
    assert_eq!(spec.resolve_params(&given).unwrap()["day"], "mon");
}

#[test]
fn hostile_yaml_is_bounded() {
    let bomb = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n";
    assert!(WorkflowSpec::parse(bomb).is_err());
    let huge = "#".repeat(WORKFLOW_YAML_MAX_BYTES + 1);
    assert!(matches!(WorkflowSpec::parse(&huge), Err(SpecError::TooLarge { .. })));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A random DAG: job i may need only jobs with smaller indices.
    fn dag_yaml(needs: &[Vec<usize>]) -> String {
        let mut yaml = String::from("name: random\njobs:\n");
        for (i, deps) in needs.iter().enumerate().rev() {
            let deps: Vec<String> = deps.iter().map(|d| format!("j{d}")).collect();
            yaml.push_str(&format!("  j{i}: {{ run: noop, needs: [{}] }}\n", deps.join(", ")));
        }
        yaml
    }

    fn needs_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..40).prop_flat_map(|n| {
            (0..n).map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(4))).collect::<Vec<_>>()
        })
    }

    proptest! {
        #[test]
        fn random_dags_validate_and_order_respects_needs(needs in needs_strategy()) {
            let spec = WorkflowSpec::parse(&dag_yaml(&needs)).unwrap();
            let order = spec.topological_order();
            prop_assert_eq!(order.len(), needs.len());
            let position: HashMap<&str, usize> = order.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
            for (name, job) in &spec.jobs {
                for need in &job.needs {
                    prop_assert!(position[need.as_str()] < position[name.as_str()]);
                }
            }
        }

        #[test]
        fn a_back_edge_always_yields_a_real_cycle(needs in needs_strategy(), pick in any::<proptest::sample::Index>()) {
            let mut needs = needs;
            let with_deps: Vec<usize> = (0..needs.len()).filter(|i| !needs[*i].is_empty()).collect();
            prop_assume!(!with_deps.is_empty());
            let i = with_deps[pick.index(with_deps.len())];
            let d = needs[i][0];
            needs[d].push(i); // d needs i, and i needs d: a cycle
            let spec: WorkflowSpec = serde_saphyr::from_str(&dag_yaml(&needs)).unwrap();
            let cycle = spec.find_cycle().expect("cycle");
            prop_assert_eq!(cycle.first(), cycle.last());
            for pair in cycle.windows(2) {
                prop_assert!(spec.jobs[&pair[0]].needs.contains(&pair[1]), "{:?}", cycle);
            }
        }
    }
}

#[test]
fn a_schedule_zone_that_differs_from_the_workflows_is_refused_naming_both() {
    let yaml = "name: w\ntimezone: Europe/Berlin\nschedule: { cron: \"30 2 * * *\", timezone: America/Los_Angeles }\njobs:\n  a: { run: noop }\n";
    let error = WorkflowSpec::parse(yaml).unwrap_err().to_string();
    assert!(
        error.contains("timezone `America/Los_Angeles` differs from the workflow's timezone `Europe/Berlin`"),
        "{error}"
    );
    let same = "name: w\ntimezone: Europe/Berlin\nschedule: { cron: \"30 2 * * *\", timezone: Europe/Berlin }\njobs:\n  a: { run: noop }\n";
    assert_eq!(WorkflowSpec::parse(same).unwrap().zone().name(), "Europe/Berlin");
    // A workflow without a zone takes its schedule's: backfills and audits use the same days.
    let only_schedule =
        "name: w\nschedule: { cron: \"30 2 * * *\", timezone: America/Los_Angeles }\njobs:\n  a: { run: noop }\n";
    assert_eq!(WorkflowSpec::parse(only_schedule).unwrap().zone().name(), "America/Los_Angeles");
}

#[test]
fn a_command_given_as_a_string_must_be_a_list() {
    let message = invalid("name: w\njobs:\n  a: { run: exec, command: \"echo hi\" }\n");
    assert!(message.contains("`command:` must be a list"), "{message}");
    assert!(message.contains(r#"["echo", "hi"]"#), "{message}");
    let spec = WorkflowSpec::parse(
        "name: w\njobs:\n  a: { run: exec, command: [sleep, 1] }\n  b: { run: noop, command: null }\n",
    )
    .unwrap();
    assert_eq!(spec.jobs["a"].command.as_deref(), Some(&["sleep".to_owned(), "1".to_owned()][..]));
    assert_eq!(spec.jobs["b"].command, None);
}

#[test]
fn an_unknown_kind_with_a_command_is_named_with_the_stock_kinds() {
    let message = invalid("name: w\njobs:\n  a: { run: shell, command: [echo, hi] }\n");
    assert!(message.contains("unknown kind `shell`"), "{message}");
    assert!(message.contains("exec, fail, noop, sleep"), "{message}");
    let message = invalid("name: w\njobs:\n  a: { run: sleep, command: [echo, hi] }\n");
    assert!(message.contains("only used by `run: exec`, not by `run: sleep`"), "{message}");
}

const RERUN: &str = "name: etl\njobs:\n  extract: { run: exec, command: [python3, extract.py] }\n  load: { run: exec, needs: [extract], command: [python3, load.py] }\n  notify: { run: noop, needs: [load] }\n";

fn respec(edit: impl Fn(&str) -> String, reruns: &[&str]) -> Vec<String> {
    let old = WorkflowSpec::parse(RERUN).unwrap();
    let new = WorkflowSpec::parse(&edit(RERUN)).unwrap();
    old.rerun_changes(&new, |name| reruns.contains(&name))
}

#[test]
fn a_rerun_may_change_the_definitions_of_the_jobs_that_run_again() {
    let fixed = |yaml: &str| yaml.replace("load.py]", "load.py, --fixed], timeout: 5m, retry: { max_attempts: 3 }");
    assert!(respec(fixed, &["load", "notify"]).is_empty());
    // Descriptions are not definitions.
    let described =
        |yaml: &str| yaml.replace("notify: { run: noop,", "notify: { run: noop, description: tells people,");
    assert!(respec(described, &["load"]).is_empty());
}

#[test]
fn a_rerun_spec_that_changes_more_is_refused_naming_the_jobs() {
    let fixed = |yaml: &str| yaml.replace("load.py]", "load.py, --fixed]");
    assert_eq!(respec(fixed, &["notify"]), ["it changes job `load`, which does not run again"]);
    let added = |yaml: &str| format!("{yaml}  audit: {{ run: noop }}\n  report: {{ run: noop }}\n");
    assert_eq!(respec(added, &["load"]), ["it adds jobs `audit`, `report`"]);
    let removed = |yaml: &str| yaml.replace("  notify: { run: noop, needs: [load] }\n", "");
    assert_eq!(respec(removed, &["load"]), ["it removes job `notify`"]);
    let rewired = |yaml: &str| yaml.replace("needs: [load]", "needs: [extract]");
    assert_eq!(respec(rewired, &["notify"]), ["it changes what job `notify` needs"]);
    let renamed = |yaml: &str| format!("{yaml}on_failure: continue\n").replace("name: etl", "name: etl2");
    assert_eq!(
        respec(renamed, &["load"]),
        ["the run's workflow is `etl`, the new spec's `etl2`", "it changes the workflow's `on_failure`"]
    );
}

#[test]
fn a_workflow_name_is_read_without_validating_the_rest() {
    assert_eq!(workflow_name("name: sales\njobs:\n  a: { run: noop, needs: [a] }\n").as_deref(), Some("sales"));
    assert_eq!(workflow_name("jobs: {}\n"), None, "no name");
    assert_eq!(workflow_name("name: [not, a, name]\n"), None);
    assert_eq!(workflow_name("name: has.dots\n"), None, "not a valid name");
    assert_eq!(workflow_name(": : :"), None);
}

#[test]
fn when_takes_three_rules_and_an_unknown_one_names_the_job_and_the_rules() {
    let yaml = "name: w\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a], when: always }\n  c: { run: noop, needs: [a], when: on_failure }\n  d: { run: noop, needs: [a] }\n";
    let spec = WorkflowSpec::parse(yaml).unwrap();
    let rules: Vec<&str> = spec.jobs.values().map(|job| job.when.as_str()).collect();
    assert_eq!(rules, ["on_success", "always", "on_failure", "on_success"]);
    let wrong =
        WorkflowSpec::parse("name: w\njobs:\n  a: { run: noop }\n  b: { run: noop, needs: [a], when: sometimes }\n")
            .unwrap_err()
            .to_string();
    assert!(wrong.contains("job `b`: `when: sometimes`"), "{wrong}");
    assert!(wrong.contains("on_success, on_failure, always"), "{wrong}");
    let never = WorkflowSpec::parse("name: w\njobs:\n  a: { run: noop, when: on_failure }\n").unwrap_err().to_string();
    assert!(never.contains("job `a`") && never.contains("needs none"), "{never}");
}

#[test]
fn the_default_rule_is_not_written_so_definitions_read_as_before() {
    let spec = WorkflowSpec::parse("name: w\njobs:\n  a: { run: noop }\n").unwrap();
    let json = serde_json::to_string(&spec.jobs["a"]).unwrap();
    assert!(!json.contains("when"), "{json}");
}

const POD: &str = r#"
name: pods
jobs:
  train:
    run: pod
    image: ghcr.io/acme/train:2.1
    command: [python3, train.py, "{{start}}"]
    resources: {limits: {cpu: 4, memory: 16Gi, nvidia.com/gpu: 1}, requests: {cpu: 2}}
    env:
      DAY: "{{start}}"
      WANDB_KEY: {secret: wandb}
"#;

#[test]
fn a_pod_job_keeps_its_image_resources_and_env() {
    let spec = WorkflowSpec::parse(POD).unwrap();
    let train = &spec.jobs["train"];
    assert_eq!(train.image.as_deref(), Some("ghcr.io/acme/train:2.1"));
    assert_eq!(train.resources.as_ref().unwrap()["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(train.env["WANDB_KEY"], crate::pod::EnvValue::Secret { secret: "wandb".into() });
    assert_eq!(train.command.as_ref().unwrap()[0], "python3");
}

#[test]
fn pod_fields_are_checked_at_validate_time_naming_the_job_and_field() {
    let error = invalid("name: p\njobs:\n  a:\n    run: pod\n");
    assert!(error.contains("job `a`: `run: pod` needs an `image:`"), "{error}");
    let error = invalid("name: p\njobs:\n  a:\n    run: pod\n    image: x\n    resources: {limits: {cpu: lots}}\n");
    assert!(error.contains("job `a`: resources.limits.cpu: `lots` is not a quantity"), "{error}");
    let error = invalid("name: p\njobs:\n  a:\n    run: pod\n    image: x\n    env: {SLUICE_X: y, K: {secret: a/b}}\n");
    assert!(error.contains("job `a`: env: `SLUICE_X` is reserved"), "{error}");
    assert!(error.contains("job `a`: env: `K`: secret name `a/b`"), "{error}");
    let error = invalid("name: p\njobs:\n  a:\n    run: exec\n    command: [x]\n    image: busybox\n    env: {A: b}\n");
    assert!(error.contains("`image:` is only used by `run: pod`, not by `run: exec`"), "{error}");
    assert!(error.contains("`env:` is only used by `run: pod`"), "{error}");
    let error = invalid("name: p\njobs:\n  a:\n    run: pod\n    image: x\n    env: {A: [1]}\n");
    assert!(error.contains("a value (string, number or boolean) or {secret: NAME}"), "{error}");
}

#[test]
fn a_pod_child_may_not_name_an_image_and_runs_its_parents() {
    let line = r#"{"name": "shard-1", "run": "pod", "image": "docker.io/evil"}"#;
    let error = crate::spawn::parse_child_lines(line, "SLUICE_SPAWN_FILE").unwrap_err().to_string();
    assert!(error.contains("image"), "{error}");
    let child = crate::ChildSpec::new("shard-1", "pod");
    assert_eq!(child.problems(), Vec::<String>::new(), "its image is its parent's");
}
