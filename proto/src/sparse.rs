//! A report's histograms decoded sparsely: per metric, only the buckets
//! that hold samples. A full histogram of the run's bounds is ~23,000
//! buckets (~180 KiB), while one interval of one agent fills a few hundred;
//! decoding into full histograms zeroes, fills and walks them all, where
//! this reads the V2+deflate bytes straight into a list of buckets that
//! adds into a [`Histograms`] bucket by bucket. The result is the same to
//! the count: every sample lands in the bucket it left.

use std::cell::RefCell;

use flate2::{Decompress, FlushDecompress, Status};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;

use crate::histograms::{Histograms, Metric};
use crate::{WireError, pb};

/// V2 histogram, and V2 histogram compressed with deflate, for 64-bit
/// counts (HdrHistogram's encoding).
const V2_COOKIE: u32 = 0x1c84_9303 | 0x10;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9304 | 0x10;
/// Bytes of a V2 header: cookie, payload length, normalizing offset,
/// significant figures, lowest and highest value, integer-to-double ratio.
const V2_HEADER: usize = 40;

/// One histogram per [`Metric`], as the wire carried it: each bucket with
/// samples, as its lowest value and its count, in ascending order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sparse {
    by_metric: [Vec<(u64, u64)>; Metric::ALL.len()],
}

impl Sparse {
    /// Decodes a wire form. Metrics not present are empty.
    pub fn from_wire(wire: &[pb::Histogram]) -> Result<Sparse, WireError> {
        thread_local! {
            /// The inflater and its output, kept: setting up an inflater
            /// costs more than inflating one interval's histogram.
            static INFLATE: RefCell<(Decompress, Vec<u8>)> = RefCell::new((Decompress::new(true), Vec::new()));
        }
        let mut set = Sparse::default();
        for h in wire {
            let metric = Metric::from_wire(h.metric)?;
            let buckets = &mut set.by_metric[metric.index()];
            let before = buckets.len();
            let read = INFLATE
                .with_borrow_mut(|(inflater, inflated)| decode(metric, &h.v2_deflate, inflater, inflated, buckets));
            if !read {
                // Another encoding, other bounds, or bytes that do not
                // read: the library's decoder takes it, or says why not.
                buckets.truncate(before);
                buckets.extend(slow(metric, &h.v2_deflate)?);
            }
        }
        Ok(set)
    }

    /// The buckets with samples of `metric`: lowest value and count.
    pub fn buckets(&self, metric: Metric) -> &[(u64, u64)] {
        &self.by_metric[metric.index()]
    }

    /// The number of samples of `metric`.
    pub fn len(&self, metric: Metric) -> u64 {
        self.buckets(metric).iter().map(|(_, n)| n).sum()
    }

    /// True when no metric holds a sample.
    pub fn is_empty(&self) -> bool {
        self.by_metric.iter().all(Vec::is_empty)
    }

    /// The full histogram of `metric`.
    pub fn histogram(&self, metric: Metric) -> Histogram<u64> {
        let mut h = metric.empty_histogram();
        for &(value, count) in self.buckets(metric) {
            h.saturating_record_n(value, count);
        }
        h
    }
}

impl From<&Histograms> for Sparse {
    fn from(full: &Histograms) -> Sparse {
        Sparse {
            by_metric: std::array::from_fn(|i| buckets_of(full.get(Metric::ALL[i]))),
        }
    }
}

impl Histograms {
    /// Adds every count of `other` into `self`, touching only the buckets
    /// that hold samples. Exact, as [`Histograms::add`] is.
    pub fn add_sparse(&mut self, other: &Sparse) {
        for m in Metric::ALL {
            let buckets = other.buckets(m);
            if buckets.is_empty() {
                continue;
            }
            let mine = self.get_mut(m);
            for &(value, count) in buckets {
                mine.saturating_record_n(value, count);
            }
        }
    }
}

/// Each bucket of `h` with samples: its lowest value and its count.
fn buckets_of(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (h.lowest_equivalent(v.value_iterated_to()), v.count_at_value()))
        .collect()
}

/// The library's decoder, for what [`decode`] leaves: a full histogram,
/// then its buckets. Values beyond the metric's range are refused, as
/// adding them to its histogram would be.
fn slow(metric: Metric, bytes: &[u8]) -> Result<Vec<(u64, u64)>, WireError> {
    let bad = |reason: String| WireError::Histogram {
        metric: metric.name().to_owned(),
        reason,
    };
    let decoded: Histogram<u64> = Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| bad(format!("{e:?}")))?;
    let mut mine = metric.empty_histogram();
    mine.add(&decoded).map_err(|e| bad(format!("{e:?}")))?;
    Ok(buckets_of(&mine))
}

/// Inflates the zlib stream `input` whole into `out` with `inflater`;
/// false when it does not read to its end.
fn inflate(inflater: &mut Decompress, input: &[u8], out: &mut Vec<u8>) -> bool {
    inflater.reset(true);
    out.clear();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let (took, gave) = (inflater.total_in(), inflater.total_out());
        let Some(rest) = usize::try_from(took).ok().and_then(|n| input.get(n..)) else {
            return false;
        };
        match inflater.decompress_vec(rest, out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => return true,
            // Room to write and nothing taken or given: the input ended
            // before the stream did.
            Ok(Status::Ok | Status::BufError) if (took, gave) == (inflater.total_in(), inflater.total_out()) => {
                return false;
            }
            Ok(Status::Ok | Status::BufError) => {}
            Err(_) => return false,
        }
    }
}

/// Decodes V2+deflate `bytes` of `metric`'s bounds into `buckets`, with
/// `inflater` and `inflated` as scratch; false when they are anything else
/// (left to [`slow`]).
fn decode(
    metric: Metric,
    bytes: &[u8],
    inflater: &mut Decompress,
    inflated: &mut Vec<u8>,
    buckets: &mut Vec<(u64, u64)>,
) -> bool {
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|w| u32::from_be_bytes(w.try_into().expect("4 bytes")))
    };
    let long = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .map(|w| u64::from_be_bytes(w.try_into().expect("8 bytes")))
    };
    if word(bytes, 0) != Some(V2_DEFLATE_COOKIE) {
        return false;
    }
    let Some(len) = word(bytes, 4) else { return false };
    let Some(compressed) = bytes.get(8..8 + len as usize) else {
        return false;
    };
    if !inflate(inflater, compressed, inflated) {
        return false;
    }
    let b = inflated.as_slice();
    let bounds = metric.bounds();
    let header = (
        word(b, 0),
        word(b, 8),
        word(b, 12),
        long(b, 16),
        long(b, 24),
        long(b, 32).map(f64::from_bits),
    );
    if header
        != (
            Some(V2_COOKIE),
            Some(0),
            Some(u32::from(bounds.sigfig)),
            Some(bounds.low),
            Some(bounds.high),
            Some(1.0),
        )
    {
        return false;
    }
    let Some(payload) = word(b, 4).and_then(|n| b.get(V2_HEADER..V2_HEADER + n as usize)) else {
        return false;
    };
    let mut at = 0;
    let mut index: u64 = 0;
    while at < payload.len() {
        let Some((zigzag, read)) = varint(&payload[at..]) else {
            return false;
        };
        at += read;
        let n = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        if n < 0 {
            index = index.saturating_add(n.unsigned_abs());
            continue;
        }
        if n > 0 {
            if index >= bounds.buckets {
                return false;
            }
            buckets.push((bounds.value_at(index), n as u64));
        }
        index += 1;
    }
    true
}

/// One LEB128 number of at most nine bytes, the ninth whole (HdrHistogram's
/// varint), and the bytes it took.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in b.iter().enumerate().take(9) {
        if i == 8 {
            return Some((value | (u64::from(byte) << 56), 9));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A metric's histogram bounds and the layout of its buckets.
pub(crate) struct Bounds {
    pub(crate) low: u64,
    pub(crate) high: u64,
    pub(crate) sigfig: u8,
    /// Buckets in its counts array.
    buckets: u64,
    /// log2 of half a sub-bucket count.
    half_magnitude: u32,
    /// log2 of the lowest value.
    unit_magnitude: u32,
}

impl Bounds {
    /// The layout HdrHistogram gives a histogram of these bounds.
    pub(crate) fn new(low: u64, high: u64, sigfig: u8) -> Bounds {
        let largest = 2 * 10_u64.pow(u32::from(sigfig));
        let unit_magnitude = low.ilog2();
        let sub_bucket_magnitude = largest.next_power_of_two().ilog2();
        let half_magnitude = sub_bucket_magnitude - 1;
        let mut untrackable = 1u64 << (sub_bucket_magnitude + unit_magnitude);
        let mut buckets_needed = 1u64;
        while untrackable <= high {
            untrackable <<= 1;
            buckets_needed += 1;
        }
        Bounds {
            low,
            high,
            sigfig,
            buckets: (buckets_needed + 1) << half_magnitude,
            half_magnitude,
            unit_magnitude,
        }
    }

    /// The lowest value of the bucket at `index`.
    fn value_at(&self, index: u64) -> u64 {
        let half = 1u64 << self.half_magnitude;
        let bucket = (index >> self.half_magnitude).saturating_sub(1);
        let sub = if index < half {
            index
        } else {
            (index & (half - 1)) + half
        };
        sub << (bucket + u64::from(self.unit_magnitude))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
    use proptest::prelude::*;

    /// Every bucket of every metric's layout: its lowest value is what
    /// HdrHistogram says, and the layout has as many buckets.
    #[test]
    fn the_bucket_layout_is_hdrhistograms() {
        for m in Metric::ALL {
            let b = m.bounds();
            let h = m.empty_histogram();
            assert_eq!(b.buckets, h.distinct_values() as u64, "{m}");
            let mut last = None;
            for i in 0..b.buckets {
                let v = b.value_at(i);
                assert_eq!(h.lowest_equivalent(v), v, "{m} bucket {i}");
                assert!(last < Some(v), "{m} bucket {i}: values ascend");
                last = Some(v);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Decoded sparsely and added, a set equals the set the full
        /// decoder gives: every bucket count, minimum, maximum and total.
        #[test]
        fn sparse_decoding_equals_full_decoding(
            values in prop::collection::vec((0usize..Metric::ALL.len(), 0u64..5_000_000_000u64, 1u64..1_000), 0..400),
            before in prop::collection::vec((0usize..Metric::ALL.len(), 0u64..5_000_000_000u64), 0..50),
        ) {
            let mut sent = Histograms::new();
            for &(m, v, n) in &values {
                sent.record_n(Metric::ALL[m], v, n);
            }
            let wire = sent.to_wire();
            let sparse = Sparse::from_wire(&wire).unwrap();
            let mut full = Histograms::new();
            let mut summed = Histograms::new();
            for &(m, v) in &before {
                full.record(Metric::ALL[m], v);
                summed.record(Metric::ALL[m], v);
            }
            full.add(&Histograms::from_wire(&wire).unwrap());
            summed.add_sparse(&sparse);
            prop_assert!(summed == full);
            prop_assert!(Sparse::from(&sent) == sparse);
            for m in Metric::ALL {
                prop_assert_eq!(sparse.len(m), sent.get(m).len());
                prop_assert!(sparse.histogram(m) == *sent.get(m));
            }
        }
    }

    /// The histograms agents send (the run's bounds, V2+deflate) are read
    /// by this module's decoder, not handed to the library's.
    #[test]
    fn the_runs_own_histograms_are_read_sparsely() {
        let mut h = Histograms::new();
        h.record(Metric::Ttft, 150_000);
        h.record_n(Metric::InputTokens, 16, 4);
        h.record(Metric::E2e, 4_000_000_000);
        for w in h.to_wire() {
            let m = Metric::from_wire(w.metric).unwrap();
            let mut buckets = Vec::new();
            let mut inflater = Decompress::new(true);
            assert!(
                decode(m, &w.v2_deflate, &mut inflater, &mut Vec::new(), &mut buckets),
                "{m}"
            );
            assert_eq!(buckets.len(), 1, "{m}");
            assert_eq!(buckets[0].1, h.get(m).len(), "{m}");
        }
    }

    /// A histogram of other bounds, or in the plain V2 encoding, still
    /// decodes (by the library), to the same buckets.
    #[test]
    fn other_encodings_and_bounds_decode_too() {
        let mut narrow = Histogram::<u64>::new_with_bounds(1, 1_000_000, 2).unwrap();
        narrow.record_n(12_345, 3).unwrap();
        let mut bytes = Vec::new();
        V2DeflateSerializer::new().serialize(&narrow, &mut bytes).unwrap();
        let wire = [pb::Histogram {
            metric: Metric::Ttft.to_wire() as i32,
            v2_deflate: bytes,
        }];
        let sparse = Sparse::from_wire(&wire).unwrap();
        let mut full = Histograms::new();
        full.add(&Histograms::from_wire(&wire).unwrap());
        let mut summed = Histograms::new();
        summed.add_sparse(&sparse);
        assert!(summed == full);
        assert_eq!(sparse.len(Metric::Ttft), 3);
    }

    #[test]
    fn garbage_is_an_error_as_before() {
        // A stream cut in half, its length saying so.
        let mut full = Histograms::new();
        for v in 0..500 {
            full.record(Metric::Itl, v * 997);
        }
        let mut cut = full.to_wire().remove(0).v2_deflate;
        let half = cut.len() / 2;
        cut.truncate(half);
        cut[4..8].copy_from_slice(&u32::try_from(half - 8).unwrap().to_be_bytes());
        for bytes in [vec![1, 2, 3], Vec::new(), V2_DEFLATE_COOKIE.to_be_bytes().to_vec(), cut] {
            let wire = [pb::Histogram {
                metric: Metric::Itl.to_wire() as i32,
                v2_deflate: bytes,
            }];
            assert!(Sparse::from_wire(&wire).is_err());
            assert!(Histograms::from_wire(&wire).is_err());
        }
        let unknown = [pb::Histogram {
            metric: 999,
            v2_deflate: Vec::new(),
        }];
        assert!(matches!(
            Sparse::from_wire(&unknown),
            Err(WireError::UnknownMetric(999))
        ));
    }
}
