//! `--record FILE`: one JSON line per chat request, with the messages it
//! carried and the answer the simulator streams back, so that tests can
//! check what a client really sent (the history of a multi-turn session).

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use serde_json::{Value, json};

/// `--record-first-writes FILE`: for each streamed OpenAI request that
/// carries a W3C `traceparent`, one JSON line with its trace id and the
/// wall-clock time at which the simulator handed the event carrying the
/// first generated token to the connection. A client that stamps the same
/// token's arrival (stampede's `first_token` span event) can then be checked
/// against the moment the bytes left the server, on one host's clock.
#[derive(Debug)]
pub(crate) struct FirstWrites(Mutex<File>);

impl FirstWrites {
    /// Creates (or empties) `path`.
    pub(crate) fn create(path: &Path) -> std::io::Result<FirstWrites> {
        Ok(FirstWrites(Mutex::new(File::create(path)?)))
    }

    /// Records that the first token of the request of `trace_id` is being
    /// written now.
    pub(crate) fn stamp(&self, trace_id: &str) {
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let line = json!({"trace_id": trace_id, "first_write_unix_us": unix_us as u64});
        let mut file = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!("cannot record the first write: {e}");
        }
    }
}

/// The file requests are recorded to.
#[derive(Debug)]
pub(crate) struct Record(Mutex<File>);

impl Record {
    /// Creates (or empties) `path`.
    pub(crate) fn create(path: &Path) -> std::io::Result<Record> {
        Ok(Record(Mutex::new(File::create(path)?)))
    }

    /// Records one chat request: `body` as received, and the answer the
    /// engine will stream (`output_tokens` tokens of text seeded with
    /// `text_seed`; a fault may cut it short).
    pub(crate) fn chat(&self, body: &[u8], input_tokens: u32, output_tokens: u32, text_seed: u64) {
        let messages = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|mut v| v.get_mut("messages").map(Value::take))
            .unwrap_or(Value::Null);
        let answer: String = (0..output_tokens).map(|i| crate::text::token(text_seed, i)).collect();
        let line = json!({"messages": messages, "input_tokens": input_tokens, "answer": answer});
        // A poisoned lock only means another write panicked: keep going.
        let mut file = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = writeln!(file, "{line}") {
            tracing::warn!("cannot record the request: {e}");
        }
    }
}
