//! The controller's span for the whole run, `stampede.run`: every request
//! span links to it, and the run's log lines carry its trace id.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use stampede_otel::{
    Config, Exporter, KeyValue, SpanContext, SpanKind, Status, TraceFlags, TraceId, TraceState, Traceparent,
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
                span.attributes.push(KeyValue::new(
                    "stampede.status",
                    format!("{:?}", s.verdict.status).to_lowercase(),
                ));
                span.status = Status::Ok;
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
