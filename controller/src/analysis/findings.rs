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
        .filter_map(|i| rows.get(&i.interval).map(|r| (i.end_s - s.load.interval_s, i, *r)))
        .collect()
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
    let sampled = c.gpu(GpuFigure::Utilisation, s.load.interval_s);
    let source = if !sampled.is_empty() {
        Some("GPU readings of the agents (NVML)".to_owned())
    } else if let Some(f) = figure(Canon::GpuUtil) {
        Some(format!("server metric {}", f.source.metric))
    } else {
        figure(Canon::BusySeconds).map(|f| format!("busy time of the server ({})", f.source.metric))
    };
    if let Some(source) = source {
        let rows: BTreeMap<u64, &ServerInterval> = server
            .map(|sv| sv.intervals.iter().map(|r| (r.interval, r)).collect())
            .unwrap_or_default();
        let (mut sum, mut n, mut waiting, mut running, mut with_counts) = (0.0, 0, 0.0, 0.0, 0);
        for i in &s.intervals {
            let row = rows.get(&i.interval).copied();
            if !occupied(row, i) {
                continue;
            }
            let util = if sampled.is_empty() {
                row.and_then(|r| r.utilisation)
            } else {
                sampled.get(&i.interval).copied()
            };
            let Some(util) = util else { continue };
            sum += util;
            n += 1;
            if let Some(r) = row
                && let (Some(run), Some(w)) = (r.running, r.waiting)
            {
                running += run;
                waiting += w;
                with_counts += 1;
            }
        }
        if n > 0 {
            let avg = |x: f64| (with_counts > 0).then(|| x / f64::from(with_counts));
            out.extend(findings::gpu_idle(&Utilisation {
                mean: sum / f64::from(n),
                intervals: n as usize,
                waiting_mean: avg(waiting),
                running_mean: avg(running),
                source,
            }));
        }
    }

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

    // Cold start: the slowest of the first answers (the first interval
    // with successes, its p95) against the typical answer of the rest of
    // its step.
    if let Some(first) = s.intervals.iter().find(|i| i.ok > 0 && i.ttft_p95_ms.is_some()) {
        let mut later: Vec<f64> = s
            .intervals
            .iter()
            .filter(|i| i.interval > first.interval && i.step == first.step && i.step.is_some())
            .filter_map(|i| i.ttft_p50_ms)
            .collect();
        if later.len() >= 3 {
            later.sort_by(f64::total_cmp);
            let steady = later[later.len() / 2];
            out.extend(findings::cold_start(
                first.ttft_p95_ms.unwrap_or(0.0),
                steady,
                first.interval,
            ));
        }
    }

    // Client-bound.
    out.extend(findings::client_bound(
        &s.client.reasons,
        s.client.schedule_lag_p99_ms,
        s.client.cpu_max,
    ));

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
