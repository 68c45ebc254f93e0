//! Names of a run's figures (`ttft.p95`, `requests_per_s`,
//! `goodput_ratio`, ...), where they are read (the run, a prompt class, a
//! step), the conditions thresholds put on them (`< 500ms`), and the
//! regression limits `compare --fail-if` takes (`ttft.p95=+10%`).

use std::fmt;

use stampede_proto::{Metric, Unit};

/// A statistic of one metric's samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Mean.
    Mean,
    /// Median.
    P50,
    /// 90th percentile.
    P90,
    /// 95th percentile.
    P95,
    /// 99th percentile.
    P99,
    /// 99.9th percentile.
    P999,
    /// Largest sample.
    Max,
}

impl Stat {
    /// Every statistic, in table order.
    pub const ALL: [Stat; 7] = [
        Stat::Mean,
        Stat::P50,
        Stat::P90,
        Stat::P95,
        Stat::P99,
        Stat::P999,
        Stat::Max,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Stat::Mean => "mean",
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P95 => "p95",
            Stat::P99 => "p99",
            Stat::P999 => "p99.9",
            Stat::Max => "max",
        }
    }

    /// Its quantile, for percentiles and the maximum.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Stat::Mean => None,
            Stat::P50 => Some(0.5),
            Stat::P90 => Some(0.9),
            Stat::P95 => Some(0.95),
            Stat::P99 => Some(0.99),
            Stat::P999 => Some(0.999),
            Stat::Max => Some(1.0),
        }
    }

    /// The statistic of a name, as thresholds and grades write it.
    pub(crate) fn parse(s: &str) -> Option<Stat> {
        match s {
            "p99_9" | "p999" => Some(Stat::P999),
            _ => Stat::ALL.into_iter().find(|st| st.name() == s),
        }
    }
}

/// A figure of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// A statistic of a metric's samples (successful requests only).
    Metric(Metric, Stat),
    /// Successful requests per second of measured time.
    RequestsPerS,
    /// Output tokens per second of measured time.
    OutputTokensPerS,
    /// Failed requests as a share of those that ended (0 to 1).
    ErrorRate,
    /// Requests that met every objective of `[slo]`, as a share of those
    /// that ended (0 to 1).
    GoodputRatio,
    /// Requests per second that met every objective.
    GoodputRequestsPerS,
    /// Output tokens per second of requests that met every objective.
    GoodputOutputTokensPerS,
}

/// The figures that are not statistics of a metric.
const RUN_FIGURES: [(Figure, &str); 6] = [
    (Figure::RequestsPerS, "requests_per_s"),
    (Figure::OutputTokensPerS, "output_tokens_per_s"),
    (Figure::ErrorRate, "error_rate"),
    (Figure::GoodputRatio, "goodput_ratio"),
    (Figure::GoodputRequestsPerS, "goodput_requests_per_s"),
    (Figure::GoodputOutputTokensPerS, "goodput_output_tokens_per_s"),
];

impl Figure {
    /// Its unit: `ms`, `tokens`, `/s` or `share`.
    pub fn unit(self) -> &'static str {
        match self {
            Figure::Metric(m, _) => match m.unit() {
                Unit::Micros => "ms",
                Unit::Tokens => "tokens",
            },
            Figure::RequestsPerS
            | Figure::OutputTokensPerS
            | Figure::GoodputRequestsPerS
            | Figure::GoodputOutputTokensPerS => "/s",
            Figure::ErrorRate | Figure::GoodputRatio => "share",
        }
    }

    /// Prompt classes keep it (they keep their successful requests'
    /// latencies and tokens, not failures or per-second rates of requests).
    pub fn per_class(self) -> bool {
        match self {
            Figure::Metric(m, _) => matches!(
                m,
                Metric::Ttft | Metric::Itl | Metric::Tpot | Metric::E2e | Metric::InputTokens | Metric::OutputTokens
            ),
            Figure::OutputTokensPerS | Figure::GoodputRatio | Figure::GoodputOutputTokensPerS => true,
            Figure::RequestsPerS | Figure::ErrorRate | Figure::GoodputRequestsPerS => false,
        }
    }

    /// It needs the run's `[slo]`.
    pub fn needs_slo(self) -> bool {
        matches!(
            self,
            Figure::GoodputRatio | Figure::GoodputRequestsPerS | Figure::GoodputOutputTokensPerS
        )
    }

    /// Parses a figure's name, with an error that lists the names.
    pub fn parse(s: &str) -> Result<Figure, String> {
        if let Some((f, _)) = RUN_FIGURES.iter().find(|(_, name)| *name == s) {
            return Ok(*f);
        }
        let parsed = s
            .split_once('.')
            .and_then(|(m, st)| Some(Figure::Metric(Metric::from_name(m)?, Stat::parse(st)?)));
        parsed.ok_or_else(|| {
            let metrics: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            let stats: Vec<&str> = Stat::ALL.iter().map(|s| s.name()).collect();
            let runs: Vec<&str> = RUN_FIGURES.iter().map(|(_, n)| *n).collect();
            format!(
                "unknown figure {s:?}: a figure is METRIC.STAT, with METRIC one of {} and STAT one of {}; or one of {}",
                metrics.join(", "),
                stats.join(", "),
                runs.join(", ")
            )
        })
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Figure::Metric(m, s) => write!(f, "{}.{}", m.name(), s.name()),
            other => {
                let name = RUN_FIGURES.iter().find(|(fig, _)| fig == other).map_or("?", |(_, n)| n);
                f.write_str(name)
            }
        }
    }
}

/// How far a figure may move before a comparison fails.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// A share of the baseline's value (0.1 for 10%).
    Relative(f64),
    /// An amount in the figure's unit.
    Absolute(f64),
}

/// A regression limit: `FIGURE=+N%` fails when the figure rises by more
/// than N% (`-N%`: falls by more), `FIGURE=+N` (with `ms`, `s` or `us`
/// for times) by more than that amount; only for a change beyond noise.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    /// The limit as written.
    pub text: String,
    /// The figure.
    pub figure: Figure,
    /// `true`: a rise breaks it; `false`: a fall.
    pub rise: bool,
    /// How far.
    pub amount: Amount,
}

impl Limit {
    /// Parses `FIGURE=±AMOUNT`.
    pub fn parse(text: &str) -> Result<Limit, String> {
        let bad = |why: &str| {
            format!(
                "--fail-if {text:?}: {why} (expected FIGURE=+N% or FIGURE=-N%, such as ttft.p95=+10% or requests_per_s=-5%, or an amount in the figure's unit, such as tpot.p50=+5ms)"
            )
        };
        let (name, amount) = text.split_once('=').ok_or_else(|| bad("no '='"))?;
        let figure = Figure::parse(name.trim()).map_err(|e| format!("--fail-if {text:?}: {e}"))?;
        let amount = amount.trim();
        let (rise, rest) = match amount.split_at_checked(1) {
            Some(("+", rest)) => (true, rest),
            Some(("-", rest)) => (false, rest),
            _ => return Err(bad("the amount needs a sign: + for a rise, - for a fall")),
        };
        let number = |s: &str| -> Result<f64, String> {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(&format!("{s:?} is not a number")))
        };
        let amount = if let Some(pct) = rest.strip_suffix('%') {
            Amount::Relative(number(pct)? / 100.0)
        } else if figure.unit() == "ms" {
            let (v, scale) = if let Some(v) = rest.strip_suffix("ms") {
                (v, 1.0)
            } else if let Some(v) = rest.strip_suffix("us").or_else(|| rest.strip_suffix("µs")) {
                (v, 1e-3)
            } else if let Some(v) = rest.strip_suffix('s') {
                (v, 1e3)
            } else {
                return Err(bad("a time needs a unit: ms, s or us"));
            };
            Amount::Absolute(number(v)? * scale)
        } else {
            Amount::Absolute(number(rest)?)
        };
        Ok(Limit {
            text: text.to_owned(),
            figure,
            rise,
            amount,
        })
    }

    /// Whether moving from `baseline` to `value` goes past the limit.
    pub fn exceeded(&self, baseline: f64, value: f64) -> bool {
        let moved = if self.rise { value - baseline } else { baseline - value };
        match self.amount {
            Amount::Relative(r) => moved > r * baseline.abs(),
            Amount::Absolute(a) => moved > a,
        }
    }
}

/// Where a figure is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The run's measured time.
    Run,
    /// One prompt class, over the whole run.
    Class(String),
    /// One step of a stages or sweep load, by index from 0.
    Step(usize),
    /// Every step, one by one.
    EveryStep,
}

/// A figure in its scope: `ttft.p95`, `classes.long.ttft.p95`,
/// `steps.2.ttft.p95` or `steps.*.ttft.p95`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// Where it is read.
    pub scope: Scope,
    /// What is read.
    pub figure: Figure,
}

impl Key {
    /// Parses a key, with an error that says what a key looks like.
    pub fn parse(s: &str) -> Result<Key, String> {
        let (scope, rest) = if let Some(rest) = s.strip_prefix("classes.") {
            let (class, rest) = rest.split_once('.').ok_or_else(|| {
                format!("{s:?}: a class's figure is classes.CLASS.FIGURE, such as classes.long.ttft.p95")
            })?;
            (Scope::Class(class.to_owned()), rest)
        } else if let Some(rest) = s.strip_prefix("steps.") {
            let (step, rest) = rest.split_once('.').ok_or_else(|| {
                format!(
                    "{s:?}: a step's figure is steps.N.FIGURE (N from 0) or steps.*.FIGURE, such as steps.2.ttft.p95"
                )
            })?;
            let scope = match step {
                "*" => Scope::EveryStep,
                n => Scope::Step(n.parse().map_err(|_| {
                    format!("{s:?}: {n:?} is not a step; steps are numbered from 0, or * for every step")
                })?),
            };
            (scope, rest)
        } else {
            (Scope::Run, s)
        };
        Ok(Key {
            scope,
            figure: Figure::parse(rest)?,
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Run => {}
            Scope::Class(c) => write!(f, "classes.{c}.")?,
            Scope::Step(k) => write!(f, "steps.{k}.")?,
            Scope::EveryStep => f.write_str("steps.*.")?,
        }
        write!(f, "{}", self.figure)
    }
}

/// How a figure compares with its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Below.
    Lt,
    /// At most.
    Le,
    /// Above.
    Gt,
    /// At least.
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A threshold's condition: `< 500ms`, `>= 95%`, `> 1000`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Condition {
    /// The comparison.
    pub op: Op,
    /// The limit, in the figure's unit (a share from 0 to 1).
    pub limit: f64,
    /// The figure's unit.
    pub unit: &'static str,
}

impl Condition {
    /// Parses `OP VALUE` for `figure`: a time takes a unit (`500ms`, `2s`),
    /// a share a percentage or a fraction (`1%`, `0.95`), a rate or a count
    /// a number.
    pub fn parse(text: &str, figure: Figure) -> Result<Condition, String> {
        let text = text.trim();
        let (op, rest) = [("<=", Op::Le), (">=", Op::Ge), ("<", Op::Lt), (">", Op::Gt)]
            .into_iter()
            .find_map(|(sign, op)| text.strip_prefix(sign).map(|rest| (op, rest.trim())))
            .ok_or_else(|| {
                format!(
                    "expected a condition such as {}, got {text:?}",
                    match figure.unit() {
                        "ms" => "\"< 500ms\"",
                        "share" => "\"< 1%\" or \">= 0.95\"",
                        _ => "\"> 1000\"",
                    }
                )
            })?;
        let unit = figure.unit();
        let number = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        let limit = match unit {
            "ms" => crate::profile::parse_duration(rest)
                .ok()
                .filter(|_| rest.ends_with(|c: char| c.is_alphabetic()))
                .map(|d| d.as_secs_f64() * 1e3)
                .ok_or_else(|| format!("{rest:?} is not a time: give a unit, such as \"500ms\" or \"2s\""))?,
            "share" => match rest.strip_suffix('%') {
                Some(pct) => number(pct).map(|v| v / 100.0),
                None => number(rest),
            }
            .filter(|v| *v <= 1.0)
            .ok_or_else(|| {
                format!("{rest:?} is not a share: give a percentage such as \"1%\" or a fraction from 0 to 1")
            })?,
            _ => number(rest).ok_or_else(|| format!("{rest:?} is not a non-negative number"))?,
        };
        Ok(Condition { op, limit, unit })
    }

    /// Whether `value` meets the condition.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Op::Lt => value < self.limit,
            Op::Le => value <= self.limit,
            Op::Gt => value > self.limit,
            Op::Ge => value >= self.limit,
        }
    }

    /// A value in the condition's unit, set beside the limit: with as
    /// many digits as it takes to show which side of it the value is on.
    pub fn show_beside(&self, value: f64) -> String {
        match self.unit {
            "share" => format!("{}%", trim_beside(value * 100.0, self.limit * 100.0)),
            "ms" => format!("{} ms", trim_beside(value, self.limit)),
            "/s" => format!("{}/s", trim_beside(value, self.limit)),
            unit => format!("{} {unit}", trim_beside(value, self.limit)),
        }
    }

    /// A value in the condition's unit, for messages.
    pub fn show(&self, value: f64) -> String {
        match self.unit {
            "share" => format!("{}%", trim(value * 100.0)),
            "ms" => format!("{} ms", trim(value)),
            "/s" => format!("{}/s", trim(value)),
            unit => format!("{} {unit}", trim(value)),
        }
    }
}

/// A number to four significant digits, without trailing zeros.
fn trim(v: f64) -> String {
    trim_to(v, 4)
}

/// `v` to four significant digits, or as many more as it takes for the
/// text to stand on the same side of `limit` (as [`trim`] shows it) as
/// `v` does: 500.04 against 500 reads "500.04", not "500".
fn trim_beside(v: f64, limit: f64) -> String {
    let limit = trim(limit).parse().unwrap_or(limit);
    let side = v.partial_cmp(&limit);
    (4..=12)
        .map(|digits| trim_to(v, digits))
        .find(|s| s.parse::<f64>().ok().and_then(|shown| shown.partial_cmp(&limit)) == side)
        .unwrap_or_else(|| trim_to(v, 12))
}

/// `value` and `limit` with `decimals` decimal places, or as many more as
/// it takes for the value's text to stand on the same side of the limit's
/// as the value does: a lag of 5.039 ms against 5 ms reads "5.04" and "5",
/// never "5.0" and "5". The limit loses trailing zeros.
pub fn beside(value: f64, limit: f64, decimals: usize) -> (String, String) {
    let side = value.partial_cmp(&limit);
    let shown = |d: usize| (format!("{value:.d$}"), format!("{limit:.d$}"));
    let (v, l) = (decimals..=decimals + 9)
        .map(shown)
        .find(|(v, l)| {
            let (v, l) = (v.parse::<f64>().ok(), l.parse::<f64>().ok());
            v.zip(l).and_then(|(v, l)| v.partial_cmp(&l)) == side
        })
        .unwrap_or_else(|| shown(decimals));
    let l = if l.contains('.') {
        l.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        l
    };
    (v, l)
}

/// A number to `significant` digits, without trailing zeros: at most six
/// decimals, or nine where more than four digits are asked for.
fn trim_to(v: f64, significant: i32) -> String {
    let most = if significant > 4 { 9 } else { 6 };
    let digits = if v == 0.0 {
        0
    } else {
        (significant - 1 - v.abs().log10().floor() as i32).clamp(0, most) as usize
    };
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.text(), self.show(self.limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_beside_its_limit_shows_which_side_it_is_on() {
        // One decimal tells 5.039 from 5 no better than "5.0": two do.
        assert_eq!(beside(5.039, 5.0, 1), ("5.04".to_owned(), "5".to_owned()));
        assert_eq!(beside(4.9996, 5.0, 1), ("4.9996".to_owned(), "5".to_owned()));
        // Far from it, or on it, the usual decimals do.
        assert_eq!(beside(7.25, 5.0, 1), ("7.2".to_owned(), "5".to_owned()));
        assert_eq!(beside(5.0, 5.0, 1), ("5.0".to_owned(), "5".to_owned()));
        assert_eq!(beside(90.04, 90.0, 0), ("90.04".to_owned(), "90".to_owned()));
        // A limit that is not round is rounded as the value is, and the
        // two still read the right way round.
        assert_eq!(beside(12.34, 12.35, 1), ("12.34".to_owned(), "12.35".to_owned()));
        assert_eq!(beside(12.351, 12.35, 1), ("12.4".to_owned(), "12.3".to_owned()));

        let c = Condition::parse("< 500ms", Figure::Metric(Metric::Ttft, Stat::P95)).expect("a condition");
        assert_eq!(c.show_beside(500.04), "500.04 ms");
        assert_eq!(c.show_beside(499.99), "499.99 ms");
        assert_eq!(c.show_beside(512.345), "512.3 ms");
        assert_eq!(c.show_beside(500.0), "500 ms");
        let share = Condition::parse("<= 1%", Figure::parse("error_rate").expect("a figure")).expect("a condition");
        assert_eq!(share.show_beside(0.010_02), "1.002%");
    }

    #[test]
    fn figures_have_names_that_read_back() {
        for name in [
            "ttft.p95",
            "e2e.mean",
            "itl.p99.9",
            "output_tokens.max",
            "requests_per_s",
            "error_rate",
        ] {
            assert_eq!(Figure::parse(name).expect("a figure").to_string(), name);
        }
        assert_eq!(
            Figure::parse("tpot.p99_9"),
            Ok(Figure::Metric(Metric::Tpot, Stat::P999))
        );
        let e = Figure::parse("ttft.p96").unwrap_err();
        assert!(
            e.contains("unknown figure \"ttft.p96\"") && e.contains("p99.9") && e.contains("requests_per_s"),
            "{e}"
        );
    }

    #[test]
    fn limits_parse_with_their_units_and_say_what_is_wrong() {
        let l = Limit::parse("ttft.p95=+10%").expect("valid");
        assert_eq!((l.rise, l.amount), (true, Amount::Relative(0.1)));
        assert!(l.exceeded(100.0, 110.5) && !l.exceeded(100.0, 109.0) && !l.exceeded(100.0, 50.0));
        let l = Limit::parse("requests_per_s=-5%").expect("valid");
        assert!(l.exceeded(100.0, 94.0) && !l.exceeded(100.0, 96.0) && !l.exceeded(100.0, 200.0));
        assert_eq!(
            Limit::parse("tpot.p50=+5ms").expect("valid").amount,
            Amount::Absolute(5.0)
        );
        assert_eq!(
            Limit::parse("e2e.p99=+1.5s").expect("valid").amount,
            Amount::Absolute(1500.0)
        );
        assert_eq!(
            Limit::parse("error_rate=+0.01").expect("valid").amount,
            Amount::Absolute(0.01)
        );
        for (bad, says) in [
            ("ttft.p95", "no '='"),
            ("ttft.p95=10%", "needs a sign"),
            ("ttft.p95=+5", "needs a unit"),
            ("ttft.p95=+x%", "\"x\" is not a number"),
            ("ttft.p97=+1%", "unknown figure"),
        ] {
            let e = Limit::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_name_a_figure_in_the_run_a_class_or_a_step() {
        let k = Key::parse("classes.long.ttft.p95").expect("a key");
        assert_eq!(k.scope, Scope::Class("long".to_owned()));
        assert_eq!(k.figure, Figure::Metric(Metric::Ttft, Stat::P95));
        assert_eq!(
            Key::parse("steps.2.goodput_ratio").expect("a key").scope,
            Scope::Step(2)
        );
        assert_eq!(Key::parse("steps.*.e2e.p99").expect("a key").scope, Scope::EveryStep);
        for name in ["ttft.p95", "classes.long.itl.p99.9", "steps.*.requests_per_s"] {
            assert_eq!(Key::parse(name).expect("a key").to_string(), name);
        }
        assert!(
            Key::parse("steps.two.ttft.p95")
                .unwrap_err()
                .contains("numbered from 0")
        );
        assert!(Key::parse("classes.long").unwrap_err().contains("classes.CLASS.FIGURE"));
        assert!(Key::parse("ttft.p96").unwrap_err().contains("unknown figure"));
    }

    #[test]
    fn conditions_take_the_figures_unit() {
        let ttft = Figure::Metric(Metric::Ttft, Stat::P95);
        let c = Condition::parse("< 500ms", ttft).expect("valid");
        assert_eq!((c.op, c.limit), (Op::Lt, 500.0));
        assert!(c.holds(499.9) && !c.holds(500.0));
        assert_eq!(c.to_string(), "< 500 ms");
        assert_eq!(Condition::parse("<= 1.5s", ttft).expect("valid").limit, 1500.0);
        assert_eq!(Condition::parse("<1%", Figure::ErrorRate).expect("valid").limit, 0.01);
        let g = Condition::parse(">= 0.95", Figure::GoodputRatio).expect("valid");
        assert_eq!(g.to_string(), ">= 95%");
        assert!(g.holds(0.95) && !g.holds(0.9499));
        assert_eq!(
            Condition::parse("> 1000", Figure::OutputTokensPerS)
                .expect("valid")
                .limit,
            1000.0
        );
        for (bad, figure, says) in [
            ("500ms", ttft, "expected a condition such as \"< 500ms\""),
            ("< 500", ttft, "give a unit"),
            ("< 150%", Figure::ErrorRate, "not a share"),
            ("> lots", Figure::RequestsPerS, "not a non-negative number"),
        ] {
            let e = Condition::parse(bad, figure).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
