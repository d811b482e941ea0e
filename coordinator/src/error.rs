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
