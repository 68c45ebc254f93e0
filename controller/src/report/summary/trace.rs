//! The `tracing` section of `summary.json`: where spans went, how many were
//! lost, how to find the run's traces, and the slowest requests with links
//! to their traces.

use serde::Serialize;
use stampede_proto::Metric;

use crate::results::Collected;
use crate::results::spec::TraceRef;

/// Request spans of the run.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Tracing {
    /// Spans were exported.
    pub enabled: bool,
    /// The collector URL the agents exported to.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`.
    pub protocol: Option<String>,
    /// Share of requests kept by the ratio decision; failed and slowest
    /// requests are exported whatever it is.
    pub sample_ratio: Option<f64>,
    /// `service.name` of the spans.
    pub service_name: Option<String>,
    /// Trace id of the controller's run span.
    pub run_trace_id: String,
    /// How to find the run's traces (its run span and every request's) in
    /// a trace store: by service and the `stampede.run_id` tag. Null
    /// when tracing was off.
    pub search: Option<Search>,
    /// Request spans the collector accepted.
    pub spans_exported: u64,
    /// Request spans lost (export queue full, collector failing, or the
    /// end-of-run flush out of time).
    pub spans_dropped: u64,
    /// The slowest requests by time to first token, slowest first.
    pub slowest_ttft: Vec<Exemplar>,
    /// The slowest requests end to end, slowest first.
    pub slowest_e2e: Vec<Exemplar>,
}

/// A search for the run's traces, as a Jaeger UI's search form takes it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Search {
    /// The service to search: `service.name` of the request spans.
    pub service: String,
    /// The tag every span of the run carries: `stampede.run_id`.
    pub tag: String,
    /// Its value: the run id.
    pub value: String,
    /// The Jaeger UI's search page for them
    /// (`{ui}/search?service=…&tags={"stampede.run_id":"…"}&limit=1500`,
    /// URL-encoded);
    /// null without `[trace] ui`.
    pub link: Option<String>,
}

/// The tag every span of a run carries, with the run id.
pub const RUN_TAG: &str = "stampede.run_id";

/// One slow request.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Exemplar {
    /// Its W3C trace id.
    pub trace_id: String,
    /// Its TTFT or E2E, milliseconds.
    pub value_ms: f64,
    /// The agent that sent it.
    pub agent: u32,
    /// The interval it completed in.
    pub interval: u64,
    /// Its trace in the UI, when tracing was on.
    pub link: Option<String>,
}

/// The section, from the run's settings and what the agents reported.
pub fn build(config: Option<&TraceRef>, run_id: &str, run_trace_id: &str, c: &Collected) -> Tracing {
    let m = &c.merger;
    let totals = m.measured();
    let (measured, warmup) = (&totals.counters, m.warmup());
    let list = |metric: Metric| -> Vec<Exemplar> {
        c.exemplars
            .iter()
            .filter(|e| e.metric == metric)
            .map(|e| Exemplar {
                trace_id: e.trace_id.clone(),
                value_ms: e.value_us as f64 / 1e3,
                agent: e.agent,
                interval: e.interval,
                link: config.map(|t| t.link(&e.trace_id)),
            })
            .collect()
    };
    Tracing {
        enabled: config.is_some(),
        endpoint: config.map(|t| t.endpoint.clone()),
        protocol: config.map(|t| t.protocol.clone()),
        sample_ratio: config.map(|t| t.sample_ratio),
        service_name: config.map(|t| t.service_name.clone()),
        run_trace_id: run_trace_id.to_owned(),
        search: config.map(|t| Search {
            service: t.service_name.clone(),
            tag: RUN_TAG.to_owned(),
            value: run_id.to_owned(),
            link: t
                .ui
                .as_ref()
                .map(|ui| stampede_otel::search_link(ui, &t.service_name, RUN_TAG, run_id)),
        }),
        spans_exported: measured.spans_exported + warmup.spans_exported,
        spans_dropped: measured.spans_dropped + warmup.spans_dropped,
        slowest_ttft: list(Metric::Ttft),
        slowest_e2e: list(Metric::E2e),
    }
}
