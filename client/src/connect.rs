//! Connecting to NATS, with the server version check every Sluice binary makes.

use std::time::Duration;

use crate::error::ClientError;

/// How long the first connection may take before the URL counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the JetStream check waits for its answer. A server answers at once, with its
/// account info or "no responders"; an identity not allowed `$JS.API.INFO` gets no answer
/// at all, and that is no reason to refuse it, so silence only delays by this much.
pub const JETSTREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects with a name that shows in the server's connection list, and checks the server:
/// version 2.14 or newer, with JetStream. Fails at once when nothing answers; once
/// connected, the client reconnects for ever (a nats-server restart is survived).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClientError> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|source| ClientError::Unreachable { url: url.to_owned(), source: source.into() })?;
    check_server(&client)?;
    check_jetstream(&client).await?;
    Ok(client)
}

/// Asks the server for JetStream account info (`$JS.API.INFO`): a server started without
/// `-js` (or an account without JetStream) says so, and every command would otherwise fail
/// later with a misleading reason ("no runs", "not set up").
pub async fn check_jetstream(client: &async_nats::Client) -> Result<(), ClientError> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::AccountErrorKind;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(JETSTREAM_CHECK_TIMEOUT);
    match js.query_account().await {
        Ok(_) => Ok(()),
        Err(error) => match error.kind() {
            AccountErrorKind::JetStreamUnavailable => Err(ClientError::NoJetStream),
            AccountErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED
                    || api.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                Err(ClientError::NoJetStream)
            }
            // Anything else (no answer, a server still starting) is for the command's own
            // calls to report.
            _ => {
                tracing::debug!(%error, "the JetStream check got no clear answer");
                Ok(())
            }
        },
    }
}

/// Checks the connected server is new enough.
pub fn check_server(client: &async_nats::Client) -> Result<(), ClientError> {
    sluice_proto::version::check_server_version(&client.server_info().version).map_err(ClientError::ServerTooOld)
}
