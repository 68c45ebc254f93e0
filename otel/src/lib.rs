//! OpenTelemetry for stampede: the trace settings every process shares,
//! W3C trace context, and an OTLP span exporter that never holds up its
//! caller.
//!
//! The agent, the controller and `llm-sim` build each span after the fact,
//! from times they measured anyway, and hand it to an [`Exporter`]. The
//! exporter's queue is bounded: when the collector is slow or gone, spans
//! are dropped and counted rather than slowing the load.

mod config;
mod context;
mod export;

pub use config::{
    Config, DEFAULT_UI_URL, FromEnv, Protocol, SEARCH_LIMIT, export_url, from_env, search_link, trace_page,
};
pub use context::{Traceparent, new_span_id, new_trace_id, sampled_by_ratio};
pub use export::{Exporter, Stats};

/// Re-exported so that users build spans with the same types.
pub use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState};
pub use opentelemetry::{Array, KeyValue, StringValue, Value};
pub use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

/// A finished span with the parts every stampede span shares filled in.
pub fn span(
    name: &'static str,
    kind: SpanKind,
    context: SpanContext,
    parent: Option<SpanId>,
    start: std::time::SystemTime,
    end: std::time::SystemTime,
) -> SpanData {
    SpanData {
        span_context: context,
        parent_span_id: parent.unwrap_or(SpanId::INVALID),
        parent_span_is_remote: parent.is_some(),
        span_kind: kind,
        name: name.into(),
        start_time: start,
        end_time: end.max(start),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: Status::Unset,
        instrumentation_scope: opentelemetry::InstrumentationScope::builder("stampede")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}
