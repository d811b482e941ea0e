//! `{{name}}` placeholders in exec arguments, substituted on parsed values (never on YAML
//! text), so a value can never inject YAML or extra arguments.

use std::collections::BTreeMap;

/// The placeholders a job's arguments may use besides `{{params.NAME}}`.
pub const BUILT_IN: [&str; 5] = ["start", "end", "run_id", "job", "attempt"];

/// A placeholder problem, naming the placeholder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    #[error("`{{{{` without a closing `}}}}` in `{0}`")]
    Unclosed(String),
    #[error(
        "unknown placeholder `{{{{{0}}}}}`: use one of {{{{start}}}}, {{{{end}}}}, {{{{run_id}}}}, {{{{job}}}}, {{{{attempt}}}} or {{{{params.NAME}}}}"
    )]
    Unknown(String),
    #[error("placeholder `{{{{params.{0}}}}}` has no value: declare it under `params:` or pass --param {0}=VALUE")]
    MissingParam(String),
}

/// The placeholder names used in `text`, in order.
pub fn names(text: &str) -> Result<Vec<&str>, PlaceholderError> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| PlaceholderError::Unclosed(text.chars().take(80).collect()))?;
        found.push(after[..close].trim());
        rest = &after[close + 2..];
    }
    Ok(found)
}

/// Checks that every placeholder in `text` is known; `params` are the names that will have
/// values, or `None` to skip that check (before params are known).
pub fn check(text: &str, params: Option<&BTreeMap<String, String>>) -> Result<(), PlaceholderError> {
    for name in names(text)? {
        if let Some(param) = name.strip_prefix("params.") {
            if let Some(params) = params
                && !params.contains_key(param)
            {
                return Err(PlaceholderError::MissingParam(param.to_owned()));
            }
        } else if !BUILT_IN.contains(&name) {
            return Err(PlaceholderError::Unknown(name.to_owned()));
        }
    }
    Ok(())
}

/// Replaces every placeholder in `text`; `lookup` answers a name (`start`, `params.day`, …).
pub fn substitute(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, PlaceholderError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| PlaceholderError::Unclosed(text.chars().take(80).collect()))?;
        let name = after[..close].trim();
        let value = lookup(name).ok_or_else(|| match name.strip_prefix("params.") {
            Some(param) => PlaceholderError::MissingParam(param.to_owned()),
            None => PlaceholderError::Unknown(name.to_owned()),
        })?;
        out.push_str(&value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_known_names_and_keeps_the_rest() {
        let out = substitute("--from={{start}} --to={{ end }}/{{params.region}}", |name| match name {
            "start" => Some("A".into()),
            "end" => Some("B".into()),
            "params.region" => Some("eu".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(out, "--from=A --to=B/eu");
    }

    #[test]
    fn reports_unknown_unclosed_and_missing() {
        assert_eq!(check("{{startt}}", None), Err(PlaceholderError::Unknown("startt".into())));
        assert!(matches!(check("{{start", None), Err(PlaceholderError::Unclosed(_))));
        assert_eq!(check("{{params.x}}", Some(&BTreeMap::new())), Err(PlaceholderError::MissingParam("x".into())));
        assert_eq!(check("{{params.x}}", None), Ok(()));
        let message = PlaceholderError::Unknown("startt".into()).to_string();
        assert!(message.starts_with("unknown placeholder `{{startt}}`"), "{message}");
    }
}
