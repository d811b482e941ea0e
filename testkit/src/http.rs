//! A loopback HTTP/1.1 receiver for tests: records every request (method, path, headers,
//! body, when it came) and answers each as the test's responder says, after an optional
//! delay, so a test can play a webhook that fails, recovers or hangs. One thread per
//! connection; keep-alive is honoured.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One request as received.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// The body as JSON (`Value::Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What to answer: a status, and how long to wait before answering.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, delay: Duration::ZERO }
    }
}

type Responder = dyn Fn(&Request, &[Request]) -> Reply + Send + Sync;

/// The receiver; clones share it. Its listener lives as long as the test process.
#[derive(Clone)]
pub struct Receiver {
    got: Arc<(Mutex<Vec<Request>>, Condvar)>,
    responder: Arc<Responder>,
    pub address: String,
}

impl Receiver {
    /// Listens on 127.0.0.1 (a free port); `responder` sees each request and those before it.
    pub fn start(responder: impl Fn(&Request, &[Request]) -> Reply + Send + Sync + 'static) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let receiver = Self {
            got: Arc::new((Mutex::new(Vec::new()), Condvar::new())),
            responder: Arc::new(responder),
            address: listener.local_addr()?.to_string(),
        };
        let serving = receiver.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let serving = serving.clone();
                std::thread::spawn(move || serving.serve(stream));
            }
        });
        Ok(receiver)
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.got.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `done` holds of the requests so far (woken by each request), at most
    /// `timeout`; returns them, or the error naming `what`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Request]) -> bool,
    ) -> Result<Vec<Request>, String> {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.got;
        let mut got = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if done(&got) {
                return Ok(got.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("timed out after {timeout:?} waiting for {what}; got {} requests", got.len()));
            }
            got = changed.wait_timeout(got, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    fn serve(&self, stream: TcpStream) {
        let Ok(read_half) = stream.try_clone() else { return };
        let mut reader = BufReader::new(read_half);
        let mut writer = stream;
        while let Some(request) = read_request(&mut reader) {
            let reply = {
                let (lock, _) = &*self.got;
                let got = lock.lock().unwrap_or_else(PoisonError::into_inner);
                (self.responder)(&request, &got)
            };
            // Recorded before the answer (and its delay): a test sees a hanging request.
            {
                let (lock, changed) = &*self.got;
                lock.lock().unwrap_or_else(PoisonError::into_inner).push(request);
                changed.notify_all();
            }
            std::thread::sleep(reply.delay);
            let answer = format!("HTTP/1.1 {} Test\r\nContent-Length: 0\r\n\r\n", reply.status);
            if writer.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).ok()? == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    let length = headers.get("content-length").and_then(|value| value.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body, at: Instant::now() })
}

/// One HTTP/1.1 request to `address` (`127.0.0.1:PORT`), the connection closed after it:
/// the status and the body. For tests of HTTP servers (the API).
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    exchange(address, method, path, headers, body).map(|(status, _, body)| (status, body))
}

/// An answer: its status, its headers (names in lower case, in their order), its body.
pub type Answer = (u16, Vec<(String, String)>, String);

/// [`request`], with the answer's headers too.
pub fn exchange(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let answer_headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    // A chunked body (axum's streaming responses) is joined back together.
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, answer_headers, body))
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        text = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}
