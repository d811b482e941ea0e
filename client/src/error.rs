//! The client's error type: what went wrong, and whether trying again may help.

/// Something a client call could not do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at the URL.
    #[error("cannot reach NATS at {url}: {source} (is a nats-server running there? `sluice dev` starts one)")]
    Unreachable { url: String, source: async_nats::Error },
    /// The server refused this connection: its credentials, or TLS.
    #[error("NATS at {url} refused the connection: {reason} (check the --nats-* credentials)")]
    Refused { url: String, reason: String },
    /// A connection option is wrong (a missing or unreadable file, two ways to
    /// authenticate): names the flag and the file.
    #[error("{}", bad_option(flag, path.as_deref(), reason))]
    BadOption { flag: &'static str, path: Option<std::path::PathBuf>, reason: String },
    /// The server is older than Sluice needs.
    #[error("{0}")]
    ServerTooOld(String),
    /// The server runs without JetStream, which holds everything Sluice keeps.
    #[error("this nats-server has no JetStream: start it with `-js`")]
    NoJetStream,
    /// A NATS operation failed.
    #[error("{context}: {source}")]
    Nats { context: String, source: async_nats::Error },
    /// A stored record or message could not be read or written.
    #[error(transparent)]
    Codec(#[from] sluice_proto::CodecError),
    /// A read made no progress.
    #[error("{0}: no progress for 10 s")]
    Stalled(String),
    /// No coordinator ever ran against this server: its streams and buckets are missing.
    #[error(
        "Sluice is not set up on this nats-server ({missing} is missing): start a coordinator (`sluice coordinator`, or `sluice dev`)"
    )]
    NotSetUp { missing: String },
    /// The caller's input is wrong (a cursor, a range, a run id suffix); says what.
    #[error("{0}")]
    Invalid(String),
    /// A control request was stored, but no coordinator answered it in time.
    #[error("the request ({action}) is queued, but no coordinator answered it within {waited_s}s: is one running?")]
    NoAnswer { action: &'static str, waited_s: u64 },
    /// What the server holds contradicts itself (a duplicate whose first copy is gone).
    #[error("{0}")]
    Inconsistent(String),
}

impl ClientError {
    /// Whether the same call may succeed later (a connection or the coordinator may come
    /// back); a codec error or a server that is too old will not change by waiting.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Nats { .. } | Self::Stalled(_) | Self::NoAnswer { .. } => true,
            Self::NotSetUp { .. } => true,
            Self::ServerTooOld(_) | Self::NoJetStream | Self::Codec(_) | Self::Invalid(_) => false,
            Self::Refused { .. } | Self::BadOption { .. } | Self::Inconsistent(_) => false,
        }
    }
}

/// `--flag PATH: reason`, or `--flag: reason`.
fn bad_option(flag: &str, path: Option<&std::path::Path>, reason: &str) -> String {
    match path {
        Some(path) => format!("{flag} {}: {reason}", path.display()),
        None => format!("{flag}: {reason}"),
    }
}

/// Adds context to any NATS error.
pub trait NatsContext<T> {
    fn context(self, context: impl Into<String>) -> Result<T, ClientError>;
}

impl<T, E: Into<async_nats::Error>> NatsContext<T> for Result<T, E> {
    fn context(self, context: impl Into<String>) -> Result<T, ClientError> {
        self.map_err(|source| ClientError::Nats { context: context.into(), source: source.into() })
    }
}
