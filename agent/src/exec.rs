//! Runs one request: connects when needed, writes the request, reads the
//! answer, times every token, and classifies failures.
//!
//! Timing follows the metric contract: `t0` is just before the request is
//! written, after a connection is available; TTFT ends at the first byte of
//! the first event carrying generated text; each chunk gap is the gap
//! between the first bytes of consecutive events carrying tokens, and is
//! split evenly among that event's tokens for ITL (see [`crate::events`]);
//! E2E ends when the last byte of the response body arrives. "Arrives"
//! means when the kernel received the packets that the read returning it
//! took off the socket (on Linux; elsewhere when that read returned): see
//! [`crate::http::Arrivals`]. The request's own task reads the socket
//! and decodes the body ([`crate::http::Conn::chunk`]), so each piece of
//! the body carries the stamp of exactly the read that returned it.
//!
//! Output tokens come from the best source at hand, and the sample says
//! which ([`TokenSource`]): the server's own count (OpenAI `usage`, Ollama
//! `eval_count`, TGI `details.generated_tokens`, an `http-json` token
//! pointer); else, with a client tokenizer, its count of the answer's
//! text; else, for SSE and NDJSON streams, the number of events that
//! carried text; else (whole answers, plain-text streams) the number of
//! whitespace-separated words in the text, an approximation that is exact
//! only for servers whose tokens are words. Every source at hand is kept
//! in the sample, so that the summary can say how far they disagree.
//!
//! The tokenizer counts after the answer has ended and been timed, on the
//! blocking pool, so that it neither adds to any measured time nor holds
//! up the runtime threads that read other users' streams.

use std::sync::Arc;
use std::time::Duration;

use stampede_proto::{ErrorClass, LATE};
use tokio::time::Instant;

use crate::api::{Api, Chunk, Finish, Framing, Parsed, ServerTimes, Shape, Spec, Usage};
use crate::events::{self, Event};
use crate::http::{Arrivals, Conn, Endpoint, Head};
use crate::prompts::Prompt;
use crate::record::{Gap, Outcome, Sample, TokenSource};
use crate::stream::ndjson;
use crate::stream::sse::{self, PushError};
use crate::tokenizer::Tokenizer;
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
    pub api: Api,
    /// Model name sent with each request.
    pub model: String,
    /// Generation parameters.
    pub spec: Spec,
    /// Limit on one request, connection included.
    pub timeout: Duration,
    /// The target model's tokenizer, when the run has one: it counts each
    /// answer's tokens (and each prompt's, when the server does not).
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Trace context for every request, and spans when tracing is on.
    pub trace: trace::Shared,
    /// The run's per-request objectives, when it has some: each success
    /// is checked against them (goodput).
    pub slo: Option<crate::slo::Slo>,
    /// When requests were in flight, for the interval reports.
    pub presence: Arc<crate::presence::Presence>,
    /// Honour a `Retry-After` on a 429 or 503 answer, waiting at most this
    /// long; `None` ignores it.
    pub retry_after_max: Option<Duration>,
    /// Unit tests of the load models: answer every request after these
    /// service times in turn, without a network, so that schedules can be
    /// checked on a paused clock.
    #[cfg(test)]
    pub(crate) service_times: Option<(Vec<Duration>, std::sync::atomic::AtomicUsize)>,
}

impl Executor {
    /// An executor for `endpoint`.
    pub fn new(endpoint: Endpoint, api: Api, model: String, spec: Spec, timeout: Duration) -> Executor {
        Executor {
            endpoint,
            api,
            model,
            spec,
            timeout,
            tokenizer: None,
            trace: Default::default(),
            slo: None,
            presence: Arc::default(),
            retry_after_max: None,
            #[cfg(test)]
            service_times: None,
        }
    }

    /// The same executor, counting tokens with `tokenizer` as well.
    pub fn with_tokenizer(mut self, tokenizer: Option<Arc<Tokenizer>>) -> Executor {
        self.tokenizer = tokenizer;
        self
    }
}

/// When a request was meant to start and when the agent got to it.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Its intended start, from the schedule.
    pub intended: Instant,
    /// When its sender could first have sent it: the intended start, or
    /// later for a paced user still busy with its previous request when
    /// its tick came, or for a user waiting out a connect back-off or the
    /// server's `Retry-After` (those waits are the server's doing, not the
    /// agent's).
    pub ready: Instant,
    /// When the scheduler released it: `dispatched - ready` is the
    /// scheduling lag, how late the agent itself was.
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
            ready: now,
            dispatched: now,
            user: None,
        }
    }
}

/// Per-user buffers reused across requests.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The answer's events that carried text.
    events: Vec<Event>,
    /// Where each event's text ends in `text`, for the tokenizer.
    ends: Vec<usize>,
    /// The tokenizer's count of each event's text.
    counted: Vec<u32>,
    /// Each event's tokens.
    tokens: Vec<u32>,
    /// The gaps between events that carried tokens.
    gaps: Vec<Gap>,
    /// The answer's text, kept only when a tokenizer will count it.
    text: String,
    /// The prompt, copied only when a tokenizer will count it.
    prompt: String,
    /// The shape of the user's recent events (see [`Shape`]).
    shape: Shape,
}

impl Scratch {
    /// The text of the last answer, when it was kept (a session's turn, or
    /// a run with a tokenizer).
    pub fn answer(&self) -> &str {
        &self.text
    }
}

/// A failure on its way to becoming an [`Outcome::Failed`].
struct Failure(ErrorClass, String, Option<Duration>);

fn fail<T>(class: ErrorClass, message: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(class, message.into(), None))
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
        prompt: Prompt<'_>,
        timing: Timing,
        scratch: &'s mut Scratch,
    ) -> Outcome<'s> {
        let _in_flight = self.presence.enter();
        let mut trail = Trail {
            parent: self.trace.context(),
            intended: timing.intended,
            t0: None,
            status: None,
            user: timing.user,
            session: (prompt.turn > 0).then_some((prompt.session, prompt.turn)),
        };
        let outcome = self.measure(conn, prompt, timing, scratch, &mut trail).await;
        self.trace.finish(&trail, &outcome);
        outcome
    }

    async fn measure<'s>(
        &self,
        conn: &mut Option<Conn>,
        prompt: Prompt<'_>,
        timing: Timing,
        scratch: &'s mut Scratch,
        trail: &mut Trail,
    ) -> Outcome<'s> {
        scratch.events.clear();
        scratch.gaps.clear();
        scratch.text.clear();
        let intended = timing.intended;
        let lag_us = micros(timing.dispatched.saturating_duration_since(timing.ready.max(intended)));
        let late = lag_us > micros(LATE);
        // Written this long after the intended start is the agent's or the
        // server's doing (lag, a paced user's wait); what is left after
        // dispatch was spent on this side: opening a connection, waiting
        // for a concurrency slot.
        let before_dispatch = micros(timing.dispatched.saturating_duration_since(intended));
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
                late,
                held: micros(queued).saturating_sub(before_dispatch) > micros(LATE),
                output_tokens: 1,
                turn: prompt.turn,
                ..Sample::default()
            });
        }
        // A session keeps each answer: it is the next turn's history.
        let keep_text = (self.tokenizer.is_some() || prompt.turn > 0).then_some(&mut scratch.text);
        let attempt = self.attempt(
            conn,
            prompt.history,
            prompt.text,
            prompt.max_tokens,
            &mut scratch.events,
            &mut scratch.shape,
            keep_text,
            trail,
        );
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => fail(
                ErrorClass::Timeout,
                format!("no complete answer within {:?}", self.timeout),
            ),
        };
        match result {
            Ok(answer) => {
                let counted = match &self.tokenizer {
                    Some(t) => {
                        let input = answer.read.usage.and_then(|u| u.input_tokens).is_none();
                        scratch.ends.clear();
                        scratch.ends.extend(scratch.events.iter().map(|e| e.text_end));
                        let buffers = Buffers {
                            text: &mut scratch.text,
                            prompt: &mut scratch.prompt,
                            ends: &mut scratch.ends,
                            counted: &mut scratch.counted,
                        };
                        // A session turn's input is its whole history.
                        let whole;
                        let sent = if prompt.history.is_empty() {
                            prompt.text
                        } else {
                            let mut all: Vec<&str> = prompt.history.iter().map(|m| m.content.as_str()).collect();
                            all.push(prompt.text);
                            whole = all.join("\n\n");
                            whole.as_str()
                        };
                        count(t, buffers, input.then_some(sent)).await
                    }
                    None => Counted::default(),
                };
                let per_event = counted.output.is_some() && self.tokenizer.is_some();
                let mut sample = answer.sample(intended, counted, prompt.class);
                sample.turn = prompt.turn;
                // A total that is not per event is shared among the events:
                // the server's, or the words of a plain-text stream.
                let total = matches!(sample.token_source, TokenSource::Server | TokenSource::Words)
                    .then_some(sample.output_tokens);
                events::gaps(
                    &scratch.events,
                    per_event.then_some(&scratch.counted[..]),
                    total,
                    &mut scratch.tokens,
                    &mut scratch.gaps,
                );
                sample.gaps = &scratch.gaps;
                sample.schedule_lag_us = lag_us;
                sample.late = late;
                sample.held = sample.client_queue_us.saturating_sub(before_dispatch) > micros(LATE);
                sample.good = self.slo.is_some_and(|slo| slo.met(&sample));
                Outcome::Ok(sample)
            }
            Err(Failure(class, message, retry_after)) => {
                // After an HTTP error status the connection is still in
                // step (it is closed if the error body was not read to
                // the end); after anything else its state is unknown.
                if !matches!(class, ErrorClass::Status(_)) {
                    *conn = None;
                }
                Outcome::Failed {
                    class,
                    message,
                    schedule_lag_us: lag_us,
                    late,
                    prompt_class: prompt.class,
                    retry_after,
                }
            }
        }
    }

    /// The whole request: its head, then `body`.
    fn request(&self, body: &[u8], traceparent: &[u8]) -> Vec<u8> {
        let accept = if self.api.streams(&self.spec) {
            self.api.framing().accept()
        } else {
            "application/json"
        };
        let fixed = [
            ("content-type", b"application/json".as_slice()),
            ("accept", accept.as_bytes()),
            (stampede_otel::Traceparent::HEADER, traceparent),
        ];
        let headers = fixed
            .into_iter()
            .chain(self.api.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
        let mut request = Vec::with_capacity(384 + body.len());
        let path = self.endpoint.path(self.api.path(&self.spec));
        self.endpoint.head("POST", &path, headers, body.len(), &mut request);
        request.extend_from_slice(body);
        request
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        conn: &mut Option<Conn>,
        history: &[crate::prompts::Message],
        prompt: &str,
        max_tokens: Option<u32>,
        events: &mut Vec<Event>,
        shape: &mut Shape,
        text: Option<&mut String>,
        trail: &mut Trail,
    ) -> Result<Answer, Failure> {
        let spec = Spec {
            max_tokens: max_tokens.or(self.spec.max_tokens),
            ..self.spec
        };
        let request = self.request(
            &self.api.body_with(&self.model, history, prompt, &spec),
            &trail.parent.encode(),
        );
        let mut connect_us = None;
        let mut reused = conn.as_mut().is_some_and(Conn::is_open);
        let (t0, mut head) = loop {
            if !reused {
                let started = Instant::now();
                *conn = None;
                // Boxed: opening a connection (TCP, TLS, the HTTP
                // handshake) needs more state than the rest of a request
                // put together. Held inline, it would sit in every user's
                // task for the whole of every answer it streams, though it
                // is used once per connection.
                let fresh = match Box::pin(self.endpoint.connect()).await {
                    Ok(c) => c,
                    Err(e) => return fail(ErrorClass::Connect, e),
                };
                connect_us = Some(micros(started.elapsed()));
                *conn = Some(fresh);
            }
            let c = conn.as_mut().expect("a connection was just ensured");
            let t0 = Instant::now();
            trail.t0 = Some(t0);
            match c.send(&request).await {
                Ok(head) => break (t0, head),
                // Written to a keep-alive connection the server had already
                // closed (it closed without a byte of response: some
                // servers, llama.cpp's among them, close after each
                // streamed answer). The server never saw it, so it is sent
                // again on a new connection, as browsers and curl do; t0
                // restarts with the new attempt.
                Err(e) if reused && e.unanswered => {
                    tracing::debug!(
                        "the server had closed the reused connection ({}); sending the request again on a new one",
                        e.message
                    );
                    reused = false;
                }
                Err(e) => return fail(ErrorClass::Stream, format!("no response: {}", e.message)),
            }
        };
        let c = conn.as_mut().expect("the request was sent over it");
        trail.status = Some(head.status);
        if !(200..300).contains(&head.status) {
            let retry_after = self.retry_after(&head);
            let mut snippet = Vec::new();
            // What arrived of the message is enough; a broken or longer
            // body leaves the connection closed.
            let _ = c.read_body(&mut head, &mut snippet, MAX_ERROR_BODY).await;
            let text = String::from_utf8_lossy(&snippet);
            return Err(Failure(
                ErrorClass::Status(head.status),
                format!("HTTP {}: {}", status_line(head.status), text.trim()),
                retry_after,
            ));
        }
        let streamed = self.api.streams(&self.spec);
        let arrivals = c.arrivals.clone();
        let read = if streamed {
            self.read_stream(c, &mut head, &arrivals, events, shape, text).await?
        } else {
            self.read_whole(c, &mut head, text).await?
        };
        // The body ended with the last bytes read; a clock that reads
        // before t0 or after now is not this answer's.
        let now = Instant::now();
        let end = arrivals.last().map_or(now, |t| t.clamp(t0, now));
        Ok(Answer {
            t0,
            end,
            connect_us,
            counts_events: streamed && self.api.framing() != Framing::Text,
            read,
        })
    }

    /// How long the server asked this client to wait, when the answer is a
    /// 429 or 503 with a `Retry-After` and the run honours it: at most
    /// [`Executor::retry_after_max`].
    fn retry_after(&self, head: &Head) -> Option<Duration> {
        let max = self.retry_after_max?;
        if !matches!(head.status, 429 | 503) {
            return None;
        }
        retry_after(head.retry_after.as_deref()?, std::time::SystemTime::now()).map(|d| d.min(max))
    }

    async fn read_stream(
        &self,
        conn: &mut Conn,
        head: &mut Head,
        arrivals: &Arrivals,
        events: &mut Vec<Event>,
        shape: &mut Shape,
        text: Option<&mut String>,
    ) -> Result<Read, Failure> {
        let framing = self.api.framing();
        let mut sse = sse::Framer::new();
        let mut lines = ndjson::Framer::new();
        let mut words = WordCounter::default();
        // A plain-text stream's bytes, kept whole when the text is kept: a
        // character may be split between chunks. Decoded once, at the end.
        let mut raw = Vec::new();
        let mut tokens = Tokens {
            api: &self.api,
            read: Read::default(),
            events,
            shape,
            text,
        };
        loop {
            let data = match conn.chunk(head).await {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err(e) => return fail(ErrorClass::Stream, format!("stream broke: {e}")),
            };
            // When the bytes arrived (see the module documentation): the
            // read that returned them stamped the connection just before.
            let at = arrivals.last().unwrap_or_else(Instant::now);
            let pushed = match framing {
                Framing::Sse => sse.push(data, at, |event| tokens.event(event.data, event.first_byte_at)),
                Framing::Ndjson => lines.push(data, at, |line| tokens.event(line.data, line.first_byte_at)),
                Framing::Text => {
                    if !data.is_empty() {
                        tokens.read.words += words.feed(data);
                        if tokens.text.is_some() {
                            raw.extend_from_slice(data);
                        }
                        tokens.content(1, at, None, data.len() as u64, raw.len());
                    }
                    Ok(())
                }
            };
            match pushed {
                Ok(()) => {}
                Err(PushError::Event(failure)) => return Err(failure),
                Err(PushError::Frame(e)) => return fail(ErrorClass::Malformed, e.to_string()),
            }
        }
        if framing == Framing::Ndjson {
            // A last line without its newline still counts.
            lines.finish(|line| tokens.event(line.data, line.first_byte_at))?;
        }
        if let Some(text) = tokens.text {
            text.push_str(&String::from_utf8_lossy(&raw));
            // Invalid bytes decode longer: keep every event inside the text.
            for e in tokens.events.iter_mut() {
                e.text_end = e.text_end.min(text.len());
            }
        }
        let read = tokens.read;
        if sse.is_mid_event() && !read.done {
            return fail(ErrorClass::Stream, "stream ended in the middle of an event");
        }
        if self.api.needs_end_marker() && !read.done && !read.finished {
            return fail(
                ErrorClass::Stream,
                format!(
                    "stream ended before the answer was complete (no end marker for {})",
                    self.api.dialect()
                ),
            );
        }
        Ok(read)
    }

    async fn read_whole(&self, conn: &mut Conn, head: &mut Head, text: Option<&mut String>) -> Result<Read, Failure> {
        let mut bytes = Vec::new();
        match conn.read_body(head, &mut bytes, MAX_BODY).await {
            Ok(true) => {}
            Ok(false) => {
                return fail(
                    ErrorClass::Stream,
                    format!("reading the response: larger than {} MiB", MAX_BODY >> 20),
                );
            }
            Err(e) => return fail(ErrorClass::Stream, format!("reading the response: {e}")),
        }
        match self.api.whole(&bytes, text) {
            Parsed::Chunk(Chunk {
                content_events,
                words,
                usage,
                server,
                finish,
                cached_tokens,
                ..
            }) => Ok(Read {
                content_events,
                words,
                usage,
                server,
                cached_tokens,
                finished: true,
                finish,
                ..Read::default()
            }),
            Parsed::Done => fail(ErrorClass::Malformed, "unexpected [DONE] in a whole response"),
            Parsed::ServerError(m) => fail(ErrorClass::Stream, format!("server error: {m}")),
            Parsed::Malformed(m) => fail(ErrorClass::Malformed, m),
        }
    }
}

/// The token events of one stream as they arrive.
struct Tokens<'a> {
    api: &'a Api,
    read: Read,
    /// The events that carried text.
    events: &'a mut Vec<Event>,
    /// The shape of recent events.
    shape: &'a mut Shape,
    /// Where the generated text goes, when it is kept.
    text: Option<&'a mut String>,
}

impl Tokens<'_> {
    /// An event of `n` content events (choices with text) whose first byte
    /// arrived at `t`; `usage` the server's running count of tokens it
    /// carried, `bytes` its text's length and `text_end` where its text
    /// ends in the kept text.
    fn content(&mut self, n: u32, t: Instant, usage: Option<u64>, bytes: u64, text_end: usize) {
        if n == 0 {
            return;
        }
        self.read.first_token_at.get_or_insert(t);
        self.events.push(Event {
            at: t,
            usage,
            bytes,
            text_end,
        });
        self.read.content_events = self.read.content_events.saturating_add(n);
    }

    /// One SSE event or NDJSON line.
    fn event(&mut self, data: &[u8], first_byte_at: Instant) -> Result<(), Failure> {
        match self.api.event(data, self.text.as_deref_mut(), self.shape) {
            Parsed::Chunk(c) => {
                let text_end = self.text.as_ref().map_or(0, |t| t.len());
                let usage = c.usage.map(|u| u.output_tokens);
                self.content(c.content_events, first_byte_at, usage, c.text_bytes, text_end);
                self.read.words += c.words;
                self.read.finished |= c.finished;
                self.read.finish = self.read.finish.or(c.finish);
                self.read.usage = c.usage.or(self.read.usage);
                self.read.server = self.read.server.or(c.server);
                self.read.cached_tokens = c.cached_tokens.or(self.read.cached_tokens);
            }
            Parsed::Done => self.read.done = true,
            Parsed::ServerError(m) => {
                return fail(ErrorClass::Stream, format!("server error in stream: {m}"));
            }
            Parsed::Malformed(m) => return fail(ErrorClass::Malformed, m),
        }
        Ok(())
    }
}

/// Counts whitespace-separated words across chunks that may split a word.
#[derive(Debug, Default)]
struct WordCounter {
    in_word: bool,
}

impl WordCounter {
    /// Words that start in `bytes`.
    fn feed(&mut self, bytes: &[u8]) -> u64 {
        let mut n = 0;
        for b in bytes {
            let space = b.is_ascii_whitespace();
            if !space && !self.in_word {
                n += 1;
            }
            self.in_word = !space;
        }
        n
    }
}

/// A complete answer, timed, before its tokens are settled.
struct Answer {
    /// Just before the request was written.
    t0: Instant,
    /// When the answer ended.
    end: Instant,
    /// Time to open the connection, when this request opened one.
    connect_us: Option<u64>,
    /// The answer was an SSE or NDJSON stream, whose text events count.
    counts_events: bool,
    /// What it said.
    read: Read,
}

/// The client tokenizer's counts of one request.
#[derive(Clone, Copy, Debug, Default)]
struct Counted {
    /// Tokens of the answer's text.
    output: Option<u64>,
    /// Tokens of the prompt, counted only when the server gave none.
    input: Option<u64>,
}

impl Answer {
    /// The request's measurements, with its tokens from the best source at
    /// hand (see the module documentation).
    fn sample(self, intended: Instant, counted: Counted, class: u16) -> Sample<'static> {
        let Answer {
            t0,
            end,
            connect_us,
            counts_events,
            read,
        } = self;
        let events = counts_events.then_some(u64::from(read.content_events));
        let server_input = read.usage.and_then(|u| u.input_tokens);
        let (output_tokens, token_source) = match (read.usage, counted.output, events) {
            (Some(u), _, _) => (u.output_tokens, TokenSource::Server),
            (None, Some(n), _) => (n, TokenSource::Tokenizer),
            (None, None, Some(n)) => (n, TokenSource::Events),
            (None, None, None) => (read.words, TokenSource::Words),
        };
        let (input_tokens, input_source) = match (server_input, counted.input) {
            (Some(n), _) => (Some(n), Some(TokenSource::Server)),
            (None, Some(n)) => (Some(n), Some(TokenSource::Tokenizer)),
            (None, None) => (None, None),
        };
        let e2e = end - t0;
        let ttft = read.first_token_at.map(|t| t - t0);
        let tpot_us = match (ttft, output_tokens) {
            (Some(ttft), n) if n >= 2 => Some(micros(e2e.saturating_sub(ttft)) / (n - 1)),
            _ => None,
        };
        let queued = t0 - intended;
        Sample {
            ttft_us: ttft.map(micros),
            gaps: &[],
            tpot_us,
            e2e_us: micros(e2e),
            client_queue_us: micros(queued),
            connect_us,
            input_tokens,
            input_source,
            output_tokens,
            token_source,
            server_tokens: read.usage.map(|u| u.output_tokens),
            cached_tokens: read.cached_tokens,
            counted_events: events,
            tokenizer_tokens: counted.output,
            server: read.server,
            schedule_lag_us: 0,
            ttft_intended_us: ttft.map(|t| micros(t + queued)),
            e2e_intended_us: micros(e2e + queued),
            late: false,
            held: false,
            class,
            turn: 0,
            finish: read.finish.or(read.finished.then_some(Finish::Unstated)),
            good: false,
        }
    }
}

/// The buffers the tokenizer borrows for one request: lent to the
/// blocking pool and back for the next request.
struct Buffers<'a> {
    /// The answer's text.
    text: &'a mut String,
    /// A copy of the prompt, when it is counted.
    prompt: &'a mut String,
    /// Where each event's text ends in `text`.
    ends: &'a mut Vec<usize>,
    /// Each event's tokens, filled in.
    counted: &'a mut Vec<u32>,
}

/// Counts the answer's text, each event's part of it, and the `prompt`
/// when given, with the tokenizer on the blocking pool.
async fn count(tokenizer: &Arc<Tokenizer>, buffers: Buffers<'_>, prompt: Option<&str>) -> Counted {
    let tokenizer = Arc::clone(tokenizer);
    let answer = std::mem::take(buffers.text);
    let ends = std::mem::take(buffers.ends);
    let mut counted = std::mem::take(buffers.counted);
    let mut prompt_copy = std::mem::take(buffers.prompt);
    prompt_copy.clear();
    let with_prompt = prompt.is_some();
    prompt_copy.push_str(prompt.unwrap_or_default());
    let job = tokio::task::spawn_blocking(move || {
        let output = tokenizer.count_pieces(&answer, &ends, &mut counted);
        let input = if with_prompt {
            tokenizer.count(&prompt_copy)
        } else {
            None
        };
        (answer, prompt_copy, ends, counted, Counted { output, input })
    });
    match job.await {
        Ok((answer, prompt_copy, ends, counted, result)) => {
            *buffers.text = answer;
            *buffers.prompt = prompt_copy;
            *buffers.ends = ends;
            *buffers.counted = counted;
            result
        }
        // The count panicked on this text, or the runtime is shutting
        // down: no count, as if there were no tokenizer.
        Err(_) => Counted::default(),
    }
}

/// What was read from one answer.
#[derive(Debug, Default)]
struct Read {
    first_token_at: Option<Instant>,
    content_events: u32,
    words: u64,
    usage: Option<Usage>,
    server: ServerTimes,
    /// Prompt tokens the server took from its prefix cache, when it said.
    cached_tokens: Option<u64>,
    finished: bool,
    /// Why the answer ended, when the server said.
    finish: Option<Finish>,
    done: bool,
}

/// A `Retry-After` value (RFC 9110 section 10.2.3): a number of seconds,
/// or an HTTP date, read against `now` (a date in the past asks for no
/// wait). `None` when it is neither.
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A status code with its reason phrase, as `429 Too Many Requests`.
fn status_line(code: u16) -> String {
    match http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()) {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::retry_after;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        // Sun, 06 Nov 1994 08:49:37 GMT, RFC 9110's example.
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // The three date formats a recipient must accept.
        for date in [
            "Sun, 06 Nov 1994 08:49:47 GMT",
            "Sunday, 06-Nov-94 08:49:47 GMT",
            "Sun Nov  6 08:49:47 1994",
        ] {
            assert_eq!(retry_after(date, now), Some(Duration::from_secs(10)), "{date}");
        }
        // A date already past asks for no wait.
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "soon", "1s"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }
}
