//! The coordinator protocol between a stampede controller and its agents.
//!
//! [`pb`] holds the generated gRPC bindings of `proto/coordinator.proto`.
//! The rest of the crate holds the domain types both sides share and their
//! conversions to and from the wire: per-metric HDR histogram sets
//! ([`Histograms`]), request counters ([`Counters`]) and error classes
//! ([`ErrorClass`]). No other crate builds raw protobuf structs for these.

mod counters;
mod histograms;
mod sparse;

pub use counters::{Comparison, Counters, ErrorClass, LATE};
pub use histograms::{Histograms, Metric, Unit};
pub use sparse::Sparse;

/// Generated protobuf and gRPC bindings (`stampede.coordinator.v1`).
#[allow(missing_docs, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("stampede.coordinator.v1");
}

/// Version of the coordinator protocol this build speaks. A controller
/// refuses agents that speak another version.
///
/// A change an older peer cannot read raises it. New fields do not (an
/// older peer skips them); a new [`Metric`] does, since a controller
/// refuses a report with a histogram of a metric it does not know.
/// Version 2 added `METRIC_CHUNK_GAP`; version 3 resumable sessions
/// (an older agent would not resume, and would stop its load at once).
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest message an agent accepts from its controller. An assignment
/// carries the agent's prompt share and may carry the model's whole
/// `tokenizer.json`, tens of megabytes for some models; the controller
/// refuses a tokenizer that would not fit.
pub const MAX_ASSIGNMENT_BYTES: usize = 256 * 1024 * 1024;

/// A message from the wire that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A histogram's bytes are not HdrHistogram V2+deflate.
    #[error("histogram for {metric}: {reason}")]
    Histogram {
        /// Metric whose histogram failed.
        metric: String,
        /// What was wrong.
        reason: String,
    },
    /// A metric number this build does not know.
    #[error("unknown metric number {0}")]
    UnknownMetric(i32),
    /// An error class name this build does not know.
    #[error("unknown error class {0:?}")]
    UnknownErrorClass(String),
}
