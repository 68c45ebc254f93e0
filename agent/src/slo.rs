//! Per-request objectives (goodput): a successful request is good when it
//! meets every objective the run sets.

use std::time::Duration;

use stampede_proto::pb;

use crate::record::Sample;

/// The run's objectives; `None` sets none on that figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slo {
    /// Time to first token at most this.
    pub ttft: Option<Duration>,
    /// Time per output token at most this.
    pub tpot: Option<Duration>,
    /// End to end at most this.
    pub e2e: Option<Duration>,
    /// Every inter-token latency at most this (per token: an event's gap
    /// split among its tokens).
    pub itl: Option<Duration>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Slo {
    /// The objectives an assignment sets; `None` when it sets none.
    pub fn from_wire(wire: Option<&pb::Slo>) -> Option<Slo> {
        let w = wire?;
        let set = |us: u64| (us > 0).then(|| Duration::from_micros(us));
        let slo = Slo {
            ttft: set(w.ttft_us),
            tpot: set(w.tpot_us),
            e2e: set(w.e2e_us),
            itl: set(w.itl_us),
        };
        (slo != Slo::default()).then_some(slo)
    }

    /// The wire form.
    pub fn to_wire(&self) -> pb::Slo {
        let us = |d: Option<Duration>| d.map_or(0, micros);
        pb::Slo {
            ttft_us: us(self.ttft),
            tpot_us: us(self.tpot),
            e2e_us: us(self.e2e),
            itl_us: us(self.itl),
        }
    }

    /// Whether a successful request met every objective. A request that
    /// streamed no token is held to the TTFT objective by its end-to-end
    /// time (its first byte of an answer came no sooner); one with fewer
    /// than two tokens has no TPOT and meets that objective; one with no
    /// gap between tokens meets the ITL objective. The ITL objective holds
    /// each token's share of its event's gap (the largest, when the gap
    /// does not divide evenly), as the ITL histogram records it.
    pub fn met(&self, s: &Sample<'_>) -> bool {
        let within = |value: u64, limit: Option<Duration>| limit.is_none_or(|l| value <= micros(l));
        within(s.ttft_us.unwrap_or(s.e2e_us), self.ttft)
            && s.tpot_us.is_none_or(|t| within(t, self.tpot))
            && within(s.e2e_us, self.e2e)
            && s.gaps.iter().all(|gap| within(gap.per_token_max(), self.itl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Gap;

    #[test]
    fn a_request_is_good_when_it_meets_every_objective_set() {
        let slo = Slo {
            ttft: Some(Duration::from_millis(100)),
            tpot: Some(Duration::from_millis(20)),
            e2e: None,
            itl: Some(Duration::from_millis(50)),
        };
        let gaps = [Gap { us: 10_000, tokens: 1 }, Gap { us: 200_000, tokens: 4 }];
        let good = Sample {
            ttft_us: Some(100_000),
            tpot_us: Some(20_000),
            gaps: &gaps,
            e2e_us: 5_000_000,
            ..Sample::default()
        };
        assert!(slo.met(&good), "limits are inclusive, and E2E has none");
        assert!(!slo.met(&Sample {
            ttft_us: Some(100_001),
            ..good
        }));
        assert!(!slo.met(&Sample {
            tpot_us: Some(20_001),
            ..good
        }));
        assert!(!slo.met(&Sample {
            gaps: &[Gap { us: 50_001, tokens: 1 }],
            ..good
        }));
        assert!(
            !slo.met(&Sample {
                gaps: &[Gap { us: 200_001, tokens: 4 }],
                ..good
            }),
            "one token of four waited 50.001 ms"
        );
        assert!(slo.met(&Sample { tpot_us: None, ..good }), "one token: no TPOT to miss");
        // Nothing streamed: the end-to-end time stands for the first token.
        assert!(!slo.met(&Sample { ttft_us: None, ..good }));
        assert!(slo.met(&Sample {
            ttft_us: None,
            e2e_us: 90_000,
            ..good
        }));
        assert_eq!(Slo::from_wire(Some(&slo.to_wire())), Some(slo));
        assert_eq!(Slo::from_wire(Some(&pb::Slo::default())), None);
        assert_eq!(Slo::from_wire(None), None);
    }
}
