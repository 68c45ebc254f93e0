//! Incremental framing of streamed responses.

pub mod sse;
