//! The charts off the time axis: where TTFT goes over the whole run, the
//! percentile distributions, and latency against throughput per step.

use std::fmt::Write as _;

use stampede_proto::Metric;

use super::data::{Distribution, ReportData};
use super::svg::{self, Frame, Scale, p, sig};
use super::timeline::{Chart, Series, Style, Timeline};
use super::{color, esc, pct};
use crate::report::summary::{StepSummary, Summary};
use crate::server::Canon;

/// The parts TTFT is split into, per interval and over the run, and the
/// caption naming their sources.
struct Parts {
    names: Vec<(String, &'static str)>,
    /// Per interval, per part, ms; all `None` where the interval had no
    /// TTFT.
    intervals: Vec<Vec<Option<f64>>>,
    /// Over the measured run, per part, ms.
    overall: Vec<f64>,
    caption: String,
}

fn server_figure(s: &Summary, canon: Canon) -> Option<(f64, &'static str)> {
    let f = s.server.as_ref()?.mapped.get(&canon)?;
    Some((f.mean?, f.source.metric))
}

/// Splits the client's TTFT (from the intended start) into client queue,
/// server queue and prefill, from the best source each part has.
fn parts(s: &Summary, d: &ReportData) -> Parts {
    let server_rows: std::collections::BTreeMap<u64, &crate::report::summary::ServerInterval> = s
        .server
        .as_ref()
        .map(|sv| sv.intervals.iter().map(|r| (r.interval, r)).collect())
        .unwrap_or_default();
    let queue = server_figure(s, Canon::QueueTime);
    let server_prefill = server_figure(s, Canon::Prefill);
    let reported_prefill = d.ttft_parts.server_prefill_mean_ms;
    let mut names = vec![("client queue".to_owned(), color::QUEUE)];
    let mut caption = vec![
        "Mean time from each request's intended start to its first token, split into parts. \
         Client queue: intended start to t0, measured by the agents (waiting for a user slot, a \
         concurrency slot or a connection)."
            .to_owned(),
    ];
    if let Some((_, metric)) = queue {
        names.push(("server queue".to_owned(), color::SERVER_QUEUE));
        caption.push(format!(
            "Server queue: the server's own metric {metric}, mean over the requests it admitted in the interval."
        ));
    } else {
        caption.push(
            "Server queue: not known (no server queue metric was scraped), so it is part of the rest.".to_owned(),
        );
    }
    // Prefill: the server's own histogram, else what it reported per
    // request, else whatever TTFT has left once queueing is taken out.
    let prefill_source = if let Some((_, metric)) = server_prefill {
        Some(format!("server metric {metric}"))
    } else {
        reported_prefill.map(|_| "the prompt processing time the server reported per request".to_owned())
    };
    match &prefill_source {
        Some(source) => {
            names.push(("prefill".to_owned(), color::PREFILL));
            names.push(("rest of TTFT".to_owned(), color::REST));
            caption.push(format!(
                "Prefill: {source}. Rest of TTFT: client TTFT less server queue and prefill (network, first decode step)."
            ));
        }
        None => {
            names.push(("prefill (rest of TTFT)".to_owned(), color::PREFILL));
            caption.push(if queue.is_some() {
                "Prefill: the rest of the client's TTFT once the server queue is taken out (the server reports no prefill time).".to_owned()
            } else {
                "Prefill: the client's whole TTFT (t0 to first token), as no server figure splits it.".to_owned()
            });
        }
    }
    let split = |ttft: f64, cq: f64, sq: Option<f64>, pf: Option<f64>| -> Vec<f64> {
        let mut v = vec![cq.max(0.0)];
        let sq = sq.unwrap_or(0.0).clamp(0.0, ttft);
        if queue.is_some() {
            v.push(sq);
        }
        match (&prefill_source, pf) {
            (Some(_), pf) => {
                let pf = pf.unwrap_or(0.0).clamp(0.0, ttft - sq);
                v.push(pf);
                v.push((ttft - sq - pf).max(0.0));
            }
            (None, _) => v.push((ttft - sq).max(0.0)),
        }
        v
    };
    let intervals = d
        .intervals
        .iter()
        .map(|i| {
            let row = server_rows.get(&i.interval);
            match i.ttft_mean_ms {
                Some(ttft) => {
                    let pf = if server_prefill.is_some() {
                        row.and_then(|r| r.prefill_ms)
                    } else {
                        i.server_prefill_mean_ms
                    };
                    let sq = row.and_then(|r| r.queue_time_ms);
                    split(ttft, i.client_queue_mean_ms.unwrap_or(0.0), sq, pf)
                        .into_iter()
                        .map(Some)
                        .collect()
                }
                None => vec![None; names.len()],
            }
        })
        .collect();
    let t = &d.ttft_parts;
    let overall = match t.ttft_mean_ms {
        Some(ttft) => split(
            ttft,
            t.client_queue_mean_ms.unwrap_or(0.0),
            queue.map(|q| q.0),
            server_prefill.map(|f| f.0).or(reported_prefill),
        ),
        None => Vec::new(),
    };
    Parts {
        names,
        intervals,
        overall,
        caption: caption.join(" "),
    }
}

/// "Where TTFT goes": one stacked bar over the measured run, then one per
/// interval on the time axis.
pub(super) fn where_ttft_goes(out: &mut String, s: &Summary, d: &ReportData, t: &Timeline) {
    let parts = parts(s, d);
    out.push_str(r#"<section id="ttft-parts"><h2>Where TTFT goes</h2>"#);
    let _ = write!(out, r#"<p class="caption">{}</p>"#, esc(&parts.caption));
    let total: f64 = parts.overall.iter().sum();
    if total > 0.0 {
        let f = Frame {
            width: 1320.0,
            height: 64.0,
            left: 150.0,
            right: 16.0,
            top: 8.0,
            bottom: 22.0,
        };
        let x = Scale::linear(0.0, total, f.x0(), f.x1());
        f.open(
            out,
            "where TTFT goes, over the measured run",
            r#"class="parts" data-kind="parts""#,
        );
        let _ = write!(
            out,
            r#"<text class="rowlabel" x="{}" y="{}">measured run</text>"#,
            p(f.x0() - 8.0),
            p(f.y1() + 20.0)
        );
        let mut at = 0.0;
        for ((name, c), v) in parts.names.iter().zip(&parts.overall) {
            let (xa, xb) = (x.at(at), x.at(at + v));
            let _ = write!(
                out,
                r#"<rect x="{}" y="{}" width="{}" height="30" fill="{c}" data-series="{}" data-points="1" data-value="{}"><title>{}: {} ms</title></rect>"#,
                p(xa),
                p(f.y1()),
                p(xb - xa),
                esc(name),
                sig(*v),
                esc(name),
                sig(*v)
            );
            if xb - xa > 70.0 {
                let _ = write!(
                    out,
                    r#"<text class="inbar" x="{}" y="{}">{} ms · {}</text>"#,
                    p((xa + xb) / 2.0),
                    p(f.y1() + 20.0),
                    sig(*v),
                    pct(v / total)
                );
            }
            at += v;
        }
        let (ticks, _) = svg::ticks(total, 8);
        let ticks: Vec<(f64, String)> = ticks
            .into_iter()
            .filter(|t| *t <= total)
            .map(|t| (t, format!("{} ms", sig(t))))
            .collect();
        let f2 = Frame { bottom: 26.0, ..f };
        f2.x_axis(out, &x, &ticks);
        out.push_str("</svg>");
        out.push_str(r#"<ul class="legend wide">"#);
        for ((name, c), v) in parts.names.iter().zip(&parts.overall) {
            let _ = write!(
                out,
                r#"<li><i class="block" style="background:{c}"></i>{} <b>{} ms ({})</b></li>"#,
                esc(name),
                sig(*v),
                pct(v / total)
            );
        }
        out.push_str("</ul>");
    } else {
        out.push_str(r#"<p class="empty">No request reached its first token in the measured time.</p>"#);
    }
    let series = parts
        .names
        .iter()
        .enumerate()
        .map(|(k, (name, c))| Series::new(name.clone(), c, parts.intervals.iter().map(|v| v[k]).collect()))
        .collect();
    let chart = Chart {
        style: Style::Stacked,
        ..Chart::lines("ttft-parts", "Where TTFT goes, per interval", "ms (mean)", series)
    };
    t.chart(out, &chart);
    out.push_str("</section>");
}

/// The labelled quantiles of the x axis, as 1/(1 − q).
const QUANTILE_TICKS: [(f64, &str); 7] = [
    (2.0, "50%"),
    (10.0, "90%"),
    (100.0, "99%"),
    (1e3, "99.9%"),
    (1e4, "99.99%"),
    (1e5, "99.999%"),
    (1e6, "99.9999%"),
];

/// One run's curve on a percentile chart.
pub(super) struct Curve<'a> {
    /// Its name in the chart (`data-series`).
    pub(super) name: String,
    /// Its colour.
    pub(super) color: &'static str,
    /// Its points.
    pub(super) dist: &'a Distribution,
}

/// A metric's title and colour.
pub(super) fn metric_style(metric: Metric) -> (&'static str, &'static str) {
    match metric {
        Metric::Ttft => ("TTFT", color::P95),
        Metric::Itl => ("ITL", color::P50),
        Metric::Tpot => ("TPOT", color::GREEN),
        _ => ("E2E", color::PURPLE),
    }
}

/// A metric's percentile distribution, one curve per run.
pub(super) fn percentile_chart(out: &mut String, metric: Metric, unit: &str, curves: &[Curve<'_>]) {
    let (title, _) = metric_style(metric);
    let name = metric.name();
    let _ = write!(
        out,
        r#"<figure class="chart dist" id="dist-{name}"><figcaption><h3>{title}</h3><span class="unit">{}</span></figcaption>"#,
        esc(unit)
    );
    let drawn: Vec<&Curve<'_>> = curves.iter().filter(|c| !c.dist.points.is_empty()).collect();
    if drawn.is_empty() {
        out.push_str(r#"<p class="empty">No samples.</p></figure>"#);
        return;
    }
    let f = Frame {
        width: 650.0,
        height: 250.0,
        left: 64.0,
        right: 24.0,
        top: 14.0,
        bottom: 40.0,
    };
    // The x axis reaches the decade past the last finite quantile: as far
    // as the samples say anything, and at least to 99%.
    let reach = drawn
        .iter()
        .flat_map(|c| c.dist.points.iter())
        .filter(|q| q.quantile < 1.0)
        .map(|q| 1.0 / (1.0 - q.quantile))
        .fold(1.0, f64::max);
    let x_max = 10f64.powf(reach.log10().ceil()).clamp(100.0, 1e6);
    let x = Scale::log(1.0, x_max, f.x0(), f.x1());
    let max = drawn
        .iter()
        .flat_map(|c| c.dist.points.iter())
        .map(|q| q.value_ms)
        .fold(0.0, f64::max);
    let (ticks, top) = svg::ticks(max, 4);
    let y = Scale::linear(0.0, top, f.y0(), f.y1());
    f.open(
        out,
        &format!("{title} percentile distribution"),
        &format!(r#"class="percentiles" data-kind="percentiles" data-chart="{name}""#),
    );
    f.y_axis(out, &y, &ticks, svg::tick);
    let xt: Vec<(f64, String)> = QUANTILE_TICKS
        .iter()
        .filter(|(v, _)| *v <= x_max)
        .map(|(v, l)| (*v, (*l).to_owned()))
        .collect();
    f.x_axis(out, &x, &xt);
    let _ = write!(
        out,
        r#"<text class="axistitle" x="{}" y="{}">percentile (log scale of 1/(1 − p))</text>"#,
        p((f.x0() + f.x1()) / 2.0),
        p(f.height - 4.0)
    );
    let at = |q: f64| if q >= 1.0 { x_max } else { (1.0 / (1.0 - q)).min(x_max) };
    for curve in &drawn {
        let (dist, c) = (curve.dist, curve.color);
        let d = svg::line(
            dist.points
                .iter()
                .map(|q| (x.at(at(q.quantile)), Some(y.at(q.value_ms)))),
        );
        let values: Vec<String> = dist
            .points
            .iter()
            .map(|q| format!("{}:{}", sig(q.quantile * 100.0), sig(q.value_ms)))
            .collect();
        let _ = write!(
            out,
            r#"<path class="series" d="{d}" stroke="{c}" data-series="{}" data-points="{}" data-values="{}"/>"#,
            esc(&curve.name),
            dist.points.len(),
            values.join(" ")
        );
        if let Some(last) = dist.points.last() {
            let (mx, my) = (x.at(x_max), y.at(last.value_ms));
            let _ = write!(
                out,
                r#"<circle class="max" cx="{}" cy="{}" r="3" fill="{c}"/><text class="note" x="{}" y="{}">max {} ms</text>"#,
                p(mx),
                p(my),
                p(mx - 6.0),
                p(my - 6.0),
                sig(last.value_ms)
            );
        }
    }
    out.push_str("</svg></figure>");
}

/// The percentile distributions of TTFT, ITL, TPOT and E2E.
pub(super) fn distributions(out: &mut String, d: &ReportData) {
    out.push_str(
        r#"<section id="distributions"><h2>Latency distributions</h2><p class="caption">Every successful request of the measured time (warm-ups left out), from the exact merged HDR histograms: the value at each percentile, with the tail stretched out to the right as HdrHistogram's plotter draws it. The last point is the largest sample.</p><div class="grid2">"#,
    );
    for dist in &d.distributions {
        let curve = Curve {
            name: dist.metric.name().to_owned(),
            color: metric_style(dist.metric).1,
            dist,
        };
        let unit = format!("ms · {} samples", crate::report::grouped(dist.count));
        percentile_chart(out, dist.metric, &unit, &[curve]);
    }
    out.push_str("</div></section>");
}

/// One point of the load-against-latency charts.
pub(super) struct StepPoint {
    pub(super) label: String,
    pub(super) x: f64,
    pub(super) y: f64,
}

/// One run's steps on a load-against-latency chart.
pub(super) struct Track {
    /// Its name in the chart (`data-series`).
    pub(super) name: String,
    /// Its colour.
    pub(super) color: &'static str,
    /// One point per step.
    pub(super) points: Vec<StepPoint>,
    /// The step at the knee, ringed.
    pub(super) knee: Option<usize>,
}

/// Latency against throughput, a line of points per run.
pub(super) fn scatter(out: &mut String, id: &str, title: &str, x_label: &str, tracks: &[Track]) {
    let f = Frame {
        width: 320.0,
        height: 230.0,
        left: 52.0,
        right: 18.0,
        top: 16.0,
        bottom: 38.0,
    };
    let _ = write!(
        out,
        r#"<figure class="chart xy"><figcaption><h3>{}</h3></figcaption>"#,
        esc(title)
    );
    let all = || tracks.iter().flat_map(|t| t.points.iter());
    let (xt, x_top) = svg::ticks(all().map(|q| q.x).fold(0.0, f64::max), 3);
    let (yt, y_top) = svg::ticks(all().map(|q| q.y).fold(0.0, f64::max), 4);
    let x = Scale::linear(0.0, x_top, f.x0(), f.x1());
    let y = Scale::linear(0.0, y_top, f.y0(), f.y1());
    f.open(
        out,
        title,
        &format!(r#"class="xy" data-kind="steps" data-chart="{id}""#),
    );
    f.y_axis(out, &y, &yt, svg::tick);
    let xt: Vec<(f64, String)> = xt.into_iter().map(|t| (t, svg::tick(t))).collect();
    f.x_axis(out, &x, &xt);
    let _ = write!(
        out,
        r#"<text class="axistitle" x="{}" y="{}">{}</text>"#,
        p((f.x0() + f.x1()) / 2.0),
        p(f.height - 4.0),
        esc(x_label)
    );
    // Labels go above their points, else below, left or right, wherever
    // they do not cover one already placed (steps past the knee often
    // share a throughput).
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    for track in tracks {
        let d = svg::line(track.points.iter().map(|q| (x.at(q.x), Some(y.at(q.y)))));
        let _ = write!(
            out,
            r#"<path class="series" d="{d}" stroke="{}" data-series="{}" data-points="{}"/>"#,
            track.color,
            esc(&track.name),
            track.points.len()
        );
        for (k, q) in track.points.iter().enumerate() {
            let (cx, cy) = (x.at(q.x), y.at(q.y));
            let is_knee = track.knee == Some(k);
            let _ = write!(
                out,
                r#"<circle cx="{}" cy="{}" r="3.5" fill="{}"><title>{}: {} at {}</title></circle>"#,
                p(cx),
                p(cy),
                track.color,
                esc(&q.label),
                sig(q.y),
                sig(q.x)
            );
            if is_knee {
                let _ = write!(
                    out,
                    r#"<circle class="knee" cx="{}" cy="{}" r="9" data-knee="{}"/>"#,
                    p(cx),
                    p(cy),
                    esc(&q.label)
                );
            }
            let text = if is_knee {
                format!("{} · knee", q.label)
            } else {
                q.label.clone()
            };
            // About 5.6 units a character at the labels' 10-unit size.
            let half = text.chars().count() as f64 * 2.8;
            let gap = if is_knee { 12.0 } else { 6.0 };
            let candidates = [
                (cx, cy - gap - 2.0),
                (cx, cy + gap + 10.0),
                (cx - half - gap - 2.0, cy + 3.5),
                (cx + half + gap + 2.0, cy + 3.5),
            ];
            let free = |(lx, ly): (f64, f64)| {
                placed
                    .iter()
                    .all(|&(px, py, ph)| (lx - px).abs() > half + ph + 2.0 || (ly - py).abs() > 11.0)
            };
            let Some((lx, ly)) = candidates.into_iter().find(|c| free(*c)).or_else(|| {
                // A second run's labels that find no room are left out: its
                // points carry their titles.
                (tracks.len() == 1).then_some(candidates[0])
            }) else {
                continue;
            };
            let lx = lx.clamp(half + 2.0, f.width - half - 2.0);
            placed.push((lx, ly, half));
            let _ = write!(
                out,
                r#"<text class="ptlabel{}" x="{}" y="{}">{}</text>"#,
                if is_knee { " kneept" } else { "" },
                p(lx),
                p(ly),
                esc(&text)
            );
        }
    }
    out.push_str("</svg></figure>");
}

/// Where a step falls on one of the charts: (throughput, latency).
pub(super) type Pick = fn(&StepSummary) -> (f64, f64);

/// The four load-against-latency charts: id, title, x axis, and where a
/// step falls.
pub(super) const LOAD_CHARTS: [(&str, &str, &str, Pick); 4] = [
    ("ttft-rps", "TTFT p95 (ms) against requests/s", "requests/s", |st| {
        (st.throughput.requests_per_s, st.metrics.ttft.p95)
    }),
    (
        "ttft-tps",
        "TTFT p95 (ms) against output tokens/s",
        "output tokens/s",
        |st| (st.throughput.output_tokens_per_s, st.metrics.ttft.p95),
    ),
    ("tpot-rps", "TPOT p95 (ms) against requests/s", "requests/s", |st| {
        (st.throughput.requests_per_s, st.metrics.tpot.p95)
    }),
    (
        "tpot-tps",
        "TPOT p95 (ms) against output tokens/s",
        "output tokens/s",
        |st| (st.throughput.output_tokens_per_s, st.metrics.tpot.p95),
    ),
];

/// Latency against throughput, one point per step, with the knee ringed.
pub(super) fn load_latency(out: &mut String, s: &Summary) {
    let steps: Vec<_> = s.steps.iter().filter(|st| st.metrics.ttft.count > 0).collect();
    if steps.len() < 2 {
        return;
    }
    let knee = s
        .knee
        .as_ref()
        .and_then(|k| k.step)
        .and_then(|k| steps.iter().position(|st| st.index == k));
    let point = |x: f64, y: f64, label: &str| StepPoint {
        label: label.to_owned(),
        x,
        y,
    };
    out.push_str(r#"<div class="grid4">"#);
    for (id, title, x_label, f) in LOAD_CHARTS {
        let points: Vec<StepPoint> = steps
            .iter()
            .map(|st| {
                let (x, y) = f(st);
                point(x, y, &st.label)
            })
            .collect();
        let track = Track {
            name: title.to_owned(),
            color: color::P95,
            points,
            knee,
        };
        scatter(out, id, title, x_label, &[track]);
    }
    out.push_str("</div>");
}
