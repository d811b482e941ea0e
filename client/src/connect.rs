//! Connecting to NATS, with the server version check every Sluice binary makes.

use std::time::Duration;

use crate::error::ClientError;

/// How long the first connection may take before the URL counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects with a name that shows in the server's connection list, and checks the server
/// version (Sluice needs 2.14 or newer). Fails at once when nothing answers; once connected,
/// the client reconnects for ever (a nats-server restart is survived).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClientError> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(url)
        .await
        .map_err(|source| ClientError::Unreachable { url: url.to_owned(), source: source.into() })?;
    check_server(&client)?;
    Ok(client)
}

/// Checks the connected server is new enough.
pub fn check_server(client: &async_nats::Client) -> Result<(), ClientError> {
    sluice_proto::version::check_server_version(&client.server_info().version).map_err(ClientError::ServerTooOld)
}
