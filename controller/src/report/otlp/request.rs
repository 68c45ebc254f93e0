//! The OTLP request of one push, built from the run's merged figures: the
//! figures are aggregated already (exact HDR histograms, counters), so they
//! are written as OTLP points directly rather than replayed through an
//! SDK's instruments. Every point is cumulative from the run's start.

use std::time::SystemTime;

use hdrhistogram::Histogram;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram as OtlpHistogram, HistogramDataPoint, Metric as OtlpMetric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use stampede_proto::{Counters, Histograms, Metric, Unit};

use crate::report::live::{Figure, FigureValue};

/// Bounds of time-to-first-token buckets, seconds: the GenAI conventions'
/// advice for `gen_ai.server.time_to_first_token`, with longer waits added
/// for a queueing server.
pub(crate) const TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// Bounds of per-token times (ITL, chunk gap, TPOT), seconds: the GenAI
/// conventions' advice for `gen_ai.server.time_per_output_token`, with
/// the few milliseconds of a fast server added.
pub(crate) const TOKEN_TIME_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Bounds of whole-request times (E2E, client queue), seconds: the GenAI
/// conventions' advice for `gen_ai.client.operation.duration`, doubled
/// twice more for long answers.
pub(crate) const DURATION_BOUNDS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92, 163.84, 327.68,
];
/// Bounds of tokens per request: the GenAI conventions' advice for
/// `gen_ai.client.token.usage`.
pub(crate) const TOKEN_COUNT_BOUNDS: &[f64] = &[
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

/// The distributions pushed, with their buckets.
pub(crate) const DISTRIBUTIONS: [(Metric, &[f64]); 8] = [
    (Metric::Ttft, TTFT_BOUNDS),
    (Metric::Itl, TOKEN_TIME_BOUNDS),
    (Metric::ChunkGap, TOKEN_TIME_BOUNDS),
    (Metric::Tpot, TOKEN_TIME_BOUNDS),
    (Metric::E2e, DURATION_BOUNDS),
    (Metric::ClientQueue, DURATION_BOUNDS),
    (Metric::InputTokens, TOKEN_COUNT_BOUNDS),
    (Metric::OutputTokens, TOKEN_COUNT_BOUNDS),
];

/// One HDR histogram in explicit buckets: seconds for times, tokens for
/// token counts.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Dist {
    pub(crate) bounds: &'static [f64],
    /// One more than the bounds: the last counts what lies above them all.
    pub(crate) counts: Vec<u64>,
    pub(crate) count: u64,
    pub(crate) sum: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Dist {
    /// Re-buckets `h`. Each HDR bucket (0.1 % wide) lands in the first
    /// bucket whose bound holds its lowest value, so a sample of exactly a
    /// bound counts at that bound; the sum uses each bucket's middle, as
    /// the summary's means do; min and max are the summary's.
    pub(crate) fn of(h: &Histogram<u64>, unit: Unit, bounds: &'static [f64]) -> Dist {
        let scale = match unit {
            Unit::Micros => 1e-6,
            Unit::Tokens => 1.0,
        };
        let mut counts = vec![0; bounds.len() + 1];
        let mut sum = 0.0;
        for v in h.iter_recorded() {
            let n = v.count_since_last_iteration();
            let value = v.value_iterated_to();
            let low = h.lowest_equivalent(value) as f64 * scale;
            let i = bounds.iter().position(|b| low <= *b).unwrap_or(bounds.len());
            counts[i] += n;
            sum += h.median_equivalent(value) as f64 * scale * n as f64;
        }
        let empty = h.is_empty();
        Dist {
            bounds,
            counts,
            count: h.len(),
            sum,
            min: if empty { 0.0 } else { h.min() as f64 * scale },
            max: if empty { 0.0 } else { h.max() as f64 * scale },
        }
    }
}

/// What the run has measured so far, as the summary would state it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Snapshot {
    /// Counters of the measured time (warm-ups left out).
    pub(crate) counters: Counters,
    /// The distributions of [`DISTRIBUTIONS`], in that order.
    pub(crate) dists: Vec<Dist>,
    /// Users running at the agents' latest reports.
    pub(crate) active_users: u64,
    /// Agents running, finished, lost.
    pub(crate) agents: [u32; 3],
    /// The agents' CPU, the server's and the accelerators' figures at
    /// their latest readings (empty where none came).
    pub(crate) figures: Vec<Figure>,
    /// When it was taken.
    pub(crate) at: SystemTime,
}

impl Snapshot {
    /// A snapshot of merged `histograms` and `counters`.
    pub(crate) fn of(
        histograms: &Histograms,
        counters: &Counters,
        active_users: u64,
        agents: [u32; 3],
        figures: Vec<Figure>,
    ) -> Snapshot {
        Snapshot {
            counters: counters.clone(),
            dists: DISTRIBUTIONS
                .iter()
                .map(|(m, bounds)| Dist::of(histograms.get(*m), m.unit(), bounds))
                .collect(),
            active_users,
            agents,
            figures,
            at: SystemTime::now(),
        }
    }

    fn dist(&self, metric: Metric) -> &Dist {
        let i = DISTRIBUTIONS
            .iter()
            .position(|(m, _)| *m == metric)
            .expect("only pushed metrics are asked for");
        &self.dists[i]
    }
}

/// What every push of one run shares.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct About {
    pub(crate) run_id: String,
    pub(crate) profile: String,
    pub(crate) service_name: String,
    /// `gen_ai.request.model`.
    pub(crate) model: String,
    /// `gen_ai.provider.name`.
    pub(crate) provider: String,
    /// `gen_ai.operation.name`.
    pub(crate) operation: String,
    /// `server.address` and `server.port` of the target.
    pub(crate) address: String,
    pub(crate) port: u16,
    /// Answers are streamed: the chunk metrics of the GenAI conventions
    /// apply only then.
    pub(crate) stream: bool,
    /// The start of every cumulative series.
    pub(crate) start: SystemTime,
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

const CUMULATIVE: i32 = AggregationTemporality::Cumulative as i32;

fn gauge(v: FigureValue) -> Option<f64> {
    match v {
        FigureValue::Gauge(v) => Some(v),
        _ => None,
    }
}

fn counter(v: FigureValue) -> Option<f64> {
    match v {
        FigureValue::Counter(v) => Some(v),
        _ => None,
    }
}

/// Builds the points of one push.
struct Points<'a> {
    about: &'a About,
    start: u64,
    now: u64,
    metrics: Vec<OtlpMetric>,
}

impl Points<'_> {
    /// `stampede.run_id` and then `extra`.
    fn attributes(&self, extra: Vec<KeyValue>) -> Vec<KeyValue> {
        let mut out = vec![text("stampede.run_id", &self.about.run_id)];
        out.extend(extra);
        out
    }

    /// The GenAI conventions' attributes of a request.
    fn gen_ai(&self) -> Vec<KeyValue> {
        let a = self.about;
        self.attributes(vec![
            text("gen_ai.operation.name", &a.operation),
            text("gen_ai.provider.name", &a.provider),
            text("gen_ai.request.model", &a.model),
            text("server.address", &a.address),
            int("server.port", i64::from(a.port)),
        ])
    }

    fn number(&self, attributes: Vec<KeyValue>, value: u64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: self.attributes(attributes),
            start_time_unix_nano: self.start,
            time_unix_nano: self.now,
            value: Some(number_data_point::Value::AsInt(
                i64::try_from(value).unwrap_or(i64::MAX),
            )),
            ..NumberDataPoint::default()
        }
    }

    fn real(&self, attributes: &[(&'static str, String)], value: f64) -> NumberDataPoint {
        NumberDataPoint {
            attributes: self.attributes(attributes.iter().map(|(k, v)| text(k, v)).collect()),
            start_time_unix_nano: self.start,
            time_unix_nano: self.now,
            value: Some(number_data_point::Value::AsDouble(value)),
            ..NumberDataPoint::default()
        }
    }

    /// The figures from outside the agents' histograms, one metric per
    /// name (an accelerator's figure has a point per device).
    fn figures(&mut self, figures: &[Figure]) {
        let mut names: Vec<&str> = Vec::new();
        for f in figures {
            if !names.contains(&f.name.as_str()) {
                names.push(&f.name);
            }
        }
        for name in names {
            let mut all = figures.iter().filter(|f| f.name == name).peekable();
            let Some(first) = all.peek().copied() else { continue };
            let (description, unit) = (first.description, first.unit);
            let data = match first.value {
                FigureValue::Gauge(_) => metric::Data::Gauge(Gauge {
                    data_points: all
                        .filter_map(|f| Some(self.real(&f.attributes, gauge(f.value)?)))
                        .collect(),
                }),
                FigureValue::Counter(_) => metric::Data::Sum(Sum {
                    data_points: all
                        .filter_map(|f| Some(self.real(&f.attributes, counter(f.value)?)))
                        .collect(),
                    aggregation_temporality: CUMULATIVE,
                    is_monotonic: true,
                }),
                FigureValue::Summary { .. } => metric::Data::Summary(Summary {
                    data_points: all
                        .filter_map(|f| match f.value {
                            FigureValue::Summary { sum, count } => Some(SummaryDataPoint {
                                attributes: self.attributes(f.attributes.iter().map(|(k, v)| text(k, v)).collect()),
                                start_time_unix_nano: self.start,
                                time_unix_nano: self.now,
                                count: count.max(0.0) as u64,
                                sum,
                                ..SummaryDataPoint::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                }),
            };
            self.push(name, description, unit, data);
        }
    }

    fn push(&mut self, name: &str, description: &str, unit: &str, data: metric::Data) {
        self.metrics.push(OtlpMetric {
            name: name.to_owned(),
            description: description.to_owned(),
            unit: unit.to_owned(),
            data: Some(data),
            ..OtlpMetric::default()
        });
    }

    fn sum(&mut self, name: &str, description: &str, unit: &str, points: Vec<NumberDataPoint>) {
        let data = metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
            is_monotonic: true,
        });
        self.push(name, description, unit, data);
    }

    fn gauge(&mut self, name: &str, description: &str, unit: &str, points: Vec<NumberDataPoint>) {
        self.push(
            name,
            description,
            unit,
            metric::Data::Gauge(Gauge { data_points: points }),
        );
    }

    fn point(&self, attributes: Vec<KeyValue>, d: &Dist) -> HistogramDataPoint {
        let some = d.count > 0;
        HistogramDataPoint {
            attributes,
            start_time_unix_nano: self.start,
            time_unix_nano: self.now,
            count: d.count,
            sum: Some(d.sum),
            bucket_counts: d.counts.clone(),
            explicit_bounds: d.bounds.to_vec(),
            min: some.then_some(d.min),
            max: some.then_some(d.max),
            ..HistogramDataPoint::default()
        }
    }

    fn histogram(&mut self, name: &str, description: &str, unit: &str, points: Vec<HistogramDataPoint>) {
        let data = metric::Data::Histogram(OtlpHistogram {
            data_points: points,
            aggregation_temporality: CUMULATIVE,
        });
        self.push(name, description, unit, data);
    }
}

/// The request of one push of `s`.
pub(crate) fn build(about: &About, s: &Snapshot) -> ExportMetricsServiceRequest {
    let mut p = Points {
        about,
        start: nanos(about.start),
        now: nanos(s.at.max(about.start)),
        metrics: Vec::new(),
    };
    let c = &s.counters;
    let outcome = |v: &str| text("stampede.outcome", v);
    let mut requests = vec![p.number(vec![outcome("ok")], c.ok)];
    for (class, n) in &c.errors {
        requests.push(p.number(vec![outcome("failed"), text("error.type", &class.to_string())], *n));
    }
    requests.push(p.number(vec![outcome("cancelled")], c.cancelled));
    p.sum(
        "stampede.requests",
        "Requests that ended in the measured time, by outcome; failures by error class (error.type).",
        "{request}",
        requests,
    );
    let token_type = |v: &str| text("gen_ai.token.type", v);
    let tokens = vec![
        p.number(vec![token_type("input")], c.input_tokens),
        p.number(vec![token_type("output")], c.output_tokens),
    ];
    p.sum(
        "stampede.tokens",
        "Input and output tokens of successful requests in the measured time.",
        "{token}",
        tokens,
    );
    let users = vec![p.number(Vec::new(), s.active_users)];
    p.gauge(
        "stampede.active_users",
        "Users running at the agents' latest reports.",
        "{user}",
        users,
    );
    let agents = ["running", "finished", "lost"]
        .iter()
        .zip(s.agents)
        .map(|(state, n)| p.number(vec![text("stampede.agent.state", state)], u64::from(n)))
        .collect();
    p.gauge("stampede.agents", "Agents by state.", "{agent}", agents);

    let own = [
        (
            Metric::Ttft,
            "stampede.ttft",
            "Time to first token of successful requests.",
        ),
        (
            Metric::Itl,
            "stampede.itl",
            "Inter-token latency, one sample per token after the first event.",
        ),
        (
            Metric::ChunkGap,
            "stampede.chunk_gap",
            "Gap between consecutive stream events carrying tokens.",
        ),
        (
            Metric::Tpot,
            "stampede.tpot",
            "Time per output token after the first, one sample per request.",
        ),
        (
            Metric::E2e,
            "stampede.e2e",
            "End-to-end latency of successful requests.",
        ),
        (
            Metric::ClientQueue,
            "stampede.client_queue",
            "Intended start to the request being written (waiting on the client side).",
        ),
    ];
    for (metric, name, description) in own {
        let point = p.point(p.attributes(Vec::new()), s.dist(metric));
        p.histogram(name, description, "s", vec![point]);
    }

    // The OpenTelemetry GenAI client conventions, where a figure has one.
    let point = p.point(p.gen_ai(), s.dist(Metric::E2e));
    p.histogram(
        "gen_ai.client.operation.duration",
        "GenAI operation duration: end to end, successful requests.",
        "s",
        vec![point],
    );
    let usage = [("input", Metric::InputTokens), ("output", Metric::OutputTokens)]
        .iter()
        .map(|(kind, m)| {
            let mut attributes = p.gen_ai();
            attributes.push(token_type(kind));
            p.point(attributes, s.dist(*m))
        })
        .collect();
    p.histogram(
        "gen_ai.client.token.usage",
        "Input and output tokens per successful request.",
        "{token}",
        usage,
    );
    if about.stream {
        let point = p.point(p.gen_ai(), s.dist(Metric::Ttft));
        p.histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            "Time to the first stream event carrying generated text.",
            "s",
            vec![point],
        );
        let point = p.point(p.gen_ai(), s.dist(Metric::ChunkGap));
        p.histogram(
            "gen_ai.client.operation.time_per_output_chunk",
            "Time between consecutive stream events carrying generated text.",
            "s",
            vec![point],
        );
    }

    // The agents' CPU, the server's figures and the accelerators', as the
    // live endpoint serves them.
    p.figures(&s.figures);

    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", &about.service_name),
                    text("stampede.run_id", &about.run_id),
                    text("stampede.profile", &about.profile),
                ],
                ..Resource::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "stampede".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                metrics: p.metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

#[cfg(test)]
mod tests;
