//! `compare.html`: runs side by side on one self-contained page, with the
//! report's own style and charts: the verdict and the limits, every
//! figure with its difference and verdict, the percentile distributions
//! overlaid, and for stages and sweeps the latency-against-throughput
//! curves overlaid.

use std::fmt::Write as _;

use super::charts::{self, Curve, StepPoint, Track};
use super::data::DISTRIBUTIONS;
use super::svg::sig;
use super::{STYLE, color, esc, pct};
use crate::compare::{Against, Comparison, Row, Side, Verdict};

/// The figures shown first; the rest are a click away.
const KEY: [&str; 15] = [
    "ttft.mean",
    "ttft.p50",
    "ttft.p95",
    "ttft.p99",
    "itl.p50",
    "itl.p99",
    "tpot.p50",
    "tpot.p95",
    "e2e.p50",
    "e2e.p95",
    "e2e.p99",
    "client_queue.p95",
    "requests_per_s",
    "output_tokens_per_s",
    "error_rate",
];

/// One colour per run, the baseline first.
const RUNS: [&str; 6] = [
    color::P50,
    color::P99,
    color::GREEN,
    color::PURPLE,
    color::P95,
    color::GREY,
];

fn run_color(i: usize) -> &'static str {
    RUNS[i % RUNS.len()]
}

fn value(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if unit == "share" => pct(v),
        Some(v) => sig(v),
    }
}

fn signed(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(x) if x > 0.0 => format!("+{}", value(v, unit)),
        _ => value(v, unit),
    }
}

fn row(out: &mut String, r: &Row) {
    let class = match r.verdict {
        Verdict::Changed => "changed",
        Verdict::WithinNoise => "noise",
        Verdict::Untested | Verdict::NoData => "untested",
    };
    let interval = match (r.interval_low, r.interval_high) {
        (Some(lo), Some(hi)) => format!("{} … {}", signed(Some(lo), r.unit), signed(Some(hi), r.unit)),
        _ => "–".to_owned(),
    };
    let verdict = match (r.verdict, r.relative) {
        (Verdict::Changed, Some(x)) if x > 0.0 => "changed ▲".to_owned(),
        (Verdict::Changed, _) => "changed ▼".to_owned(),
        (v, _) => v.words().to_owned(),
    };
    let _ = write!(
        out,
        r#"<tr class="{class}" data-figure="{}" data-verdict="{}"><td class="t">{}</td><td class="t">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="t"{}>{}</td></tr>"#,
        esc(&r.figure),
        class,
        esc(&r.figure),
        esc(r.unit),
        value(r.baseline, r.unit),
        value(r.value, r.unit),
        signed(r.difference, r.unit),
        r.relative
            .map_or_else(|| "–".to_owned(), |x| format!("{:+.1}%", x * 100.0)),
        interval,
        r.why
            .as_deref()
            .map(|w| format!(r#" title="{}""#, esc(w)))
            .unwrap_or_default(),
        verdict
    );
}

fn table(out: &mut String, rows: &[&Row]) {
    out.push_str(r#"<table class="num compare"><thead><tr><th>figure</th><th>unit</th><th>baseline</th><th>this run</th><th>difference</th><th>relative</th><th>95% interval of the difference</th><th>verdict</th></tr></thead><tbody>"#);
    for r in rows {
        row(out, r);
    }
    out.push_str("</tbody></table>");
}

fn against(out: &mut String, i: usize, a: &Against) {
    let _ = write!(
        out,
        r#"<section class="against" id="run-{i}"><h2><span class="swatch" style="background:{}"></span>{} against the baseline</h2>"#,
        run_color(i),
        esc(&a.run.run_id)
    );
    let changed: Vec<&str> = a
        .figures
        .iter()
        .filter(|r| r.step.is_none() && r.verdict == Verdict::Changed)
        .map(|r| r.figure.as_str())
        .collect();
    let _ = write!(
        out,
        r#"<p class="caption">Changed beyond noise: {}.</p>"#,
        if changed.is_empty() {
            "nothing".to_owned()
        } else {
            esc(&changed.join(", "))
        }
    );
    let whole: Vec<&Row> = a.figures.iter().filter(|r| r.step.is_none()).collect();
    let key: Vec<&Row> = KEY
        .iter()
        .filter_map(|k| whole.iter().find(|r| r.figure == *k).copied())
        .collect();
    table(out, &key);
    let _ = write!(out, r#"<details><summary>Every figure ({})</summary>"#, whole.len());
    table(out, &whole);
    out.push_str("</details>");
    step_table(out, a);
    if let Some(note) = &a.steps_note {
        let _ = write!(out, r#"<p class="caption">{}</p>"#, esc(note));
    }
    out.push_str("</section>");
}

/// Stages and sweeps: one row per step, one column per figure, each cell
/// this run's value, its change and the verdict.
fn step_table(out: &mut String, a: &Against) {
    let mut steps: Vec<(usize, Vec<&Row>)> = Vec::new();
    for r in &a.figures {
        let Some(k) = r.step else { continue };
        match steps.last_mut() {
            Some((last, rows)) if *last == k => rows.push(r),
            _ => steps.push((k, vec![r])),
        }
    }
    let Some((_, first)) = steps.first() else { return };
    out.push_str(r#"<h3>Step by step</h3><table class="num compare steps"><thead><tr><th>step</th>"#);
    for r in first {
        let _ = write!(out, "<th>{} ({})</th>", esc(&r.figure), esc(r.unit));
    }
    out.push_str("</tr></thead><tbody>");
    for (k, rows) in &steps {
        let label = rows[0].step_label.as_deref().unwrap_or("");
        let _ = write!(out, r#"<tr><td class="t">{k} · {}</td>"#, esc(label));
        for r in rows {
            let (class, mark) = match (r.verdict, r.relative) {
                (Verdict::Changed, Some(x)) if x > 0.0 => ("changed", " ▲"),
                (Verdict::Changed, _) => ("changed", " ▼"),
                (Verdict::WithinNoise, _) => ("noise", ""),
                _ => ("untested", ""),
            };
            let _ = write!(
                out,
                r#"<td class="{class}" data-figure="{}" data-step="{k}" data-verdict="{class}" title="baseline {} · {}{}">{} <span class="rel">{}</span>{mark}</td>"#,
                esc(&r.figure),
                value(r.baseline, r.unit),
                r.verdict.words(),
                r.why.as_deref().map(|w| format!(": {}", esc(w))).unwrap_or_default(),
                value(r.value, r.unit),
                r.relative.map_or_else(String::new, |x| format!("{:+.1}%", x * 100.0)),
            );
        }
        out.push_str("</tr>");
    }
    out.push_str(r#"</tbody></table><p class="caption">Each cell: this run's value, its change from the baseline's, ▲ or ▼ when the change is beyond noise (hover for the baseline and the verdict).</p>"#);
}

fn legend(out: &mut String, sides: &[Side]) {
    out.push_str(r#"<ul class="legend">"#);
    for (i, s) in sides.iter().enumerate() {
        let _ = write!(
            out,
            r#"<li><i style="background:{}"></i>{}{}</li>"#,
            run_color(i),
            esc(&s.summary.run_id),
            if i == 0 { " (baseline)" } else { "" }
        );
    }
    out.push_str("</ul>");
}

fn distributions(out: &mut String, sides: &[Side]) {
    out.push_str(r#"<section id="distributions"><h2>Latency distributions, overlaid</h2><p class="caption">Each run's successful requests of its measured time, from its exact merged histograms, as HdrHistogram's plotter draws them.</p>"#);
    legend(out, sides);
    out.push_str(r#"<div class="grid2">"#);
    for metric in DISTRIBUTIONS {
        let curves: Vec<Curve<'_>> = sides
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let dist = s.distributions.iter().find(|d| d.metric == metric)?;
                Some(Curve {
                    name: s.summary.run_id.clone(),
                    color: run_color(i),
                    dist,
                })
            })
            .collect();
        charts::percentile_chart(out, metric, "ms", &curves);
    }
    out.push_str("</div></section>");
}

fn steps(out: &mut String, sides: &[Side]) {
    if sides.iter().all(|s| s.summary.steps.len() < 2) {
        return;
    }
    out.push_str(r#"<section id="steps"><h2>Latency against throughput, overlaid</h2><p class="caption">One point per step of each run, the knee ringed where a run has one.</p>"#);
    legend(out, sides);
    out.push_str(r#"<div class="grid4">"#);
    for (id, title, x_label, pick) in charts::LOAD_CHARTS {
        let tracks: Vec<Track> = sides
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let steps: Vec<_> = s.summary.steps.iter().filter(|st| st.metrics.ttft.count > 0).collect();
                let knee = s
                    .summary
                    .knee
                    .as_ref()
                    .and_then(|k| k.step)
                    .and_then(|k| steps.iter().position(|st| st.index == k));
                Track {
                    name: s.summary.run_id.clone(),
                    color: run_color(i),
                    points: steps
                        .iter()
                        .map(|st| {
                            let (x, y) = pick(st);
                            StepPoint {
                                label: st.label.clone(),
                                x,
                                y,
                            }
                        })
                        .collect(),
                    knee,
                }
            })
            .collect();
        charts::scatter(out, id, title, x_label, &tracks);
    }
    out.push_str("</div></section>");
}

/// The page of a comparison of `sides` (the baseline first).
pub fn render_compare(c: &Comparison, sides: &[Side]) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>stampede compare · {}</title><style>{STYLE}{EXTRA}</style></head><body>"#,
        esc(&c.baseline.run_id)
    );
    let _ = write!(
        out,
        r#"<header><h1>stampede compare</h1><p class="sub">baseline <code>{}</code> · {} · {} · against {} run{}</p></header><main>"#,
        esc(&c.baseline.run_id),
        esc(&c.baseline.profile),
        esc(&c.baseline.load),
        c.runs.len(),
        if c.runs.len() == 1 { "" } else { "s" }
    );
    let broken = c.limits.iter().filter(|l| l.broken).count();
    let _ = write!(
        out,
        r#"<section id="verdict" class="verdict {}"><h2>{} <span class="exit">exit {}</span></h2>"#,
        if c.passed { "passed" } else { "failed" },
        if c.passed {
            "No regression limit broken".to_owned()
        } else {
            format!("{broken} regression limit{} broken", if broken == 1 { "" } else { "s" })
        },
        c.exit_code
    );
    if c.limits.is_empty() {
        out.push_str("<p>No limit was set (<code>--fail-if</code>).</p>");
    } else {
        out.push_str("<ul>");
        for l in &c.limits {
            let _ = write!(
                out,
                r#"<li data-limit="{}" data-broken="{}"><code>{}</code> on {}: {}</li>"#,
                esc(&l.limit),
                l.broken,
                esc(&l.limit),
                esc(&l.run_id),
                esc(&l.why)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out.push_str(r#"<section id="runs"><h2>Runs</h2><table class="num"><thead><tr><th></th><th>run</th><th>profile</th><th>load</th><th>measured s</th><th>intervals</th><th>successful</th><th>verdict</th></tr></thead><tbody>"#);
    for (i, info) in std::iter::once(&c.baseline)
        .chain(c.runs.iter().map(|a| &a.run))
        .enumerate()
    {
        let _ = write!(
            out,
            r#"<tr><td class="t"><span class="swatch" style="background:{}"></span></td><td class="t"><code>{}</code>{}</td><td class="t">{}</td><td class="t">{}</td><td>{}</td><td>{}</td><td>{}</td><td class="t">{}</td></tr>"#,
            run_color(i),
            esc(&info.run_id),
            if i == 0 { " (baseline)" } else { "" },
            esc(&info.profile),
            esc(&info.load),
            sig(info.measured_s),
            info.intervals,
            info.ok,
            esc(&info.status)
        );
    }
    out.push_str("</tbody></table></section>");
    for (i, a) in c.runs.iter().enumerate() {
        against(&mut out, i + 1, a);
    }
    distributions(&mut out, sides);
    steps(&mut out, sides);
    let _ = write!(
        out,
        r#"<section id="method"><h2>How the verdicts are reached</h2><p class="caption">A {}% block bootstrap over reporting intervals, {} replicates per figure: each run is resampled interval by interval within each of its steps (in blocks of consecutive intervals past 200), the figure read from the merged histograms of the intervals drawn, and the difference taken; the interval is the replicates' spread around the difference of the whole runs. <b>Changed</b> means the interval excludes zero and the difference is at least {} of the baseline (and 0.05 ms for times); <b>within noise</b> otherwise. The largest sample and runs with fewer than {} intervals with samples are not tested. Regression limits count only a change beyond noise.</p></section>"#,
        (c.method.confidence * 100.0).round(),
        c.method.replicates,
        pct(c.method.min_change),
        c.method.min_intervals
    );
    let _ = write!(
        out,
        r#"</main><footer>Written by stampede {} · compare.json holds every figure on this page</footer></body></html>"#,
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// Styles only the comparison uses.
const EXTRA: &str = "details{margin:4px 0 10px}summary{cursor:pointer;color:var(--link);font-size:13px}@media print{details>*{display:block}}.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:8px;vertical-align:-1px}table.compare tr.changed td{background:#fdebe6}table.compare tr.untested td{color:var(--muted)}table.steps td.changed{background:#fdebe6}table.steps td.untested{color:var(--muted)}.rel{color:var(--muted);font-size:11px}";
