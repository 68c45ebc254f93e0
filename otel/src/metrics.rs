//! What the standard `OTEL_*` variables say about pushing metrics. Read
//! as the trace variables are ([`crate::from_env`]): the signal's own
//! variable first, then the shared one; an error names the variable and
//! its bad value.

use std::time::Duration;

use crate::{Protocol, signal_url};

/// What the standard variables say about metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsFromEnv {
    /// `OTEL_METRICS_EXPORTER`: `Some(true)` for `otlp`, `Some(false)`
    /// for `none` (or `OTEL_SDK_DISABLED=true`), `None` when unset.
    pub enabled: Option<bool>,
    /// The exporter URL, already resolved:
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` verbatim, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/metrics` for HTTP).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<Protocol>,
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds).
    pub interval: Option<Duration>,
    /// `OTEL_METRIC_EXPORT_TIMEOUT` (milliseconds).
    pub timeout: Option<Duration>,
    /// `OTEL_EXPORTER_OTLP_METRICS_HEADERS` or `OTEL_EXPORTER_OTLP_HEADERS`:
    /// `key=value` pairs, values percent-decoded.
    pub headers: Vec<(String, String)>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
}

/// Reads the metrics variables through `var`.
pub fn metrics_from_env(var: impl Fn(&str) -> Option<String>) -> Result<MetricsFromEnv, String> {
    let get = |k: &str| var(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut out = MetricsFromEnv::default();
    if let Some(v) = get("OTEL_METRICS_EXPORTER") {
        let names: Vec<String> = v.split(',').map(|n| n.trim().to_ascii_lowercase()).collect();
        out.enabled = if names.iter().any(|n| n == "otlp") {
            Some(true)
        } else if names.iter().all(|n| n == "none") {
            Some(false)
        } else {
            return Err(format!(
                "OTEL_METRICS_EXPORTER: {v:?} is not supported; use \"otlp\" or \"none\" \
                 (Prometheus can scrape `controller run --metrics-addr` instead)"
            ));
        };
    }
    if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        out.enabled = Some(false);
    }
    for key in ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(v) = get(key) {
            out.protocol = Some(v.parse().map_err(|e| format!("{key}: {e}"))?);
            break;
        }
    }
    let protocol = out.protocol.unwrap_or(Protocol::Grpc);
    if let Some(v) = get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
        signal_url(&v, Protocol::Grpc, "metrics").map_err(|e| format!("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {e}"))?;
        out.endpoint = Some(v);
    } else if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        out.endpoint =
            Some(signal_url(&v, protocol, "metrics").map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?);
    }
    let millis = |key: &str| -> Result<Option<Duration>, String> {
        match get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(|ms| Some(Duration::from_millis(ms)))
                .ok_or_else(|| format!("{key}: expected a positive number of milliseconds, got {v:?}")),
        }
    };
    out.interval = millis("OTEL_METRIC_EXPORT_INTERVAL")?;
    out.timeout = millis("OTEL_METRIC_EXPORT_TIMEOUT")?;
    for key in ["OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"] {
        if let Some(v) = get(key) {
            out.headers = headers(&v).map_err(|e| format!("{key}: {e}"))?;
            break;
        }
    }
    out.service_name = get("OTEL_SERVICE_NAME");
    Ok(out)
}

/// `key=value,key2=value2`, as the OTLP exporter specification writes
/// headers; values may be percent-encoded.
fn headers(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("expected key=value pairs separated by commas, got {pair:?}"))?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("{key:?} is not a header name"));
        }
        out.push((key.to_ascii_lowercase(), percent_decode(value.trim())?));
    }
    Ok(out)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{text:?} has a bad percent escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_metrics_variables_win_over_the_shared_ones() {
        let e = metrics_from_env(env(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "2500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-shared=1"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                "Authorization=Bearer%20abc, x-org = 7",
            ),
        ]))
        .unwrap();
        assert_eq!(e.enabled, Some(true));
        assert_eq!(e.protocol, Some(Protocol::HttpProtobuf));
        assert_eq!(e.endpoint.as_deref(), Some("http://c:4318/v1/metrics"));
        assert_eq!(e.interval, Some(Duration::from_millis(2500)));
        assert_eq!(
            e.headers,
            [
                ("authorization".to_owned(), "Bearer abc".to_owned()),
                ("x-org".to_owned(), "7".to_owned())
            ]
        );
        let own = metrics_from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:9/custom"),
        ]))
        .unwrap();
        assert_eq!(own.endpoint.as_deref(), Some("http://m:9/custom"));
        assert_eq!(own.enabled, None);
        assert_eq!(metrics_from_env(env(&[])).unwrap(), MetricsFromEnv::default());
    }

    #[test]
    fn none_turns_it_off_and_bad_values_name_their_variable() {
        let off = metrics_from_env(env(&[("OTEL_METRICS_EXPORTER", "none")])).unwrap();
        assert_eq!(off.enabled, Some(false));
        let off = metrics_from_env(env(&[("OTEL_METRICS_EXPORTER", "otlp"), ("OTEL_SDK_DISABLED", "true")])).unwrap();
        assert_eq!(off.enabled, Some(false));
        for (key, value) in [
            ("OTEL_METRICS_EXPORTER", "console"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "novalue"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=%zz"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "c:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
        ] {
            let e = metrics_from_env(env(&[(key, value)])).unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
    }
}
