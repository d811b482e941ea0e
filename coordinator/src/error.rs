//! The coordinator's error type.

/// Something the coordinator could not do. NATS failures are retried by restarting the
/// service loop from durable state.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{context}: {source}")]
    Nats { context: String, source: async_nats::Error },
    #[error(transparent)]
    Codec(#[from] sluice_proto::CodecError),
    #[error("{0}")]
    ServerVersion(String),
    /// Too little JetStream storage to run on: a configuration to fix, so the coordinator
    /// stops instead of trying again.
    #[error(transparent)]
    StoreTooSmall(#[from] crate::storage::StoreTooSmall),
    #[error("{0}: no progress for 10 s")]
    Stalled(String),
    #[error(transparent)]
    Client(#[from] sluice_client::ClientError),
    /// A revision-checked write lost to another write of the same record (the timekeeper
    /// and the loop both write schedules, backfills and pools): read it again and redo.
    #[error("{what}: the record changed while it was being written")]
    Changed { what: String },
}

/// What a failure means for the input being handled (DESIGN decision 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input can never be written or read as it is (too large for the server, not
    /// decodable, not a valid subject): its run fails or it is rejected, with the reason, and
    /// the input is acknowledged, so it cannot stall what comes after it.
    Deterministic,
    /// The server or the network (timeouts, lost connections, no responders, a full store,
    /// JetStream not ready): the term restarts from durable state after a backoff; no job is
    /// charged for it.
    Transient,
    /// Another coordinator wrote meanwhile (a wrong last sequence): this term ends.
    Fencing,
}

impl ServiceError {
    /// Whether trying again (reading state afresh) may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// Whether the coordinator stops on it rather than start a new term: the server is set
    /// up so that no term can succeed.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::StoreTooSmall(_))
    }

    /// The error's class, from the table in [`classify_nats`] for NATS failures.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Nats { source, .. } => classify_nats(source.as_ref()),
            Self::Codec(_) => ErrorClass::Deterministic,
            // Not an input's failure; the coordinator stops on a store too small (`is_fatal`).
            Self::ServerVersion(_) | Self::StoreTooSmall(_) | Self::Stalled(_) | Self::Changed { .. } => {
                ErrorClass::Transient
            }
            Self::Client(sluice_client::ClientError::Nats { source, .. }) => classify_nats(source.as_ref()),
            Self::Client(error) if error.is_retryable() => ErrorClass::Transient,
            Self::Client(_) => ErrorClass::Deterministic,
        }
    }
}

/// The error-class table for NATS failures: the JetStream error codes and client error
/// kinds anywhere in the error's chain decide; anything not listed is transient.
///
/// | failure                                        | class         |
/// |------------------------------------------------|---------------|
/// | client: max payload exceeded                   | deterministic |
/// | JetStream 10054: message size exceeds maximum  | deterministic |
/// | JetStream 10071 / wrong last sequence/revision | fencing       |
/// | timeout, connection, no responders, 10047 full | transient     |
pub fn classify_nats(error: &(dyn std::error::Error + 'static)) -> ErrorClass {
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};
    use async_nats::jetstream::{ErrorCode, kv};
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(error) = error.downcast_ref::<async_nats::jetstream::Error>() {
            match error.error_code() {
                ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => return ErrorClass::Deterministic,
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE => return ErrorClass::Fencing,
                _ => {}
            }
        }
        if let Some(error) = error.downcast_ref::<PublishError>() {
            match error.kind() {
                PublishErrorKind::MaxPayloadExceeded => return ErrorClass::Deterministic,
                PublishErrorKind::WrongLastSequence => return ErrorClass::Fencing,
                _ => {}
            }
        }
        if let Some(error) = error.downcast_ref::<async_nats::PublishError>()
            && error.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded
        {
            return ErrorClass::Deterministic;
        }
        if let Some(error) = error.downcast_ref::<kv::UpdateError>()
            && error.kind() == kv::UpdateErrorKind::WrongLastRevision
        {
            return ErrorClass::Fencing;
        }
        current = error.source();
    }
    ErrorClass::Transient
}

/// The result of a revision-checked KV write: losing to another write is
/// [`ServiceError::Changed`], anything else a NATS failure.
pub fn revision_checked<T>(
    result: Result<T, async_nats::jetstream::kv::UpdateError>,
    what: impl Into<String>,
) -> Result<T, ServiceError> {
    use async_nats::jetstream::kv::UpdateErrorKind;
    match result {
        Err(error) if error.kind() == UpdateErrorKind::WrongLastRevision => {
            Err(ServiceError::Changed { what: what.into() })
        }
        other => other.context(what),
    }
}

/// Adds context to any NATS error.
pub trait NatsContext<T> {
    fn context(self, context: impl Into<String>) -> Result<T, ServiceError>;
}

impl<T, E: Into<async_nats::Error>> NatsContext<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, ServiceError> {
        self.map_err(|source| ServiceError::Nats { context: context.into(), source: source.into() })
    }
}
