//! W3C trace context: the `traceparent` header, ids, and the ratio
//! decision.

use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};

/// A new random trace id.
pub fn new_trace_id() -> TraceId {
    RandomIdGenerator::default().new_trace_id()
}

/// A new random span id.
pub fn new_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// The ratio decision of the OpenTelemetry `TraceIdRatioBased` sampler: a
/// function of the trace id alone, so that every process that sees the
/// trace decides alike.
pub fn sampled_by_ratio(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..].try_into().expect("a trace id has 16 bytes"));
    (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
}

/// The W3C `traceparent` header: version 00, trace id, parent span id and
/// flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traceparent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span, parent of the receiver's spans.
    pub span_id: SpanId,
    /// The caller recorded (and may export) its span.
    pub sampled: bool,
}

impl Traceparent {
    /// Header name.
    pub const HEADER: &'static str = "traceparent";

    /// Parses a header value; `None` for anything that does not follow the
    /// W3C format (version 00), including all-zero ids.
    pub fn parse(value: &str) -> Option<Traceparent> {
        let mut parts = value.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
            return None;
        }
        let trace_id = TraceId::from_hex(trace).ok()?;
        let span_id = SpanId::from_hex(span).ok()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Traceparent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Length of the header value.
    pub const LEN: usize = 55;

    /// The header value, written out directly: every request carries one,
    /// and this is cheaper than formatting.
    pub fn encode(&self) -> [u8; Self::LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'-'; Self::LEN];
        out[..2].copy_from_slice(b"00");
        let mut put = |at: usize, bytes: &[u8]| {
            for (i, b) in bytes.iter().enumerate() {
                out[at + 2 * i] = HEX[usize::from(b >> 4)];
                out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
            }
        };
        put(3, &self.trace_id.to_bytes());
        put(36, &self.span_id.to_bytes());
        put(53, &[u8::from(self.sampled)]);
        out
    }

    /// The caller's span as a remote parent context.
    pub fn context(&self) -> SpanContext {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        SpanContext::new(self.trace_id, self.span_id, flags, true, TraceState::default())
    }
}

impl fmt::Display for Traceparent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.encode()).expect("a traceparent is ASCII"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_bad_values() {
        let t = Traceparent {
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            sampled: true,
        };
        let text = t.to_string();
        assert_eq!(text, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(Traceparent::parse(&text), Some(t));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!Traceparent::parse(unsampled).unwrap().sampled);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(Traceparent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_encoded_header_is_the_ids_in_lowercase_hex() {
        for i in 0..1_000 {
            let t = Traceparent {
                trace_id: new_trace_id(),
                span_id: new_span_id(),
                sampled: i % 2 == 0,
            };
            let flags = if t.sampled { "01" } else { "00" };
            let expected = format!("00-{}-{}-{flags}", t.trace_id, t.span_id);
            assert_eq!(t.encode().as_slice(), expected.as_bytes());
            assert_eq!(Traceparent::parse(&t.to_string()), Some(t));
        }
    }

    #[test]
    fn the_ratio_decision_keeps_about_the_ratio() {
        let kept = (0..20_000).filter(|_| sampled_by_ratio(new_trace_id(), 0.1)).count();
        assert!((1_600..2_400).contains(&kept), "{kept}");
        assert!(sampled_by_ratio(new_trace_id(), 1.0));
        assert!(!sampled_by_ratio(new_trace_id(), 0.0));
    }
}
