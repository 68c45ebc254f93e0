//! The profile's gates: thresholds judged on the finished run's figures
//! (and, for those with `abort`, on the merged figures as the run goes),
//! and the capacity at SLO of a stepped load.

use stampede_proto::Counters;

use crate::figure::{Condition, Figure, Key, Scope};
use crate::merge::Totals;
use crate::profile::{Slo, Threshold};
use crate::report::summary::{Capacity, MetricSummary, StepSummary, Summary, ThresholdResult};
use crate::stats::Stats;

/// The capacity rule, stated in every summary that has one.
pub const CAPACITY_RULE: &str = "the highest load at which this step and every lower one had at least the [slo] ratio of their requests meet every objective";

fn message(name: &str, condition: &Condition, value: Option<f64>) -> String {
    match value {
        Some(v) => format!("{name} = {}, limit {condition}", condition.show_beside(v)),
        None => format!(
            "{name}: the run has no value for it (no samples, no such class or step), so it cannot hold {condition}"
        ),
    }
}

/// Every threshold against the finished run's figures; `steps.*` is one
/// result per step.
pub fn judge(thresholds: &[Threshold], s: &Summary) -> Vec<ThresholdResult> {
    let mut out = Vec::new();
    for t in thresholds {
        let (key, condition) = match t.parsed() {
            Ok(parsed) => parsed,
            Err(e) => {
                // A profile is checked when read; only a run log edited by
                // hand gets here.
                out.push(ThresholdResult {
                    key: t.key.clone(),
                    condition: t.condition.clone(),
                    value: None,
                    unit: "",
                    passed: false,
                    message: format!("unreadable threshold: {e}"),
                    abort: t.abort,
                });
                continue;
            }
        };
        let scopes = match key.scope {
            Scope::EveryStep => (0..s.steps.len()).map(Scope::Step).collect(),
            ref scope => vec![scope.clone()],
        };
        for scope in scopes {
            let name = Key {
                scope: scope.clone(),
                figure: key.figure,
            }
            .to_string();
            let value = s.figure(key.figure, &scope);
            out.push(ThresholdResult {
                message: message(&name, &condition, value),
                key: name,
                condition: condition.to_string(),
                value,
                unit: key.figure.unit(),
                passed: value.is_some_and(|v| condition.holds(v)),
                abort: t.abort,
            });
        }
    }
    out
}

/// The merged figures of a run in progress.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Everything measured so far (warm-ups left out).
    pub measured: &'a Totals,
    /// Seconds measured so far.
    pub measured_s: f64,
    /// Each step so far.
    pub steps: &'a [Totals],
    /// Seconds measured so far in each step.
    pub steps_s: &'a [f64],
    /// Seconds since the start.
    pub elapsed_s: f64,
}

fn value_of(t: &Totals, secs: f64, figure: Figure) -> Option<f64> {
    let c: &Counters = &t.counters;
    let ended = c.ok + c.failed();
    let per_s = |n: u64| (secs > 0.0).then(|| n as f64 / secs);
    match figure {
        Figure::Metric(m, stat) => MetricSummary::of(m, &Stats::of(t.histograms.get(m))).stat(stat),
        Figure::RequestsPerS => per_s(c.ok),
        Figure::OutputTokensPerS => per_s(c.output_tokens),
        Figure::ErrorRate => (ended > 0).then(|| c.failed() as f64 / ended as f64),
        Figure::GoodputRatio => (ended > 0).then(|| c.good as f64 / ended as f64),
        Figure::GoodputRequestsPerS => per_s(c.good),
        Figure::GoodputOutputTokensPerS => per_s(c.good_output_tokens),
    }
}

/// The first threshold with `abort` that the run so far breaks, past its
/// `after`, in words; `None` while every one holds. Only metric figures
/// with samples and rates over measured time are judged, so an empty
/// first interval breaks nothing.
pub fn breached(thresholds: &[Threshold], p: &Progress<'_>) -> Option<String> {
    for t in thresholds
        .iter()
        .filter(|t| t.abort && p.elapsed_s >= t.after.as_secs_f64())
    {
        let Ok((key, condition)) = t.parsed() else { continue };
        let scopes: Vec<usize> = match key.scope {
            Scope::Run => vec![usize::MAX],
            Scope::Step(k) => vec![k],
            Scope::EveryStep => (0..p.steps.len()).collect(),
            Scope::Class(_) => continue,
        };
        for k in scopes {
            let (totals, secs, scope) = if k == usize::MAX {
                (p.measured, p.measured_s, Scope::Run)
            } else {
                match (p.steps.get(k), p.steps_s.get(k)) {
                    (Some(t), Some(s)) if *s > 0.0 => (t, *s, Scope::Step(k)),
                    _ => continue,
                }
            };
            let Some(v) = value_of(totals, secs, key.figure) else {
                continue;
            };
            if !condition.holds(v) {
                let name = Key {
                    scope,
                    figure: key.figure,
                }
                .to_string();
                return Some(format!(
                    "threshold {} broke at {:.0} s: {}",
                    t.key,
                    p.elapsed_s,
                    message(&name, &condition, Some(v))
                ));
            }
        }
    }
    None
}

/// For a stepped load with objectives: the highest step held, by the
/// rule in [`CAPACITY_RULE`]. `None` for one-step loads or runs without
/// objectives.
pub fn capacity(slo: Option<&Slo>, steps: &[StepSummary]) -> Option<Capacity> {
    let slo = slo?;
    if steps.len() < 2 {
        return None;
    }
    let mut order: Vec<&StepSummary> = steps.iter().collect();
    order.sort_by(|a, b| a.level.total_cmp(&b.level));
    let held = order
        .iter()
        .take_while(|st| {
            st.goodput
                .is_some_and(|g| st.requests.ok + st.requests.failed > 0 && g.ratio >= slo.ratio)
        })
        .last();
    Some(Capacity {
        found: held.is_some(),
        step: held.map(|st| st.index),
        level: held.map(|st| st.level),
        label: held.map(|st| st.label.clone()),
        goodput_requests_per_s: held.and_then(|st| st.goodput).map(|g| g.requests_per_s),
        ratio: held.and_then(|st| st.goodput).map(|g| g.ratio),
        rule: CAPACITY_RULE.to_owned(),
    })
}
