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
///
/// `url` may list several servers separated by commas (the nodes of a cluster): the client
/// connects to one of them and fails over to the others ([`server_addrs`]).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClientError> {
    let servers = server_addrs(url)?;
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(servers)
        .await
        .map_err(|source| ClientError::Unreachable { url: url.to_owned(), source: source.into() })?;
    check_server(&client)?;
    check_jetstream(&client).await?;
    Ok(client)
}

/// The servers of a NATS URL: one (`nats://host:4222`) or several separated by commas
/// (`nats://a:4222,nats://b:4222`), as the NATS clients of other languages accept them.
/// A part that is not a URL is refused, naming it.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, ClientError> {
    url.split(',')
        .map(str::trim)
        .map(|part| {
            part.parse::<async_nats::ServerAddr>().map_err(|error| {
                ClientError::Invalid(format!("`{part}` in the NATS URL `{url}` is not a NATS URL: {error}"))
            })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_may_list_the_nodes_of_a_cluster() {
        let servers = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224").unwrap();
        let ports: Vec<u16> = servers.iter().map(|server| server.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
    }

    #[test]
    fn a_part_that_is_no_url_is_named() {
        let error = server_addrs("nats://127.0.0.1:4222,nats://127.0.0.1:notaport").unwrap_err();
        assert!(matches!(error, ClientError::Invalid(_)), "{error:?}");
        assert!(error.to_string().contains("`nats://127.0.0.1:notaport` in the NATS URL"), "{error}");
    }
}
