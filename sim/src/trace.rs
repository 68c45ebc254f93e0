//! The simulator's own spans: when a request carries a W3C `traceparent`
//! and an OTLP endpoint is configured, each phase of the request becomes a
//! SERVER span, child of the caller's span: `queue` (waiting for a batch
//! slot), `prefill` (admission to the first token) and `decode` (first
//! token to the last). In a trace view they sit right under the client's
//! `llm.request` span, so its time splits into the server's phases at a
//! glance. The queue span covers exactly the time observed into the
//! ground-truth queue histogram of `/metrics`.
//!
//! Like an inference server that follows its caller's sampling decision,
//! the simulator exports only when the caller's sampled flag is set.

use std::sync::Arc;
use std::time::SystemTime;

use stampede_otel::{Exporter, KeyValue, SpanContext, SpanKind, Status, TraceFlags, TraceState, Traceparent};
use tokio::time::Instant;

use crate::engine::Job;

/// Where the simulator's spans go.
pub type Spans = Option<Arc<Exporter>>;

/// Starts an exporter for the simulator's spans.
pub fn exporter(config: &stampede_otel::Config) -> Result<Arc<Exporter>, String> {
    let resource = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    Exporter::start(config, resource)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Status of the phase a request was in when its client went away.
const GONE: &str = "the client went away";

/// One request's spans, exported as its phases end.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    exporter: Arc<Exporter>,
    parent: Traceparent,
    /// An instant and the wall-clock time it stood for.
    anchor: (Instant, SystemTime),
}

impl Request {
    /// Spans for a request with `traceparent`, when spans are exported and
    /// the caller sampled it.
    pub(crate) fn new(spans: &Spans, traceparent: Option<Traceparent>) -> Option<Request> {
        let (exporter, parent) = (spans.as_ref()?, traceparent?);
        if !parent.sampled {
            return None;
        }
        Some(Request {
            exporter: Arc::clone(exporter),
            parent,
            anchor: (Instant::now(), SystemTime::now()),
        })
    }

    /// The request waited in the queue from `arrived` to `admitted`;
    /// `running` sequences were in the batch once it joined.
    pub(crate) fn queued(&self, arrived: Instant, admitted: Instant, running: u32) {
        let attributes = vec![KeyValue::new("llm_sim.running_at_admission", i64::from(running))];
        self.phase("queue", arrived, admitted, attributes, None);
    }

    /// The request ran to its last token at `end`.
    pub(crate) fn done(&self, job: &Job, admitted: Instant, first_token: Option<Instant>, end: Instant) {
        self.generated(job, admitted, first_token, end, job.output_tokens, None);
    }

    /// The client went away at `now`, after `sent` tokens.
    pub(crate) fn abandoned(
        &self,
        job: &Job,
        admitted: Instant,
        first_token: Option<Instant>,
        now: Instant,
        sent: u32,
    ) {
        self.generated(job, admitted, first_token, now, sent, Some(GONE));
    }

    fn generated(
        &self,
        job: &Job,
        admitted: Instant,
        first_token: Option<Instant>,
        end: Instant,
        sent: u32,
        error: Option<&str>,
    ) {
        let input = vec![KeyValue::new("gen_ai.usage.input_tokens", i64::from(job.input_tokens))];
        match first_token {
            // Nothing was generated: prefill is all there was.
            None => self.phase("prefill", admitted, end, input, error),
            Some(first) => {
                self.phase("prefill", admitted, first, input, None);
                let output = vec![KeyValue::new("gen_ai.usage.output_tokens", i64::from(sent))];
                self.phase("decode", first, end, output, error);
            }
        }
    }

    fn wall(&self, t: Instant) -> SystemTime {
        let (i, w) = self.anchor;
        if t >= i { w + (t - i) } else { w - (i - t) }
    }

    /// One phase, child of the caller's span.
    fn phase(&self, name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>, error: Option<&str>) {
        let context = SpanContext::new(
            self.parent.trace_id,
            stampede_otel::new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut span = stampede_otel::span(
            name,
            SpanKind::Server,
            context,
            Some(self.parent.span_id),
            self.wall(start),
            self.wall(end),
        );
        span.attributes = attributes;
        span.attributes.push(KeyValue::new("gen_ai.operation.name", "chat"));
        span.status = match error {
            Some(e) => Status::error(e.to_owned()),
            None => Status::Ok,
        };
        self.exporter.submit(span);
    }
}
