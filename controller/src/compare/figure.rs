//! Names of a run's figures (`ttft.p95`, `requests_per_s`, ...) and the
//! regression limits `--fail-if` takes (`ttft.p95=+10%`).

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

    fn parse(s: &str) -> Option<Stat> {
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
}

/// The figures that are not statistics of a metric.
const RUN_FIGURES: [(Figure, &str); 3] = [
    (Figure::RequestsPerS, "requests_per_s"),
    (Figure::OutputTokensPerS, "output_tokens_per_s"),
    (Figure::ErrorRate, "error_rate"),
];

impl Figure {
    /// Its unit: `ms`, `tokens`, `/s` or `share`.
    pub fn unit(self) -> &'static str {
        match self {
            Figure::Metric(m, _) => match m.unit() {
                Unit::Micros => "ms",
                Unit::Tokens => "tokens",
            },
            Figure::RequestsPerS | Figure::OutputTokensPerS => "/s",
            Figure::ErrorRate => "share",
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
