//! An in-memory OTLP/gRPC trace collector that answers the part of Jaeger's
//! query API a user (and a link in the summary) reaches for: `GET
//! /api/traces?service=S&operation=O&limit=N` and `GET /api/traces/{id}`, in
//! Jaeger's JSON shape.
//!
//! The receiver is the OpenTelemetry project's own generated OTLP service
//! (the `opentelemetry-proto` crate, code committed there), so it builds with
//! nothing but a Rust toolchain: no `protoc`.

// A test helper: it panics when the machine cannot give it a socket, and
// watches real processes from outside (no tokio clock to share).
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::{Value, json};

/// One received span and the `service.name` of the resource that sent it.
#[derive(Clone)]
struct Received {
    service: String,
    span: Span,
}

/// Spans by trace id, in arrival order.
type Store = Arc<Mutex<BTreeMap<Vec<u8>, Vec<Received>>>>;

/// A collector running on its own runtime, in this process.
pub struct Collector {
    _runtime: tokio::runtime::Runtime,
    store: Store,
    grpc: SocketAddr,
    /// Where the query API listens.
    pub query: SocketAddr,
}

struct Ingest(Store);

#[tonic::async_trait]
impl TraceService for Ingest {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut store = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.into_inner().resource_spans {
            let attrs = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attrs
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    store.entry(span.trace_id.clone()).or_default().push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Starts the gRPC receiver and the query API on free loopback ports.
    pub fn start() -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let store = Store::default();
        let (ingest, query_store) = (Ingest(store.clone()), store.clone());
        let (grpc, query) = runtime.block_on(async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let query = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addrs = (grpc.local_addr().expect("addr"), query.local_addr().expect("addr"));
            let service = TraceServiceServer::new(ingest)
                // Collectors such as rotel send gzip whatever they are told.
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
            );
            let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
                let store = query_store.clone();
                async move { answer(&store, &uri) }
            });
            tokio::spawn(async move { axum::serve(query, app).await });
            addrs
        });
        Collector {
            _runtime: runtime,
            store,
            grpc,
            query,
        }
    }

    /// The OTLP/gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `GET` on the query API; the JSON body of a 200.
    pub fn api(&self, path: &str) -> Option<Value> {
        match crate::prom::get(self.query, path) {
            Some((200, body)) => Some(serde_json::from_str(&body).expect("the query API answers JSON")),
            _ => None,
        }
    }

    /// Complete traces whose root span is `operation` of `service`, in
    /// Jaeger's JSON shape.
    pub fn traces(&self, service: &str, operation: &str) -> Vec<Value> {
        let path = format!("/api/traces?service={service}&operation={operation}&limit=1000000");
        let v = self.api(&path).expect("the traces query answers");
        v["data"].as_array().cloned().unwrap_or_default()
    }

    /// Every `span` span's `event` event, by hex trace id: its time,
    /// nanoseconds since the Unix epoch (the first such event of the trace).
    pub fn event_times(&self, span: &str, event: &str) -> HashMap<String, u64> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store
            .iter()
            .filter_map(|(trace, spans)| {
                let at = spans
                    .iter()
                    .filter(|r| r.span.name == span)
                    .flat_map(|r| &r.span.events)
                    .find(|e| e.name == event)?
                    .time_unix_nano;
                Some((hex(trace), at))
            })
            .collect()
    }

    /// The spans of one trace as OTLP carries them (name, kind, status,
    /// which Jaeger's JSON leaves out), by hex span id.
    pub fn otlp_spans(&self, trace_id: &str) -> HashMap<String, Value> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let spans = store.get(&unhex(trace_id)).cloned().unwrap_or_default();
        spans
            .into_iter()
            .map(|r| {
                let s = r.span;
                let status = s.status.map(|st| json!({ "code": st.code, "message": st.message }));
                (
                    hex(&s.span_id),
                    json!({ "name": s.name, "kind": s.kind, "status": status, "service": r.service }),
                )
            })
            .collect()
    }
}

/// The query API: a 200 with JSON, or a 404 naming what was not found.
fn answer(store: &Store, uri: &axum::http::Uri) -> (axum::http::StatusCode, axum::Json<Value>) {
    use axum::http::StatusCode;
    let store = store.lock().unwrap_or_else(|p| p.into_inner());
    let path = uri.path();
    if let Some(id) = path.strip_prefix("/api/traces/") {
        return match store.get(&unhex(id)) {
            Some(spans) => (
                StatusCode::OK,
                axum::Json(json!({ "data": [jaeger(spans)], "total": 1 })),
            ),
            None => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({ "errors": [format!("trace {id} not found")] })),
            ),
        };
    }
    if path != "/api/traces" {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "errors": ["API not supported"] })),
        );
    }
    let params: HashMap<&str, &str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let limit = params.get("limit").and_then(|l| l.parse().ok()).unwrap_or(20);
    let mut found: Vec<(u64, Value)> = store
        .values()
        .filter_map(|spans| {
            let root = complete_root(spans)?;
            let wanted = params.get("service").is_none_or(|s| root.service == *s)
                && params.get("operation").is_none_or(|o| root.span.name == *o);
            let end = spans.iter().map(|r| r.span.end_time_unix_nano).max().unwrap_or(0);
            wanted.then(|| (end, jaeger(spans)))
        })
        .collect();
    // Newest first, as Jaeger lists them.
    found.sort_by_key(|t| std::cmp::Reverse(t.0));
    let data: Vec<Value> = found.into_iter().take(limit).map(|(_, t)| t).collect();
    (StatusCode::OK, axum::Json(json!({ "total": data.len(), "data": data })))
}

/// The root span of a trace whose every span's parent has arrived.
fn complete_root(spans: &[Received]) -> Option<&Received> {
    let ids: std::collections::HashSet<&[u8]> = spans.iter().map(|r| r.span.span_id.as_slice()).collect();
    let complete = spans
        .iter()
        .all(|r| r.span.parent_span_id.is_empty() || ids.contains(r.span.parent_span_id.as_slice()));
    complete.then(|| spans.iter().find(|r| r.span.parent_span_id.is_empty()))?
}

/// One trace in Jaeger's JSON shape: spans with tags, logs and CHILD_OF
/// references, and a process per service.
fn jaeger(spans: &[Received]) -> Value {
    let mut processes = BTreeMap::new();
    let list: Vec<Value> = spans
        .iter()
        .map(|r| {
            let n = processes.len();
            let pid = processes
                .entry(r.service.clone())
                .or_insert_with(|| format!("p{}", n + 1))
                .clone();
            let s = &r.span;
            let mut references: Vec<Value> = s
                .links
                .iter()
                .map(|l| json!({ "refType": "FOLLOWS_FROM", "traceID": hex(&l.trace_id), "spanID": hex(&l.span_id) }))
                .collect();
            if !s.parent_span_id.is_empty() {
                references.push(
                    json!({ "refType": "CHILD_OF", "traceID": hex(&s.trace_id), "spanID": hex(&s.parent_span_id) }),
                );
            }
            let logs: Vec<Value> = s
                .events
                .iter()
                .map(|e| {
                    let mut fields = vec![json!({ "key": "event", "type": "string", "value": e.name })];
                    fields.extend(e.attributes.iter().map(tag));
                    json!({ "timestamp": e.time_unix_nano / 1000, "fields": fields })
                })
                .collect();
            json!({
                "traceID": hex(&s.trace_id),
                "spanID": hex(&s.span_id),
                "operationName": s.name,
                "references": references,
                "startTime": s.start_time_unix_nano / 1000,
                "duration": s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1000,
                "tags": s.attributes.iter().map(tag).collect::<Vec<_>>(),
                "logs": logs,
                "processID": pid,
            })
        })
        .collect();
    let processes: serde_json::Map<String, Value> = processes
        .into_iter()
        .map(|(service, pid)| (pid, json!({ "serviceName": service, "tags": [] })))
        .collect();
    json!({
        "traceID": spans.first().map(|r| hex(&r.span.trace_id)),
        "spans": list,
        "processes": processes,
    })
}

/// A Jaeger tag: numbers and booleans keep their type, arrays become their
/// JSON text, as Jaeger shows them.
fn tag(kv: &KeyValue) -> Value {
    let (kind, value) = typed(kv.value.as_ref());
    json!({ "key": kv.key, "type": kind, "value": value })
}

fn typed(v: Option<&AnyValue>) -> (&'static str, Value) {
    use any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        Some(V::StringValue(s)) => ("string", Value::from(s.as_str())),
        Some(V::BoolValue(b)) => ("bool", Value::from(*b)),
        Some(V::IntValue(i)) => ("int64", Value::from(*i)),
        Some(V::DoubleValue(d)) => ("float64", Value::from(*d)),
        Some(V::ArrayValue(a)) => {
            let items: Vec<Value> = a.values.iter().map(|v| typed(Some(v)).1).collect();
            ("string", Value::from(Value::Array(items).to_string()))
        }
        Some(V::BytesValue(b)) => ("string", Value::from(hex(b))),
        Some(V::KvlistValue(_) | V::StringValueStrindex(_)) | None => ("string", Value::Null),
    }
}

fn text(v: Option<&AnyValue>) -> Option<String> {
    match v?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}
