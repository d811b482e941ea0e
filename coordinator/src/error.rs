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
    #[error("{0}: no progress for 10 s")]
    Stalled(String),
    #[error(transparent)]
    Client(#[from] sluice_client::ClientError),
    /// A revision-checked write lost to another write of the same record (the timekeeper
    /// and the loop both write schedules, backfills and pools): read it again and redo.
    #[error("{what}: the record changed while it was being written")]
    Changed { what: String },
}

impl ServiceError {
    /// Whether trying again (reading state afresh) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Nats { .. } | Self::Stalled(_) | Self::Changed { .. } => true,
            Self::Codec(_) | Self::ServerVersion(_) => false,
            Self::Client(error) => error.is_retryable(),
        }
    }
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
