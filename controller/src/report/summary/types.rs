//! The shape of `summary.json`, and the metric definitions it states.

use std::collections::BTreeMap;

use serde::Serialize;
use stampede_proto::{Histograms, Metric, Unit};

use super::Tokens;
use crate::stats::Stats;

/// Version of the summary format. Bumped on incompatible changes.
pub const SCHEMA: &str = "stampede.summary/1";

/// How a run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every check held.
    Passed,
    /// A threshold failed (exit 99), or requests failed beyond the allowed
    /// rate, or none succeeded (exit 3).
    Failed,
    /// The client, not the server, was the limit: the figures measure the
    /// client (exit 98), unless `thresholds.allow_client_bound`.
    Invalid,
    /// Some of the run's data is missing (an agent was lost).
    Degraded,
    /// An agent was lost and the profile says to abort.
    Aborted,
    /// Stopped by the operator.
    Interrupted,
}

/// The verdict and why.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Verdict {
    /// Overall status.
    pub status: Status,
    /// Process exit code: 0 passed, 3 requests failed, 4 degraded, 5
    /// aborted (an agent lost), 98 invalid measurement (client-bound), 99
    /// a threshold failed, 130 interrupted.
    pub exit_code: u8,
    /// The load was stopped early because a threshold with `abort` failed:
    /// when and why.
    pub stopped_by: Option<String>,
    /// Every reason the run did not simply pass.
    pub reasons: Vec<String>,
}

/// One turn's figures in a run of sessions.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TurnSummary {
    /// The turn's number in its session, from 1.
    pub turn: u32,
    /// This row also counts every later turn (turns past the most the
    /// agents tell apart, 16).
    pub and_later: bool,
    /// Successful requests.
    pub requests: u64,
    /// Input tokens per request: the whole history the turn sent.
    pub tokens_in: MetricSummary,
    /// Output tokens per request.
    pub tokens_out: MetricSummary,
    /// Time to first token.
    pub ttft: MetricSummary,
    /// Time per output token.
    pub tpot: MetricSummary,
    /// End-to-end latency.
    pub e2e: MetricSummary,
}

/// Statistics of one metric, in its reporting unit.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MetricSummary {
    /// `ms` for times, `tokens` for counts.
    pub unit: &'static str,
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest.
    pub max: f64,
}

impl MetricSummary {
    /// Statistics of `metric` in its reporting unit.
    pub fn of(metric: Metric, s: &Stats) -> MetricSummary {
        // Dividing (not multiplying by 1e-3) gives the double nearest the
        // exact decimal, so 7012351 us is written as 7012.351 ms.
        let (unit, divisor) = match metric.unit() {
            Unit::Micros => ("ms", 1e3),
            Unit::Tokens => ("tokens", 1.0),
        };
        let v = |x: u64| x as f64 / divisor;
        MetricSummary {
            unit,
            count: s.count,
            mean: s.mean / divisor,
            min: v(s.min),
            p50: v(s.p50),
            p90: v(s.p90),
            p95: v(s.p95),
            p99: v(s.p99),
            p99_9: v(s.p999),
            max: v(s.max),
        }
    }
}

impl MetricSummary {
    /// One statistic; `None` without samples.
    pub fn stat(&self, stat: crate::figure::Stat) -> Option<f64> {
        use crate::figure::Stat;
        (self.count > 0).then_some(match stat {
            Stat::Mean => self.mean,
            Stat::P50 => self.p50,
            Stat::P90 => self.p90,
            Stat::P95 => self.p95,
            Stat::P99 => self.p99,
            Stat::P999 => self.p99_9,
            Stat::Max => self.max,
        })
    }
}

/// Every metric, by name.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Metrics {
    /// Time to first token.
    pub ttft: MetricSummary,
    /// Inter-token latency, per token.
    pub itl: MetricSummary,
    /// Gap between consecutive stream events carrying tokens.
    pub chunk_gap: MetricSummary,
    /// Time per output token.
    pub tpot: MetricSummary,
    /// End-to-end latency.
    pub e2e: MetricSummary,
    /// Time to first token from the intended start.
    pub ttft_intended: MetricSummary,
    /// End-to-end latency from the intended start.
    pub e2e_intended: MetricSummary,
    /// Client-side queueing.
    pub client_queue: MetricSummary,
    /// Scheduling lag.
    pub schedule_lag: MetricSummary,
    /// Connection setup.
    pub connect: MetricSummary,
    /// Input tokens per request.
    pub input_tokens: MetricSummary,
    /// Output tokens per request.
    pub output_tokens: MetricSummary,
    /// Prompt processing time the server reported (Ollama).
    pub server_prefill: MetricSummary,
    /// Token generation time the server reported (Ollama).
    pub server_decode: MetricSummary,
    /// Model load time the server reported (Ollama; cold starts).
    pub model_load: MetricSummary,
    /// Whole-request time the server reported (`http-json` duration).
    pub server_time: MetricSummary,
    /// How late the agents' load runtime ran a 10 ms tick: time their
    /// threads waited for a CPU or for busy workers.
    pub runtime_delay: MetricSummary,
}

impl Metrics {
    /// One metric's statistics.
    pub fn get(&self, metric: Metric) -> &MetricSummary {
        match metric {
            Metric::Ttft => &self.ttft,
            Metric::Itl => &self.itl,
            Metric::ChunkGap => &self.chunk_gap,
            Metric::Tpot => &self.tpot,
            Metric::E2e => &self.e2e,
            Metric::ClientQueue => &self.client_queue,
            Metric::Connect => &self.connect,
            Metric::InputTokens => &self.input_tokens,
            Metric::OutputTokens => &self.output_tokens,
            Metric::ScheduleLag => &self.schedule_lag,
            Metric::TtftIntended => &self.ttft_intended,
            Metric::E2eIntended => &self.e2e_intended,
            Metric::ServerPrefill => &self.server_prefill,
            Metric::ServerDecode => &self.server_decode,
            Metric::ModelLoad => &self.model_load,
            Metric::ServerTime => &self.server_time,
            Metric::RuntimeDelay => &self.runtime_delay,
        }
    }

    /// Every metric of a histogram set.
    pub fn of(h: &Histograms) -> Metrics {
        let m = |metric| MetricSummary::of(metric, &Stats::of(h.get(metric)));
        Metrics {
            ttft: m(Metric::Ttft),
            itl: m(Metric::Itl),
            chunk_gap: m(Metric::ChunkGap),
            tpot: m(Metric::Tpot),
            e2e: m(Metric::E2e),
            ttft_intended: m(Metric::TtftIntended),
            e2e_intended: m(Metric::E2eIntended),
            client_queue: m(Metric::ClientQueue),
            schedule_lag: m(Metric::ScheduleLag),
            connect: m(Metric::Connect),
            input_tokens: m(Metric::InputTokens),
            output_tokens: m(Metric::OutputTokens),
            server_prefill: m(Metric::ServerPrefill),
            server_decode: m(Metric::ServerDecode),
            model_load: m(Metric::ModelLoad),
            server_time: m(Metric::ServerTime),
            runtime_delay: m(Metric::RuntimeDelay),
        }
    }
}

/// The summary file.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Summary {
    /// Format version.
    pub schema: &'static str,
    /// Run identifier.
    pub run_id: String,
    /// The profile.
    pub profile: ProfileInfo,
    /// The server under test.
    pub target: TargetInfo,
    /// The planned load.
    pub load: LoadInfo,
    /// Wall-clock start of the load (RFC 3339), when it started.
    pub started_at: Option<String>,
    /// Seconds from the start until the last request ended.
    pub duration_s: f64,
    /// Seconds of that which were measured (warm-ups left out).
    pub measured_s: f64,
    /// The verdict.
    pub verdict: Verdict,
    /// Request outcomes, warm-ups left out.
    pub requests: Requests,
    /// What the warm-ups held, left out of every statistic.
    pub warmup: Warmup,
    /// Failed requests by class.
    pub errors: BTreeMap<String, ErrorInfo>,
    /// Rates over the measured time.
    pub throughput: Throughput,
    /// The run's per-request objectives, when it has some.
    pub slo: Option<SloSummary>,
    /// Requests that met every objective, over the measured time.
    pub goodput: Option<Goodput>,
    /// For stages and sweeps with objectives: the largest load the server
    /// held with enough good requests.
    pub capacity: Option<Capacity>,
    /// Every threshold of the profile and how it fared.
    pub thresholds: Vec<ThresholdResult>,
    /// Token totals and their source.
    pub tokens: Tokens,
    /// Latency and token statistics of successful requests.
    pub metrics: Metrics,
    /// TTFT and TPOT labelled good, acceptable or poor.
    pub grades: Grading,
    /// Every metric broken down by prompt class, shortest prompts first:
    /// every class that had requests, one whose requests all failed too.
    pub classes: Vec<ClassSummary>,
    /// What the controller measured prompt lengths in to class them
    /// (`tokens` of the run's tokenizer, else `characters`; `words` in runs
    /// recorded before); a JSONL line's own `class` wins.
    pub classes_by: crate::dataset::ClassBy,
    /// The class rows are whole-run totals, warm-ups included (a run
    /// recorded before agents reported classes per interval); otherwise
    /// they cover the measured time, like the run's figures.
    pub classes_whole_run: bool,
    /// Sessions only: figures by turn in the session (turn 1 first), over
    /// the measured time; empty when the run played no sessions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub turns: Vec<TurnSummary>,
    /// Each step of the load, with its own statistics.
    pub steps: Vec<StepSummary>,
    /// Throughput and latency against load, one row per step.
    pub load_table: Vec<LoadRow>,
    /// Where the server saturates, when the load had several steps.
    pub knee: Option<Knee>,
    /// Whether the client, not the server, was the limit.
    pub client: Client,
    /// Each agent.
    pub agents: Vec<AgentSummary>,
    /// Agents lost mid-run, and how much of the load went with them.
    pub lost: Lost,
    /// How far apart the agents really began.
    pub start_skew: StartSkew,
    /// One row per interval.
    pub intervals: Vec<IntervalSummary>,
    /// The server's own metrics, when scraped.
    pub server: Option<super::ServerSummary>,
    /// The server's queue time as percentiles over the measured time:
    /// exact from the server's spans when the run read them back
    /// (`[trace] query_url`), else interpolated within its queue-time
    /// histogram's buckets; absent when the server gives neither.
    pub server_queue: Option<super::ServerQueue>,
    /// Prefix caching: the workload's shared prefixes, the server's hit
    /// rate and the cached tokens the answers stated, when the run has any
    /// of them.
    pub prefix_cache: Option<super::PrefixCache>,
    /// The accelerators the agents sampled, when asked to.
    pub gpu: Option<super::GpuSummary>,
    /// How busy the accelerator was while the agents had requests in
    /// flight (the figure `gpu_idle` rests on), when the run can say.
    pub busy_while_present: Option<crate::findings::Utilisation>,
    /// How pushing the run's metrics over OTLP went (`[metrics] otlp`),
    /// when they were pushed.
    pub metrics_push: Option<crate::results::log::Pushed>,
    /// Where the time went, each conclusion with its evidence.
    pub findings: Vec<crate::findings::Finding>,
    /// Request spans: where they went, how many were lost, and the
    /// slowest requests' traces.
    pub tracing: super::trace::Tracing,
    /// What each figure means.
    pub definitions: Definitions,
}

/// Which profile ran.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ProfileInfo {
    /// Its name.
    pub name: String,
    /// Its file.
    pub path: String,
    /// Its seed.
    pub seed: u64,
}

/// The server under test.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TargetInfo {
    /// Base URL.
    pub url: String,
    /// Dialect.
    pub api: String,
    /// Model name sent.
    pub model: String,
    /// True when the built-in simulator was the target.
    pub simulated: bool,
}

/// The planned load.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct LoadInfo {
    /// `users` (closed loop), `rate` (open loop) or `trace` (an open loop
    /// replaying a trace file's arrivals).
    pub mode: &'static str,
    /// `single`, `stages` or `sweep`.
    pub shape: &'static str,
    /// Most users in any step (closed loop).
    pub users: Option<u32>,
    /// Highest rate of any step, arrivals per second (open loop).
    pub rate: Option<f64>,
    /// Agents.
    pub agents: u32,
    /// Planned seconds of new requests.
    pub planned_duration_s: f64,
    /// Seconds left out of statistics at the start of each step.
    pub warmup_s: f64,
    /// Seconds in-flight requests may take after the last step.
    pub drain_s: f64,
    /// Reporting interval in seconds.
    pub interval_s: f64,
    /// Pause after each answer, seconds (closed loop).
    pub think_s: Option<f64>,
    /// Each user's cadence, seconds (closed loop with a pace).
    pub pace_s: Option<f64>,
    /// `constant`, `poisson` or `gamma` (open loop).
    pub arrival: Option<&'static str>,
    /// Gamma shape (open loop, gamma arrivals).
    pub burstiness: Option<f64>,
    /// Most requests in flight over all agents (open loop).
    pub max_concurrency: Option<u32>,
    /// Streaming requests.
    pub stream: bool,
    /// Output token limit per request.
    pub max_tokens: Option<u32>,
    /// The prompt dataset.
    pub prompts: String,
    /// Most requests the run sends (`load.requests`): it ends at this count
    /// or at its duration, whichever comes first.
    pub requests: Option<u64>,
    /// What the command line changed in the profile (`--users 8`,
    /// `--set load.duration=30s`), in the order given.
    pub overrides: Vec<String>,
    /// The trace replayed (mode `trace`).
    pub trace: Option<TraceInfo>,
}

/// A replayed trace.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct TraceInfo {
    /// The file, as the profile names it.
    pub file: String,
    /// `mooncake` (JSONL) or `azure` (CSV).
    pub format: &'static str,
    /// Playback speed: 2 replays twice as fast.
    pub speed: f64,
    /// Tokens per hash-id block (Mooncake).
    pub block_size: u32,
    /// Rows replayed (after the window and the count), one request each.
    pub requests: u64,
}

impl TraceInfo {
    /// In words: `a replay of 40 requests from trace.jsonl at 2× speed`.
    pub fn describe(&self) -> String {
        format!(
            "a replay of {} request{} from {} at {}× speed",
            self.requests,
            if self.requests == 1 { "" } else { "s" },
            self.file,
            self.speed
        )
    }
}

/// Request outcomes.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Requests {
    /// Completed successfully.
    pub ok: u64,
    /// Failed (see `errors`).
    pub failed: u64,
    /// Abandoned at the end or at an interrupt.
    pub cancelled: u64,
    /// Sent late by the agent: scheduling lag over 5 ms (the agent could
    /// not keep time).
    pub late: u64,
    /// Successful requests written more than 5 ms after the agent
    /// dispatched them: they waited on this side for a connection to open
    /// or for a `max_concurrency` slot.
    pub held: u64,
    /// Scheduled but never sent (the load ended while they waited).
    pub dropped: u64,
    /// `failed / (ok + failed)`.
    pub error_rate: f64,
}

/// What the warm-ups held.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Warmup {
    /// Seconds at the start of each step.
    pub per_step_s: f64,
    /// Successful requests left out.
    pub ok: u64,
    /// Failed requests left out.
    pub failed: u64,
}

/// One error class.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ErrorInfo {
    /// Failed requests of this class.
    pub count: u64,
    /// The first message seen.
    pub first_message: Option<String>,
}

/// Rates over the measured time.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Throughput {
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Requests sent per second (successful, failed and cancelled): for an
    /// open-loop load, the arrival rate achieved.
    pub sent_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Input plus output tokens per second.
    pub total_tokens_per_s: f64,
    /// Output tokens per minute.
    pub output_tokens_per_minute: f64,
    /// Input plus output tokens per minute (TPM, as rate limits count it).
    pub tpm: f64,
}

/// One prompt class's requests over the measured time (warm-ups left out,
/// as in the run-wide figures; see `classes_whole_run`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ClassSummary {
    /// The class label, such as `short`.
    pub class: String,
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub failed: u64,
    /// Failed requests by error class.
    pub errors: BTreeMap<String, u64>,
    /// Input tokens, in total.
    pub input_tokens: u64,
    /// Output tokens, in total.
    pub output_tokens: u64,
    /// Input plus output tokens per minute over `duration_s`.
    pub tpm: f64,
    /// Output tokens per second over `duration_s`.
    pub output_tokens_per_s: f64,
    /// Input tokens per request.
    pub tokens_in: MetricSummary,
    /// Output tokens per request.
    pub tokens_out: MetricSummary,
    /// Time to first token.
    pub ttft: MetricSummary,
    /// Inter-token latency.
    pub itl: MetricSummary,
    /// Time per output token.
    pub tpot: MetricSummary,
    /// End-to-end latency.
    pub e2e: MetricSummary,
    /// Its requests that met every objective, when the run has some.
    pub goodput: Option<Goodput>,
}

impl ClassSummary {
    /// One metric's statistics, for the metrics a class keeps.
    pub fn metric(&self, metric: Metric) -> Option<&MetricSummary> {
        match metric {
            Metric::Ttft => Some(&self.ttft),
            Metric::Itl => Some(&self.itl),
            Metric::Tpot => Some(&self.tpot),
            Metric::E2e => Some(&self.e2e),
            Metric::InputTokens => Some(&self.tokens_in),
            Metric::OutputTokens => Some(&self.tokens_out),
            _ => None,
        }
    }
}

/// One step of the load.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StepSummary {
    /// Position in the load.
    pub index: usize,
    /// Users or arrivals per second.
    pub level: f64,
    /// The level in words.
    pub label: String,
    /// When it began, seconds after the start.
    pub start_s: f64,
    /// How long it lasted.
    pub duration_s: f64,
    /// How much of it was measured (the warm-up left out).
    pub measured_s: f64,
    /// Its request outcomes.
    pub requests: Requests,
    /// Its rates.
    pub throughput: Throughput,
    /// Its statistics.
    pub metrics: Metrics,
    /// Its requests that met every objective, when the run has some.
    pub goodput: Option<Goodput>,
}

/// Throughput and latency at one load.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct LoadRow {
    /// Users or arrivals per second.
    pub level: f64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// TTFT median, ms.
    pub ttft_p50_ms: f64,
    /// TTFT 95th percentile, ms.
    pub ttft_p95_ms: f64,
    /// ITL median, ms.
    pub itl_p50_ms: f64,
    /// E2E 95th percentile, ms.
    pub e2e_p95_ms: f64,
    /// Failed share of requests.
    pub error_rate: f64,
}

/// Where the server saturates.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Knee {
    /// A step met the rule.
    pub found: bool,
    /// That step.
    pub step: Option<usize>,
    /// Its load.
    pub level: Option<f64>,
    /// Its load in words.
    pub label: Option<String>,
    /// The highest throughput of any step, requests per second.
    pub max_requests_per_s: f64,
    /// TTFT p95 at the lowest load, ms.
    pub baseline_ttft_p95_ms: f64,
    /// The rule.
    pub rule: &'static str,
}

/// Whether the client was the limit.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Client {
    /// The results understate the server.
    pub bound: bool,
    /// Why.
    pub reasons: Vec<String>,
    /// Scheduling lag p90 over the measured run, ms.
    pub schedule_lag_p90_ms: f64,
    /// Scheduling lag p99 over the measured run, ms.
    pub schedule_lag_p99_ms: f64,
    /// How late the agents' load runtime ran a 10 ms tick, p90 over the
    /// measured run, ms: the time their threads waited for a CPU or for
    /// busy workers, and so how late any timestamp they took may be.
    pub runtime_delay_p90_ms: f64,
    /// The same, p99, ms.
    pub runtime_delay_p99_ms: f64,
    /// The busiest agent's mean CPU share (its own threads) while the load
    /// ran.
    pub cpu_max: f64,
}

/// One agent's part.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct AgentSummary {
    /// Name.
    pub name: String,
    /// Position.
    pub index: u32,
    /// Most users it ran in any step (closed loop).
    pub users: u32,
    /// Its successful requests.
    pub ok: u64,
    /// Its failed requests.
    pub failed: u64,
    /// Reports merged from it.
    pub reports: u64,
    /// Highest interval it reported.
    pub last_interval: Option<u64>,
    /// `finished`, `lost`, `failed` or `unfinished`.
    pub end: &'static str,
    /// Why it did not finish, when it did not.
    pub reason: Option<String>,
    /// When it was lost, seconds after the start: its last contact with
    /// the controller, not when that was noticed.
    pub lost_at_s: Option<f64>,
    /// Requests it had in flight at its last report, when it was lost.
    pub lost_requests: u64,
    /// Why it ended its load early though it finished, such as its
    /// dead-man limit.
    pub stopped_early: Option<String>,
    /// Its start minus the planned start, ms (controller clock).
    pub start_skew_ms: Option<f64>,
    /// Its estimate of controller clock minus its clock, ms.
    pub clock_offset_ms: Option<f64>,
    /// Round trip of that estimate, ms: the offset is good to half of it.
    pub clock_rtt_ms: Option<f64>,
    /// Mean share of its cores its process used while the load ran.
    pub cpu: f64,
    /// Where it connected from.
    pub peer: Option<String>,
    /// Its final totals disagreed with its reports.
    pub mismatch: Option<String>,
    /// Its software version.
    pub version: String,
}

/// Agents lost mid-run.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Lost {
    /// Their names.
    pub agents: Vec<String>,
    /// Their share of the users.
    pub users_share: f64,
    /// Their share of the planned user-seconds that was not run: the sum of
    /// `users × (planned duration − time lost)` over the planned total.
    pub load_share: f64,
    /// Requests they had in flight at their last report: sent, and
    /// counted nowhere else (neither ok, failed nor cancelled). Requests
    /// sent after that report are not known to anyone.
    pub requests: u64,
}

/// When the agents began, against the planned start.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct StartSkew {
    /// Agents that said when they began.
    pub measured: usize,
    /// Largest distance of an agent's start from the planned start, ms.
    pub max_ms: Option<f64>,
    /// Latest start minus earliest start, ms.
    pub spread_ms: Option<f64>,
}

/// One interval over all agents.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct IntervalSummary {
    /// Index.
    pub interval: u64,
    /// End of the interval, seconds after the start.
    pub end_s: f64,
    /// Its length, seconds: the run's interval, or less for the last,
    /// which ends when the load ended. Its rates divide by this.
    pub length_s: f64,
    /// Seconds of it in which any agent had a request in flight (from
    /// dispatch to its end); none when the agents did not say.
    pub present_s: Option<f64>,
    /// The step it belongs to; none after the last (the drain).
    pub step: Option<usize>,
    /// It is a warm-up, left out of statistics.
    pub warmup: bool,
    /// Users running (closed loop) or requests in flight (open loop) at its
    /// end.
    pub active: u32,
    /// Successful requests completed in it.
    pub ok: u64,
    /// Failed requests in it.
    pub failed: u64,
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// TTFT median, ms.
    pub ttft_p50_ms: Option<f64>,
    /// TTFT 95th percentile, ms.
    pub ttft_p95_ms: Option<f64>,
    /// ITL median, ms.
    pub itl_p50_ms: Option<f64>,
    /// E2E 95th percentile, ms.
    pub e2e_p95_ms: Option<f64>,
    /// Scheduling lag 99th percentile, ms.
    pub schedule_lag_p99_ms: Option<f64>,
    /// The busiest agent's CPU share.
    pub cpu: f64,
}

impl IntervalSummary {
    /// Its start, seconds after the start of the run.
    pub fn start_s(&self) -> f64 {
        self.end_s - self.length_s
    }
}

/// TTFT and TPOT graded against the run's bands: labels for people, never
/// a verdict (thresholds decide the exit code).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Grading {
    /// The statistic graded, such as `p95`.
    pub statistic: &'static str,
    /// Time to first token; none without samples.
    pub ttft: Option<Graded>,
    /// Time per output token; none without samples.
    pub tpot: Option<Graded>,
}

impl Grading {
    /// The graded figures by name (`TTFT`, `TPOT`), those with samples.
    pub fn graded(&self) -> Vec<(&'static str, &Graded)> {
        [("TTFT", &self.ttft), ("TPOT", &self.tpot)]
            .into_iter()
            .filter_map(|(name, x)| x.as_ref().map(|x| (name, x)))
            .collect()
    }
}

/// One figure and its grade.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Graded {
    /// The statistic's value, ms.
    pub value_ms: f64,
    /// `good`, `acceptable` or `poor`.
    pub grade: crate::profile::Grade,
    /// Good under this, ms.
    pub good_under_ms: f64,
    /// Acceptable under this, ms; poor from it on.
    pub acceptable_under_ms: f64,
}

/// The metric contract, stated in every summary.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Definitions {
    /// t0.
    pub t0: &'static str,
    /// Intended start.
    pub intended_start: &'static str,
    /// TTFT.
    pub ttft: &'static str,
    /// ITL.
    pub itl: &'static str,
    /// Chunk gap.
    pub chunk_gap: &'static str,
    /// TPOT.
    pub tpot: &'static str,
    /// E2E.
    pub e2e: &'static str,
    /// Latency from the intended start.
    pub from_intended: &'static str,
    /// Client queue.
    pub client_queue: &'static str,
    /// Scheduling lag.
    pub schedule_lag: &'static str,
    /// Connect.
    pub connect: &'static str,
    /// Tokens.
    pub tokens: &'static str,
    /// Throughput.
    pub throughput: &'static str,
    /// Warm-up.
    pub warmup: &'static str,
    /// Knee.
    pub knee: &'static str,
    /// Prefix cache.
    pub prefix_cache: &'static str,
    /// Client-bound.
    pub client_bound: &'static str,
    /// Percentiles.
    pub percentiles: &'static str,
    /// Failures.
    pub failures: &'static str,
    /// Server metrics.
    pub server_metrics: &'static str,
    /// Server queue percentiles.
    pub server_queue: &'static str,
    /// Findings.
    pub findings: &'static str,
    /// Goodput.
    pub goodput: &'static str,
    /// Capacity at SLO.
    pub capacity: &'static str,
    /// Thresholds.
    pub thresholds: &'static str,
    /// Grades.
    pub grades: &'static str,
    /// Prompt classes.
    pub classes: &'static str,
    /// The per-turn table of sessions.
    pub turns: &'static str,
    /// The metrics pushed over OTLP.
    pub metrics_push: &'static str,
}

/// The definitions every summary carries.
pub const DEFINITIONS: Definitions = Definitions {
    t0: "just before the request is written, after a connection is available; times are on the agent's monotonic clock",
    intended_start: "when the schedule meant the request to start: the arrival time (open loop), the user's next tick (closed loop with a pace), or the moment the user was ready after its think time (closed loop)",
    ttft: "time to first token: t0 to the first byte of the first stream event carrying generated text; a byte's time is when this host received it: the kernel's receive time of the last packet taken by the read that returned it (on Linux; elsewhere when that read returned)",
    itl: "inter-token latency, one sample per generated token after those of the first event: an event that carried k tokens, after a gap g since the previous event that carried tokens, gives k samples of g/k (in whole microseconds, g mod k of them one more, so that they add up to g); an event with no text or no token gives none, and its time counts in the next gap; an event's tokens are the server's running count when every event carries one (vLLM's stream_options.continuous_usage_stats), else the client tokenizer's count of the event's text, else, when the server's total exceeds the events, one per event and the rest shared among the events after the first in proportion to their bytes of text, else one per event",
    chunk_gap: "each gap between the first bytes of consecutive stream events that carried tokens, whatever their number (one sample per gap); events with no text or no token are skipped and their time counts in the next gap; it equals ITL when every event carries one token",
    tpot: "time per output token: (e2e - ttft) / (output_tokens - 1), one sample per request with at least two output tokens",
    e2e: "end to end: t0 to the arrival of the last byte of the response body",
    from_intended: "ttft_intended and e2e_intended count from the intended start instead of t0, so time spent waiting to be sent (a stalled server holding a paced user back, a concurrency cap, a slow client) is part of the latency: no coordinated omission",
    client_queue: "intended start to t0: waiting for a turn, a concurrency slot or a connection, or (closed loop) waiting out a connect back-off or the server's Retry-After after the user's previous request failed",
    schedule_lag: "from when the request could first be sent (its intended start, or for a paced user still busy with its previous request, the moment it was free, or for a user waiting out a connect back-off or a Retry-After, the end of that wait) to the moment the agent released it: how well the agent kept time",
    connect: "time to open a new connection (TCP, and TLS for https), one sample per connection opened by a successful request",
    tokens: "output tokens per request: the server's own count when given (OpenAI usage with stream_options.include_usage, Ollama eval_count, TGI details.generated_tokens, an http-json token pointer), else the client tokenizer's count of the generated text (target.tokenizer, special tokens left out), else counted SSE or NDJSON events carrying text, else whitespace-separated words of the answer; input tokens: the server's count, else the client tokenizer's count of the prompt; tokens.source and tokens.input_source say which, and every output-token figure (TPOT, tokens/s, TPM, classes) uses tokens.source; tokens.agreement compares each pair of sources over the requests that had both",
    throughput: "totals divided by measured_s, the time from the start until the last request ended less the warm-ups; tpm counts input and output tokens per minute; a step's rates divide by its measured time",
    warmup: "the first warmup seconds of every step are left out of every statistic and counted apart under warmup",
    knee: crate::analysis::KNEE_RULE,
    prefix_cache: "server_hit_rate: prompt tokens the server found in its prefix cache over the prompt tokens it looked up, from the increase of its counters over the measured time (vLLM's vllm:prefix_cache_hits_total and vllm:prefix_cache_queries_total, which llm-sim exports too), else the mean of its hit-rate gauge (vllm:gpu_prefix_cache_hit_rate); per interval the same from that interval's increases (server.intervals[].prefix_cache_hit_rate); cached_share: the prompt tokens the answers said came from the cache (OpenAI usage.prompt_tokens_details.cached_tokens, llama.cpp timings.cache_n) over the input tokens of the successful requests whose answers said; workload.shared_share: the share of the generated prompts' tokens that lay in their group's shared prefix, the most a prefix cache can serve once every group has been seen",
    client_bound: "the run is client-bound, and its results understate the server, when it had successful requests and the agents were starved (their load runtime ran a 10 ms tick more than 5 ms late at p90, or 50 ms at p99: the host did not give them the CPU they needed), or most requests were sent late (scheduling lag p90 above both 5 ms and 2% of the median end-to-end time) or some very late (p99 above ten times that), or an agent's own threads used more than 90% of its cores; a client-bound run that measured something is an invalid measurement (exit 98) unless thresholds.allow_client_bound",
    percentiles: "HDR histograms at 3 significant figures, merged exactly across agents by adding counts; never averaged",
    server_metrics: "the server's own Prometheus page, scraped every server_metrics.interval and mapped from vLLM, TGI, llama.cpp, DCGM and llm-sim names; gauges are averaged over a window, counters and histograms are differenced between the last scrapes at or before its ends; figures cover the measured time (from the first step's warm-up end to the last scrape)",
    server_queue: "the server's time from a request's arrival to its admission into the batch, over the requests admitted in the measured time: with source spans, each request's own value from the server's spans of the run (llm-sim's queue span, vLLM's gen_ai.latency.time_in_queue), read back from the trace store after the run, to the microsecond, percentiles as HDR reads them (the ceil(q*n)-th smallest); with source buckets, from the increase of each bucket of the server's queue-time histogram, interpolated linearly within the bucket the rank falls in, as PromQL's histogram_quantile does (the value can be off by up to that bucket's width; bucket_from_ms and bucket_to_ms give it)",
    findings: "queueing: the server's mean queue time is at least 25% of the client's mean TTFT (inferred without server data when TTFT p50 grows 2x across steps while TPOT p50 grows at most 1.5x); gpu_idle: the accelerator's busy time (agent GPU readings, else DCGM, else the server's busy-time counter, each interval's utilisation times its length) over the time the agents had requests in flight (their millisecond presence maps, ORed over agents) leaves it idle at least 30% of that time; memory_pressure: the server's preemption counter rose over the measured time, or its KV cache was at least 90% full (interval mean) in an interval where requests waited; vram_high: accelerator memory in use (DCGM FB_USED over FB_USED + FB_FREE, else the agents' NVML readings) above 90% in an interval; memory_bound_decode: DCGM memory-bandwidth activity averaged at least 70% while compute activity averaged under 50% over the intervals with requests running; prefix_cache_low: the prompts were built with shared prefixes and the prefix-cache hit rate (the server's, else the answers' cached share) stayed under 50% of prefix_cache.workload.shared_share; cold_start: for some prompt class, the first interval with its successes has a TTFT p95 at least 3x and at least 100 ms above the median of the class's TTFT p95 over its step's later intervals (at least three); saturation: the knee; capacity: the capacity rule; client_bound: the client-bound rule; errors: the top three classes and the interval each began",
    failures: "a failed request is counted by error class (connect, timeout, http_<status>, stream, malformed) and is never a latency sample; each attempt counts once (a closed-loop user retries a failed connection after a back-off of 50 ms doubling to 2 s, and after a 429 or 503 with Retry-After waits what the server asked when target.retry_after is on, up to target.retry_after_max); cancelled requests were abandoned at the end of the drain time or at an interrupt",
    goodput: "a request is good when it succeeded and met every objective of [slo]: TTFT (a request that streamed nothing is held to it by its end-to-end time), TPOT (requests of one token meet it), E2E, and every gap between tokens; each agent decides per request; goodput.ratio is good requests over the requests that ended (successes and failures), and over a class's successes for a class; rates divide by measured_s",
    capacity: "for stages and sweeps with [slo]: the highest load at which this step and every lower one had at least [slo] ratio (default 95%) of their requests good",
    thresholds: "each [thresholds] entry judged on the merged, exact figures of the measured time (or of a class, or of a step); a failed one exits 99; one with abort = true is also judged as each interval completes, on everything merged so far, and stops the load when it breaks (after its grace time)",
    grades: "TTFT and TPOT of successful requests, by the statistic of [grades] (default p95), are good under the good bound, acceptable under the acceptable bound and poor from it on; default bounds: TTFT 500 ms and 1 s, TPOT 50 ms and 100 ms; a label only, never a reason to fail",
    metrics_push: "with [metrics] otlp = true (or OTEL_METRICS_EXPORTER=otlp) the figures of the measured time are pushed over OTLP every metrics interval and once more after the last report is merged, so the receiver's last values equal this summary's: cumulative from the run's start, stampede.run_id on every point; stampede.requests (by stampede.outcome, failures by error.type) and stampede.tokens (by gen_ai.token.type) are monotonic sums; stampede.ttft, .itl, .chunk_gap, .tpot, .e2e, .client_queue (seconds) and the GenAI conventions' gen_ai.client.operation.duration (e2e), gen_ai.client.token.usage (tokens per request), gen_ai.client.operation.time_to_first_chunk (ttft) and .time_per_output_chunk (chunk_gap), the last two for streamed runs only, are explicit-bucket histograms re-bucketed from the HDR histograms (a bucket of the HDR histogram counts at the first bound holding its lowest value), with the exact count and HDR's min, max and sum; stampede.active_users and stampede.agents are gauges; ok and failed count pushes",
    classes: "file and synthetic prompts are classed by length, in tokens of the run's tokenizer when it has one (short up to 100 tokens, medium up to 500, long beyond), else in characters (short up to 400, medium up to 2,000, long beyond), as classes_by says; a JSONL line's own class wins; built-in prompts are labelled by their set; each row counts the requests that ended in the measured time, successes and failures (a class whose requests all failed has a row), and its rates divide by measured_s",
    turns: "with sessions ([prompts] sessions = true) each closed-loop user plays one conversation at a time; each turn sends the system prompt, the earlier user turns and the server's own answers to them, then the new user turn, so a turn's input tokens hold the whole history; turns rows count the successful requests that ended in the measured time by their turn number (from 1; turns past 16 are counted in turn 16, marked and_later); a failed turn ends its session and counts only in the run's failures",
};

/// The run's per-request objectives.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct SloSummary {
    /// Time to first token at most this, ms.
    pub ttft_ms: Option<f64>,
    /// Time per output token at most this, ms.
    pub tpot_ms: Option<f64>,
    /// End to end at most this, ms.
    pub e2e_ms: Option<f64>,
    /// Every gap between tokens at most this, ms.
    pub itl_ms: Option<f64>,
    /// Share of good requests a step must reach to count as held.
    pub ratio: f64,
    /// The objectives in words.
    pub words: String,
}

/// Requests that met every objective (goodput).
#[derive(Clone, Copy, Debug, Serialize, schemars::JsonSchema)]
pub struct Goodput {
    /// Successful requests that met every objective.
    pub requests: u64,
    /// Their share of the requests that ended (successes and failures; for
    /// a prompt class, of its successes).
    pub ratio: f64,
    /// Good requests per second.
    pub requests_per_s: f64,
    /// Their output tokens per second.
    pub output_tokens_per_s: f64,
}

/// The largest load the server held with enough good requests.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Capacity {
    /// Some step was held.
    pub found: bool,
    /// The step, by index.
    pub step: Option<usize>,
    /// Its level (users or arrivals per second).
    pub level: Option<f64>,
    /// Its level in words.
    pub label: Option<String>,
    /// Its good requests per second.
    pub goodput_requests_per_s: Option<f64>,
    /// Its goodput ratio.
    pub ratio: Option<f64>,
    /// The rule.
    pub rule: String,
}

/// One threshold and how it fared.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ThresholdResult {
    /// The figure and where it was read, as the profile names it
    /// (`steps.*` expanded to one result per step).
    pub key: String,
    /// The condition, as read: `< 500 ms`.
    pub condition: String,
    /// The figure's value, in its unit; absent when the run has none.
    pub value: Option<f64>,
    /// `ms`, `tokens`, `/s` or `share`.
    pub unit: &'static str,
    /// It held.
    pub passed: bool,
    /// The check in words: `ttft.p95 = 812.3 ms, limit < 500 ms`.
    pub message: String,
    /// It stops the run when it fails.
    pub abort: bool,
}
