//! Server dialects: each turns a prompt into a request and the server's
//! bytes into token events.
//!
//! A [`Dialect`] names the wire format; an [`Api`] is one run's complete
//! way of talking to its target: the dialect, the request path, extra
//! headers (secrets already read from the environment), extra body fields
//! and, for `http-json`, the body template and the JSON pointers to read.

use std::fmt;
use std::str::FromStr;

use crate::prompts::Message;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub mod json;
mod ollama;
mod openai;
#[cfg(test)]
mod props;
mod scan;
mod tgi;

pub use json::{HttpJson, StreamFormat, TimeUnit};
pub use openai::Shape;

/// A server dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions, `POST /v1/chat/completions` (SSE).
    OpenAiChat,
    /// OpenAI text completions, `POST /v1/completions` (SSE).
    OpenAiCompletions,
    /// Ollama's native generate API, `POST /api/generate` (NDJSON).
    Ollama,
    /// Ollama's native chat API, `POST /api/chat` (NDJSON).
    OllamaChat,
    /// Hugging Face Text Generation Inference, `POST /generate_stream`
    /// (SSE) and `POST /generate`.
    Tgi,
    /// Any JSON endpoint: a templated body and JSON pointers into the
    /// answer; streamed as NDJSON or plain chunked text, or not at all.
    HttpJson,
}

impl Dialect {
    /// Every dialect this build speaks.
    pub const ALL: [Dialect; 6] = [
        Dialect::OpenAiChat,
        Dialect::OpenAiCompletions,
        Dialect::Ollama,
        Dialect::OllamaChat,
        Dialect::Tgi,
        Dialect::HttpJson,
    ];

    /// The name used in profiles and in capabilities.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAiChat => "openai-chat",
            Dialect::OpenAiCompletions => "openai-completions",
            Dialect::Ollama => "ollama",
            Dialect::OllamaChat => "ollama-chat",
            Dialect::Tgi => "tgi",
            Dialect::HttpJson => "http-json",
        }
    }

    /// True when the dialect answers `GET /v1/models`, so that a profile
    /// may leave the model name out.
    pub fn lists_models(self) -> bool {
        matches!(self, Dialect::OpenAiChat | Dialect::OpenAiCompletions)
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            let known: Vec<_> = Dialect::ALL.iter().map(|d| d.name()).collect();
            format!("unknown api {s:?}; this build speaks {}", known.join(", "))
        })
    }
}

/// How a streamed response body is cut into events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Server-Sent Events (`data: …` blocks).
    Sse,
    /// Newline-delimited JSON, one object per line.
    Ndjson,
    /// Plain text: every chunk that arrives is generated text.
    Text,
}

impl Framing {
    /// The `Accept` header for this framing.
    pub fn accept(self) -> &'static str {
        match self {
            Framing::Sse => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
            Framing::Text => "text/plain",
        }
    }
}

/// The generation parameters of each request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spec {
    /// Upper bound on output tokens, when set.
    pub max_tokens: Option<u32>,
    /// Sampling temperature, when set.
    pub temperature: Option<f64>,
    /// Stream the answer token by token.
    pub stream: bool,
}

/// Token counts the server reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, when reported.
    pub input_tokens: Option<u64>,
    /// Generated tokens.
    pub output_tokens: u64,
}

/// Why the server ended an answer: `gen_ai.response.finish_reasons` of the
/// request's span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The server's content filter.
    ContentFilter,
    /// The model called a tool.
    ToolCalls,
    /// A reason this client does not know.
    Other,
    /// Complete, with no reason given.
    Unstated,
}

impl Finish {
    /// From the OpenAI `finish_reason` value.
    pub fn from_openai(reason: &str) -> Finish {
        match reason {
            "stop" | "eos" | "eos_token" | "stop_sequence" => Finish::Stop,
            "length" | "max_tokens" => Finish::Length,
            "content_filter" => Finish::ContentFilter,
            "tool_calls" | "function_call" => Finish::ToolCalls,
            _ => Finish::Other,
        }
    }

    /// The OpenTelemetry GenAI name; `None` when no reason was given.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ContentFilter => "content_filter",
            Finish::ToolCalls => "tool_calls",
            Finish::Other => "other",
            Finish::Unstated => return None,
        })
    }
}

/// Times the server reported for one request, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerTimes {
    /// Prompt processing (Ollama `prompt_eval_duration`).
    pub prefill_us: Option<u64>,
    /// Token generation (Ollama `eval_duration`).
    pub decode_us: Option<u64>,
    /// Loading the model before the request could run (Ollama
    /// `load_duration`): large on a cold start.
    pub load_us: Option<u64>,
    /// The whole request as the server timed it (`http-json` duration
    /// pointer).
    pub total_us: Option<u64>,
}

impl ServerTimes {
    /// Keeps every time `other` has, the rest from `self`.
    pub fn or(self, other: ServerTimes) -> ServerTimes {
        ServerTimes {
            prefill_us: other.prefill_us.or(self.prefill_us),
            decode_us: other.decode_us.or(self.decode_us),
            load_us: other.load_us.or(self.load_us),
            total_us: other.total_us.or(self.total_us),
        }
    }
}

/// What one event (or one whole response) says.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Chunk {
    /// Events in this chunk that carry generated text.
    pub content_events: u32,
    /// Whitespace-separated words of the generated text of a whole
    /// answer: the token estimate of last resort (see [`crate::exec`]).
    /// Streamed events leave it 0: their tokens are counted as events, or
    /// by the words of a plain-text stream.
    pub words: u64,
    /// Bytes of generated text in this chunk: with only a total token
    /// count at hand, an answer's tokens are shared among its events in
    /// proportion (see [`crate::exec`]).
    pub text_bytes: u64,
    /// The server says the answer is complete.
    pub finished: bool,
    /// Why it is complete, when the server says.
    pub finish: Option<Finish>,
    /// Token counts, when the chunk carries them.
    pub usage: Option<Usage>,
    /// Server-side times, when the chunk carries them.
    pub server: ServerTimes,
    /// Prompt tokens the server took from its prefix cache, when the
    /// chunk says (OpenAI `usage.prompt_tokens_details.cached_tokens`,
    /// llama.cpp `timings.cache_n`).
    pub cached_tokens: Option<u64>,
}

/// What one event (or one whole response) is.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A chunk of the answer.
    Chunk(Chunk),
    /// The stream's explicit end (`data: [DONE]`).
    Done,
    /// The server reported an error inside a successful response.
    ServerError(String),
    /// The bytes do not follow the dialect.
    Malformed(String),
}

/// Whitespace-separated words in `text`.
pub(crate) fn words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Appends the generated text `pieces` to `out`, when the caller keeps the
/// text (to count its tokens with a client tokenizer).
fn keep<'t>(out: Option<&mut String>, pieces: impl IntoIterator<Item = &'t str>) {
    if let Some(out) = out {
        for piece in pieces {
            out.push_str(piece);
        }
    }
}

/// Where a header's value comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum HeaderSource {
    /// Written in the profile.
    Literal(String),
    /// Read from this environment variable on the agent: how secrets such
    /// as API keys are given, so that they never appear in a profile, on
    /// the wire between controller and agents, or in results.
    Env(String),
}

impl fmt::Debug for HeaderSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderSource::Literal(v) => write!(f, "Literal({v:?})"),
            HeaderSource::Env(name) => write!(f, "Env({name:?})"),
        }
    }
}

/// One run's way of talking to its target, before secrets are read.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiConfig {
    /// The wire format.
    pub dialect: Dialect,
    /// Request path below the base URL; `None` uses the dialect's own
    /// (required for `http-json`).
    pub path: Option<String>,
    /// Extra request headers, in order.
    pub headers: Vec<(String, HeaderSource)>,
    /// Extra top-level fields merged into every request body, such as
    /// `ignore_eos` or `min_tokens`. They win over the dialect's own.
    pub body: Map<String, Value>,
    /// The template and pointers of an `http-json` target.
    pub http_json: Option<HttpJson>,
}

impl ApiConfig {
    /// A dialect with its defaults and nothing extra.
    pub fn plain(dialect: Dialect) -> ApiConfig {
        ApiConfig {
            dialect,
            path: None,
            headers: Vec::new(),
            body: Map::new(),
            http_json: None,
        }
    }

    /// Problems that make this configuration unusable, each a sentence
    /// naming the field. Secrets are not looked up here.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, source) in &self.headers {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                out.push(format!("header {name:?} is not a valid HTTP header name"));
            }
            match source {
                HeaderSource::Literal(v) if HeaderValue::from_str(v).is_err() => {
                    out.push(format!("header {name:?} has a value that is not valid in HTTP"));
                }
                HeaderSource::Env(var) if var.is_empty() || var.contains('=') => {
                    out.push(format!("header {name:?}: {var:?} is not an environment variable name"));
                }
                _ => {}
            }
        }
        if let Some(path) = &self.path
            && !path.starts_with('/')
        {
            out.push(format!("path {path:?} must start with /"));
        }
        match (self.dialect, &self.http_json) {
            (Dialect::HttpJson, None) => out.push("api http-json needs [target.http_json]".to_owned()),
            (Dialect::HttpJson, Some(h)) => {
                if self.path.is_none() {
                    out.push("api http-json needs [target] path, such as \"/generate\"".to_owned());
                }
                out.extend(h.problems());
            }
            (d, Some(_)) => out.push(format!("[target.http_json] is for api http-json, not {d}")),
            (_, None) => {}
        }
        out
    }

    /// Reads secret headers with `env` and checks everything: the error
    /// names the header and the variable.
    pub fn resolve(&self, env: impl Fn(&str) -> Option<String>) -> Result<Api, String> {
        if let Some(first) = self.problems().into_iter().next() {
            return Err(first);
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, source) in &self.headers {
            let value = match source {
                HeaderSource::Literal(v) => v.clone(),
                HeaderSource::Env(var) => env(var).ok_or_else(|| {
                    format!("header {name:?} takes its value from the environment variable {var}, which is not set")
                })?,
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("header {name:?}: {e}"))?;
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| format!("header {name:?}: its value is not valid in an HTTP header"))?;
            value.set_sensitive(matches!(source, HeaderSource::Env(_)));
            headers.push((name, value));
        }
        let speaks = match self.dialect {
            Dialect::OpenAiChat => Speaks::OpenAiChat,
            Dialect::OpenAiCompletions => Speaks::OpenAiCompletions,
            Dialect::Ollama => Speaks::Ollama,
            Dialect::OllamaChat => Speaks::OllamaChat,
            Dialect::Tgi => Speaks::Tgi,
            Dialect::HttpJson => Speaks::HttpJson(Box::new(
                self.http_json
                    .clone()
                    .ok_or_else(|| "api http-json needs [target.http_json]".to_owned())?,
            )),
        };
        Ok(Api {
            speaks,
            path: self.path.clone(),
            body: self.body.clone(),
            headers,
        })
    }
}

/// A dialect with what it needs to speak: only `http-json` carries a
/// configuration of its own (its template and pointers), so that no other
/// dialect can have one and `http-json` cannot lack it.
#[derive(Clone, Debug)]
enum Speaks {
    OpenAiChat,
    OpenAiCompletions,
    Ollama,
    OllamaChat,
    Tgi,
    HttpJson(Box<HttpJson>),
}

impl Speaks {
    fn dialect(&self) -> Dialect {
        match self {
            Speaks::OpenAiChat => Dialect::OpenAiChat,
            Speaks::OpenAiCompletions => Dialect::OpenAiCompletions,
            Speaks::Ollama => Dialect::Ollama,
            Speaks::OllamaChat => Dialect::OllamaChat,
            Speaks::Tgi => Dialect::Tgi,
            Speaks::HttpJson(_) => Dialect::HttpJson,
        }
    }
}

/// A resolved [`ApiConfig`]: ready to build requests and read answers.
#[derive(Clone)]
pub struct Api {
    speaks: Speaks,
    /// The request path when the profile sets one.
    path: Option<String>,
    /// Extra top-level body fields.
    body: Map<String, Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be secrets: names only.
        f.debug_struct("Api")
            .field("dialect", &self.speaks.dialect())
            .field("path", &self.path)
            .field(
                "headers",
                &self.headers.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Api {
    /// A dialect with its defaults and nothing extra.
    ///
    /// # Panics
    ///
    /// For `http-json`, which has no defaults: resolve an [`ApiConfig`]
    /// with its template instead.
    pub fn plain(dialect: Dialect) -> Api {
        ApiConfig::plain(dialect)
            .resolve(|_| None)
            .expect("every dialect but http-json speaks with its defaults")
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.speaks.dialect()
    }

    /// Extra headers, secrets included (marked sensitive).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// Path of the generation endpoint, below the target's base URL.
    pub fn path(&self, spec: &Spec) -> &str {
        if let Some(p) = &self.path {
            return p;
        }
        match self.speaks {
            Speaks::OpenAiChat => openai::CHAT_PATH,
            Speaks::OpenAiCompletions => openai::COMPLETIONS_PATH,
            Speaks::Ollama => ollama::GENERATE_PATH,
            Speaks::OllamaChat => ollama::CHAT_PATH,
            Speaks::Tgi if self.streams(spec) => tgi::STREAM_PATH,
            Speaks::Tgi => tgi::PATH,
            // Resolving checked that http-json has its path.
            Speaks::HttpJson(_) => "/",
        }
    }

    /// The JSON body of one request.
    pub fn body(&self, model: &str, prompt: &str, spec: &Spec) -> Vec<u8> {
        self.body_with(model, &[], prompt, spec)
    }

    /// The JSON body of one session turn: `history` (the system prompt,
    /// earlier turns and answers), then the user's `prompt`. The chat
    /// dialects send them as messages; the others, which take one text,
    /// get the history's contents and the prompt joined by blank lines.
    pub fn body_with(&self, model: &str, history: &[Message], prompt: &str, spec: &Spec) -> Vec<u8> {
        let joined;
        let text = if history.is_empty() {
            prompt
        } else {
            let mut all: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
            all.push(prompt);
            joined = all.join("\n\n");
            joined.as_str()
        };
        let body = match &self.speaks {
            Speaks::OpenAiChat => return self.with_fields(openai::chat_body(model, history, prompt, spec)),
            Speaks::OpenAiCompletions => return self.with_fields(openai::completions_body(model, text, spec)),
            Speaks::Ollama => ollama::generate_body(model, text, spec),
            Speaks::OllamaChat => ollama::chat_body(model, history, prompt, spec),
            Speaks::Tgi => tgi::body(text, spec),
            Speaks::HttpJson(h) => h.body(model, text, spec),
        };
        self.with_fields(body)
    }

    /// `body` as JSON, with the profile's own body fields set over it.
    fn with_fields(&self, body: impl serde::Serialize) -> Vec<u8> {
        const INFALLIBLE: &str = "a request body has string keys and no failing parts";
        if self.body.is_empty() {
            return serde_json::to_vec(&body).expect(INFALLIBLE);
        }
        let mut body = serde_json::to_value(body).expect(INFALLIBLE);
        if let Value::Object(map) = &mut body {
            for (k, v) in &self.body {
                map.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&body).expect(INFALLIBLE)
    }

    /// True when answers are streamed: the profile asks for it and the
    /// endpoint can (an `http-json` endpoint with `stream = "none"` cannot).
    pub fn streams(&self, spec: &Spec) -> bool {
        match &self.speaks {
            Speaks::HttpJson(h) => spec.stream && h.stream != StreamFormat::None,
            _ => spec.stream,
        }
    }

    /// How a streamed response is framed.
    pub fn framing(&self) -> Framing {
        match &self.speaks {
            Speaks::OpenAiChat | Speaks::OpenAiCompletions | Speaks::Tgi => Framing::Sse,
            Speaks::Ollama | Speaks::OllamaChat => Framing::Ndjson,
            Speaks::HttpJson(h) => match h.stream {
                StreamFormat::Text => Framing::Text,
                StreamFormat::None | StreamFormat::Ndjson => Framing::Ndjson,
            },
        }
    }

    /// True when a stream that ends without the dialect's end marker (a
    /// finish reason, `[DONE]`, Ollama's `done`, TGI's details, or the
    /// `http-json` done pointer) is incomplete. Plain text and NDJSON
    /// without a done pointer end when the body ends.
    pub fn needs_end_marker(&self) -> bool {
        match &self.speaks {
            Speaks::HttpJson(h) => h.done.is_some(),
            _ => true,
        }
    }

    /// Parses one streamed event's data (an SSE event or an NDJSON line).
    /// With `text`, the generated text it carries is appended there.
    /// `shape` is the answer's: the OpenAI dialects read most events by it
    /// (see [`Shape`]); the others leave it be.
    pub fn event(&self, data: &[u8], text: Option<&mut String>, shape: &mut Shape) -> Parsed {
        match &self.speaks {
            Speaks::OpenAiChat | Speaks::OpenAiCompletions => openai::event(data, text, shape),
            Speaks::Ollama | Speaks::OllamaChat => ollama::parse(data, true, text),
            Speaks::Tgi => tgi::event(data, text),
            Speaks::HttpJson(h) => h.event(data, text),
        }
    }

    /// Parses a whole, non-streamed response body. With `text`, the
    /// generated text is appended there.
    pub fn whole(&self, body: &[u8], text: Option<&mut String>) -> Parsed {
        match &self.speaks {
            Speaks::OpenAiChat | Speaks::OpenAiCompletions => openai::whole(body, text),
            Speaks::Ollama | Speaks::OllamaChat => ollama::parse(body, false, text),
            Speaks::Tgi => tgi::whole(body, text),
            Speaks::HttpJson(h) => h.whole(body, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_known() {
        for d in Dialect::ALL {
            assert_eq!(d.name().parse::<Dialect>().unwrap(), d);
        }
        let e = "vllm".parse::<Dialect>().unwrap_err();
        assert!(e.contains("openai-completions") && e.contains("http-json"), "{e}");
    }

    #[test]
    fn secret_headers_come_from_the_environment_and_say_which_is_missing() {
        let mut c = ApiConfig::plain(Dialect::OpenAiChat);
        c.headers = vec![
            ("X-Team".to_owned(), HeaderSource::Literal("infra".to_owned())),
            ("Authorization".to_owned(), HeaderSource::Env("LLM_TOKEN".to_owned())),
        ];
        let api = c
            .resolve(|v| (v == "LLM_TOKEN").then(|| "Bearer s3cret".to_owned()))
            .unwrap();
        assert_eq!(api.headers()[1].1, "Bearer s3cret");
        assert!(api.headers()[1].1.is_sensitive());
        assert!(!format!("{api:?}").contains("s3cret"));
        let e = c.resolve(|_| None).unwrap_err();
        assert!(e.contains("LLM_TOKEN") && e.contains("Authorization"), "{e}");
    }

    #[test]
    fn extra_body_fields_win_and_bad_headers_are_named() {
        let mut c = ApiConfig::plain(Dialect::OpenAiChat);
        c.body.insert("ignore_eos".to_owned(), Value::Bool(true));
        c.body.insert("max_tokens".to_owned(), Value::from(7));
        let api = c.resolve(|_| None).unwrap();
        let spec = Spec {
            max_tokens: Some(64),
            temperature: None,
            stream: false,
        };
        let body: Value = serde_json::from_slice(&api.body("m", "hi", &spec)).unwrap();
        assert_eq!(
            (body["ignore_eos"].clone(), body["max_tokens"].clone()),
            (Value::Bool(true), 7.into())
        );
        c.headers = vec![("bad header".to_owned(), HeaderSource::Literal("x".to_owned()))];
        assert!(c.problems()[0].contains("\"bad header\""));
    }

    #[test]
    fn every_dialect_hands_over_its_generated_text() {
        let streamed = |api: &Api, events: &[&str]| {
            let (mut text, mut shape) = (String::new(), Shape::default());
            for e in events {
                assert!(
                    matches!(api.event(e.as_bytes(), Some(&mut text), &mut shape), Parsed::Chunk(_)),
                    "{e}"
                );
            }
            text
        };
        let whole = |api: &Api, body: &str| {
            let mut text = String::new();
            assert!(
                matches!(api.whole(body.as_bytes(), Some(&mut text)), Parsed::Chunk(_)),
                "{body}"
            );
            text
        };
        let chat = Api::plain(Dialect::OpenAiChat);
        let events = [
            r#"{"choices":[{"delta":{"role":"assistant"}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"lo"},"finish_reason":"stop"}]}"#,
        ];
        assert_eq!(streamed(&chat, &events), "Hello");
        assert_eq!(
            whole(&chat, r#"{"choices":[{"message":{"content":"Hi you"}}]}"#),
            "Hi you"
        );
        let completions = Api::plain(Dialect::OpenAiCompletions);
        assert_eq!(whole(&completions, r#"{"choices":[{"text":"Hi"}]}"#), "Hi");
        let ollama = Api::plain(Dialect::Ollama);
        let lines = [
            r#"{"response":"a","done":false}"#,
            r#"{"response":" b","done":true,"eval_count":2}"#,
        ];
        assert_eq!(streamed(&ollama, &lines), "a b");
        let chat_lines = [r#"{"message":{"content":"c"},"done":false}"#, r#"{"done":true}"#];
        assert_eq!(streamed(&Api::plain(Dialect::OllamaChat), &chat_lines), "c");
        let tgi = Api::plain(Dialect::Tgi);
        let tokens = [
            r#"{"token":{"text":"x","special":false}}"#,
            r#"{"token":{"text":"</s>","special":true},"generated_text":"x","details":{"generated_tokens":2}}"#,
        ];
        assert_eq!(streamed(&tgi, &tokens), "x", "special tokens are not text");
        assert_eq!(whole(&tgi, r#"{"generated_text":"y z"}"#), "y z");
        let mut c = ApiConfig::plain(Dialect::HttpJson);
        c.path = Some("/generate".to_owned());
        c.http_json = Some(HttpJson {
            template: serde_json::json!({"prompt": "{{prompt}}"}),
            text: "/generated_text".to_owned(),
            tokens: None,
            input_tokens: None,
            duration: None,
            duration_unit: TimeUnit::Seconds,
            stream: StreamFormat::Ndjson,
            done: None,
        });
        let json = c.resolve(|_| None).unwrap();
        assert_eq!(whole(&json, r#"{"generated_text":"w"}"#), "w");
        assert_eq!(
            streamed(&json, &[r#"{"generated_text":"u"}"#, r#"{"generated_text":"v"}"#]),
            "uv"
        );
        // Without a place to keep it, nothing is kept and nothing changes.
        assert!(matches!(
            chat.event(events[1].as_bytes(), None, &mut Shape::default()),
            Parsed::Chunk(Chunk { content_events: 1, .. })
        ));
    }

    #[test]
    fn tgi_paths_follow_streaming() {
        let api = Api::plain(Dialect::Tgi);
        let mut spec = Spec {
            max_tokens: None,
            temperature: None,
            stream: true,
        };
        assert_eq!(api.path(&spec), "/generate_stream");
        spec.stream = false;
        assert_eq!(api.path(&spec), "/generate");
    }

    #[test]
    fn a_session_turn_sends_its_history() {
        let history = [
            Message {
                role: "system",
                content: "Be brief.".into(),
            },
            Message {
                role: "user",
                content: "Hi".into(),
            },
            Message {
                role: "assistant",
                content: "Hello there".into(),
            },
        ];
        let spec = Spec {
            max_tokens: Some(5),
            temperature: None,
            stream: true,
        };
        let chat = Api::plain(Dialect::OpenAiChat);
        let body: Value = serde_json::from_slice(&chat.body_with("m", &history, "Why?", &spec)).unwrap();
        assert_eq!(
            body["messages"],
            serde_json::json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there"},
                {"role": "user", "content": "Why?"},
            ])
        );
        let plain: Value = serde_json::from_slice(&chat.body("m", "Why?", &spec)).unwrap();
        assert_eq!(
            plain["messages"],
            serde_json::json!([{"role": "user", "content": "Why?"}])
        );
        let completions = Api::plain(Dialect::OpenAiCompletions);
        let body: Value = serde_json::from_slice(&completions.body_with("m", &history, "Why?", &spec)).unwrap();
        assert_eq!(body["prompt"], "Be brief.\n\nHi\n\nHello there\n\nWhy?");
    }
}
