//! The OpenAI dialects: `/v1/chat/completions` and `/v1/completions`,
//! streaming (SSE, with `stream_options.include_usage`, and vLLM's
//! `stream_options.continuous_usage_stats` for a running count on every
//! chunk) and not, and `/v1/models`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::OutputLength;
use crate::engine::{Engine, Job, Token};
use crate::faults::{self, Cut, Fault};
use crate::text;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<Message>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    seed: Option<i64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
    /// vLLM's: usage, with the tokens generated so far, on every chunk.
    #[serde(default)]
    continuous_usage_stats: bool,
}

/// Which chunks carry usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    /// A last chunk with the totals.
    last: bool,
    /// Every chunk, with the running count.
    every: bool,
}

impl Usage {
    fn of(options: Option<&StreamOptions>) -> Usage {
        options.map_or_else(Usage::default, |o| Usage {
            last: o.include_usage,
            every: o.include_usage && o.continuous_usage_stats,
        })
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Content,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
    #[default]
    Null,
}

#[derive(Deserialize)]
struct Part {
    text: Option<String>,
}

impl Content {
    /// The text pieces of the message, in order.
    fn texts(&self) -> Vec<&str> {
        match self {
            Content::Text(t) => vec![t.as_str()],
            Content::Parts(parts) => parts.iter().filter_map(|p| p.text.as_deref()).collect(),
            Content::Null => Vec::new(),
        }
    }

    fn key(&self, h: u64) -> u64 {
        match self {
            Content::Text(t) => text::mix(h ^ text::hash(t)),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .fold(h, |h, t| text::mix(h ^ text::hash(t))),
            Content::Null => h,
        }
    }
}

/// An OpenAI-style error body.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({
        "error": {
            "message": message.into(),
            "type": "invalid_request_error",
            "param": null,
            "code": status.as_u16(),
        }
    });
    (status, Json(body)).into_response()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `GET /v1/models`.
pub(crate) async fn models(State(engine): State<Arc<Engine>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": engine.config.model,
            "object": "model",
            "created": unix_now(),
            "owned_by": "llm-sim",
        }]
    }))
}

/// The W3C trace context a request carries, if any.
pub(crate) fn parent(headers: &axum::http::HeaderMap) -> Option<stampede_otel::Traceparent> {
    headers
        .get(stampede_otel::Traceparent::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(stampede_otel::Traceparent::parse)
}

/// The engine's work for one request whose prompt is the text pieces
/// `prompt`, in order; its spans are children of `parent` when the request
/// is traced.
pub(crate) fn job(
    engine: &Engine,
    key: u64,
    prompt: &[&str],
    max_tokens: Option<u32>,
    parent: Option<stampede_otel::Traceparent>,
) -> Result<Job, Box<Response>> {
    let config = &engine.config;
    let input_tokens = prompt.iter().map(|p| text::count_tokens(p)).sum();
    let blocks = if config.prefix_cache_blocks > 0 {
        let words = prompt.iter().flat_map(|p| p.split_whitespace());
        crate::prefix::chain(words, config.prefix_block_tokens)
    } else {
        Vec::new()
    };
    let output_tokens = match max_tokens {
        Some(0) => {
            return Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                "max_tokens must be at least 1",
            )));
        }
        Some(n) => n,
        None => match config.output_tokens {
            OutputLength::Fixed(n) => n,
            OutputLength::Uniform { min, max } => {
                let span = u64::from(max - min) + 1;
                min + (text::mix(config.seed ^ key) % span) as u32
            }
        },
    };
    if let Err(e) = engine.fits(input_tokens, output_tokens) {
        return Err(Box::new(error(StatusCode::BAD_REQUEST, e)));
    }
    let fault = engine.draw(key);
    if let Some(Fault::Status { code, retry_after }) = fault {
        // Answered at once: the engine never sees it.
        return Err(Box::new(faults::status(code, retry_after)));
    }
    Ok(Job {
        input_tokens,
        blocks,
        output_tokens,
        tokens_per_event: config.tokens_per_event,
        text_seed: text::mix(config.seed.wrapping_add(key)),
        trace: crate::trace::Request::new(&engine.spans, parent),
        fault,
    })
}

/// Starts `job` on the engine; its tokens arrive on the receiver. With a
/// slow-headers fault, it first holds the request (and so its status line
/// and headers) back: a client that leaves meanwhile never reaches the
/// engine.
pub(crate) async fn start(engine: &Arc<Engine>, job: Job) -> mpsc::UnboundedReceiver<Token> {
    if let Some(Fault::SlowHeaders(hold)) = job.fault {
        tokio::time::sleep(hold).await;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Arc::clone(engine).run(job, tx));
    rx
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat(State(engine): State<Arc<Engine>>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("invalid request body: {e}"));
        }
    };
    if request.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages must not be empty");
    }
    let key = match request.seed {
        Some(seed) => text::mix(seed as u64),
        None => request.messages.iter().fold(0, |h, m| m.content.key(h)),
    };
    let prompt: Vec<&str> = request.messages.iter().flat_map(|m| m.content.texts()).collect();
    let job = match job(
        &engine,
        key,
        &prompt,
        request.max_completion_tokens.or(request.max_tokens),
        parent(&headers),
    ) {
        Ok(j) => j,
        Err(response) => return *response,
    };
    if let Some(record) = &engine.record {
        record.chat(&body, job.input_tokens, job.output_tokens, job.text_seed);
    }
    let usage = Usage::of(request.stream_options.as_ref());
    let stamp = first_write(&engine, &headers);
    respond(&engine, job, Kind::Chat, request.model, request.stream, usage, stamp).await
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: Option<String>,
    prompt: Prompt,
    max_tokens: Option<u32>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    seed: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(engine): State<Arc<Engine>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let request: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, format!("invalid request body: {e}"));
        }
    };
    let prompt = match &request.prompt {
        Prompt::One(p) => p.clone(),
        Prompt::Many(list) if list.len() == 1 => list[0].clone(),
        Prompt::Many(_) => return error(StatusCode::BAD_REQUEST, "the simulator takes one prompt per request"),
    };
    let key = match request.seed {
        Some(seed) => text::mix(seed as u64),
        None => text::mix(text::hash(&prompt)),
    };
    let job = match job(&engine, key, &[prompt.as_str()], request.max_tokens, parent(&headers)) {
        Ok(j) => j,
        Err(response) => return *response,
    };
    let usage = Usage::of(request.stream_options.as_ref());
    let stamp = first_write(&engine, &headers);
    respond(
        &engine,
        job,
        Kind::Completions,
        request.model,
        request.stream,
        usage,
        stamp,
    )
    .await
}

/// Runs `job` and answers as an OpenAI `kind` endpoint: streamed, with
/// usage where asked, or whole.
async fn respond(
    engine: &Arc<Engine>,
    job: Job,
    kind: Kind,
    model: Option<String>,
    streamed: bool,
    usage: Usage,
    stamp: Option<FirstWrite>,
) -> Response {
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completions => "cmpl",
    };
    let answer = Answer {
        id: format!("{prefix}-sim-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        kind,
        model: model.unwrap_or_else(|| engine.config.model.clone()),
        created: unix_now(),
        input_tokens: job.input_tokens,
        output_tokens: job.output_tokens,
        cached: None,
        fields: String::new(),
    }
    .rendered();
    let rx = start(engine, job).await;
    if streamed {
        stream(answer, rx, usage, stamp)
    } else {
        whole(answer, rx).await
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completions,
}

struct Answer {
    id: String,
    kind: Kind,
    model: String,
    created: u64,
    input_tokens: u32,
    output_tokens: u32,
    /// Prompt tokens found in the prefix cache, when the engine has one.
    cached: Option<u32>,
    /// What follows the choices in every chunk (see [`Answer::rendered`]).
    fields: String,
}

impl Answer {
    fn usage(&self) -> Value {
        self.usage_after(self.output_tokens)
    }

    /// Usage once `generated` tokens are out.
    fn usage_after(&self, generated: u32) -> Value {
        let mut usage = json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": generated,
            "total_tokens": self.input_tokens + generated,
        });
        if let Some(cached) = self.cached {
            // As vLLM answers with prefix caching on.
            usage["prompt_tokens_details"] = json!({"cached_tokens": cached});
        }
        usage
    }

    /// The answer with its `fields` filled in: a chunk's fields after its
    /// choices, the same in every chunk of the answer, in the order
    /// serde_json writes a map's keys (sorted), so that chunks are rendered
    /// without building a JSON value each.
    fn rendered(self) -> Answer {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completions => "text_completion",
        };
        let fields = format!(
            ",\"created\":{},\"id\":{},\"model\":{},\"object\":\"{object}\"",
            self.created,
            Value::from(self.id.as_str()),
            Value::from(self.model.as_str()),
        );
        Answer { fields, ..self }
    }

    /// One SSE event: a chunk with `choices` (JSON text) and `usage`.
    fn chunk(&self, choices: &str, usage: Option<Value>) -> String {
        let mut out = String::with_capacity(32 + choices.len() + self.fields.len());
        out.push_str("data: {\"choices\":");
        out.push_str(choices);
        out.push_str(&self.fields);
        if let Some(usage) = usage {
            out.push_str(",\"usage\":");
            out.push_str(&usage.to_string());
        }
        out.push_str("}\n\n");
        out
    }
}

/// The choices of a chunk carrying `text`, the last one with its finish
/// reason, as serde_json would write them (keys sorted).
fn choices(kind: Kind, text: &str, last: bool) -> String {
    let text = Value::from(text);
    let finish = if last { Value::from(FINISH_REASON) } else { Value::Null };
    match kind {
        Kind::Chat => {
            format!("[{{\"delta\":{{\"content\":{text}}},\"finish_reason\":{finish},\"index\":0,\"logprobs\":null}}]")
        }
        Kind::Completions => format!("[{{\"finish_reason\":{finish},\"index\":0,\"logprobs\":null,\"text\":{text}}}]"),
    }
}

/// The choices of a chat answer's first chunk: the role, with empty content.
const ROLE: &str = r#"[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}]"#;

/// The simulator always produces exactly the length it was asked for.
const FINISH_REASON: &str = "length";

/// Where to record a request's first write, and its trace id.
type FirstWrite = (Arc<crate::record::FirstWrites>, String);

/// The first-write record of a request, when first writes are recorded and
/// the request carries a traceparent.
fn first_write(engine: &Engine, headers: &axum::http::HeaderMap) -> Option<FirstWrite> {
    let writes = engine.first_writes.as_ref()?;
    Some((Arc::clone(writes), parent(headers)?.trace_id.to_string()))
}

fn stream(answer: Answer, tokens: mpsc::UnboundedReceiver<Token>, usage: Usage, stamp: Option<FirstWrite>) -> Response {
    let state = Some((answer, tokens, true, stamp));
    let body = futures_util::stream::unfold(state, move |state| async move {
        let (mut answer, mut tokens, first, mut stamp) = state?;
        let token = tokens.recv().await?;
        // Stamped as the event is handed to the connection, which writes it
        // in the same poll.
        let stamp_now = |stamp: &mut Option<FirstWrite>| {
            if token.tokens > 0
                && let Some((writes, trace_id)) = stamp.take()
            {
                writes.stamp(&trace_id);
            }
        };
        answer.cached = token.cached;
        let running = |generated: u32| usage.every.then(|| answer.usage_after(generated));
        let mut out = String::new();
        if first && answer.kind == Kind::Chat {
            // Like vLLM: the role arrives first, with empty content.
            out.push_str(&answer.chunk(ROLE, running(0)));
        }
        // An event without tokens is an empty-content chunk, as vLLM sends.
        let event = answer.chunk(&choices(answer.kind, &token.text, token.last), running(token.generated));
        match token.cut {
            Some(Cut::Malformed) => {
                out.push_str(&String::from_utf8_lossy(&faults::malformed_event(
                    &event,
                    "text/event-stream",
                )));
                return Some((Ok(Bytes::from(out)), None));
            }
            Some(Cut::Reset) => return Some((Err(faults::reset_error()), None)),
            None => out.push_str(&event),
        }
        if token.last {
            if usage.last {
                out.push_str(&answer.chunk("[]", Some(answer.usage())));
            }
            out.push_str("data: [DONE]\n\n");
            stamp_now(&mut stamp);
            return Some((Ok::<_, std::io::Error>(Bytes::from(out)), None));
        }
        stamp_now(&mut stamp);
        Some((Ok(Bytes::from(out)), Some((answer, tokens, false, stamp))))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("static headers are valid")
}

async fn whole(mut answer: Answer, mut tokens: mpsc::UnboundedReceiver<Token>) -> Response {
    let mut content = String::new();
    let mut complete = false;
    let mut cut = None;
    while let Some(token) = tokens.recv().await {
        content.push_str(&token.text);
        complete = token.last;
        cut = token.cut;
        answer.cached = token.cached;
    }
    if !complete && cut.is_none() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
    }
    let (object, choice) = match answer.kind {
        Kind::Chat => (
            "chat.completion",
            json!({"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": FINISH_REASON}),
        ),
        Kind::Completions => (
            "text_completion",
            json!({"index": 0, "text": content, "logprobs": null, "finish_reason": FINISH_REASON}),
        ),
    };
    let body = json!({
        "id": answer.id,
        "object": object,
        "created": answer.created,
        "model": answer.model,
        "choices": [choice],
        "usage": answer.usage(),
    });
    faults::whole(&body, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk as a JSON value would render it.
    fn reference(answer: &Answer, choices: Value, usage: Option<Value>) -> String {
        let object = match answer.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completions => "text_completion",
        };
        let mut chunk = json!({
            "id": answer.id,
            "object": object,
            "created": answer.created,
            "model": answer.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n")
    }

    fn answer(kind: Kind, id: &str, model: &str, cached: Option<u32>) -> Answer {
        Answer {
            id: id.to_owned(),
            kind,
            model: model.to_owned(),
            created: 1_765_000_000,
            input_tokens: 12,
            output_tokens: 7,
            cached,
            fields: String::new(),
        }
        .rendered()
    }

    #[test]
    fn chunks_are_the_bytes_a_json_value_renders() {
        let texts = [
            "",
            " hello",
            "quote \" backslash \\ slash /",
            "new\nline\ttab\r\u{1}\u{1f}",
            "unicode é 中文 🦀 \u{2028}",
        ];
        for kind in [Kind::Chat, Kind::Completions] {
            for (id, model, cached) in [
                ("chatcmpl-sim-1", "llm-sim", None),
                ("cmpl-\"odd\"", "org/model \u{e9}\n", Some(3)),
            ] {
                let a = answer(kind, id, model, cached);
                for text in texts {
                    for last in [false, true] {
                        let finish = if last { json!(FINISH_REASON) } else { Value::Null };
                        let expected = match kind {
                            Kind::Chat => {
                                json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": finish}])
                            }
                            Kind::Completions => {
                                json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}])
                            }
                        };
                        for usage in [None, Some(a.usage_after(3))] {
                            assert_eq!(
                                a.chunk(&choices(kind, text, last), usage.clone()),
                                reference(&a, expected.clone(), usage),
                                "{text:?}"
                            );
                        }
                    }
                }
                let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
                assert_eq!(a.chunk(ROLE, None), reference(&a, role, None));
                assert_eq!(
                    a.chunk("[]", Some(a.usage())),
                    reference(&a, json!([]), Some(a.usage()))
                );
            }
        }
    }
}
