//! Workflow specs, stored once by content hash in the object store `sluice-specs`
//! (decision 10): run records and attempts name a spec by its hash.

use async_nats::jetstream::{self, object_store};
use sluice_proto::limits::WORKFLOW_YAML_MAX_BYTES;
use sluice_proto::{RunRecord, WorkflowSpec, names};
use tokio::io::AsyncReadExt;

use crate::error::{ClientError, NatsContext};

/// The YAML stored under `hash`, checked against it; `None` when no spec has that hash.
pub async fn read(js: &jetstream::Context, hash: &str) -> Result<Option<String>, ClientError> {
    let store = match js.get_object_store(names::SPECS_BUCKET).await {
        Ok(store) => store,
        Err(error) if error.kind() == jetstream::context::ObjectStoreErrorKind::GetStore => {
            return Err(ClientError::NotSetUp { missing: format!("object store {}", names::SPECS_BUCKET) });
        }
        Err(error) => return Err(error).context(format!("opening object store {}", names::SPECS_BUCKET)),
    };
    let mut object = match store.get(hash).await {
        Ok(object) => object,
        Err(error) if error.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).context(format!("reading spec {hash}")),
    };
    // Bounded: a spec is never stored over the YAML limit, and nothing else is read.
    if object.info().size > WORKFLOW_YAML_MAX_BYTES {
        return Err(ClientError::Invalid(format!(
            "spec {hash} is {} bytes, over the {WORKFLOW_YAML_MAX_BYTES}-byte limit",
            object.info().size
        )));
    }
    let mut bytes = Vec::with_capacity(object.info().size);
    object.read_to_end(&mut bytes).await.context(format!("reading spec {hash}"))?;
    let yaml = String::from_utf8(bytes).map_err(|_| ClientError::Invalid(format!("spec {hash} is not UTF-8")))?;
    if WorkflowSpec::hash(&yaml) != hash {
        return Err(ClientError::Invalid(format!("spec {hash} does not match its hash")));
    }
    Ok(Some(yaml))
}

/// The YAML a run dispatches with: the spec its record names, or the copy in a record from
/// before specs were stored by hash.
pub async fn of_run(js: &jetstream::Context, record: &RunRecord) -> Result<String, ClientError> {
    match &record.spec_hash {
        Some(hash) => read(js, hash).await?.ok_or_else(|| {
            ClientError::Invalid(format!("run {}: its spec {hash} is missing from {}", record.id, names::SPECS_BUCKET))
        }),
        None => Ok(record.spec_yaml.clone()),
    }
}

/// The YAML a workflow runs with now, for a run or backfill asked for by name (the UI's):
/// the one applied (`sluice workflow apply`), else its schedule's, else its newest run's.
/// `None`: never seen here.
pub async fn current_of_workflow(js: &jetstream::Context, workflow: &str) -> Result<Option<String>, ClientError> {
    Ok(current_source(js, workflow).await?.map(|(yaml, _)| yaml))
}

/// Where [`current_of_workflow`] found a workflow's YAML.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Applied,
    Schedule,
    NewestRun,
}

/// [`current_of_workflow`], saying where the YAML came from.
pub async fn current_source(js: &jetstream::Context, workflow: &str) -> Result<Option<(String, Source)>, ClientError> {
    let Some(stores) = crate::Stores::open(js).await? else { return Ok(None) };
    if let Some(applied) = stores.workflow(workflow).await? {
        let yaml = read(js, &applied.spec_hash).await?.ok_or_else(|| {
            ClientError::Invalid(format!(
                "workflow {workflow}: its spec {} is missing from {}",
                applied.spec_hash,
                names::SPECS_BUCKET
            ))
        })?;
        return Ok(Some((yaml, Source::Applied)));
    }
    if let Some(schedule) = stores.schedule(workflow).await? {
        return Ok(Some((schedule.workflow, Source::Schedule)));
    }
    let filter = crate::runs::RunFilter { workflow: Some(workflow.to_owned()), ..Default::default() };
    match crate::runs::list(js, &filter, 1, None).await?.runs.first() {
        Some(run) => Ok(Some((of_run(js, run).await?, Source::NewestRun))),
        None => Ok(None),
    }
}
