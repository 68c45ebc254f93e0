//! Quantiles of the server's queue time: exact order statistics of its
//! spans' durations, or interpolated within a Prometheus histogram's
//! buckets exactly as PromQL's `histogram_quantile` does.

/// A quantile read from cumulative buckets, and the bucket it lies in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interpolated {
    /// The value, in the histogram's unit.
    pub value: f64,
    /// The bucket's lower bound (the previous bucket's `le`, or 0).
    pub lower: f64,
    /// The bucket's `le`; infinite for the `+Inf` bucket.
    pub upper: f64,
}

/// The `q` quantile (0 to 1) of cumulative `buckets` (`le`, count), sorted
/// by `le` and ending with `+Inf`, as `histogram_quantile` computes it: the
/// rank `q × count`; the first bucket whose cumulative count reaches it;
/// linear interpolation between that bucket's lower and upper bounds (the
/// first bucket's lower bound is 0 when its `le` is positive). A rank in
/// the `+Inf` bucket gives the highest finite bound. `None` without
/// observations or without a `+Inf` bucket.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<Interpolated> {
    let (&(last_le, total), finite) = buckets.split_last()?;
    if !(0.0..=1.0).contains(&q) || last_le != f64::INFINITY || total <= 0.0 || finite.is_empty() {
        return None;
    }
    let rank = q * total;
    let Some(b) = finite.iter().position(|&(_, count)| count >= rank) else {
        let highest = finite[finite.len() - 1].0;
        return Some(Interpolated {
            value: highest,
            lower: highest,
            upper: f64::INFINITY,
        });
    };
    let (upper, count) = finite[b];
    if b == 0 && upper <= 0.0 {
        return Some(Interpolated {
            value: upper,
            lower: upper,
            upper,
        });
    }
    let (lower, before) = if b == 0 { (0.0, 0.0) } else { finite[b - 1] };
    let in_bucket = count - before;
    let value = if in_bucket > 0.0 {
        lower + (upper - lower) * ((rank - before) / in_bucket)
    } else {
        upper
    };
    Some(Interpolated { value, lower, upper })
}

/// The `q` quantile of `sorted` values, as HDR histograms read one: the
/// `ceil(q × n)`-th smallest (the smallest for `q` = 0).
pub fn nearest_rank(q: f64, sorted: &[u64]) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn interpolation_is_linear_within_the_bucket_as_promql_does_it() {
        // 10 observations at or under 0.1, 30 more under 0.2, 60 more under
        // 0.5: 100 in all.
        let b = [(0.1, 10.0), (0.2, 40.0), (0.5, 100.0), (INF, 100.0)];
        // Rank 50 lies in (0.2, 0.5]: 10 of its 60, so 0.2 + 0.3 × 10/60.
        let p50 = histogram_quantile(0.5, &b).unwrap();
        assert!((p50.value - 0.25).abs() < 1e-12, "{p50:?}");
        assert_eq!((p50.lower, p50.upper), (0.2, 0.5));
        // Rank 5 in the first bucket, from 0: 0.1 × 5/10.
        let p05 = histogram_quantile(0.05, &b).unwrap();
        assert!((p05.value - 0.05).abs() < 1e-12);
        assert_eq!((p05.lower, p05.upper), (0.0, 0.1));
        // Rank 40 is reached by the second bucket exactly: its upper bound.
        assert!((histogram_quantile(0.4, &b).unwrap().value - 0.2).abs() < 1e-12);
        assert!((histogram_quantile(1.0, &b).unwrap().value - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_inf_bucket_gives_the_highest_finite_bound_and_nothing_gives_none() {
        let b = [(0.1, 10.0), (0.2, 40.0), (INF, 100.0)];
        let p99 = histogram_quantile(0.99, &b).unwrap();
        assert_eq!(
            p99,
            Interpolated {
                value: 0.2,
                lower: 0.2,
                upper: INF
            }
        );
        assert_eq!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]), None);
        assert_eq!(histogram_quantile(0.5, &[(0.1, 3.0)]), None, "no +Inf bucket");
        assert_eq!(histogram_quantile(1.5, &b), None);
        // A first bucket at or under zero is its own value.
        let neg = [(0.0, 5.0), (1.0, 10.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.3, &neg).unwrap().value, 0.0);
    }

    #[test]
    fn nearest_rank_reads_as_hdr_does() {
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(nearest_rank(0.5, &v), Some(5));
        assert_eq!(nearest_rank(0.9, &v), Some(9));
        assert_eq!(nearest_rank(0.99, &v), Some(10));
        assert_eq!(nearest_rank(0.0, &v), Some(1));
        assert_eq!(nearest_rank(0.5, &[]), None);
    }
}
