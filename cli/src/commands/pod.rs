//! `sluice worker --pod-namespace NS [--allow-image PATTERN]... [--pod-secret NAME]...`: the
//! flags that make a worker serve the `pod` kind (crate `sluice-pod`).

use sluice_pod::{ImageAllowList, PodKind, PoolPolicy};
use sluice_worker::Registry;

use crate::output::CliError;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct PodArgs {
    /// Serve the `pod` kind: run each attempt of a `run: pod` job as a Kubernetes batch/v1
    /// Job in this namespace (client from the in-cluster config, or KUBECONFIG). Without it
    /// the worker does not serve `pod`.
    #[arg(long, value_name = "NS")]
    pub pod_namespace: Option<String>,
    /// An image pod jobs of this pool may run (glob: `*` within a path segment, `**` across
    /// segments); repeat for more. None given: every image is refused.
    #[arg(long = "allow-image", value_name = "PATTERN", requires = "pod_namespace")]
    pub allow_image: Vec<String>,
    /// A Kubernetes Secret (in the pod namespace) pod jobs of this pool may read with
    /// `{secret: NAME}` (its key `value`); repeat for more.
    #[arg(long = "pod-secret", value_name = "NAME", requires = "pod_namespace")]
    pub pod_secret: Vec<String>,
}

impl PodArgs {
    /// The policy the flags describe, checked; `None` without `--pod-namespace`.
    pub fn policy(&self) -> Result<Option<(String, PoolPolicy)>, CliError> {
        let Some(namespace) = &self.pod_namespace else { return Ok(None) };
        let valid = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !namespace.starts_with('-')
            && !namespace.ends_with('-');
        if !valid {
            return Err(CliError::usage(format!(
                "--pod-namespace `{namespace}` is not a Kubernetes namespace name (1 to 63 of a-z, 0-9 and `-`)"
            )));
        }
        let images = ImageAllowList::new(self.allow_image.clone()).map_err(CliError::usage)?;
        for name in &self.pod_secret {
            sluice_proto::pod::check_secret_name(name)
                .map_err(|problem| CliError::usage(format!("--pod-secret: {problem}")))?;
        }
        Ok(Some((namespace.clone(), PoolPolicy { images, secrets: self.pod_secret.iter().cloned().collect() })))
    }

    /// `registry`, plus the `pod` kind when `--pod-namespace` is given.
    pub async fn register(&self, registry: Registry) -> Result<Registry, CliError> {
        let Some((namespace, policy)) = self.policy()? else { return Ok(registry) };
        if policy.images.patterns().is_empty() {
            tracing::warn!("no --allow-image given: the pod kind refuses every image");
        }
        let client = sluice_pod::kind::default_client().await.map_err(|error| {
            CliError::usage(format!("--pod-namespace: no Kubernetes client (in-cluster config or KUBECONFIG): {error}"))
        })?;
        Ok(registry.register(sluice_pod::POD_KIND, PodKind::new(client, namespace, policy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(namespace: &str, images: &[&str], secrets: &[&str]) -> PodArgs {
        PodArgs {
            pod_namespace: Some(namespace.into()),
            allow_image: images.iter().map(|s| s.to_string()).collect(),
            pod_secret: secrets.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn without_a_namespace_there_is_no_pod_kind() {
        assert!(PodArgs::default().policy().unwrap().is_none());
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let error = |args: PodArgs| args.policy().err().map(|error| error.message).unwrap_or_default();
        assert!(error(args("Jobs_NS", &[], &[])).contains("--pod-namespace `Jobs_NS`"));
        assert!(error(args("jobs", &["a b"], &[])).contains("--allow-image `a b`"));
        assert!(error(args("jobs", &[], &["../x"])).contains("--pod-secret"));
        let (namespace, policy) = args("jobs", &["ghcr.io/acme/*"], &["api-token"]).policy().unwrap().unwrap();
        assert_eq!(namespace, "jobs");
        assert!(policy.images.check("ghcr.io/acme/etl:1").is_ok() && policy.secrets.contains("api-token"));
    }
}
