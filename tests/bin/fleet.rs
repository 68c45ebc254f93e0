//! `fleet`: many simulated agents in one process, to measure a controller
//! at scale.
//!
//! Each simulated agent speaks the coordinator protocol over its own gRPC
//! connection as a real agent does: Hello, clock probes, Ready, the start
//! barrier, one Report per interval for the assignment's duration (HDR
//! histograms of values drawn from realistic latency distributions, counters
//! with error classes, error samples, exemplars, a presence map), heartbeats,
//! and Finished with the exact totals of what it reported. It sends no
//! requests to any server: the controller's cost of taking part is what is
//! measured.
//!
//! At the end it prints one JSON object on stdout: what the fleet sent
//! (requests, errors, tokens, reports) and how the start barrier reached the
//! agents (each agent's receipt of Start against the instant it names).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;
use stampede_proto::pb::{self, agent_message, controller_message};
use stampede_proto::{Counters, ErrorClass, Histograms, Metric, PROTOCOL_VERSION};
use stampede_tests::rng::Rng;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Many simulated agents against one controller.
#[derive(Parser, Debug)]
#[command(name = "fleet", version)]
struct Cli {
    /// The controller's URL, as agents dial it.
    #[arg(long, default_value = "http://127.0.0.1:7000")]
    controller: String,
    /// How many agents to play.
    #[arg(long, default_value_t = 100)]
    agents: u32,
    /// Shared token, when the controller asks for one.
    #[arg(long, env = "STAMPEDE_TOKEN")]
    token: Option<String>,
    /// Requests each agent completes per interval.
    #[arg(long, default_value_t = 5)]
    requests: u32,
    /// Output tokens per request (one ITL sample per token after the first).
    #[arg(long, default_value_t = 128)]
    tokens: u32,
    /// Share of requests that fail (their error class alternates between
    /// http_503 and timeout).
    #[arg(long, default_value_t = 0.01)]
    error_rate: f64,
    /// Distinct report contents drawn in advance; agents cycle through them.
    #[arg(long, default_value_t = 16)]
    variants: usize,
    /// Seed of the drawn values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Agents dialling at once while joining.
    #[arg(long, default_value_t = 32)]
    dial_parallel: usize,
}

/// Clock probes each agent sends before Ready, as a real agent does.
const PROBES: u64 = 8;
/// How often each agent sends a heartbeat (the protocol's default).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// One interval of one agent's measurements, drawn in advance.
struct Variant {
    histograms: Histograms,
    counters: Counters,
    wire: Vec<pb::Histogram>,
    samples: Vec<pb::ErrorSample>,
    exemplars: Vec<pb::Exemplar>,
}

fn variant(rng: &mut Rng, cli: &Cli, interval_us: u64) -> Variant {
    let mut h = Histograms::new();
    let mut c = Counters::default();
    let mut slowest = (0, 0);
    for r in 0..cli.requests {
        h.record(Metric::ScheduleLag, rng.lognormal(40.0, 0.6));
        h.record(Metric::ClientQueue, rng.lognormal(60.0, 0.6));
        if rng.unit() < cli.error_rate {
            let class = if r % 2 == 0 {
                ErrorClass::Status(503)
            } else {
                ErrorClass::Timeout
            };
            c.count_error(class);
            continue;
        }
        let ttft = rng.lognormal(150_000.0, 0.5);
        let mut e2e = ttft;
        for _ in 1..cli.tokens {
            let gap = rng.lognormal(20_000.0, 0.3);
            h.record(Metric::Itl, gap);
            h.record(Metric::ChunkGap, gap);
            e2e += gap;
        }
        let input = 50 + rng.next() % 450;
        h.record(Metric::Ttft, ttft);
        h.record(Metric::E2e, e2e);
        if cli.tokens > 1 {
            h.record(Metric::Tpot, (e2e - ttft) / u64::from(cli.tokens - 1));
        }
        h.record(Metric::InputTokens, input);
        h.record(Metric::OutputTokens, u64::from(cli.tokens));
        c.ok += 1;
        c.input_tokens += input;
        c.output_tokens += u64::from(cli.tokens);
        c.tokens_from_usage += 1;
        c.inputs_from_server += 1;
        slowest = (slowest.0.max(ttft), slowest.1.max(e2e));
    }
    // A 10 ms tick on the load runtime, as the agent measures its own delay.
    for _ in 0..interval_us / 10_000 {
        h.record(Metric::RuntimeDelay, rng.lognormal(80.0, 0.8));
    }
    h.record(Metric::Connect, rng.lognormal(300.0, 0.4));
    let samples = c
        .errors
        .keys()
        .map(|class| pb::ErrorSample {
            class: class.to_string(),
            message: format!("simulated {class} answer"),
        })
        .collect();
    let exemplars = [(Metric::Ttft, slowest.0), (Metric::E2e, slowest.1)]
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(metric, value_us)| pb::Exemplar {
            metric: metric.to_wire() as i32,
            value_us,
            trace_id: rng.hex(),
            interval: 0,
        })
        .collect();
    Variant {
        wire: h.to_wire(),
        histograms: h,
        counters: c,
        samples,
        exemplars,
    }
}

/// What one agent saw of the barrier and sent.
#[derive(Default)]
struct Outcome {
    /// Wall clock at which Start arrived minus the instant it names, µs.
    start_lag_us: i64,
    /// Start's delay: the barrier fell this long before the start instant.
    delay_ms: u64,
    /// When the agent began (its Began) minus the start instant, µs.
    begin_late_us: i64,
    /// The agent's estimate of the controller's clock minus its own, µs.
    offset_us: i64,
    reports: u64,
    counters: Counters,
    finished_acked: bool,
}

fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn message(kind: agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

fn hello(name: String) -> pb::Hello {
    let mut capabilities: Vec<String> = [
        "openai-chat",
        "openai-completions",
        "ollama",
        "ollama-chat",
        "tgi",
        "http-json",
    ]
    .iter()
    .map(|d| format!("api:{d}"))
    .collect();
    capabilities.extend(
        [
            "load:users",
            "load:rate",
            "clock:probe",
            "tokens:tokenizer",
            "slo:goodput",
        ]
        .map(str::to_owned),
    );
    pb::Hello {
        name,
        protocol_version: PROTOCOL_VERSION,
        capabilities,
        agent_version: concat!("fleet-", env!("CARGO_PKG_VERSION")).to_owned(),
        gpu: String::new(),
        resume: None,
    }
}

/// Everything the agents share.
struct Fleet {
    cli: Cli,
    variants: Vec<Variant>,
    /// Limits the agents dialling at once.
    joined: tokio::sync::Semaphore,
    /// The wire form of the totals of `reports` reports that cycle through
    /// the variants from `first`, by (first, reports): a whole histogram set
    /// for each of a thousand agents would take gigabytes.
    totals: std::sync::Mutex<HashMap<(usize, u64), Vec<pb::Histogram>>>,
}

impl Fleet {
    fn totals(&self, first: usize, reports: u64) -> Vec<pb::Histogram> {
        let mut cache = self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry((first, reports))
            .or_insert_with(|| {
                let mut sum = Histograms::new();
                for k in 0..reports as usize {
                    sum.add(&self.variants[(first + k) % self.variants.len()].histograms);
                }
                sum.to_wire()
            })
            .clone()
    }
}

async fn agent(fleet: Arc<Fleet>, index: u32, started: mpsc::Sender<()>) -> Result<Outcome, String> {
    let cli = &fleet.cli;
    // The controller holds only so many connections that have not yet
    // presented their session: dial a few at a time, each until its
    // session is open.
    let permit = fleet.joined.acquire().await.map_err(|e| e.to_string())?;
    let channel = Endpoint::from_shared(cli.controller.clone())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("agent {index}: connecting: {e}"))?;
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    let (out, rx) = mpsc::channel(1024);
    out.try_send(message(agent_message::Kind::Hello(hello(format!("fleet-{index}")))))
        .expect("a new channel has room");
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &cli.token {
        let value = format!("Bearer {token}").parse().map_err(|_| "bad token".to_owned())?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client
        .session(request)
        .await
        .map_err(|s| format!("agent {index}: {}", s.message()))?
        .into_inner();
    drop(permit);
    // Heartbeats from the first message on, as a real agent sends them.
    let beats = out.clone();
    let heartbeat = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for sequence in 1.. {
            tick.tick().await;
            let beat = message(agent_message::Kind::Heartbeat(pb::Heartbeat { sequence }));
            if let Err(mpsc::error::TrySendError::Closed(_)) = beats.try_send(beat) {
                break;
            }
        }
    }));
    let mut next = async || -> Result<controller_message::Kind, String> {
        loop {
            match inbound.message().await {
                Ok(Some(pb::ControllerMessage { kind: Some(k) })) => return Ok(k),
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("agent {index}: the controller closed the session")),
                Err(s) => return Err(format!("agent {index}: {}", s.message())),
            }
        }
    };
    let assignment = loop {
        match next().await? {
            controller_message::Kind::Assignment(a) => break a,
            controller_message::Kind::Stop(s) => return Err(format!("agent {index}: stopped: {}", s.reason)),
            _ => {}
        }
    };
    // Clock probes, one at a time, keeping the shortest round trip.
    let mut best: Option<(i64, u64)> = None;
    for id in 1..=PROBES {
        let (sent, sent_wall) = (Instant::now(), wall_us());
        let _ = out
            .send(message(agent_message::Kind::ClockProbe(pb::ClockProbe { id })))
            .await;
        loop {
            if let controller_message::Kind::ClockReply(r) = next().await?
                && r.id == id
            {
                let rtt = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                let offset = r.controller_time_us as i64 - (sent_wall + (rtt / 2) as i64);
                if best.is_none_or(|(_, b)| rtt < b) {
                    best = Some((offset, rtt));
                }
                break;
            }
        }
    }
    let (offset_us, rtt_us) = best.unwrap_or_default();
    let _ = out
        .send(message(agent_message::Kind::Ready(pb::Ready {
            clock_offset_us: offset_us,
            clock_rtt_us: rtt_us,
        })))
        .await;
    let start = loop {
        match next().await? {
            controller_message::Kind::Start(s) => break s,
            controller_message::Kind::Stop(s) => return Err(format!("agent {index}: stopped: {}", s.reason)),
            _ => {}
        }
    };
    let received = wall_us() + offset_us;
    let mut outcome = Outcome {
        start_lag_us: received - start.start_at_us as i64,
        delay_ms: start.delay_ms,
        ..Outcome::default()
    };
    let wait = u64::try_from(start.start_at_us as i64 - received).unwrap_or(0);
    let begin = Instant::now() + Duration::from_micros(wait);
    tokio::time::sleep_until(begin).await;
    let began = wall_us() + offset_us;
    outcome.begin_late_us = began - start.start_at_us as i64;
    outcome.offset_us = offset_us;
    let _ = out
        .send(message(agent_message::Kind::Began(pb::Began {
            started_at_us: u64::try_from(began).unwrap_or(0),
        })))
        .await;
    let _ = started.send(()).await;
    drop(started);

    let interval = Duration::from_millis(assignment.interval_ms.max(1));
    let duration = Duration::from_millis(assignment.duration_ms);
    let intervals = duration.as_micros().div_ceil(interval.as_micros().max(1)) as u64;
    let users = assignment.load.and_then(|l| match l.kind {
        Some(pb::load::Kind::Closed(c)) => c.phases.iter().map(|p| p.users).max(),
        _ => None,
    });
    // Agents cycle through the variants from their own starting point.
    let first = index as usize * 7 % fleet.variants.len();
    let mut stopped = false;
    let mut k = 0;
    while k < intervals && !stopped {
        let due = begin + interval * (k as u32 + 1);
        let last = k + 1 == intervals;
        let due = if last { begin + duration } else { due };
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {
                let v = &fleet.variants[(first + k as usize) % fleet.variants.len()];
                outcome.counters.add(&v.counters);
                let mut counters = v.counters.to_wire();
                counters.active_users = if last { 0 } else { users.unwrap_or(0) };
                let report = pb::Report {
                    interval: k,
                    sequence: k + 1,
                    elapsed_us: u64::try_from((Instant::now() - begin).as_micros()).unwrap_or(u64::MAX),
                    histograms: v.wire.clone(),
                    counters: Some(counters),
                    error_samples: v.samples.clone(),
                    cpu: 0.05,
                    gpu: Vec::new(),
                    // Trace ids unique to the agent and interval, as real ones are.
                    exemplars: v
                        .exemplars
                        .iter()
                        .map(|e| pb::Exemplar {
                            interval: k,
                            trace_id: format!("{}{index:08x}{k:08x}", &e.trace_id[..16]),
                            ..e.clone()
                        })
                        .collect(),
                    classes: Vec::new(),
                    presence: vec![0xff; (interval.as_millis() as usize).div_ceil(8)],
                    in_flight: if last { 0 } else { users.unwrap_or(0) },
                    sampled_exemplars: Vec::new(),
                    turns: Vec::new(),
                };
                if out.send(message(agent_message::Kind::Report(report))).await.is_err() {
                    return Err(format!("agent {index}: the stream closed"));
                }
                outcome.reports += 1;
                k += 1;
            }
            m = next() => {
                if let controller_message::Kind::Stop(_) = m? {
                    stopped = true;
                }
            }
        }
    }
    let finished = pb::Finished {
        histograms: fleet.totals(first, outcome.reports),
        counters: Some(outcome.counters.to_wire()),
        elapsed_us: u64::try_from((Instant::now() - begin).as_micros()).unwrap_or(u64::MAX),
        last_sequence: outcome.reports,
        classes: Vec::new(),
        stopped_early: String::new(),
        turns: Vec::new(),
    };
    let _ = out.send(message(agent_message::Kind::Finished(finished))).await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let m = tokio::select! {
            m = next() => m,
            _ = tokio::time::sleep_until(until) => break,
        };
        match m {
            Ok(controller_message::Kind::Ack(a)) if a.finished => {
                outcome.finished_acked = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    drop(heartbeat);
    Ok(outcome)
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Percentile of sorted values (nearest rank).
fn pct(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> std::process::ExitCode {
    let mut rng = Rng(cli.seed);
    let variants = (0..cli.variants.max(1))
        .map(|_| variant(&mut rng, &cli, 1_000_000))
        .collect();
    let n = cli.agents;
    let fleet = Arc::new(Fleet {
        joined: tokio::sync::Semaphore::new(cli.dial_parallel.max(1)),
        totals: std::sync::Mutex::default(),
        cli,
        variants,
    });
    let (started_tx, mut started_rx) = mpsc::channel(n as usize);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(agent(Arc::clone(&fleet), i, started_tx.clone()));
    }
    drop(started_tx);
    tokio::spawn(async move {
        let mut count = 0;
        while started_rx.recv().await.is_some() {
            count += 1;
            if count == n {
                eprintln!("fleet: all {n} agents started");
            }
        }
    });
    let mut outcomes = Vec::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => *failures.entry(e).or_default() += 1,
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    let sorted = |f: fn(&Outcome) -> i64| {
        let mut v: Vec<i64> = outcomes.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let lags = sorted(|o| o.start_lag_us);
    let begins = sorted(|o| o.begin_late_us);
    let offsets = sorted(|o| o.offset_us.abs());
    let spread = |v: &[i64]| v.last().copied().unwrap_or(0) - v.first().copied().unwrap_or(0);
    let stats = |v: &[i64]| {
        json!({
            "min": v.first().copied().unwrap_or(0),
            "p50": pct(v, 0.5),
            "p99": pct(v, 0.99),
            "max": v.last().copied().unwrap_or(0),
        })
    };
    let mut total = Counters::default();
    for o in &outcomes {
        total.add(&o.counters);
    }
    let errors: serde_json::Map<String, serde_json::Value> =
        total.errors.iter().map(|(c, n)| (c.to_string(), json!(n))).collect();
    let delay_us = outcomes.first().map_or(0, |o| o.delay_ms as i64 * 1000);
    let summary = json!({
        "agents": n,
        "agents_completed": outcomes.len(),
        "agents_acknowledged": outcomes.iter().filter(|o| o.finished_acked).count(),
        "failures": failures,
        "reports": outcomes.iter().map(|o| o.reports).sum::<u64>(),
        "ok": total.ok,
        "errors": errors,
        "failed": total.failed(),
        "input_tokens": total.input_tokens,
        "output_tokens": total.output_tokens,
        "barrier": {
            // Start leaves the controller this long before the instant it
            // names (the barrier: the last agent's Ready).
            "start_delay_us": delay_us,
            // Start's arrival at each agent, against the instant it names:
            // negative is early enough to begin on time.
            "start_received_us": stats(&lags),
            "start_received_spread_us": spread(&lags),
            // Each agent's begin (its Began, in the controller's clock as
            // the agent estimates it) against the instant Start names: the
            // lag behind the intended start; the spread is the start skew.
            "begin_late_us": stats(&begins),
            "begin_spread_us": spread(&begins),
            // |clock offset| the agents estimated from their probes: on one
            // host the truth is 0, so this is the estimate's error.
            "clock_offset_abs_us": stats(&offsets),
        },
    });
    println!("{summary}");
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
