//! What the servers' own metrics mean: vLLM, TGI, llama.cpp, NVIDIA's DCGM
//! exporter and llm-sim, mapped onto one vocabulary. Everything else is
//! kept raw.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::prom::Sample;

/// A figure stampede understands, whatever the server calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Canon {
    /// Requests in the running batch (gauge).
    Running,
    /// Requests waiting for a batch slot (gauge).
    Waiting,
    /// Share of the KV cache in use, 0 to 1 (gauge).
    KvCacheUsage,
    /// Arrival to admission into the batch (histogram, seconds).
    QueueTime,
    /// Time to first token as the server measures it (histogram, seconds).
    Ttft,
    /// Gap between output tokens (histogram, seconds).
    Itl,
    /// Time per output token of a request (histogram, seconds).
    Tpot,
    /// Arrival to last token (histogram, seconds).
    E2e,
    /// Prefill phase of a request (histogram, seconds).
    Prefill,
    /// Decode phase of a request (histogram, seconds).
    Decode,
    /// Input tokens processed (counter).
    PromptTokens,
    /// Output tokens generated (counter).
    GenerationTokens,
    /// Requests completed (counter).
    RequestsDone,
    /// Requests preempted from the batch (counter).
    Preemptions,
    /// Seconds the engine was computing (counter): busy share by its rate.
    BusySeconds,
    /// Accelerator utilisation, 0 to 1 (gauge).
    GpuUtil,
    /// Accelerator memory in use, MiB (gauge).
    GpuMemoryMib,
    /// Accelerator memory free, MiB (gauge).
    GpuMemoryFreeMib,
    /// Share of the accelerator memory in use, 0 to 1 (gauge): used over
    /// used and free, from one scrape.
    GpuMemoryShare,
    /// Memory-bandwidth utilisation, 0 to 1 (gauge): the share of time the
    /// memory interface was busy.
    MemoryBandwidth,
    /// Compute activity, 0 to 1 (gauge): the share of time the
    /// multiprocessors had work.
    ComputeActive,
    /// Accelerator power draw, W (gauge).
    GpuPowerW,
    /// Prompt tokens looked up in the prefix cache (counter).
    PrefixCacheQueries,
    /// Of those, tokens found there (counter).
    PrefixCacheHits,
    /// Prefix-cache hit rate, 0 to 1, as the server averages it (gauge;
    /// vLLM before its V1 engine).
    PrefixCacheHitRate,
}

/// How a figure behaves over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A level: averaged over an interval.
    Gauge,
    /// A running total: its increase over an interval.
    Counter,
    /// `_sum` and `_count` running totals: the interval's mean.
    Histogram,
}

impl Canon {
    /// How it behaves.
    pub fn kind(self) -> Kind {
        use Canon::*;
        match self {
            Running | Waiting | KvCacheUsage | GpuUtil | GpuMemoryMib | GpuMemoryFreeMib | GpuMemoryShare
            | MemoryBandwidth | ComputeActive | GpuPowerW | PrefixCacheHitRate => Kind::Gauge,
            QueueTime | Ttft | Itl | Tpot | E2e | Prefill | Decode => Kind::Histogram,
            PromptTokens | GenerationTokens | RequestsDone | Preemptions | BusySeconds | PrefixCacheQueries
            | PrefixCacheHits => Kind::Counter,
        }
    }

    /// Series with other labels (GPUs, engines, models) add up, except
    /// shares, which average.
    fn averages(self) -> bool {
        matches!(
            self,
            Canon::KvCacheUsage
                | Canon::GpuUtil
                | Canon::MemoryBandwidth
                | Canon::ComputeActive
                | Canon::PrefixCacheHitRate
        )
    }
}

/// One name a server uses for a figure.
struct Rule {
    family: &'static str,
    name: &'static str,
    canon: Canon,
    /// Multiplies the value into the figure's unit.
    scale: f64,
}

const fn rule(family: &'static str, name: &'static str, canon: Canon, scale: f64) -> Rule {
    Rule {
        family,
        name,
        canon,
        scale,
    }
}

/// Every known name, best first for each figure: when a page carries two
/// names for one figure (vLLM's renamed KV-cache gauge), the first wins.
const RULES: &[Rule] = &[
    // vLLM
    rule("vllm", "vllm:num_requests_running", Canon::Running, 1.0),
    rule("vllm", "vllm:num_requests_waiting", Canon::Waiting, 1.0),
    rule("vllm", "vllm:kv_cache_usage_perc", Canon::KvCacheUsage, 1.0),
    rule("vllm", "vllm:gpu_cache_usage_perc", Canon::KvCacheUsage, 1.0),
    rule("vllm", "vllm:request_queue_time_seconds", Canon::QueueTime, 1.0),
    rule("vllm", "vllm:time_to_first_token_seconds", Canon::Ttft, 1.0),
    rule("vllm", "vllm:inter_token_latency_seconds", Canon::Itl, 1.0),
    rule("vllm", "vllm:time_per_output_token_seconds", Canon::Itl, 1.0),
    rule("vllm", "vllm:request_time_per_output_token_seconds", Canon::Tpot, 1.0),
    rule("vllm", "vllm:e2e_request_latency_seconds", Canon::E2e, 1.0),
    rule("vllm", "vllm:request_prefill_time_seconds", Canon::Prefill, 1.0),
    rule("vllm", "vllm:request_decode_time_seconds", Canon::Decode, 1.0),
    rule("vllm", "vllm:prompt_tokens_total", Canon::PromptTokens, 1.0),
    rule("vllm", "vllm:generation_tokens_total", Canon::GenerationTokens, 1.0),
    rule("vllm", "vllm:request_success_total", Canon::RequestsDone, 1.0),
    rule("vllm", "vllm:num_preemptions_total", Canon::Preemptions, 1.0),
    rule(
        "vllm",
        "vllm:prefix_cache_queries_total",
        Canon::PrefixCacheQueries,
        1.0,
    ),
    rule(
        "vllm",
        "vllm:gpu_prefix_cache_queries_total",
        Canon::PrefixCacheQueries,
        1.0,
    ),
    rule("vllm", "vllm:prefix_cache_hits_total", Canon::PrefixCacheHits, 1.0),
    rule("vllm", "vllm:gpu_prefix_cache_hits_total", Canon::PrefixCacheHits, 1.0),
    rule("vllm", "vllm:gpu_prefix_cache_hit_rate", Canon::PrefixCacheHitRate, 1.0),
    // Text Generation Inference
    rule("tgi", "tgi_batch_current_size", Canon::Running, 1.0),
    rule("tgi", "tgi_queue_size", Canon::Waiting, 1.0),
    rule("tgi", "tgi_request_queue_duration", Canon::QueueTime, 1.0),
    rule("tgi", "tgi_request_mean_time_per_token_duration", Canon::Tpot, 1.0),
    rule("tgi", "tgi_request_duration", Canon::E2e, 1.0),
    rule("tgi", "tgi_request_input_length_sum", Canon::PromptTokens, 1.0),
    rule("tgi", "tgi_request_generated_tokens_sum", Canon::GenerationTokens, 1.0),
    rule("tgi", "tgi_request_success", Canon::RequestsDone, 1.0),
    // llama.cpp's server
    rule("llama.cpp", "llamacpp:requests_processing", Canon::Running, 1.0),
    rule("llama.cpp", "llamacpp:requests_deferred", Canon::Waiting, 1.0),
    rule("llama.cpp", "llamacpp:kv_cache_usage_ratio", Canon::KvCacheUsage, 1.0),
    rule("llama.cpp", "llamacpp:prompt_tokens_total", Canon::PromptTokens, 1.0),
    rule(
        "llama.cpp",
        "llamacpp:tokens_predicted_total",
        Canon::GenerationTokens,
        1.0,
    ),
    // NVIDIA DCGM exporter
    rule("dcgm", "DCGM_FI_DEV_GPU_UTIL", Canon::GpuUtil, 0.01),
    rule("dcgm", "DCGM_FI_DEV_FB_USED", Canon::GpuMemoryMib, 1.0),
    rule("dcgm", "DCGM_FI_DEV_FB_FREE", Canon::GpuMemoryFreeMib, 1.0),
    rule("dcgm", "DCGM_FI_PROF_DRAM_ACTIVE", Canon::MemoryBandwidth, 1.0),
    rule("dcgm", "DCGM_FI_DEV_MEM_COPY_UTIL", Canon::MemoryBandwidth, 0.01),
    rule("dcgm", "DCGM_FI_PROF_SM_ACTIVE", Canon::ComputeActive, 1.0),
    rule("dcgm", "DCGM_FI_DEV_POWER_USAGE", Canon::GpuPowerW, 1.0),
    // llm-sim
    rule("llm-sim", "llmsim_running_sequences", Canon::Running, 1.0),
    rule("llm-sim", "llmsim_queue_depth", Canon::Waiting, 1.0),
    rule("llm-sim", "llmsim_queue_time_seconds", Canon::QueueTime, 1.0),
    rule("llm-sim", "llmsim_time_to_first_token_seconds", Canon::Ttft, 1.0),
    rule("llm-sim", "llmsim_request_duration_seconds", Canon::E2e, 1.0),
    rule("llm-sim", "llmsim_prompt_tokens_total", Canon::PromptTokens, 1.0),
    rule(
        "llm-sim",
        "llmsim_generation_tokens_total",
        Canon::GenerationTokens,
        1.0,
    ),
    rule("llm-sim", "llmsim_requests_served_total", Canon::RequestsDone, 1.0),
    rule("llm-sim", "llmsim_busy_seconds_total", Canon::BusySeconds, 1.0),
];

/// A figure's value in one scrape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// A gauge or counter.
    Scalar(f64),
    /// A histogram's running sum (in the figure's unit) and count.
    Histogram {
        /// Sum of observations.
        sum: f64,
        /// Observations.
        count: f64,
    },
}

/// Where a mapped figure came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Source {
    /// `vllm`, `tgi`, `llama.cpp`, `dcgm` or `llm-sim`.
    pub family: &'static str,
    /// The server's name for it.
    pub metric: &'static str,
    /// How many labelled series were combined.
    pub series: usize,
}

/// One scrape, mapped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Each figure found.
    pub values: BTreeMap<Canon, Value>,
    /// Where each came from.
    pub sources: BTreeMap<Canon, Source>,
    /// A histogram's cumulative buckets (`le`, count), summed over its
    /// series and sorted by `le`, `+Inf` last, where the page has them.
    pub buckets: BTreeMap<Canon, Vec<(f64, f64)>>,
    /// Metric names no rule knows, kept raw.
    pub unmapped: BTreeSet<String>,
}

/// The base name of a histogram's `_sum` or `_count` series.
fn histogram_part(name: &str) -> Option<(&str, bool)> {
    if let Some(base) = name.strip_suffix("_sum") {
        Some((base, true))
    } else {
        name.strip_suffix("_count").map(|base| (base, false))
    }
}

/// The cumulative buckets of histogram `name`, summed over its series by
/// `le`, in `le` order; empty when there are none or an `le` is unreadable.
fn buckets_of(samples: &[Sample], name: &str) -> Vec<(f64, f64)> {
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for s in samples {
        if s.name.strip_suffix("_bucket") != Some(name) {
            continue;
        }
        let le = match s.label("le").map(str::trim) {
            Some("+Inf" | "Inf" | "inf") => f64::INFINITY,
            Some(text) => match text.parse::<f64>() {
                Ok(v) if !v.is_nan() => v,
                _ => return Vec::new(),
            },
            None => return Vec::new(),
        };
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some((_, count)) => *count += s.value,
            None => by_le.push((le, s.value)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// Maps one scrape's samples.
pub fn map(samples: &[Sample]) -> Reading {
    let mut reading = Reading::default();
    let mut claimed = BTreeSet::new();
    for rule in RULES {
        if reading.values.contains_key(&rule.canon) {
            // A better name for this figure is on the page; the older one
            // is still claimed, not "unknown".
            claimed.insert(rule.name);
            continue;
        }
        let (value, series) = match rule.canon.kind() {
            Kind::Histogram => {
                let (mut sum, mut count, mut n) = (0.0, 0.0, 0);
                for s in samples {
                    if let Some((base, is_sum)) = histogram_part(&s.name)
                        && base == rule.name
                    {
                        if is_sum {
                            sum += s.value * rule.scale;
                            n += 1;
                        } else {
                            count += s.value;
                        }
                    }
                }
                let buckets = buckets_of(samples, rule.name);
                if n > 0 && !buckets.is_empty() {
                    reading.buckets.insert(rule.canon, buckets);
                }
                (Value::Histogram { sum, count }, n)
            }
            Kind::Gauge | Kind::Counter => {
                let values: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.name == rule.name && s.value.is_finite())
                    .map(|s| s.value * rule.scale)
                    .collect();
                let total: f64 = values.iter().sum();
                let v = if rule.canon.averages() && !values.is_empty() {
                    total / values.len() as f64
                } else {
                    total
                };
                (Value::Scalar(v), values.len())
            }
        };
        if series == 0 {
            continue;
        }
        claimed.insert(rule.name);
        reading.values.insert(rule.canon, value);
        reading.sources.insert(
            rule.canon,
            Source {
                family: rule.family,
                metric: rule.name,
                series,
            },
        );
    }
    memory_share(&mut reading);
    for s in samples {
        let base = histogram_part(&s.name)
            .map(|(b, _)| b)
            .or_else(|| s.name.strip_suffix("_bucket"))
            .unwrap_or(&s.name);
        if !claimed.contains(s.name.as_str()) && !claimed.contains(base) {
            reading.unmapped.insert(base.to_owned());
        }
    }
    reading
}

/// The share of accelerator memory in use, where a scrape gives both what
/// is used and what is free (DCGM), summed over the accelerators.
fn memory_share(reading: &mut Reading) {
    let (Some(Value::Scalar(used)), Some(Value::Scalar(free))) = (
        reading.values.get(&Canon::GpuMemoryMib),
        reading.values.get(&Canon::GpuMemoryFreeMib),
    ) else {
        return;
    };
    let all = used + free;
    if all <= 0.0 {
        return;
    }
    let series = reading.sources[&Canon::GpuMemoryMib].series;
    reading.values.insert(Canon::GpuMemoryShare, Value::Scalar(used / all));
    reading.sources.insert(
        Canon::GpuMemoryShare,
        Source {
            family: "dcgm",
            metric: "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
            series,
        },
    );
}

/// The accelerators' figures on a DCGM exporter's page, per device (its
/// `gpu` label, else `device`, else empty), each in the figure's unit; for
/// each figure the first rule whose name a device has wins, as in [`map`].
pub fn devices(samples: &[Sample]) -> BTreeMap<String, BTreeMap<Canon, f64>> {
    let mut devices: BTreeMap<String, BTreeMap<Canon, f64>> = BTreeMap::new();
    let mut claimed: BTreeMap<(String, Canon), &'static str> = BTreeMap::new();
    for rule in RULES.iter().filter(|r| r.family == "dcgm") {
        for s in samples {
            if s.name != rule.name || !s.value.is_finite() {
                continue;
            }
            let device = s.label("gpu").or_else(|| s.label("device")).unwrap_or("").to_owned();
            let name = claimed.entry((device.clone(), rule.canon)).or_insert(rule.name);
            if *name == rule.name {
                devices
                    .entry(device)
                    .or_default()
                    .insert(rule.canon, s.value * rule.scale);
            }
        }
    }
    devices
}

/// The families a reading recognised.
pub fn families(reading: &Reading) -> BTreeSet<&'static str> {
    reading.sources.values().map(|s| s.family).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::prom::parse;

    #[test]
    fn the_new_kv_cache_name_wins_and_the_old_is_still_known() {
        let page = parse(
            "vllm:kv_cache_usage_perc{engine=\"0\"} 0.25\nvllm:gpu_cache_usage_perc{engine=\"0\"} 0.5\nother_thing 1\n",
        );
        let r = map(&page.samples);
        assert_eq!(r.values[&Canon::KvCacheUsage], Value::Scalar(0.25));
        assert_eq!(r.sources[&Canon::KvCacheUsage].metric, "vllm:kv_cache_usage_perc");
        assert_eq!(r.unmapped.iter().collect::<Vec<_>>(), ["other_thing"]);
        let old = map(&parse("vllm:gpu_cache_usage_perc 0.5\n").samples);
        assert_eq!(old.values[&Canon::KvCacheUsage], Value::Scalar(0.5));
    }

    #[test]
    fn prefix_cache_counters_add_over_engines_and_the_old_gauge_averages() {
        let page = parse(
            "vllm:prefix_cache_queries_total{engine=\"0\"} 1000\nvllm:prefix_cache_queries_total{engine=\"1\"} 500\n\
             vllm:prefix_cache_hits_total{engine=\"0\"} 600\nvllm:prefix_cache_hits_total{engine=\"1\"} 150\n",
        );
        let r = map(&page.samples);
        assert_eq!(r.values[&Canon::PrefixCacheQueries], Value::Scalar(1500.0));
        assert_eq!(r.values[&Canon::PrefixCacheHits], Value::Scalar(750.0));
        assert!(r.unmapped.is_empty(), "{:?}", r.unmapped);
        let old = map(&parse(
            "vllm:gpu_prefix_cache_hit_rate{gpu=\"0\"} 0.2\nvllm:gpu_prefix_cache_hit_rate{gpu=\"1\"} 0.6\n",
        )
        .samples);
        assert_eq!(old.values[&Canon::PrefixCacheHitRate], Value::Scalar(0.4));
    }

    #[test]
    fn memory_share_comes_from_used_and_free_and_copy_util_is_a_percent() {
        let page = parse(
            "DCGM_FI_DEV_FB_USED{gpu=\"0\"} 60\nDCGM_FI_DEV_FB_USED{gpu=\"1\"} 20\n\
             DCGM_FI_DEV_FB_FREE{gpu=\"0\"} 40\nDCGM_FI_DEV_FB_FREE{gpu=\"1\"} 80\n\
             DCGM_FI_DEV_MEM_COPY_UTIL{gpu=\"0\"} 90\nDCGM_FI_DEV_MEM_COPY_UTIL{gpu=\"1\"} 70\n",
        );
        let r = map(&page.samples);
        assert_eq!(r.values[&Canon::GpuMemoryShare], Value::Scalar(0.4));
        assert_eq!(r.sources[&Canon::GpuMemoryShare].series, 2);
        assert_eq!(r.values[&Canon::MemoryBandwidth], Value::Scalar(0.8));
        // DCGM's profiling field wins over the copy utilisation.
        let both = map(&parse("DCGM_FI_DEV_MEM_COPY_UTIL 90\nDCGM_FI_PROF_DRAM_ACTIVE 0.5\n").samples);
        assert_eq!(both.values[&Canon::MemoryBandwidth], Value::Scalar(0.5));
        assert!(both.unmapped.is_empty(), "{:?}", both.unmapped);
        // Used without free: no share.
        assert!(
            !map(&parse("DCGM_FI_DEV_FB_USED 60\n").samples)
                .values
                .contains_key(&Canon::GpuMemoryShare)
        );
    }

    #[test]
    fn dcgm_figures_are_read_per_device_best_name_first() {
        let page = parse(
            "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",UUID=\"a\"} 40\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\",UUID=\"b\"} 90\n\
             DCGM_FI_DEV_MEM_COPY_UTIL{gpu=\"0\"} 30\nDCGM_FI_PROF_DRAM_ACTIVE{gpu=\"0\"} 0.5\n\
             DCGM_FI_DEV_MEM_COPY_UTIL{gpu=\"1\"} 50\nDCGM_FI_DEV_FB_USED{gpu=\"1\"} 1024\n\
             vllm:num_requests_running 3\n",
        );
        let d = devices(&page.samples);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d["0"][&Canon::GpuUtil], 0.4);
        assert_eq!(d["0"][&Canon::MemoryBandwidth], 0.5);
        assert_eq!(d["1"][&Canon::MemoryBandwidth], 0.5);
        assert_eq!(d["1"][&Canon::GpuMemoryMib], 1024.0);
        assert!(!d["0"].contains_key(&Canon::Running));
    }

    #[test]
    fn buckets_add_up_over_series_by_bound() {
        let page = parse(
            "llmsim_queue_time_seconds_bucket{le=\"0.1\",m=\"a\"} 1\nllmsim_queue_time_seconds_bucket{le=\"+Inf\",m=\"a\"} 4\n\
             llmsim_queue_time_seconds_bucket{le=\"0.1\",m=\"b\"} 2\nllmsim_queue_time_seconds_bucket{le=\"+Inf\",m=\"b\"} 2\n\
             llmsim_queue_time_seconds_sum 1\nllmsim_queue_time_seconds_count 6\n",
        );
        let r = map(&page.samples);
        assert_eq!(r.buckets[&Canon::QueueTime], [(0.1, 3.0), (f64::INFINITY, 6.0)]);
    }

    #[test]
    fn series_add_up_shares_average_and_histograms_keep_sum_and_count() {
        let page = parse(
            "vllm:num_requests_running{model_name=\"a\"} 2\nvllm:num_requests_running{model_name=\"b\"} 3\n\
             DCGM_FI_DEV_GPU_UTIL{gpu=\"0\"} 40\nDCGM_FI_DEV_GPU_UTIL{gpu=\"1\"} 60\n\
             vllm:request_queue_time_seconds_bucket{le=\"1\"} 2\nvllm:request_queue_time_seconds_sum 1.5\n\
             vllm:request_queue_time_seconds_count 3\n",
        );
        let r = map(&page.samples);
        assert_eq!(r.values[&Canon::Running], Value::Scalar(5.0));
        assert_eq!(r.sources[&Canon::Running].series, 2);
        assert_eq!(r.values[&Canon::GpuUtil], Value::Scalar(0.5));
        assert_eq!(r.values[&Canon::QueueTime], Value::Histogram { sum: 1.5, count: 3.0 });
        assert_eq!(r.buckets[&Canon::QueueTime], [(1.0, 2.0)]);
        assert!(r.unmapped.is_empty(), "{:?}", r.unmapped);
        assert_eq!(families(&r).into_iter().collect::<Vec<_>>(), ["dcgm", "vllm"]);
    }
}
