//! The comparison as a table on the terminal.

use std::fmt::Write as _;

use super::{Against, Comparison, Row, RunInfo, Verdict};

/// A value in its unit, to about four significant digits; shares as
/// percentages.
fn value(v: Option<f64>, unit: &str) -> String {
    let Some(v) = v else { return "-".to_owned() };
    if unit == "share" {
        return format!("{:.2}%", v * 100.0);
    }
    let a = v.abs();
    if a >= 1_000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn signed(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v >= 0.0 => format!("+{}", value(Some(v), unit)),
        Some(v) => value(Some(v), unit),
    }
}

fn interval(r: &Row) -> String {
    match (r.interval_low, r.interval_high) {
        (Some(lo), Some(hi)) => format!("[{}, {}]", signed(Some(lo), r.unit), signed(Some(hi), r.unit)),
        _ => String::new(),
    }
}

fn verdict(r: &Row) -> String {
    match (r.verdict, r.relative) {
        (Verdict::Changed, Some(rel)) if rel > 0.0 => "changed: higher".to_owned(),
        (Verdict::Changed, _) => "changed: lower".to_owned(),
        (v, _) => v.words().to_owned(),
    }
}

fn run_line(out: &mut String, what: &str, r: &RunInfo) {
    let _ = writeln!(
        out,
        "{what:<9} {} · {} · {} · {:.1}s measured · {} ok · {}",
        r.run_id, r.profile, r.load, r.measured_s, r.ok, r.status
    );
}

fn rows(out: &mut String, rows: &[&Row]) {
    let _ = writeln!(
        out,
        "  {:<30} {:>6} {:>11} {:>11} {:>10} {:>8}  {:<24} verdict",
        "figure", "unit", "baseline", "this run", "diff", "diff %", "95% interval of diff"
    );
    for r in rows {
        let rel = r
            .relative
            .map_or_else(|| "-".to_owned(), |x| format!("{:+.1}%", x * 100.0));
        let name = match (r.step, &r.step_label) {
            (Some(k), Some(label)) => format!("{k}·{} {}", label.replace(' ', ""), r.figure),
            _ => r.figure.clone(),
        };
        let _ = writeln!(
            out,
            "  {:<30} {:>6} {:>11} {:>11} {:>10} {:>8}  {:<24} {}",
            name,
            r.unit,
            value(r.baseline, r.unit),
            value(r.value, r.unit),
            signed(r.difference, r.unit),
            rel,
            interval(r),
            verdict(r)
        );
    }
}

fn against(out: &mut String, a: &Against) {
    run_line(out, "against", &a.run);
    let whole: Vec<&Row> = a.figures.iter().filter(|r| r.step.is_none()).collect();
    rows(out, &whole);
    let steps: Vec<&Row> = a.figures.iter().filter(|r| r.step.is_some()).collect();
    if !steps.is_empty() {
        out.push_str("\n  step by step\n");
        rows(out, &steps);
    }
    if let Some(note) = &a.steps_note {
        let _ = writeln!(out, "  {note}");
    }
    let changed: Vec<&str> = whole
        .iter()
        .filter(|r| r.verdict == Verdict::Changed)
        .map(|r| r.figure.as_str())
        .collect();
    let _ = writeln!(
        out,
        "  changed beyond noise: {}",
        if changed.is_empty() {
            "nothing".to_owned()
        } else {
            changed.join(", ")
        }
    );
}

/// The comparison as the terminal shows it, with the files written.
pub fn render(c: &Comparison, files: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "stampede compare · {} run(s) against a baseline", c.runs.len());
    run_line(&mut out, "baseline", &c.baseline);
    for a in &c.runs {
        out.push('\n');
        against(&mut out, a);
    }
    let _ = writeln!(
        out,
        "\n          verdicts: {}% block bootstrap over reporting intervals ({} replicates); a change smaller than {:.1}% of the baseline counts as noise",
        (c.method.confidence * 100.0).round(),
        c.method.replicates,
        c.method.min_change * 100.0
    );
    if !c.limits.is_empty() {
        out.push_str("\nlimits\n");
        for l in &c.limits {
            let _ = writeln!(
                out,
                "  {} on {}: {} ({})",
                l.limit,
                l.run_id,
                if l.broken { "BROKEN" } else { "held" },
                l.why
            );
        }
    }
    let broken = c.limits.iter().filter(|l| l.broken).count();
    if broken == 0 {
        let _ = writeln!(out, "\nresult    passed (exit {})", c.exit_code);
    } else {
        let _ = writeln!(
            out,
            "\nresult    failed: {broken} limit{} broken (exit {})",
            if broken == 1 { "" } else { "s" },
            c.exit_code
        );
    }
    for f in files {
        let _ = writeln!(out, "written   {f}");
    }
    out
}
