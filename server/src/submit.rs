//! Starting a run: `POST /api/v1/runs` and the UI's start form. A run is asked for by a
//! workflow known here (it runs as its schedule's YAML, else as its newest run's, until the
//! workflow store of decision 10 exists) or by its YAML, with a window in the CLI's syntax
//! and parameters; it goes out as a submission, exactly as `sluice submit` sends it.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use sluice_client::submit::{NewRun, Published};
use sluice_proto::limits::IDEMPOTENCY_KEY_MAX_BYTES;
use sluice_proto::{TraceParent, Window, WorkflowSpec};

use crate::Server;
use crate::auth::User;
use crate::error::ApiError;

/// What a run is asked for with: `workflow` or `spec`, a window, params, an idempotency key.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunAsk {
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub spec: Option<String>,
    /// `sluice submit --window`'s syntax; the previous day in the workflow's zone unless given.
    #[serde(default)]
    pub window: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// A run that was submitted: its id (a duplicate's: the first run's), workflow and window.
pub(crate) struct Submitted {
    pub published: Published,
    pub workflow: String,
    pub window: Window,
}

impl RunAsk {
    /// The workflow's YAML and spec, checked: every problem is a 400 naming its field, a
    /// workflow nobody ran here a 404.
    pub(crate) async fn spec(&self, server: &Server) -> Result<(WorkflowSpec, String), ApiError> {
        let yaml = match (&self.workflow, &self.spec) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ApiError::invalid("give `workflow` (a name known here) or `spec` (its YAML), one of them"));
            }
            (None, Some(yaml)) => yaml.clone(),
            (Some(name), None) => {
                sluice_proto::spec::check_name("workflow", name)
                    .map_err(|problem| ApiError::invalid(format!("workflow: {problem}")))?;
                sluice_client::specs::current_of_workflow(&server.js, name).await?.ok_or_else(|| {
                    ApiError::not_found(format!(
                        "workflow `{name}` is not applied here (`sluice workflow apply`), has no schedule and no run, so its YAML is unknown: send it as `spec`"
                    ))
                })?
            }
        };
        let spec = WorkflowSpec::parse(&yaml).map_err(|error| ApiError::invalid(format!("spec: {error}")))?;
        Ok((spec, yaml))
    }

    /// Checks the rest and publishes the submission.
    pub(crate) async fn submit(
        self,
        server: &Server,
        traceparent: Option<&TraceParent>,
    ) -> Result<Submitted, ApiError> {
        let (spec, yaml) = self.spec(server).await?;
        spec.resolve_params(&self.params).map_err(|error| ApiError::invalid(format!("params: {error}")))?;
        let window = match self.window.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
            Some(text) => Window::parse(text, spec.zone(), Utc::now())
                .map_err(|error| ApiError::invalid(format!("window: {error}")))?,
            None => Window::previous_day(spec.zone(), Utc::now()),
        };
        if let Some(key) = &self.idempotency_key
            && (key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX_BYTES)
        {
            return Err(ApiError::invalid(format!(
                "idempotency_key must be 1 to {IDEMPOTENCY_KEY_MAX_BYTES} bytes, not {}",
                key.len()
            )));
        }
        let new = NewRun { yaml, window, params: self.params, idempotency_key: self.idempotency_key };
        let published = sluice_client::submit::publish(&server.js, new, traceparent).await?;
        Ok(Submitted { published, workflow: spec.name, window })
    }
}

/// A caller's `traceparent` header, which the run's trace continues; a malformed one is a 400.
fn traceparent(headers: &HeaderMap) -> Result<Option<TraceParent>, ApiError> {
    let Some(value) = headers.get(sluice_proto::names::HEADER_TRACEPARENT) else { return Ok(None) };
    value.to_str().ok().and_then(TraceParent::parse).map(Some).ok_or_else(|| {
        ApiError::invalid(
            "traceparent: not a W3C traceparent such as 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
    })
}

/// `POST /api/v1/runs`: 201 with `submit -o json`'s shape and the run in `Location` (200 for
/// a duplicate of an idempotency key, naming the first run).
pub(crate) async fn api(
    State(server): State<Server>,
    user: User,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    user.may_act()?;
    let ask: RunAsk = serde_json::from_slice(&body).map_err(|error| ApiError::invalid(format!("body: {error}")))?;
    let parent = traceparent(&headers)?;
    let submitted = ask.submit(&server, parent.as_ref()).await?;
    let status = if submitted.published.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let mut response = (
        status,
        Json(sluice_client::json::submitted_json(&submitted.published, &submitted.workflow, &submitted.window)),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/api/v1/runs/{}", submitted.published.run_id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_traceparent_is_refused_naming_it() {
        let mut headers = HeaderMap::new();
        assert!(matches!(traceparent(&headers), Ok(None)));
        headers
            .insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(matches!(traceparent(&headers), Ok(Some(_))));
        headers.insert("traceparent", HeaderValue::from_static("nonsense"));
        assert!(traceparent(&headers).is_err_and(|error| error.message.starts_with("traceparent")));
    }
}
