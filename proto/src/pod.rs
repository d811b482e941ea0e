//! What a `run: pod` job says besides `command`: its `image`, its `resources` (Kubernetes
//! `ResourceRequirements`, kept as JSON here so proto does not depend on Kubernetes types;
//! its shape is checked by hand) and its `env` (plain values or `{secret: NAME}`,
//! decision 15). The worker's pod kind (crate `sluice-pod`) turns them into a batch/v1 Job.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{ENV_VALUE_MAX_BYTES, ENV_VARS_MAX, IMAGE_MAX_BYTES, RESOURCE_NAMES_MAX, SECRET_NAME_MAX_CHARS};
use crate::placeholder;

/// The kind that runs a job as a Kubernetes Job (`sluice worker --pod-namespace NS`).
pub const POD_KIND: &str = "pod";

/// Environment variable names Sluice sets itself in a job's environment (the user's `env:`
/// may not use them).
pub const RESERVED_ENV_PREFIX: &str = "SLUICE_";

/// One `env:` entry: a value (placeholders substituted) or a secret of the job's pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EnvValue {
    Value(String),
    Secret { secret: String },
}

impl<'de> Deserialize<'de> for EnvValue {
    /// A string, a number or a boolean (YAML `PORT: 8080` is meant as "8080"), or a map with
    /// exactly the key `secret`; anything else gets an error that says which forms exist
    /// (serde's untagged error would say only "did not match any variant").
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value (string, number or boolean) or {secret: NAME}")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(text.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(value.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(value.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(value.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Value(value.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut secret = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "secret" || secret.is_some() {
                        return Err(serde::de::Error::custom(format!(
                            "an env entry is a value or {{secret: NAME}}; `{key}` is not expected"
                        )));
                    }
                    secret = Some(map.next_value::<String>()?);
                }
                secret
                    .map(|secret| EnvValue::Secret { secret })
                    .ok_or_else(|| serde::de::Error::custom("an env entry given as a map needs `secret: NAME`"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether `name` can name a secret: letters, digits, `_` and `-`, never a path (decision 15).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > SECRET_NAME_MAX_CHARS {
        return Err(format!("secret name `{name}` must be 1 to {SECRET_NAME_MAX_CHARS} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("secret name `{name}` may only use letters, digits, `_` and `-` (no paths)"));
    }
    Ok(())
}

/// Problems with a job's `env:` (names, count, sizes, secret names, placeholders).
pub fn check_env(env: &BTreeMap<String, EnvValue>) -> Vec<String> {
    let mut problems = Vec::new();
    if env.len() > ENV_VARS_MAX {
        problems.push(format!("env has {} variables; the limit is {ENV_VARS_MAX}", env.len()));
    }
    for (name, value) in env {
        let starts_well = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 256 {
            problems.push(format!(
                "env: `{name}` is not a variable name (a letter or `_`, then letters, digits and `_`; at most 256)"
            ));
        } else if name.starts_with(RESERVED_ENV_PREFIX) {
            problems.push(format!("env: `{name}` is reserved (Sluice sets the `{RESERVED_ENV_PREFIX}*` variables)"));
        }
        match value {
            EnvValue::Value(text) if text.len() > ENV_VALUE_MAX_BYTES => {
                problems.push(format!("env: `{name}` is {} bytes; the limit is {ENV_VALUE_MAX_BYTES}", text.len()))
            }
            EnvValue::Value(text) => {
                if let Err(error) = placeholder::check(text, None) {
                    problems.push(format!("env: `{name}`: {error}"));
                }
            }
            EnvValue::Secret { secret } => {
                if let Err(problem) = check_secret_name(secret) {
                    problems.push(format!("env: `{name}`: {problem}"));
                }
            }
        }
    }
    problems
}

/// Problems with a pod job's `image:` (no placeholders: the pool's allow-list judges the
/// image as written).
pub fn check_image(image: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if image.is_empty() || image.len() > IMAGE_MAX_BYTES {
        problems.push(format!("image must be 1 to {IMAGE_MAX_BYTES} bytes, not {}", image.len()));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problems.push(format!("image `{}` has whitespace", image.escape_debug()));
    }
    if image.contains("{{") {
        problems.push(format!(
            "image `{image}` may not use placeholders (the pool's --allow-image patterns judge it as written)"
        ));
    }
    problems
}

/// Problems with `resources:`, which must be a Kubernetes `ResourceRequirements`: a map with
/// `limits` and/or `requests`, each a map of resource name to quantity (`500m`, `2Gi`, 1).
/// (`claims` needs dynamic resource allocation, which Sluice's pod kind does not set up.)
pub fn check_resources(resources: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(map) = resources.as_object() else {
        return vec!["resources must be a map with `limits` and/or `requests`".into()];
    };
    for (key, value) in map {
        if key != "limits" && key != "requests" {
            problems.push(format!("resources: `{key}` is not supported; use `limits` and `requests`"));
            continue;
        }
        let Some(quantities) = value.as_object() else {
            problems.push(format!("resources.{key} must be a map of resource name to quantity, e.g. {{cpu: 500m}}"));
            continue;
        };
        if quantities.len() > RESOURCE_NAMES_MAX {
            problems.push(format!(
                "resources.{key} names {} resources; the limit is {RESOURCE_NAMES_MAX}",
                quantities.len()
            ));
        }
        for (resource, quantity) in quantities {
            if !is_resource_name(resource) {
                problems.push(format!(
                    "resources.{key}: `{resource}` is not a resource name (e.g. cpu, memory, nvidia.com/gpu)"
                ));
            }
            let text = match quantity {
                serde_json::Value::String(text) => text.clone(),
                serde_json::Value::Number(number) => number.to_string(),
                other => {
                    problems.push(format!("resources.{key}.{resource}: {other} is not a quantity (e.g. 500m, 2Gi, 1)"));
                    continue;
                }
            };
            if !is_quantity(&text) {
                problems.push(format!("resources.{key}.{resource}: `{text}` is not a quantity (e.g. 500m, 2Gi, 1)"));
            }
        }
    }
    problems
}

/// A Kubernetes resource name: an optional DNS prefix and `/`, then a name of letters,
/// digits, `-`, `_` and `.`.
fn is_resource_name(name: &str) -> bool {
    let (prefix, base) = name.rsplit_once('/').unwrap_or(("", name));
    let ok = |part: &str, extra: &[char]| {
        !part.is_empty()
            && part.len() <= 253
            && part.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    (prefix.is_empty() || ok(prefix, &['-', '.'])) && base.len() <= 63 && ok(base, &['-', '_', '.'])
}

/// Kubernetes' quantity syntax: a signed decimal number, then a binary (`Ki`…`Ei`) or
/// decimal (`m`, `k`, `M`…`E`) suffix or an exponent (`e3`).
pub fn is_quantity(text: &str) -> bool {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    let number_end = digits.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(number_end);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    if number.matches('.').count() > 1 || (whole.is_empty() && fraction.is_none_or(str::is_empty)) {
        return false;
    }
    const SUFFIXES: [&str; 14] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T"];
    if SUFFIXES.contains(&suffix) || suffix == "P" || suffix == "E" {
        return true;
    }
    let exponent = suffix.strip_prefix(['e', 'E']).map(|rest| rest.strip_prefix(['+', '-']).unwrap_or(rest));
    exponent.is_some_and(|digits| !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_plain_values_or_secrets_and_other_shapes_are_named() {
        let env: BTreeMap<String, EnvValue> =
            serde_saphyr::from_str("A: text\nPORT: 8080\nON: true\nTOKEN: {secret: api-token}\n").unwrap();
        assert_eq!(env["A"], EnvValue::Value("text".into()));
        assert_eq!(env["PORT"], EnvValue::Value("8080".into()));
        assert_eq!(env["ON"], EnvValue::Value("true".into()));
        assert_eq!(env["TOKEN"], EnvValue::Secret { secret: "api-token".into() });
        let wrong = serde_saphyr::from_str::<BTreeMap<String, EnvValue>>("T: {secret: a, key: b}\n").unwrap_err();
        assert!(wrong.to_string().contains("`key` is not expected"), "{wrong}");
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["TOKEN"], serde_json::json!({"secret": "api-token"}));
        assert_eq!(serde_json::from_value::<BTreeMap<String, EnvValue>>(json).unwrap(), env);
    }

    #[test]
    fn env_problems_name_the_variable() {
        let env = BTreeMap::from([
            ("1BAD".to_owned(), EnvValue::Value("x".into())),
            ("SLUICE_JOB".to_owned(), EnvValue::Value("x".into())),
            ("PATHY".to_owned(), EnvValue::Secret { secret: "../etc/passwd".into() }),
            ("WHEN".to_owned(), EnvValue::Value("{{tomorrow}}".into())),
            ("OK".to_owned(), EnvValue::Value("{{start}}".into())),
        ]);
        let problems = check_env(&env).join("\n");
        assert!(problems.contains("`1BAD` is not a variable name"), "{problems}");
        assert!(problems.contains("`SLUICE_JOB` is reserved"), "{problems}");
        assert!(problems.contains("`PATHY`: secret name `../etc/passwd` may only use"), "{problems}");
        assert!(problems.contains("`WHEN`: unknown placeholder"), "{problems}");
        assert!(!problems.contains("`OK`"), "{problems}");
    }

    #[test]
    fn resources_must_be_resource_requirements() {
        let good = serde_json::json!({"limits": {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": 0.25}});
        assert_eq!(check_resources(&good), Vec::<String>::new());
        let bad = serde_json::json!({"limit": {}, "requests": {"cpu": "lots", "memory": true}});
        let problems = check_resources(&bad).join("\n");
        assert!(problems.contains("`limit` is not supported"), "{problems}");
        assert!(problems.contains("resources.requests.cpu: `lots` is not a quantity"), "{problems}");
        assert!(problems.contains("resources.requests.memory: true is not a quantity"), "{problems}");
        assert!(!check_resources(&serde_json::json!("2 cpus")).is_empty());
    }

    #[test]
    fn quantities_follow_kubernetes_syntax() {
        for good in ["1", "0.5", ".5", "500m", "2Gi", "1e3", "1E-2", "+1", "100M", "5Ki"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1.2.3", "2GB", "1e", "lots", "1 Gi", "."] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn images_are_checked_as_written() {
        assert!(check_image("ghcr.io/acme/etl:1.2").is_empty());
        assert!(check_image("").join("").contains("1 to"));
        assert!(check_image("a b").join("").contains("whitespace"));
        assert!(check_image("acme/{{params.tag}}").join("").contains("placeholders"));
    }
}
