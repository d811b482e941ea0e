//! Server-side apply of rendered objects (field manager `sluice`), through discovery and
//! `Api<DynamicObject>`: whatever kinds the server has. Kinds it lacks are refused, naming
//! them, unless the caller skips them (and is told exactly which).

use std::collections::BTreeSet;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Discovery, Scope};

use crate::render::{FIELD_MANAGER, Object};

/// How to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// Ask the server to check everything and store nothing (`--dry-run=server`).
    pub dry_run: bool,
    /// Leave out objects whose kind the server does not serve instead of failing.
    pub skip_missing_apis: bool,
}

/// One object as the server stored it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// `Kind namespace/name`.
    pub object: String,
    pub resource_version: Option<String>,
    /// Changes only when the object's spec changes (for kinds that keep one).
    pub generation: Option<i64>,
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: Vec<Applied>,
    /// `apiVersion Kind` of every kind left out, sorted (only with `skip_missing_apis`).
    pub skipped_kinds: Vec<String>,
    /// The objects left out with them.
    pub skipped_objects: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot list the server's APIs: {0}")]
    Discovery(#[source] kube::Error),
    #[error(
        "the server has no API for {}; install what provides it (KEDA for keda.sh) or pass --skip-missing-apis",
        kinds.join(", ")
    )]
    MissingApis { kinds: Vec<String> },
    #[error(
        "{object}: another field manager owns fields sluice sets (sluice does not force): {message}. Remove that \
         manager's fields or let sluice own them (`kubectl apply --server-side --force-conflicts --field-manager sluice`)"
    )]
    Conflict { object: String, message: String },
    #[error("{object}: the server refused it: {message}")]
    Refused { object: String, message: String },
    #[error("{object}: {source}")]
    Request { object: String, source: kube::Error },
    #[error("{object}: not an object the server can read: {message}")]
    Encode { object: String, message: String },
}

impl ApplyError {
    /// Whether trying again unchanged can succeed (the server was unreachable or busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Discovery(error) | Self::Request { source: error, .. } => match error {
                kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                _ => true,
            },
            _ => false,
        }
    }
}

fn gvk(object: &Object) -> GroupVersionKind {
    let (group, version) = object.api_version.split_once('/').unwrap_or(("", object.api_version.as_str()));
    GroupVersionKind::gvk(group, version, &object.kind)
}

/// Applies `objects` in order. Discovery runs once, first: a kind the server lacks fails the
/// whole apply before anything is written (unless skipped).
pub async fn apply(
    client: &kube::Client,
    objects: &[Object],
    options: ApplyOptions,
) -> Result<ApplyReport, ApplyError> {
    let discovery = Discovery::new(client.clone()).run().await.map_err(ApplyError::Discovery)?;
    let mut report = ApplyReport::default();
    let mut missing = BTreeSet::new();
    let mut resolved = Vec::new();
    for object in objects {
        match discovery.resolve_gvk(&gvk(object)) {
            Some(found) => resolved.push((object, found)),
            None => {
                missing.insert(format!("{} {}", object.api_version, object.kind));
                report.skipped_objects.push(object.describe());
            }
        }
    }
    if !missing.is_empty() && !options.skip_missing_apis {
        return Err(ApplyError::MissingApis { kinds: missing.into_iter().collect() });
    }
    report.skipped_kinds = missing.into_iter().collect();
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.dry_run = options.dry_run;
    for (object, (resource, capabilities)) in resolved {
        let api: Api<DynamicObject> = match (&capabilities.scope, &object.namespace) {
            (Scope::Namespaced, Some(namespace)) => Api::namespaced_with(client.clone(), namespace, &resource),
            _ => Api::all_with(client.clone(), &resource),
        };
        let stored =
            api.patch(&object.name, &params, &Patch::Apply(&object.value)).await.map_err(|error| match error {
                kube::Error::Api(status) if status.code == 409 => {
                    ApplyError::Conflict { object: object.describe(), message: status.message }
                }
                // A dry run creates no namespace, and the server refuses objects in one it lacks.
                kube::Error::Api(status) if status.code == 404 && options.dry_run => ApplyError::Refused {
                    object: object.describe(),
                    message: format!(
                        "{}; a server-side dry run checks objects only in namespaces that exist (create them first)",
                        status.message
                    ),
                },
                kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
                    ApplyError::Refused { object: object.describe(), message: status.message }
                }
                kube::Error::SerdeError(error) => {
                    ApplyError::Encode { object: object.describe(), message: error.to_string() }
                }
                source => ApplyError::Request { object: object.describe(), source },
            })?;
        tracing::info!(object = %object.describe(), dry_run = options.dry_run, "applied");
        report.applied.push(Applied {
            object: object.describe(),
            resource_version: stored.metadata.resource_version,
            generation: stored.metadata.generation,
        });
    }
    Ok(report)
}
