//! One attempt's log lines over HTTP: `GET /api/v1/runs/{id}/jobs/{job}/logs` (the newest
//! page, the page before a point, the lines after one, with `follow=true` server-sent events
//! until the attempt is over, with `format=text` the whole log to download), and the job
//! page's log section. Every read goes a page at a time through `sluice_client::logs`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use sluice_client::Stores;
use sluice_client::logs::{AttemptLog, LogPage};
use sluice_proto::{JobRecord, LogBatch, RunId};

use crate::Server;
use crate::auth::User;
use crate::error::ApiError;

/// The parameters `…/logs` takes.
pub const LOGS_PARAMETERS: [&str; 5] = ["attempt", "before", "after", "follow", "format"];
/// How often a follow looks whether its attempt is over.
const FOLLOW_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Events a follow holds for a slow reader before it waits for them to be read.
const FOLLOW_BUFFER: usize = 16;

/// A log read's parameters, checked: every problem is a 400 naming its parameter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LogsQuery {
    pub attempt: Option<u32>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub follow: bool,
    /// `format=text`: the attempt's whole log as text (`format=json`, a page, is the default).
    pub text: bool,
}

impl LogsQuery {
    fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        if let Some(unknown) = params.keys().find(|name| !LOGS_PARAMETERS.contains(&name.as_str())) {
            return Err(ApiError::invalid(format!(
                "unknown parameter `{unknown}` (parameters: {})",
                LOGS_PARAMETERS.join(", ")
            )));
        }
        let number = |name: &str| -> Result<Option<u64>, ApiError> {
            params
                .get(name)
                .map(|text| {
                    text.parse::<u64>()
                        .map_err(|_| ApiError::invalid(format!("{name} must be a whole number, not `{text}`")))
                })
                .transpose()
        };
        let attempt = match number("attempt")? {
            Some(attempt) => Some(
                u32::try_from(attempt)
                    .ok()
                    .filter(|attempt| *attempt >= 1)
                    .ok_or_else(|| ApiError::invalid(format!("attempt must be 1 or more, not `{attempt}`")))?,
            ),
            None => None,
        };
        let follow = match params.get("follow").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(ApiError::invalid(format!("follow must be true or false, not `{other}`"))),
        };
        let text = match params.get("format").map(String::as_str) {
            None | Some("json") => false,
            Some("text") => true,
            Some(other) => return Err(ApiError::invalid(format!("format must be json or text, not `{other}`"))),
        };
        let query = Self { attempt, before: number("before")?, after: number("after")?, follow, text };
        if query.before.is_some() && (query.after.is_some() || query.follow) {
            return Err(ApiError::invalid("before reads back from a point: it takes neither after nor follow"));
        }
        if query.text && (query.before.is_some() || query.after.is_some() || query.follow) {
            return Err(ApiError::invalid("format=text is the whole log: it takes no before, after or follow"));
        }
        Ok(query)
    }
}

/// The attempt a read is about: its job's record now, and which attempt.
pub(crate) struct Target {
    pub run: RunId,
    pub job: JobRecord,
    pub attempt: u32,
}

impl Target {
    /// Run `id`'s job `path`, attempt `attempt` (its latest unless given; 1 before any ran).
    pub(crate) async fn find(server: &Server, id: &RunId, path: &str, attempt: Option<u32>) -> Result<Self, ApiError> {
        let stores = Stores::open_required(&server.js).await?;
        let run = stores.run(id).await?.ok_or_else(|| ApiError::not_found(format!("no run {id}")))?;
        let job = stores
            .job(&run, path)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("run {id} has no job `{path}`")))?;
        let latest = job.attempts.max(1);
        let attempt = attempt.unwrap_or(latest);
        if attempt > latest {
            return Err(ApiError::not_found(format!(
                "job `{path}` of run {id} has no attempt {attempt} (its attempts are 1 to {latest})"
            )));
        }
        Ok(Self { run: *id, job, attempt })
    }

    pub(crate) async fn log(&self, server: &Server) -> Result<AttemptLog, ApiError> {
        Ok(AttemptLog::open(&server.js, &self.run, &self.job.name, self.attempt).await?)
    }

    /// Whether the attempt is over, so that every line it logged is stored (a worker stores
    /// an attempt's lines before it reports the attempt).
    pub(crate) fn over(&self) -> bool {
        attempt_over(&self.job, self.attempt)
    }
}

/// Whether attempt `attempt` of `job` has ended: the job has, a later attempt was charged,
/// or the record says when this one finished.
fn attempt_over(job: &JobRecord, attempt: u32) -> bool {
    job.state.is_terminal()
        || job.attempts > attempt
        || job.attempt_history.iter().any(|record| record.attempt == attempt && record.finished_at.is_some())
}

/// One batch's lines, each `{"seq", "at", "job", "attempt", "stream", "text"}` (`sluice logs
/// -o json`'s shape, with the stream sequence of the batch).
fn lines_json(seq: u64, batch: &LogBatch) -> impl Iterator<Item = Value> + '_ {
    batch.lines.iter().map(move |line| {
        json!({
            "seq": seq,
            "at": sluice_client::json::time(Some(line.at)),
            "job": batch.job,
            "attempt": batch.attempt,
            "stream": line.stream.as_str(),
            "text": line.text,
        })
    })
}

/// A page: `{"run_id", "job", "attempt", "over", "lines", "earlier", "last", "more"}`.
fn page_json(target: &Target, page: &LogPage) -> Value {
    let lines: Vec<Value> = page.batches.iter().flat_map(|(seq, batch)| lines_json(*seq, batch)).collect();
    json!({
        "run_id": target.run.to_string(),
        "job": target.job.name,
        "attempt": target.attempt,
        "over": target.over(),
        "lines": lines,
        "earlier": page.earlier,
        "last": page.last,
        "more": page.more,
    })
}

/// `GET /api/v1/runs/{id}/jobs/{job}/logs`.
pub(crate) async fn api(
    State(server): State<Server>,
    _user: User,
    Path((id, job)): Path<(String, String)>,
    headers: HeaderMap,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|rejection| ApiError::invalid(rejection.body_text()))?;
    let query = LogsQuery::parse(&params)?;
    let id = crate::api::run_id(&id)?;
    let target = Target::find(&server, &id, &job, query.attempt).await?;
    if query.follow {
        return follow(server, target, resume_point(&headers, query.after)).await;
    }
    if query.text {
        return download(&server, &target).await;
    }
    let log = target.log(&server).await?;
    let page = match query.after {
        Some(after) => log.after(after).await?,
        None => log.before(query.before).await?,
    };
    Ok(axum::Json(page_json(&target, &page)).into_response())
}

/// Where a follow starts: after `after`, or after the last event a reconnecting
/// `EventSource` saw (its `Last-Event-ID`), whichever is later, so no line comes twice.
fn resume_point(headers: &HeaderMap, after: Option<u64>) -> u64 {
    let seen = headers.get("last-event-id").and_then(|value| value.to_str().ok()).and_then(|text| text.parse().ok());
    after.unwrap_or(0).max(seen.unwrap_or(0))
}

/// Server-sent events: `lines` (`{"lines", "last"}`, id = the batch's sequence) for every
/// batch stored after `after`, then `end` once the attempt is over and every line is sent.
async fn follow(server: Server, target: Target, after: u64) -> Result<Response, ApiError> {
    let log = target.log(&server).await?;
    let mut batches = log.follow(after).await?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Event>(FOLLOW_BUFFER);
    let Target { run, job, attempt } = target;
    let path = job.name.clone();
    tokio::spawn(async move {
        let mut last = after;
        let mut over = attempt_over(&job, attempt);
        let mut check = tokio::time::interval(FOLLOW_CHECK_EVERY);
        loop {
            tokio::select! {
                batch = batches.next() => match batch {
                    Some(Ok((seq, batch))) => {
                        last = seq;
                        let lines: Vec<Value> = lines_json(seq, &batch).collect();
                        let data = json!({"lines": lines, "last": seq}).to_string();
                        if sender.send(Event::default().event("lines").id(seq.to_string()).data(data)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        tracing::warn!(%error, %run, job = path, "a log follow stopped");
                        return;
                    }
                    None => return,
                },
                _ = check.tick() => {
                    if sender.is_closed() {
                        return;
                    }
                    if !over {
                        over = match Target::find(&server, &run, &path, Some(attempt)).await {
                            Ok(now) => now.over(),
                            Err(error) => {
                                tracing::warn!(error = %error.message, %run, job = path, "a log follow could not read its job");
                                false
                            }
                        };
                    }
                    // Over, and nothing stored after the last batch sent: that was all.
                    if over && log.stored_after(last).await.is_ok_and(|left| left == 0) {
                        let _ = sender.send(Event::default().event("end").data(json!({"last": last}).to_string())).await;
                        return;
                    }
                }
            }
        }
    });
    let stream = futures::stream::poll_fn(move |context| {
        receiver.poll_recv(context).map(|event| event.map(Ok::<_, Infallible>))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// The whole log of an attempt as text, `TIME STREAM TEXT` a line, read a page at a time
/// up to what is stored when it is asked for.
async fn download(server: &Server, target: &Target) -> Result<Response, ApiError> {
    let log = target.log(server).await?;
    let name = format!("{}-{}-attempt-{}.log", target.run, target.job.name, target.attempt);
    let pages = futures::stream::try_unfold((log, 0u64, false), |(log, after, done)| async move {
        if done {
            return Ok::<_, sluice_client::ClientError>(None);
        }
        let page = log.after(after).await?;
        let mut text = String::new();
        for (_, batch) in &page.batches {
            for line in &batch.lines {
                let at = line.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                text.push_str(&format!("{at} {:<6} {}\n", line.stream.as_str(), line.text));
            }
        }
        let finished = !page.more;
        Ok(Some((text, (log, page.last, finished))))
    });
    let body = Body::from_stream(pages.map(|page| page.map_err(std::io::Error::other)));
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<LogsQuery, String> {
        let params = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        LogsQuery::parse(&params).map_err(|error| error.message)
    }

    #[test]
    fn parameters_are_checked_and_each_problem_names_its_parameter() {
        assert_eq!(parse(&[]), Ok(LogsQuery::default()));
        assert_eq!(
            parse(&[("attempt", "2"), ("after", "10"), ("follow", "true")]),
            Ok(LogsQuery { attempt: Some(2), before: None, after: Some(10), follow: true, text: false })
        );
        assert!(parse(&[("attempt", "0")]).unwrap_err().starts_with("attempt"));
        assert!(parse(&[("attempt", "x")]).unwrap_err().starts_with("attempt"));
        assert!(parse(&[("attempt", "99999999999")]).unwrap_err().starts_with("attempt"));
        assert!(parse(&[("before", "-1")]).unwrap_err().starts_with("before"));
        assert!(parse(&[("follow", "yes")]).unwrap_err().starts_with("follow"));
        assert!(parse(&[("tail", "5")]).unwrap_err().contains("`tail`"));
        assert!(parse(&[("before", "5"), ("follow", "true")]).unwrap_err().starts_with("before"));
        assert!(parse(&[("format", "text")]).unwrap().text);
        assert!(parse(&[("format", "xml")]).unwrap_err().starts_with("format"));
        assert!(parse(&[("format", "text"), ("after", "1")]).unwrap_err().starts_with("format=text"));
    }

    #[test]
    fn a_reconnecting_follow_resumes_after_the_last_event_it_saw() {
        let mut headers = HeaderMap::new();
        assert_eq!(resume_point(&headers, Some(7)), 7);
        headers.insert("last-event-id", HeaderValue::from_static("42"));
        assert_eq!(resume_point(&headers, Some(7)), 42);
        assert_eq!(resume_point(&headers, None), 42);
        headers.insert("last-event-id", HeaderValue::from_static("nonsense"));
        assert_eq!(resume_point(&headers, Some(7)), 7);
    }

    #[test]
    fn an_attempt_is_over_once_recorded_finished_superseded_or_its_job_ended() {
        let run = RunId::new();
        let mut job: JobRecord = serde_json::from_value(json!({
            "schema_version": sluice_proto::SCHEMA_VERSION, "run_id": run.to_string(), "name": "a", "state": "running", "attempts": 1,
        }))
        .unwrap();
        assert!(!attempt_over(&job, 1));
        job.attempts = 2;
        assert!(attempt_over(&job, 1));
        assert!(!attempt_over(&job, 2));
        job.state = sluice_proto::JobState::Completed;
        assert!(attempt_over(&job, 2));
    }
}
