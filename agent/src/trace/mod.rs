//! One OpenTelemetry span per request.
//!
//! Every request carries a W3C `traceparent` header, traced or not, so that
//! an instrumented server can join its own spans to the request and so that
//! the slowest requests can be named by trace id. Its sampled flag is the
//! ratio decision, made from the trace id before the request is sent; a
//! server that follows its caller's decision records the same share.
//!
//! The span is built after the request, from the times the executor takes
//! anyway: nothing is allocated for a request that is not exported. A
//! request is exported when the ratio decision kept it, when it failed, or
//! when it is among its interval's slowest ([`keep`]). A failed or slow
//! request the ratio did not keep is exported without the server's spans.
//!
//! A request's span is the root of its own trace and names nothing outside
//! it: a link to the controller's `stampede.run` span (another trace)
//! makes Jaeger draw every request trace as incomplete, its reference
//! pointing at a span the trace does not hold. Every span carries
//! `stampede.run_id` instead, and a run's requests are found by that tag.
//!
//! A few of the requests the ratio exported are drawn per interval and
//! metric ([`keep::Reservoir`]) to name exemplars across the whole
//! distribution.

pub mod keep;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use stampede_otel::{
    Event, Exporter, KeyValue, SpanContext, SpanData, SpanKind, Stats, Status, TraceFlags, TraceState, Traceparent,
};
use stampede_proto::{ErrorClass, Metric, pb};
use tokio::time::Instant;

use crate::api::{Dialect, Spec};
use crate::http::Endpoint;
use crate::record::Outcome;
use keep::{Kept, Reservoir, Slowest};

/// How long the end-of-run flush may take; spans not exported by then
/// count as dropped.
pub const FLUSH: Duration = Duration::from_secs(2);

/// The metrics of [`Tracing`]'s draws, in order.
const DRAWN: [Metric; 4] = [Metric::Ttft, Metric::Itl, Metric::Tpot, Metric::E2e];

/// What every span of this agent shares, and where spans go.
#[derive(Debug, Default)]
pub struct Tracing {
    exporter: Option<Exporter>,
    ratio: f64,
    attributes: Vec<KeyValue>,
    /// When the load began: stages are counted from it.
    start: OnceLock<Instant>,
    /// End of each load phase, from the start.
    stage_ends: Vec<Duration>,
    ttft: Slowest,
    e2e: Slowest,
    /// Requests the ratio exported, drawn per metric: TTFT, ITL, TPOT
    /// and E2E ([`DRAWN`]).
    drawn: [Reservoir; 4],
    reported: std::sync::Mutex<Stats>,
    /// The run has objectives: each success's span says whether it met
    /// them.
    slo: bool,
}

/// Facts of one request that are not in its outcome.
#[derive(Clone, Copy, Debug)]
pub struct Trail {
    /// The request's trace context, as sent.
    pub parent: Traceparent,
    /// Its intended start.
    pub intended: Instant,
    /// Just before it was written, when it was.
    pub t0: Option<Instant>,
    /// The HTTP status, when one came.
    pub status: Option<u16>,
    /// The user that sent it (closed-loop loads).
    pub user: Option<u32>,
    /// Sessions only: the user's session number (from 1) and the turn
    /// (from 1).
    pub session: Option<(u32, u16)>,
}

impl Tracing {
    /// What a plan's spans share. `exporter` is `None` when tracing is
    /// off: requests still carry `traceparent` and the slowest are still
    /// named, but nothing is exported.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        exporter: Option<Exporter>,
        ratio: f64,
        run_id: &str,
        agent: u32,
        endpoint: &Endpoint,
        dialect: Dialect,
        model: &str,
        spec: &Spec,
        stage_ends: Vec<Duration>,
    ) -> Tracing {
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", operation(dialect)),
            KeyValue::new("gen_ai.provider.name", provider(dialect)),
            KeyValue::new("gen_ai.system", provider(dialect)),
            KeyValue::new("gen_ai.request.model", model.to_owned()),
            KeyValue::new("server.address", endpoint.host().to_owned()),
            KeyValue::new("server.port", i64::from(endpoint.port())),
            KeyValue::new("stampede.run_id", run_id.to_owned()),
            KeyValue::new("stampede.agent", i64::from(agent)),
            KeyValue::new("stampede.api", dialect.name()),
        ];
        if let Some(n) = spec.max_tokens {
            attributes.push(KeyValue::new("gen_ai.request.max_tokens", i64::from(n)));
        }
        if let Some(t) = spec.temperature {
            attributes.push(KeyValue::new("gen_ai.request.temperature", t));
        }
        Tracing {
            exporter,
            ratio: ratio.clamp(0.0, 1.0),
            attributes,
            start: OnceLock::new(),
            stage_ends,
            ..Tracing::default()
        }
    }

    /// The same, for a run with per-request objectives: each success's
    /// span carries `stampede.slo_met`.
    pub fn with_slo(mut self, slo: bool) -> Tracing {
        self.slo = slo;
        self
    }

    /// True when spans are exported.
    pub fn exports(&self) -> bool {
        self.exporter.is_some()
    }

    /// Notes when the load began.
    pub fn began(&self, start: Instant) {
        let _ = self.start.set(start);
    }

    /// A fresh trace context for one request, with the ratio decision.
    pub fn context(&self) -> Traceparent {
        let trace_id = stampede_otel::new_trace_id();
        Traceparent {
            trace_id,
            span_id: stampede_otel::new_span_id(),
            sampled: self.exporter.is_some() && stampede_otel::sampled_by_ratio(trace_id, self.ratio),
        }
    }

    /// Decides the fate of one finished request's span.
    pub fn finish(&self, trail: &Trail, outcome: &Outcome<'_>) {
        let exports = self.exporter.is_some();
        match outcome {
            Outcome::Ok(s) => {
                if exports
                    && trail.parent.sampled
                    && let Some(e) = &self.exporter
                {
                    e.submit(self.span(trail, outcome));
                    self.draw(trail.parent.trace_id, s);
                }
                // A span the ratio did not keep is built only if the
                // request is among the interval's slowest.
                let unsent = exports && !trail.parent.sampled;
                let keep = |value: u64| Kept {
                    value_us: value,
                    trace_id: trail.parent.trace_id,
                    span: unsent.then(|| self.span(trail, outcome)),
                };
                if let Some(ttft) = s.ttft_us {
                    self.ttft.offer(ttft, || keep(ttft));
                }
                self.e2e.offer(s.e2e_us, || keep(s.e2e_us));
            }
            Outcome::Failed { .. } => {
                if let Some(e) = &self.exporter {
                    e.submit(self.span(trail, outcome));
                }
            }
            Outcome::Cancelled | Outcome::Dropped => {}
        }
    }

    /// Ends an interval: exports its slowest requests' spans (each once)
    /// and names them as exemplars.
    pub fn cut(&self, interval: u64) -> Vec<pb::Exemplar> {
        let mut exemplars = Vec::new();
        let mut sent = Vec::new();
        for (metric, list) in [(Metric::Ttft, self.ttft.cut()), (Metric::E2e, self.e2e.cut())] {
            for kept in list {
                if let (Some(span), Some(e)) = (kept.span, &self.exporter)
                    && !sent.contains(&kept.trace_id)
                {
                    sent.push(kept.trace_id);
                    e.submit(span);
                }
                exemplars.push(pb::Exemplar {
                    metric: metric.to_wire() as i32,
                    value_us: kept.value_us,
                    trace_id: kept.trace_id.to_string(),
                    interval,
                });
            }
        }
        exemplars
    }

    /// Ends an interval's draws: a few exported requests per metric,
    /// named as exemplars (in `Report.sampled_exemplars`).
    pub fn cut_drawn(&self, interval: u64) -> Vec<pb::Exemplar> {
        let mut exemplars = Vec::new();
        for (metric, reservoir) in DRAWN.iter().zip(&self.drawn) {
            for (value_us, trace_id) in reservoir.cut() {
                exemplars.push(pb::Exemplar {
                    metric: metric.to_wire() as i32,
                    value_us,
                    trace_id: trace_id.to_string(),
                    interval,
                });
            }
        }
        exemplars
    }

    /// Offers an exported request to the draws. Its ITL is one of its
    /// gaps per token, picked by its trace id.
    fn draw(&self, trace_id: stampede_otel::TraceId, s: &crate::record::Sample<'_>) {
        let [ttft, itl, tpot, e2e] = &self.drawn;
        if let Some(v) = s.ttft_us {
            ttft.offer(v, trace_id);
        }
        if !s.gaps.is_empty() {
            let pick = u32::from_be_bytes(trace_id.to_bytes()[4..8].try_into().expect("4 bytes")) as usize;
            itl.offer(s.gaps[pick % s.gaps.len()].per_token_max(), trace_id);
        }
        if let Some(v) = s.tpot_us {
            tpot.offer(v, trace_id);
        }
        e2e.offer(s.e2e_us, trace_id);
    }

    /// Spans exported and dropped since the last call.
    pub fn stats_delta(&self) -> Stats {
        let now = self.exporter.as_ref().map(Exporter::stats).unwrap_or_default();
        let mut last = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        let delta = Stats {
            exported: now.exported.saturating_sub(last.exported),
            dropped: now.dropped.saturating_sub(last.dropped),
        };
        *last = now;
        delta
    }

    /// Exports what is queued, within [`FLUSH`]. Blocks: call it from a
    /// blocking thread.
    pub fn close(&self) {
        if let Some(e) = &self.exporter {
            let stats = e.close(FLUSH);
            tracing::debug!(
                exported = stats.exported,
                dropped = stats.dropped,
                "request spans flushed"
            );
        }
    }

    fn stage(&self, intended: Instant) -> Option<usize> {
        let since = intended.saturating_duration_since(*self.start.get()?);
        Some(
            self.stage_ends
                .iter()
                .position(|end| since < *end)
                .unwrap_or(self.stage_ends.len().saturating_sub(1)),
        )
    }

    /// The span of one request.
    fn span(&self, trail: &Trail, outcome: &Outcome<'_>) -> SpanData {
        let (now, wall_now) = (Instant::now(), SystemTime::now());
        let wall = |t: Instant| {
            wall_now
                .checked_sub(now.saturating_duration_since(t))
                .unwrap_or(wall_now)
        };
        let t0 = trail.t0.unwrap_or(trail.intended);
        let end = match outcome {
            Outcome::Ok(s) => t0 + Duration::from_micros(s.e2e_us),
            _ => now,
        };
        let context = SpanContext::new(
            trail.parent.trace_id,
            trail.parent.span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut span = stampede_otel::span("llm.request", SpanKind::Client, context, None, wall(t0), wall(end));
        let a = &mut span.attributes;
        a.extend(self.attributes.iter().cloned());
        if let Some(user) = trail.user {
            a.push(KeyValue::new("stampede.user", i64::from(user)));
        }
        if let Some((session, turn)) = trail.session {
            // The GenAI conventions' name for a conversation; unique in the
            // run, since user numbers are.
            let id = format!("{}-{session}", trail.user.unwrap_or(0));
            a.push(KeyValue::new("gen_ai.conversation.id", id.clone()));
            a.push(KeyValue::new("stampede.session", id));
            a.push(KeyValue::new("stampede.turn", i64::from(turn)));
        }
        if let Some(stage) = self.stage(trail.intended) {
            a.push(KeyValue::new("stampede.stage", stage as i64));
        }
        a.push(KeyValue::new(
            "stampede.client_queue_ms",
            ms(t0.saturating_duration_since(trail.intended).as_micros() as u64),
        ));
        if let Some(status) = trail.status {
            a.push(KeyValue::new("http.response.status_code", i64::from(status)));
        }
        match outcome {
            Outcome::Ok(s) => {
                if let Some(n) = s.input_tokens {
                    a.push(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
                }
                a.push(KeyValue::new("gen_ai.usage.output_tokens", s.output_tokens as i64));
                if let Some(reason) = s.finish.and_then(crate::api::Finish::name) {
                    a.push(KeyValue::new(
                        "gen_ai.response.finish_reasons",
                        stampede_otel::Value::Array(vec![stampede_otel::StringValue::from(reason)].into()),
                    ));
                }
                a.push(KeyValue::new("stampede.e2e_ms", ms(s.e2e_us)));
                if let Some(ttft) = s.ttft_us {
                    a.push(KeyValue::new("stampede.ttft_ms", ms(ttft)));
                    let at = wall(t0 + Duration::from_micros(ttft));
                    span.events.events.push(Event::new("first_token", at, Vec::new(), 0));
                }
                if let Some(tpot) = s.tpot_us {
                    span.attributes.push(KeyValue::new("stampede.tpot_ms", ms(tpot)));
                }
                if self.slo {
                    span.attributes.push(KeyValue::new("stampede.slo_met", s.good));
                }
                span.status = Status::Ok;
            }
            Outcome::Failed { class, message, .. } => {
                a.push(KeyValue::new("error.type", error_type(*class)));
                span.status = Status::error(message.clone());
            }
            Outcome::Cancelled | Outcome::Dropped => {}
        }
        span
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// The GenAI provider a dialect speaks for.
pub fn provider(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenAiChat | Dialect::OpenAiCompletions => "openai",
        Dialect::Ollama | Dialect::OllamaChat => "ollama",
        Dialect::Tgi => "huggingface.tgi",
        Dialect::HttpJson => "http-json",
    }
}

/// The GenAI operation a dialect performs.
pub fn operation(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenAiChat | Dialect::OllamaChat => "chat",
        Dialect::OpenAiCompletions | Dialect::Ollama | Dialect::Tgi | Dialect::HttpJson => "text_completion",
    }
}

/// `error.type`: the error class's name ("timeout", "http_503", …).
fn error_type(class: ErrorClass) -> String {
    class.to_string()
}

/// Shared by every executor of a plan.
pub type Shared = Arc<Tracing>;
