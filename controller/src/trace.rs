//! The controller's span for the whole run, `stampede.run`: the run's
//! settings, verdict and counts, and the trace id its log lines carry.
//!
//! It is the root of a trace of its own, and request spans do not refer to
//! it (a reference across traces makes Jaeger draw the request traces as
//! incomplete). Every span of the run carries `stampede.run_id` instead:
//! searching by that tag finds the run span and each request's trace.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use stampede_otel::{
    Array, Config, Exporter, KeyValue, SpanContext, SpanKind, Status, StringValue, TraceFlags, TraceId, TraceState,
    Traceparent, Value,
};
use stampede_proto::pb;

use crate::report::summary::Summary;
use crate::run::RunError;

/// The run's span, where it goes, and the settings agents are handed.
pub(crate) struct RunSpan {
    /// Where spans go; `None`: tracing is off.
    pub(crate) config: Option<Config>,
    exporter: Option<Arc<Exporter>>,
    /// Other exporters of this process (the built-in simulator's), flushed
    /// at the end alongside the run's.
    others: Mutex<Vec<Arc<Exporter>>>,
    /// The run span's own context.
    pub(crate) context: Traceparent,
    run_id: String,
    started: SystemTime,
}

impl RunSpan {
    /// Starts the run span's exporter when tracing is on.
    pub(crate) fn start(config: Option<Config>, run_id: &str, trace_id: TraceId) -> Result<RunSpan, RunError> {
        let exporter = match &config {
            Some(c) => {
                let resource = vec![KeyValue::new("service.instance.id", format!("{run_id}/controller"))];
                let e = Exporter::start(c, resource).map_err(|e| RunError::Trace(e.to_string()))?;
                tracing::info!(
                    endpoint = %c.endpoint,
                    protocol = %c.protocol,
                    sample_ratio = c.sample_ratio,
                    service = %c.service_name,
                    "exporting request spans over OTLP"
                );
                Some(Arc::new(e))
            }
            None => None,
        };
        Ok(RunSpan {
            context: Traceparent {
                trace_id,
                span_id: stampede_otel::new_span_id(),
                sampled: exporter.is_some(),
            },
            config,
            exporter,
            others: Mutex::new(Vec::new()),
            run_id: run_id.to_owned(),
            started: SystemTime::now(),
        })
    }

    /// What agents are told about tracing.
    pub(crate) fn wire(&self) -> Option<pb::Trace> {
        self.config.as_ref().map(|c| pb::Trace {
            endpoint: c.endpoint.clone(),
            protocol: c.protocol.to_string(),
            sample_ratio: c.sample_ratio,
            service_name: c.service_name.clone(),
            run_traceparent: self.context.to_string(),
        })
    }

    /// Flushes `exporter` too when the run ends.
    pub(crate) fn flush_too(&self, exporter: Arc<Exporter>) {
        self.others.lock().unwrap_or_else(|p| p.into_inner()).push(exporter);
    }

    /// Exports the run's span once the run is over, and flushes every
    /// exporter of the process at once, each within
    /// [`stampede_agent::trace::FLUSH`].
    pub(crate) async fn end(&self, summary: Result<&Summary, &RunError>) {
        let Some(exporter) = self.exporter.clone() else { return };
        let context = SpanContext::new(
            self.context.trace_id,
            self.context.span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut span = stampede_otel::span(
            "stampede.run",
            SpanKind::Internal,
            context,
            None,
            self.started,
            SystemTime::now(),
        );
        span.attributes
            .push(KeyValue::new("stampede.run_id", self.run_id.clone()));
        match summary {
            Ok(s) => {
                span.attributes.extend(attributes(s));
                span.status = status(s);
            }
            Err(e) => span.status = Status::error(e.to_string()),
        }
        exporter.submit(span);
        let mut all = std::mem::take(&mut *self.others.lock().unwrap_or_else(|p| p.into_inner()));
        all.push(exporter);
        let mut flushes = tokio::task::JoinSet::new();
        for e in all {
            let logs = tracing::Span::current();
            flushes.spawn_blocking(move || logs.in_scope(|| e.close(stampede_agent::trace::FLUSH)));
        }
        while flushes.join_next().await.is_some() {}
    }
}

/// What the run span says of a finished run: the same figures as
/// `summary.json` (requests and tokens of the measured time, the warm-up
/// left out), named `stampede.*`.
fn attributes(s: &Summary) -> Vec<KeyValue> {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let mut a = vec![
        KeyValue::new("stampede.profile", s.profile.name.clone()),
        KeyValue::new("stampede.target.url", s.target.url.clone()),
        KeyValue::new("stampede.target.api", s.target.api.clone()),
        KeyValue::new("stampede.target.simulated", s.target.simulated),
        KeyValue::new("gen_ai.request.model", s.target.model.clone()),
        KeyValue::new("stampede.status", status_name(s)),
        KeyValue::new("stampede.exit_code", i64::from(s.verdict.exit_code)),
        KeyValue::new("stampede.agents", i64::from(s.load.agents)),
        KeyValue::new("stampede.duration_s", s.duration_s),
        KeyValue::new("stampede.measured_s", s.measured_s),
        KeyValue::new("stampede.requests.ok", count(s.requests.ok)),
        KeyValue::new("stampede.requests.failed", count(s.requests.failed)),
        KeyValue::new("stampede.requests.cancelled", count(s.requests.cancelled)),
        KeyValue::new("stampede.requests.lost", count(s.lost.requests)),
        KeyValue::new("stampede.tokens.input", count(s.tokens.input)),
        KeyValue::new("stampede.tokens.output", count(s.tokens.output)),
    ];
    // One attribute per error class that occurred, so that a search by
    // tag (`stampede.requests.failed.timeout`) finds the runs that had it.
    for (class, e) in &s.errors {
        a.push(KeyValue::new(
            format!("stampede.requests.failed.{class}"),
            count(e.count),
        ));
    }
    if !s.verdict.reasons.is_empty() {
        let reasons = s.verdict.reasons.iter().cloned().map(StringValue::from).collect();
        a.push(KeyValue::new(
            "stampede.verdict.reasons",
            Value::Array(Array::String(reasons)),
        ));
    }
    if let Some(why) = &s.verdict.stopped_by {
        a.push(KeyValue::new("stampede.verdict.stopped_by", why.clone()));
    }
    a
}

/// `passed`, `failed`, `degraded`, …, as in `summary.json`.
fn status_name(s: &Summary) -> String {
    format!("{:?}", s.verdict.status).to_lowercase()
}

/// OK for a run that passed (exit 0); otherwise an error whose
/// description is the verdict and its reasons.
fn status(s: &Summary) -> Status {
    if s.verdict.exit_code == 0 {
        return Status::Ok;
    }
    let mut why = format!("{} (exit {})", status_name(s), s.verdict.exit_code);
    if !s.verdict.reasons.is_empty() {
        why.push_str(": ");
        why.push_str(&s.verdict.reasons.join("; "));
    }
    Status::error(why)
}
