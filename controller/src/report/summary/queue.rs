//! The server's queue time as percentiles: exact, from the server's own
//! spans of each request when the run read them back from the trace store;
//! else interpolated within the buckets of the server's queue-time
//! histogram, over the measured time.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::server::quantile::{self, Interpolated};
use crate::server::spans::ServerSpans;
use crate::server::{Canon, Series, Window};

/// The server's queue time over the measured time.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ServerQueue {
    /// `spans`: exact, one value per request from the server's spans;
    /// `buckets`: interpolated within the server's histogram buckets.
    pub source: QueueSource,
    /// Where the values came from: the trace store's query URL, or the
    /// histogram's name.
    pub from: String,
    /// The percentiles are interpolated within a bucket (`buckets`), not
    /// read from the values themselves.
    pub interpolated: bool,
    /// Requests counted.
    pub count: u64,
    /// Mean, ms (the histogram's exact sum over its count for `buckets`).
    pub mean_ms: Option<f64>,
    /// Median.
    pub p50: QueueQuantile,
    /// 90th percentile.
    pub p90: QueueQuantile,
    /// 99th percentile.
    pub p99: QueueQuantile,
    /// What limits the figures, in words.
    pub note: Option<String>,
}

/// Where the server's queue percentiles came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum QueueSource {
    /// The server's spans, one per request.
    Spans,
    /// The server's queue-time histogram buckets.
    Buckets,
}

/// One percentile of the server's queue time.
#[derive(Clone, Copy, Debug, Serialize, schemars::JsonSchema)]
pub struct QueueQuantile {
    /// The value, ms.
    pub ms: f64,
    /// For `buckets`: the bucket it was interpolated in, its lower bound,
    /// ms.
    pub bucket_from_ms: Option<f64>,
    /// For `buckets`: the bucket's upper bound (`le`), ms; absent for the
    /// `+Inf` bucket, where the value is the highest finite bound.
    pub bucket_to_ms: Option<f64>,
}

const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// The server queue over the measured time, from `from` seconds after
/// `start`: from `spans` when they hold any request admitted then, else
/// from `series`' queue-time buckets.
pub(super) fn build(
    spans: Option<&ServerSpans>,
    series: Option<&Series>,
    start: Option<SystemTime>,
    from: f64,
) -> Option<ServerQueue> {
    let start = start?;
    let measured_from = start + Duration::from_secs_f64(from.max(0.0));
    let exact = spans.and_then(|s| from_spans(s, measured_from));
    let missing = spans.map(|s| {
        s.note.clone().unwrap_or_else(|| {
            format!(
                "no server queue span of the run's requests was found at {}",
                s.query_url
            )
        })
    });
    match exact {
        Some(q) => Some(q),
        None => {
            let mut q = from_buckets(series?, start, from)?;
            q.note = missing.or(q.note);
            Some(q)
        }
    }
}

fn from_spans(spans: &ServerSpans, from: SystemTime) -> Option<ServerQueue> {
    let mut values: Vec<u64> = spans.since(from).map(|s| s.queue_us).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| QueueQuantile {
        ms: quantile::nearest_rank(q, &values).unwrap_or(0) as f64 / 1e3,
        bucket_from_ms: None,
        bucket_to_ms: None,
    };
    let sum: u64 = values.iter().sum();
    let [p50, p90, p99] = QUANTILES.map(at);
    Some(ServerQueue {
        source: QueueSource::Spans,
        from: spans.query_url.clone(),
        interpolated: false,
        count: values.len() as u64,
        mean_ms: Some(sum as f64 / values.len() as f64 / 1e3),
        p50,
        p90,
        p99,
        note: spans.note.clone(),
    })
}

fn from_buckets(series: &Series, start: SystemTime, from: f64) -> Option<ServerQueue> {
    let buckets = series.buckets(Canon::QueueTime, start, from, f64::MAX)?;
    let count = buckets.last().map_or(0.0, |b| b.1);
    if count <= 0.0 {
        return None;
    }
    let at = |q: f64| {
        quantile::histogram_quantile(q, &buckets).map(|Interpolated { value, lower, upper }| QueueQuantile {
            ms: value * 1e3,
            bucket_from_ms: Some(lower * 1e3),
            bucket_to_ms: upper.is_finite().then_some(upper * 1e3),
        })
    };
    let [p50, p90, p99] = QUANTILES.map(at);
    let mean_ms = match series.window(Canon::QueueTime, start, from, f64::MAX) {
        Some(Window::Observed { mean, .. }) => Some(mean * 1e3),
        _ => None,
    };
    let metric = series.sources.get(&Canon::QueueTime).map_or("", |s| s.metric);
    Some(ServerQueue {
        source: QueueSource::Buckets,
        from: metric.to_owned(),
        interpolated: true,
        count: count.round() as u64,
        mean_ms,
        p50: p50?,
        p90: p90?,
        p99: p99?,
        note: None,
    })
}
