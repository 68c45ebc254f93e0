//! The OpenAI chat completions dialect: `/v1/chat/completions`, streaming
//! (SSE, with `stream_options.include_usage`) and not, and `/v1/models`.

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
    fn tokens(&self) -> u32 {
        match self {
            Content::Text(t) => text::count_tokens(t),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .map(text::count_tokens)
                .sum(),
            Content::Null => 0,
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
    let config = &engine.config;
    let key = match request.seed {
        Some(seed) => text::mix(seed as u64),
        None => request.messages.iter().fold(0, |h, m| m.content.key(h)),
    };
    let output_tokens = match request.max_completion_tokens.or(request.max_tokens) {
        Some(0) => return error(StatusCode::BAD_REQUEST, "max_tokens must be at least 1"),
        Some(n) => n,
        None => match config.output_tokens {
            OutputLength::Fixed(n) => n,
            OutputLength::Uniform { min, max } => {
                let span = u64::from(max - min) + 1;
                min + (text::mix(config.seed ^ key) % span) as u32
            }
        },
    };
    let job = Job {
        input_tokens: request.messages.iter().map(|m| m.content.tokens()).sum(),
        output_tokens,
        text_seed: text::mix(config.seed.wrapping_add(key)),
        trace: crate::trace::Request::new(
            &engine.spans,
            headers
                .get(stampede_otel::Traceparent::HEADER)
                .and_then(|v| v.to_str().ok())
                .and_then(stampede_otel::Traceparent::parse),
        ),
    };
    let answer = Answer {
        id: format!("chatcmpl-sim-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        model: request.model.unwrap_or_else(|| config.model.clone()),
        created: unix_now(),
        input_tokens: job.input_tokens,
        output_tokens: job.output_tokens,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(Arc::clone(&engine).run(job, tx));
    if request.stream {
        let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
        stream(answer, rx, include_usage)
    } else {
        whole(answer, rx).await
    }
}

struct Answer {
    id: String,
    model: String,
    created: u64,
    input_tokens: u32,
    output_tokens: u32,
}

impl Answer {
    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        })
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n")
    }
}

/// The simulator always produces exactly the length it was asked for.
const FINISH_REASON: &str = "length";

fn stream(answer: Answer, tokens: mpsc::UnboundedReceiver<Token>, include_usage: bool) -> Response {
    let state = Some((answer, tokens, true));
    let body = futures_util::stream::unfold(state, move |state| async move {
        let (answer, mut tokens, first) = state?;
        let token = tokens.recv().await?;
        let mut out = String::new();
        if first {
            // Like vLLM: the role arrives first, with empty content.
            let role = json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            out.push_str(&answer.chunk(role, None));
        }
        let finish = if token.last { json!(FINISH_REASON) } else { Value::Null };
        let delta = json!([{"index": 0, "delta": {"content": token.text}, "logprobs": null, "finish_reason": finish}]);
        out.push_str(&answer.chunk(delta, None));
        if token.last {
            if include_usage {
                out.push_str(&answer.chunk(json!([]), Some(answer.usage())));
            }
            out.push_str("data: [DONE]\n\n");
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(out)), None));
        }
        Some((Ok(Bytes::from(out)), Some((answer, tokens, false))))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("static headers are valid")
}

async fn whole(answer: Answer, mut tokens: mpsc::UnboundedReceiver<Token>) -> Response {
    let mut content = String::new();
    let mut complete = false;
    while let Some(token) = tokens.recv().await {
        content.push_str(&token.text);
        complete = token.last;
    }
    if !complete {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
    }
    Json(json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": FINISH_REASON,
        }],
        "usage": answer.usage(),
    }))
    .into_response()
}
