//! CSV files beside `summary.json`, for spreadsheets and plotting tools:
//! `metrics.csv`, `intervals.csv`, `classes.csv` and `steps.csv`.
//!
//! Column names are stable and carry their unit (`_ms`, `_s`, `_per_s`,
//! `_share` for 0 to 1); an empty cell is a figure the run does not have.
//! Every value comes from the summary, so a CSV never disagrees with it.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use super::summary::{MetricSummary, Summary};

/// The columns of `metrics.csv`: one row per metric, in its `unit`.
pub const METRICS: &[&str] = &[
    "metric", "unit", "count", "mean", "min", "p50", "p90", "p95", "p99", "p99_9", "max",
];

/// The columns of `intervals.csv`: one row per reporting interval.
pub const INTERVALS: &[&str] = &[
    "interval",
    "end_s",
    "step",
    "warmup",
    "active",
    "ok",
    "failed",
    "requests_per_s",
    "output_tokens_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "itl_p50_ms",
    "e2e_p95_ms",
    "schedule_lag_p99_ms",
    "client_cpu_share",
    "server_running",
    "server_waiting",
    "server_kv_cache_share",
    "server_utilisation_share",
    "server_queue_time_ms",
];

/// Latency columns shared by `classes.csv` and `steps.csv`.
const LATENCY: &[&str] = &[
    "ttft_p50_ms",
    "ttft_p95_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "tpot_p50_ms",
    "tpot_p95_ms",
    "e2e_p50_ms",
    "e2e_p95_ms",
    "e2e_p99_ms",
];

/// The columns of `classes.csv` before [`LATENCY`]'s: one row per prompt
/// class, over the measured time.
pub const CLASSES: &[&str] = &[
    "class",
    "requests",
    "failed",
    "input_tokens",
    "output_tokens",
    "input_tokens_mean",
    "output_tokens_mean",
    "tokens_per_minute",
    "output_tokens_per_s",
];

/// The columns of `steps.csv` before [`LATENCY`]'s: one row per step
/// (stage or sweep level), over its measured time.
pub const STEPS: &[&str] = &[
    "step",
    "label",
    "level",
    "start_s",
    "duration_s",
    "measured_s",
    "ok",
    "failed",
    "error_rate_share",
    "requests_per_s",
    "output_tokens_per_s",
];

/// Writes the four files into `dir`; their names and paths.
pub fn write(dir: &Path, s: &Summary) -> io::Result<Vec<(&'static str, PathBuf)>> {
    let files = [
        ("metrics.csv", metrics(s)),
        ("intervals.csv", intervals(s)),
        ("classes.csv", classes(s)),
        ("steps.csv", steps(s)),
    ];
    let mut written = Vec::with_capacity(files.len());
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push((name, path));
    }
    Ok(written)
}

/// A number as CSV writes it: the shortest text that reads back exactly.
fn num(v: f64) -> String {
    if v.is_finite() { v.to_string() } else { String::new() }
}

fn opt(v: Option<f64>) -> String {
    v.map(num).unwrap_or_default()
}

fn line(out: &mut String, cells: &[String]) {
    out.push_str(&cells.join(","));
    out.push('\n');
}

fn head(out: &mut String, parts: &[&[&str]]) {
    let names: Vec<String> = parts.iter().flat_map(|p| p.iter()).map(|s| (*s).to_owned()).collect();
    line(out, &names);
}

/// A text cell, quoted when it holds a separator.
fn text(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

fn metrics(s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, &[METRICS]);
    let m = &s.metrics;
    let rows: [(&str, &MetricSummary); 16] = [
        ("ttft", &m.ttft),
        ("itl", &m.itl),
        ("chunk_gap", &m.chunk_gap),
        ("tpot", &m.tpot),
        ("e2e", &m.e2e),
        ("ttft_intended", &m.ttft_intended),
        ("e2e_intended", &m.e2e_intended),
        ("client_queue", &m.client_queue),
        ("schedule_lag", &m.schedule_lag),
        ("connect", &m.connect),
        ("input_tokens", &m.input_tokens),
        ("output_tokens", &m.output_tokens),
        ("server_prefill", &m.server_prefill),
        ("server_decode", &m.server_decode),
        ("model_load", &m.model_load),
        ("server_time", &m.server_time),
    ];
    for (name, x) in rows {
        let mut cells = vec![name.to_owned(), x.unit.to_owned(), x.count.to_string()];
        if x.count > 0 {
            cells.extend([x.mean, x.min, x.p50, x.p90, x.p95, x.p99, x.p99_9, x.max].map(num));
        } else {
            cells.extend(std::iter::repeat_n(String::new(), 8));
        }
        line(&mut out, &cells);
    }
    out
}

fn intervals(s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, &[INTERVALS]);
    let server = s.server.as_ref().map(|sv| &sv.intervals);
    for i in &s.intervals {
        let sv = server.and_then(|list| list.iter().find(|r| r.interval == i.interval));
        let mut cells = vec![
            i.interval.to_string(),
            num(i.end_s),
            i.step.map(|s| s.to_string()).unwrap_or_default(),
            i.warmup.to_string(),
            i.active.to_string(),
            i.ok.to_string(),
            i.failed.to_string(),
            num(i.requests_per_s),
            num(i.output_tokens_per_s),
            opt(i.ttft_p50_ms),
            opt(i.ttft_p95_ms),
            opt(i.itl_p50_ms),
            opt(i.e2e_p95_ms),
            opt(i.schedule_lag_p99_ms),
            num(i.cpu),
        ];
        cells.extend(
            [
                sv.and_then(|r| r.running),
                sv.and_then(|r| r.waiting),
                sv.and_then(|r| r.kv_cache_usage),
                sv.and_then(|r| r.utilisation),
                sv.and_then(|r| r.queue_time_ms),
            ]
            .map(opt),
        );
        line(&mut out, &cells);
    }
    out
}

fn latency(ttft: &MetricSummary, itl: &MetricSummary, tpot: &MetricSummary, e2e: &MetricSummary) -> [String; 10] {
    let v = |x: &MetricSummary, p: f64| if x.count > 0 { num(p) } else { String::new() };
    [
        v(ttft, ttft.p50),
        v(ttft, ttft.p95),
        v(ttft, ttft.p99),
        v(itl, itl.p50),
        v(itl, itl.p99),
        v(tpot, tpot.p50),
        v(tpot, tpot.p95),
        v(e2e, e2e.p50),
        v(e2e, e2e.p95),
        v(e2e, e2e.p99),
    ]
}

fn classes(s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, &[CLASSES, LATENCY]);
    for c in &s.classes {
        // A class whose requests all failed has no per-request means.
        let mean = |m: &MetricSummary| if m.count > 0 { num(m.mean) } else { String::new() };
        let mut cells = vec![
            text(&c.class),
            c.requests.to_string(),
            c.failed.to_string(),
            c.input_tokens.to_string(),
            c.output_tokens.to_string(),
            mean(&c.tokens_in),
            mean(&c.tokens_out),
            num(c.tpm),
            num(c.output_tokens_per_s),
        ];
        cells.extend(latency(&c.ttft, &c.itl, &c.tpot, &c.e2e));
        line(&mut out, &cells);
    }
    out
}

fn steps(s: &Summary) -> String {
    let mut out = String::new();
    head(&mut out, &[STEPS, LATENCY]);
    for st in &s.steps {
        let mut cells = vec![
            st.index.to_string(),
            text(&st.label),
            num(st.level),
            num(st.start_s),
            num(st.duration_s),
            num(st.measured_s),
            st.requests.ok.to_string(),
            st.requests.failed.to_string(),
            num(st.requests.error_rate),
            num(st.throughput.requests_per_s),
            num(st.throughput.output_tokens_per_s),
        ];
        let m = &st.metrics;
        cells.extend(latency(&m.ttft, &m.itl, &m.tpot, &m.e2e));
        line(&mut out, &cells);
    }
    out
}

/// The column list of each file, as the README documents them.
pub fn columns() -> String {
    let mut out = String::new();
    let join = |parts: &[&[&str]]| {
        parts
            .iter()
            .flat_map(|p| p.iter())
            .copied()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "metrics.csv: {}", join(&[METRICS]));
    let _ = writeln!(out, "intervals.csv: {}", join(&[INTERVALS]));
    let _ = writeln!(out, "classes.csv: {}", join(&[CLASSES, LATENCY]));
    let _ = writeln!(out, "steps.csv: {}", join(&[STEPS, LATENCY]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README lists every file's columns as written here.
    #[test]
    fn the_readme_documents_every_column() {
        let readme = include_str!("../../../README.md");
        for line in columns().lines() {
            let (file, names) = line.split_once(": ").expect("file: columns");
            // The file's bullet: its first line and those that continue it.
            let documented: String = readme
                .lines()
                .skip_while(|l| !l.starts_with(&format!("- `{file}`")))
                .enumerate()
                .take_while(|(i, l)| *i == 0 || l.starts_with("  "))
                .map(|(_, l)| format!("{l} "))
                .collect();
            assert!(!documented.is_empty(), "the README does not list {file}");
            for name in names.split(", ") {
                assert!(
                    documented.contains(&format!("`{name}`")),
                    "{file}: {name} is not in the README"
                );
            }
        }
    }

    #[test]
    fn text_cells_are_quoted_when_they_must_be() {
        assert_eq!(text("short"), "short");
        assert_eq!(text("a,b"), "\"a,b\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(num(f64::NAN), "");
        assert_eq!(num(0.1), "0.1");
    }
}
