//! A bounded, never-blocking OTLP span exporter.
//!
//! Callers hand finished spans to [`Exporter::submit`], which only tries to
//! put them on a bounded queue: a full queue drops the span and counts it.
//! One thread of its own, with a small runtime of its own, cuts the queue
//! into batches and sends them, so a saturated load runtime never starves
//! the export and a slow collector never slows the load. A failed batch is
//! counted as dropped and logged once, not once per span; a later success
//! is logged once too.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// Outside any runtime this is the system monotonic clock.
use tokio::time::Instant as StdInstant;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};

use crate::{Config, Protocol};

/// Spans held at most while waiting for export.
const QUEUE: usize = 8_192;
/// Spans per OTLP request.
const BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
const DELAY: Duration = Duration::from_millis(500);
/// Limit on one OTLP request, so that an unresponsive collector costs a
/// bounded time per batch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Span counts of one exporter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost: the queue was full, the collector failed, or shutdown
    /// came first.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counts {
    submitted: AtomicU64,
    exported: AtomicU64,
    dropped: AtomicU64,
    closed: AtomicBool,
}

/// Exports spans to one OTLP collector. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Exporter {
    queue: SyncSender<Message>,
    counts: Arc<Counts>,
    endpoint: String,
}

enum Message {
    Span(Box<SpanData>),
    /// Export what is queued, then stop; answer when done.
    Close(mpsc::Sender<()>, StdInstant),
}

/// An exporter that cannot be built (a malformed endpoint).
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to {endpoint}: {reason}")]
pub struct Error {
    endpoint: String,
    reason: String,
}

impl Exporter {
    /// Starts the export thread for `config`, with `resource` attributes
    /// (`service.name` is taken from the config).
    pub fn start(config: &Config, resource: Vec<KeyValue>) -> Result<Exporter, Error> {
        let error = |reason: String| Error {
            endpoint: config.endpoint.clone(),
            reason,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| error(e.to_string()))?;
        // The tonic exporter must be built inside a runtime.
        let built = {
            let _entered = runtime.enter();
            match config.protocol {
                Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(&config.endpoint)
                    .with_timeout(REQUEST_TIMEOUT)
                    .build(),
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(&config.endpoint)
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_headers(Default::default())
                    .with_timeout(REQUEST_TIMEOUT)
                    .build(),
            }
        };
        let mut exporter = built.map_err(|e| error(e.to_string()))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(config.service_name.clone())
                .with_attributes(resource)
                .build(),
        );
        let (queue, rx) = mpsc::sync_channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let worker = Worker {
            rx,
            counts: Arc::clone(&counts),
            endpoint: config.endpoint.clone(),
            http: config.protocol == Protocol::HttpProtobuf,
            failing: false,
        };
        // The worker's log lines carry the caller's context (the run's
        // trace id).
        let logs = tracing::Span::current();
        std::thread::Builder::new()
            .name("otlp-export".to_owned())
            .spawn(move || logs.in_scope(|| worker.run(runtime, exporter)))
            .map_err(|e| error(e.to_string()))?;
        Ok(Exporter {
            queue,
            counts,
            endpoint: config.endpoint.clone(),
        })
    }

    /// Queues a span for export; drops and counts it when the queue is full
    /// or the exporter is closed. Never blocks.
    pub fn submit(&self, span: SpanData) {
        self.counts.submitted.fetch_add(1, Ordering::Relaxed);
        if self.counts.closed.load(Ordering::Relaxed) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Spans exported and dropped so far. Spans still queued are neither.
    pub fn stats(&self) -> Stats {
        Stats {
            exported: self.counts.exported.load(Ordering::Relaxed),
            dropped: self.counts.dropped.load(Ordering::Relaxed),
        }
    }

    /// Exports what is queued, waiting at most `limit`; whatever is not
    /// exported by then counts as dropped. Later spans are dropped. Blocks
    /// the calling thread: call it from a blocking context.
    pub fn close(&self, limit: Duration) -> Stats {
        let deadline = StdInstant::now() + limit;
        let (done, finished) = mpsc::channel();
        self.counts.closed.store(true, Ordering::Relaxed);
        // A full queue has room again within one batch; wait for it, but
        // only until the deadline.
        let mut message = Message::Close(done, deadline);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => {
                    let _ = finished.recv_timeout(deadline.saturating_duration_since(StdInstant::now()));
                    break;
                }
                Err(TrySendError::Full(m)) if StdInstant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
        // Anything submitted and not exported by now is lost.
        let submitted = self.counts.submitted.load(Ordering::Relaxed);
        let exported = self.counts.exported.load(Ordering::Relaxed);
        let dropped = submitted.saturating_sub(exported);
        self.counts.dropped.store(dropped, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(endpoint = %self.endpoint, dropped, exported, "spans were not exported");
        }
        Stats { exported, dropped }
    }
}

struct Worker {
    rx: Receiver<Message>,
    /// OTLP/HTTP: the exporter uses a blocking client.
    http: bool,
    counts: Arc<Counts>,
    endpoint: String,
    failing: bool,
}

impl Worker {
    fn run(mut self, runtime: tokio::runtime::Runtime, exporter: opentelemetry_otlp::SpanExporter) {
        let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
        let mut oldest: Option<StdInstant> = None;
        loop {
            let wait = oldest.map_or(DELAY, |t| (t + DELAY).saturating_duration_since(StdInstant::now()));
            match self.rx.recv_timeout(wait) {
                Ok(Message::Span(span)) => {
                    batch.push(*span);
                    oldest.get_or_insert_with(StdInstant::now);
                    if batch.len() >= BATCH {
                        self.send(&runtime, &exporter, &mut batch, None);
                        oldest = None;
                    }
                }
                Ok(Message::Close(done, deadline)) => {
                    while let Ok(Message::Span(span)) = self.rx.try_recv() {
                        batch.push(*span);
                        if batch.len() >= BATCH {
                            self.send(&runtime, &exporter, &mut batch, Some(deadline));
                        }
                    }
                    self.send(&runtime, &exporter, &mut batch, Some(deadline));
                    let _ = done.send(());
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.send(&runtime, &exporter, &mut batch, None);
                    oldest = None;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.send(
                        &runtime,
                        &exporter,
                        &mut batch,
                        Some(StdInstant::now() + REQUEST_TIMEOUT),
                    );
                    break;
                }
            }
        }
        // The HTTP exporter's blocking client must not be dropped inside
        // the runtime.
        drop(exporter);
        drop(runtime);
    }

    fn send(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        exporter: &opentelemetry_otlp::SpanExporter,
        batch: &mut Vec<SpanData>,
        deadline: Option<StdInstant>,
    ) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(BATCH));
        let result = match deadline {
            // The HTTP exporter's blocking client refuses to run inside a
            // runtime; its own timeout bounds each request.
            _ if self.http => outside_runtime(exporter.export(spans)).map_err(|e| e.to_string()),
            None => runtime.block_on(exporter.export(spans)).map_err(|e| e.to_string()),
            Some(at) => {
                let left = at.saturating_duration_since(StdInstant::now());
                // The timer must be made inside the runtime.
                match runtime.block_on(async { tokio::time::timeout(left, exporter.export(spans)).await }) {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the shutdown deadline passed".to_owned()),
                }
            }
        };
        match result {
            Ok(()) => {
                self.counts.exported.fetch_add(n, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    if unreachable(&self.endpoint, false) {
                        tracing::info!(endpoint = %self.endpoint, "exporting spans again");
                    }
                }
            }
            Err(e) => {
                self.counts.dropped.fetch_add(n, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    if !unreachable(&self.endpoint, true) {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            "cannot export spans ({e}); they are dropped and counted until the collector answers"
                        );
                    }
                }
            }
        }
    }
}

/// Collectors this process has found unreachable and said so: several
/// exporters (each agent of a local run, the simulator, the run span) share
/// one warning. Marks `endpoint` as `failing` and says whether it was so
/// marked before.
fn unreachable(endpoint: &str, failing: bool) -> bool {
    static UNREACHABLE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut list = UNREACHABLE.lock().unwrap_or_else(|p| p.into_inner());
    let before = list.iter().position(|e| e == endpoint);
    match (before, failing) {
        (None, true) => list.push(endpoint.to_owned()),
        (Some(i), false) => {
            list.swap_remove(i);
        }
        _ => {}
    }
    before.is_some()
}

/// Runs a future to completion on this thread, outside any runtime.
fn outside_runtime<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}
