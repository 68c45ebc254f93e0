//! `llm-sim`: a real HTTP server that models an LLM inference engine.
//!
//! Requests wait in a FIFO queue for one of `max_batch` batch slots
//! (continuous batching); an admitted request prefills for a time
//! proportional to its input tokens, emits its first token, then one token
//! per decode step, a step growing with the number of running sequences.
//! Every timing follows from the [`Config`], so tests can compare what a
//! client measures with what really happened: `/metrics` exposes the
//! ground truth (requests served, queue depth, running sequences, busy
//! time, and histograms of queue time, TTFT and duration), optionally
//! also under the DCGM exporter's GPU metric names.
//!
//! Endpoints, every one streaming and not where the dialect does:
//! `POST /v1/chat/completions` and `POST /v1/completions` (OpenAI),
//! `POST /api/generate` and `POST /api/chat` (Ollama, NDJSON),
//! `POST /generate_stream` and `POST /generate` (TGI, or with
//! `--generate-shape` the JSON of a home-made server), `POST
//! /generate_ndjson` and `POST /generate_text` (NDJSON and plain-text
//! streams for `http-json` clients), `GET /v1/models`, `GET /health`,
//! `GET /metrics`, and `POST /admin/stall?for=2s` to freeze the engine on
//! demand.

mod cache;
mod config;
mod engine;
mod events;
mod faults;
mod metrics;
mod native;
mod openai;
mod prefix;
mod record;
mod text;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, GenerateShape, OutputLength};
pub use faults::{Fault, FaultRule};

use engine::Engine;

fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/api/generate", post(native::ollama_generate))
        .route("/api/chat", post(native::ollama_chat))
        .route("/generate", post(native::generate))
        .route("/generate_stream", post(native::generate_stream))
        .route("/generate_ndjson", post(native::generate_ndjson))
        .route("/generate_text", post(native::generate_text))
        .route("/v1/models", get(openai::models))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(prometheus))
        .route("/admin/stall", post(stall))
        .fallback(|| async { openai::error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(engine)
}

async fn prometheus(State(engine): State<Arc<Engine>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&engine),
    )
        .into_response()
}

/// `POST /admin/stall?for=2s`: freezes the engine, as a GPU hang or a long
/// garbage-collection pause would.
async fn stall(
    State(engine): State<Arc<Engine>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(length) = q.get("for").and_then(|s| humantime::parse_duration(s).ok()) else {
        return openai::error(
            StatusCode::BAD_REQUEST,
            "give the stall's length, such as /admin/stall?for=2s",
        );
    };
    tracing::info!("stalling for {length:?}");
    engine.stall(length);
    (StatusCode::OK, format!("stalled for {length:?}\n")).into_response()
}

/// Serves the simulator on `listener` until `shutdown` is cancelled.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    serve_traced(config, None, listener, shutdown).await
}

/// Serves the simulator, exporting its request spans to `spans` (see
/// [`trace`]), until `shutdown` is cancelled.
pub async fn serve_traced(
    config: Config,
    spans: trace::Spans,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_recorded(config, spans, Recording::default(), listener, shutdown).await
}

/// What the simulator writes down about the requests it serves.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recording<'a> {
    /// Each chat request's messages and the answer sent, as JSON lines
    /// (`--record`).
    pub requests: Option<&'a std::path::Path>,
    /// When each traced, streamed request's first token was written, as
    /// JSON lines (`--record-first-writes`).
    pub first_writes: Option<&'a std::path::Path>,
}

/// [`serve_traced`], also recording what `record` asks for.
pub async fn serve_recorded(
    config: Config,
    spans: trace::Spans,
    record: Recording<'_>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let mut engine = Engine::new(config);
    engine.spans = spans;
    engine.record = record.requests.map(record::Record::create).transpose()?;
    engine.first_writes = record
        .first_writes
        .map(record::FirstWrites::create)
        .transpose()?
        .map(Arc::new);
    let engine = Arc::new(engine);
    // Tokens are small writes: without TCP_NODELAY, Nagle's algorithm and
    // the client's delayed ACK hold them back by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// A simulator running in the background of this process.
#[derive(Debug)]
pub struct Handle {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
}

impl Handle {
    /// Base URL of the simulator, such as `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests and waits for the server to end.
    pub async fn stop(self) -> std::io::Result<()> {
        self.shutdown.cancel();
        self.done
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the simulator's thread ended without a result")))
    }
}

/// Binds `addr` (port 0 picks a free port) and serves in the background.
pub async fn spawn(config: Config, addr: SocketAddr) -> std::io::Result<Handle> {
    spawn_traced(config, None, addr).await
}

/// [`spawn`], exporting request spans to `spans`.
///
/// The simulator runs on a runtime of its own, on threads named
/// `llm-sim`: sharing a process with the agents (the controller's
/// built-in target), it never takes their runtime's workers, and its CPU
/// is not counted as theirs.
pub async fn spawn_traced(config: Config, spans: trace::Spans, addr: SocketAddr) -> std::io::Result<Handle> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("llm-sim")
        .build()?;
    let shutdown = CancellationToken::new();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let stop = shutdown.clone();
    std::thread::Builder::new().name("llm-sim".to_owned()).spawn(move || {
        let result = runtime.block_on(async move {
            let listener = TcpListener::from_std(listener)?;
            serve_traced(config, spans, listener, stop).await
        });
        let _ = done_tx.send(result);
    })?;
    Ok(Handle { addr, shutdown, done })
}
