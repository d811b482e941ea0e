//! Bulk actions by filter: "retry every failed run of X between D1 and D2". The filter is
//! a runs list's (`workflow`, `state`, `origin`, `window_from`, `window_to`); a preview
//! says how many runs it matches, and the action goes as one control request naming those
//! runs, so what was confirmed is what is touched (`expect` refuses it when the count has
//! changed since).

use std::collections::BTreeMap;

use serde::Deserialize;
use sluice_proto::limits::BULK_RUNS_MAX;
use sluice_proto::{BulkAction, BulkRequest, ControlAction, ControlRequest, RunRecord};

use crate::api::RunsQuery;
use crate::error::ApiError;

/// The filter parameters a bulk action takes (those of a runs list that select runs).
pub const FILTER_PARAMETERS: [&str; 5] = ["workflow", "state", "origin", "window_from", "window_to"];

/// A bulk action as asked: the API's JSON body, or the UI's form.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAsk {
    pub action: String,
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub window_from: Option<String>,
    #[serde(default)]
    pub window_to: Option<String>,
    /// Only say which runs it would touch.
    #[serde(default)]
    pub dry_run: bool,
    /// The count the user confirmed: refused (409) when the filter now matches another.
    #[serde(default)]
    pub expect: Option<usize>,
}

/// A bulk action checked, with the runs its filter matches now.
pub struct Selected {
    pub action: BulkAction,
    pub runs: Vec<RunRecord>,
    /// The filter as `name=value` words, for the audit.
    pub selection: String,
}

impl BulkAsk {
    /// The filter, every empty field no filter.
    pub fn filter(&self) -> BTreeMap<String, String> {
        [
            ("workflow", &self.workflow),
            ("state", &self.state),
            ("origin", &self.origin),
            ("window_from", &self.window_from),
            ("window_to", &self.window_to),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            value.as_ref().filter(|value| !value.trim().is_empty()).map(|value| (name.to_owned(), value.clone()))
        })
        .collect()
    }

    /// Checks every field (a 400 names it) and reads the runs the filter matches.
    pub async fn select(&self, js: &async_nats::jetstream::Context) -> Result<Selected, ApiError> {
        let action = BulkAction::parse(&self.action).ok_or_else(|| {
            ApiError::invalid(format!("action: `{}` is not a bulk action: use retry or cancel", self.action))
        })?;
        let filter = self.filter();
        if !filter.contains_key("workflow") {
            return Err(ApiError::invalid("workflow: a bulk action is a workflow's runs: give workflow"));
        }
        if filter.get("state").is_some_and(|state| state == sluice_client::json::PENDING) {
            return Err(ApiError::invalid("state: a bulk action touches stored runs, not pending ones"));
        }
        let query = RunsQuery::parse(&filter)?;
        let runs = query.select(js, BULK_RUNS_MAX).await?;
        let selection = filter.iter().map(|(name, value)| format!("{name}={value}")).collect::<Vec<_>>().join(" ");
        Ok(Selected { action, runs, selection })
    }
}

impl Selected {
    /// The one control request, or why there is none: nothing matches, or the count is
    /// not the one confirmed.
    pub fn request(&self, expect: Option<usize>) -> Result<ControlRequest, ApiError> {
        if self.runs.is_empty() {
            return Err(ApiError::invalid(format!("no run matches {}", self.selection)));
        }
        if let Some(expected) = expect
            && expected != self.runs.len()
        {
            return Err(ApiError::conflict(format!(
                "{} now matches {} runs, not the {expected} confirmed: look again",
                self.selection,
                self.runs.len()
            )));
        }
        let bulk = BulkRequest {
            action: self.action,
            runs: self.runs.iter().map(|run| run.id).collect(),
            selection: self.selection.clone(),
        };
        Ok(ControlRequest::new(ControlAction::Bulk(bulk), None, ""))
    }
}
