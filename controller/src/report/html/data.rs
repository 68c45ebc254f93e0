//! What the HTML report shows that `summary.json` does not hold: the
//! per-interval tails, errors by class per interval, the parts of TTFT,
//! and the percentile distributions.
//!
//! Everything here is computed from the merged interval rows and the
//! measured histograms, both of which `intervals.jsonl` holds exactly, so
//! the report can be rebuilt from a run directory without the agents.

use std::collections::{BTreeMap, BTreeSet};

use stampede_proto::{ErrorClass, Histograms, Metric};

use crate::merge::Row;
use crate::results::{Collected, GpuFigure};
use crate::stats::Stats;

/// The metrics whose percentile distributions the report draws.
pub const DISTRIBUTIONS: [Metric; 4] = [Metric::Ttft, Metric::Itl, Metric::Tpot, Metric::E2e];

/// Quantile steps per halving of the distance to 100%: HdrHistogram's
/// own percentile output uses 5, which gives about 10 points per decade
/// of the x axis.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// The report's figures beyond the summary.
#[derive(Clone, Debug, Default)]
pub struct ReportData {
    /// One entry per merged interval, in interval order.
    pub intervals: Vec<IntervalData>,
    /// The error classes seen in any interval, in the order of each
    /// interval's `errors`.
    pub error_classes: Vec<String>,
    /// Where TTFT goes over the measured run (warm-ups left out).
    pub ttft_parts: TtftParts,
    /// Percentile distributions of the measured run, one per metric of
    /// [`DISTRIBUTIONS`].
    pub distributions: Vec<Distribution>,
    /// The agents' own GPU readings (NVML), mean utilisation 0 to 1 by
    /// interval; empty when no agent sampled a GPU. These are the one
    /// figure taken from the agents' records rather than the rows.
    pub gpu: BTreeMap<u64, f64>,
}

/// One interval's figures over all agents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntervalData {
    /// Index, as in `summary.json` `intervals`.
    pub interval: u64,
    /// TTFT 99th percentile, ms.
    pub ttft_p99_ms: Option<f64>,
    /// ITL 99th percentile, ms.
    pub itl_p99_ms: Option<f64>,
    /// TTFT mean, ms: the whole bar of "where TTFT goes".
    pub ttft_mean_ms: Option<f64>,
    /// Client queue mean (intended start to t0), ms.
    pub client_queue_mean_ms: Option<f64>,
    /// Prompt processing time the server reported per request (Ollama),
    /// mean, ms.
    pub server_prefill_mean_ms: Option<f64>,
    /// Failed requests of each class of [`ReportData::error_classes`].
    pub errors: Vec<u64>,
}

/// The client's side of where TTFT goes, over the measured run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TtftParts {
    /// TTFT mean, ms.
    pub ttft_mean_ms: Option<f64>,
    /// Client queue mean, ms.
    pub client_queue_mean_ms: Option<f64>,
    /// Server-reported prompt processing mean, ms.
    pub server_prefill_mean_ms: Option<f64>,
}

/// One metric's percentile distribution, as HdrHistogram's plotter draws
/// it: value against quantile.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    /// The metric.
    pub metric: Metric,
    /// Samples.
    pub count: u64,
    /// Points in increasing quantile; the last is the largest sample at
    /// quantile 1.
    pub points: Vec<Quantile>,
}

/// One point of a distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quantile {
    /// Quantile iterated to, 0 to 1.
    pub quantile: f64,
    /// The highest value equivalent to the one at that quantile, ms.
    pub value_ms: f64,
}

fn mean_ms(s: &Stats) -> Option<f64> {
    (s.count > 0).then(|| s.mean / 1e3)
}

fn ms(s: &Stats, v: u64) -> Option<f64> {
    (s.count > 0).then(|| v as f64 / 1e3)
}

impl ReportData {
    /// The figures of merged `rows` and the run's `measured` histograms.
    pub fn new(rows: &[Row], measured: &Histograms) -> ReportData {
        let classes: BTreeSet<ErrorClass> = rows
            .iter()
            .flat_map(|r| r.counters.errors.iter().filter(|(_, n)| **n > 0).map(|(c, _)| *c))
            .collect();
        let intervals = rows
            .iter()
            .map(|r| {
                let (ttft, itl) = (r.get(Metric::Ttft), r.get(Metric::Itl));
                IntervalData {
                    interval: r.interval,
                    ttft_p99_ms: ms(ttft, ttft.p99),
                    itl_p99_ms: ms(itl, itl.p99),
                    ttft_mean_ms: mean_ms(ttft),
                    client_queue_mean_ms: mean_ms(r.get(Metric::ClientQueue)),
                    server_prefill_mean_ms: mean_ms(r.get(Metric::ServerPrefill)),
                    errors: classes
                        .iter()
                        .map(|c| r.counters.errors.get(c).copied().unwrap_or(0))
                        .collect(),
                }
            })
            .collect();
        let stats = |m| Stats::of(measured.get(m));
        ReportData {
            intervals,
            error_classes: classes.iter().map(ToString::to_string).collect(),
            ttft_parts: TtftParts {
                ttft_mean_ms: mean_ms(&stats(Metric::Ttft)),
                client_queue_mean_ms: mean_ms(&stats(Metric::ClientQueue)),
                server_prefill_mean_ms: mean_ms(&stats(Metric::ServerPrefill)),
            },
            distributions: DISTRIBUTIONS.iter().map(|m| distribution(*m, measured)).collect(),
            gpu: BTreeMap::new(),
        }
    }

    /// The figures of a finished run, with the agents' GPU readings.
    pub fn of(c: &Collected, interval_s: f64) -> ReportData {
        let measured = c.merger.measured();
        let mut data = ReportData::new(&c.rows, &measured.histograms);
        data.gpu = c.gpu(GpuFigure::Utilisation, interval_s);
        data
    }
}

/// The percentile distribution of one metric.
pub(super) fn distribution(metric: Metric, h: &Histograms) -> Distribution {
    let h = h.get(metric);
    let mut points: Vec<Quantile> = Vec::new();
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            let q = v.quantile_iterated_to();
            if q >= 1.0 {
                break;
            }
            points.push(Quantile {
                quantile: q,
                value_ms: h.highest_equivalent(v.value_iterated_to()) as f64 / 1e3,
            });
        }
        points.push(Quantile {
            quantile: 1.0,
            value_ms: h.max() as f64 / 1e3,
        });
    }
    Distribution {
        metric,
        count: h.len(),
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Place;
    use stampede_proto::Counters;

    fn row(interval: u64, ttfts: &[u64], errors: &[(ErrorClass, u64)]) -> Row {
        let mut h = Histograms::new();
        for &v in ttfts {
            h.record(Metric::Ttft, v);
            h.record(Metric::ClientQueue, v / 10);
        }
        Row {
            interval,
            place: Place::Step(0),
            counters: Counters {
                ok: ttfts.len() as u64,
                errors: errors.iter().copied().collect(),
                ..Counters::default()
            },
            stats: Metric::ALL.map(|m| Stats::of(h.get(m))),
            cpu: 0.0,
            length_s: 1.0,
            present_s: None,
            class_ttft: Default::default(),
        }
    }

    #[test]
    fn errors_line_up_by_class_and_empty_intervals_have_no_figures() {
        let rows = [
            row(0, &[], &[(ErrorClass::Timeout, 2)]),
            row(
                1,
                &[1_000, 2_000],
                &[(ErrorClass::Status(503), 1), (ErrorClass::Timeout, 1)],
            ),
        ];
        let d = ReportData::new(&rows, &Histograms::new());
        assert_eq!(d.error_classes, ["timeout", "http_503"]);
        assert_eq!(d.intervals[0].errors, [2, 0]);
        assert_eq!(d.intervals[1].errors, [1, 1]);
        assert_eq!(d.intervals[0].ttft_mean_ms, None);
        // Below 2,048 us the histograms are exact.
        assert_eq!(d.intervals[1].ttft_mean_ms, Some(1.5));
        assert_eq!(d.intervals[1].client_queue_mean_ms, Some(0.15));
        assert_eq!(d.intervals[1].ttft_p99_ms, Some(2.0));
        assert_eq!(d.intervals[1].server_prefill_mean_ms, None);
    }

    #[test]
    fn distributions_rise_to_the_maximum_at_quantile_one() {
        let mut h = Histograms::new();
        for v in 1..=10_000u64 {
            h.record(Metric::Ttft, v * 100);
        }
        let d = distribution(Metric::Ttft, &h);
        assert_eq!(d.count, 10_000);
        let last = d.points.last().unwrap();
        assert_eq!(last.quantile, 1.0);
        assert!((last.value_ms - 1000.0).abs() < 1.0, "{last:?}");
        assert!(d.points.windows(2).all(|w| w[0].quantile < w[1].quantile));
        assert!(d.points.windows(2).all(|w| w[0].value_ms <= w[1].value_ms));
        // Past 99.9% with 10,000 samples, at about 10 points a decade.
        assert!(d.points.iter().any(|p| p.quantile > 0.999));
        assert!((30..200).contains(&d.points.len()), "{}", d.points.len());
        let empty = distribution(Metric::Itl, &h);
        assert_eq!((empty.count, empty.points.len()), (0, 0));
    }
}
