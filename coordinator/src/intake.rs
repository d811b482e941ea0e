//! Turning submission bytes into a run to start, or a rejection with the reason. Pure: the
//! service does the I/O around it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sluice_proto::limits::{IDEMPOTENCY_KEY_MAX_BYTES, TRACESTATE_MAX_BYTES};
use sluice_proto::{Rejection, RunId, SCHEMA_VERSION, Submission, Window, WorkflowSpec, decode};

use crate::engine::NewRun;

/// Just enough of a submission to name the run in a rejection when the rest is unreadable.
#[derive(Deserialize)]
struct RunIdOnly {
    run_id: RunId,
}

/// Checks a submission: decodable, a valid workflow, params for every placeholder, a
/// non-empty window. `received_at` stands in for a missing `submitted_at`.
pub fn check(
    payload: &[u8],
    traceparent: Option<String>,
    tracestate: Option<String>,
    received_at: DateTime<Utc>,
) -> Result<NewRun, Rejection> {
    let reject = |run_id: Option<RunId>, workflow: Option<String>, reason: String| Rejection {
        schema_version: SCHEMA_VERSION,
        received_at,
        run_id,
        workflow,
        reason,
        payload_bytes: payload.len() as u64,
    };
    let submission: Submission = decode(payload).map_err(|error| {
        let run_id = rmp_serde::from_slice::<RunIdOnly>(payload).ok().map(|only| only.run_id);
        reject(run_id, None, error.to_string())
    })?;
    let run_id = Some(submission.run_id);
    submission.run_id.check_v7().map_err(|reason| reject(run_id, None, format!("run_id: {reason}")))?;
    let spec = WorkflowSpec::parse(&submission.workflow).map_err(|error| reject(run_id, None, error.to_string()))?;
    let workflow = Some(spec.name.clone());
    let params =
        spec.resolve_params(&submission.params).map_err(|error| reject(run_id, workflow.clone(), error.to_string()))?;
    if let Some(key) = &submission.idempotency_key
        && (key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX_BYTES)
    {
        return Err(reject(
            run_id,
            workflow,
            format!("idempotency_key must be 1 to {IDEMPOTENCY_KEY_MAX_BYTES} bytes"),
        ));
    }
    // An over-long tracestate is dropped, not stored (W3C: vendors may drop it).
    let tracestate = tracestate.filter(|state| state.len() <= TRACESTATE_MAX_BYTES);
    let origin = submission.origin.unwrap_or_else(|| sluice_proto::messages::ORIGIN_MANUAL.to_owned());
    sluice_proto::messages::check_origin(&origin).map_err(|reason| reject(run_id, workflow.clone(), reason))?;
    let window = match submission.window {
        Some(window) => Window::new(window.start, window.end)
            .map_err(|error| reject(run_id, workflow.clone(), error.to_string()))?,
        None => Window::previous_day(spec.zone(), submission.submitted_at.unwrap_or(received_at)),
    };
    Ok(NewRun {
        id: submission.run_id,
        spec,
        spec_hash: WorkflowSpec::hash(&submission.workflow),
        spec_yaml: submission.workflow,
        window,
        params,
        idempotency_key: submission.idempotency_key,
        origin,
        traceparent,
        tracestate,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sluice_proto::encode;

    use super::*;

    fn submission(workflow: &str) -> Submission {
        Submission {
            schema_version: SCHEMA_VERSION,
            run_id: RunId::new(),
            workflow: workflow.to_owned(),
            window: None,
            params: BTreeMap::new(),
            idempotency_key: None,
            submitted_at: Some(DateTime::parse_from_rfc3339("2024-03-11T10:00:00Z").unwrap().to_utc()),
            origin: None,
        }
    }

    #[test]
    fn a_valid_submission_defaults_to_the_previous_day() {
        let new = check(&encode(&submission("name: w\njobs:\n  a: { run: noop }\n")).unwrap(), None, None, Utc::now())
            .unwrap();
        assert_eq!(new.window.to_string(), "2024-03-10T00:00:00Z..2024-03-11T00:00:00Z");
    }

    #[test]
    fn garbage_is_rejected_with_the_reason() {
        let rejection = check(b"\xff\x00garbage", None, None, Utc::now()).unwrap_err();
        assert_eq!(rejection.run_id, None);
        assert!(rejection.reason.contains("not a valid submission message"), "{}", rejection.reason);
    }

    #[test]
    fn an_invalid_workflow_is_rejected_under_its_run_id() {
        let bad = submission("name: w\njobs:\n  a: { run: noop, needs: [a] }\n");
        let rejection = check(&encode(&bad).unwrap(), None, None, Utc::now()).unwrap_err();
        assert_eq!(rejection.run_id, Some(bad.run_id));
        assert!(rejection.reason.contains("job `a`: needs itself"), "{}", rejection.reason);
    }

    #[test]
    fn a_bad_field_is_named_in_the_rejection() {
        let run_id = RunId::new();
        let payload = rmp_serde::to_vec_named(&serde_json::json!({
            "schema_version": SCHEMA_VERSION, "run_id": run_id.to_string(),
            "workflow": "name: w\njobs:\n  a: { run: noop }\n", "submitted_at": "yesterday",
        }))
        .unwrap();
        let rejection = check(&payload, None, None, Utc::now()).unwrap_err();
        assert_eq!(rejection.run_id, Some(run_id));
        assert!(
            rejection.reason.starts_with("not a valid submission message: field `submitted_at`: "),
            "{}",
            rejection.reason
        );
    }

    #[test]
    fn a_run_id_that_is_not_a_uuid_v7_is_refused() {
        let mut v4 = submission("name: w\njobs:\n  a: { run: noop }\n");
        v4.run_id = "9b2e4c1a-3f5d-4e6a-8b7c-1d2e3f4a5b6c".parse().unwrap();
        let rejection = check(&encode(&v4).unwrap(), None, None, Utc::now()).unwrap_err();
        assert_eq!(rejection.run_id, Some(v4.run_id));
        assert!(rejection.reason.contains("is a UUID of version 4, not a run id"), "{}", rejection.reason);
    }

    #[test]
    fn a_newer_schema_version_is_refused_clearly() {
        let mut newer = submission("name: w\njobs:\n  a: { run: noop }\n");
        newer.schema_version = 99;
        let rejection = check(&encode(&newer).unwrap(), None, None, Utc::now()).unwrap_err();
        assert!(rejection.reason.contains("schema_version 99"), "{}", rejection.reason);
    }
}

/// Every pool the workflow's jobs name must be declared; the refusal names the job, its
/// pool and the pools there are.
pub fn check_pools(spec: &WorkflowSpec, declared: &std::collections::BTreeSet<String>) -> Result<(), String> {
    for (name, job) in &spec.jobs {
        let pool = spec.pool_of(job);
        if !declared.contains(&pool) {
            let known: Vec<&str> = declared.iter().map(String::as_str).collect();
            return Err(format!(
                "job `{name}` runs on pool `{pool}`, which is not declared (pools: {}); declare it with `sluice pool apply {pool}`",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn a_job_on_an_undeclared_pool_is_named_with_the_pools_there_are() {
        let spec =
            WorkflowSpec::parse("name: w\njobs:\n  a: { run: noop }\n  b: { run: noop, pool: highmem }\n").unwrap();
        let declared = std::collections::BTreeSet::from(["default".to_owned()]);
        let error = check_pools(&spec, &declared).unwrap_err();
        assert!(error.contains("job `b` runs on pool `highmem`, which is not declared (pools: default)"), "{error}");
        let both = std::collections::BTreeSet::from(["default".to_owned(), "highmem".to_owned()]);
        assert_eq!(check_pools(&spec, &both), Ok(()));
    }
}
