//! The slowest requests of each interval, kept whatever the sample ratio.
//!
//! A span is built after its request completes, so the decision to keep it
//! is a tail decision: each interval keeps its [`KEEP`] slowest requests by
//! TTFT and by E2E, spans included, and exports them when the interval is
//! cut. "Slowest of the interval" is exact: every request completed in the
//! interval is offered. Offering costs one atomic load unless the request
//! is slower than the slowest kept so far, so nothing is locked per request
//! in the steady state.

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

#[cfg(test)]
mod tests {
    use super::*;

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
