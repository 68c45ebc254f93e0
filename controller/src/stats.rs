//! Summary statistics of one histogram. Percentiles are always read from a
//! histogram holding every sample; they are never averaged.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Quantiles reported for every metric.
pub const QUANTILES: [(&str, f64); 6] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

/// Count, mean, extremes and quantiles, in the histogram's unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Stats {
    /// Samples.
    pub count: u64,
    /// Arithmetic mean of the samples.
    pub mean: f64,
    /// Smallest sample.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 95th percentile.
    pub p95: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    #[serde(rename = "p99_9")]
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Stats {
    /// Statistics of `h`; all zero when it is empty.
    pub fn of(h: &Histogram<u64>) -> Stats {
        if h.is_empty() {
            return Stats::default();
        }
        Stats {
            count: h.len(),
            mean: h.mean(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// The values in [`QUANTILES`] order, with min first and mean last.
    pub fn row(&self) -> [u64; 7] {
        [self.min, self.p50, self.p90, self.p95, self.p99, self.p999, self.max]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_one_to_a_thousand() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let s = Stats::of(&h);
        assert_eq!((s.count, s.min, s.max), (1000, 1, 1000));
        assert_eq!((s.p50, s.p90, s.p99), (500, 900, 990));
        assert!((s.mean - 500.5).abs() < 0.5);
        assert_eq!(Stats::of(&Histogram::new(3).unwrap()), Stats::default());
    }
}
