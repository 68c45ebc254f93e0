//! An in-memory OTLP metrics receiver: the OpenTelemetry project's
//! generated gRPC service (`opentelemetry-proto`, committed code, so no
//! `protoc`) and an OTLP/HTTP handler that decodes the protobuf body. It
//! keeps every request it is sent, in arrival order, with the headers it
//! came with.

// A test helper: it panics when the machine cannot give it a socket.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{HistogramDataPoint, Metric, NumberDataPoint, metric, number_data_point};
use prost::Message as _;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Push {
    /// The request.
    pub request: ExportMetricsServiceRequest,
    /// Its headers (gRPC metadata or HTTP headers), names in lower case.
    pub headers: Vec<(String, String)>,
}

type Store = Arc<Mutex<Vec<Push>>>;

/// A receiver running on its own runtime, in this process.
pub struct Receiver {
    _runtime: tokio::runtime::Runtime,
    store: Store,
    grpc: SocketAddr,
    http: SocketAddr,
}

struct Ingest(Store);

#[tonic::async_trait]
impl MetricsService for Ingest {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some((k.to_string(), v.to_str().ok()?.to_owned())),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let push = Push {
            request: request.into_inner(),
            headers,
        };
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(push);
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Starts the gRPC and HTTP receivers on free loopback ports.
    pub fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let store = Store::default();
        let (ingest, http_store) = (Ingest(store.clone()), store.clone());
        let (grpc, http) = runtime.block_on(async move {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addrs = (grpc.local_addr().expect("addr"), http.local_addr().expect("addr"));
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(ingest))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc)),
            );
            let app = axum::Router::new().route(
                "/v1/metrics",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let store = http_store.clone();
                    async move {
                        let protobuf = headers
                            .get(axum::http::header::CONTENT_TYPE)
                            .is_some_and(|v| v == "application/x-protobuf");
                        if !protobuf {
                            return (axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
                        }
                        let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
                            return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                        };
                        let headers = headers
                            .iter()
                            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                            .collect();
                        store
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Push { request, headers });
                        let answer = ExportMetricsServiceResponse { partial_success: None };
                        (axum::http::StatusCode::OK, answer.encode_to_vec())
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(http, app).await });
            addrs
        });
        Receiver {
            _runtime: runtime,
            store,
            grpc,
            http,
        }
    }

    /// The OTLP/gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The OTLP/HTTP base endpoint (`/v1/metrics` is below it).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every request received so far, in order.
    pub fn pushes(&self) -> Vec<Push> {
        self.store.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Push {
    /// Every metric of the request.
    pub fn metrics(&self) -> Vec<&Metric> {
        self.request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .collect()
    }

    /// The metric named `name`.
    pub fn metric(&self, name: &str) -> Option<&Metric> {
        self.metrics().into_iter().find(|m| m.name == name)
    }

    /// The points of the sum or gauge `name`.
    pub fn numbers(&self, name: &str) -> Vec<&NumberDataPoint> {
        match self.metric(name).and_then(|m| m.data.as_ref()) {
            Some(metric::Data::Sum(s)) => s.data_points.iter().collect(),
            Some(metric::Data::Gauge(g)) => g.data_points.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The points of the histogram `name`.
    pub fn histograms(&self, name: &str) -> Vec<&HistogramDataPoint> {
        match self.metric(name).and_then(|m| m.data.as_ref()) {
            Some(metric::Data::Histogram(h)) => h.data_points.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The value of the number point of `name` whose attributes include
    /// every one of `with`.
    pub fn number(&self, name: &str, with: &[(&str, &str)]) -> Option<i64> {
        self.numbers(name)
            .into_iter()
            .find(|p| with.iter().all(|(k, v)| attr(&p.attributes, k).as_deref() == Some(*v)))
            .and_then(|p| match p.value {
                Some(number_data_point::Value::AsInt(n)) => Some(n),
                Some(number_data_point::Value::AsDouble(x)) => Some(x as i64),
                None => None,
            })
    }

    /// A resource attribute.
    pub fn resource(&self, key: &str) -> Option<String> {
        self.request
            .resource_metrics
            .first()
            .and_then(|r| r.resource.as_ref())
            .and_then(|r| attr(&r.attributes, key))
    }
}

/// An attribute's value as text (integers written out).
pub fn attr(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    match value {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(n) => Some(n.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(x) => Some(x.to_string()),
        _ => None,
    }
}
