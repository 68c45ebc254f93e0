//! An assignment from the controller, checked and turned into what the
//! agent runs.

use std::sync::Arc;
use std::time::Duration;

use stampede_proto::pb;

use crate::api::{ApiConfig, Dialect, HeaderSource, HttpJson, Spec, StreamFormat, TimeUnit};
use crate::exec::Executor;
use crate::http::Endpoint;
use crate::load::Load;
use crate::load::open::{Open, Timer};
use crate::load::schedule::{self, Process, RatePhase, UsersPhase};
use crate::load::users::Closed;
use crate::prompts::Prompts;
use crate::tokenizer::Tokenizer;
use crate::trace::Tracing;
use stampede_otel::{Exporter, KeyValue, Protocol};

/// This agent's part of a run, validated.
#[derive(Debug)]
pub struct Plan {
    /// Identifier of the run.
    pub run_id: String,
    /// This agent's position among the run's agents.
    pub agent_index: u32,
    /// Runs the requests.
    pub executor: Arc<Executor>,
    /// The load.
    pub load: Load,
    /// The prompt share.
    pub prompts: Arc<Prompts>,
    /// How long to issue new requests.
    pub duration: Duration,
    /// How long in-flight requests may finish after that.
    pub drain: Duration,
    /// Reporting interval.
    pub interval: Duration,
    /// Most requests to send, when the run counts them.
    pub max_requests: Option<u64>,
}

impl Plan {
    /// Checks an assignment. The error says what is wrong, for the
    /// controller's operator.
    pub fn from_wire(a: pb::Assignment) -> Result<Plan, String> {
        let target = a.target.ok_or("the assignment has no target")?;
        let dialect: Dialect = target.api.parse()?;
        let api = api_config(dialect, &target)?.resolve(|var| std::env::var(var).ok())?;
        let endpoint = Endpoint::parse(&target.url).map_err(|e| e.to_string())?;
        let request = a.request.unwrap_or_default();
        let load = load(a.load.and_then(|l| l.kind), a.seed)?;
        let prompts = a.prompts.unwrap_or_default();
        let sends = match &load {
            Load::Closed(c) => !c.windows.is_empty(),
            Load::Open(o) => o.phases.iter().any(|p| p.rate > 0.0),
        };
        if sends && prompts.prompts.is_empty() {
            return Err("the assignment has load but no prompts".to_owned());
        }
        if let Load::Open(Open { trace: Some(t), .. }) = &load
            && prompts.prompts.len() < t.len()
        {
            return Err(format!(
                "the trace replay has {} arrivals but {} prompts; each arrival needs its own",
                t.len(),
                prompts.prompts.len()
            ));
        }
        // Before anything is loaded or started: a user without a
        // connection would be a stream of connect errors, not a load.
        if let Some(users) = load.connections() {
            crate::open_files::check(
                &crate::open_files::Host::Agent,
                users,
                crate::open_files::Limit::current(),
            )?;
        }
        let tokenizer = match &target.tokenizer {
            Some(t) if !t.json.is_empty() => Some(Arc::new(
                Tokenizer::from_json(&t.name, &t.json).map_err(|e| format!("the run's tokenizer: {e}"))?,
            )),
            _ => None,
        };
        let positive = |ms: u64, what: &str| {
            if ms == 0 {
                Err(format!("the assignment's {what} is zero"))
            } else {
                Ok(Duration::from_millis(ms))
            }
        };
        let spec = Spec {
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            stream: request.stream,
        };
        let slo = crate::slo::Slo::from_wire(a.slo.as_ref());
        let exporter = match &a.trace {
            Some(t) => Some(exporter(t, &a.run_id, a.agent_index)?),
            None => None,
        };
        let tracing = Tracing::new(
            exporter,
            a.trace.as_ref().map_or(0.0, |t| t.sample_ratio),
            &a.run_id,
            a.agent_index,
            &endpoint,
            dialect,
            &target.model,
            &spec,
            stage_ends(&load),
        )
        .with_slo(slo.is_some());
        let mut executor = Executor::new(
            endpoint,
            api,
            target.model,
            spec,
            positive(target.timeout_ms, "request timeout")?,
        )
        .with_tokenizer(tokenizer);
        executor.retry_after_max = (target.retry_after_max_ms > 0).then(|| ms(target.retry_after_max_ms));
        executor.trace = Arc::new(tracing);
        executor.slo = slo;
        Ok(Plan {
            run_id: a.run_id,
            agent_index: a.agent_index,
            executor: Arc::new(executor),
            load,
            prompts: Arc::new({
                let conversations: Vec<_> = match prompts.sessions {
                    Some(_) => prompts
                        .prompts
                        .iter()
                        .map(|p| ((!p.system.is_empty()).then(|| p.system.clone()), p.turns.clone()))
                        .collect(),
                    None => Vec::new(),
                };
                Prompts::with_limits(
                    prompts
                        .prompts
                        .into_iter()
                        .map(|p| (p.text, p.max_tokens, p.class))
                        .collect(),
                )
                .with_sessions(
                    conversations,
                    Duration::from_micros(prompts.sessions.map_or(0, |s| s.think_us)),
                )
            }),
            duration: positive(a.duration_ms, "duration")?,
            drain: Duration::from_millis(a.drain_ms),
            interval: positive(a.interval_ms, "report interval")?,
            max_requests: (a.max_requests > 0).then_some(a.max_requests),
        })
    }
}

/// Starts the span exporter an assignment asks for.
fn exporter(t: &pb::Trace, run_id: &str, agent: u32) -> Result<Exporter, String> {
    let protocol: Protocol = t.protocol.parse()?;
    if !(0.0..=1.0).contains(&t.sample_ratio) {
        return Err(format!(
            "the trace sample ratio {} is not between 0 and 1",
            t.sample_ratio
        ));
    }
    let config = stampede_otel::Config {
        endpoint: t.endpoint.clone(),
        protocol,
        sample_ratio: t.sample_ratio,
        service_name: t.service_name.clone(),
        ui_url: String::new(),
        ui: None,
    };
    let resource = vec![
        KeyValue::new("service.instance.id", format!("{run_id}/agent-{agent}")),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    ];
    Exporter::start(&config, resource).map_err(|e| e.to_string())
}

/// Where each phase of a load ends, from its start: stage numbers for
/// spans.
fn stage_ends(load: &Load) -> Vec<Duration> {
    let lengths: Vec<Duration> = match load {
        Load::Closed(c) => c.phase_lengths.clone(),
        Load::Open(o) => o.phases.iter().map(|p| p.duration).collect(),
    };
    lengths
        .iter()
        .scan(Duration::ZERO, |end, d| {
            *end += *d;
            Some(*end)
        })
        .collect()
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn load(kind: Option<pb::load::Kind>, seed: u64) -> Result<Load, String> {
    match kind {
        Some(pb::load::Kind::Closed(c)) => {
            if c.phases.is_empty() {
                return Err("the closed-loop load has no phases".to_owned());
            }
            let phases: Vec<UsersPhase> = c
                .phases
                .iter()
                .map(|p| UsersPhase {
                    users: p.users,
                    duration: ms(p.duration_ms),
                    ramp: ms(p.ramp_ms),
                })
                .collect();
            Ok(Load::Closed(Closed {
                windows: schedule::windows(&phases),
                phase_lengths: phases.iter().map(|p| p.duration).collect(),
                first_user: c.first_user,
                seed,
                think: ms(c.think_ms),
                pace: (c.pace_ms > 0).then(|| ms(c.pace_ms)),
            }))
        }
        Some(pb::load::Kind::Open(o)) => {
            if o.phases.is_empty() {
                return Err("the open-loop load has no phases".to_owned());
            }
            if let Some(p) = o.phases.iter().find(|p| !p.rate.is_finite() || p.rate < 0.0) {
                return Err(format!("the open-loop load has a rate of {}", p.rate));
            }
            let process = match pb::Process::try_from(o.process) {
                Ok(pb::Process::Constant) => Process::Constant,
                Ok(pb::Process::Poisson) => Process::Poisson,
                Ok(pb::Process::Gamma) if o.burstiness.is_finite() && o.burstiness > 0.0 => {
                    Process::Gamma(o.burstiness)
                }
                Ok(pb::Process::Gamma) => {
                    return Err(format!(
                        "gamma arrivals need a positive burstiness, got {}",
                        o.burstiness
                    ));
                }
                _ => return Err(format!("unknown arrival process {}", o.process)),
            };
            if o.streams == 0 || o.stream >= o.streams {
                return Err(format!("stream {} of {} does not exist", o.stream, o.streams));
            }
            if o.trace_offsets_us.windows(2).any(|w| w[1] < w[0]) {
                return Err("the trace's arrivals are not in time order".to_owned());
            }
            Ok(Load::Open(Open {
                phases: o
                    .phases
                    .iter()
                    .map(|p| RatePhase {
                        rate: p.rate,
                        duration: ms(p.duration_ms),
                        ramp: ms(p.ramp_ms),
                    })
                    .collect(),
                process,
                seed: o.schedule_seed,
                stream: o.stream,
                streams: o.streams,
                max_concurrency: (o.max_concurrency > 0).then_some(o.max_concurrency),
                prompt_seed: seed,
                timer: Timer::Precise,
                trace: (!o.trace_offsets_us.is_empty())
                    .then(|| o.trace_offsets_us.iter().map(|us| Duration::from_micros(*us)).collect()),
            }))
        }
        None => Err("the assignment has no load".to_owned()),
    }
}

/// The API configuration a target describes. Secret headers are read
/// later, from this agent's environment.
pub fn api_config(dialect: Dialect, target: &pb::Target) -> Result<ApiConfig, String> {
    let mut config = ApiConfig::plain(dialect);
    config.path = (!target.path.is_empty()).then(|| target.path.clone());
    for h in &target.headers {
        let source = match (h.value.is_empty(), h.env.is_empty()) {
            (_, false) => HeaderSource::Env(h.env.clone()),
            _ => HeaderSource::Literal(h.value.clone()),
        };
        config.headers.push((h.name.clone(), source));
    }
    if !target.extra_body_json.is_empty() {
        match serde_json::from_str(&target.extra_body_json) {
            Ok(serde_json::Value::Object(map)) => config.body = map,
            _ => return Err("the target's extra body fields are not a JSON object".to_owned()),
        }
    }
    if let Some(h) = &target.http_json {
        let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        config.http_json = Some(HttpJson {
            template: serde_json::from_str(&h.template_json)
                .map_err(|e| format!("the http-json body template is not JSON: {e}"))?,
            text: h.text_pointer.clone(),
            tokens: optional(&h.tokens_pointer),
            input_tokens: optional(&h.input_tokens_pointer),
            duration: optional(&h.duration_pointer),
            duration_unit: TimeUnit::from_name(&h.duration_unit).unwrap_or(TimeUnit::Seconds),
            stream: StreamFormat::from_name(&h.stream).unwrap_or(StreamFormat::None),
            done: optional(&h.done_pointer),
        });
    }
    Ok(config)
}

/// The wire form of an API configuration (the inverse of [`api_config`]).
pub fn target_fields(config: &ApiConfig, target: &mut pb::Target) {
    target.api = config.dialect.name().to_owned();
    target.path = config.path.clone().unwrap_or_default();
    target.headers = config
        .headers
        .iter()
        .map(|(name, source)| match source {
            HeaderSource::Literal(v) => pb::Header {
                name: name.clone(),
                value: v.clone(),
                env: String::new(),
            },
            HeaderSource::Env(var) => pb::Header {
                name: name.clone(),
                value: String::new(),
                env: var.clone(),
            },
        })
        .collect();
    target.extra_body_json = if config.body.is_empty() {
        String::new()
    } else {
        serde_json::Value::Object(config.body.clone()).to_string()
    };
    target.http_json = config.http_json.as_ref().map(|h| pb::HttpJson {
        template_json: h.template.to_string(),
        text_pointer: h.text.clone(),
        tokens_pointer: h.tokens.clone().unwrap_or_default(),
        input_tokens_pointer: h.input_tokens.clone().unwrap_or_default(),
        duration_pointer: h.duration.clone().unwrap_or_default(),
        duration_unit: h.duration_unit.name().to_owned(),
        stream: h.stream.name().to_owned(),
        done_pointer: h.done.clone().unwrap_or_default(),
    });
}
