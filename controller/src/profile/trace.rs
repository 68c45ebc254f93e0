//! The `[trace]` table: where request spans go. Its values win over the
//! standard `OTEL_*` variables, which win over the defaults.

use stampede_otel::{Config, DEFAULT_UI_URL, FromEnv, Protocol, export_url, trace_page};

use super::doc::{Problems, Table};

/// `service.name` when neither the profile nor `OTEL_SERVICE_NAME` gives one.
pub const DEFAULT_SERVICE: &str = "stampede";

/// The `[trace]` table as written; every value is optional.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceTable {
    /// The table is present: tracing is on unless `enabled = false`.
    pub present: bool,
    /// `enabled`: false turns tracing off whatever the environment says.
    pub enabled: Option<bool>,
    /// `endpoint`: the collector's base URL, as seen from the agents.
    pub endpoint: Option<String>,
    /// `protocol`: "grpc" or "http/protobuf".
    pub protocol: Option<Protocol>,
    /// `sample_ratio`, 0 to 1.
    pub sample_ratio: Option<f64>,
    /// `service_name`.
    pub service_name: Option<String>,
    /// `ui_url`: the trace page, with `{trace_id}` in place of the id.
    pub ui_url: Option<String>,
    /// `ui`: a Jaeger UI's base URL (`http://localhost:16686`), for the
    /// link that searches for the run's traces and, without `ui_url`, for
    /// each trace's page.
    pub ui: Option<String>,
    /// `query_url`: a Jaeger query API (`http://localhost:16686`) to read
    /// the server's spans of the run back from after it.
    pub query_url: Option<String>,
}

impl TraceTable {
    /// The settings of a run: the profile's, then the environment's, then
    /// defaults. `None`: tracing is off (no table and no OTLP endpoint in
    /// the environment, or turned off explicitly).
    pub fn resolve(&self, env: &FromEnv) -> Option<Config> {
        if self.enabled == Some(false) || (!self.present && (env.disabled || env.endpoint.is_none())) {
            return None;
        }
        let protocol = self.protocol.or(env.protocol).unwrap_or(Protocol::Grpc);
        let endpoint = match (&self.endpoint, &env.endpoint) {
            (Some(base), _) => export_url(base, protocol).expect("validated when the profile was read"),
            (None, Some(url)) => url.clone(),
            (None, None) => export_url(protocol.default_endpoint(), protocol).expect("the defaults are valid"),
        };
        Some(Config {
            endpoint,
            protocol,
            sample_ratio: self.sample_ratio.or(env.sample_ratio).unwrap_or(1.0),
            service_name: self
                .service_name
                .clone()
                .or_else(|| env.service_name.clone())
                .unwrap_or_else(|| DEFAULT_SERVICE.to_owned()),
            ui_url: match (&self.ui_url, &self.ui) {
                (Some(page), _) => page.clone(),
                (None, Some(ui)) => trace_page(ui),
                (None, None) => DEFAULT_UI_URL.to_owned(),
            },
            ui: self.ui.as_ref().map(|ui| ui.trim_end_matches('/').to_owned()),
        })
    }
}

/// Reads the `[trace]` table.
pub(super) fn walk(t: &mut Table<'_, '_>, p: &mut Problems<'_>, present: bool) -> TraceTable {
    let enabled = t.bool(p, "enabled");
    let endpoint = t.string(p, "endpoint");
    let protocol = t
        .choice(p, "protocol", &Protocol::NAMES)
        .map(|name| name.parse().expect("validated against Protocol::NAMES"));
    let sample_ratio = t.number_in(p, "sample_ratio", 0.0, 1.0);
    let service_name = t.string(p, "service_name");
    let ui_url = t.string(p, "ui_url");
    let ui = t.string(p, "ui");
    if let Some(url) = &ui
        && let Err(e) = export_url(url, Protocol::Grpc)
    {
        p.at(
            t.span_of("ui"),
            &t.path_of("ui"),
            format!("{e}; write the Jaeger UI's base URL, for example \"http://localhost:16686\""),
        );
    }
    let query_url = t.string(p, "query_url");
    if let Some(url) = &query_url
        && let Err(e) = stampede_agent::http::Endpoint::parse(url)
    {
        p.at(t.span_of("query_url"), &t.path_of("query_url"), e.to_string());
    }
    if let Some(url) = &endpoint
        && let Err(e) = export_url(url, protocol.unwrap_or(Protocol::Grpc))
    {
        p.at(t.span_of("endpoint"), &t.path_of("endpoint"), e);
    }
    if let Some(name) = &service_name
        && name.trim().is_empty()
    {
        p.at(
            t.span_of("service_name"),
            &t.path_of("service_name"),
            "must not be empty",
        );
    }
    if let Some(url) = &ui_url
        && !url.contains("{trace_id}")
    {
        p.at(
            t.span_of("ui_url"),
            &t.path_of("ui_url"),
            format!("{url:?} has no {{trace_id}} placeholder; write, for example, {DEFAULT_UI_URL:?}"),
        );
    }
    TraceTable {
        present,
        enabled,
        endpoint,
        protocol,
        sample_ratio,
        service_name,
        ui_url,
        ui,
        query_url,
    }
}
