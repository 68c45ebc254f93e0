//! Where the time went: findings drawn from the merged histograms, the
//! server's own metrics and the accelerator samples, each with the numbers
//! behind it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

/// Queued time above this share of TTFT is a finding.
pub const QUEUE_SHARE: f64 = 0.25;
/// An accelerator idle above this share of the time requests were present
/// is a finding.
pub const IDLE_SHARE: f64 = 0.3;
/// First requests this many times slower than steady state are a cold start...
pub const COLD_RATIO: f64 = 3.0;
/// ...when they are also at least this much slower, in milliseconds: a
/// model loading, a graph compiling or a cache filling costs that much,
/// while one answer a few milliseconds late on a busy host is not worth a
/// finding, however fast the steady answers.
pub const COLD_EXCESS_MS: f64 = 100.0;
/// A KV cache at least this full (share of its slots) is full.
pub const KV_FULL: f64 = 0.9;
/// Accelerator memory in use above this share is a finding.
pub const VRAM_SHARE: f64 = 0.9;
/// Memory bandwidth busy at least this share of the time is near its
/// limit...
pub const BANDWIDTH_BUSY: f64 = 0.7;
/// ...when compute is busy less than this share.
pub const COMPUTE_BUSY: f64 = 0.5;
/// A prefix-cache hit rate under this share of what the workload's shared
/// prefixes offered is a finding.
pub const PREFIX_HIT_FLOOR: f64 = 0.5;

/// One conclusion and its evidence.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema, PartialEq)]
pub struct Finding {
    /// `queueing`, `saturation`, `capacity`, `gpu_idle`,
    /// `memory_pressure`, `vram_high`, `memory_bound_decode`,
    /// `prefix_cache_low`, `cold_start`, `client_bound` or `errors`.
    pub kind: &'static str,
    /// The conclusion in one line.
    pub title: String,
    /// The numbers it rests on, by name.
    pub evidence: BTreeMap<&'static str, Value>,
    /// Where the numbers come from.
    pub basis: String,
}

fn finding(kind: &'static str, title: String, basis: impl Into<String>, evidence: &[(&'static str, Value)]) -> Finding {
    Finding {
        kind,
        title,
        evidence: evidence.iter().cloned().collect(),
        basis: basis.into(),
    }
}

fn round(x: f64, places: i32) -> Value {
    let k = 10f64.powi(places);
    json!((x * k).round() / k)
}

/// Queueing seen by the server: its mean queue time against the client's
/// mean TTFT over the same measured time.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerQueue {
    /// Server's mean queue time, ms.
    pub queue_mean_ms: f64,
    /// Requests the server saw queue (observations).
    pub observed: f64,
    /// Client's mean TTFT, ms.
    pub ttft_mean_ms: f64,
    /// Server's own mean TTFT, ms, when it says.
    pub server_ttft_mean_ms: Option<f64>,
    /// Mean requests waiting while the load ran.
    pub waiting_mean: Option<f64>,
    /// The server's name for its queue time.
    pub source: String,
}

/// Queueing: the share of TTFT spent queued in the server.
pub fn queueing(q: &ServerQueue) -> Option<Finding> {
    if q.ttft_mean_ms <= 0.0 || q.observed <= 0.0 {
        return None;
    }
    let share = q.queue_mean_ms / q.ttft_mean_ms;
    if share < QUEUE_SHARE {
        return None;
    }
    let mut evidence = vec![
        ("queue_share_of_ttft", round(share, 4)),
        ("server_queue_mean_ms", round(q.queue_mean_ms, 3)),
        ("client_ttft_mean_ms", round(q.ttft_mean_ms, 3)),
        ("queued_requests_observed", json!(q.observed)),
    ];
    if let Some(t) = q.server_ttft_mean_ms {
        evidence.push(("server_ttft_mean_ms", round(t, 3)));
    }
    if let Some(w) = q.waiting_mean {
        evidence.push(("waiting_mean", round(w, 2)));
    }
    Some(finding(
        "queueing",
        format!(
            "queueing: {:.0}% of TTFT was spent waiting in the server's queue (mean {:.0} ms of a {:.0} ms TTFT)",
            share * 100.0,
            q.queue_mean_ms,
            q.ttft_mean_ms
        ),
        format!(
            "server metric {} (mean over the measured time) against the client's mean TTFT",
            q.source
        ),
        &evidence,
    ))
}

/// One load level, for queueing inferred without server data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelLatency {
    /// Users or arrivals per second.
    pub level: f64,
    /// TTFT median, ms.
    pub ttft_p50_ms: f64,
    /// TPOT median, ms.
    pub tpot_p50_ms: f64,
}

/// Queueing inferred from the client alone: TTFT grows with load while
/// TPOT stays flat, so the added time is spent before the first token.
pub fn inferred_queueing(levels: &[LevelLatency], label: impl Fn(f64) -> String) -> Option<Finding> {
    let lo = levels.iter().min_by(|a, b| a.level.total_cmp(&b.level))?;
    let hi = levels.iter().max_by(|a, b| a.level.total_cmp(&b.level))?;
    if hi.level <= lo.level || lo.ttft_p50_ms <= 0.0 || lo.tpot_p50_ms <= 0.0 {
        return None;
    }
    let ttft_growth = hi.ttft_p50_ms / lo.ttft_p50_ms;
    let tpot_growth = hi.tpot_p50_ms / lo.tpot_p50_ms;
    if ttft_growth < 2.0 || tpot_growth > 1.5 {
        return None;
    }
    Some(finding(
        "queueing",
        format!(
            "queueing (inferred): TTFT p50 grew {ttft_growth:.1}x from {} to {} while TPOT p50 grew {tpot_growth:.2}x",
            label(lo.level),
            label(hi.level)
        ),
        "client histograms only (no server queue metric): time added before the first token while decoding kept its pace",
        &[
            ("ttft_p50_low_ms", round(lo.ttft_p50_ms, 3)),
            ("ttft_p50_high_ms", round(hi.ttft_p50_ms, 3)),
            ("tpot_p50_low_ms", round(lo.tpot_p50_ms, 3)),
            ("tpot_p50_high_ms", round(hi.tpot_p50_ms, 3)),
            ("ttft_growth", round(ttft_growth, 3)),
            ("tpot_growth", round(tpot_growth, 3)),
        ],
    ))
}

/// The accelerator over the time requests were present.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Utilisation {
    /// Busy time over the time requests were present, 0 to 1.
    pub utilisation: f64,
    /// Intervals counted.
    pub intervals: usize,
    /// Seconds with requests in flight (the agents' presence maps); none
    /// when the agents did not say, and whole intervals with requests
    /// running or waiting stood in for it.
    pub present_s: Option<f64>,
    /// Mean requests waiting over them, when the server says.
    pub waiting_mean: Option<f64>,
    /// Mean requests running over them, when the server says.
    pub running_mean: Option<f64>,
    /// Where the utilisation comes from.
    pub source: String,
}

/// GPU idle while requests were present.
pub fn gpu_idle(u: &Option<Utilisation>) -> Option<Finding> {
    let u = u.as_ref()?;
    let idle = 1.0 - u.utilisation;
    if u.intervals == 0 || idle < IDLE_SHARE {
        return None;
    }
    let waited = u.waiting_mean.is_some_and(|w| w >= 0.5);
    let title = if waited {
        format!(
            "GPU idle while requests wait: the server is not batching (idle {:.0}% of the time while {:.1} requests waited on average)",
            idle * 100.0,
            u.waiting_mean.unwrap_or(0.0)
        )
    } else {
        format!(
            "GPU idle {:.0}% of the time while requests were in flight: the load does not keep it busy",
            idle * 100.0
        )
    };
    let mut evidence = vec![
        ("utilisation_mean", round(u.utilisation, 4)),
        ("idle_share", round(idle, 4)),
        ("intervals", json!(u.intervals)),
    ];
    if let Some(p) = u.present_s {
        evidence.push(("requests_present_s", round(p, 3)));
    }
    if let Some(w) = u.waiting_mean {
        evidence.push(("waiting_mean", round(w, 2)));
    }
    if let Some(r) = u.running_mean {
        evidence.push(("running_mean", round(r, 2)));
    }
    Some(finding(
        "gpu_idle",
        title,
        match u.present_s {
            Some(_) => format!(
                "{}: busy time over the time the agents had requests in flight (to the millisecond, all agents together)",
                u.source
            ),
            None => format!("{} over the intervals with requests in flight or queued", u.source),
        },
        &evidence,
    ))
}

/// The server's KV cache and preemptions over the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KvPressure {
    /// Sequences preempted over the measured time, when the server counts
    /// them.
    pub preemptions: Option<f64>,
    /// The server's name for its preemption counter.
    pub preemptions_source: Option<String>,
    /// Intervals with a preemption, and the start of the first, seconds.
    pub preempted_intervals: usize,
    /// Start of the first interval with a preemption, seconds.
    pub first_preemption_s: Option<f64>,
    /// Most preemptions in one interval.
    pub peak_preemptions: f64,
    /// Intervals whose mean KV-cache use was at least [`KV_FULL`] while
    /// requests waited.
    pub full_while_waiting: usize,
    /// Start of the first of them, seconds.
    pub first_full_s: Option<f64>,
    /// Intervals with a KV-cache reading.
    pub intervals: usize,
    /// Largest interval mean of KV-cache use, 0 to 1.
    pub kv_max: Option<f64>,
    /// The server's name for its KV-cache use.
    pub kv_source: Option<String>,
}

/// A workload of shared prefixes and the hit rate the prefix cache got.
#[derive(Clone, Debug, PartialEq)]
pub struct PrefixHits {
    /// Prefix groups.
    pub groups: u32,
    /// Tokens of each prefix.
    pub prefix_tokens: u32,
    /// Share of the prompts' tokens in their group's prefix, 0 to 1.
    pub shared_share: f64,
    /// The hit rate, 0 to 1.
    pub hit_rate: f64,
    /// Where the hit rate comes from, in words.
    pub source: String,
}

/// A low prefix-cache hit rate: the prompts shared prefixes, but the
/// cache served less than [`PREFIX_HIT_FLOOR`] of the share they offered.
pub fn prefix_cache_low(h: &PrefixHits) -> Option<Finding> {
    if h.shared_share <= 0.0 || h.hit_rate >= PREFIX_HIT_FLOOR * h.shared_share {
        return None;
    }
    let held = u64::from(h.groups) * u64::from(h.prefix_tokens);
    Some(finding(
        "prefix_cache_low",
        format!(
            "The prefix cache served {:.0}% of prompt tokens, though {:.0}% of them lay in {} shared prefix{} of {} tokens",
            h.hit_rate * 100.0,
            h.shared_share * 100.0,
            h.groups,
            if h.groups == 1 { "" } else { "es" },
            h.prefix_tokens,
        ),
        format!(
            "hit rate from {}; a finding below {:.0}% of the shared share. Check that the server caches prefixes \
             (vLLM: --enable-prefix-caching, on by default in its V1 engine; SGLang: radix cache not disabled) and \
             that its cache holds every group's prefix at once: {} groups x {} tokens = {held} tokens of KV cache \
             besides the running requests' own; fewer groups, or a larger cache, let prefixes survive between uses",
            h.source,
            PREFIX_HIT_FLOOR * 100.0,
            h.groups,
            h.prefix_tokens,
        ),
        &[
            ("hit_rate", round(h.hit_rate, 4)),
            ("shared_share", round(h.shared_share, 4)),
            ("floor", json!(PREFIX_HIT_FLOOR)),
            ("groups", json!(h.groups)),
            ("prefix_tokens", json!(h.prefix_tokens)),
            ("prefix_tokens_all_groups", json!(held)),
        ],
    ))
}

/// Memory pressure: the KV cache full while requests wait, or sequences
/// preempted to make room.
pub fn memory_pressure(k: &KvPressure) -> Option<Finding> {
    let preempted = k.preemptions.filter(|n| *n > 0.0);
    if preempted.is_none() && k.full_while_waiting == 0 {
        return None;
    }
    let mut what = Vec::new();
    let mut which = Vec::new();
    if let Some(n) = preempted {
        which.push("preemptions");
        what.push(format!(
            "the server preempted {n:.0} sequence{}{}{}",
            if n == 1.0 { "" } else { "s" },
            k.first_preemption_s
                .map(|t| format!(" from {t:.0} s"))
                .unwrap_or_default(),
            if k.peak_preemptions > 0.0 {
                format!(", up to {:.0} in one interval", k.peak_preemptions)
            } else {
                String::new()
            }
        ));
    }
    if k.full_while_waiting > 0 {
        which.push("cache_full_while_waiting");
        what.push(format!(
            "its KV cache was at least {:.0}% full while requests waited in {} of {} intervals{}",
            KV_FULL * 100.0,
            k.full_while_waiting,
            k.intervals,
            k.first_full_s.map(|t| format!(" from {t:.0} s")).unwrap_or_default()
        ));
    }
    let mut evidence = vec![
        ("which", json!(which)),
        ("kv_full_while_waiting_intervals", json!(k.full_while_waiting)),
        ("kv_intervals", json!(k.intervals)),
    ];
    if let Some(n) = k.preemptions {
        evidence.push(("preemptions", json!(n)));
        evidence.push(("preempted_intervals", json!(k.preempted_intervals)));
        evidence.push(("peak_preemptions_per_interval", json!(k.peak_preemptions)));
    }
    if let Some(t) = k.first_preemption_s {
        evidence.push(("first_preemption_s", round(t, 3)));
    }
    if let Some(t) = k.first_full_s {
        evidence.push(("first_full_s", round(t, 3)));
    }
    if let Some(m) = k.kv_max {
        evidence.push(("kv_cache_usage_max", round(m, 4)));
    }
    let sources: Vec<&str> = [k.preemptions_source.as_deref(), k.kv_source.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    Some(finding(
        "memory_pressure",
        format!(
            "memory pressure: {}; preempted sequences are recomputed and waiting ones wait for cache, so TTFT and TPOT jump. Fewer concurrent sequences (vLLM's max_num_seqs), more memory for the cache (gpu_memory_utilization, a smaller or quantised model) or shorter contexts (max_model_len, max_tokens) relieve it",
            what.join(", and ")
        ),
        format!(
            "server metrics {} per interval; the preemption count is the counter's increase over the measured time",
            sources.join(" and ")
        ),
        &evidence,
    ))
}

/// The accelerator's memory in use, per interval.
#[derive(Clone, Debug, PartialEq)]
pub struct VramUse {
    /// Largest interval mean of the share in use, 0 to 1.
    pub max_share: f64,
    /// Intervals above [`VRAM_SHARE`].
    pub above: usize,
    /// Intervals with a reading.
    pub intervals: usize,
    /// Start of the first interval above, seconds.
    pub first_s: Option<f64>,
    /// Where the share comes from.
    pub source: String,
}

/// VRAM above 90 %.
pub fn vram_high(v: &VramUse) -> Option<Finding> {
    if v.above == 0 {
        return None;
    }
    let (max, limit) = crate::figure::beside(v.max_share * 100.0, VRAM_SHARE * 100.0, 1);
    Some(finding(
        "vram_high",
        format!(
            "VRAM above {limit}%: the accelerator's memory was up to {max}% used (above {limit}% in {} of {} intervals{}): no headroom for longer contexts or larger batches. A server that reserves its KV cache up front (vLLM's gpu_memory_utilization) holds this much by design; otherwise a smaller or quantised model, or fewer concurrent sequences, frees memory",
            v.above,
            v.intervals,
            v.first_s.map(|t| format!(", from {t:.0} s")).unwrap_or_default()
        ),
        format!("{}, averaged over each interval", v.source),
        &[
            ("vram_used_share_max", round(v.max_share, 4)),
            ("intervals_above", json!(v.above)),
            ("intervals", json!(v.intervals)),
            ("limit", json!(VRAM_SHARE)),
        ],
    ))
}

/// Memory bandwidth against compute over the intervals with requests
/// running.
#[derive(Clone, Debug, PartialEq)]
pub struct Bandwidth {
    /// Mean memory-bandwidth use, 0 to 1.
    pub bandwidth_mean: f64,
    /// Mean compute activity, 0 to 1.
    pub compute_mean: f64,
    /// Intervals counted.
    pub intervals: usize,
    /// Where the figures come from.
    pub source: String,
}

/// Memory-bound decode: memory bandwidth near its limit while compute is
/// not.
pub fn memory_bound_decode(b: &Bandwidth) -> Option<Finding> {
    if b.intervals == 0 || b.bandwidth_mean < BANDWIDTH_BUSY || b.compute_mean >= COMPUTE_BUSY {
        return None;
    }
    Some(finding(
        "memory_bound_decode",
        format!(
            "memory-bound decode: memory bandwidth was {:.0}% busy while compute was {:.0}% (over {} intervals with requests running): each decode step waits on reading the weights and the KV cache. Larger batches share each read; quantised weights or KV cache, or an accelerator with more bandwidth, shorten it",
            b.bandwidth_mean * 100.0,
            b.compute_mean * 100.0,
            b.intervals
        ),
        format!("{} over the intervals with requests running", b.source),
        &[
            ("memory_bandwidth_mean", round(b.bandwidth_mean, 4)),
            ("compute_active_mean", round(b.compute_mean, 4)),
            ("intervals", json!(b.intervals)),
            ("bandwidth_limit", json!(BANDWIDTH_BUSY)),
            ("compute_limit", json!(COMPUTE_BUSY)),
        ],
    ))
}

/// Cold start: the first answers' TTFT (the first interval's p95)
/// against steady state (the median of the later intervals' p95s), for
/// one prompt class when the run has them. It must be both
/// [`COLD_RATIO`] times and [`COLD_EXCESS_MS`] above steady state.
pub fn cold_start(first_p95_ms: f64, steady_p95_ms: f64, first_interval: u64, class: Option<&str>) -> Option<Finding> {
    if steady_p95_ms <= 0.0
        || first_p95_ms < COLD_RATIO * steady_p95_ms
        || first_p95_ms - steady_p95_ms < COLD_EXCESS_MS
    {
        return None;
    }
    let mut evidence = vec![
        ("first_interval", json!(first_interval)),
        ("first_ttft_p95_ms", round(first_p95_ms, 3)),
        ("steady_ttft_p95_ms", round(steady_p95_ms, 3)),
        ("ratio", round(first_p95_ms / steady_p95_ms, 3)),
    ];
    if let Some(c) = class {
        evidence.push(("class", json!(c)));
    }
    Some(finding(
        "cold_start",
        format!(
            "cold start: the first {}requests were {:.1}x slower to first token than steady state ({first_p95_ms:.0} ms against {steady_p95_ms:.0} ms, TTFT p95)",
            class.map(|c| format!("{c} ")).unwrap_or_default(),
            first_p95_ms / steady_p95_ms
        ),
        format!(
            "TTFT p95 of the first interval with successes against the median TTFT p95 of its step's later intervals, prompt class by prompt class: at least {COLD_RATIO}x and {COLD_EXCESS_MS} ms above it"
        ),
        &evidence,
    ))
}

/// One error class over the run.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorClass {
    /// Its name.
    pub class: String,
    /// Failed requests.
    pub count: u64,
    /// When the first one was reported, seconds after the start.
    pub first_s: Option<f64>,
}

/// Errors: the top classes and when each began.
pub fn errors(classes: &[ErrorClass], attempted: u64) -> Option<Finding> {
    let mut top: Vec<&ErrorClass> = classes.iter().filter(|c| c.count > 0).collect();
    if top.is_empty() {
        return None;
    }
    top.sort_by(|a, b| b.count.cmp(&a.count).then(a.class.cmp(&b.class)));
    top.truncate(3);
    let total: u64 = classes.iter().map(|c| c.count).sum();
    let words: Vec<String> = top
        .iter()
        .map(|c| match c.first_s {
            Some(t) => format!("{} {} from {t:.0} s", c.count, c.class),
            None => format!("{} {}", c.count, c.class),
        })
        .collect();
    let classes = top
        .iter()
        .map(|c| json!({"class": c.class, "count": c.count, "first_s": c.first_s}))
        .collect();
    Some(finding(
        "errors",
        format!("errors: {total} of {attempted} requests failed ({})", words.join(", ")),
        "error counters of the interval reports; a class begins in the first interval that reported it",
        &[
            ("failed", json!(total)),
            ("attempted", json!(attempted)),
            ("top", Value::Array(classes)),
        ],
    ))
}

/// Saturation: the knee of a stepped load.
pub fn saturation(label: &str, max_rps: f64, base_p95_ms: f64, knee_p95_ms: f64) -> Finding {
    finding(
        "saturation",
        format!(
            "saturation: throughput tops out near {max_rps:.1} req/s from {label}, where TTFT p95 is {knee_p95_ms:.0} ms (against {base_p95_ms:.0} ms at the lowest load)"
        ),
        crate::analysis::KNEE_RULE,
        &[
            ("knee", json!(label)),
            ("max_requests_per_s", round(max_rps, 3)),
            ("baseline_ttft_p95_ms", round(base_p95_ms, 3)),
            ("knee_ttft_p95_ms", round(knee_p95_ms, 3)),
        ],
    )
}

/// Capacity at SLO: the largest load held with enough good requests, or
/// none.
pub fn capacity(c: &crate::report::summary::Capacity, slo: &crate::report::summary::SloSummary) -> Finding {
    let title = match (&c.label, c.ratio, c.goodput_requests_per_s) {
        (Some(label), Some(ratio), Some(rps)) => format!(
            "capacity: this server holds {label} with {:.0}% of requests meeting {} ({rps:.1} good req/s)",
            ratio * 100.0,
            slo.words
        ),
        _ => format!(
            "capacity: even the lowest load had fewer than {:.0}% of requests meeting {}",
            slo.ratio * 100.0,
            slo.words
        ),
    };
    finding(
        "capacity",
        title,
        c.rule.clone(),
        &[
            ("level", json!(c.label)),
            ("goodput_ratio", c.ratio.map_or(Value::Null, |r| round(r, 4))),
            (
                "goodput_requests_per_s",
                c.goodput_requests_per_s.map_or(Value::Null, |r| round(r, 3)),
            ),
            ("target_ratio", round(slo.ratio, 4)),
            ("objectives", json!(slo.words)),
        ],
    )
}

/// Client-bound: the agents, not the server, were the limit.
pub fn client_bound(c: &crate::report::summary::Client) -> Option<Finding> {
    if c.reasons.is_empty() {
        return None;
    }
    Some(finding(
        "client_bound",
        format!(
            "client-bound: the results understate the server ({})",
            c.reasons.join("; ")
        ),
        "how late the agents' runtime ran a 10 ms tick (starvation), their scheduling lag, and their own threads' CPU",
        &[
            ("runtime_delay_p90_ms", round(c.runtime_delay_p90_ms, 3)),
            ("runtime_delay_p99_ms", round(c.runtime_delay_p99_ms, 3)),
            ("schedule_lag_p90_ms", round(c.schedule_lag_p90_ms, 3)),
            ("schedule_lag_p99_ms", round(c.schedule_lag_p99_ms, 3)),
            ("cpu_max", round(c.cpu_max, 4)),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(queue_mean_ms: f64, ttft_mean_ms: f64) -> ServerQueue {
        ServerQueue {
            queue_mean_ms,
            observed: 10.0,
            ttft_mean_ms,
            server_ttft_mean_ms: None,
            waiting_mean: Some(8.0),
            source: "llmsim_queue_time_seconds".to_owned(),
        }
    }

    #[test]
    fn a_prefix_cache_low_against_the_shared_share() {
        let hits = |hit_rate| PrefixHits {
            groups: 16,
            prefix_tokens: 256,
            shared_share: 0.8,
            hit_rate,
            source: "the server's vllm:prefix_cache_hits_total".to_owned(),
        };
        let f = prefix_cache_low(&hits(0.1)).expect("0.1 is under half of 0.8");
        assert!(
            f.title.contains("served 10% of prompt tokens")
                && f.title.contains("80% of them lay in 16 shared prefixes"),
            "{}",
            f.title
        );
        assert_eq!(f.evidence["prefix_tokens_all_groups"], json!(4096));
        assert!(f.basis.contains("--enable-prefix-caching"), "{}", f.basis);
        assert!(prefix_cache_low(&hits(0.4)).is_none(), "exactly half is enough");
        assert!(prefix_cache_low(&hits(0.7)).is_none());
        assert!(
            prefix_cache_low(&PrefixHits {
                shared_share: 0.0,
                ..hits(0.0)
            })
            .is_none()
        );
    }

    #[test]
    fn queueing_needs_a_quarter_of_ttft() {
        let f = queueing(&queue(900.0, 1000.0)).expect("90% queued");
        assert_eq!(f.evidence["queue_share_of_ttft"], json!(0.9));
        assert!(f.title.contains("90% of TTFT"), "{}", f.title);
        assert!(queueing(&queue(100.0, 1000.0)).is_none());
        assert!(queueing(&queue(0.0, 0.0)).is_none());
    }

    #[test]
    fn inferred_queueing_wants_ttft_up_and_tpot_flat() {
        let l = |level, ttft, tpot| LevelLatency {
            level,
            ttft_p50_ms: ttft,
            tpot_p50_ms: tpot,
        };
        let label = |x: f64| format!("{x} users");
        assert!(inferred_queueing(&[l(1.0, 100.0, 20.0), l(8.0, 900.0, 22.0)], label).is_some());
        assert!(inferred_queueing(&[l(1.0, 100.0, 20.0), l(8.0, 900.0, 60.0)], label).is_none());
        assert!(inferred_queueing(&[l(1.0, 100.0, 20.0), l(8.0, 120.0, 21.0)], label).is_none());
        assert!(inferred_queueing(&[l(1.0, 100.0, 20.0)], label).is_none());
    }

    #[test]
    fn idle_gpu_with_a_queue_says_the_server_is_not_batching() {
        let u = |utilisation, waiting| Utilisation {
            utilisation,
            intervals: 20,
            present_s: Some(12.5),
            waiting_mean: waiting,
            running_mean: Some(1.0),
            source: "DCGM_FI_DEV_GPU_UTIL".to_owned(),
        };
        let f = gpu_idle(&Some(u(0.25, Some(9.0)))).unwrap();
        assert!(f.title.starts_with("GPU idle while requests wait"), "{}", f.title);
        assert_eq!(f.evidence["idle_share"], json!(0.75));
        assert!(
            gpu_idle(&Some(u(0.25, Some(0.0))))
                .unwrap()
                .title
                .contains("does not keep it busy")
        );
        assert!(gpu_idle(&Some(u(0.9, Some(9.0)))).is_none());
        assert!(gpu_idle(&None).is_none());
    }

    #[test]
    fn errors_name_the_top_classes_and_when_they_began() {
        let c = |class: &str, count, first_s| ErrorClass {
            class: class.to_owned(),
            count,
            first_s,
        };
        let f = errors(
            &[
                c("timeout", 3, Some(12.0)),
                c("http_503", 9, Some(4.0)),
                c("connect", 1, None),
                c("stream", 2, Some(1.0)),
            ],
            100,
        )
        .unwrap();
        assert_eq!(
            f.title,
            "errors: 15 of 100 requests failed (9 http_503 from 4 s, 3 timeout from 12 s, 2 stream from 1 s)"
        );
        assert!(errors(&[c("timeout", 0, None)], 10).is_none());
    }

    #[test]
    fn memory_pressure_says_which_and_from_when() {
        let k = KvPressure {
            preemptions: Some(37.0),
            preemptions_source: Some("vllm:num_preemptions_total".to_owned()),
            preempted_intervals: 6,
            first_preemption_s: Some(2.0),
            peak_preemptions: 9.0,
            full_while_waiting: 12,
            first_full_s: Some(1.0),
            intervals: 20,
            kv_max: Some(0.99),
            kv_source: Some("vllm:kv_cache_usage_perc".to_owned()),
        };
        let f = memory_pressure(&k).unwrap();
        assert!(
            f.title.starts_with(
                "memory pressure: the server preempted 37 sequences from 2 s, up to 9 in one interval, and its KV cache was at least 90% full while requests waited in 12 of 20 intervals from 1 s;"
            ),
            "{}",
            f.title
        );
        assert_eq!(f.evidence["preemptions"], json!(37.0));
        assert_eq!(f.evidence["which"], json!(["preemptions", "cache_full_while_waiting"]));
        let only_full = KvPressure {
            preemptions: Some(0.0),
            ..k.clone()
        };
        assert_eq!(
            memory_pressure(&only_full).unwrap().evidence["which"],
            json!(["cache_full_while_waiting"])
        );
        let calm = KvPressure {
            full_while_waiting: 0,
            ..only_full
        };
        assert!(memory_pressure(&calm).is_none());
        assert!(memory_pressure(&KvPressure::default()).is_none());
    }

    #[test]
    fn vram_and_bandwidth_findings_need_their_limits_passed() {
        let v = |above| VramUse {
            max_share: 0.92,
            above,
            intervals: 10,
            first_s: Some(3.0),
            source: "DCGM".to_owned(),
        };
        assert!(
            vram_high(&v(4))
                .unwrap()
                .title
                .contains("up to 92.0% used (above 90% in 4 of 10 intervals, from 3 s)")
        );
        assert!(vram_high(&v(0)).is_none());
        let b = |bandwidth_mean, compute_mean| Bandwidth {
            bandwidth_mean,
            compute_mean,
            intervals: 8,
            source: "DCGM".to_owned(),
        };
        let f = memory_bound_decode(&b(0.88, 0.31)).unwrap();
        assert!(
            f.title
                .starts_with("memory-bound decode: memory bandwidth was 88% busy while compute was 31%"),
            "{}",
            f.title
        );
        assert!(memory_bound_decode(&b(0.6, 0.3)).is_none(), "bandwidth to spare");
        assert!(memory_bound_decode(&b(0.9, 0.8)).is_none(), "compute busy too");
    }

    #[test]
    fn cold_start_is_three_times_slower() {
        let f = cold_start(900.0, 100.0, 0, Some("short")).unwrap();
        assert!(
            f.title
                .starts_with("cold start: the first short requests were 9.0x slower"),
            "{}",
            f.title
        );
        assert!(cold_start(250.0, 100.0, 0, None).is_none());
        // Many times slower, but by too little to be worth a finding: one
        // answer late on a busy host.
        assert!(cold_start(27.0, 9.0, 0, None).is_none());
        assert!(cold_start(109.0, 10.0, 0, None).is_none());
        let f = cold_start(110.0, 10.0, 0, None).unwrap();
        assert_eq!(f.evidence["ratio"], 11.0);
    }
}
