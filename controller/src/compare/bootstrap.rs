//! Whether two runs differ beyond noise: a block bootstrap over their
//! reporting intervals.
//!
//! Requests in a load test are not independent: a queue that builds up
//! slows many consecutive requests at once, so a test that treats every
//! request as a separate draw (such as a confidence interval for a
//! quantile from its order statistics) calls a run-to-run wobble a
//! change. The reporting interval is the unit the data keeps exactly
//! (each one's merged histogram), so each run is resampled by interval:
//! draw as many intervals as it has, with replacement, merge their
//! histograms, read the figure; do it [`REPLICATES`] times for each run
//! and take the 2.5th and 97.5th percentiles of the difference between
//! the two. Runs of more than [`MAX_BLOCKS`] intervals are resampled in
//! blocks of consecutive intervals, which keeps the cost bounded and
//! carries slower drifts within a block. Replicates are drawn from a
//! fixed seed, so a comparison is the same every time it is made.

use std::collections::BTreeMap;
use std::ops::Range;

use hdrhistogram::Histogram;

/// Bootstrap replicates per figure.
pub const REPLICATES: usize = 1000;
/// Most blocks a run is cut into.
pub const MAX_BLOCKS: usize = 200;
/// Fewest blocks with samples, on each side, for a verdict.
pub const MIN_BLOCKS: usize = 5;
/// The interval's coverage.
pub const CONFIDENCE: f64 = 0.95;

/// One metric's samples in one run, block by block, over the distinct
/// values the run recorded.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    /// Distinct values, ascending, as a histogram reports them at a
    /// quantile (the highest value equivalent to the recorded one).
    values: Vec<u64>,
    /// The same values as a histogram's mean counts them (the median
    /// equivalent).
    centres: Vec<f64>,
    /// Per block: (index into `values`, count).
    blocks: Vec<Vec<(u32, u64)>>,
}

/// Gathers one metric's samples interval by interval, to be cut into
/// blocks later.
#[derive(Debug, Default)]
pub struct Gather {
    centres: BTreeMap<u64, f64>,
    intervals: BTreeMap<u64, BTreeMap<u64, u64>>,
}

impl Gather {
    /// Adds `h` to interval `interval`.
    pub fn add(&mut self, interval: u64, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        let counts = self.intervals.entry(interval).or_default();
        for v in h.iter_recorded() {
            let value = h.highest_equivalent(v.value_iterated_to());
            *counts.entry(value).or_default() += v.count_at_value();
            self.centres
                .entry(value)
                .or_insert_with(|| h.median_equivalent(value) as f64);
        }
    }

    /// The samples of `blocks`, each a list of intervals.
    pub fn samples(&self, blocks: &[Vec<u64>]) -> Samples {
        let mut merged: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); blocks.len()];
        let mut seen = BTreeMap::new();
        for (b, intervals) in blocks.iter().enumerate() {
            for i in intervals {
                for (v, n) in self.intervals.get(i).into_iter().flatten() {
                    *merged[b].entry(*v).or_default() += n;
                    seen.insert(*v, self.centres[v]);
                }
            }
        }
        let values: Vec<u64> = seen.keys().copied().collect();
        let index = |v: &u64| values.binary_search(v).expect("every value was seen") as u32;
        Samples {
            blocks: merged
                .iter()
                .map(|b| b.iter().map(|(v, n)| (index(v), *n)).collect())
                .collect(),
            centres: seen.into_values().collect(),
            values,
        }
    }
}

/// Which blocks a replicate draws from together: a run's steps (and its
/// drain) are strata, and a replicate draws within each as many blocks as
/// it holds, so that every replicate keeps a sweep's mix of loads.
pub type Strata = Vec<Range<usize>>;

/// `groups` of intervals (each in order) cut into blocks of consecutive
/// intervals within their group, at most about [`MAX_BLOCKS`] in all, and
/// the strata those blocks form.
pub fn blocks(groups: &[Vec<u64>]) -> (Vec<Vec<u64>>, Strata) {
    let total: usize = groups.iter().map(Vec::len).sum();
    let size = total.div_ceil(MAX_BLOCKS).max(1);
    let mut blocks = Vec::new();
    let mut strata = Vec::new();
    for group in groups.iter().filter(|g| !g.is_empty()) {
        let start = blocks.len();
        blocks.extend(group.chunks(size).map(<[u64]>::to_vec));
        strata.push(start..blocks.len());
    }
    (blocks, strata)
}

/// A figure read from merged samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Statistic {
    /// The mean, as a histogram computes it.
    Mean,
    /// The value at a quantile (0 to 1), as a histogram reads it.
    Quantile(f64),
}

impl Samples {
    /// Blocks with at least one sample.
    pub fn filled(&self) -> usize {
        self.blocks.iter().filter(|b| !b.is_empty()).count()
    }

    /// Blocks in all.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// No block at all.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// `stat` of the blocks drawn (by index, repeats allowed), in the
    /// metric's unit; `None` without samples.
    fn read(&self, drawn: &[usize], stat: Statistic, counts: &mut Vec<u64>) -> Option<f64> {
        counts.clear();
        counts.resize(self.values.len(), 0);
        let mut total = 0u64;
        for &b in drawn {
            for &(i, n) in &self.blocks[b] {
                counts[i as usize] += n;
                total += n;
            }
        }
        if total == 0 {
            return None;
        }
        Some(match stat {
            Statistic::Mean => counts
                .iter()
                .zip(&self.centres)
                .map(|(n, c)| c * *n as f64 / total as f64)
                .sum(),
            Statistic::Quantile(q) => {
                let target = ((q.min(1.0) * total as f64).ceil() as u64).max(1);
                let mut seen = 0;
                let at = counts
                    .iter()
                    .position(|n| {
                        seen += n;
                        seen >= target
                    })
                    .unwrap_or(counts.len() - 1);
                self.values[at] as f64
            }
        })
    }

    /// `stat` over every block.
    pub fn whole(&self, stat: Statistic) -> Option<f64> {
        let all: Vec<usize> = (0..self.blocks.len()).collect();
        self.read(&all, stat, &mut Vec::new())
    }
}

/// A ratio of two sums over blocks: requests per second, an error rate.
#[derive(Clone, Debug, Default)]
pub struct Ratio {
    /// Per block: (numerator, denominator).
    pub blocks: Vec<(f64, f64)>,
}

impl Ratio {
    fn read(&self, drawn: &[usize]) -> Option<f64> {
        let (n, d) = drawn
            .iter()
            .map(|&b| self.blocks[b])
            .fold((0.0, 0.0), |(n, d), (a, b)| (n + a, d + b));
        (d > 0.0).then(|| n / d)
    }

    /// The ratio over every block.
    pub fn whole(&self) -> Option<f64> {
        let all: Vec<usize> = (0..self.blocks.len()).collect();
        self.read(&all)
    }
}

/// What is compared: a statistic of samples, or a ratio.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A statistic of one metric's samples.
    Samples(&'a Samples, Statistic),
    /// A ratio of sums.
    Ratio(&'a Ratio),
}

impl Source<'_> {
    fn blocks(&self) -> usize {
        match self {
            Source::Samples(s, _) => s.len(),
            Source::Ratio(r) => r.blocks.len(),
        }
    }

    fn filled(&self) -> usize {
        match self {
            Source::Samples(s, _) => s.filled(),
            Source::Ratio(r) => r.blocks.iter().filter(|(_, d)| *d > 0.0).count(),
        }
    }

    fn read(&self, drawn: &[usize], counts: &mut Vec<u64>) -> Option<f64> {
        match self {
            Source::Samples(s, stat) => s.read(drawn, *stat, counts),
            Source::Ratio(r) => r.read(drawn),
        }
    }
}

/// How far a replicate's difference strays from the whole runs'
/// difference: add it to that difference for the interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    /// The lower end's offset.
    pub low: f64,
    /// The upper end's offset.
    pub high: f64,
}

/// A figure's source in one run, with the run's strata.
#[derive(Clone, Copy, Debug)]
pub struct Drawn<'a> {
    /// Where the figure is read from.
    pub source: Source<'a>,
    /// Which blocks are drawn together.
    pub strata: &'a [Range<usize>],
}

/// Why no interval could be drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoInterval {
    /// A side has fewer than [`MIN_BLOCKS`] blocks with samples.
    TooFew {
        /// Blocks with samples in the baseline.
        baseline: usize,
        /// Blocks with samples in the other run.
        other: usize,
    },
}

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// The [`CONFIDENCE`] spread of `other − baseline`, drawn with `seed`,
/// in the unit of the samples.
pub fn interval(baseline: Drawn<'_>, other: Drawn<'_>, seed: u64) -> Result<Spread, NoInterval> {
    let (fa, fb) = (baseline.source.filled(), other.source.filled());
    let too_few = NoInterval::TooFew {
        baseline: fa,
        other: fb,
    };
    if fa < MIN_BLOCKS || fb < MIN_BLOCKS {
        return Err(too_few);
    }
    let mut counts = Vec::new();
    let all = |d: &Drawn<'_>| (0..d.source.blocks()).collect::<Vec<_>>();
    let (Some(a), Some(b)) = (
        baseline.source.read(&all(&baseline), &mut counts),
        other.source.read(&all(&other), &mut counts),
    ) else {
        return Err(too_few);
    };
    let whole = b - a;
    let mut rng = Rng(seed);
    let draw = |d: &Drawn<'_>, rng: &mut Rng, into: &mut Vec<usize>| {
        into.clear();
        for stratum in d.strata {
            for _ in stratum.clone() {
                into.push(stratum.start + rng.below(stratum.len()));
            }
        }
    };
    let (mut da, mut db) = (Vec::new(), Vec::new());
    let mut errors = Vec::with_capacity(REPLICATES);
    for _ in 0..REPLICATES {
        draw(&baseline, &mut rng, &mut da);
        draw(&other, &mut rng, &mut db);
        // A replicate that drew only empty blocks says nothing.
        if let (Some(a), Some(b)) = (
            baseline.source.read(&da, &mut counts),
            other.source.read(&db, &mut counts),
        ) {
            errors.push(b - a - whole);
        }
    }
    errors.sort_by(f64::total_cmp);
    let at = |q: f64| errors[((q * (errors.len() - 1) as f64).round() as usize).min(errors.len() - 1)];
    let tail = (1.0 - CONFIDENCE) / 2.0;
    Ok(Spread {
        low: at(tail),
        high: at(1.0 - tail),
    })
}

/// A seed for one figure, from its name, so that every figure draws its
/// own replicates and the same ones each time.
pub fn seed(name: &str) -> u64 {
    name.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        for v in values {
            h.record(v).expect("in range");
        }
        h
    }

    /// `blocks` intervals of `per` samples around `centre` (a spread of
    /// ±20%, so that no two runs' values coincide by accident), one
    /// stratum.
    fn run(blocks: u64, per: u64, centre: u64, salt: u64) -> (Samples, Strata) {
        let mut g = Gather::default();
        let mut rng = Rng(salt);
        for b in 0..blocks {
            let values: Vec<u64> = (0..per)
                .map(|_| centre * 8 / 10 + rng.below((centre * 4 / 10) as usize) as u64)
                .collect();
            g.add(b, &histogram(values));
        }
        let (cut, strata) = self::blocks(&[(0..blocks).collect()]);
        (g.samples(&cut), strata)
    }

    fn of(run: &(Samples, Strata), stat: Statistic) -> Drawn<'_> {
        Drawn {
            source: Source::Samples(&run.0, stat),
            strata: &run.1,
        }
    }

    #[test]
    fn the_whole_run_reads_as_its_merged_histogram() {
        let mut g = Gather::default();
        let mut merged = histogram([]);
        for b in 0..7u64 {
            let h = histogram((0..50).map(|k| 1_000 + k * 977 + b * 12_345));
            merged.add(&h).expect("same bounds");
            g.add(b, &h);
        }
        // Seven intervals in three blocks read as one histogram too.
        let s = g.samples(&[vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
        for q in [0.0, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0] {
            assert_eq!(
                s.whole(Statistic::Quantile(q)),
                Some(merged.value_at_quantile(q) as f64),
                "quantile {q}"
            );
        }
        let mean = s.whole(Statistic::Mean).expect("samples");
        assert!(
            (mean - merged.mean()).abs() < 1e-6 * merged.mean(),
            "{mean} against {}",
            merged.mean()
        );
    }

    #[test]
    fn the_same_process_twice_is_within_the_interval_and_a_shift_is_not() {
        let a = run(30, 40, 200_000, 1);
        let b = run(30, 40, 200_000, 2);
        let c = run(30, 40, 240_000, 3);
        let whole = |x: &(Samples, Strata), y: &(Samples, Strata), stat| {
            y.0.whole(stat).expect("samples") - x.0.whole(stat).expect("samples")
        };
        for stat in [Statistic::Mean, Statistic::Quantile(0.5), Statistic::Quantile(0.95)] {
            let same = interval(of(&a, stat), of(&b, stat), 7).expect("enough blocks");
            let d = whole(&a, &b, stat);
            assert!(d + same.low <= 0.0 && 0.0 <= d + same.high, "{stat:?}: {d} {same:?}");
            let up = interval(of(&a, stat), of(&c, stat), 7).expect("enough blocks");
            assert!(whole(&a, &c, stat) + up.low > 0.0, "{stat:?}: {up:?}");
            let down = interval(of(&c, stat), of(&a, stat), 7).expect("enough blocks");
            assert!(whole(&c, &a, stat) + down.high < 0.0, "{stat:?}: {down:?}");
        }
    }

    #[test]
    fn intervals_are_the_same_every_time_and_need_enough_blocks() {
        let a = run(10, 20, 1_000, 4);
        let b = run(10, 20, 1_100, 5);
        let s = Statistic::Quantile(0.9);
        assert_eq!(interval(of(&a, s), of(&b, s), 9), interval(of(&a, s), of(&b, s), 9));
        let short = run(4, 20, 1_000, 6);
        assert_eq!(
            interval(of(&short, s), of(&b, s), 9),
            Err(NoInterval::TooFew { baseline: 4, other: 10 })
        );
    }

    #[test]
    fn strata_keep_a_sweeps_mix_in_every_replicate() {
        // Two steps far apart: 20 intervals at 100 ms, 20 at 1 s. Drawn
        // across both, a replicate's median jumps between the two; drawn
        // within each, it stays put, as it does between two such runs.
        let mut g = Gather::default();
        for i in 0..40u64 {
            let centre = if i < 20 { 100_000 } else { 1_000_000 };
            g.add(i, &histogram((0..10).map(|k| centre + k * 100 + i)));
        }
        let (cut, strata) = blocks(&[(0..20).collect(), (20..40).collect()]);
        assert_eq!(strata, [0..20, 20..40]);
        let s = g.samples(&cut);
        let p50 = Statistic::Quantile(0.5);
        let stratified = Drawn {
            source: Source::Samples(&s, p50),
            strata: &strata,
        };
        let one = vec![Range { start: 0, end: 40 }];
        let mixed = Drawn {
            source: Source::Samples(&s, p50),
            strata: &one,
        };
        let within = interval(stratified, stratified, 3).expect("enough blocks");
        let across = interval(mixed, mixed, 3).expect("enough blocks");
        assert!(within.high - within.low < 1_000.0, "{within:?}");
        assert!(across.high - across.low > 100_000.0, "{across:?}");
    }

    #[test]
    fn long_runs_are_cut_into_at_most_max_blocks() {
        let short: Vec<u64> = (0..7).collect();
        assert_eq!(blocks(&[short]).0.len(), 7);
        let (b, strata) = blocks(&[(0..1_800).collect(), (1_800..3_601).collect()]);
        assert!(b.len() <= MAX_BLOCKS + 1, "{}", b.len());
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 3_601);
        assert_eq!(b[0], (0..19).collect::<Vec<_>>());
        assert_eq!(strata.len(), 2);
        assert_eq!(b[strata[1].start][0], 1_800, "no block straddles two steps");
    }

    #[test]
    fn ratios_compare_rates() {
        let steady = |rate: f64| Ratio {
            blocks: (0..20).map(|k| (rate + (k % 3) as f64, 1.0)).collect(),
        };
        let (a, b) = (steady(100.0), steady(80.0));
        let whole = a.whole().expect("time passed");
        assert!((whole - 100.95).abs() < 1e-9, "{whole}");
        let strata = vec![Range { start: 0, end: 20 }];
        let drawn = |r| Drawn {
            source: Source::Ratio(r),
            strata: &strata,
        };
        let i = interval(drawn(&a), drawn(&b), 1).expect("enough blocks");
        assert!(-20.0 + i.high < 0.0 && i.low > -1.5 && i.high < 1.5, "{i:?}");
    }
}
