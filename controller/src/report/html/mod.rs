//! `report.html`: one self-contained page per run. Charts are inline SVG,
//! the style and the little script are inline too, and nothing refers to
//! any URL but the trace links, so the file opens offline, from a CI
//! artefact, or printed.
//!
//! Every chart is an `<svg>` whose series carry `data-series` (the name)
//! and `data-points` (how many points are drawn), and time-series charts
//! `data-kind="time"` with one point per interval, so that a test can
//! check what the page draws against `summary.json`.

mod charts;
mod compare;
mod data;
mod over_time;
mod svg;
mod tables;
mod timeline;

use std::fmt::Write as _;

pub use compare::render_compare;
pub use data::{DISTRIBUTIONS, Distribution, IntervalData, Quantile, ReportData, TtftParts};

use crate::report::grouped;
use crate::report::summary::{Grading, Status, Summary};
use svg::sig;
use timeline::Timeline;

/// The colours of the page: the Okabe–Ito palette, which stays apart for
/// readers with colour-blindness and in greyscale print.
mod color {
    pub(super) const P50: &str = "#0072b2";
    pub(super) const P95: &str = "#e69f00";
    pub(super) const P99: &str = "#d55e00";
    pub(super) const GREEN: &str = "#009e73";
    pub(super) const PURPLE: &str = "#cc79a7";
    pub(super) const GREY: &str = "#666666";
    pub(super) const QUEUE: &str = "#56b4e9";
    pub(super) const SERVER_QUEUE: &str = "#e69f00";
    pub(super) const PREFILL: &str = "#0072b2";
    pub(super) const REST: &str = "#bbbbbb";
    /// Error classes, in order.
    pub(super) const ERRORS: [&str; 6] = ["#d55e00", "#cc79a7", "#e69f00", "#666666", "#f0e442", "#009e73"];
}

const STYLE: &str = include_str!("style.css");
const SCRIPT: &str = include_str!("script.js");

/// A share as a percentage, to as many decimals as its size needs.
pub(super) fn pct(share: f64) -> String {
    let x = share * 100.0;
    if x > 0.0 && x < 0.005 {
        return "<0.01%".to_owned();
    }
    let decimals = if x.abs() >= 10.0 || x == 0.0 {
        0
    } else if x.abs() >= 1.0 {
        1
    } else {
        2
    };
    let mut s = format!("{x:.decimals$}");
    if s.contains('.') {
        let trimmed = s.trim_end_matches('0').trim_end_matches('.').len();
        s.truncate(trimmed);
    }
    s.push('%');
    s
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page of a run: its summary and the figures the summary lacks.
pub fn render(s: &Summary, d: &ReportData) -> String {
    // An hour of one-second intervals makes about a megabyte.
    let mut out = String::with_capacity(64 * 1024 + s.intervals.len() * 300);
    let title = format!("stampede · {} · {}", s.profile.name, s.run_id);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{}</title><style>{STYLE}</style></head><body>"#,
        esc(&title)
    );
    header(&mut out, s);
    nav(&mut out, s);
    out.push_str("<main>");
    verdict(&mut out, s);
    findings(&mut out, s);
    key_figures(&mut out, s);
    let t = Timeline::new(s);
    over_time::charts(&mut out, s, d, &t);
    charts::where_ttft_goes(&mut out, s, d, &t);
    charts::distributions(&mut out, d);
    if s.steps.len() > 1 {
        out.push_str(r#"<section id="steps"><h2>Latency against throughput, per step</h2>"#);
        charts::load_latency(&mut out, s);
        tables::steps(&mut out, s);
        out.push_str("</section>");
    }
    tables::classes(&mut out, s);
    tables::turns(&mut out, s);
    tables::agents(&mut out, s);
    tables::tokens(&mut out, s);
    tables::server(&mut out, s);
    tables::slowest(&mut out, s);
    tables::definitions(&mut out, s);
    let _ = write!(
        out,
        r#"</main><footer>Written by stampede {} · summary.json holds every figure on this page</footer><script>{SCRIPT}</script></body></html>"#,
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn header(out: &mut String, s: &Summary) {
    let load = match (&s.load.trace, s.load.users, s.load.rate) {
        (Some(t), _, _) => t.describe(),
        (None, Some(u), _) => format!("{u} users"),
        (None, _, Some(r)) => format!("{} req/s ({})", sig(r), s.load.arrival.unwrap_or("poisson")),
        _ => String::new(),
    };
    let shape = match s.load.shape {
        "stages" => format!(" in {} stages", s.steps.len()),
        "sweep" => format!(" in a sweep of {} steps", s.steps.len()),
        _ => String::new(),
    };
    let target = if s.target.simulated {
        format!("{} (built-in llm-sim)", s.target.url)
    } else {
        s.target.url.clone()
    };
    let _ = write!(
        out,
        r#"<header><h1>{}</h1><p class="sub">run <code>{}</code>{}</p><p class="sub">{} · {} · model {} · {load}{shape} over {} agent{} · {} s ({} s measured) · profile <code>{}</code></p></header>"#,
        esc(&s.profile.name),
        esc(&s.run_id),
        s.started_at
            .as_deref()
            .map(|t| format!(", started {}", esc(t)))
            .unwrap_or_default(),
        esc(&target),
        esc(&s.target.api),
        esc(&s.target.model),
        s.load.agents,
        if s.load.agents == 1 { "" } else { "s" },
        sig(s.duration_s),
        sig(s.measured_s),
        esc(&s.profile.path)
    );
}

fn nav(out: &mut String, s: &Summary) {
    let mut links = vec![
        ("findings", "Findings"),
        ("figures", "Figures"),
        ("timeline", "Over time"),
        ("ttft-parts", "Where TTFT goes"),
        ("distributions", "Distributions"),
    ];
    if s.steps.len() > 1 {
        links.push(("steps", "Steps"));
    }
    links.extend([
        ("classes", "Classes"),
        ("agents", "Agents"),
        ("tokens", "Tokens"),
        ("server", "Server"),
        ("slowest", "Slowest"),
        ("definitions", "Definitions"),
    ]);
    out.push_str("<nav>");
    for (id, text) in links {
        let _ = write!(out, r##"<a href="#{id}">{text}</a>"##);
    }
    out.push_str("</nav>");
}

fn verdict(out: &mut String, s: &Summary) {
    let (class, word) = match s.verdict.status {
        Status::Passed => ("passed", "passed"),
        Status::Failed => ("failed", "failed"),
        Status::Degraded => ("degraded", "degraded"),
        Status::Invalid => ("failed", "invalid measurement"),
        Status::Aborted => ("failed", "aborted"),
        Status::Interrupted => ("degraded", "interrupted"),
    };
    let _ = write!(
        out,
        r#"<section id="verdict" class="verdict {class}"><h2>Verdict: {word} <span class="exit">exit {}</span></h2>"#,
        s.verdict.exit_code
    );
    if s.verdict.reasons.is_empty() {
        out.push_str("<p>Every check held.</p>");
    } else {
        out.push_str("<ul>");
        for r in &s.verdict.reasons {
            let _ = write!(out, "<li>{}</li>", esc(r));
        }
        out.push_str("</ul>");
    }
    if s.client.bound {
        let _ = write!(
            out,
            r#"<p class="warn">Client-bound: the results understate the server ({}).</p>"#,
            esc(&s.client.reasons.join("; "))
        );
    }
    tables::thresholds(out, s);
    out.push_str("</section>");
}

/// Evidence in words: numbers to four digits, lists and records spelled
/// out rather than as JSON.
fn evidence_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Number(n) => n.as_f64().map_or_else(|| n.to_string(), sig),
        Value::String(s) => s.clone(),
        Value::Null => "–".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items.iter().map(evidence_value).collect::<Vec<_>>().join("; "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{} {}", k.replace('_', " "), evidence_value(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn findings(out: &mut String, s: &Summary) {
    out.push_str(r#"<section id="findings"><h2>Findings</h2>"#);
    if s.findings.is_empty() {
        out.push_str(
            r#"<p class="empty">No finding: no queueing, saturation, idle accelerator, cold start, client limit or errors met its rule (see Definitions).</p>"#,
        );
    }
    for f in &s.findings {
        let _ = write!(
            out,
            r#"<article class="finding" data-finding="{kind}"><h3><span class="kind">{kind}</span>{}</h3><dl class="evidence">"#,
            esc(&f.title),
            kind = esc(f.kind)
        );
        for (k, v) in &f.evidence {
            let _ = write!(
                out,
                "<div><dt>{}</dt><dd>{}</dd></div>",
                esc(&k.replace('_', " ")),
                esc(&evidence_value(v))
            );
        }
        let _ = write!(out, r#"</dl><p class="basis">From {}.</p></article>"#, esc(&f.basis));
    }
    out.push_str("</section>");
}

/// TTFT and TPOT with their grades, and the bands behind them.
fn grades(out: &mut String, g: &Grading) {
    let graded = g.graded();
    if graded.is_empty() {
        return;
    }
    let _ = write!(out, r#"<p class="grades">Grades of the {}:"#, esc(g.statistic));
    for (name, x) in &graded {
        let _ = write!(
            out,
            r#" {name} {} ms <span class="grade {grade}" data-grade="{name}">{grade}</span>"#,
            sig(x.value_ms),
            grade = x.grade.name()
        );
    }
    let bands: Vec<String> = graded
        .iter()
        .map(|(name, x)| {
            format!(
                "{name} good under {} ms, acceptable under {} ms",
                sig(x.good_under_ms),
                sig(x.acceptable_under_ms)
            )
        })
        .collect();
    let _ = write!(
        out,
        r#" <span class="cs">({}; a label, not a threshold)</span></p>"#,
        esc(&bands.join("; "))
    );
}

fn key_figures(out: &mut String, s: &Summary) {
    let r = &s.requests;
    let th = &s.throughput;
    let m = &s.metrics;
    let cards = [
        (
            "successful requests",
            grouped(r.ok),
            format!("{} failed · {} cancelled", grouped(r.failed), grouped(r.cancelled)),
        ),
        (
            "requests/s",
            sig(th.requests_per_s),
            format!("{} sent/s", sig(th.sent_per_s)),
        ),
        (
            "output tokens/s",
            sig(th.output_tokens_per_s),
            format!("TPM {}", grouped(th.tpm.round() as u64)),
        ),
        (
            "TTFT p50 / p95",
            format!("{} / {}", sig(m.ttft.p50), sig(m.ttft.p95)),
            "ms".to_owned(),
        ),
        (
            "ITL p50 / p99",
            format!("{} / {}", sig(m.itl.p50), sig(m.itl.p99)),
            "ms".to_owned(),
        ),
        (
            "E2E p50 / p95",
            format!("{} / {}", sig(m.e2e.p50), sig(m.e2e.p95)),
            "ms".to_owned(),
        ),
        (
            "error rate",
            pct(r.error_rate),
            format!(
                "{} late · {} held · {} never sent",
                grouped(r.late),
                grouped(r.held),
                grouped(r.dropped)
            ),
        ),
    ];
    let goodput = s.goodput.zip(s.slo.as_ref()).map(|(g, slo)| {
        (
            "goodput",
            pct(g.ratio),
            format!("{} good req/s · {}", sig(g.requests_per_s), slo.words),
        )
    });
    out.push_str(r#"<section id="figures"><h2>Figures of the measured time</h2><div class="cards">"#);
    for (name, value, sub) in cards.into_iter().chain(goodput) {
        let _ = write!(
            out,
            r#"<div class="card"><div class="cl">{name}</div><div class="cv">{}</div><div class="cs">{}</div></div>"#,
            esc(&value),
            esc(&sub)
        );
    }
    out.push_str("</div>");
    grades(out, &s.grades);
    tables::metrics(out, s);
    let _ = write!(
        out,
        r#"<p class="caption">Warm-ups left out: {} s at the start of every step ({} successful and {} failed requests not counted). Times in ms.</p>"#,
        sig(s.warmup.per_step_s),
        grouped(s.warmup.ok),
        grouped(s.warmup.failed)
    );
    tables::errors(out, s);
    out.push_str("</section>");
}

#[cfg(test)]
mod tests;
