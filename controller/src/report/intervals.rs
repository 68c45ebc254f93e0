//! `intervals.jsonl`: every report, one JSON line each, appended as it
//! arrives and before it is acknowledged. Histograms are kept exactly
//! (base64 of V2+deflate), so the file alone can rebuild every figure.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use stampede_proto::{Metric, pb};

/// The interval log of one run.
#[derive(Debug)]
pub struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    /// Creates (or truncates) the log at `path`.
    pub fn create(path: &Path) -> io::Result<Log> {
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        Ok(Log {
            file,
            path: path.to_owned(),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one report with one `write` call, so that a crash leaves
    /// whole lines only (and at most a torn last line).
    pub fn append(&mut self, agent: &str, index: u32, report: &pb::Report) -> io::Result<()> {
        let mut line = serde_json::to_vec(&line(agent, index, report))?;
        line.push(b'\n');
        self.file.write_all(&line)
    }
}

fn line(agent: &str, index: u32, r: &pb::Report) -> Value {
    let c = r.counters.clone().unwrap_or_default();
    let mut histograms = Map::new();
    for h in &r.histograms {
        let name = Metric::from_wire(h.metric).map_or_else(|_| format!("metric_{}", h.metric), |m| m.name().to_owned());
        histograms.insert(name, Value::String(STANDARD.encode(&h.v2_deflate)));
    }
    json!({
        "agent": agent,
        "agent_index": index,
        "interval": r.interval,
        "sequence": r.sequence,
        "elapsed_us": r.elapsed_us,
        "counters": {
            "ok": c.ok,
            "errors": c.errors,
            "cancelled": c.cancelled,
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            "tokens_from_usage": c.tokens_from_usage,
            "tokens_counted": c.tokens_counted,
            "tokens_from_words": c.tokens_from_words,
            "tokens_from_tokenizer": c.tokens_from_tokenizer,
            "inputs_from_server": c.inputs_from_server,
            "inputs_from_tokenizer": c.inputs_from_tokenizer,
            "server_vs_events": comparison(c.server_vs_events.as_ref()),
            "server_vs_tokenizer": comparison(c.server_vs_tokenizer.as_ref()),
            "events_vs_tokenizer": comparison(c.events_vs_tokenizer.as_ref()),
            "active_users": c.active_users,
            "spans_exported": c.spans_exported,
            "spans_dropped": c.spans_dropped,
        },
        "exemplars": r.exemplars.iter().map(|e| json!({
            "metric": Metric::from_wire(e.metric).map_or("unknown", |m| m.name()),
            "value_us": e.value_us,
            "trace_id": e.trace_id,
        })).collect::<Vec<_>>(),
        "error_samples": r.error_samples.iter().map(|s| json!({"class": s.class, "message": s.message})).collect::<Vec<_>>(),
        "histograms": histograms,
    })
}

/// A token comparison as JSON: the summed counts of the requests that had
/// both (`null` when none had).
fn comparison(c: Option<&pb::TokenComparison>) -> Value {
    match c {
        Some(c) if c.requests > 0 => json!({
            "requests": c.requests,
            "first": c.first,
            "second": c.second,
            "abs_difference": c.abs_difference,
            "differing": c.differing,
        }),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_proto::Histograms;

    #[test]
    fn lines_hold_exact_histograms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("intervals.jsonl");
        let mut log = Log::create(&path).unwrap();
        let mut h = Histograms::new();
        h.record(Metric::Ttft, 1234);
        let report = pb::Report {
            interval: 3,
            sequence: 4,
            histograms: h.to_wire(),
            counters: Some(pb::Counters {
                ok: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        log.append("a", 0, &report).unwrap();
        log.append("b", 1, &report).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["agent"], "b");
        assert_eq!(lines[0]["interval"], 3);
        let bytes = STANDARD
            .decode(lines[0]["histograms"]["ttft"].as_str().unwrap())
            .unwrap();
        let back = Histograms::from_wire(&[pb::Histogram {
            metric: pb::Metric::Ttft as i32,
            v2_deflate: bytes,
        }])
        .unwrap();
        assert!(back == h);
    }
}
