//! Drawing the findings from a run: its summary's figures (client, server
//! and accelerator) and, for the agents' own GPU readings and when errors
//! began, what the run collected. Each finding's rule and wording live in
//! [`crate::findings`].

use std::collections::BTreeMap;

use crate::findings::{self, Finding, LevelLatency, ServerQueue, Utilisation};
use crate::report::summary::{IntervalSummary, ServerInterval, Summary};
use crate::results::Collected;
use crate::server::Canon;

/// Requests were present in an interval: the server says some ran or
/// waited, or, without server data, the client had some in flight.
fn occupied(row: Option<&ServerInterval>, i: &IntervalSummary) -> bool {
    match row.map(|r| (r.running, r.waiting)) {
        Some((Some(r), w)) => r + w.unwrap_or(0.0) > 0.0,
        _ => i.active > 0 || i.ok + i.failed > 0,
    }
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
    let sampled = c.gpu_utilisation(s.load.interval_s);
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
