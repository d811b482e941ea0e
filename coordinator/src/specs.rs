//! Storing workflow specs once, by content hash, in the object store `sluice-specs`
//! (decision 10). Reading is the client crate's (`sluice_client::specs`).

use std::collections::HashSet;
use std::sync::Arc;

use async_nats::jetstream::object_store;
use sluice_proto::{RunRecord, WorkflowSpec};

use crate::error::{NatsContext, ServiceError};
use crate::topology::Topology;

/// Hashes remembered as stored, at most: a term submitting this many distinct specs checks
/// the store again for the older ones (one request each), nothing worse.
pub const KNOWN_SPECS_MAX: usize = 10_000;

/// The specs this term knows are stored, so a schedule's thousandth run costs no request.
#[derive(Default)]
pub struct StoredSpecs {
    known: HashSet<String>,
}

impl StoredSpecs {
    /// Stores `yaml` under `hash` unless it is there already. Before any record names it.
    pub async fn put(&mut self, topology: &Topology, hash: &str, yaml: &str) -> Result<(), ServiceError> {
        if self.known.contains(hash) {
            return Ok(());
        }
        match topology.specs.info(hash).await {
            Ok(_) => {}
            Err(error) if error.kind() == object_store::InfoErrorKind::NotFound => {
                topology.specs.put(hash, &mut yaml.as_bytes()).await.context(format!("storing spec {hash}"))?;
            }
            Err(error) => return Err(error).context(format!("looking up spec {hash}")),
        }
        if self.known.len() >= KNOWN_SPECS_MAX {
            self.known.clear();
        }
        self.known.insert(hash.to_owned());
        Ok(())
    }
}

/// Why a run's spec cannot be had.
pub enum Unreadable {
    /// NATS failed (retry).
    Failed(ServiceError),
    /// It is missing or does not parse: the run cannot be restored.
    Broken(String),
}

/// The parsed spec a run dispatches with.
pub async fn of_run(topology: &Topology, record: &RunRecord) -> Result<Arc<WorkflowSpec>, Unreadable> {
    let yaml = sluice_client::specs::of_run(&topology.js, record).await.map_err(|error| match error {
        sluice_client::ClientError::Invalid(reason) => Unreadable::Broken(reason),
        error => Unreadable::Failed(ServiceError::from(error)),
    })?;
    WorkflowSpec::parse(&yaml).map(Arc::new).map_err(|error| Unreadable::Broken(error.to_string()))
}
