//! W3C trace context (`traceparent`), parsed from and written to message headers so that a
//! run is one trace from submission to every job.

use std::fmt;

use rand::Rng;

/// A parsed `traceparent` header: version 00, trace id, parent span id, flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace (what a submission without a traceparent gets).
    pub fn new_root(rng: &mut impl Rng) -> Self {
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        rng.fill(&mut trace_id);
        rng.fill(&mut span_id);
        // All-zero ids are invalid in W3C trace context.
        trace_id[15] |= 1;
        span_id[7] |= 1;
        Self { trace_id, span_id, sampled: true }
    }

    /// A new span in the same trace, to hand to a child (a dispatched job).
    pub fn child(&self, rng: &mut impl Rng) -> Self {
        let mut span_id = [0u8; 8];
        rng.fill(&mut span_id);
        span_id[7] |= 1;
        Self { span_id, ..*self }
    }

    /// Reads a header value; `None` for anything that is not a valid version-00 value.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id: [u8; 16] = hex_decode(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex_decode(span)?.try_into().ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, sampled: flags & 1 == 1 })
    }

    pub fn trace_id_hex(&self) -> String {
        hex_encode(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex_encode(&self.trace_id), hex_encode(&self.span_id), u8::from(self.sampled))
    }
}

impl TraceParent {
    /// The same trace, at span `span_id` (what a process hands on as the parent of what it
    /// starts under that span).
    pub fn at(&self, span_id: [u8; 8]) -> Self {
        Self { span_id, ..*self }
    }
}

/// A span id derived from `parts`: the same in every process and every release, so a span
/// emitted long after its parent's process is gone (a job's, from its record) still nests
/// under it, and a child can name its parent's span without asking anyone.
pub fn derived_span_id(parts: &[&[u8]]) -> [u8; 8] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"sluice-span");
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

/// The span of a run (its root, or under the submitter's span).
pub fn run_span_id(run_id: &str) -> [u8; 8] {
    derived_span_id(&[b"run", run_id.as_bytes()])
}

/// The span of one generation of a job (`path`: `extract`, or `fan.child-7`).
pub fn job_span_id(run_id: &str, path: &str, generation: u32) -> [u8; 8] {
    derived_span_id(&[b"job", run_id.as_bytes(), path.as_bytes(), &generation.to_be_bytes()])
}

/// The span summarising a parent's children beyond those with spans of their own.
pub fn children_span_id(run_id: &str, parent: &str, generation: u32) -> [u8; 8] {
    derived_span_id(&[b"children", run_id.as_bytes(), parent.as_bytes(), &generation.to_be_bytes()])
}

/// A span attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttributeValue {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<String> for AttributeValue {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u32> for AttributeValue {
    fn from(value: u32) -> Self {
        Self::Int(i64::from(value))
    }
}

impl From<bool> for AttributeValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

/// A finished span, as Sluice's libraries describe it: plain data, handed to a
/// [`SpanSink`]; the binary that exports (OTLP) turns it into its exporter's type.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a trace's root.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    /// `sluice.*` attributes, in a fixed order.
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// Set when what the span stands for failed: the span's status is an error with it.
    pub error: Option<String>,
}

/// Where finished spans go. `emit` must not block: an exporter queues them (and drops,
/// counting, when its queue is full).
pub trait SpanSink: Send + Sync + fmt::Debug {
    fn emit(&self, span: Span);
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders_w3c_example() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert!(parsed.sampled);
    }

    #[test]
    fn child_keeps_the_trace() {
        let mut rng = rand::rng();
        let root = TraceParent::new_root(&mut rng);
        let child = root.child(&mut rng);
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
    }

    #[test]
    fn derived_span_ids_are_stable_distinct_and_never_zero() {
        let run = "0190a4b2-0000-7000-8000-000000000001";
        assert_eq!(job_span_id(run, "a", 0), job_span_id(run, "a", 0), "the same in every process");
        let ids = [
            run_span_id(run),
            job_span_id(run, "a", 0),
            job_span_id(run, "a", 1),
            job_span_id(run, "b", 0),
            children_span_id(run, "a", 0),
            job_span_id("another", "a", 0),
        ];
        for (i, id) in ids.iter().enumerate() {
            assert_ne!(*id, [0; 8]);
            assert!(ids[i + 1..].iter().all(|other| other != id), "{i}: {ids:?}");
        }
        // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
        assert_ne!(derived_span_id(&[b"ab", b"c"]), derived_span_id(&[b"a", b"bc"]));
        // Pinned: a change here would split the traces of runs started before an upgrade.
        assert_eq!(hex_encode(&run_span_id(run)), "ce7cda154eb602ee");
    }

    #[test]
    fn rejects_malformed_values() {
        for text in [
            "",
            "00-xyz",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(text), None, "{text}");
        }
    }
}
