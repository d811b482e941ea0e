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
