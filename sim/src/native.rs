//! The non-OpenAI dialects: Ollama's `/api/generate` and `/api/chat`
//! (NDJSON), TGI's `/generate_stream` (SSE) and `/generate`, the JSON
//! shapes of home-made `/generate` servers, and two streams for
//! `http-json` clients: `/generate_ndjson` and `/generate_text`.
//!
//! Every answer comes from the same engine as the OpenAI endpoints, so
//! `/metrics` is the ground truth whatever the dialect.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::engine::{Engine, Token};
use crate::faults::{self, Cut};
use crate::openai::{error, job, parent, start};
use crate::{GenerateShape, text};

/// A body streamed event by event: `render` turns each into bytes. Events
/// without tokens are left out unless `empties`.
fn token_body(
    rx: mpsc::UnboundedReceiver<Token>,
    render: impl FnMut(Token) -> String + Send + 'static,
    content_type: &'static str,
    empties: bool,
) -> Response {
    let body = futures_util::stream::unfold(Some((rx, render)), move |state| async move {
        let (mut rx, mut render) = state?;
        let mut token = rx.recv().await?;
        while token.tokens == 0 && !empties {
            token = rx.recv().await?;
        }
        let (last, cut) = (token.last, token.cut);
        let out = render(token);
        match cut {
            None => Some((Ok(Bytes::from(out)), (!last).then_some((rx, render)))),
            Some(Cut::Malformed) => Some((Ok(faults::malformed_event(&out, content_type)), None)),
            Some(Cut::Reset) => Some((Err(faults::reset_error()), None)),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(body))
        .expect("static headers are valid")
}

/// Collects a whole answer: its text, when its first and last tokens
/// came and how an injected fault broke it off, if one did; or `None`
/// when the engine stopped first.
async fn collect(mut rx: mpsc::UnboundedReceiver<Token>) -> Option<(String, Timing, Option<Cut>)> {
    let mut content = String::new();
    let mut timing = Timing::default();
    while let Some(token) = rx.recv().await {
        if token.tokens == 0 {
            continue;
        }
        content.push_str(&token.text);
        timing.saw(&token);
        if token.last || token.cut.is_some() {
            return Some((content, timing, token.cut));
        }
    }
    None
}

/// When a request's tokens came, for the durations servers report.
#[derive(Clone, Copy, Debug)]
struct Timing {
    received: Instant,
    admitted: Option<Instant>,
    began: Option<Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            received: Instant::now(),
            admitted: None,
            began: None,
            first: None,
            last: None,
        }
    }
}

impl Timing {
    fn saw(&mut self, token: &Token) {
        let now = Instant::now();
        self.admitted.get_or_insert(token.admitted);
        self.began.get_or_insert(token.began);
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn nanos(from: Option<Instant>, to: Option<Instant>) -> u64 {
        match (from, to) {
            (Some(a), Some(b)) => u64::try_from((b - a).as_nanos()).unwrap_or(u64::MAX),
            _ => 0,
        }
    }

    /// Ollama's accounting, in nanoseconds. `load_duration` is the time
    /// this request waited, once admitted, for the model to finish loading
    /// (`--load-time`): non-zero only for requests that came during a cold
    /// start.
    fn ollama(&self, input_tokens: u32, output_tokens: u32) -> Value {
        json!({
            "total_duration": Timing::nanos(Some(self.received), self.last),
            "load_duration": Timing::nanos(self.admitted, self.began),
            "prompt_eval_count": input_tokens,
            "prompt_eval_duration": Timing::nanos(self.began, self.first),
            "eval_count": output_tokens,
            "eval_duration": Timing::nanos(self.first, self.last),
        })
    }

    fn seconds(&self) -> f64 {
        Timing::nanos(Some(self.received), self.last) as f64 / 1e9
    }
}

fn shutting_down() -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down")
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

#[derive(Deserialize)]
struct OllamaRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<OllamaMessage>>,
    #[serde(default = "yes")]
    stream: bool,
    #[serde(default)]
    options: OllamaOptions,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct OllamaMessage {
    #[serde(default)]
    content: String,
}

#[derive(Deserialize, Default)]
struct OllamaOptions {
    num_predict: Option<i64>,
    seed: Option<i64>,
}

fn ollama_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// `POST /api/generate`.
pub(crate) async fn ollama_generate(state: State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    ollama(state, &headers, body, false).await
}

/// `POST /api/chat`.
pub(crate) async fn ollama_chat(state: State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    ollama(state, &headers, body, true).await
}

async fn ollama(State(engine): State<Arc<Engine>>, headers: &HeaderMap, body: Bytes, chat: bool) -> Response {
    let request: OllamaRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return ollama_error(StatusCode::BAD_REQUEST, format!("invalid request body: {e}")),
    };
    let prompt = if chat {
        match &request.messages {
            Some(m) if !m.is_empty() => m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
            _ => return ollama_error(StatusCode::BAD_REQUEST, "messages must not be empty"),
        }
    } else {
        match &request.prompt {
            Some(p) => p.clone(),
            None => return ollama_error(StatusCode::BAD_REQUEST, "prompt is required"),
        }
    };
    let key = match request.options.seed {
        Some(seed) => text::mix(seed as u64),
        None => text::mix(text::hash(&prompt)),
    };
    // Ollama takes -1 (and -2) for "no limit".
    let max = request.options.num_predict.and_then(|n| u32::try_from(n).ok());
    let job = match job(&engine, key, &[prompt.as_str()], max, parent(headers)) {
        Ok(j) => j,
        Err(response) => return *response,
    };
    let (input, output) = (job.input_tokens, job.output_tokens);
    let model = request.model.unwrap_or_else(|| engine.config.model.clone());
    let rx = start(&engine, job).await;
    let piece = move |text: &str| -> Value {
        if chat {
            json!({"message": {"role": "assistant", "content": text}})
        } else {
            json!({"response": text})
        }
    };
    let line = move |model: &str, text: &str, done: bool| -> Value {
        let mut v = piece(text);
        v["model"] = json!(model);
        v["created_at"] = json!(rfc3339_now());
        v["done"] = json!(done);
        v
    };
    if !request.stream {
        let Some((content, timing, cut)) = collect(rx).await else {
            return shutting_down();
        };
        let mut v = line(&model, &content, true);
        v["done_reason"] = json!("length");
        merge(&mut v, timing.ollama(input, output));
        return faults::whole(&v, cut);
    }
    let mut timing = Timing::default();
    token_body(
        rx,
        move |token| {
            if token.tokens > 0 {
                timing.saw(&token);
            }
            // An event without tokens is a line with an empty response.
            let mut out = line(&model, &token.text, false).to_string();
            out.push('\n');
            if token.last {
                let mut v = line(&model, "", true);
                v["done_reason"] = json!("length");
                merge(&mut v, timing.ollama(input, output));
                out.push_str(&v.to_string());
                out.push('\n');
            }
            out
        },
        "application/x-ndjson",
        true,
    )
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

/// The body of a `/generate`-style request: TGI's `inputs` and
/// `parameters`, or the `prompt` and `max_tokens` (or `max_new_tokens`) of
/// home-made servers.
#[derive(Deserialize)]
struct GenerateRequest {
    inputs: Option<String>,
    prompt: Option<String>,
    #[serde(default)]
    parameters: Parameters,
    max_tokens: Option<u32>,
    max_new_tokens: Option<u32>,
}

#[derive(Deserialize, Default)]
struct Parameters {
    max_new_tokens: Option<u32>,
    #[serde(default)]
    details: bool,
    seed: Option<u64>,
}

struct Generate {
    details: bool,
    input: u32,
    output: u32,
    rx: mpsc::UnboundedReceiver<Token>,
}

/// A `/generate*` request: `one_per_event` for TGI's stream, whose events
/// are a token each whatever `--tokens-per-event` says.
async fn generate_request(
    engine: &Arc<Engine>,
    headers: &HeaderMap,
    body: &[u8],
    one_per_event: bool,
) -> Result<Generate, Box<Response>> {
    let request: GenerateRequest = serde_json::from_slice(body).map_err(|e| {
        let body = json!({"error": format!("invalid request body: {e}"), "error_type": "validation"});
        Box::new((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response())
    })?;
    let Some(prompt) = request.inputs.or(request.prompt) else {
        let body = json!({"error": "give the prompt as inputs (or prompt)", "error_type": "validation"});
        return Err(Box::new((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()));
    };
    let key = match request.parameters.seed {
        Some(seed) => text::mix(seed),
        None => text::mix(text::hash(&prompt)),
    };
    let max = request
        .parameters
        .max_new_tokens
        .or(request.max_new_tokens)
        .or(request.max_tokens);
    let mut job = job(engine, key, &[prompt.as_str()], max, parent(headers))?;
    if one_per_event {
        job.tokens_per_event = 1;
    }
    let (input, output) = (job.input_tokens, job.output_tokens);
    Ok(Generate {
        details: request.parameters.details,
        input,
        output,
        rx: start(engine, job).await,
    })
}

/// `POST /generate`: TGI's answer, or a home-made server's JSON shape
/// (`--generate-shape`).
pub(crate) async fn generate(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    let g = match generate_request(&engine, &headers, &body, false).await {
        Ok(g) => g,
        Err(response) => return *response,
    };
    let Some((content, timing, cut)) = collect(g.rx).await else {
        return shutting_down();
    };
    let answer = match engine.config.generate_shape {
        GenerateShape::Tgi => {
            let mut v = json!({"generated_text": content});
            if g.details {
                v["details"] = json!({
                    "finish_reason": "length",
                    "generated_tokens": g.output,
                    "input_length": g.input,
                    "seed": null,
                    "prefill": [],
                    "tokens": [],
                });
            }
            v
        }
        GenerateShape::Seconds => json!({
            "generated_text": content,
            "inference_time_seconds": timing.seconds(),
        }),
        GenerateShape::Millis => json!({
            "generated_text": content,
            "tokens_generated": g.output,
            "inference_time_ms": timing.seconds() * 1e3,
            "gpu_name": "llm-sim virtual GPU",
            "gpu_memory_used_gb": 0.0,
        }),
    };
    faults::whole(&answer, cut)
}

/// `POST /generate_stream`: TGI's SSE, one event per token; the last
/// carries the whole text and `details`.
pub(crate) async fn generate_stream(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    let g = match generate_request(&engine, &headers, &body, true).await {
        Ok(g) => g,
        Err(response) => return *response,
    };
    let (input, output) = (g.input, g.output);
    let mut index = 0u32;
    let mut all = String::new();
    token_body(
        g.rx,
        move |token| {
            index += 1;
            all.push_str(&token.text);
            let mut event = json!({
                "index": index,
                "token": {"id": index, "text": token.text, "logprob": 0.0, "special": false},
                "top_tokens": null,
                "generated_text": null,
                "details": null,
            });
            if token.last {
                event["generated_text"] = json!(all);
                event["details"] = json!({
                    "finish_reason": "length",
                    "generated_tokens": output,
                    "input_length": input,
                    "seed": null,
                });
            }
            format!("data:{event}\n\n")
        },
        "text/event-stream",
        false,
    )
}

/// `POST /generate_ndjson`: one `{"token": …}` line per token, then
/// `{"done": true, "generated_text": …, "tokens_generated": N}`.
pub(crate) async fn generate_ndjson(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    let g = match generate_request(&engine, &headers, &body, false).await {
        Ok(g) => g,
        Err(response) => return *response,
    };
    let output = g.output;
    let mut all = String::new();
    token_body(
        g.rx,
        move |token| {
            all.push_str(&token.text);
            let mut out = json!({"token": token.text}).to_string();
            out.push('\n');
            if token.last {
                let done = json!({"done": true, "generated_text": all, "tokens_generated": output});
                out.push_str(&done.to_string());
                out.push('\n');
            }
            out
        },
        "application/x-ndjson",
        false,
    )
}

/// `POST /generate_text`: the answer as plain chunked text, a chunk per
/// token.
pub(crate) async fn generate_text(State(engine): State<Arc<Engine>>, headers: HeaderMap, body: Bytes) -> Response {
    let g = match generate_request(&engine, &headers, &body, false).await {
        Ok(g) => g,
        Err(response) => return *response,
    };
    token_body(g.rx, |token| token.text, "text/plain; charset=utf-8", false)
}
