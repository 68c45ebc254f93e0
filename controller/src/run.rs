//! One run: the target (or the built-in simulator), the coordinator, the
//! agents (in-process ones dialing loopback gRPC exactly as remote agents
//! do, or remote ones dialing in), and the results directory.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use stampede_agent::api::Dialect;
use stampede_agent::http::Endpoint;
use stampede_proto::pb;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::control::{ControlPlane, Listener, Parts};
use crate::coordinator::Setup;
use crate::plan;
use crate::profile::Profile;
use crate::report::live::Live;
use crate::report::progress::Progress;
use crate::report::summary::{self, Summary};
use crate::results::log::{self, Log};
use crate::results::spec::{Facts, Spec};
use crate::results::{Ledger, Run};
use crate::server::{Scraper, scrapes};
use crate::trace::RunSpan;

/// Pause between "all ready" and the start, so that every agent receives
/// Start before it is due.
const START_DELAY: Duration = Duration::from_millis(250);
/// The copy of the profile, as read, in the run directory.
pub const PROFILE_COPY: &str = "profile.toml";
/// How long in-process agents get to join.
const LOCAL_JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the model discovery request may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Model name sent when the server cannot be asked for one.
const UNKNOWN_MODEL: &str = "default";

/// How an operator interrupts a run.
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    /// First signal: no new requests; in-flight ones finish within the
    /// drain time.
    pub stop: CancellationToken,
    /// Second signal: abandon in-flight requests now.
    pub abort: CancellationToken,
}

/// How long the live metrics stay up after the run, so that a last scrape
/// sees the final counts.
pub const METRICS_LINGER: Duration = Duration::from_secs(5);

/// How a run is carried out, besides its profile.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the agents come from.
    pub agents: Agents,
    /// Serve live Prometheus metrics here during the run.
    pub metrics: Option<SocketAddr>,
    /// In-process agents sample this host's GPUs.
    pub gpu: bool,
}

/// Where a run's agents come from.
#[derive(Clone, Debug)]
pub enum Agents {
    /// `agents.count` agents started in this process, dialing loopback.
    Local,
    /// Agents on other hosts dial in.
    Remote(Listen),
}

/// The shortest token accepted off loopback: one anyone on the network may
/// guess at should not be guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// How the controller waits for remote agents.
#[derive(Clone)]
pub struct Listen {
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Agents the run needs; the load is split among them.
    pub expect: NonZeroU32,
    /// How long to wait for all of them.
    pub wait: Duration,
    /// Secret every agent must present. Never logged.
    pub token: Option<String>,
    /// PEM certificate chain and private key, for TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listen")
            .field("addr", &self.addr)
            .field("expect", &self.expect)
            .field("wait", &self.wait)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listen {
    /// Checks the listening options: a token of at least
    /// [`MIN_TOKEN_CHARS`] characters is required on any address other
    /// than loopback.
    pub fn new(
        addr: SocketAddr,
        expect: NonZeroU32,
        wait: Duration,
        token: Option<String>,
        tls: Option<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Listen, String> {
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(format!(
                "a token is required when listening on {addr}, which is not a loopback address: \
                 give --token-file (or STAMPEDE_TOKEN_FILE) to the controller and to every agent \
                 (make one with: openssl rand -hex 32 > token)"
            ));
        }
        let chars = token.as_deref().map_or(0, |t| t.chars().count());
        if token.is_some() && chars < MIN_TOKEN_CHARS && !addr.ip().is_loopback() {
            return Err(format!(
                "--token-file: the token is {chars} characters long; listening on {addr}, which is not a \
                 loopback address, needs one of at least {MIN_TOKEN_CHARS} (make one with: openssl rand -hex 32 > token)"
            ));
        }
        Ok(Listen {
            addr,
            expect,
            wait,
            token,
            tls,
        })
    }
}

/// A completed run.
#[derive(Debug)]
pub struct Finished {
    /// Its summary, as written to `summary.json`.
    pub summary: Summary,
    /// Its results directory.
    pub dir: PathBuf,
    /// The files written at the end, as (what, where), for the terminal.
    pub files: Vec<(&'static str, String)>,
}

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The results directory or a results file cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The built-in simulator did not start.
    #[error("cannot start the built-in simulator: {0}")]
    Sim(std::io::Error),
    /// The coordinator cannot listen for agents.
    #[error("cannot listen for agents on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The profile cannot be shared among the agents.
    #[error("{0}")]
    Plan(String),
    /// The model name cannot be determined.
    #[error("{0}")]
    Model(String),
    /// The run did not take place or could not go on.
    #[error("the run could not be carried out: {0}")]
    Failed(String),
    /// The trace settings cannot be used.
    #[error("tracing: {0}")]
    Trace(String),
}

fn write_error(path: PathBuf) -> impl FnOnce(std::io::Error) -> RunError {
    move |source| RunError::Write { path, source }
}

/// Runs `profile` as `options` say, and writes its results. The verdict
/// is in the summary.
pub async fn run(profile: Profile, options: Options, interrupt: Interrupt) -> Result<Finished, RunError> {
    let env = stampede_otel::from_env(|k| std::env::var(k).ok()).map_err(RunError::Trace)?;
    let trace = profile.trace.resolve(&env);
    if let (Some(why), Some(_)) = (&env.ignored, &trace) {
        tracing::warn!("{why}");
    }
    let push = crate::report::otlp::settings(&profile).map_err(RunError::Plan)?;
    if matches!(options.agents, Agents::Local) {
        // In-process agents share this environment: a secret header whose
        // variable is missing is a mistake to report before anything runs.
        // Remote agents read their own environment and report it themselves.
        profile
            .target
            .api
            .resolve(|var| std::env::var(var).ok())
            .map_err(|e| RunError::Plan(format!("[target] {e}")))?;
        // They share its open files too, with the built-in simulator.
        local_files(&profile).map_err(RunError::Failed)?;
    }
    let run_id = summary::run_id(&profile.name, SystemTime::now());
    // Every log line of the run carries the run's trace id, the span
    // exporters' included.
    let trace_id = stampede_otel::new_trace_id();
    let logs = tracing::info_span!("run", %trace_id);
    let span = logs.in_scope(|| RunSpan::start(trace, &run_id, trace_id))?;
    let result = run_traced(profile, options, interrupt, run_id, &span, push)
        .instrument(logs.clone())
        .await;
    span.end(result.as_ref().map(|f| &f.summary)).instrument(logs).await;
    result
}

async fn run_traced(
    profile: Profile,
    options: Options,
    interrupt: Interrupt,
    run_id: String,
    span: &RunSpan,
    push: Option<crate::profile::Push>,
) -> Result<Finished, RunError> {
    let agents = options.agents;
    let dir = profile.report.out.join(&run_id);
    std::fs::create_dir_all(&dir).map_err(write_error(dir.clone()))?;

    let sim = match &profile.target.url {
        Some(_) => None,
        None => {
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            // The built-in simulator exports its server spans where the
            // agents export theirs, as service "llm-sim".
            let spans = match &span.config {
                Some(c) => {
                    let c = stampede_otel::Config {
                        service_name: "llm-sim".to_owned(),
                        ..c.clone()
                    };
                    let e = stampede_sim::trace::exporter(&c).map_err(RunError::Trace)?;
                    span.flush_too(std::sync::Arc::clone(&e));
                    Some(e)
                }
                None => None,
            };
            let sim = stampede_sim::spawn_traced(profile.sim.clone(), spans, loopback)
                .await
                .map_err(RunError::Sim)?;
            let c = &profile.sim;
            tracing::debug!(
                "the built-in simulator at {}: max_batch {}, prefill {:?} + {:?}/token, decode step {:?} + {:?}/extra sequence",
                sim.url(),
                c.max_batch,
                c.prefill_base,
                c.prefill_per_token,
                c.decode_step,
                c.decode_step_per_seq
            );
            Some(sim)
        }
    };
    let url = match (&profile.target.url, &sim) {
        (Some(url), _) => url.clone(),
        (None, Some(sim)) => sim.url(),
        (None, None) => unreachable!("a simulator starts whenever no URL is given"),
    };
    let model = resolve_model(&profile, &url, sim.is_some()).await?;

    let (bind, count, join_timeout, token, tls) = match &agents {
        Agents::Local => (
            SocketAddr::from(([127, 0, 0, 1], 0)),
            profile.agents.get(),
            LOCAL_JOIN_TIMEOUT,
            None,
            None,
        ),
        Agents::Remote(l) => (l.addr, l.expect.get(), l.wait, l.token.clone(), l.tls.clone()),
    };
    // What is being run against what: the one line before the load
    // (remote agents joining, and anything to act on, besides).
    let against = match &sim {
        Some(_) => format!("the built-in simulator at {url} (no target given)"),
        None => url.clone(),
    };
    let agents_are = match &agents {
        Agents::Local => format!("{count} in-process agent{}", if count == 1 { "" } else { "s" }),
        Agents::Remote(_) => format!("{count} remote agent{}", if count == 1 { "" } else { "s" }),
    };
    tracing::info!(
        trace_id = %span.context.trace_id,
        "run {run_id}: {} against {against}, model {model}, {agents_are}",
        profile.load.describe()
    );
    let live = Live::new(&run_id, &profile.name, &url).with_exemplars(span.config.is_some());
    let otlp = crate::report::otlp::start(push, &run_id, &profile, &url, &model, &live).map_err(RunError::Failed)?;
    // The live figures are kept when they are served or pushed.
    let fed_live = (options.metrics.is_some() || otlp.is_some()).then(|| live.clone());
    let slices = plan::slices(&profile, count).map_err(RunError::Plan)?;
    let metrics_page = profile.server_metrics.enabled.then(|| {
        profile
            .server_metrics
            .url
            .clone()
            .unwrap_or_else(|| default_metrics_url(&url))
    });
    let spec = Spec::new(
        &profile,
        Facts {
            run_id: &run_id,
            target_url: &url,
            model: &model,
            agents: slices.iter().map(plan::Slice::peak_users).collect(),
            trace: span.config.as_ref(),
            run_trace_id: &span.context.trace_id.to_string(),
            server_metrics: metrics_page.clone(),
        },
    );
    let copy = dir.join(PROFILE_COPY);
    std::fs::write(&copy, &profile.source).map_err(write_error(copy))?;
    let log_path = dir.join(log::FILE);
    let log = Log::create(&log_path).map_err(write_error(log_path))?;
    let ledger = Ledger::new(&spec, Some(log));
    let setup = Setup {
        run_id: run_id.clone(),
        slices,
        target: {
            let mut target = pb::Target {
                url: url.clone(),
                model: model.clone(),
                timeout_ms: millis(profile.target.timeout),
                retry_after_max_ms: profile.target.retry_after_max.map_or(0, millis),
                ..pb::Target::default()
            };
            stampede_agent::assignment::target_fields(&profile.target.api, &mut target);
            target.tokenizer = profile.target.tokenizer.as_ref().map(|t| pb::Tokenizer {
                name: t.name.clone(),
                json: t.json.to_vec(),
            });
            target
        },
        request: pb::RequestSpec {
            max_tokens: profile.request.max_tokens,
            temperature: profile.request.temperature,
            stream: profile.request.stream,
        },
        prompts: profile.prompts.clone(),
        sessions: profile.sessions.map(|s| s.think),
        load: profile.load.clone(),
        schedule_seed: plan::mix(profile.seed ^ 0x5C4E_D01E),
        interval: profile.report.interval,
        start_delay: START_DELAY,
        join_timeout,
        capabilities: required_capabilities(&profile),
        on_agent_loss: profile.on_agent_loss,
        liveness: profile.liveness,
        live: fed_live.clone(),
        otlp,
        trace: span.wire(),
        slo: profile.slo.as_ref().map(crate::profile::Slo::to_wire),
        thresholds: profile.thresholds.list.clone(),
        local: matches!(agents, Agents::Local),
    };
    let tty = std::io::stderr().is_terminal();
    let progress = Progress::new(profile.report.interval, &profile.load, tty);
    let secured = (tls.is_some(), token.is_some());
    // The coordinator's own abandon signal: the operator's second
    // interrupt, or an in-process agent that failed before the start.
    let give_up = interrupt.abort.child_token();
    let mut control = ControlPlane::start(Parts {
        listener: Listener { bind, token, tls },
        setup,
        ledger,
        progress,
        interrupt: Interrupt {
            stop: interrupt.stop.clone(),
            abort: give_up.clone(),
        },
        metrics: options.metrics.map(|at| (at, live.clone(), METRICS_LINGER)),
    })
    .await?;
    if let Agents::Remote(_) = &agents {
        tracing::info!(
            "waiting up to {join_timeout:?} for {count} agents on {} ({}, {})",
            control.addr,
            if secured.0 { "TLS" } else { "plaintext" },
            if secured.1 { "token required" } else { "no token" },
        );
    }

    let scraper = metrics_page.map(|page| {
        let path = dir.join(scrapes::FILE);
        let raw = std::fs::File::create(&path)
            .inspect_err(|e| tracing::warn!("cannot write {}: {e}; server metrics are not kept raw", path.display()))
            .ok();
        Scraper::start(page, profile.server_metrics.interval, raw, fed_live.clone())
    });

    let agent_stop = CancellationToken::new();
    // In-process agents run their loads on a runtime of their own, so
    // that their CPU and their runtime's delay are theirs alone.
    let agents_runtime = match &agents {
        Agents::Local => Some(
            stampede_agent::load_runtime()
                .map_err(|e| RunError::Failed(format!("cannot start the agents' runtime: {e}")))?,
        ),
        Agents::Remote(_) => None,
    };
    let mut local = JoinSet::new();
    if let Some(runtime) = &agents_runtime {
        for i in 0..count {
            let name = local_name(i);
            let config = stampede_agent::Config {
                controller: format!("http://{}", control.addr),
                name: name.clone(),
                token: None,
                ca: None,
                wait: Duration::from_secs(10),
                trace: None,
                gpu: options.gpu,
                in_process: true,
            };
            let agent = stampede_agent::run(config, agent_stop.clone());
            local.spawn_on(async move { (name, agent.await) }.in_current_span(), runtime.handle());
        }
    }
    let (collected, agent_failure) = collect(&mut control, &mut local, &give_up).await;
    // The last scrape sees the server after the last request, before the
    // built-in simulator stops.
    let series = match scraper {
        Some(s) => Some(s.finish().await),
        None => None,
    };

    // Wind down: agents have ended (or been given up on), then the
    // server, then the simulator.
    agent_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(joined) = local.join_next().await {
            match joined {
                Ok((_, Ok(_))) => {}
                Ok((name, Err(e))) => tracing::debug!("in-process agent {name}: {e}"),
                Err(e) => tracing::error!("in-process agent failed: {e}"),
            }
        }
    })
    .await;
    if let Some(runtime) = agents_runtime {
        runtime.shutdown_background();
    }
    if let Some(sim) = sim {
        let _ = tokio::time::timeout(Duration::from_secs(5), sim.stop()).await;
    }
    let collected = collected?;
    if let Some(failure) = &collected.failure
        && collected.started_at.is_none()
    {
        // The agent's own words say more than "not every agent joined".
        return Err(RunError::Failed(agent_failure.unwrap_or_else(|| failure.clone())));
    }
    let spans = server_spans(&profile, span, &run_id, &collected, &dir).await;
    let written = crate::report::write(
        &dir,
        &Run {
            spec,
            collected,
            series,
            spans,
        },
    )
    .map_err(|e| RunError::Write {
        path: e.path,
        source: e.source,
    })?;
    control.join().await;
    Ok(Finished {
        summary: written.summary,
        dir,
        files: written.files,
    })
}

/// An in-process agent's outcome, by name.
type LocalAgent = (String, Result<stampede_agent::Ended, stampede_agent::Error>);

/// Waits for the coordinator's result while watching the in-process
/// agents. One that ends with an error before the start (it could not
/// start its session, reach the coordinator, or take its assignment) will
/// not come back, and the coordinator would wait for it until its join
/// deadline: the run is given up at once, and the agent's error returned
/// to say why.
async fn collect(
    control: &mut ControlPlane,
    local: &mut JoinSet<LocalAgent>,
    give_up: &CancellationToken,
) -> (Result<crate::results::Collected, RunError>, Option<String>) {
    let mut failure = None;
    let collected = control.collected();
    tokio::pin!(collected);
    loop {
        tokio::select! {
            collected = &mut collected => return (collected, failure),
            Some(joined) = local.join_next(), if failure.is_none() => {
                let why = match joined {
                    Ok((name, Err(e))) if failed_before_start(&e) => format!("in-process agent {name} failed: {e}"),
                    Ok(_) => continue,
                    Err(e) => {
                        // A panic, whenever it came: the coordinator sees its
                        // stream end and judges it as it judges a lost agent.
                        tracing::error!("an in-process agent failed: {e}");
                        continue;
                    }
                };
                tracing::error!("{why}; giving the run up");
                failure = Some(why);
                give_up.cancel();
            }
        }
    }
}

/// Whether an agent's error means it ended before the run started, on its
/// own account (not because the controller stopped the run, which the
/// coordinator already knows about).
fn failed_before_start(e: &stampede_agent::Error) -> bool {
    use stampede_agent::Error;
    match e {
        Error::Connect { .. } | Error::Refused(_) | Error::Assignment(_) | Error::Protocol(_) | Error::Start(_) => true,
        Error::Stopped(_) | Error::ControllerLost(_) | Error::Interrupted => false,
    }
}

/// The server's spans of the run, read back from the trace store named by
/// `[trace] query_url` and kept in the run directory; `None` without one,
/// or when the store cannot be read (the summary then takes the server
/// queue from the metrics page).
async fn server_spans(
    profile: &Profile,
    span: &RunSpan,
    run_id: &str,
    collected: &crate::results::Collected,
    dir: &std::path::Path,
) -> Option<crate::server::spans::ServerSpans> {
    use crate::server::spans;
    let (url, config, started) = (
        profile.trace.query_url.as_ref()?,
        span.config.as_ref()?,
        collected.started_at?,
    );
    let m = &collected.merger;
    let query = spans::Query {
        url: url.clone(),
        service: config.service_name.clone(),
        run_id: run_id.to_owned(),
        sample_ratio: config.sample_ratio,
        exported: m.measured().counters.spans_exported + m.warmup().spans_exported,
        window: (started, SystemTime::now()),
    };
    match spans::fetch(&query).await {
        Ok(found) => {
            tracing::info!(
                "read {} server queue spans of {} request traces from {url}",
                found.spans.len(),
                found.traces
            );
            if let Err(e) = found.write(&dir.join(spans::FILE)) {
                tracing::warn!("{e}; `controller report` will take the server queue from the metrics page");
            }
            Some(found)
        }
        Err(e) => {
            tracing::warn!(
                "cannot read the server's spans from {url}: {e}; the server queue comes from its metrics page"
            );
            None
        }
    }
}

/// The target's own metrics page: `/metrics` at its root (a trailing
/// `/v1` is not part of the server's root).
fn default_metrics_url(target: &str) -> String {
    let base = target.trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    format!("{base}/metrics")
}

/// The pre-flight check of this process's open files for in-process
/// agents: every user's connection, twice when the built-in simulator
/// holds the other end, must fit under its limit. An open loop with no
/// concurrency cap is not checked: what it holds depends on how fast the
/// server answers.
fn local_files(profile: &Profile) -> Result<(), String> {
    use crate::profile::Model;
    use stampede_agent::open_files::{Host, Limit, check};
    let users = match &profile.load.model {
        Model::Users { .. } => profile.load.peak() as u64,
        Model::Rate {
            max_concurrency: Some(cap),
            ..
        } => u64::from(cap.get()),
        Model::Rate { .. } => return Ok(()),
    };
    let host = Host::Controller {
        agents: (0..profile.agents.get()).map(local_name).collect(),
        simulator: profile.target.url.is_none(),
    };
    check(&host, users, Limit::current())
}

/// The name of in-process agent `i`.
fn local_name(i: u32) -> String {
    format!("local-{i}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn required_capabilities(profile: &Profile) -> Vec<String> {
    let mut caps = vec![format!("api:{}", profile.target.api.dialect), "load:users".to_owned()];
    if profile.target.tokenizer.is_some() {
        // An agent that cannot count would silently leave its share out.
        caps.push("tokens:tokenizer".to_owned());
    }
    if profile.slo.is_some() {
        // One that cannot check objectives would count nothing good.
        caps.push("slo:goodput".to_owned());
    }
    caps
}

/// The model to send: the profile's, the simulator's, or the first the
/// server lists at `/v1/models`.
async fn resolve_model(profile: &Profile, url: &str, simulated: bool) -> Result<String, RunError> {
    if let Some(model) = &profile.target.model {
        return Ok(model.clone());
    }
    let dialect = profile.target.api.dialect;
    if !dialect.lists_models() && !simulated {
        // Only the OpenAI dialects list their models at /v1/models.
        return match dialect {
            Dialect::Ollama | Dialect::OllamaChat => Err(RunError::Model(format!(
                "api {dialect} needs a model name: set [target] model in the profile"
            ))),
            _ => Ok(String::new()),
        };
    }
    if simulated {
        return Ok(profile.sim.model.clone());
    }
    let endpoint = Endpoint::parse(url).map_err(|e| RunError::Model(e.to_string()))?;
    let answer = tokio::time::timeout(DISCOVERY_TIMEOUT, endpoint.get("/v1/models", 1 << 20)).await;
    let set_it = "set [target] model in the profile";
    match answer {
        Ok(Ok((200, body))) => {
            let listed: Option<String> = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["data"][0]["id"].as_str().map(str::to_owned));
            match listed {
                Some(model) => {
                    tracing::info!("no model given: using {model:?}, the first listed at {url}/v1/models");
                    Ok(model)
                }
                None => Err(RunError::Model(format!("{url}/v1/models lists no model; {set_it}"))),
            }
        }
        Ok(Ok((status, _))) => Err(RunError::Model(format!(
            "no model given and {url}/v1/models answered HTTP {status}; {set_it}"
        ))),
        Ok(Err(e)) => {
            tracing::warn!("no model given and the server cannot be asked ({e}); sending model {UNKNOWN_MODEL:?}");
            Ok(UNKNOWN_MODEL.to_owned())
        }
        Err(_) => {
            tracing::warn!(
                "no model given and {url}/v1/models did not answer within {DISCOVERY_TIMEOUT:?}; sending model {UNKNOWN_MODEL:?}"
            );
            Ok(UNKNOWN_MODEL.to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_metrics_page_is_at_the_servers_root() {
        assert_eq!(default_metrics_url("http://h:8000"), "http://h:8000/metrics");
        assert_eq!(default_metrics_url("http://h:8000/v1/"), "http://h:8000/metrics");
        assert_eq!(default_metrics_url("https://h/llm"), "https://h/llm/metrics");
    }

    #[test]
    fn a_token_is_required_off_loopback() {
        let one = NonZeroU32::MIN;
        let wait = Duration::from_secs(1);
        let open: SocketAddr = "0.0.0.0:7000".parse().unwrap();
        let e = Listen::new(open, one, wait, None, None).unwrap_err();
        assert!(e.contains("a token is required when listening on 0.0.0.0:7000"), "{e}");
        assert!(e.ends_with("(make one with: openssl rand -hex 32 > token)"), "{e}");
        assert!(Listen::new(open, one, wait, Some("0123456789abcdef".into()), None).is_ok());
        // A short token is refused off loopback, with how to make a good one...
        assert_eq!(
            Listen::new(open, one, wait, Some("s3cret".into()), None).unwrap_err(),
            "--token-file: the token is 6 characters long; listening on 0.0.0.0:7000, which is not a \
             loopback address, needs one of at least 16 (make one with: openssl rand -hex 32 > token)"
        );
        // ...and characters are counted, not bytes.
        assert!(Listen::new(open, one, wait, Some("ééééééééééééééé".into()), None).is_err());
        // On loopback any token will do.
        assert!(Listen::new("127.0.0.1:7000".parse().unwrap(), one, wait, Some("t".into()), None).is_ok());
        assert!(Listen::new("127.0.0.1:7000".parse().unwrap(), one, wait, None, None).is_ok());
        assert!(Listen::new("[::1]:7000".parse().unwrap(), one, wait, None, None).is_ok());
        let shown = format!(
            "{:?}",
            Listen::new(open, one, wait, Some("s3cret-0123456789".into()), None).unwrap()
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
