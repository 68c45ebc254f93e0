//! Trace settings: where spans go, how, and how many.

use std::fmt;
use std::str::FromStr;

/// Jaeger's trace page; `{trace_id}` is replaced by the 32-digit hex id.
pub const DEFAULT_UI_URL: &str = "http://localhost:16686/trace/{trace_id}";

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC, by convention on port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies, by convention on port 4318.
    HttpProtobuf,
}

impl Protocol {
    /// The names accepted in profiles and in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub const NAMES: [&'static str; 2] = ["grpc", "http/protobuf"];

    /// Where a collector listens by default.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Grpc => "http://localhost:4317",
            Protocol::HttpProtobuf => "http://localhost:4318",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" | "http" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err("OTLP http/json is not supported; use \"grpc\" or \"http/protobuf\"".to_owned()),
            other => Err(format!(
                "unknown OTLP protocol {other:?}; expected \"grpc\" or \"http/protobuf\""
            )),
        }
    }
}

/// Where and how one process exports its spans.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The collector's URL as the exporter uses it: for gRPC the base URL,
    /// for HTTP the full URL of the traces path (`…/v1/traces`).
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// Share of requests exported by the ratio decision (0 to 1); failed
    /// and slowest requests are exported whatever it is.
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Trace page of the UI, with `{trace_id}` in place of the id.
    pub ui_url: String,
    /// Base URL of a Jaeger UI (`http://localhost:16686`), for a link
    /// that searches for a run's traces; `None`: no such link.
    pub ui: Option<String>,
}

impl Config {
    /// A configuration from a base endpoint as users write it (like
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`): for HTTP, `/v1/traces` is appended
    /// unless the URL already has a path.
    pub fn new(base: &str, protocol: Protocol, service_name: &str) -> Result<Config, String> {
        Ok(Config {
            endpoint: export_url(base, protocol)?,
            protocol,
            sample_ratio: 1.0,
            service_name: service_name.to_owned(),
            ui_url: DEFAULT_UI_URL.to_owned(),
            ui: None,
        })
    }

    /// The UI link of one trace.
    pub fn link(&self, trace_id: &str) -> String {
        self.ui_url.replace("{trace_id}", trace_id)
    }
}

/// Traces a search link asks for: the most Jaeger's search form offers
/// (its default, 20, would list a sliver of a run).
pub const SEARCH_LIMIT: u32 = 1500;

/// The page of a Jaeger UI at `ui` that lists the traces of `service`
/// whose spans carry the tag `key` = `value`, as its search form writes
/// it: `{ui}/search?service=…&tags={"key":"value"}&limit=1500`,
/// URL-encoded. The limit is spelled out because some Jaeger-compatible
/// stores (otlp-embedded) refuse a search without one.
pub fn search_link(ui: &str, service: &str, key: &str, value: &str) -> String {
    let tags = format!("{{{}:{}}}", json_string(key), json_string(value));
    format!(
        "{}/search?service={}&tags={}&limit={SEARCH_LIMIT}",
        ui.trim_end_matches('/'),
        url_encode(service),
        url_encode(&tags)
    )
}

/// Jaeger's trace page at `ui`.
pub fn trace_page(ui: &str) -> String {
    format!("{}/trace/{{trace_id}}", ui.trim_end_matches('/'))
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The exporter's URL for a base endpoint; an error says what is wrong.
pub fn export_url(base: &str, protocol: Protocol) -> Result<String, String> {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("https://"))
        .ok_or_else(|| format!("expected an http:// or https:// URL, got {base:?}"))?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    if authority.is_empty() {
        return Err(format!("the URL {base:?} names no host"));
    }
    Ok(match protocol {
        Protocol::Grpc => base.trim_end_matches('/').to_owned(),
        Protocol::HttpProtobuf if path.trim_matches('/').is_empty() => {
            format!("{}/v1/traces", base.trim_end_matches('/'))
        }
        Protocol::HttpProtobuf => base.to_owned(),
    })
}

/// What the standard `OTEL_*` variables say about traces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FromEnv {
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub disabled: bool,
    /// The exporter URL, already resolved: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// verbatim, else `OTEL_EXPORTER_OTLP_ENDPOINT` (with `/v1/traces` for
    /// HTTP).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<Protocol>,
    /// From `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub sample_ratio: Option<f64>,
    /// `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// Why `OTEL_TRACES_SAMPLER_ARG` was set but not read: the
    /// specification reads it only for the `traceidratio` and
    /// `parentbased_traceidratio` samplers.
    pub ignored: Option<String>,
}

/// Reads the standard variables through `var`; an error names the
/// variable and its bad value.
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<FromEnv, String> {
    let get = |k: &str| var(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let mut out = FromEnv {
        disabled: get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none")),
        ..FromEnv::default()
    };
    for key in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(v) = get(key) {
            out.protocol = Some(v.parse().map_err(|e| format!("{key}: {e}"))?);
            break;
        }
    }
    let protocol = out.protocol.unwrap_or(Protocol::Grpc);
    if let Some(v) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        export_url(&v, Protocol::Grpc).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))?;
        out.endpoint = Some(v);
    } else if let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        out.endpoint = Some(export_url(&v, protocol).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?);
    }
    let arg = get("OTEL_TRACES_SAMPLER_ARG");
    out.sample_ratio = match get("OTEL_TRACES_SAMPLER").as_deref() {
        None => None,
        Some("always_on" | "parentbased_always_on") => Some(1.0),
        Some("always_off" | "parentbased_always_off") => Some(0.0),
        Some("traceidratio" | "parentbased_traceidratio") => {
            let ratio = match &arg {
                None => 1.0,
                Some(a) => a
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {a:?}"))?,
            };
            Some(ratio)
        }
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER: {other:?} is not supported; use always_on, always_off or traceidratio"
            ));
        }
    };
    if let Some(a) = &arg
        && !matches!(
            get("OTEL_TRACES_SAMPLER").as_deref(),
            Some("traceidratio" | "parentbased_traceidratio")
        )
    {
        let sampler = match get("OTEL_TRACES_SAMPLER") {
            Some(s) => format!("OTEL_TRACES_SAMPLER is {s:?}"),
            None => "OTEL_TRACES_SAMPLER is not set".to_owned(),
        };
        out.ignored = Some(format!(
            "OTEL_TRACES_SAMPLER_ARG={a} is ignored: {sampler}, and the ratio is read only with \
             OTEL_TRACES_SAMPLER=traceidratio or parentbased_traceidratio (or set trace.sample_ratio in the profile)"
        ));
    }
    out.service_name = get("OTEL_SERVICE_NAME");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn http_endpoints_get_the_traces_path_once() {
        let http = Protocol::HttpProtobuf;
        assert_eq!(export_url("http://c:4318", http).unwrap(), "http://c:4318/v1/traces");
        assert_eq!(export_url("http://c:4318/", http).unwrap(), "http://c:4318/v1/traces");
        assert_eq!(
            export_url("http://c:4318/x/v1/traces", http).unwrap(),
            "http://c:4318/x/v1/traces"
        );
        assert_eq!(export_url("http://c:4317/", Protocol::Grpc).unwrap(), "http://c:4317");
        assert!(export_url("c:4317", Protocol::Grpc).unwrap_err().contains("http://"));
    }

    #[test]
    fn the_standard_variables_are_read_and_checked() {
        let e = from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "bench"),
        ]))
        .unwrap();
        assert_eq!(e.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        assert_eq!(e.protocol, Some(Protocol::HttpProtobuf));
        assert_eq!(e.sample_ratio, Some(0.25));
        assert_eq!(e.service_name.as_deref(), Some("bench"));
        assert_eq!(from_env(env(&[])).unwrap(), FromEnv::default());
        let bad = from_env(env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]));
        assert!(bad.unwrap_err().contains("OTEL_TRACES_SAMPLER_ARG"));
        let bad = from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]));
        assert!(bad.unwrap_err().contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
        assert!(from_env(env(&[("OTEL_SDK_DISABLED", "true")])).unwrap().disabled);
    }

    #[test]
    fn the_sampler_argument_is_read_only_for_the_ratio_samplers() {
        for sampler in ["traceidratio", "parentbased_traceidratio"] {
            let e = from_env(env(&[
                ("OTEL_TRACES_SAMPLER", sampler),
                ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ]))
            .unwrap();
            assert_eq!((e.sample_ratio, e.ignored), (Some(0.5), None), "{sampler}");
        }
        // Alone, as the specification has it, the argument chooses nothing.
        let e = from_env(env(&[("OTEL_TRACES_SAMPLER_ARG", "0.5")])).unwrap();
        assert_eq!(e.sample_ratio, None);
        let why = e.ignored.unwrap();
        assert!(why.contains("OTEL_TRACES_SAMPLER_ARG=0.5 is ignored"), "{why}");
        assert!(why.contains("OTEL_TRACES_SAMPLER is not set"), "{why}");
        let e = from_env(env(&[
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ]))
        .unwrap();
        assert_eq!(e.sample_ratio, Some(1.0));
        assert!(e.ignored.unwrap().contains("OTEL_TRACES_SAMPLER is \"always_on\""));
        // Nothing to ignore without the argument.
        assert_eq!(
            from_env(env(&[("OTEL_TRACES_SAMPLER", "always_on")])).unwrap().ignored,
            None
        );
    }

    #[test]
    fn a_search_link_is_what_jaegers_search_form_writes() {
        assert_eq!(
            search_link(
                "http://localhost:16686/",
                "stampede",
                "stampede.run_id",
                "high-20250101T000000Z"
            ),
            "http://localhost:16686/search?service=stampede&tags=%7B%22stampede.run_id%22%3A%22high-20250101T000000Z%22%7D&limit=1500"
        );
        assert_eq!(
            search_link("https://ui/jaeger", "my bench", "k", "a\"b"),
            "https://ui/jaeger/search?service=my%20bench&tags=%7B%22k%22%3A%22a%5C%22b%22%7D&limit=1500"
        );
        assert_eq!(trace_page("http://ui:16686/"), "http://ui:16686/trace/{trace_id}");
    }
}
