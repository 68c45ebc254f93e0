//! The charts on the time axis, from the summary's intervals, the
//! server's intervals and the report's own per-interval figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::data::{IntervalData, ReportData};
use super::timeline::{At, Chart, Series, Style, Timeline};
use super::{color, esc};
use crate::report::summary::{IntervalSummary, ServerInterval, Summary};
use crate::server::Canon;

/// Requests were present in an interval: the server says some ran or
/// waited, or, without server data, the client had some in flight.
fn occupied(row: Option<&ServerInterval>, i: &IntervalSummary) -> bool {
    match row.map(|r| (r.running, r.waiting)) {
        Some((Some(r), w)) => r + w.unwrap_or(0.0) > 0.0,
        _ => i.active > 0 || i.ok + i.failed > 0,
    }
}

/// Every chart on the time axis.
pub(super) fn charts(out: &mut String, s: &Summary, d: &ReportData, t: &Timeline) {
    let iv = &s.intervals;
    let col = |f: &dyn Fn(&IntervalSummary) -> Option<f64>| iv.iter().map(f).collect::<Vec<_>>();
    let extra: BTreeMap<u64, &IntervalData> = d.intervals.iter().map(|x| (x.interval, x)).collect();
    let ext = |f: &dyn Fn(&IntervalData) -> Option<f64>| {
        iv.iter()
            .map(|i| extra.get(&i.interval).and_then(|x| f(x)))
            .collect::<Vec<_>>()
    };
    out.push_str(
        r#"<section id="timeline"><h2>Over time</h2><p class="caption">One point per interval, at seconds since the start. <span class="key warm"></span> warm-up (left out of every statistic) · <span class="key drain"></span> drain (after the last step) · dashed lines: step boundaries. Hover over a chart to read every chart at that moment.</p>"#,
    );

    let mut load = if s.load.mode == "rate" {
        let planned = col(&|i| Some(i.step.map_or(0.0, |k| s.steps.get(k).map_or(0.0, |st| st.level))));
        Chart::lines(
            "load",
            "Offered load",
            "arrivals/s · requests",
            vec![
                Series::new("planned arrivals/s", color::GREY, planned).at(At::Span),
                Series::new("in flight", color::P50, col(&|i| Some(f64::from(i.active)))).at(At::End),
            ],
        )
        .caption("The step's planned arrival rate, and the requests in flight at each interval's end.")
    } else {
        Chart::lines(
            "load",
            "Active users",
            "users",
            vec![Series::new("users", color::P50, col(&|i| Some(f64::from(i.active)))).at(At::End)],
        )
        .caption("Users running when each interval was cut.")
    };
    load.step_labels = true;
    t.chart(out, &load);
    t.chart(
        out,
        &Chart::lines(
            "requests",
            "Requests per second",
            "successful req/s",
            vec![Series::new("requests/s", color::P50, col(&|i| Some(i.requests_per_s)))],
        ),
    );
    t.chart(
        out,
        &Chart::lines(
            "tokens",
            "Output tokens per second",
            "tokens/s",
            vec![Series::new(
                "output tokens/s",
                color::GREEN,
                col(&|i| Some(i.output_tokens_per_s)),
            )],
        )
        .caption(format!(
            "Output tokens of successful requests, counted from {}.",
            s.tokens.source
        )),
    );
    t.chart(
        out,
        &Chart::lines(
            "ttft",
            "Time to first token",
            "ms",
            vec![
                Series::new("p50", color::P50, col(&|i| i.ttft_p50_ms)),
                Series::new("p95", color::P95, col(&|i| i.ttft_p95_ms)),
                Series::new("p99", color::P99, ext(&|x| x.ttft_p99_ms)).dashed(),
            ],
        )
        .caption("Percentiles of the requests that completed in each interval; an interval without one leaves a gap."),
    );
    t.chart(
        out,
        &Chart::lines(
            "itl",
            "Inter-token latency",
            "ms",
            vec![
                Series::new("p50", color::P50, col(&|i| i.itl_p50_ms)),
                Series::new("p99", color::P99, ext(&|x| x.itl_p99_ms)).dashed(),
            ],
        ),
    );
    t.chart(
        out,
        &Chart::lines(
            "e2e",
            "End-to-end latency",
            "ms",
            vec![Series::new("p95", color::PURPLE, col(&|i| i.e2e_p95_ms))],
        ),
    );
    errors_chart(out, s, d, t, &extra);
    server_charts(out, s, d, t);
    out.push_str("</section>");
}

fn errors_chart(out: &mut String, s: &Summary, d: &ReportData, t: &Timeline, extra: &BTreeMap<u64, &IntervalData>) {
    let iv = &s.intervals;
    let series: Vec<Series> = if d.error_classes.is_empty() {
        vec![Series::new(
            "failed",
            color::P99,
            iv.iter().map(|i| Some(i.failed as f64)).collect(),
        )]
    } else {
        d.error_classes
            .iter()
            .enumerate()
            .map(|(k, class)| {
                let values = iv
                    .iter()
                    .map(|i| {
                        Some(
                            extra
                                .get(&i.interval)
                                .map_or(0, |x| x.errors.get(k).copied().unwrap_or(0))
                                as f64,
                        )
                    })
                    .collect();
                Series::new(class.clone(), color::ERRORS[k % color::ERRORS.len()], values)
            })
            .collect()
    };
    let caption = if d.error_classes.is_empty() {
        "No request failed.".to_owned()
    } else {
        "Failed requests in each interval, stacked by error class (see the error table above for the first message of each)."
            .to_owned()
    };
    let chart = Chart {
        style: Style::Stacked,
        ..Chart::lines("errors", "Failed requests by class", "per interval", series).caption(caption)
    };
    t.chart(out, &chart);
}

/// The server's rows by interval.
type Rows<'a> = BTreeMap<u64, &'a ServerInterval>;

/// One server figure per interval of the run; `None` where the server did
/// not say.
fn column(s: &Summary, rows: &Rows<'_>, f: &dyn Fn(&ServerInterval) -> Option<f64>) -> Vec<Option<f64>> {
    s.intervals
        .iter()
        .map(|i| rows.get(&i.interval).and_then(|r| f(r)))
        .collect()
}

/// The server's name for a figure, or nothing.
fn source(s: &Summary, canon: Canon) -> &'static str {
    s.server
        .as_ref()
        .and_then(|sv| sv.mapped.get(&canon))
        .map_or("", |f| f.source.metric)
}

/// The server's memory: KV-cache use, accelerator memory and its
/// bandwidth as shares, and preemptions per interval.
fn memory_charts(out: &mut String, t: &Timeline, s: &Summary, rows: &Rows<'_>) {
    let col = |f: &dyn Fn(&ServerInterval) -> Option<f64>| column(s, rows, f);
    let source = |canon: Canon| source(s, canon);
    let mut series = Vec::new();
    let mut sources = Vec::new();
    for (name, color, canon, values) in [
        (
            "KV cache",
            color::PURPLE,
            Canon::KvCacheUsage,
            col(&|r| r.kv_cache_usage),
        ),
        (
            "VRAM used",
            color::P99,
            Canon::GpuMemoryShare,
            col(&|r| r.vram_used_share),
        ),
        (
            "memory bandwidth",
            color::P50,
            Canon::MemoryBandwidth,
            col(&|r| r.memory_bandwidth),
        ),
        (
            "compute",
            color::GREEN,
            Canon::ComputeActive,
            col(&|r| r.compute_active),
        ),
    ] {
        if values.iter().any(Option::is_some) {
            series.push(Series::new(name, color, values));
            sources.push(format!("{name}: {}", source(canon)));
        }
    }
    if !series.is_empty() {
        let chart = Chart {
            share: true,
            ..Chart::lines("memory", "Server: memory", "% (mean)", series).caption(format!(
                "Averaged over each interval ({}). A KV cache near full makes requests wait or be preempted; VRAM above 90% leaves no headroom; memory bandwidth near its limit while compute is not means decode is memory-bound.",
                sources.join("; ")
            ))
        };
        t.chart(out, &chart);
    }
    let preempted = col(&|r| r.preemptions);
    if preempted.iter().any(|v| v.is_some_and(|n| n > 0.0)) {
        t.chart(
            out,
            &Chart::lines(
                "preemptions",
                "Server: preemptions",
                "per interval",
                vec![Series::new("preempted", color::P99, preempted)],
            )
            .caption(format!(
                "Sequences the server took out of the batch to free KV-cache room ({}); each is recomputed later, so its tokens stall.",
                source(Canon::Preemptions)
            )),
        );
    }
}

fn server_charts(out: &mut String, s: &Summary, d: &ReportData, t: &Timeline) {
    let iv = &s.intervals;
    let rows: Rows<'_> = s
        .server
        .as_ref()
        .map(|sv| sv.intervals.iter().map(|r| (r.interval, r)).collect())
        .unwrap_or_default();
    let col = |f: &dyn Fn(&ServerInterval) -> Option<f64>| column(s, &rows, f);
    let any = |v: &[Option<f64>]| v.iter().any(Option::is_some);
    let source = |canon: Canon| source(s, canon);
    match &s.server {
        None => out.push_str(
            r#"<p class="empty">The server's own metrics were not scraped, so its queue, batch and KV cache are not shown.</p>"#,
        ),
        Some(sv) if sv.intervals.is_empty() || sv.scrapes == 0 => {
            let _ = write!(
                out,
                r#"<p class="empty">No usable scrape of the server's metrics at {}{}.</p>"#,
                esc(&sv.url),
                sv.note.as_deref().map(|n| format!(": {}", esc(n))).unwrap_or_default()
            );
        }
        Some(_) => {
            let (running, waiting) = (col(&|r| r.running), col(&|r| r.waiting));
            if any(&running) || any(&waiting) {
                t.chart(
                    out,
                    &Chart::lines(
                        "server-requests",
                        "Server: requests running and waiting",
                        "requests (mean)",
                        vec![
                            Series::new("running", color::P50, running),
                            Series::new("waiting", color::P99, waiting),
                        ],
                    )
                    .caption(format!(
                        "The server's own gauges ({}, {}), averaged over each interval.",
                        source(Canon::Running),
                        source(Canon::Waiting)
                    )),
                );
            }
            let queue = col(&|r| r.queue_time_ms);
            if any(&queue) {
                t.chart(
                    out,
                    &Chart::lines(
                        "server-queue",
                        "Server: queue time",
                        "ms (mean)",
                        vec![Series::new("queue time", color::SERVER_QUEUE, queue)],
                    )
                    .caption(format!(
                        "Mean time requests admitted in each interval waited in the server's queue ({}).",
                        source(Canon::QueueTime)
                    )),
                );
            }
            memory_charts(out, t, s, &rows);
        }
    }
    // Utilisation: the agents' GPU readings and the server's own figure,
    // with the intervals where requests were present shaded, since idle
    // time only matters while there is work.
    let mut series = Vec::new();
    let mut sources = Vec::new();
    if !d.gpu.is_empty() {
        series.push(Series::new(
            "GPU (agents)",
            color::GREEN,
            iv.iter().map(|i| d.gpu.get(&i.interval).copied()).collect(),
        ));
        sources.push("the agents' NVML readings".to_owned());
    }
    let util = col(&|r| r.utilisation);
    if any(&util) {
        let what = if !source(Canon::GpuUtil).is_empty() {
            format!("server metric {}", source(Canon::GpuUtil))
        } else {
            format!("the server's busy time ({})", source(Canon::BusySeconds))
        };
        series.push(Series::new("server", color::P50, util));
        sources.push(what);
    }
    if series.is_empty() {
        return;
    }
    let shade = iv.iter().map(|i| occupied(rows.get(&i.interval).copied(), i)).collect();
    let chart = Chart {
        share: true,
        shade: Some(shade),
        ..Chart::lines("utilisation", "Accelerator utilisation", "% busy", series).caption(format!(
            "From {}. Shaded: intervals with requests running or waiting, where idle time is lost capacity.",
            sources.join(" and ")
        ))
    };
    t.chart(out, &chart);
}
