//! Incremental framing of streamed responses: Server-Sent Events and
//! newline-delimited JSON.

mod lines;
pub mod ndjson;
pub mod sse;
