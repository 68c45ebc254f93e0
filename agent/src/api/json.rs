//! `http-json`: any JSON endpoint, such as a home-made Flask or FastAPI
//! `/generate`, described by a body template and JSON pointers.
//!
//! The template is a JSON document. A string that is exactly a placeholder
//! becomes a typed value: `"{{prompt}}"` and `"{{model}}"` strings,
//! `"{{max_tokens}}"` and `"{{temperature}}"` numbers, `"{{stream}}"` a
//! boolean; an object member whose placeholder has no value (no
//! `max_tokens` in the profile) is left out. A placeholder inside a longer
//! string is replaced by its text. Pointers (RFC 6901, such as
//! `/generated_text` or `/choices/0/text`) say where the answer keeps its
//! text, its token count and the server's own duration.
//!
//! Streaming is optional: NDJSON (one object per line, the text of each
//! line at the same pointer, an optional pointer to a `done` flag) or plain
//! chunked text (every chunk is generated text).

use serde_json::{Map, Value};

use super::{Chunk, Parsed, ServerTimes, Spec, Usage, keep, words};

/// The placeholders a template may use.
pub const PLACEHOLDERS: [&str; 5] = ["prompt", "model", "max_tokens", "temperature", "stream"];

/// How an `http-json` endpoint streams, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    /// It answers whole; the profile's `stream` is ignored.
    None,
    /// Newline-delimited JSON objects.
    Ndjson,
    /// Plain chunked text.
    Text,
}

impl StreamFormat {
    /// Names used in profiles.
    pub const NAMES: [&str; 3] = ["none", "ndjson", "text"];

    /// The format with this name.
    pub fn from_name(name: &str) -> Option<StreamFormat> {
        match name {
            "none" => Some(StreamFormat::None),
            "ndjson" => Some(StreamFormat::Ndjson),
            "text" => Some(StreamFormat::Text),
            _ => None,
        }
    }

    /// The name used in profiles.
    pub fn name(self) -> &'static str {
        match self {
            StreamFormat::None => "none",
            StreamFormat::Ndjson => "ndjson",
            StreamFormat::Text => "text",
        }
    }
}

/// The unit of a server-reported duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeUnit {
    /// Seconds (`inference_time_seconds`).
    Seconds,
    /// Milliseconds (`inference_time_ms`).
    Millis,
    /// Microseconds.
    Micros,
    /// Nanoseconds (Ollama-style).
    Nanos,
}

impl TimeUnit {
    /// Names used in profiles.
    pub const NAMES: [&str; 4] = ["s", "ms", "us", "ns"];

    /// The unit with this name.
    pub fn from_name(name: &str) -> Option<TimeUnit> {
        match name {
            "s" => Some(TimeUnit::Seconds),
            "ms" => Some(TimeUnit::Millis),
            "us" => Some(TimeUnit::Micros),
            "ns" => Some(TimeUnit::Nanos),
            _ => None,
        }
    }

    /// The name used in profiles.
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "s",
            TimeUnit::Millis => "ms",
            TimeUnit::Micros => "us",
            TimeUnit::Nanos => "ns",
        }
    }

    fn micros(self, value: f64) -> Option<u64> {
        let us = match self {
            TimeUnit::Seconds => value * 1e6,
            TimeUnit::Millis => value * 1e3,
            TimeUnit::Micros => value,
            TimeUnit::Nanos => value / 1e3,
        };
        (us.is_finite() && us >= 0.0).then(|| us.round() as u64)
    }
}

/// The description of one `http-json` endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpJson {
    /// The request body, with placeholders.
    pub template: Value,
    /// Pointer to the generated text (in the whole answer, and in each
    /// NDJSON line).
    pub text: String,
    /// Pointer to the number of generated tokens, when the server says.
    pub tokens: Option<String>,
    /// Pointer to the number of prompt tokens, when the server says.
    pub input_tokens: Option<String>,
    /// Pointer to the server's own duration of the request.
    pub duration: Option<String>,
    /// Unit of that duration.
    pub duration_unit: TimeUnit,
    /// How the endpoint streams.
    pub stream: StreamFormat,
    /// NDJSON: pointer to a boolean that is true on the last line. With
    /// it, a stream that ends before such a line is an error.
    pub done: Option<String>,
}

fn bad_pointer(pointer: &str) -> bool {
    !(pointer.is_empty() || pointer.starts_with('/'))
}

impl HttpJson {
    /// Problems that make it unusable, each naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let pointers = [
            ("text", Some(&self.text)),
            ("tokens", self.tokens.as_ref()),
            ("input_tokens", self.input_tokens.as_ref()),
            ("duration", self.duration.as_ref()),
            ("done", self.done.as_ref()),
        ];
        for (field, pointer) in pointers {
            if let Some(p) = pointer
                && bad_pointer(p)
            {
                out.push(format!(
                    "{field} = {p:?} is not a JSON pointer; pointers start with /, such as \"/generated_text\""
                ));
            }
        }
        let mut used = Vec::new();
        placeholders_in(&self.template, &mut used);
        for name in &used {
            if !PLACEHOLDERS.contains(&name.as_str()) {
                out.push(format!(
                    "the body template uses {{{{{name}}}}}; the placeholders are {}",
                    PLACEHOLDERS.map(|p| format!("{{{{{p}}}}}")).join(", ")
                ));
            }
        }
        if !used.iter().any(|n| n == "prompt") {
            out.push("the body template never uses {{prompt}}".to_owned());
        }
        if self.done.is_some() && self.stream != StreamFormat::Ndjson {
            out.push("done is a pointer into NDJSON lines: it needs stream = \"ndjson\"".to_owned());
        }
        out
    }

    /// The request body for one prompt.
    pub(super) fn body(&self, model: &str, prompt: &str, spec: &Spec) -> Value {
        let value = |name: &str| -> Option<Value> {
            match name {
                "prompt" => Some(Value::from(prompt)),
                "model" => Some(Value::from(model)),
                "max_tokens" => spec.max_tokens.map(Value::from),
                "temperature" => spec.temperature.map(Value::from),
                "stream" => Some(Value::Bool(spec.stream && self.stream != StreamFormat::None)),
                _ => None,
            }
        };
        fill(&self.template, &value).unwrap_or(Value::Null)
    }

    /// Parses one NDJSON line.
    pub(super) fn event(&self, data: &[u8], out: Option<&mut String>) -> Parsed {
        match serde_json::from_slice::<Value>(data) {
            Ok(v) => self.read(&v, true, out),
            Err(e) => Parsed::Malformed(format!("invalid JSON in a stream line: {e}")),
        }
    }

    /// Parses a whole answer.
    pub(super) fn whole(&self, body: &[u8], out: Option<&mut String>) -> Parsed {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => self.read(&v, false, out),
            Err(e) => Parsed::Malformed(format!("invalid JSON response: {e}")),
        }
    }

    fn read(&self, v: &Value, streamed: bool, out: Option<&mut String>) -> Parsed {
        let text = v.pointer(&self.text);
        let text = match text {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(Value::Null) | None => None,
            Some(other) => {
                return Parsed::Malformed(format!("{} holds {other}, not a string", self.text));
            }
        };
        if text.is_none()
            && let Some(error) = v.get("error").or_else(|| v.get("detail"))
        {
            return Parsed::ServerError(error.as_str().map_or_else(|| error.to_string(), str::to_owned));
        }
        if text.is_none() && !streamed {
            return Parsed::Malformed(format!("the answer has no text at {}", self.text));
        }
        keep(out, text);
        let count = |pointer: &Option<String>| pointer.as_ref().and_then(|p| v.pointer(p)).and_then(Value::as_u64);
        let usage = count(&self.tokens).map(|output_tokens| Usage {
            input_tokens: count(&self.input_tokens),
            output_tokens,
        });
        let total_us = self
            .duration
            .as_ref()
            .and_then(|p| v.pointer(p))
            .and_then(Value::as_f64)
            .and_then(|d| self.duration_unit.micros(d));
        let finished = match &self.done {
            Some(p) => v.pointer(p).and_then(Value::as_bool).unwrap_or(false),
            None => !streamed,
        };
        Parsed::Chunk(Chunk {
            content_events: u32::from(text.is_some_and(|t| !t.is_empty())),
            // Streamed lines are counted as events, never by words.
            words: if streamed { 0 } else { text.map_or(0, words) },
            text_bytes: text.map_or(0, |t| t.len() as u64),
            finished,
            finish: None,
            usage,
            server: ServerTimes {
                total_us,
                ..ServerTimes::default()
            },
            cached_tokens: None,
        })
    }
}

/// Every `{{name}}` in the template's strings.
fn placeholders_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else { break };
                out.push(after[..end].trim().to_owned());
                rest = &after[end + 2..];
            }
        }
        Value::Array(items) => items.iter().for_each(|i| placeholders_in(i, out)),
        Value::Object(map) => map.values().for_each(|i| placeholders_in(i, out)),
        _ => {}
    }
}

/// The template with its placeholders filled; `None` for a value whose
/// placeholder has nothing to put there.
fn fill(v: &Value, value: &impl Fn(&str) -> Option<Value>) -> Option<Value> {
    match v {
        Value::String(s) => {
            let trimmed = s.trim();
            if let Some(name) = trimmed.strip_prefix("{{").and_then(|r| r.strip_suffix("}}"))
                && !name.contains("{{")
            {
                return value(name.trim());
            }
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else { break };
                out.push_str(&rest[..start]);
                match value(after[..end].trim()) {
                    Some(Value::String(t)) => out.push_str(&t),
                    Some(other) => out.push_str(&other.to_string()),
                    None => {}
                }
                rest = &after[end + 2..];
            }
            out.push_str(rest);
            Some(Value::String(out))
        }
        Value::Array(items) => Some(Value::Array(
            items.iter().map(|i| fill(i, value).unwrap_or(Value::Null)).collect(),
        )),
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, item) in map {
                if let Some(filled) = fill(item, value) {
                    out.insert(k.clone(), filled);
                }
            }
            Some(Value::Object(out))
        }
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_server() -> HttpJson {
        HttpJson {
            template: json!({"prompt": "{{prompt}}", "max_new_tokens": "{{max_tokens}}", "temperature": "{{temperature}}", "note": "for {{model}}"}),
            text: "/generated_text".to_owned(),
            tokens: Some("/tokens_generated".to_owned()),
            input_tokens: None,
            duration: Some("/inference_time_ms".to_owned()),
            duration_unit: TimeUnit::Millis,
            stream: StreamFormat::None,
            done: None,
        }
    }

    #[test]
    fn placeholders_become_typed_values_and_unset_ones_vanish() {
        let h = seed_server();
        assert!(h.problems().is_empty(), "{:?}", h.problems());
        let spec = Spec {
            max_tokens: Some(32),
            temperature: None,
            stream: true,
        };
        let body = h.body("gemma", "say \"hi\"", &spec);
        assert_eq!(
            body,
            json!({"prompt": "say \"hi\"", "max_new_tokens": 32, "note": "for gemma"})
        );
    }

    #[test]
    fn answers_give_text_tokens_and_the_servers_time() {
        let h = seed_server();
        let body = br#"{"generated_text":"one two three","tokens_generated":3,"inference_time_ms":812.5,"gpu_name":"NVIDIA A10G","gpu_memory_used_gb":7.1}"#;
        let Parsed::Chunk(c) = h.whole(body, None) else {
            panic!("not parsed")
        };
        assert_eq!((c.words, c.finished), (3, true));
        assert_eq!(c.usage.map(|u| u.output_tokens), Some(3));
        assert_eq!(c.server.total_us, Some(812_500));
        assert!(matches!(h.whole(br#"{"text":"x"}"#, None), Parsed::Malformed(m) if m.contains("/generated_text")));
        assert!(matches!(h.whole(br#"{"detail":"model busy"}"#, None), Parsed::ServerError(m) if m == "model busy"));
        assert!(matches!(
            h.whole(br#"{"generated_text":5}"#, None),
            Parsed::Malformed(_)
        ));
        assert!(matches!(h.whole(b"<html>", None), Parsed::Malformed(_)));
    }

    #[test]
    fn bad_pointers_and_placeholders_are_named() {
        let mut h = seed_server();
        h.text = "generated_text".to_owned();
        h.template = json!({"input": "{{promt}}"});
        let problems = h.problems().join("\n");
        assert!(
            problems.contains("text = \"generated_text\" is not a JSON pointer"),
            "{problems}"
        );
        assert!(problems.contains("{{promt}}"), "{problems}");
        assert!(problems.contains("never uses {{prompt}}"), "{problems}");
    }

    #[test]
    fn ndjson_lines_with_a_done_flag() {
        let mut h = seed_server();
        h.stream = StreamFormat::Ndjson;
        h.text = "/token".to_owned();
        h.done = Some("/done".to_owned());
        assert!(matches!(
            h.event(br#"{"token":" a"}"#, None),
            Parsed::Chunk(Chunk {
                content_events: 1,
                finished: false,
                ..
            })
        ));
        assert!(matches!(
            h.event(br#"{"done":true,"tokens_generated":9}"#, None),
            Parsed::Chunk(Chunk {
                content_events: 0,
                finished: true,
                usage: Some(Usage { output_tokens: 9, .. }),
                ..
            })
        ));
    }
}
