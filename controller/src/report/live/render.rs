//! The two text expositions: Prometheus 0.0.4 and OpenMetrics 1.0.
//!
//! They differ in little: OpenMetrics names a counter's family without
//! `_total` (its sample keeps it), has an `info` type, allows exemplars
//! (`# {trace_id="…"} value timestamp` after a bucket's count) and ends
//! with `# EOF`. Bucket bounds (`le`) are written the same way in both,
//! so a histogram's series are the same whichever format a scraper asks
//! for.

use std::fmt::Write as _;

use super::{Buckets, Exemplar, Figure, FigureValue, Gpu, State};
use crate::server::map::Canon;
use crate::server::{Kind, Value};

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: no exemplars.
    Text,
    /// OpenMetrics 1.0 text, with exemplars.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Type {
    Counter,
    Gauge,
    Histogram,
    /// `_sum` and `_count` only.
    Summary,
    /// One sample `<name>_info` of value 1 (a gauge in 0.0.4).
    Info,
}

/// How a server figure is served: its family's name (counters without
/// `_total`), type and meaning.
pub(super) fn server_family(canon: Canon) -> Option<(&'static str, Type, &'static str)> {
    use Canon::*;
    let t = match canon.kind() {
        Kind::Gauge => Type::Gauge,
        Kind::Counter => Type::Counter,
        Kind::Histogram => Type::Summary,
    };
    let (name, help) = match canon {
        Running => ("stampede_server_running", "Requests in the server's running batch"),
        Waiting => (
            "stampede_server_queue_depth",
            "Requests waiting in the server's queue for a batch slot",
        ),
        KvCacheUsage => (
            "stampede_server_kv_cache_usage_ratio",
            "Share of the KV cache in use, 0 to 1",
        ),
        QueueTime => (
            "stampede_server_queue_time_seconds",
            "Server queue time: arrival to admission into the batch",
        ),
        Ttft => (
            "stampede_server_ttft_seconds",
            "Time to first token as the server measures it",
        ),
        Itl => (
            "stampede_server_itl_seconds",
            "Gap between output tokens as the server measures it",
        ),
        Tpot => (
            "stampede_server_tpot_seconds",
            "Time per output token as the server measures it",
        ),
        E2e => (
            "stampede_server_e2e_seconds",
            "Arrival to last token as the server measures it",
        ),
        Prefill => ("stampede_server_prefill_seconds", "Prefill phase of a request"),
        Decode => ("stampede_server_decode_seconds", "Decode phase of a request"),
        PromptTokens => ("stampede_server_prompt_tokens", "Input tokens the server processed"),
        GenerationTokens => (
            "stampede_server_generation_tokens",
            "Output tokens the server generated",
        ),
        RequestsDone => ("stampede_server_requests", "Requests the server completed"),
        Preemptions => ("stampede_server_preemptions", "Requests preempted from the batch"),
        BusySeconds => (
            "stampede_server_busy_seconds",
            "Seconds the server's engine was computing",
        ),
        PrefixCacheQueries => (
            "stampede_server_prefix_cache_queries_tokens",
            "Prompt tokens the server looked up in its prefix cache",
        ),
        PrefixCacheHits => (
            "stampede_server_prefix_cache_hits_tokens",
            "Prompt tokens the server found in its prefix cache",
        ),
        PrefixCacheHitRate => (
            "stampede_server_prefix_cache_hit_ratio",
            "The server's prefix-cache hit rate, 0 to 1",
        ),
        // Per device, as stampede_gpu_*.
        GpuUtil | GpuMemoryMib | GpuMemoryFreeMib | GpuMemoryShare | MemoryBandwidth | ComputeActive | GpuPowerW => {
            return None;
        }
    };
    Some((name, t, help))
}

/// Escapes a label value (both formats).
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value: `NaN`, `+Inf`, `-Inf` or the shortest decimal that
/// reads back the same.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

/// Writes one exposition.
struct Out {
    text: String,
    om: bool,
    /// The run id, escaped: a label of every sample.
    run: String,
}

impl Out {
    /// `# HELP` and `# TYPE` of family `name` (for a counter, without
    /// `_total`; for an info, without `_info`).
    fn family(&mut self, name: &str, t: Type, help: &str) {
        let (shown, word) = match (t, self.om) {
            (Type::Counter, false) => (format!("{name}_total"), "counter"),
            (Type::Counter, true) => (name.to_owned(), "counter"),
            (Type::Info, false) => (format!("{name}_info"), "gauge"),
            (Type::Info, true) => (name.to_owned(), "info"),
            (Type::Gauge, _) => (name.to_owned(), "gauge"),
            (Type::Histogram, _) => (name.to_owned(), "histogram"),
            (Type::Summary, _) => (name.to_owned(), "summary"),
        };
        let mut help = help.replace('\\', "\\\\").replace('\n', "\\n");
        if self.om {
            help = help.replace('"', "\\\"");
        }
        let _ = writeln!(self.text, "# HELP {shown} {help}\n# TYPE {shown} {word}");
    }

    /// One sample line: `labels` then `run_id`; the exemplar only in
    /// OpenMetrics.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64, exemplar: Option<&Exemplar>) {
        let t = &mut self.text;
        let _ = write!(t, "{name}{{");
        for (k, v) in labels {
            let _ = write!(t, "{k}=\"{}\",", label(v));
        }
        let _ = write!(t, "run_id=\"{}\"}} {}", self.run, number(value));
        if let (true, Some(e)) = (self.om, exemplar) {
            let _ = write!(
                t,
                " # {{trace_id=\"{}\"}} {} {:.3}",
                label(&e.trace_id),
                number(e.value),
                e.at
            );
        }
        t.push('\n');
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Type::Counter, help);
        self.sample(&format!("{name}_total"), &[], value as f64, None);
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, Type::Gauge, help);
        self.sample(name, &[], value, None);
    }

    fn histogram(&mut self, h: &Buckets) {
        let name = h.name;
        self.family(name, Type::Histogram, h.help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, (bound, n)) in h.bounds.iter().zip(&h.counts).enumerate() {
            cumulative += n;
            let le = number(*bound);
            self.sample(&bucket, &[("le", &le)], cumulative as f64, h.exemplars[i].as_ref());
        }
        let inf = h.exemplars[h.bounds.len()].as_ref();
        self.sample(&bucket, &[("le", "+Inf")], h.count as f64, inf);
        self.sample(&format!("{name}_sum"), &[], h.sum, None);
        self.sample(&format!("{name}_count"), &[], h.count as f64, None);
    }
}

/// The GPU families: name, meaning and the figure each serves.
type GpuFigure = fn(&Gpu) -> Option<f64>;
const GPU_FAMILIES: [(&str, &str, GpuFigure); 6] = [
    (
        "stampede_gpu_utilization_ratio",
        "Share of time a kernel ran on the accelerator, 0 to 1",
        |g| g.utilization,
    ),
    (
        "stampede_gpu_memory_used_bytes",
        "Accelerator memory in use, bytes",
        |g| g.memory_used_bytes,
    ),
    (
        "stampede_gpu_memory_total_bytes",
        "Accelerator memory in all, bytes",
        |g| g.memory_total_bytes,
    ),
    ("stampede_gpu_power_watts", "Accelerator power draw, watts", |g| {
        g.power_watts
    }),
    (
        "stampede_gpu_memory_bandwidth_utilization_ratio",
        "Share of time the accelerator's memory was read or written, 0 to 1",
        |g| g.memory_bandwidth,
    ),
    (
        "stampede_gpu_compute_active_ratio",
        "Share of time the multiprocessors had work, 0 to 1 (DCGM only)",
        |g| g.compute_active,
    ),
];

/// The exposition of `s` in `format`.
pub(super) fn render(s: &State, format: Format) -> String {
    let mut o = Out {
        text: String::with_capacity(16 * 1024),
        om: format == Format::OpenMetrics,
        run: label(&s.run_id),
    };
    let c = &s.counters;
    o.family("stampede_run", Type::Info, "The run being measured.");
    o.sample(
        "stampede_run_info",
        &[("profile", &s.profile), ("target", &s.target)],
        1.0,
        None,
    );
    o.counter("stampede_requests", "Successful requests.", c.ok);
    o.family("stampede_request_errors", Type::Counter, "Failed requests by class.");
    for (class, n) in &c.errors {
        o.sample(
            "stampede_request_errors_total",
            &[("class", &class.to_string())],
            *n as f64,
            None,
        );
    }
    o.counter(
        "stampede_requests_cancelled",
        "Requests abandoned at shutdown.",
        c.cancelled,
    );
    o.counter(
        "stampede_input_tokens",
        "Input tokens of successful requests.",
        c.input_tokens,
    );
    o.counter(
        "stampede_output_tokens",
        "Output tokens of successful requests.",
        c.output_tokens,
    );
    let active: u32 = s.active.values().sum();
    o.gauge(
        "stampede_active_users",
        "Users running at the latest reports.",
        f64::from(active),
    );
    o.family("stampede_agents", Type::Gauge, "Agents by state.");
    for (state, n) in ["running", "finished", "lost"].iter().zip(s.agents) {
        o.sample("stampede_agents", &[("state", state)], f64::from(n), None);
    }
    if !s.cpu.is_empty() {
        o.family(
            "stampede_agent_cpu_ratio",
            Type::Gauge,
            "CPU the agent's threads used in its latest interval, as a share of its cores, 0 to 1.",
        );
        for (agent, cpu) in &s.cpu {
            o.sample("stampede_agent_cpu_ratio", &[("agent", agent)], *cpu, None);
        }
    }
    for h in [&s.ttft, &s.itl, &s.tpot, &s.e2e, &s.client_queue] {
        o.histogram(h);
    }
    for (canon, (value, source)) in &s.server {
        let Some((name, t, help)) = server_family(*canon) else {
            continue;
        };
        o.family(
            name,
            t,
            &format!("{help}, at the latest scrape of the server (its {source})."),
        );
        match (t, value) {
            (Type::Counter, Value::Scalar(v)) => o.sample(&format!("{name}_total"), &[], *v, None),
            (_, Value::Scalar(v)) => o.sample(name, &[], *v, None),
            (_, Value::Histogram { sum, count }) => {
                o.sample(&format!("{name}_sum"), &[], *sum, None);
                o.sample(&format!("{name}_count"), &[], *count, None);
            }
        }
    }
    for (name, help, figure) in GPU_FAMILIES {
        let mut devices = s.gpus.iter().filter_map(|(d, g)| Some((d, figure(g)?))).peekable();
        if devices.peek().is_none() {
            continue;
        }
        o.family(name, Type::Gauge, &format!("{help}: the latest reading per device."));
        for (d, v) in devices {
            if d.agent.is_empty() {
                o.sample(name, &[("source", d.source), ("device", &d.device)], v, None);
            } else {
                o.sample(
                    name,
                    &[("source", d.source), ("agent", &d.agent), ("device", &d.device)],
                    v,
                    None,
                );
            }
        }
    }
    if o.om {
        o.text.push_str("# EOF\n");
    }
    o.text
}

/// The OTLP name and unit of a family: `stampede_gpu_power_watts` is
/// `stampede.gpu.power` in `W`.
fn otel_name(name: &str) -> (String, &'static str) {
    // Suffix, unit, and whether the suffix is the unit's word (dropped
    // from the name) rather than what is counted.
    const UNITS: [(&str, &str, bool); 9] = [
        ("_seconds", "s", true),
        ("_ratio", "1", true),
        ("_bytes", "By", true),
        ("_watts", "W", true),
        ("_tokens", "{token}", false),
        ("_requests", "{request}", false),
        ("_preemptions", "{preemption}", false),
        ("_depth", "{request}", false),
        ("_running", "{request}", false),
    ];
    let (stem, unit) = UNITS
        .iter()
        .find_map(|&(suffix, unit, word)| {
            let stem = name.strip_suffix(suffix)?;
            Some((if word { stem } else { name }, unit))
        })
        .unwrap_or((name, "1"));
    (stem.replacen('_', ".", 2), unit)
}

/// The figures that come from outside the agents' histograms: the agents'
/// CPU, the server's mapped figures and the accelerators', as the
/// exposition states them, for the OTLP push.
pub(super) fn figures(s: &State) -> Vec<Figure> {
    let mut out = Vec::new();
    for (agent, cpu) in &s.cpu {
        out.push(Figure {
            name: "stampede.agent.cpu".to_owned(),
            description: "CPU the agent's threads used in its latest interval, as a share of its cores, 0 to 1.",
            unit: "1",
            attributes: vec![("stampede.agent", agent.clone())],
            value: FigureValue::Gauge(*cpu),
        });
    }
    for (canon, (value, _)) in &s.server {
        let Some((name, t, help)) = server_family(*canon) else {
            continue;
        };
        let (name, unit) = otel_name(name);
        let value = match (t, value) {
            (Type::Counter, Value::Scalar(v)) => FigureValue::Counter(*v),
            (_, Value::Scalar(v)) => FigureValue::Gauge(*v),
            (_, Value::Histogram { sum, count }) => FigureValue::Summary {
                sum: *sum,
                count: *count,
            },
        };
        out.push(Figure {
            name,
            description: help,
            unit,
            attributes: Vec::new(),
            value,
        });
    }
    for (name, help, figure) in GPU_FAMILIES {
        let (name, unit) = otel_name(name);
        for (d, v) in s.gpus.iter().filter_map(|(d, g)| Some((d, figure(g)?))) {
            let mut attributes = vec![
                ("stampede.gpu.source", d.source.to_owned()),
                ("stampede.gpu.device", d.device.clone()),
            ];
            if !d.agent.is_empty() {
                attributes.push(("stampede.agent", d.agent.clone()));
            }
            out.push(Figure {
                name: name.clone(),
                description: help,
                unit,
                attributes,
                value: FigureValue::Gauge(v),
            });
        }
    }
    out
}
