//! Why a worker cannot go on, and whether trying again may help.

use sluice_proto::CodecError;

/// The worker could not run, or one of its NATS operations failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A NATS request failed (connection lost, timeout, the server refused for now).
    #[error("{context}: {source}")]
    Nats { context: String, source: async_nats::Error },
    /// A message could not be encoded: the same value fails the same way every time.
    #[error("{context}: {source}")]
    Encode { context: &'static str, source: CodecError },
    /// A setting is out of range, its pool is not declared, or the pool's live workers serve
    /// other kinds: the worker does not start.
    #[error("{0}")]
    Config(String),
}

impl WorkerError {
    pub(crate) fn nats(context: impl Into<String>, source: impl Into<async_nats::Error>) -> Self {
        Self::Nats { context: context.into(), source: source.into() }
    }

    pub(crate) fn encode(context: &'static str, source: CodecError) -> Self {
        Self::Encode { context, source }
    }

    /// Whether the same operation may succeed later: NATS failures usually pass (the client
    /// reconnects); an unencodable message or a bad setting never does.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Nats { .. } => true,
            Self::Encode { .. } | Self::Config(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nats_failures_are_retryable() {
        let nats = WorkerError::nats("publishing", std::io::Error::other("connection lost"));
        assert!(nats.is_retryable());
        assert!(!WorkerError::Config("concurrency must be 1 to 1024, not 0".into()).is_retryable());
        let source = CodecError::UnsupportedVersion { what: "event", found: 99 };
        assert!(!WorkerError::encode("encoding an event", source).is_retryable());
    }

    #[test]
    fn messages_say_what_failed() {
        let nats = WorkerError::nats("opening stream SLUICE_JOBS", std::io::Error::other("timed out"));
        assert_eq!(nats.to_string(), "opening stream SLUICE_JOBS: timed out");
        let config = WorkerError::Config("pool `gpu` is not declared".into());
        assert_eq!(config.to_string(), "pool `gpu` is not declared");
    }
}
