//! The server's own spans of the run, read back from the trace store after
//! the run: how long each request waited in the server's queue, exactly.
//!
//! Spans go from the agents and the server to the OTLP collector, never to
//! the controller. With `[trace] query_url` set (a Jaeger query API, such
//! as `http://localhost:16686`), the controller asks it for the run's
//! request traces once the load is over, keeps each request's server
//! queue time (llm-sim's `queue` span; vLLM's `gen_ai.latency.time_in_queue`
//! attribute) in `server-spans.json`, and the summary takes the server
//! queue's percentiles from them. `controller report` reads the file back,
//! so a rebuilt report needs no trace store.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stampede_agent::http::Endpoint;

/// The file in a run directory.
pub const FILE: &str = "server-spans.json";

/// Largest answer read from the query API.
const ANSWER_LIMIT: usize = 512 << 20;

/// How long to wait for the spans to reach the store.
pub const WAIT: Duration = Duration::from_secs(10);

/// The name of llm-sim's queue span.
const QUEUE_SPAN: &str = "queue";
/// The attribute vLLM's request span carries its queue time in, seconds.
const QUEUE_ATTRIBUTE: &str = "gen_ai.latency.time_in_queue";

/// The server's queue time of each request of a run whose trace was found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerSpans {
    /// Where they were read.
    pub query_url: String,
    /// The run's request traces found.
    pub traces: u64,
    /// Of those, the ones the server was told to record (sampled by the
    /// ratio, not only kept for being slow or failed) that succeeded.
    pub expected: u64,
    /// Why some expected spans are missing, when they are.
    pub note: Option<String>,
    /// One per request whose server queue time was found.
    pub spans: Vec<QueueSpan>,
}

/// One request's time in the server's queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSpan {
    /// The request's trace id.
    pub trace_id: String,
    /// When it left the queue (admitted), microseconds since the epoch.
    pub admitted_unix_us: u64,
    /// Its time in the queue, microseconds.
    pub queue_us: u64,
}

impl ServerSpans {
    /// Reads `server-spans.json`.
    pub fn read(path: &Path) -> Result<ServerSpans, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `server-spans.json`.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(self).expect("the spans always serialize");
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The queue spans of requests admitted at or after `from`.
    pub fn since(&self, from: SystemTime) -> impl Iterator<Item = &QueueSpan> {
        let from_us = from.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        self.spans.iter().filter(move |s| s.admitted_unix_us >= from_us)
    }
}

/// What to look for.
#[derive(Clone, Debug)]
pub struct Query {
    /// The query API's base URL.
    pub url: String,
    /// `service.name` of the request spans.
    pub service: String,
    /// The run's id, as every request span carries it.
    pub run_id: String,
    /// The ratio the requests were sampled by.
    pub sample_ratio: f64,
    /// Request spans the agents exported.
    pub exported: u64,
    /// When the run began and ended, for the store's search window.
    pub window: (SystemTime, SystemTime),
}

/// Asks the store for the run's traces until every request the server was
/// told to record has its queue time, or [`WAIT`] has passed.
pub async fn fetch(q: &Query) -> Result<ServerSpans, String> {
    let endpoint = Endpoint::parse(&q.url).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = once(&endpoint, q).await?;
        let complete = found.traces >= q.exported && found.spans.len() as u64 >= found.expected;
        if complete || tokio::time::Instant::now() >= deadline {
            let mut found = found;
            if !complete {
                found.note = Some(format!(
                    "after {WAIT:?}, {} of {} request traces and {} of {} server queue spans had reached {}",
                    found.traces,
                    q.exported,
                    found.spans.len(),
                    found.expected,
                    q.url
                ));
            }
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn once(endpoint: &Endpoint, q: &Query) -> Result<ServerSpans, String> {
    let tags = serde_json::json!({ "stampede.run_id": q.run_id }).to_string();
    // A margin over the spans exported: Jaeger's limit counts traces.
    let limit = q.exported.saturating_mul(2).max(100);
    let path = format!(
        "/api/traces?service={}&operation=llm.request&tags={}&start={}&end={}&limit={limit}",
        encode(&q.service),
        encode(&tags),
        unix_us(q.window.0).saturating_sub(60_000_000),
        unix_us(q.window.1).saturating_add(60_000_000),
    );
    let (status, body) = endpoint.get(&path, ANSWER_LIMIT).await?;
    if status != 200 {
        return Err(format!("GET {}{path} answered HTTP {status}", q.url));
    }
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET {}{path}: not a Jaeger answer: {e}", q.url))?;
    let mut found = parse(&answer, &q.run_id, q.sample_ratio);
    found.query_url = q.url.clone();
    Ok(found)
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn parent(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .and_then(|r| r["spanID"].as_str())
}

/// The run's request traces in a Jaeger answer: each client span of run
/// `run_id`, and the queue time its server children give.
pub fn parse(answer: &Value, run_id: &str, sample_ratio: f64) -> ServerSpans {
    let mut out = ServerSpans::default();
    let mut seen = std::collections::HashSet::new();
    for trace in answer["data"].as_array().into_iter().flatten() {
        let spans = trace["spans"].as_array().map(Vec::as_slice).unwrap_or_default();
        for client in spans.iter().filter(|s| {
            s["operationName"] == "llm.request" && tag(s, "stampede.run_id").and_then(Value::as_str) == Some(run_id)
        }) {
            let (Some(trace_id), Some(id)) = (client["traceID"].as_str(), client["spanID"].as_str()) else {
                continue;
            };
            if !seen.insert(id.to_owned()) {
                continue;
            }
            out.traces += 1;
            let told = stampede_otel::TraceId::from_hex(trace_id)
                .ok()
                .is_some_and(|t| stampede_otel::sampled_by_ratio(t, sample_ratio));
            let succeeded = tag(client, "error.type").is_none();
            out.expected += u64::from(told && succeeded);
            let queue = spans.iter().filter(|s| parent(s) == Some(id)).find_map(|s| {
                let start = s["startTime"].as_u64()?;
                if s["operationName"] == QUEUE_SPAN {
                    let duration = s["duration"].as_u64()?;
                    return Some((start + duration, duration));
                }
                let secs = tag(s, QUEUE_ATTRIBUTE)?.as_f64()?;
                let us = (secs * 1e6).round() as u64;
                Some((start + us, us))
            });
            if let Some((admitted_unix_us, queue_us)) = queue {
                out.spans.push(QueueSpan {
                    trace_id: trace_id.to_owned(),
                    admitted_unix_us,
                    queue_us,
                });
            }
        }
    }
    out.spans
        .sort_by(|a, b| (a.admitted_unix_us, &a.trace_id).cmp(&(b.admitted_unix_us, &b.trace_id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn span(trace: &str, id: &str, name: &str, parent: Option<&str>, start: u64, duration: u64, tags: Value) -> Value {
        let refs: Vec<Value> = parent
            .map(|p| json!({ "refType": "CHILD_OF", "traceID": trace, "spanID": p }))
            .into_iter()
            .collect();
        json!({ "traceID": trace, "spanID": id, "operationName": name, "references": refs,
                "startTime": start, "duration": duration, "tags": tags })
    }

    #[test]
    fn queue_times_come_from_queue_spans_or_vllms_attribute_of_this_run_only() {
        let run = json!([{ "key": "stampede.run_id", "value": "r1" }]);
        let t1 = "0af7651916cd43dd8448eb211c80319c";
        let t2 = "1af7651916cd43dd8448eb211c80319c";
        let t3 = "2af7651916cd43dd8448eb211c80319c";
        let answer = json!({ "data": [
            { "spans": [
                span(t1, "c1", "llm.request", None, 1_000, 9_000, run.clone()),
                span(t1, "q1", "queue", Some("c1"), 1_100, 250, json!([])),
                span(t1, "p1", "prefill", Some("c1"), 1_350, 20, json!([])),
            ]},
            { "spans": [
                span(t2, "c2", "llm.request", None, 2_000, 9_000, run.clone()),
                span(t2, "v2", "llm_request", Some("c2"), 2_100, 800,
                     json!([{ "key": "gen_ai.latency.time_in_queue", "value": 0.0125 }])),
            ]},
            { "spans": [
                span(t3, "c3", "llm.request", None, 3_000, 9_000, json!([{ "key": "stampede.run_id", "value": "other" }])),
                span(t3, "q3", "queue", Some("c3"), 3_100, 999, json!([])),
            ]},
        ]});
        let found = parse(&answer, "r1", 1.0);
        assert_eq!((found.traces, found.expected), (2, 2));
        assert_eq!(
            found.spans,
            [
                QueueSpan {
                    trace_id: t1.to_owned(),
                    admitted_unix_us: 1_350,
                    queue_us: 250
                },
                QueueSpan {
                    trace_id: t2.to_owned(),
                    admitted_unix_us: 14_600,
                    queue_us: 12_500
                },
            ]
        );
        let from = UNIX_EPOCH + Duration::from_micros(2_000);
        assert_eq!(found.since(from).count(), 1);
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("{\"a.b\":\"x y\"}"), "%7B%22a.b%22%3A%22x%20y%22%7D");
    }
}
