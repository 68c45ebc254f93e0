//! `[target]`: the dialect and everything that shapes a request — path,
//! headers (secrets by environment variable name), extra body fields, and
//! the template and pointers of an `http-json` endpoint.

use serde_json::{Map, Value};
use stampede_agent::api::{ApiConfig, Dialect, HeaderSource, HttpJson, StreamFormat, TimeUnit};
use toml::de::DeValue;

use super::doc::{Problems, Table, to_json};

/// Header names whose values are credentials: a profile must name an
/// environment variable for them rather than hold the value.
const SECRET_HEADERS: [&str; 5] = ["authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"];

/// Reads `api`, `path`, `headers`, `body` and `http_json` from `[target]`.
pub(super) fn walk(t: &mut Table<'_, '_>, p: &mut Problems<'_>) -> Option<ApiConfig> {
    let api = t.choice(p, "api", &Dialect::ALL.map(Dialect::name));
    let dialect: Dialect = api.map_or(Dialect::OpenAiChat, |a| {
        a.parse().expect("validated against Dialect::ALL")
    });
    let path = t.string(p, "path");
    if let Some(path) = &path
        && !path.starts_with('/')
    {
        p.at(
            t.span_of("path"),
            &t.path_of("path"),
            format!("expected a path starting with /, got {path:?}"),
        );
    }
    let mut ok = true;
    let mut headers = Vec::new();
    for (name, key, span, value) in t.entries(p, "headers").unwrap_or_default() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            p.at(
                Some(span.clone()),
                &key,
                format!("{name:?} is not a valid HTTP header name"),
            );
            ok = false;
        }
        let source = match value {
            DeValue::String(v) if SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str()) => {
                let _ = v;
                p.at(
                    Some(span),
                    &key,
                    format!(
                        "{name} holds a credential: never write it in a profile; give the name of an environment variable that holds the whole value, such as {name} = {{ env = \"LLM_API_KEY\" }}"
                    ),
                );
                ok = false;
                continue;
            }
            DeValue::String(v) => {
                if http::HeaderValue::from_str(v).is_err() {
                    p.at(Some(span), &key, "the value is not valid in an HTTP header");
                    ok = false;
                    continue;
                }
                HeaderSource::Literal(v.to_string())
            }
            DeValue::Table(inner) => match (inner.get("env").map(|v| v.get_ref()), inner.len()) {
                (Some(DeValue::String(var)), 1) if valid_env_name(var) => HeaderSource::Env(var.to_string()),
                _ => {
                    p.at(
                        Some(span),
                        &key,
                        "expected a string or { env = \"VARIABLE\" } naming an environment variable (letters, digits, _)",
                    );
                    ok = false;
                    continue;
                }
            },
            _ => {
                p.at(Some(span), &key, "expected a string or { env = \"VARIABLE\" }");
                ok = false;
                continue;
            }
        };
        headers.push((name, source));
    }
    let mut body = Map::new();
    for (name, _, _, value) in t.entries(p, "body").unwrap_or_default() {
        body.insert(name, to_json(value));
    }
    let mut h = t.table(p, "http_json");
    let http_json = if t.has("http_json") {
        let j = http_json(&mut h, p);
        ok &= j.is_some();
        j
    } else {
        None
    };
    h.finish(p);
    let config = ApiConfig {
        dialect,
        path,
        headers,
        body,
        http_json,
    };
    if ok {
        // Cross-field rules (http-json needs a path and [target.http_json]).
        for problem in config.problems() {
            p.at(t.span_of("api"), &t.path_of("api"), problem);
            ok = false;
        }
    }
    ok.then_some(config)
}

fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn pointer(h: &mut Table<'_, '_>, p: &mut Problems<'_>, key: &'static str) -> Option<Option<String>> {
    match h.string(p, key) {
        Some(ptr) if !(ptr.is_empty() || ptr.starts_with('/')) => {
            p.at(
                h.span_of(key),
                &h.path_of(key),
                format!("expected a JSON pointer such as \"/generated_text\" (RFC 6901, starting with /), got {ptr:?}"),
            );
            None
        }
        other => Some(other),
    }
}

/// `[target.http_json]`.
fn http_json(h: &mut Table<'_, '_>, p: &mut Problems<'_>) -> Option<HttpJson> {
    let template: Option<Value> = h
        .entries(p, "body")
        .map(|entries| Value::Object(entries.into_iter().map(|(k, _, _, v)| (k, to_json(v))).collect()));
    if template.is_none() && !h.has("body") {
        p.at(
            None,
            &h.path_of("body"),
            "missing: the request body template, such as body = { prompt = \"{{prompt}}\", max_tokens = \"{{max_tokens}}\" }",
        );
    }
    let text = pointer(h, p, "text");
    let tokens = pointer(h, p, "tokens");
    let input_tokens = pointer(h, p, "input_tokens");
    let duration = pointer(h, p, "duration");
    let done = pointer(h, p, "done");
    let unit = h.choice(p, "duration_unit", &TimeUnit::NAMES);
    let stream = h.choice(p, "stream", &StreamFormat::NAMES);
    if matches!(text, Some(None)) {
        p.at(
            None,
            &h.path_of("text"),
            "missing: the JSON pointer to the generated text, such as text = \"/generated_text\"",
        );
    }
    let config = HttpJson {
        template: template?,
        text: text??,
        tokens: tokens?,
        input_tokens: input_tokens?,
        duration: duration?,
        duration_unit: unit
            .as_deref()
            .and_then(TimeUnit::from_name)
            .unwrap_or(TimeUnit::Seconds),
        stream: stream
            .as_deref()
            .and_then(StreamFormat::from_name)
            .unwrap_or(StreamFormat::None),
        done: done?,
    };
    let problems = config.problems();
    for problem in &problems {
        p.at(h.span_of("body"), &h.path_of("body"), problem.clone());
    }
    problems.is_empty().then_some(config)
}
