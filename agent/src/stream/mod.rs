//! Incremental framing of streamed responses: Server-Sent Events and
//! newline-delimited JSON.

pub mod ndjson;
pub mod sse;
