//! Per-metric HDR histogram sets and their V2+deflate wire form.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};

use crate::{WireError, pb};

/// Significant figures kept by every histogram (0.1 % relative precision).
const SIGFIGS: u8 = 3;
/// Largest time recorded: one hour in microseconds. Larger values saturate.
const MAX_MICROS: u64 = 3_600_000_000;
/// Largest token count recorded per request. Larger values saturate.
const MAX_TOKENS: u64 = 10_000_000;

/// What a metric's values count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Microseconds.
    Micros,
    /// Tokens.
    Tokens,
}

/// A measured quantity. See `proto/coordinator.proto` for each definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Time to first token.
    Ttft,
    /// Inter-token latency (one sample per token after the first event:
    /// an event's gap split among its tokens).
    Itl,
    /// Gap between consecutive events carrying tokens (one sample per gap,
    /// whatever the number of tokens).
    ChunkGap,
    /// Time per output token after the first (one sample per request).
    Tpot,
    /// End-to-end latency.
    E2e,
    /// Client-side queueing before the request is written.
    ClientQueue,
    /// Time to open a new connection.
    Connect,
    /// Input tokens per request.
    InputTokens,
    /// Output tokens per request.
    OutputTokens,
    /// Intended start to dispatch.
    ScheduleLag,
    /// Time to first token from the intended start.
    TtftIntended,
    /// End-to-end latency from the intended start.
    E2eIntended,
    /// Prompt processing time reported by the server.
    ServerPrefill,
    /// Token generation time reported by the server.
    ServerDecode,
    /// Model load time reported by the server.
    ModelLoad,
    /// Whole-request time reported by the server.
    ServerTime,
    /// How late a periodic tick on the agent's load runtime ran.
    RuntimeDelay,
}

impl Metric {
    /// Every metric, in report order.
    pub const ALL: [Metric; 17] = [
        Metric::Ttft,
        Metric::Itl,
        Metric::ChunkGap,
        Metric::Tpot,
        Metric::E2e,
        Metric::ClientQueue,
        Metric::Connect,
        Metric::InputTokens,
        Metric::OutputTokens,
        Metric::ScheduleLag,
        Metric::TtftIntended,
        Metric::E2eIntended,
        Metric::ServerPrefill,
        Metric::ServerDecode,
        Metric::ModelLoad,
        Metric::ServerTime,
        Metric::RuntimeDelay,
    ];

    /// Short stable name used in files and on the terminal.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Ttft => "ttft",
            Metric::Itl => "itl",
            Metric::ChunkGap => "chunk_gap",
            Metric::Tpot => "tpot",
            Metric::E2e => "e2e",
            Metric::ClientQueue => "client_queue",
            Metric::Connect => "connect",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::ScheduleLag => "schedule_lag",
            Metric::TtftIntended => "ttft_intended",
            Metric::E2eIntended => "e2e_intended",
            Metric::ServerPrefill => "server_prefill",
            Metric::ServerDecode => "server_decode",
            Metric::ModelLoad => "model_load",
            Metric::ServerTime => "server_time",
            Metric::RuntimeDelay => "runtime_delay",
        }
    }

    /// What the metric's values count.
    pub fn unit(self) -> Unit {
        match self {
            Metric::InputTokens | Metric::OutputTokens => Unit::Tokens,
            _ => Unit::Micros,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The bounds and bucket layout of its histograms.
    pub(crate) fn bounds(self) -> crate::sparse::Bounds {
        crate::sparse::Bounds::new(1, self.highest(), SIGFIGS)
    }

    fn highest(self) -> u64 {
        match self.unit() {
            Unit::Micros => MAX_MICROS,
            Unit::Tokens => MAX_TOKENS,
        }
    }

    /// The metric with this [`Metric::name`].
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The wire enum of this metric.
    pub fn to_wire(self) -> pb::Metric {
        match self {
            Metric::Ttft => pb::Metric::Ttft,
            Metric::Itl => pb::Metric::Itl,
            Metric::ChunkGap => pb::Metric::ChunkGap,
            Metric::Tpot => pb::Metric::Tpot,
            Metric::E2e => pb::Metric::E2e,
            Metric::ClientQueue => pb::Metric::ClientQueue,
            Metric::Connect => pb::Metric::Connect,
            Metric::InputTokens => pb::Metric::InputTokens,
            Metric::OutputTokens => pb::Metric::OutputTokens,
            Metric::ScheduleLag => pb::Metric::ScheduleLag,
            Metric::TtftIntended => pb::Metric::TtftIntended,
            Metric::E2eIntended => pb::Metric::E2eIntended,
            Metric::ServerPrefill => pb::Metric::ServerPrefill,
            Metric::ServerDecode => pb::Metric::ServerDecode,
            Metric::ModelLoad => pb::Metric::ModelLoad,
            Metric::ServerTime => pb::Metric::ServerTime,
            Metric::RuntimeDelay => pb::Metric::RuntimeDelay,
        }
    }

    /// The metric with this wire number.
    pub fn from_wire(number: i32) -> Result<Metric, WireError> {
        let metric = match pb::Metric::try_from(number) {
            Ok(pb::Metric::Ttft) => Metric::Ttft,
            Ok(pb::Metric::Itl) => Metric::Itl,
            Ok(pb::Metric::ChunkGap) => Metric::ChunkGap,
            Ok(pb::Metric::Tpot) => Metric::Tpot,
            Ok(pb::Metric::E2e) => Metric::E2e,
            Ok(pb::Metric::ClientQueue) => Metric::ClientQueue,
            Ok(pb::Metric::Connect) => Metric::Connect,
            Ok(pb::Metric::InputTokens) => Metric::InputTokens,
            Ok(pb::Metric::OutputTokens) => Metric::OutputTokens,
            Ok(pb::Metric::ScheduleLag) => Metric::ScheduleLag,
            Ok(pb::Metric::TtftIntended) => Metric::TtftIntended,
            Ok(pb::Metric::E2eIntended) => Metric::E2eIntended,
            Ok(pb::Metric::ServerPrefill) => Metric::ServerPrefill,
            Ok(pb::Metric::ServerDecode) => Metric::ServerDecode,
            Ok(pb::Metric::ModelLoad) => Metric::ModelLoad,
            Ok(pb::Metric::ServerTime) => Metric::ServerTime,
            Ok(pb::Metric::RuntimeDelay) => Metric::RuntimeDelay,
            Ok(pb::Metric::Unspecified) | Err(_) => return Err(WireError::UnknownMetric(number)),
        };
        Ok(metric)
    }

    /// An empty histogram of its bounds and precision.
    pub fn empty_histogram(self) -> Histogram<u64> {
        Histogram::new_with_bounds(1, self.highest(), SIGFIGS).expect("static histogram bounds are valid")
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One HDR histogram per [`Metric`], all with the same bounds and precision,
/// so that sets from any number of threads or agents merge exactly by
/// adding counts.
#[derive(Clone, Debug)]
pub struct Histograms {
    by_metric: [Histogram<u64>; Metric::ALL.len()],
}

impl Default for Histograms {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Histograms {
    fn eq(&self, other: &Self) -> bool {
        self.by_metric == other.by_metric
    }
}

impl Histograms {
    /// An empty set.
    pub fn new() -> Self {
        Histograms {
            by_metric: std::array::from_fn(|i| Metric::ALL[i].empty_histogram()),
        }
    }

    /// The histogram of one metric.
    pub fn get(&self, metric: Metric) -> &Histogram<u64> {
        &self.by_metric[metric.index()]
    }

    pub(crate) fn get_mut(&mut self, metric: Metric) -> &mut Histogram<u64> {
        &mut self.by_metric[metric.index()]
    }

    /// Records one value; values above the metric's range saturate at its
    /// top so that nothing is lost from the count.
    pub fn record(&mut self, metric: Metric, value: u64) {
        self.by_metric[metric.index()].saturating_record(value);
    }

    /// Records `value` `count` times, saturating as [`Histograms::record`]
    /// does.
    pub fn record_n(&mut self, metric: Metric, value: u64, count: u64) {
        self.by_metric[metric.index()].saturating_record_n(value, count);
    }

    /// Adds every count of `other` into `self`. Exact: the result equals one
    /// set that recorded every value of both.
    pub fn add(&mut self, other: &Histograms) {
        for (mine, theirs) in self.by_metric.iter_mut().zip(&other.by_metric) {
            // Adding walks every bucket; most intervals leave most metrics
            // empty.
            if !theirs.is_empty() {
                mine.add(theirs)
                    .expect("histograms of one metric share bounds, so addition cannot overflow them");
            }
        }
    }

    /// Clears every count, keeping the allocation.
    pub fn reset(&mut self) {
        for h in self.by_metric.iter_mut().filter(|h| !h.is_empty()) {
            h.reset();
        }
    }

    /// True when no metric holds a sample.
    pub fn is_empty(&self) -> bool {
        self.by_metric.iter().all(|h| h.is_empty())
    }

    /// The wire form: one V2+deflate histogram per metric that has samples.
    pub fn to_wire(&self) -> Vec<pb::Histogram> {
        let mut serializer = V2DeflateSerializer::new();
        Metric::ALL
            .iter()
            .filter(|m| !self.get(**m).is_empty())
            .map(|&metric| {
                let mut bytes = Vec::new();
                serializer
                    .serialize(self.get(metric), &mut bytes)
                    .expect("serializing into a Vec cannot fail");
                pb::Histogram {
                    metric: metric.to_wire() as i32,
                    v2_deflate: bytes,
                }
            })
            .collect()
    }

    /// Decodes a wire form. Metrics not present are empty.
    pub fn from_wire(wire: &[pb::Histogram]) -> Result<Histograms, WireError> {
        let mut set = Histograms::new();
        let mut deserializer = Deserializer::new();
        for h in wire {
            let metric = Metric::from_wire(h.metric)?;
            let bad = |reason: String| WireError::Histogram {
                metric: metric.name().to_owned(),
                reason,
            };
            let decoded: Histogram<u64> = deserializer
                .deserialize(&mut h.v2_deflate.as_slice())
                .map_err(|e| bad(format!("{e:?}")))?;
            set.by_metric[metric.index()]
                .add(&decoded)
                .map_err(|e| bad(format!("{e:?}")))?;
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Quantiles on a 5 % grid and the tail. Equal histograms (every
    /// bucket count, which `==` compares) have equal quantiles everywhere;
    /// reading some out states that in the terms a report uses.
    fn quantiles() -> impl Iterator<Item = f64> {
        (0..=20).map(|i| f64::from(i) / 20.0).chain([0.99, 0.999, 0.9999])
    }

    proptest! {
        // Each case builds and serializes dozens of full histogram sets;
        // 64 cases keep the suite quick in debug builds.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Histograms merged from N agents equal one histogram that recorded
        /// every value: every bucket count, and therefore every quantile.
        #[test]
        fn merge_of_parts_equals_whole(
            parts in prop::collection::vec(
                prop::collection::vec((0usize..Metric::ALL.len(), 0u64..5_000_000_000u64), 0..300),
                1..12,
            )
        ) {
            let mut whole = Histograms::new();
            let mut merged = Histograms::new();
            for part in &parts {
                let mut agent = Histograms::new();
                for &(m, v) in part {
                    agent.record(Metric::ALL[m], v);
                    whole.record(Metric::ALL[m], v);
                }
                // Every part crosses the wire, as an agent's report does.
                let received = Histograms::from_wire(&agent.to_wire()).unwrap();
                merged.add(&received);
            }
            prop_assert!(merged == whole);
            for m in Metric::ALL {
                let (a, b) = (merged.get(m), whole.get(m));
                prop_assert_eq!(a.len(), b.len());
                prop_assert_eq!(a.min(), b.min());
                prop_assert_eq!(a.max(), b.max());
                for q in quantiles() {
                    prop_assert_eq!(a.value_at_quantile(q), b.value_at_quantile(q));
                }
            }
        }

        /// Merging is associative and commutative: the order in which
        /// agents' reports arrive does not matter.
        #[test]
        fn merge_order_does_not_matter(
            a in prop::collection::vec(0u64..100_000_000u64, 0..200),
            b in prop::collection::vec(0u64..100_000_000u64, 0..200),
            c in prop::collection::vec(0u64..100_000_000u64, 0..200),
        ) {
            let set = |values: &[u64]| {
                let mut s = Histograms::new();
                values.iter().for_each(|&v| s.record(Metric::Ttft, v));
                s
            };
            let (a, b, c) = (set(&a), set(&b), set(&c));
            let mut left = a.clone();
            left.add(&b);
            left.add(&c);
            let mut right = c.clone();
            let mut bc = b.clone();
            bc.add(&a);
            right.add(&bc);
            prop_assert!(left == right);
        }
    }

    #[test]
    fn values_above_range_saturate_instead_of_vanishing() {
        let mut s = Histograms::new();
        s.record(Metric::E2e, u64::MAX);
        s.record(Metric::OutputTokens, u64::MAX);
        assert_eq!(s.get(Metric::E2e).len(), 1);
        assert!(s.get(Metric::E2e).max() >= MAX_MICROS);
        assert_eq!(s.get(Metric::OutputTokens).len(), 1);
    }

    #[test]
    fn empty_metrics_are_not_sent_and_decode_as_empty() {
        let mut s = Histograms::new();
        s.record(Metric::Itl, 20_000);
        let wire = s.to_wire();
        assert_eq!(wire.len(), 1);
        let back = Histograms::from_wire(&wire).unwrap();
        assert!(back == s);
        assert!(back.get(Metric::Ttft).is_empty());
    }

    #[test]
    fn garbage_bytes_and_unknown_metrics_are_errors() {
        let junk = pb::Histogram {
            metric: pb::Metric::Ttft as i32,
            v2_deflate: vec![1, 2, 3],
        };
        assert!(Histograms::from_wire(&[junk]).is_err());
        let unknown = pb::Histogram {
            metric: 99,
            v2_deflate: vec![],
        };
        assert!(matches!(
            Histograms::from_wire(&[unknown]),
            Err(WireError::UnknownMetric(99))
        ));
    }
}
