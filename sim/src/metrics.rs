//! Prometheus exposition of the simulator's ground truth.

use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::{Engine, Mark, State};

/// Bucket bounds for latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 20] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// A Prometheus histogram: cumulative buckets, an exact sum and a count.
#[derive(Clone, Debug)]
pub(crate) struct PromHistogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl PromHistogram {
    pub(crate) fn latency() -> PromHistogram {
        PromHistogram {
            bounds: &LATENCY_BUCKETS,
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    /// Adds `other`'s observations (same buckets) to these.
    pub(crate) fn add(&mut self, other: &PromHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// Exact sum of observed values, in seconds.
    #[cfg(test)]
    pub(crate) fn sum(&self) -> f64 {
        self.sum
    }

    /// Number of observations.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

fn metric(out: &mut String, kind: &str, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The text exposition format (version 0.0.4) of everything the engine
/// knows.
pub(crate) fn render(engine: &Engine) -> String {
    let now = Instant::now();
    let mut state = engine.state();
    let uptime = (now - engine.started()).as_secs_f64();
    let mark = Mark {
        at: now,
        busy: state.busy.at(now),
        prefill: state.prefill.at(now),
        decode: state.decode.at(now),
    };
    let since = std::mem::replace(&mut state.read, mark);
    let occupied = state.occupied_at(now).as_secs_f64();
    let busy = mark.busy.as_secs_f64();
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;
    metric(
        o,
        "counter",
        "llmsim_requests_received_total",
        "Generation requests that reached the engine (not those answered with an injected HTTP status, nor those whose client left while an injected fault held their headers back).",
        state.received,
    );
    metric(
        o,
        "counter",
        "llmsim_requests_served_total",
        "Generation requests answered in full.",
        state.served,
    );
    metric(
        o,
        "counter",
        "llmsim_requests_cancelled_total",
        "Requests whose client left before the answer was complete (one that gave up on an injected stall or endless answer included).",
        state.cancelled,
    );
    metric(
        o,
        "counter",
        "llmsim_requests_failed_total",
        "Requests the engine broke off with an injected fault: a malformed event or body, or a reset connection.",
        state.failed,
    );
    let _ = writeln!(
        o,
        "# HELP llmsim_faults_total Faults injected by --fault, by kind, counted when drawn: http_<status> (answered at once), slow_headers, stall, malformed, reset, endless."
    );
    let _ = writeln!(o, "# TYPE llmsim_faults_total counter");
    for (kind, n) in &state.faults {
        let _ = writeln!(o, "llmsim_faults_total{{kind=\"{kind}\"}} {n}");
    }
    metric(
        o,
        "counter",
        "llmsim_prompt_tokens_total",
        "Input tokens of served requests.",
        state.prompt_tokens,
    );
    metric(
        o,
        "counter",
        "llmsim_generation_tokens_total",
        "Output tokens of served requests.",
        state.generation_tokens,
    );
    metric(
        o,
        "gauge",
        "llmsim_queue_depth",
        "Requests waiting for a batch slot or for KV-cache room, preempted sequences included.",
        state.queued,
    );
    metric(
        o,
        "gauge",
        "llmsim_running_sequences",
        "Sequences in the running batch.",
        state.running,
    );
    metric(o, "gauge", "llmsim_max_batch", "Batch slots.", engine.config.max_batch);
    metric(
        o,
        "counter",
        "llmsim_busy_seconds_total",
        "Time spent computing: a prefill, or the accelerator's part of a decode step.",
        busy,
    );
    metric(
        o,
        "counter",
        "llmsim_prefill_busy_seconds_total",
        "Of the busy time, time spent in prefills (bound by compute).",
        mark.prefill.as_secs_f64(),
    );
    metric(
        o,
        "counter",
        "llmsim_decode_busy_seconds_total",
        "Of the busy time, time spent in decode steps (bound by memory bandwidth).",
        mark.decode.as_secs_f64(),
    );
    metric(
        o,
        "counter",
        "llmsim_occupied_seconds_total",
        "Time with at least one request received and not yet answered.",
        occupied,
    );
    metric(
        o,
        "counter",
        "llmsim_uptime_seconds_total",
        "Time since the engine started.",
        uptime,
    );
    let fraction = if uptime > 0.0 { busy / uptime } else { 0.0 };
    metric(
        o,
        "gauge",
        "llmsim_busy_fraction",
        "Share of uptime spent computing.",
        fraction,
    );
    if let Some(cache) = &state.cache {
        metric(
            o,
            "gauge",
            "llmsim_kv_cache_used_tokens",
            "KV-cache slots held by running sequences.",
            cache.used,
        );
        metric(
            o,
            "gauge",
            "llmsim_kv_cache_capacity_tokens",
            "KV-cache slots in all.",
            cache.capacity,
        );
        metric(
            o,
            "gauge",
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            cache.usage(),
        );
        metric(
            o,
            "counter",
            "vllm:num_preemptions_total",
            "Cumulative number of preemptions from the engine.",
            cache.preemptions,
        );
    }
    if let Some(prefix) = &state.prefix {
        metric(
            o,
            "counter",
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            prefix.queries,
        );
        metric(
            o,
            "counter",
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            prefix.hits,
        );
        metric(
            o,
            "gauge",
            "llmsim_prefix_cache_used_blocks",
            "Prompt blocks held by the prefix cache.",
            prefix.used(),
        );
    }
    if engine.config.dcgm {
        let gpu = Gpu {
            model: &engine.config.model,
            shares: Shares::between(&since, &mark),
            memory_used_mib: memory_used_mib(&state),
        };
        gpu.render(o);
    }
    let (n, sum, sumsq) = state.gaps;
    metric(
        o,
        "counter",
        "llmsim_interarrival_gaps_total",
        "Gaps between consecutive arrivals.",
        n,
    );
    metric(
        o,
        "counter",
        "llmsim_interarrival_seconds_total",
        "Sum of the gaps between arrivals.",
        sum,
    );
    metric(
        o,
        "counter",
        "llmsim_interarrival_seconds_squared_total",
        "Sum of the squared gaps between arrivals, for their variance.",
        sumsq,
    );
    state.queue_time.render(
        "llmsim_queue_time_seconds",
        "Ground truth: arrival to admission into the batch.",
        o,
    );
    state.ttft.render(
        "llmsim_time_to_first_token_seconds",
        "Ground truth: arrival to first token.",
        o,
    );
    state.e2e.render(
        "llmsim_request_duration_seconds",
        "Ground truth: arrival to last token, served requests only.",
        o,
    );
    state.itl.render(
        "llmsim_inter_token_latency_seconds",
        "Ground truth: for each token after a request's first, the time since the one before it was made; served requests only.",
        o,
    );
    state.event_gap.render(
        "llmsim_event_gap_seconds",
        "Ground truth: for each streamed event carrying tokens after a request's first, the time since the one before it was sent (events without text are not counted); served requests only.",
        o,
    );
    out
}

/// Framebuffer of the modelled GPU, MiB (an 80 GiB card).
const MEMORY_MIB: f64 = 81_920.0;
/// Memory the modelled weights take, MiB.
const WEIGHTS_MIB: f64 = 16_384.0;
/// Share of the framebuffer a KV cache of stated size takes when full:
/// with the weights, a full cache fills 92 % of the card.
const KV_SHARE: f64 = 0.72;
/// KV cache per running sequence, MiB, when the cache has no stated size.
const KV_MIB_PER_SEQUENCE: f64 = 256.0;
/// Share of the compute units a decode step keeps busy: it waits on
/// memory, while a prefill keeps them all busy.
const DECODE_COMPUTE: f64 = 0.3;
/// Power draw idle and at full use, W.
const POWER_IDLE_W: f64 = 70.0;
const POWER_BUSY_W: f64 = 350.0;

/// Framebuffer in use, MiB: the weights and the KV cache's used slots
/// (or a fixed amount per running sequence without a stated cache).
fn memory_used_mib(state: &State) -> f64 {
    let kv = match &state.cache {
        Some(cache) => KV_SHARE * MEMORY_MIB * cache.usage(),
        None => KV_MIB_PER_SEQUENCE * f64::from(state.running),
    };
    (WEIGHTS_MIB + kv).min(MEMORY_MIB).round()
}

/// Shares of the time between two readings spent computing, at most 1:
/// a step whose task ran late on a busy host is entered from its planned
/// start, which can come before the last reading, and so counts in the
/// next window.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shares {
    busy: f64,
    prefill: f64,
    decode: f64,
}

impl Shares {
    fn between(from: &Mark, to: &Mark) -> Shares {
        let span = (to.at - from.at).as_secs_f64();
        let share = |a: Duration, b: Duration| {
            if span > 0.0 {
                (b.saturating_sub(a).as_secs_f64() / span).clamp(0.0, 1.0)
            } else {
                0.0
            }
        };
        Shares {
            busy: share(from.busy, to.busy),
            prefill: share(from.prefill, to.prefill),
            decode: share(from.decode, to.decode),
        }
    }
}

/// The modelled GPU as NVIDIA's DCGM exporter names its figures.
struct Gpu<'a> {
    model: &'a str,
    /// Over the time since the page was last read, as DCGM's figures are
    /// over its sampling period.
    shares: Shares,
    memory_used_mib: f64,
}

impl Gpu<'_> {
    /// Utilisation is the busy share; memory-bandwidth activity the share
    /// spent in decode steps; compute activity all of a prefill and
    /// [`DECODE_COMPUTE`] of a decode step; framebuffer use follows the KV
    /// cache; power the busy share.
    fn render(&self, o: &mut String) {
        let labels = format!(
            "gpu=\"0\",UUID=\"GPU-llm-sim-0\",device=\"nvidia0\",modelName=\"{}\",Hostname=\"llm-sim\"",
            self.model
        );
        let gauge = |o: &mut String, name: &str, help: &str, value: String| {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} gauge");
            let _ = writeln!(o, "{name}{{{labels}}} {value}");
        };
        let s = self.shares;
        gauge(
            o,
            "DCGM_FI_DEV_GPU_UTIL",
            "GPU utilization (in %).",
            format!("{}", (s.busy * 100.0).round()),
        );
        gauge(
            o,
            "DCGM_FI_PROF_DRAM_ACTIVE",
            "Ratio of cycles the device memory interface is active sending or receiving data.",
            format!("{}", s.decode),
        );
        gauge(
            o,
            "DCGM_FI_PROF_SM_ACTIVE",
            "Ratio of cycles an SM has at least 1 warp assigned.",
            format!("{}", (s.prefill + DECODE_COMPUTE * s.decode).min(1.0)),
        );
        gauge(
            o,
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB).",
            format!("{}", self.memory_used_mib),
        );
        gauge(
            o,
            "DCGM_FI_DEV_FB_FREE",
            "Framebuffer memory free (in MiB).",
            format!("{}", MEMORY_MIB - self.memory_used_mib),
        );
        gauge(
            o,
            "DCGM_FI_DEV_POWER_USAGE",
            "Power draw (in W).",
            format!("{:.3}", POWER_IDLE_W + (POWER_BUSY_W - POWER_IDLE_W) * s.busy),
        );
        metric(
            o,
            "gauge",
            "llmsim_gpu_memory_used_mib",
            "Ground truth: memory of the modelled GPU in use, MiB.",
            self.memory_used_mib,
        );
        metric(
            o,
            "gauge",
            "llmsim_gpu_memory_total_mib",
            "Ground truth: memory of the modelled GPU, MiB.",
            MEMORY_MIB,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_page_renders_ground_truth_and_dcgm_names() {
        let engine = Engine::new(crate::Config {
            dcgm: true,
            ..crate::Config::default()
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let page = render(&engine);
        for line in [
            "llmsim_busy_seconds_total 0\n",
            "llmsim_occupied_seconds_total 0\n",
            "llmsim_busy_fraction 0\n",
            "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",",
            "} 0\n",
            "DCGM_FI_PROF_DRAM_ACTIVE{",
            "DCGM_FI_PROF_SM_ACTIVE{",
            "DCGM_FI_DEV_FB_USED{",
            "} 16384\n",
            "DCGM_FI_DEV_FB_FREE{",
            "} 65536\n",
            "DCGM_FI_DEV_POWER_USAGE{",
            "llmsim_gpu_memory_total_mib 81920\n",
            "llmsim_requests_failed_total 0\n",
            "llmsim_faults_total{kind=\"http_500\"} 0\n",
            "llmsim_faults_total{kind=\"endless\"} 0\n",
        ] {
            assert!(page.contains(line), "{line:?} missing from\n{page}");
        }
        assert!(!page.contains("vllm:"), "no cache of stated size: {page}");
        let plain = render(&Engine::new(crate::Config::default()));
        assert!(!plain.contains("DCGM_"), "{plain}");
    }

    #[test]
    fn shares_cover_the_time_since_the_last_reading() {
        let t = Instant::now();
        let mark = |ms: u64, busy: u64, prefill: u64, decode: u64| Mark {
            at: t + Duration::from_millis(ms),
            busy: Duration::from_millis(busy),
            prefill: Duration::from_millis(prefill),
            decode: Duration::from_millis(decode),
        };
        let s = Shares::between(&mark(1_000, 400, 100, 300), &mark(1_500, 700, 100, 600));
        assert_eq!(
            s,
            Shares {
                busy: 0.6,
                prefill: 0.0,
                decode: 0.6
            }
        );
        let same = mark(0, 0, 0, 0);
        assert_eq!(Shares::between(&same, &same).busy, 0.0);
    }

    #[test]
    fn memory_follows_the_kv_cache() {
        let engine = Engine::new(crate::Config {
            kv_cache_tokens: Some(1_000),
            ..crate::Config::default()
        });
        let mut state = engine.state();
        assert_eq!(memory_used_mib(&state), WEIGHTS_MIB);
        state.cache.as_mut().unwrap().used = 1_000;
        assert!((memory_used_mib(&state) / MEMORY_MIB - 0.92).abs() < 1e-4);
        state.cache.as_mut().unwrap().used = 500;
        assert_eq!(memory_used_mib(&state), (16_384.0f64 + 0.36 * 81_920.0).round());
    }

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let mut h = PromHistogram::latency();
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render("x_seconds", "help", &mut out);
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"60\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count 3\n"));
        assert!(out.contains("x_seconds_sum 100.041\n"));
    }
}
