//! The `[metrics]` table: pushing the run's metrics over OTLP. Its values
//! win over the standard `OTEL_*` variables, which win over the defaults.

use std::time::Duration;

use stampede_otel::{MetricsFromEnv, Protocol, signal_url};

use super::doc::{Problems, Table};

/// The shortest time between two pushes: each push carries every
/// histogram of the run.
pub(crate) const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(100);
/// How long one push may take unless `OTEL_METRIC_EXPORT_TIMEOUT` says
/// otherwise: a collector that does not answer costs at most this, at the
/// end of the run too.
pub(crate) const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The `[metrics]` table as written; every value is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsTable {
    /// `otlp`: true pushes, false never does, whatever the environment
    /// says; unset leaves it to `OTEL_METRICS_EXPORTER`.
    pub otlp: Option<bool>,
    /// `endpoint`: the receiver's base URL (`http://collector:4317`).
    pub endpoint: Option<String>,
    /// `protocol`: "grpc" or "http/protobuf".
    pub protocol: Option<Protocol>,
    /// `interval`: time between pushes; the report interval when unset.
    pub interval: Option<Duration>,
}

/// Where, how and how often the run's metrics are pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct Push {
    /// The receiver's URL as the exporter uses it: for gRPC the base URL,
    /// for HTTP the full URL of the metrics path (`…/v1/metrics`).
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// Time between pushes.
    pub interval: Duration,
    /// Longest one push may take.
    pub timeout: Duration,
    /// Headers sent with every push (credentials, tenant ids); never
    /// logged.
    pub headers: Vec<(String, String)>,
    /// `service.name` of the resource.
    pub service_name: String,
}

impl MetricsTable {
    /// The push settings of a run: the profile's, then the environment's,
    /// then defaults (the report `interval`, the trace's `service_name`).
    /// `None`: nothing is pushed.
    pub fn resolve(&self, env: &MetricsFromEnv, interval: Duration, service_name: &str) -> Option<Push> {
        if !self.otlp.or(env.enabled).unwrap_or(false) {
            return None;
        }
        let protocol = self.protocol.or(env.protocol).unwrap_or(Protocol::Grpc);
        let endpoint = match (&self.endpoint, &env.endpoint) {
            (Some(base), _) => signal_url(base, protocol, "metrics").expect("validated when the profile was read"),
            (None, Some(url)) => url.clone(),
            (None, None) => {
                signal_url(protocol.default_endpoint(), protocol, "metrics").expect("the defaults are valid")
            }
        };
        Some(Push {
            endpoint,
            protocol,
            interval: self
                .interval
                .or(env.interval)
                .unwrap_or(interval)
                .max(MIN_PUSH_INTERVAL),
            timeout: env.timeout.unwrap_or(DEFAULT_PUSH_TIMEOUT),
            headers: env.headers.clone(),
            service_name: service_name.to_owned(),
        })
    }
}

/// Reads the `[metrics]` table.
pub(super) fn walk(t: &mut Table<'_, '_>, p: &mut Problems<'_>) -> MetricsTable {
    let otlp = t.bool(p, "otlp");
    let endpoint = t.string(p, "endpoint");
    let protocol = t
        .choice(p, "protocol", &Protocol::NAMES)
        .map(|name| name.parse().expect("validated against Protocol::NAMES"));
    let interval = t.millis(p, "interval", false).filter(|&d| {
        let short = d < MIN_PUSH_INTERVAL;
        if short {
            p.at(
                t.span_of("interval"),
                &t.path_of("interval"),
                format!(
                    "expected at least {MIN_PUSH_INTERVAL:?} (each push carries every histogram of the run), got {d:?}"
                ),
            );
        }
        !short
    });
    if let Some(url) = &endpoint {
        let checked = signal_url(url, protocol.unwrap_or(Protocol::Grpc), "metrics").and_then(|full| {
            full.parse::<http::Uri>()
                .map(|_| ())
                .map_err(|e| format!("{url:?} is not a URL: {e}"))
        });
        if let Err(e) = checked {
            p.at(t.span_of("endpoint"), &t.path_of("endpoint"), e);
        }
    }
    MetricsTable {
        otlp,
        endpoint,
        protocol,
        interval,
    }
}
