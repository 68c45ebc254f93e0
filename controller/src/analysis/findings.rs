//! Drawing the findings from a run: its summary's figures (client, server
//! and accelerator) and, for the agents' own GPU readings and when errors
//! began, what the run collected. Each finding's rule and wording live in
//! [`crate::findings`].

use std::collections::BTreeMap;

use crate::findings::{self, Bandwidth, Finding, KvPressure, LevelLatency, ServerQueue, Utilisation, VramUse};
use crate::report::summary::{IntervalSummary, ServerInterval, Summary};
use crate::results::{Collected, GpuFigure};
use crate::server::Canon;

/// Requests were present in an interval: the server says some ran or
/// waited, or, without server data, the client had some in flight.
fn occupied(row: Option<&ServerInterval>, i: &IntervalSummary) -> bool {
    match row.map(|r| (r.running, r.waiting)) {
        Some((Some(r), w)) => r + w.unwrap_or(0.0) > 0.0,
        _ => i.active > 0 || i.ok + i.failed > 0,
    }
}

/// The server's rows by interval, with each interval's start in seconds.
fn server_rows(s: &Summary) -> Vec<(f64, &IntervalSummary, &ServerInterval)> {
    let Some(sv) = &s.server else { return Vec::new() };
    let rows: BTreeMap<u64, &ServerInterval> = sv.intervals.iter().map(|r| (r.interval, r)).collect();
    s.intervals
        .iter()
        .filter_map(|i| rows.get(&i.interval).map(|r| (i.start_s(), i, *r)))
        .collect()
}

/// The prefix cache's hit rate against what the workload's shared
/// prefixes offered: the server's figure, else the answers' cached share.
fn prefix_cache(s: &Summary) -> Option<findings::PrefixHits> {
    let p = s.prefix_cache.as_ref()?;
    let w = p.workload?;
    let (hit_rate, source) = match (p.server_hit_rate, p.cached_share) {
        (Some(rate), _) => (
            rate,
            format!(
                "the server's {}",
                p.server_source.as_deref().unwrap_or("prefix-cache metrics")
            ),
        ),
        (None, Some(share)) => (
            share,
            "the cached tokens the answers stated (usage.prompt_tokens_details.cached_tokens or timings.cache_n)"
                .to_owned(),
        ),
        (None, None) => return None,
    };
    Some(findings::PrefixHits {
        groups: w.prefix.groups,
        prefix_tokens: w.prefix.tokens,
        shared_share: w.shared_share,
        hit_rate,
        source,
    })
}

/// The KV cache and preemptions, when the server reports either.
fn kv_pressure(s: &Summary) -> Option<KvPressure> {
    let mapped = &s.server.as_ref()?.mapped;
    let preemptions = mapped.get(&Canon::Preemptions);
    let kv = mapped.get(&Canon::KvCacheUsage);
    if preemptions.is_none() && kv.is_none() {
        return None;
    }
    let mut k = KvPressure {
        // Recognised but never read twice: nothing was seen to change.
        preemptions: preemptions.map(|f| f.count.unwrap_or(0.0)),
        preemptions_source: preemptions.map(|f| f.source.metric.to_owned()),
        kv_source: kv.map(|f| f.source.metric.to_owned()),
        ..KvPressure::default()
    };
    for (start, _, r) in server_rows(s) {
        if let Some(n) = r.preemptions
            && n > 0.0
        {
            k.preempted_intervals += 1;
            k.first_preemption_s.get_or_insert(start);
            k.peak_preemptions = k.peak_preemptions.max(n);
        }
        if let Some(use_) = r.kv_cache_usage {
            k.intervals += 1;
            k.kv_max = Some(k.kv_max.map_or(use_, |m| m.max(use_)));
            if use_ >= findings::KV_FULL && r.waiting.is_some_and(|w| w > 0.0) {
                k.full_while_waiting += 1;
                k.first_full_s.get_or_insert(start);
            }
        }
    }
    Some(k)
}

/// The share of accelerator memory in use per interval: the server's
/// (DCGM), else the agents' own readings (NVML).
fn vram_use(s: &Summary, c: &Collected) -> Option<VramUse> {
    let server: Vec<(f64, f64)> = server_rows(s)
        .into_iter()
        .filter_map(|(start, _, r)| r.vram_used_share.map(|v| (start, v)))
        .collect();
    let (shares, source) = if server.is_empty() {
        let sampled = c.gpu(GpuFigure::MemoryShare, s.load.interval_s);
        let shares: Vec<(f64, f64)> = sampled
            .into_iter()
            .map(|(k, v)| (k as f64 * s.load.interval_s, v))
            .collect();
        (shares, "the agents' GPU readings (NVML)".to_owned())
    } else {
        let metric = s.server.as_ref()?.mapped.get(&Canon::GpuMemoryShare)?.source.metric;
        (server, format!("server metrics {metric}"))
    };
    if shares.is_empty() {
        return None;
    }
    let above: Vec<f64> = shares
        .iter()
        .filter(|(_, v)| *v > findings::VRAM_SHARE)
        .map(|(t, _)| *t)
        .collect();
    Some(VramUse {
        max_share: shares.iter().map(|(_, v)| *v).fold(0.0, f64::max),
        above: above.len(),
        intervals: shares.len(),
        first_s: above.first().copied(),
        source,
    })
}

/// Memory bandwidth against compute over the intervals with requests
/// running, when the server reports both (DCGM's profiling figures).
fn bandwidth(s: &Summary) -> Option<Bandwidth> {
    let mapped = &s.server.as_ref()?.mapped;
    let (b, c) = (mapped.get(&Canon::MemoryBandwidth)?, mapped.get(&Canon::ComputeActive)?);
    let (mut bandwidth, mut compute, mut n) = (0.0, 0.0, 0);
    for (_, i, r) in server_rows(s) {
        let running = r.running.map_or(i.active > 0, |n| n > 0.0);
        if let (true, Some(bw), Some(sm)) = (running, r.memory_bandwidth, r.compute_active) {
            bandwidth += bw;
            compute += sm;
            n += 1;
        }
    }
    (n > 0).then(|| Bandwidth {
        bandwidth_mean: bandwidth / f64::from(n),
        compute_mean: compute / f64::from(n),
        intervals: n as usize,
        source: format!("server metrics {} and {}", b.source.metric, c.source.metric),
    })
}

/// The accelerator's busy time over the time requests were present, from
/// the agents' GPU readings, else the server's utilisation gauge (DCGM),
/// else its busy-time counter; none without any of them.
pub fn busy_while_present(s: &Summary, c: &Collected) -> Option<Utilisation> {
    let server = s.server.as_ref();
    let figure = |canon: Canon| server.and_then(|sv| sv.mapped.get(&canon));
    let sampled = c.gpu(GpuFigure::Utilisation, s.load.interval_s);
    let source = if !sampled.is_empty() {
        "GPU readings of the agents (NVML)".to_owned()
    } else if let Some(f) = figure(Canon::GpuUtil) {
        format!("server metric {}", f.source.metric)
    } else {
        let f = figure(Canon::BusySeconds)?;
        format!("busy time of the server ({})", f.source.metric)
    };
    let rows: BTreeMap<u64, &ServerInterval> = server
        .map(|sv| sv.intervals.iter().map(|r| (r.interval, r)).collect())
        .unwrap_or_default();
    let mut u = utilisation(s, &rows, &sampled, source)?;
    // A busy-time counter read from the first scrape (before the load) to
    // the last (after it) holds all the busy time, wherever the scrapes
    // fell against the intervals: over all the time requests were present.
    let present: Option<f64> = s.intervals.iter().map(|i| i.present_s).sum();
    if sampled.is_empty()
        && figure(Canon::GpuUtil).is_none()
        && let (Some(busy), Some(present)) = (server.and_then(|sv| sv.busy_s), present)
        && present > 0.0
    {
        u.utilisation = (busy / present).clamp(0.0, 1.0);
        u.present_s = Some(present);
    }
    Some(u)
}

/// The accelerator's busy time over the time requests were present.
///
/// Each interval's utilisation (the agents' GPU readings, else the
/// server's gauge or busy-time counter) times its length is its busy time;
/// the agents' presence maps (ORed over agents, to the millisecond) say for
/// how long requests were in flight in it. Utilisation while present is
/// the busy time over the present time, summed over the intervals that
/// have both: an accelerator that idles while nobody asks is not idle
/// "while requests were in flight". Agents that do not send presence fall
/// back to the intervals in which requests ran or waited.
fn utilisation(
    s: &Summary,
    rows: &BTreeMap<u64, &ServerInterval>,
    sampled: &BTreeMap<u64, f64>,
    source: String,
) -> Option<Utilisation> {
    let (mut busy, mut present, mut n) = (0.0, 0.0, 0);
    let (mut waiting, mut running, mut with_counts) = (0.0, 0.0, 0);
    let exact = s.intervals.iter().all(|i| i.present_s.is_some());
    for i in &s.intervals {
        let row = rows.get(&i.interval).copied();
        let here = match i.present_s {
            Some(p) if exact => p,
            _ if !exact && occupied(row, i) => i.length_s,
            _ => 0.0,
        };
        if here <= 0.0 {
            continue;
        }
        let util = if sampled.is_empty() {
            row.and_then(|r| r.utilisation)
        } else {
            sampled.get(&i.interval).copied()
        };
        let Some(util) = util else { continue };
        busy += util * i.length_s;
        present += here;
        n += 1;
        if let Some(r) = row
            && let (Some(run), Some(w)) = (r.running, r.waiting)
        {
            running += run;
            waiting += w;
            with_counts += 1;
        }
    }
    if n == 0 || present <= 0.0 {
        return None;
    }
    let avg = |x: f64| (with_counts > 0).then(|| x / f64::from(with_counts));
    Some(Utilisation {
        utilisation: (busy / present).clamp(0.0, 1.0),
        intervals: n as usize,
        present_s: exact.then_some(present),
        waiting_mean: avg(waiting),
        running_mean: avg(running),
        source,
    })
}

/// Cold start, comparing like with like: for each prompt class, the TTFT
/// p95 of the first interval with its successes against the median of
/// the same class's p95 over the later intervals of that step (at least
/// three); the class that slowed most speaks. Prompts of different
/// lengths never meet, and a p95 meets only p95s, so mixed prompts or a
/// handful of first answers are not taken for a cold start. Reports
/// without classes are read as one class.
fn cold_start(c: &Collected) -> Option<Finding> {
    let mut classes: BTreeMap<&str, Vec<(u64, usize, u64)>> = BTreeMap::new();
    for r in &c.rows {
        let step = match r.place {
            crate::merge::Place::Warmup(k) | crate::merge::Place::Step(k) => k,
            crate::merge::Place::Drain => continue,
        };
        if r.class_ttft.is_empty() {
            let t = r.get(stampede_proto::Metric::Ttft);
            if t.count > 0 {
                classes.entry("").or_default().push((r.interval, step, t.p95));
            }
        }
        for (class, t) in &r.class_ttft {
            if t.count > 0 {
                classes.entry(class).or_default().push((r.interval, step, t.p95));
            }
        }
    }
    let mut worst: Option<(f64, Finding)> = None;
    for (class, seen) in classes {
        let Some(&(interval, step, first)) = seen.first() else {
            continue;
        };
        let mut later: Vec<u64> = seen[1..].iter().filter(|x| x.1 == step).map(|x| x.2).collect();
        if later.len() < 3 {
            continue;
        }
        later.sort_unstable();
        let steady = later[later.len() / 2] as f64 / 1e3;
        let first = first as f64 / 1e3;
        let Some(f) = findings::cold_start(first, steady, interval, (!class.is_empty()).then_some(class)) else {
            continue;
        };
        let ratio = first / steady;
        if worst.as_ref().is_none_or(|(r, _)| ratio > *r) {
            worst = Some((ratio, f));
        }
    }
    worst.map(|(_, f)| f)
}

/// Every finding the run supports.
pub fn draw(s: &Summary, c: &Collected) -> Vec<Finding> {
    let mut out = Vec::new();
    let server = s.server.as_ref();
    let figure = |canon: Canon| server.and_then(|sv| sv.mapped.get(&canon));

    // Queueing: from the server's queue time, else inferred from steps.
    match figure(Canon::QueueTime) {
        Some(q) if s.metrics.ttft.count > 0 => {
            let sq = ServerQueue {
                queue_mean_ms: q.mean.unwrap_or(0.0),
                observed: q.count.unwrap_or(0.0),
                ttft_mean_ms: s.metrics.ttft.mean,
                server_ttft_mean_ms: figure(Canon::Ttft).and_then(|f| f.mean),
                waiting_mean: figure(Canon::Waiting).and_then(|f| f.mean),
                source: q.source.metric.to_owned(),
            };
            out.extend(findings::queueing(&sq));
        }
        _ => {
            let levels: Vec<LevelLatency> = s
                .steps
                .iter()
                .filter(|st| st.metrics.ttft.count > 0 && st.metrics.tpot.count > 0)
                .map(|st| LevelLatency {
                    level: st.level,
                    ttft_p50_ms: st.metrics.ttft.p50,
                    tpot_p50_ms: st.metrics.tpot.p50,
                })
                .collect();
            if levels.len() >= 2 {
                let label = |x: f64| {
                    s.steps
                        .iter()
                        .find(|st| st.level == x)
                        .map_or_else(|| x.to_string(), |st| st.label.clone())
                };
                out.extend(findings::inferred_queueing(&levels, label));
            }
        }
    }

    // Capacity at SLO.
    if let (Some(c), Some(slo)) = (&s.capacity, &s.slo) {
        out.push(findings::capacity(c, slo));
    }

    // Saturation: the knee.
    if let Some(k) = &s.knee
        && let (Some(step), Some(label)) = (k.step, &k.label)
    {
        out.push(findings::saturation(
            label,
            k.max_requests_per_s,
            k.baseline_ttft_p95_ms,
            s.steps[step].metrics.ttft.p95,
        ));
    }

    // GPU idle while requests were present.
    out.extend(findings::gpu_idle(&s.busy_while_present));

    // Memory: the KV cache and preemptions, VRAM, memory bandwidth.
    if let Some(k) = kv_pressure(s) {
        out.extend(findings::memory_pressure(&k));
    }
    if let Some(v) = vram_use(s, c) {
        out.extend(findings::vram_high(&v));
    }
    if let Some(b) = bandwidth(s) {
        out.extend(findings::memory_bound_decode(&b));
    }

    // Shared prefixes the prefix cache did not serve.
    out.extend(prefix_cache(s).as_ref().and_then(findings::prefix_cache_low));

    // Cold start: like with like.
    out.extend(cold_start(c));

    // Client-bound.
    out.extend(findings::client_bound(&s.client));

    // Errors: top classes and when each began.
    let classes: Vec<findings::ErrorClass> = s
        .errors
        .iter()
        .map(|(class, e)| findings::ErrorClass {
            class: class.clone(),
            count: e.count,
            first_s: c
                .rows
                .iter()
                .find(|r| r.counters.errors.iter().any(|(k, n)| k.to_string() == *class && *n > 0))
                .map(|r| r.interval as f64 * s.load.interval_s),
        })
        .collect();
    out.extend(findings::errors(&classes, s.requests.ok + s.requests.failed));
    out
}
