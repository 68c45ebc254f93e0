//! Sending one OTLP request: gRPC through the generated client, or
//! protobuf over HTTP. Each send is bounded by the push timeout.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message as _;
use stampede_agent::http::Endpoint;
use stampede_otel::Protocol;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::Channel;

use crate::profile::Push;

/// The most of an error answer's body kept for the message.
const ERROR_BODY: usize = 4096;
/// Most of an answer read (a receiver's success answer is a few bytes).
const ANSWER: usize = 1024 * 1024;

/// A way to one receiver.
pub(crate) enum Sender {
    Grpc {
        client: MetricsServiceClient<Channel>,
        headers: Vec<(
            MetadataKey<tonic::metadata::Ascii>,
            MetadataValue<tonic::metadata::Ascii>,
        )>,
    },
    Http {
        endpoint: Endpoint,
        path: String,
        headers: http::HeaderMap,
    },
}

/// Checks the headers of `push`, so that a bad one is refused before the
/// run rather than on every push.
pub(crate) fn check(push: &Push) -> Result<(), String> {
    for (k, v) in &push.headers {
        http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
        http::HeaderValue::from_str(v).map_err(|_| format!("header {k:?}: its value is not a valid header value"))?;
    }
    if push.protocol == Protocol::HttpProtobuf {
        let uri: http::Uri = push.endpoint.parse().map_err(|e| format!("{}: {e}", push.endpoint))?;
        let base = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str())
        );
        Endpoint::parse(&base).map_err(|e| e.to_string())?;
    } else {
        tonic::transport::Endpoint::from_shared(push.endpoint.clone())
            .map_err(|e| format!("{}: {e}", push.endpoint))?;
    }
    Ok(())
}

impl Sender {
    /// A sender for `push`; call inside the runtime that will send (the
    /// gRPC channel connects lazily on it).
    pub(crate) fn new(push: &Push) -> Result<Sender, String> {
        check(push)?;
        match push.protocol {
            Protocol::Grpc => {
                // No timeouts of the channel's own: `send` bounds the
                // whole push, connecting included, and says so in its
                // words whichever part was slow.
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(push.endpoint.clone()).map_err(|e| e.to_string())?;
                if push.endpoint.starts_with("https://") {
                    endpoint = endpoint
                        .tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| e.to_string())?;
                }
                let mut headers = Vec::new();
                for (k, v) in &push.headers {
                    let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|e| format!("header {k:?}: {e}"))?;
                    let value = v
                        .parse()
                        .map_err(|_| format!("header {k:?}: not valid in gRPC metadata"))?;
                    headers.push((key, value));
                }
                Ok(Sender::Grpc {
                    client: MetricsServiceClient::new(endpoint.connect_lazy()),
                    headers,
                })
            }
            Protocol::HttpProtobuf => {
                let uri: http::Uri = push.endpoint.parse().map_err(|e| format!("{e}"))?;
                let base = format!(
                    "{}://{}",
                    uri.scheme_str().unwrap_or("http"),
                    uri.authority().map_or("", |a| a.as_str())
                );
                let endpoint = Endpoint::parse(&base).map_err(|e| e.to_string())?;
                let path = uri.path_and_query().map_or("/v1/metrics", |p| p.as_str()).to_owned();
                let mut headers = http::HeaderMap::new();
                for (k, v) in &push.headers {
                    let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
                    let value = http::HeaderValue::from_str(v).map_err(|e| e.to_string())?;
                    headers.append(name, value);
                }
                Ok(Sender::Http {
                    endpoint,
                    path,
                    headers,
                })
            }
        }
    }

    /// Sends `request`, within `timeout`; an error says why in words.
    pub(crate) async fn send(&mut self, request: ExportMetricsServiceRequest, timeout: Duration) -> Result<(), String> {
        match tokio::time::timeout(timeout, self.send_unbounded(request)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    async fn send_unbounded(&mut self, request: ExportMetricsServiceRequest) -> Result<(), String> {
        match self {
            Sender::Grpc { client, headers } => {
                let mut r = tonic::Request::new(request);
                for (k, v) in headers.iter() {
                    r.metadata_mut().insert(k.clone(), v.clone());
                }
                let answer = client.export(r).await.map_err(|s| match s.message() {
                    "" => format!("gRPC status {:?}", s.code()),
                    m => format!("gRPC status {:?}: {m}", s.code()),
                })?;
                match answer.into_inner().partial_success {
                    Some(p) if p.rejected_data_points > 0 => Err(format!(
                        "the receiver rejected {} points: {}",
                        p.rejected_data_points, p.error_message
                    )),
                    _ => Ok(()),
                }
            }
            Sender::Http {
                endpoint,
                path,
                headers,
            } => {
                let body = request.encode_to_vec();
                let headers = std::iter::once(("content-type", b"application/x-protobuf".as_slice()))
                    .chain(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
                let (status, body) = endpoint
                    .exchange("POST", path, headers, &body, ANSWER)
                    .await
                    .map_err(|e| format!("POST {path}: {e}"))?;
                if (200..300).contains(&status) {
                    return Ok(());
                }
                let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY)]);
                let status = http::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string());
                Err(format!("HTTP {status}: {}", text.trim()))
            }
        }
    }
}
