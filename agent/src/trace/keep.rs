//! The slowest requests of each interval, kept whatever the sample ratio,
//! and a few drawn uniformly from those the ratio exported.
//!
//! A span is built after its request completes, so the decision to keep it
//! is a tail decision: each interval keeps its [`KEEP`] slowest requests by
//! TTFT and by E2E, spans included, and exports them when the interval is
//! cut. "Slowest of the interval" is exact: every request completed in the
//! interval is offered. Offering costs one atomic load unless the request
//! is slower than the slowest kept so far, so nothing is locked per request
//! in the steady state.
//!
//! The slowest name only the tail. [`Reservoir`] draws [`SAMPLE`] requests
//! per metric and interval uniformly from the exported ones (reservoir
//! sampling), so the live endpoint has exemplars in every bucket of a
//! histogram. Offering costs an atomic increment; the lock is taken for
//! the first few requests of an interval and then with falling odds
//! (`SAMPLE / n` for the n-th).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use stampede_otel::{SpanData, TraceId};

/// Requests kept per metric and interval.
pub const KEEP: usize = 3;

/// One kept request.
#[derive(Debug)]
pub struct Kept {
    /// Its measurement, microseconds.
    pub value_us: u64,
    /// Its trace.
    pub trace_id: TraceId,
    /// Its span, when not exported already.
    pub span: Option<SpanData>,
}

/// The [`KEEP`] largest values offered since the last cut.
#[derive(Debug, Default)]
pub struct Slowest {
    /// The smallest value kept once full; 0 before.
    floor: AtomicU64,
    kept: Mutex<Vec<Kept>>,
}

impl Slowest {
    /// Offers a request; `make` builds what is kept, only when it is.
    pub fn offer(&self, value_us: u64, make: impl FnOnce() -> Kept) {
        if value_us <= self.floor.load(Ordering::Relaxed) {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= KEEP {
            let (i, min) = kept
                .iter()
                .enumerate()
                .min_by_key(|(_, k)| k.value_us)
                .map(|(i, k)| (i, k.value_us))
                .expect("a full list is not empty");
            if value_us <= min {
                return;
            }
            kept.swap_remove(i);
        }
        let mut item = make();
        item.value_us = value_us;
        kept.push(item);
        if kept.len() >= KEEP {
            let floor = kept.iter().map(|k| k.value_us).min().unwrap_or(0);
            self.floor.store(floor, Ordering::Relaxed);
        }
    }

    /// Takes what was kept, slowest first, and starts afresh.
    pub fn cut(&self) -> Vec<Kept> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        self.floor.store(0, Ordering::Relaxed);
        let mut out = std::mem::take(&mut *kept);
        out.sort_by_key(|k| std::cmp::Reverse(k.value_us));
        out
    }
}

/// Requests drawn per metric and interval from those exported.
pub const SAMPLE: usize = 4;

/// A uniform draw of at most [`SAMPLE`] of the values offered since the
/// last cut.
#[derive(Debug, Default)]
pub struct Reservoir {
    /// Values offered since the last cut.
    seen: AtomicU64,
    kept: Mutex<Vec<(u64, TraceId)>>,
}

/// A 64-bit mix (splitmix64's finaliser): the draw for the n-th offer
/// from a random trace id.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Reservoir {
    /// Offers one request's value. The draw comes from the trace id's
    /// first half (random; the ratio decision reads the second half), so
    /// no generator is shared between threads.
    pub fn offer(&self, value_us: u64, trace_id: TraceId) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        let high = u64::from_be_bytes(trace_id.to_bytes()[..8].try_into().expect("a trace id has 16 bytes"));
        let draw = mix(high ^ n);
        // Algorithm R: the n-th value (from 0) replaces a kept one with
        // probability SAMPLE / (n + 1).
        let slot = if n < SAMPLE as u64 {
            None
        } else {
            let j = draw % (n + 1);
            if j >= SAMPLE as u64 {
                return;
            }
            Some(j as usize)
        };
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        match slot {
            _ if kept.len() < SAMPLE => kept.push((value_us, trace_id)),
            Some(j) => kept[j] = (value_us, trace_id),
            // A cut raced the count: any kept one will do.
            None => kept[(draw % SAMPLE as u64) as usize] = (value_us, trace_id),
        }
    }

    /// Takes what was drawn and starts afresh.
    pub fn cut(&self) -> Vec<(u64, TraceId)> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        self.seen.store(0, Ordering::Relaxed);
        std::mem::take(&mut *kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reservoir_is_bounded_and_draws_from_the_whole_range() {
        let r = Reservoir::default();
        // Fewer than SAMPLE: all kept.
        for v in 1..=3u64 {
            r.offer(v, TraceId::from(u128::from(v) << 64));
        }
        let mut few: Vec<u64> = r.cut().iter().map(|k| k.0).collect();
        few.sort_unstable();
        assert_eq!(few, [1, 2, 3]);
        assert!(r.cut().is_empty());
        // Many intervals of 1,000 values each: every draw holds SAMPLE,
        // and over the draws every decile of the range is picked, near
        // its share (uniform: 10 % each).
        let mut deciles = [0u32; 10];
        for interval in 0..500u64 {
            for v in 0..1000u64 {
                let id = TraceId::from(u128::from(mix(interval * 1000 + v + 1)) << 64 | 1);
                r.offer(v, id);
            }
            let kept = r.cut();
            assert_eq!(kept.len(), SAMPLE);
            for (v, _) in kept {
                deciles[(v / 100) as usize] += 1;
            }
        }
        let all: u32 = deciles.iter().sum();
        for (i, n) in deciles.iter().enumerate() {
            let share = f64::from(*n) / f64::from(all);
            assert!((0.07..0.13).contains(&share), "decile {i}: {share:.3} of {deciles:?}");
        }
    }

    #[test]
    fn keeps_exactly_the_slowest_and_starts_afresh() {
        let s = Slowest::default();
        let values = [5u64, 90, 7, 300, 1, 42, 299, 8, 300];
        for (i, v) in values.iter().enumerate() {
            s.offer(*v, || Kept {
                value_us: 0,
                trace_id: TraceId::from(i as u128 + 1),
                span: None,
            });
        }
        let kept: Vec<u64> = s.cut().iter().map(|k| k.value_us).collect();
        assert_eq!(kept, [300, 300, 299]);
        assert!(s.cut().is_empty());
        s.offer(1, || Kept {
            value_us: 0,
            trace_id: TraceId::from(1),
            span: None,
        });
        assert_eq!(s.cut().len(), 1);
    }
}
