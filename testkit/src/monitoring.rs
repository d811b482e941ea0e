//! A nats-server's monitoring endpoint (`/healthz`, `/varz`, `/jsz`), read over plain HTTP/1.0
//! on loopback: what KEDA's nats-jetstream scaler polls, and how a test sees a cluster form.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Longest one request may take (connect, send, read): a server that stalls longer is an
/// error the caller reports or retries.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response read, in bytes: `/jsz` of a test's streams is a few KiB.
pub const RESPONSE_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// `GET path` (with its query) from the monitoring port `port` on 127.0.0.1; the status code
/// and the body.
pub fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let what = || format!("GET http://{address}{path}");
    let mut stream = TcpStream::connect_timeout(&address, REQUEST_TIMEOUT).with_context(what)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).with_context(what)?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).with_context(what)?;
    // HTTP/1.0: the server closes the connection after the response, which ends the read.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").with_context(what)?;
    let mut response = Vec::new();
    stream.take(RESPONSE_MAX_BYTES).read_to_end(&mut response).with_context(what)?;
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("{}: no HTTP response: {response:?}", what())
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("{}: no status in {head:?}", what()))?;
    Ok((status, body.to_owned()))
}

/// `GET path` parsed as JSON; a status other than 200 is an error naming it.
pub fn get_json(port: u16, path: &str) -> Result<serde_json::Value> {
    let (status, body) = get(port, path)?;
    if status != 200 {
        bail!("GET http://127.0.0.1:{port}{path}: status {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET http://127.0.0.1:{port}{path}: not JSON: {body}"))
}
