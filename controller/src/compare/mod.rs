//! `controller compare`: runs side by side. The first run is the
//! baseline; every figure of every other run is set against it, with its
//! difference, a bootstrap interval of that difference ([`bootstrap`]),
//! and a verdict: *changed* or *within noise*. Regression limits
//! ([`crate::figure::Limit`]) make the comparison fail.
//!
//! Each run is read back from its directory through the same results
//! model as `controller report`: the figures compared are the ones its
//! summary states, and the intervals resampled are the ones its summary
//! merged.

pub mod bootstrap;
pub mod terminal;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use stampede_proto::{Counters, Metric, Unit};

use crate::figure::{Figure, Limit, Scope, Stat};
use crate::merge::{Place, Timeline};
use crate::report::html::{Distribution, ReportData};
use crate::report::summary::{self, Summary};
use crate::results::{self, LoadError};
use bootstrap::{Drawn, Gather, NoInterval, Ratio, Samples, Source, Spread, Statistic, Strata};

/// The comparison's format; changes when a field changes meaning.
pub const SCHEMA: &str = "stampede.compare/1";

/// Time differences below this many milliseconds are within noise: the
/// client's own timer and scheduler resolution.
pub const MIN_CHANGE_MS: f64 = 0.05;

/// Exit code when a regression limit is broken.
pub const EXIT_LIMIT: u8 = 99;

/// Figures compared step by step, for stages and sweeps.
const STEP_FIGURES: [Figure; 9] = [
    Figure::Metric(Metric::Ttft, Stat::P50),
    Figure::Metric(Metric::Ttft, Stat::P95),
    Figure::Metric(Metric::Ttft, Stat::P99),
    Figure::Metric(Metric::Itl, Stat::P50),
    Figure::Metric(Metric::Tpot, Stat::P95),
    Figure::Metric(Metric::E2e, Stat::P95),
    Figure::RequestsPerS,
    Figure::OutputTokensPerS,
    Figure::ErrorRate,
];

/// How a comparison is made.
#[derive(Clone, Debug)]
pub struct Options {
    /// Differences smaller than this share of the baseline are within
    /// noise whatever the test says.
    pub min_change: f64,
    /// Regression limits.
    pub limits: Vec<Limit>,
}

/// What the samples of one stretch of a run (the measured time, or one
/// step) hold, interval by interval.
struct Stretch {
    strata: Strata,
    metrics: Vec<Samples>,
    requests: Ratio,
    output_tokens: Ratio,
    errors: Ratio,
    good: Ratio,
    good_per_s: Ratio,
    good_tokens: Ratio,
}

/// One run, read back for comparing.
pub struct Side {
    /// Its directory.
    pub dir: PathBuf,
    /// Its summary, as `controller report` rebuilds it.
    pub summary: Summary,
    /// Its percentile distributions.
    pub distributions: Vec<Distribution>,
    /// What its files lacked.
    pub notes: Vec<String>,
    measured: Stretch,
    steps: Vec<Stretch>,
}

#[derive(Default)]
struct Gathered {
    metrics: Vec<Gather>,
    counters: BTreeMap<u64, Counters>,
    places: BTreeMap<u64, Place>,
}

impl Side {
    /// Reads the run in `dir`.
    pub fn load(dir: &Path) -> Result<Side, LoadError> {
        let mut g = Gathered {
            metrics: Metric::ALL.iter().map(|_| Gather::default()).collect(),
            ..Gathered::default()
        };
        let mut timeline = None;
        let loaded = results::load_with(dir, |spec, effect| {
            // Each report the ledger took in, decoded once.
            let Some(r) = &effect.added else { return };
            let timeline = timeline.get_or_insert_with(|| Timeline::new(&spec.load, spec.interval));
            g.places.insert(r.interval, timeline.place(r.interval));
            g.counters.entry(r.interval).or_default().add(&r.counters);
            for (gather, m) in g.metrics.iter_mut().zip(Metric::ALL) {
                if !r.histograms.buckets(m).is_empty() {
                    gather.add(r.interval, &r.histograms.histogram(m));
                }
            }
        })?;
        let run = &loaded.run;
        let summary = summary::build(&run.spec, &run.collected, run.series.as_ref(), run.spans.as_ref());
        let distributions = ReportData::of(&run.collected, run.spec.interval_s()).distributions;
        let interval_s = run.spec.interval_s();
        let of =
            |place: Place| -> Vec<u64> { g.places.iter().filter(|(_, p)| **p == place).map(|(i, _)| *i).collect() };
        // The measured time, as the summary merges it: every step's
        // measured intervals and the drain, each a stratum of its own.
        let mut measured: Vec<Vec<u64>> = (0..summary.steps.len()).map(|k| of(Place::Step(k))).collect();
        measured.push(of(Place::Drain));
        let steps = (0..summary.steps.len())
            .map(|k| stretch(&g, &[of(Place::Step(k))], interval_s))
            .collect();
        Ok(Side {
            dir: dir.to_owned(),
            measured: stretch(&g, &measured, interval_s),
            steps,
            summary,
            distributions,
            notes: loaded.notes,
        })
    }

    /// The summary's value of `figure` over the measured time, or over
    /// step `step`.
    fn value(&self, figure: Figure, step: Option<usize>) -> Option<f64> {
        self.summary.figure(figure, &step.map_or(Scope::Run, Scope::Step))
    }

    fn stretch(&self, step: Option<usize>) -> Option<&Stretch> {
        match step {
            None => Some(&self.measured),
            Some(k) => self.steps.get(k),
        }
    }
}

fn stretch(g: &Gathered, groups: &[Vec<u64>], interval_s: f64) -> Stretch {
    let (blocks, strata) = bootstrap::blocks(groups);
    let sums = |f: &dyn Fn(&Counters) -> (f64, f64)| Ratio {
        blocks: blocks
            .iter()
            .map(|b| {
                b.iter()
                    .filter_map(|i| g.counters.get(i))
                    .map(f)
                    .fold((0.0, 0.0), |(n, d), (a, b)| (n + a, d + b))
            })
            .collect(),
    };
    Stretch {
        strata,
        metrics: g.metrics.iter().map(|m| m.samples(&blocks)).collect(),
        requests: sums(&|c| (c.ok as f64, interval_s)),
        output_tokens: sums(&|c| (c.output_tokens as f64, interval_s)),
        errors: sums(&|c| (c.failed() as f64, (c.ok + c.failed()) as f64)),
        good: sums(&|c| (c.good as f64, (c.ok + c.failed()) as f64)),
        good_per_s: sums(&|c| (c.good as f64, interval_s)),
        good_tokens: sums(&|c| (c.good_output_tokens as f64, interval_s)),
    }
}

/// What the data says of one figure's difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The difference is beyond noise.
    Changed,
    /// The difference is within what noise gives.
    WithinNoise,
    /// No test can say: too few intervals, or the largest sample.
    Untested,
    /// A run has no value for it.
    NoData,
}

impl Verdict {
    /// In words.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::Changed => "changed",
            Verdict::WithinNoise => "within noise",
            Verdict::Untested => "untested",
            Verdict::NoData => "no data",
        }
    }
}

/// One figure of one run set against the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Its name, such as `ttft.p95`.
    pub figure: String,
    /// The step it covers (stages and sweeps), else the measured time.
    pub step: Option<usize>,
    /// That step's load, in words.
    pub step_label: Option<String>,
    /// `ms`, `tokens`, `/s` or `share`.
    pub unit: &'static str,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// This run's value.
    pub value: Option<f64>,
    /// value − baseline.
    pub difference: Option<f64>,
    /// The difference as a share of the baseline.
    pub relative: Option<f64>,
    /// The 95% bootstrap interval of the difference.
    pub interval_low: Option<f64>,
    /// Its upper end.
    pub interval_high: Option<f64>,
    /// The verdict.
    pub verdict: Verdict,
    /// Why, when the verdict needs a reason.
    pub why: Option<String>,
    #[serde(skip)]
    figure_id: Option<Figure>,
}

impl Row {
    /// The figure compared.
    pub fn figure(&self) -> Option<Figure> {
        self.figure_id
    }
}

/// A run in the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// Its id.
    pub run_id: String,
    /// Its directory.
    pub dir: String,
    /// Its profile's name.
    pub profile: String,
    /// Its target.
    pub target: String,
    /// Its load, in words.
    pub load: String,
    /// Measured seconds.
    pub measured_s: f64,
    /// Reporting intervals.
    pub intervals: usize,
    /// Successful requests.
    pub ok: u64,
    /// Its verdict.
    pub status: String,
}

impl RunInfo {
    fn of(side: &Side) -> RunInfo {
        let s = &side.summary;
        RunInfo {
            run_id: s.run_id.clone(),
            dir: side.dir.display().to_string(),
            profile: s.profile.name.clone(),
            target: s.target.url.clone(),
            load: s
                .steps
                .iter()
                .map(|st| st.label.clone())
                .collect::<Vec<_>>()
                .join(" → "),
            measured_s: s.measured_s,
            intervals: s.intervals.len(),
            ok: s.requests.ok,
            status: format!("{:?}", s.verdict.status).to_lowercase(),
        }
    }
}

/// One run against the baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Against {
    /// The run.
    pub run: RunInfo,
    /// Every figure, the measured time first, then step by step.
    pub figures: Vec<Row>,
    /// Why steps were not compared one by one, when they were not.
    pub steps_note: Option<String>,
}

/// A regression limit and how it fared.
#[derive(Clone, Debug, Serialize)]
pub struct LimitResult {
    /// The limit as written.
    pub limit: String,
    /// The run it was checked on.
    pub run_id: String,
    /// The baseline's value.
    pub baseline: Option<f64>,
    /// The run's value.
    pub value: Option<f64>,
    /// It was broken.
    pub broken: bool,
    /// In words.
    pub why: String,
}

/// How the verdicts were reached.
#[derive(Clone, Debug, Serialize)]
pub struct Method {
    /// The test, in words.
    pub test: &'static str,
    /// Bootstrap replicates per figure.
    pub replicates: usize,
    /// Coverage of the interval.
    pub confidence: f64,
    /// Differences below this share of the baseline are within noise.
    pub min_change: f64,
    /// Fewest intervals with samples, on each side, for a verdict.
    pub min_intervals: usize,
}

/// The whole comparison, as `compare.json` holds it.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// `stampede.compare/1`.
    pub schema: &'static str,
    /// How verdicts were reached.
    pub method: Method,
    /// The baseline.
    pub baseline: RunInfo,
    /// Every other run against it.
    pub runs: Vec<Against>,
    /// The regression limits.
    pub limits: Vec<LimitResult>,
    /// No limit was broken.
    pub passed: bool,
    /// 0, or 99 when a limit was broken.
    pub exit_code: u8,
}

fn row(base: &Side, other: &Side, figure: Figure, step: Option<usize>, min_change: f64) -> Row {
    let (a, b) = (base.value(figure, step), other.value(figure, step));
    let difference = a.zip(b).map(|(a, b)| b - a);
    let relative = a.zip(difference).and_then(|(a, d)| (a != 0.0).then(|| d / a));
    let mut r = Row {
        figure: figure.to_string(),
        step,
        step_label: step.and_then(|k| base.summary.steps.get(k)).map(|st| st.label.clone()),
        unit: figure.unit(),
        baseline: a,
        value: b,
        difference,
        relative,
        interval_low: None,
        interval_high: None,
        verdict: Verdict::NoData,
        why: None,
        figure_id: Some(figure),
    };
    let (Some(a), Some(d)) = (a, difference) else {
        return r;
    };
    if matches!(figure, Figure::Metric(_, Stat::Max)) {
        r.verdict = Verdict::Untested;
        r.why = Some("the largest sample is one request: no test tells it from noise".to_owned());
        return r;
    }
    let (Some(sa), Some(sb)) = (base.stretch(step), other.stretch(step)) else {
        return r;
    };
    let seed = bootstrap::seed(&format!("{figure}/{step:?}"));
    match bootstrap::interval(pick(sa, figure), pick(sb, figure), seed) {
        Err(NoInterval::TooFew { baseline, other }) => {
            r.verdict = Verdict::Untested;
            r.why = Some(format!(
                "too few intervals with samples to test ({baseline} and {other}; at least {} each)",
                bootstrap::MIN_BLOCKS
            ));
        }
        Ok(Spread { low, high }) => {
            // Samples of times are microseconds; figures, milliseconds.
            let scale = match figure {
                Figure::Metric(m, _) if m.unit() == Unit::Micros => 1e3,
                _ => 1.0,
            };
            let (low, high) = (d + low / scale, d + high / scale);
            r.interval_low = Some(low);
            r.interval_high = Some(high);
            let beyond = low > 0.0 || high < 0.0;
            let smallest = (min_change * a.abs()).max(if scale > 1.0 { MIN_CHANGE_MS } else { 0.0 });
            let large = d.abs() >= smallest;
            r.verdict = if beyond && large {
                Verdict::Changed
            } else {
                Verdict::WithinNoise
            };
            if beyond && !large {
                r.why = Some(format!(
                    "beyond the interval but smaller than the smallest change counted ({:.1}% of the baseline, and {MIN_CHANGE_MS} ms for times)",
                    min_change * 100.0
                ));
            }
        }
    }
    r
}

fn pick(s: &Stretch, figure: Figure) -> Drawn<'_> {
    let source = match figure {
        Figure::Metric(m, stat) => {
            let samples = &s.metrics[Metric::ALL
                .iter()
                .position(|x| *x == m)
                .expect("every metric is in ALL")];
            let statistic = match stat.quantile() {
                Some(q) => Statistic::Quantile(q),
                None => Statistic::Mean,
            };
            Source::Samples(samples, statistic)
        }
        Figure::RequestsPerS => Source::Ratio(&s.requests),
        Figure::OutputTokensPerS => Source::Ratio(&s.output_tokens),
        Figure::ErrorRate => Source::Ratio(&s.errors),
        Figure::GoodputRatio => Source::Ratio(&s.good),
        Figure::GoodputRequestsPerS => Source::Ratio(&s.good_per_s),
        Figure::GoodputOutputTokensPerS => Source::Ratio(&s.good_tokens),
    };
    Drawn {
        source,
        strata: &s.strata,
    }
}

/// Every figure of `other` against `base`.
fn against(base: &Side, other: &Side, min_change: f64) -> Against {
    let mut figures = Vec::new();
    for m in Metric::ALL {
        let has = |s: &Side| s.summary.metrics.get(m).count > 0;
        if !has(base) && !has(other) {
            continue;
        }
        for stat in Stat::ALL {
            figures.push(row(base, other, Figure::Metric(m, stat), None, min_change));
        }
    }
    for f in [Figure::RequestsPerS, Figure::OutputTokensPerS, Figure::ErrorRate] {
        figures.push(row(base, other, f, None, min_change));
    }
    if base.summary.goodput.is_some() || other.summary.goodput.is_some() {
        for f in [
            Figure::GoodputRatio,
            Figure::GoodputRequestsPerS,
            Figure::GoodputOutputTokensPerS,
        ] {
            figures.push(row(base, other, f, None, min_change));
        }
    }
    let (sa, sb) = (&base.summary.steps, &other.summary.steps);
    let same_steps = sa.len() == sb.len() && sa.iter().zip(sb).all(|(a, b)| a.level == b.level);
    let steps_note = if sa.len() < 2 && sb.len() < 2 {
        None
    } else if same_steps {
        for k in 0..sa.len() {
            for f in STEP_FIGURES {
                figures.push(row(base, other, f, Some(k), min_change));
            }
        }
        None
    } else {
        Some(format!(
            "the runs' steps differ ({} against {}), so they are compared over their whole measured time only",
            sa.iter().map(|s| s.label.as_str()).collect::<Vec<_>>().join(", "),
            sb.iter().map(|s| s.label.as_str()).collect::<Vec<_>>().join(", ")
        ))
    };
    Against {
        run: RunInfo::of(other),
        figures,
        steps_note,
    }
}

/// Compares `sides[1..]` with `sides[0]`.
pub fn compare(sides: &[Side], options: &Options) -> Comparison {
    let base = &sides[0];
    let runs: Vec<Against> = sides[1..]
        .iter()
        .map(|s| against(base, s, options.min_change))
        .collect();
    let mut limits = Vec::new();
    for limit in &options.limits {
        for run in &runs {
            let row = run
                .figures
                .iter()
                .find(|r| r.step.is_none() && r.figure() == Some(limit.figure));
            limits.push(check(limit, &run.run.run_id, row));
        }
    }
    let passed = limits.iter().all(|l| !l.broken);
    Comparison {
        schema: SCHEMA,
        method: Method {
            test: "block bootstrap over reporting intervals: each run resampled interval by interval within each of its steps (in blocks of consecutive intervals past 200 in all), the figure read from the merged histograms of the intervals drawn, the spread of the replicates' differences around the whole runs' difference; changed when the interval excludes zero and the difference is at least min_change of the baseline (and 0.05 ms for times)",
            replicates: bootstrap::REPLICATES,
            confidence: bootstrap::CONFIDENCE,
            min_change: options.min_change,
            min_intervals: bootstrap::MIN_BLOCKS,
        },
        baseline: RunInfo::of(base),
        runs,
        limits,
        passed,
        exit_code: if passed { 0 } else { EXIT_LIMIT },
    }
}

fn check(limit: &Limit, run_id: &str, row: Option<&Row>) -> LimitResult {
    let mut result = LimitResult {
        limit: limit.text.clone(),
        run_id: run_id.to_owned(),
        baseline: row.and_then(|r| r.baseline),
        value: row.and_then(|r| r.value),
        broken: false,
        why: String::new(),
    };
    let Some((row, a, b)) = row.and_then(|r| Some((r, r.baseline?, r.value?))) else {
        result.why = "a run has no value for this figure: nothing to check".to_owned();
        return result;
    };
    let exceeded = limit.exceeded(a, b);
    let moved = match (row.difference, row.relative) {
        (Some(d), Some(rel)) => format!("{d:+.3} {} ({:+.1}%)", row.unit, rel * 100.0),
        (Some(d), None) => format!("{d:+.3} {}", row.unit),
        _ => String::new(),
    };
    (result.broken, result.why) = match (exceeded, row.verdict) {
        (false, _) => (false, format!("moved {moved}, within the limit")),
        (true, Verdict::Changed) => (true, format!("moved {moved}, past the limit, and beyond noise")),
        (true, Verdict::WithinNoise) => (
            false,
            format!("moved {moved}, past the limit, but within noise: not counted as a regression"),
        ),
        (true, _) => (
            true,
            format!(
                "moved {moved}, past the limit; {}, so the difference alone decides",
                row.why.as_deref().unwrap_or("no test could be made")
            ),
        ),
    };
    result
}
