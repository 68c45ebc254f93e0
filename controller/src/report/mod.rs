//! What a run shows: the live progress line and metrics while it runs;
//! then, rendered from its [`Run`] by [`write`], the JSON summary, the
//! HTML report, the JUnit report, the CSV files and the terminal table. The end of a run and
//! `controller report` both call [`write`].

use std::path::{Path, PathBuf};

use crate::results::Run;

pub mod csv;
pub mod html;
pub mod junit;
pub mod live;
pub(crate) mod otlp;
pub mod progress;
pub mod schema;
pub mod summary;
pub mod terminal;

/// The HTML report's file name in a run directory.
pub const REPORT_HTML: &str = "report.html";
/// The JUnit report's file name in a run directory.
pub const JUNIT_XML: &str = "junit.xml";
/// The summary's file name in a run directory.
pub const SUMMARY_JSON: &str = "summary.json";

/// A results file that cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// What [`write`] produced.
#[derive(Debug)]
pub struct Written {
    /// The summary, as written to `summary.json`.
    pub summary: summary::Summary,
    /// The files, as (what, where), for the terminal.
    pub files: Vec<(&'static str, String)>,
}

/// Builds `run`'s summary and writes `summary.json`, `report.html` and
/// the CSV files into `dir`.
pub fn write(dir: &Path, run: &Run) -> Result<Written, WriteError> {
    let fail = |path: PathBuf| move |source| WriteError { path, source };
    let summary = summary::build(&run.spec, &run.collected, run.series.as_ref(), run.spans.as_ref());
    let path = dir.join(SUMMARY_JSON);
    let json = serde_json::to_vec_pretty(&summary).expect("the summary always serializes");
    std::fs::write(&path, json).map_err(fail(path.clone()))?;
    let mut files = vec![("summary", path.display().to_string())];
    let data = html::ReportData::of(&run.collected, run.spec.interval_s());
    let path = dir.join(REPORT_HTML);
    std::fs::write(&path, html::render(&summary, &data)).map_err(fail(path.clone()))?;
    files.push(("report", path.display().to_string()));
    let path = dir.join(JUNIT_XML);
    std::fs::write(&path, junit::render(&summary)).map_err(fail(path.clone()))?;
    files.push(("junit", path.display().to_string()));
    let csv = csv::write(dir, &summary).map_err(fail(dir.join("metrics.csv")))?;
    let names: Vec<&str> = csv.iter().map(|(name, _)| name.trim_end_matches(".csv")).collect();
    files.push(("csv", format!("{}/{{{}}}.csv", dir.display(), names.join(","))));
    Ok(Written { summary, files })
}

/// A duration in microseconds, in the unit a reader wants at that size.
pub fn human_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}µs")
    } else if us < 100_000.0 {
        format!("{:.1}ms", us / 1_000.0)
    } else if us < 10_000_000.0 {
        format!("{:.0}ms", us / 1_000.0)
    } else {
        format!("{:.1}s", us / 1_000_000.0)
    }
}

/// An integer with thousands separators: `12,345`.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_us(850.0), "850µs");
        assert_eq!(human_us(20_400.0), "20.4ms");
        assert_eq!(human_us(340_000.0), "340ms");
        assert_eq!(human_us(12_500_000.0), "12.5s");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1234567), "1,234,567");
        assert_eq!(grouped(999), "999");
    }
}
