//! Reading the dead-letter stream: jobs whose attempts are over, with every attempt's error.

use async_nats::jetstream::{self, stream::DirectGetErrorKind};
use sluice_proto::{ControlAction, ControlRequest, DeadLetter, decode, names};

use crate::error::{ClientError, NatsContext};

/// Dead letters read at most by one call (the newest).
pub const DEAD_LETTERS_READ_MAX: usize = 100_000;

/// One entry of the stream: a dead letter, or raw bytes nobody could read.
#[derive(Clone, Debug)]
pub struct DeadLetterEntry {
    /// Its sequence in `SLUICE_DLQ`: the id `dlq show|replay` take.
    pub id: u64,
    pub subject: String,
    pub letter: Option<DeadLetter>,
    pub reason: String,
}

impl DeadLetterEntry {
    /// The pool it came from.
    pub fn pool(&self) -> &str {
        names::parse_dlq_subject(&self.subject).unwrap_or(&self.subject)
    }

    /// Whether it matches the filters (absent filters match everything).
    pub fn matches(&self, workflow: Option<&str>, pool: Option<&str>) -> bool {
        let workflow_ok =
            workflow.is_none_or(|workflow| self.letter.as_ref().is_some_and(|letter| letter.job.workflow == workflow));
        workflow_ok && pool.is_none_or(|pool| pool == self.pool())
    }

    /// The request that replays it: its job queued again in a fresh series of attempts
    /// (with the definitions of `spec`, when given), after which the coordinator removes
    /// the letter. `None` for a letter nobody could read.
    pub fn replay_request(&self, spec: Option<String>) -> Option<ControlRequest> {
        let letter = self.letter.as_ref()?;
        Some(ControlRequest {
            job: Some(letter.job.job.clone()),
            dead_letter: Some(self.id),
            spec,
            ..ControlRequest::new(ControlAction::Retry, Some(letter.job.run_id), "")
        })
    }
}

/// Every dead letter (at most the newest [`DEAD_LETTERS_READ_MAX`]), oldest first.
pub async fn load(js: &jetstream::Context) -> Result<Vec<DeadLetterEntry>, ClientError> {
    let Ok(stream) = js.get_stream(names::DLQ_STREAM).await else { return Ok(Vec::new()) };
    let info = stream.get_info().await.context("reading the dead-letter stream")?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let newest_first = info.state.last_sequence.saturating_sub(DEAD_LETTERS_READ_MAX as u64 - 1);
    let mut letters = Vec::new();
    for id in info.state.first_sequence.max(newest_first)..=info.state.last_sequence {
        if let Some(entry) = get(&stream, id).await? {
            letters.push(entry);
        }
    }
    Ok(letters)
}

/// How many dead letters wait in the stream (no stream yet: none).
pub async fn waiting(js: &jetstream::Context) -> Result<u64, ClientError> {
    let Ok(mut stream) = js.get_stream(names::DLQ_STREAM).await else { return Ok(0) };
    Ok(stream.info().await.context("reading the dead-letter stream")?.state.messages)
}

/// One dead letter; `None` if there is none with that id (never was, or deleted).
pub async fn one(js: &jetstream::Context, id: u64) -> Result<Option<DeadLetterEntry>, ClientError> {
    let Ok(stream) = js.get_stream(names::DLQ_STREAM).await else { return Ok(None) };
    get(&stream, id).await
}

async fn get(stream: &jetstream::stream::Stream, id: u64) -> Result<Option<DeadLetterEntry>, ClientError> {
    match stream.direct_get(id).await {
        Ok(message) => {
            let reason_header = message.headers.get(names::HEADER_REASON).map(|value| value.as_str().to_owned());
            let letter = decode::<DeadLetter>(&message.payload).ok();
            let reason = letter
                .as_ref()
                .map(|letter| letter.reason.clone())
                .or(reason_header)
                .unwrap_or_else(|| "unreadable dead letter".into());
            Ok(Some(DeadLetterEntry { id, subject: message.subject.to_string(), letter, reason }))
        }
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).context(format!("reading dead letter {id}")),
    }
}
