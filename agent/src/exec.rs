//! Runs one request: connects when needed, writes the request, reads the
//! answer, times every token, and classifies failures.
//!
//! Timing follows the metric contract: `t0` is just before the request is
//! written, after a connection is available; TTFT ends at the first byte of
//! the first event carrying generated text; each ITL sample is the gap
//! between the first bytes of consecutive such events; E2E ends when the
//! response body ends.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use stampede_proto::{ErrorClass, LATE};
use tokio::time::Instant;

use crate::api::{Dialect, Finish, Framing, Parsed, Spec, Usage};
use crate::http::{Conn, Endpoint};
use crate::record::{Outcome, Sample};
use crate::stream::sse::{self, PushError};
use crate::trace::{self, Trail};

/// Largest error body kept for a message, and largest whole answer read.
const MAX_ERROR_BODY: usize = 2 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Everything needed to run requests against one target.
#[derive(Debug)]
pub struct Executor {
    /// Where to send requests.
    pub endpoint: Endpoint,
    /// How to talk to the server.
    pub dialect: Dialect,
    /// Model name sent with each request.
    pub model: String,
    /// Generation parameters.
    pub spec: Spec,
    /// Limit on one request, connection included.
    pub timeout: Duration,
    /// Trace context for every request, and spans when tracing is on.
    pub trace: trace::Shared,
    /// Unit tests of the load models: answer every request after these
    /// service times in turn, without a network, so that schedules can be
    /// checked on a paused clock.
    #[cfg(test)]
    pub(crate) service_times: Option<(Vec<Duration>, std::sync::atomic::AtomicUsize)>,
}

impl Executor {
    /// An executor for `endpoint`.
    pub fn new(endpoint: Endpoint, dialect: Dialect, model: String, spec: Spec, timeout: Duration) -> Executor {
        Executor {
            endpoint,
            dialect,
            model,
            spec,
            timeout,
            trace: Default::default(),
            #[cfg(test)]
            service_times: None,
        }
    }
}

/// When a request was meant to start and when the agent got to it.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Its intended start, from the schedule.
    pub intended: Instant,
    /// When the scheduler released it: `dispatched - intended` is the
    /// scheduling lag.
    pub dispatched: Instant,
    /// The user sending it, for closed-loop loads.
    pub user: Option<u32>,
}

impl Timing {
    /// A request released the moment it was meant to start.
    pub fn now() -> Timing {
        let now = Instant::now();
        Timing {
            intended: now,
            dispatched: now,
            user: None,
        }
    }
}

/// Per-user buffers reused across requests.
#[derive(Debug, Default)]
pub struct Scratch {
    gaps: Vec<u64>,
}

/// A failure on its way to becoming an [`Outcome::Failed`].
struct Failure(ErrorClass, String);

fn fail<T>(class: ErrorClass, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(class, message.into()))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Executor {
    /// Runs one request over `conn` (opened or replaced as needed) and
    /// hands its span to the tracer. Never panics on server behaviour:
    /// every failure is an outcome.
    pub async fn run<'s>(
        &self,
        conn: &mut Option<Conn>,
        prompt: &str,
        timing: Timing,
        scratch: &'s mut Scratch,
    ) -> Outcome<'s> {
        let mut trail = Trail {
            parent: self.trace.context(),
            intended: timing.intended,
            t0: None,
            status: None,
            user: timing.user,
        };
        let outcome = self.measure(conn, prompt, timing, scratch, &mut trail).await;
        self.trace.finish(&trail, &outcome);
        outcome
    }

    async fn measure<'s>(
        &self,
        conn: &mut Option<Conn>,
        prompt: &str,
        timing: Timing,
        scratch: &'s mut Scratch,
        trail: &mut Trail,
    ) -> Outcome<'s> {
        scratch.gaps.clear();
        let intended = timing.intended;
        let lag_us = micros(timing.dispatched.saturating_duration_since(intended));
        #[cfg(test)]
        if let Some((times, next)) = &self.service_times {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let t0 = Instant::now();
            tokio::time::sleep(times[i % times.len()]).await;
            let (e2e, queued) = (t0.elapsed(), t0 - intended);
            return Outcome::Ok(Sample {
                e2e_us: micros(e2e),
                client_queue_us: micros(queued),
                schedule_lag_us: lag_us,
                e2e_intended_us: micros(e2e + queued),
                late: queued > LATE,
                output_tokens: 1,
                ..Sample::default()
            });
        }
        let attempt = self.attempt(conn, prompt, intended, &mut scratch.gaps, trail);
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => fail(
                ErrorClass::Timeout,
                format!("no complete answer within {:?}", self.timeout),
            ),
        };
        match result {
            Ok(mut sample) => {
                sample.itl_us = &scratch.gaps;
                sample.schedule_lag_us = lag_us;
                Outcome::Ok(sample)
            }
            Err(Failure(class, message)) => {
                // After an HTTP error status the connection is still in
                // step (hyper closes it if the error body was not read to
                // the end); after anything else its state is unknown.
                if !matches!(class, ErrorClass::Status(_)) {
                    *conn = None;
                }
                Outcome::Failed {
                    class,
                    message,
                    schedule_lag_us: lag_us,
                    late: lag_us > micros(LATE),
                }
            }
        }
    }

    fn request(&self, body: Bytes, traceparent: &str) -> Request<Full<Bytes>> {
        Request::post(self.endpoint.path(self.dialect.path()))
            .header(stampede_otel::Traceparent::HEADER, traceparent)
            .header(header::HOST, self.endpoint.authority())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::ACCEPT,
                if self.spec.stream {
                    "text/event-stream"
                } else {
                    "application/json"
                },
            )
            .body(Full::new(body))
            .expect("method, path and headers are valid")
    }

    async fn attempt(
        &self,
        conn: &mut Option<Conn>,
        prompt: &str,
        intended: Instant,
        gaps: &mut Vec<u64>,
        trail: &mut Trail,
    ) -> Result<Sample<'static>, Failure> {
        let body = Bytes::from(self.dialect.body(&self.model, prompt, &self.spec));
        let traceparent = trail.parent.to_string();
        let mut connect_us = None;
        let mut reused = conn.as_ref().is_some_and(Conn::is_open);
        let (t0, response) = loop {
            if !reused {
                let started = Instant::now();
                *conn = None;
                let fresh = match self.endpoint.connect().await {
                    Ok(c) => c,
                    Err(e) => return fail(ErrorClass::Connect, e),
                };
                connect_us = Some(micros(started.elapsed()));
                *conn = Some(fresh);
            }
            let c = conn.as_mut().expect("a connection was just ensured");
            if c.sender.ready().await.is_err() {
                if reused {
                    // The server closed the idle connection: open another.
                    reused = false;
                    continue;
                }
                return fail(ErrorClass::Stream, "connection closed before the request was sent");
            }
            let t0 = Instant::now();
            trail.t0 = Some(t0);
            match c
                .sender
                .try_send_request(self.request(body.clone(), &traceparent))
                .await
            {
                Ok(response) => break (t0, response),
                // Never written: a keep-alive connection the server closed
                // just now. Safe to send again on a new connection.
                Err(e) if reused && e.message().is_some() => reused = false,
                Err(e) => {
                    return fail(ErrorClass::Stream, format!("no response: {}", e.into_error()));
                }
            }
        };
        let client_queue_us = micros(t0 - intended);
        let status = response.status();
        trail.status = Some(status.as_u16());
        if !status.is_success() {
            let snippet = read_limited(response.into_body(), MAX_ERROR_BODY).await;
            let text = String::from_utf8_lossy(&snippet);
            return fail(
                ErrorClass::Status(status.as_u16()),
                format!("HTTP {status}: {}", text.trim()),
            );
        }
        let read = if self.spec.stream {
            self.read_stream(response.into_body(), gaps).await?
        } else {
            self.read_whole(response.into_body()).await?
        };
        let end = Instant::now();
        let (output_tokens, input_tokens, tokens_from_usage) = match read.usage {
            Some(u) => (u.output_tokens, u.input_tokens, true),
            None => (u64::from(read.content_events), None, false),
        };
        let e2e = end - t0;
        let ttft = read.first_token_at.map(|t| t - t0);
        let tpot_us = match (ttft, output_tokens) {
            (Some(ttft), n) if n >= 2 => Some(micros(e2e.saturating_sub(ttft)) / (n - 1)),
            _ => None,
        };
        let queued = t0 - intended;
        Ok(Sample {
            ttft_us: ttft.map(micros),
            itl_us: &[],
            tpot_us,
            e2e_us: micros(e2e),
            client_queue_us,
            connect_us,
            input_tokens,
            output_tokens,
            tokens_from_usage,
            schedule_lag_us: 0,
            ttft_intended_us: ttft.map(|t| micros(t + queued)),
            e2e_intended_us: micros(e2e + queued),
            late: queued > LATE,
            finish: read.finished,
        })
    }

    async fn read_stream(&self, mut body: Incoming, gaps: &mut Vec<u64>) -> Result<Read, Failure> {
        debug_assert_eq!(self.dialect.framing(), Framing::Sse);
        let mut framer = sse::Framer::new();
        let mut read = Read::default();
        let mut last_token_at: Option<Instant> = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => return fail(ErrorClass::Stream, format!("stream broke: {e}")),
            };
            let Ok(data) = frame.into_data() else {
                continue; // Trailers carry no tokens.
            };
            let at = Instant::now();
            let pushed = framer.push(&data, at, |event| {
                match self.dialect.event(event.data) {
                    Parsed::Chunk {
                        content_events,
                        finished,
                        usage,
                    } => {
                        if content_events > 0 {
                            let t = event.first_byte_at;
                            match last_token_at {
                                None => read.first_token_at = Some(t),
                                Some(prev) => gaps.push(micros(t - prev)),
                            }
                            last_token_at = Some(t);
                            read.content_events += content_events;
                        }
                        read.finished = read.finished.or(finished);
                        read.usage = usage.or(read.usage);
                    }
                    Parsed::Done => read.done = true,
                    Parsed::ServerError(m) => {
                        return fail(ErrorClass::Stream, format!("server error in stream: {m}"));
                    }
                    Parsed::Malformed(m) => return fail(ErrorClass::Malformed, m),
                }
                Ok(())
            });
            match pushed {
                Ok(()) => {}
                Err(PushError::Event(failure)) => return Err(failure),
                Err(PushError::Frame(e)) => return fail(ErrorClass::Malformed, e.to_string()),
            }
        }
        if framer.is_mid_event() && !read.done {
            return fail(ErrorClass::Stream, "stream ended in the middle of an event");
        }
        if !read.done && read.finished.is_none() {
            return fail(
                ErrorClass::Stream,
                "stream ended before the answer was complete (no finish_reason, no [DONE])",
            );
        }
        Ok(read)
    }

    async fn read_whole(&self, body: Incoming) -> Result<Read, Failure> {
        let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return fail(ErrorClass::Stream, format!("reading the response: {e}")),
        };
        match self.dialect.whole(&bytes) {
            Parsed::Chunk {
                content_events,
                usage,
                finished,
            } => Ok(Read {
                content_events,
                usage,
                finished: Some(finished.unwrap_or(Finish::Unstated)),
                ..Read::default()
            }),
            Parsed::Done => fail(ErrorClass::Malformed, "unexpected [DONE] in a whole response"),
            Parsed::ServerError(m) => fail(ErrorClass::Stream, format!("server error: {m}")),
            Parsed::Malformed(m) => fail(ErrorClass::Malformed, m),
        }
    }
}

/// What was read from one answer.
#[derive(Debug, Default)]
struct Read {
    first_token_at: Option<Instant>,
    content_events: u32,
    usage: Option<Usage>,
    finished: Option<Finish>,
    done: bool,
}

async fn read_limited(mut body: Incoming, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let take = data.len().min(limit - out.len());
                    out.extend_from_slice(&data[..take]);
                }
            }
            _ => break,
        }
    }
    out
}
