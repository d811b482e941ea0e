//! `--only`: which workloads run.

use std::collections::BTreeSet;

/// Every workload id, in the order the suite runs them.
pub const WORKLOADS: [&str; 10] = ["W1", "W1-traced", "W1-py", "W2-static", "W2-spawned", "W3", "W4", "W5", "W6", "W7"];

/// Shorthands `--only` accepts besides the ids: `W2` is both fan-outs, `intake` is measured
/// in W1's run.
const ALIASES: [(&str, &[&str]); 2] = [("W2", &["W2-static", "W2-spawned"]), ("intake", &["W1"])];

/// The workloads `--only` names (every one when it names none), case-insensitively; an
/// unknown name is an error naming it and what is known.
pub fn selected(only: &[String]) -> Result<BTreeSet<&'static str>, String> {
    if only.is_empty() {
        return Ok(WORKLOADS.into_iter().collect());
    }
    let mut chosen = BTreeSet::new();
    for name in only {
        let name = name.trim();
        if let Some(id) = WORKLOADS.iter().find(|id| id.eq_ignore_ascii_case(name)) {
            chosen.insert(*id);
        } else if let Some((_, ids)) = ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(name)) {
            chosen.extend(ids.iter().copied());
        } else {
            let known: Vec<&str> = WORKLOADS.iter().chain(ALIASES.iter().map(|(alias, _)| alias)).copied().collect();
            return Err(format!("--only: unknown workload {name:?}; known: {}", known.join(", ")));
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(names: &[&str]) -> Result<Vec<&'static str>, String> {
        selected(&names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).map(|set| set.into_iter().collect())
    }

    #[test]
    fn nothing_named_runs_everything() {
        assert_eq!(only(&[]).unwrap().len(), WORKLOADS.len());
    }

    #[test]
    fn ids_and_aliases_in_any_case() {
        assert_eq!(only(&["w2-static"]).unwrap(), ["W2-static"]);
        assert_eq!(only(&["W2", "w4"]).unwrap(), ["W2-spawned", "W2-static", "W4"]);
        assert_eq!(only(&["intake"]).unwrap(), ["W1"]);
    }

    #[test]
    fn an_unknown_name_is_refused_by_name() {
        let error = only(&["W1", "W9"]).unwrap_err();
        assert!(error.contains("\"W9\"") && error.contains("W2-spawned"), "{error}");
    }
}
