//! The server's side of the summary: its own metrics over the run, the
//! accelerators, and the findings drawn from them with the client's
//! figures.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::Summary;
use crate::results::{Collected, GpuFigure};
use crate::server::{Canon, Kind, Series, Source, Window};

/// The server's own metrics.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ServerSummary {
    /// The page scraped.
    pub url: String,
    /// Good scrapes.
    pub scrapes: usize,
    /// Failed scrapes.
    pub failed_scrapes: u64,
    /// What went wrong, or what was not understood, in words.
    pub note: Option<String>,
    /// Metric families recognised: `vllm`, `tgi`, `llama.cpp`, `dcgm`,
    /// `llm-sim`.
    pub families: Vec<&'static str>,
    /// Each figure understood, over the measured time.
    pub mapped: BTreeMap<Canon, Figure>,
    /// Names of metrics not understood; every scrape is kept whole in
    /// `server-metrics.jsonl`.
    pub unmapped: Vec<String>,
    /// Lines of the pages that could not be read.
    pub skipped_lines: u64,
    /// The figures per run interval.
    pub intervals: Vec<ServerInterval>,
    /// Seconds the server counted itself busy from the first scrape to the
    /// last (its busy-time counter, such as llm-sim's), when it has one.
    pub busy_s: Option<f64>,
}

/// One figure over the measured time.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Figure {
    /// The server's name for it.
    pub source: Source,
    /// `gauge`, `counter` or `histogram`.
    pub kind: Kind,
    /// `ms`, `share`, `requests`, `tokens`, `MiB`, `W` or `s`.
    pub unit: &'static str,
    /// Gauge mean or histogram mean.
    pub mean: Option<f64>,
    /// Gauge maximum.
    pub max: Option<f64>,
    /// Counter increase, or histogram observations.
    pub count: Option<f64>,
    /// Counter increase per second.
    pub per_s: Option<f64>,
}

/// The server's figures in one run interval.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ServerInterval {
    /// Index, as in `intervals`.
    pub interval: u64,
    /// Mean requests running.
    pub running: Option<f64>,
    /// Mean requests waiting.
    pub waiting: Option<f64>,
    /// Mean KV-cache use, 0 to 1.
    pub kv_cache_usage: Option<f64>,
    /// Accelerator utilisation, 0 to 1 (GPU samples, DCGM, or the
    /// simulator's busy time).
    pub utilisation: Option<f64>,
    /// Mean server queue time of requests admitted in it, ms.
    pub queue_time_ms: Option<f64>,
    /// Mean prefill time of requests that finished prefill in it, ms
    /// (vLLM's `request_prefill_time_seconds`).
    pub prefill_ms: Option<f64>,
    /// Sequences preempted from the batch in it.
    pub preemptions: Option<f64>,
    /// Prefix-cache hit rate in it, 0 to 1: prompt tokens found cached
    /// over those looked up (vLLM's counters), else the mean of the
    /// server's hit-rate gauge; absent when nothing was looked up.
    pub prefix_cache_hit_rate: Option<f64>,
    /// Mean accelerator memory in use, MiB.
    pub vram_used_mib: Option<f64>,
    /// Mean accelerator memory free, MiB.
    pub vram_free_mib: Option<f64>,
    /// Mean share of accelerator memory in use, 0 to 1.
    pub vram_used_share: Option<f64>,
    /// Mean memory-bandwidth utilisation, 0 to 1.
    pub memory_bandwidth: Option<f64>,
    /// Mean compute activity, 0 to 1.
    pub compute_active: Option<f64>,
}

/// The accelerators the agents sampled.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct GpuSummary {
    /// What each sampling agent found, by agent name.
    pub notes: BTreeMap<String, String>,
    /// Readings received.
    pub samples: usize,
    /// Mean utilisation over all readings, 0 to 1.
    pub utilisation_mean: Option<f64>,
    /// Largest memory in use, MiB.
    pub memory_used_max_mib: Option<f64>,
    /// Largest share of a device's memory in use, 0 to 1.
    pub memory_used_share_max: Option<f64>,
    /// Mean memory-bandwidth use (NVML's memory utilisation), 0 to 1.
    pub memory_bandwidth_mean: Option<f64>,
    /// Mean power draw, W.
    pub power_mean_w: Option<f64>,
}

fn unit(canon: Canon) -> &'static str {
    match canon {
        Canon::Running | Canon::Waiting | Canon::RequestsDone | Canon::Preemptions => "requests",
        Canon::KvCacheUsage
        | Canon::GpuUtil
        | Canon::GpuMemoryShare
        | Canon::MemoryBandwidth
        | Canon::ComputeActive => "share",
        Canon::PromptTokens | Canon::GenerationTokens | Canon::PrefixCacheQueries | Canon::PrefixCacheHits => "tokens",
        Canon::PrefixCacheHitRate => "share",
        Canon::BusySeconds => "s",
        Canon::GpuMemoryMib | Canon::GpuMemoryFreeMib => "MiB",
        Canon::GpuPowerW => "W",
        Canon::QueueTime | Canon::Ttft | Canon::Itl | Canon::Tpot | Canon::E2e | Canon::Prefill | Canon::Decode => "ms",
    }
}

fn figure(source: Source, canon: Canon, w: Window) -> Figure {
    let mut f = Figure {
        source,
        kind: canon.kind(),
        unit: unit(canon),
        mean: None,
        max: None,
        count: None,
        per_s: None,
    };
    match w {
        Window::Level { mean, max } => {
            f.mean = Some(mean);
            f.max = Some(max);
        }
        Window::Increase { delta, rate } => {
            f.count = Some(delta);
            f.per_s = Some(rate);
        }
        Window::Observed { count, mean } => {
            f.count = Some(count);
            f.mean = Some(mean * 1e3);
        }
    }
    f
}

fn level(w: Option<Window>) -> Option<f64> {
    match w? {
        Window::Level { mean, .. } => Some(mean),
        _ => None,
    }
}

/// A histogram's mean over a window, ms.
fn observed_ms(w: Option<Window>) -> Option<f64> {
    match w? {
        Window::Observed { mean, .. } => Some(mean * 1e3),
        _ => None,
    }
}

/// Where the run's measured time starts, seconds after the start.
pub(super) fn measured_from(s: &Summary) -> f64 {
    s.steps.first().map_or(0.0, |step| step.duration_s - step.measured_s)
}

/// The server summary, over the measured time and per interval.
pub(super) fn server(series: &Series, start: Option<SystemTime>, s: &Summary) -> ServerSummary {
    let mut note = series.first_error.clone().map(|e| {
        format!(
            "{e}; {} of {} scrapes failed",
            series.failed,
            series.failed + series.scrapes.len() as u64
        )
    });
    let families: Vec<&'static str> = series.families().into_iter().collect();
    if families.is_empty() && !series.scrapes.is_empty() {
        note.get_or_insert_with(|| {
            format!(
                "{} answered, but with no metric stampede understands (vLLM, TGI, llama.cpp, DCGM, llm-sim); every scrape is kept in server-metrics.jsonl",
                series.url
            )
        });
    }
    let mut mapped = BTreeMap::new();
    let mut rows = Vec::new();
    if let Some(start) = start {
        let from = measured_from(s);
        for (canon, source) in &series.sources {
            let f = match series.window(*canon, start, from, f64::MAX) {
                Some(w) => figure(source.clone(), *canon, w),
                // Recognised, but nothing happened to it in the window.
                None => Figure {
                    source: source.clone(),
                    kind: canon.kind(),
                    unit: unit(*canon),
                    mean: None,
                    max: None,
                    count: None,
                    per_s: None,
                },
            };
            mapped.insert(*canon, f);
        }
        for i in &s.intervals {
            let (a, b) = (i.start_s(), i.end_s);
            let util = utilisation(series, start, a, b);
            rows.push(ServerInterval {
                interval: i.interval,
                running: level(series.window(Canon::Running, start, a, b)),
                waiting: level(series.window(Canon::Waiting, start, a, b)),
                kv_cache_usage: level(series.window(Canon::KvCacheUsage, start, a, b)),
                utilisation: util,
                queue_time_ms: observed_ms(series.window(Canon::QueueTime, start, a, b)),
                prefill_ms: observed_ms(series.window(Canon::Prefill, start, a, b)),
                preemptions: match series.window(Canon::Preemptions, start, a, b) {
                    Some(Window::Increase { delta, .. }) => Some(delta),
                    _ => None,
                },
                prefix_cache_hit_rate: hit_rate(series, start, a, b).map(|(rate, _)| rate),
                vram_used_mib: level(series.window(Canon::GpuMemoryMib, start, a, b)),
                vram_free_mib: level(series.window(Canon::GpuMemoryFreeMib, start, a, b)),
                vram_used_share: level(series.window(Canon::GpuMemoryShare, start, a, b)),
                memory_bandwidth: level(series.window(Canon::MemoryBandwidth, start, a, b)),
                compute_active: level(series.window(Canon::ComputeActive, start, a, b)),
            });
        }
    }
    ServerSummary {
        url: series.url.clone(),
        scrapes: series.scrapes.len(),
        failed_scrapes: series.failed,
        note,
        families,
        mapped,
        unmapped: series.unmapped.iter().cloned().collect(),
        skipped_lines: series.skipped_lines,
        intervals: rows,
        busy_s: series.increase(Canon::BusySeconds),
    }
}

/// The server's prefix-cache hit rate in a window, with the tokens hit and
/// queried when it counts them: the counters' increases, else its gauge's
/// mean. `None` when it reports neither, or looked nothing up.
pub(super) fn hit_rate(series: &Series, start: SystemTime, a: f64, b: f64) -> Option<(f64, Option<(f64, f64)>)> {
    let increase = |canon| match series.window(canon, start, a, b) {
        Some(Window::Increase { delta, .. }) => Some(delta),
        _ => None,
    };
    if let (Some(hits), Some(queries)) = (increase(Canon::PrefixCacheHits), increase(Canon::PrefixCacheQueries)) {
        return (queries > 0.0).then(|| (hits / queries, Some((hits, queries))));
    }
    level(series.window(Canon::PrefixCacheHitRate, start, a, b)).map(|rate| (rate, None))
}

/// The server's utilisation in a window: DCGM's gauge, else the share of
/// the window the engine was busy.
fn utilisation(series: &Series, start: SystemTime, a: f64, b: f64) -> Option<f64> {
    if let Some(u) = level(series.window(Canon::GpuUtil, start, a, b)) {
        return Some(u);
    }
    match series.window(Canon::BusySeconds, start, a, b)? {
        Window::Increase { rate, .. } => Some(rate.clamp(0.0, 1.0)),
        _ => None,
    }
}

/// The accelerators the agents sampled.
pub(super) fn gpu(c: &Collected) -> Option<GpuSummary> {
    let notes: BTreeMap<String, String> = c
        .agents
        .iter()
        .filter_map(|a| a.gpu_note.clone().map(|n| (a.name.clone(), n)))
        .collect();
    if notes.is_empty() {
        return None;
    }
    let all: Vec<_> = c.agents.iter().flat_map(|a| a.gpu.iter()).collect();
    let mean = |f: &dyn Fn(&stampede_proto::pb::GpuSample) -> f64| {
        (!all.is_empty()).then(|| all.iter().map(|s| f(s)).sum::<f64>() / all.len() as f64)
    };
    Some(GpuSummary {
        notes,
        samples: all.len(),
        utilisation_mean: mean(&|s| f64::from(s.utilization_pct) / 100.0),
        memory_used_max_mib: all
            .iter()
            .map(|s| s.memory_used_bytes as f64 / 1_048_576.0)
            .reduce(f64::max),
        memory_used_share_max: all.iter().filter_map(|s| GpuFigure::MemoryShare.of(s)).reduce(f64::max),
        memory_bandwidth_mean: mean(&|s| f64::from(s.memory_utilization_pct) / 100.0),
        power_mean_w: mean(&|s| f64::from(s.power_mw) / 1e3),
    })
}
