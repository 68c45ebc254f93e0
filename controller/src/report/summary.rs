//! `summary.json`: the run's figures, its verdict, and the definitions of
//! its metrics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use stampede_proto::{Metric, Unit};

use crate::coordinator::{AgentEnd, Collected};
use crate::profile::Profile;
use crate::stats::Stats;

/// Version of the summary format. Bumped on incompatible changes.
pub const SCHEMA: &str = "stampede.summary/1";

/// How a run went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every check held.
    Passed,
    /// Requests failed beyond the allowed rate, or none succeeded.
    Failed,
    /// Some of the run's data is missing (an agent was lost).
    Degraded,
    /// An agent was lost and the profile says to abort.
    Aborted,
    /// Stopped by the operator.
    Interrupted,
}

/// The verdict and why.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Overall status.
    pub status: Status,
    /// Process exit code: 0 passed, 3 failed, 4 degraded, 5 aborted, 130
    /// interrupted.
    pub exit_code: u8,
    /// Every reason the run did not simply pass.
    pub reasons: Vec<String>,
}

/// Statistics of one metric, in its reporting unit.
#[derive(Clone, Debug, Serialize)]
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
    fn of(metric: Metric, s: &Stats) -> MetricSummary {
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

/// Every metric, by name.
#[derive(Clone, Debug, Serialize)]
pub struct Metrics {
    /// Time to first token.
    pub ttft: MetricSummary,
    /// Inter-token latency.
    pub itl: MetricSummary,
    /// Time per output token.
    pub tpot: MetricSummary,
    /// End-to-end latency.
    pub e2e: MetricSummary,
    /// Client-side queueing.
    pub client_queue: MetricSummary,
    /// Connection setup.
    pub connect: MetricSummary,
    /// Input tokens per request.
    pub input_tokens: MetricSummary,
    /// Output tokens per request.
    pub output_tokens: MetricSummary,
}

/// The summary file.
#[derive(Clone, Debug, Serialize)]
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
    /// The verdict.
    pub verdict: Verdict,
    /// Request outcomes.
    pub requests: Requests,
    /// Failed requests by class.
    pub errors: BTreeMap<String, ErrorInfo>,
    /// Rates over the measured duration.
    pub throughput: Throughput,
    /// Token totals and their source.
    pub tokens: Tokens,
    /// Latency and token statistics of successful requests.
    pub metrics: Metrics,
    /// Each agent.
    pub agents: Vec<AgentSummary>,
    /// Agents lost mid-run, and how much of the load went with them.
    pub lost: Lost,
    /// How far apart the agents really began.
    pub start_skew: StartSkew,
    /// One row per interval.
    pub intervals: Vec<IntervalSummary>,
    /// What each figure means.
    pub definitions: Definitions,
}

/// Which profile ran.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileInfo {
    /// Its name.
    pub name: String,
    /// Its file.
    pub path: String,
    /// Its seed.
    pub seed: u64,
}

/// The server under test.
#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
pub struct LoadInfo {
    /// Load model.
    pub mode: &'static str,
    /// Closed-loop users over all agents.
    pub users: u32,
    /// Agents.
    pub agents: u32,
    /// Planned seconds of new requests.
    pub planned_duration_s: f64,
    /// Seconds in-flight requests may take after that.
    pub drain_s: f64,
    /// Reporting interval in seconds.
    pub interval_s: f64,
    /// Streaming requests.
    pub stream: bool,
    /// Output token limit per request.
    pub max_tokens: Option<u32>,
    /// The prompt dataset.
    pub prompts: String,
}

/// Request outcomes.
#[derive(Clone, Debug, Serialize)]
pub struct Requests {
    /// Completed successfully.
    pub ok: u64,
    /// Failed (see `errors`).
    pub failed: u64,
    /// Abandoned at the end or at an interrupt.
    pub cancelled: u64,
    /// `failed / (ok + failed)`.
    pub error_rate: f64,
}

/// One error class.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorInfo {
    /// Failed requests of this class.
    pub count: u64,
    /// The first message seen.
    pub first_message: Option<String>,
}

/// Rates over the measured duration.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// Successful requests per second.
    pub requests_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Input plus output tokens per second.
    pub total_tokens_per_s: f64,
    /// Output tokens per minute.
    pub output_tokens_per_minute: f64,
    /// Input plus output tokens per minute (TPM, as rate limits count it).
    pub tpm: f64,
}

/// Token totals.
#[derive(Clone, Debug, Serialize)]
pub struct Tokens {
    /// Input tokens reported by the server.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// `server usage`, `counted stream events`, or `mixed`.
    pub source: &'static str,
    /// Requests whose counts came from the server's usage.
    pub from_usage: u64,
    /// Requests whose output tokens were counted from stream events.
    pub counted: u64,
}

/// One agent's part.
#[derive(Clone, Debug, Serialize)]
pub struct AgentSummary {
    /// Name.
    pub name: String,
    /// Position.
    pub index: u32,
    /// Users it ran.
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
    /// When it was declared lost, seconds after the start.
    pub lost_at_s: Option<f64>,
    /// Its start minus the planned start, ms (controller clock).
    pub start_skew_ms: Option<f64>,
    /// Its estimate of controller clock minus its clock, ms.
    pub clock_offset_ms: Option<f64>,
    /// Round trip of that estimate, ms: the offset is good to half of it.
    pub clock_rtt_ms: Option<f64>,
    /// Where it connected from.
    pub peer: Option<String>,
    /// Its final totals disagreed with its reports.
    pub mismatch: Option<String>,
    /// Its software version.
    pub version: String,
}

/// Agents lost mid-run.
#[derive(Clone, Debug, Serialize)]
pub struct Lost {
    /// Their names.
    pub agents: Vec<String>,
    /// Their share of the users.
    pub users_share: f64,
    /// Their share of the planned user-seconds that was not run: the sum of
    /// `users × (planned duration − time lost)` over the planned total.
    pub load_share: f64,
}

/// When the agents began, against the planned start.
#[derive(Clone, Debug, Serialize)]
pub struct StartSkew {
    /// Agents that said when they began.
    pub measured: usize,
    /// Largest distance of an agent's start from the planned start, ms.
    pub max_ms: Option<f64>,
    /// Latest start minus earliest start, ms.
    pub spread_ms: Option<f64>,
}

/// One interval over all agents.
#[derive(Clone, Debug, Serialize)]
pub struct IntervalSummary {
    /// Index.
    pub interval: u64,
    /// End of the interval, seconds after the start.
    pub end_s: f64,
    /// Users running at its end.
    pub active_users: u32,
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
}

/// The metric contract, stated in every summary.
#[derive(Clone, Debug, Serialize)]
pub struct Definitions {
    /// t0.
    pub t0: &'static str,
    /// TTFT.
    pub ttft: &'static str,
    /// ITL.
    pub itl: &'static str,
    /// TPOT.
    pub tpot: &'static str,
    /// E2E.
    pub e2e: &'static str,
    /// Client queue.
    pub client_queue: &'static str,
    /// Connect.
    pub connect: &'static str,
    /// Tokens.
    pub tokens: &'static str,
    /// Throughput.
    pub throughput: &'static str,
    /// Percentiles.
    pub percentiles: &'static str,
    /// Failures.
    pub failures: &'static str,
}

/// The definitions every summary carries.
pub const DEFINITIONS: Definitions = Definitions {
    t0: "just before the request is written, after a connection is available; times are on the agent's monotonic clock",
    ttft: "time to first token: t0 to the first byte of the first stream event carrying generated text",
    itl: "inter-token latency: each gap between the first bytes of consecutive stream events carrying generated text (one sample per gap)",
    tpot: "time per output token: (e2e - ttft) / (output_tokens - 1), one sample per request with at least two output tokens",
    e2e: "end to end: t0 to the end of the response body",
    client_queue: "intended start to t0: waiting for a user slot or a connection (closed loop: connection setup and scheduling lag)",
    connect: "time to open a new connection (TCP, and TLS for https), one sample per connection opened by a successful request",
    tokens: "the server's usage figures when given (OpenAI stream_options.include_usage), else counted stream events carrying text; tokens.source says which",
    throughput: "totals divided by duration_s, the time from the start until the last request ended; tpm counts input and output tokens per minute",
    percentiles: "HDR histograms at 3 significant figures, merged exactly across agents by adding counts; never averaged",
    failures: "a failed request is counted by error class (connect, timeout, http_<status>, stream, malformed) and is never a latency sample; cancelled requests were abandoned at the end of the drain time or at an interrupt",
};

/// What the summary needs besides the collected data.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    /// Run identifier.
    pub run_id: &'a str,
    /// The profile as run.
    pub profile: &'a Profile,
    /// Base URL requests went to.
    pub target_url: &'a str,
    /// The built-in simulator was the target.
    pub simulated: bool,
    /// Model name sent.
    pub model: &'a str,
}

fn verdict(profile: &Profile, c: &Collected, requests: &Requests) -> Verdict {
    let mut reasons = Vec::new();
    let mut status = Status::Passed;
    let attempted = requests.ok + requests.failed;
    if requests.ok == 0 {
        reasons.push(if attempted == 0 {
            "no request completed".to_owned()
        } else {
            format!("no request succeeded: all {attempted} failed")
        });
        status = Status::Failed;
    } else if requests.error_rate > profile.thresholds.max_error_rate {
        reasons.push(format!(
            "{} of {attempted} requests failed ({:.2}%), above the allowed {:.2}% (thresholds.max_error_rate)",
            requests.failed,
            requests.error_rate * 100.0,
            profile.thresholds.max_error_rate * 100.0
        ));
        status = Status::Failed;
    }
    for a in &c.agents {
        match &a.end {
            AgentEnd::Finished => {}
            AgentEnd::Lost(why) | AgentEnd::Failed(why) => reasons.push(format!("agent {} ended early: {why}", a.name)),
            AgentEnd::Unfinished => reasons.push(format!("agent {} did not finish", a.name)),
        }
    }
    let lost = c.agents.iter().any(|a| a.end != AgentEnd::Finished);
    let mismatched = c.merger.agents().iter().any(|a| a.mismatch.is_some());
    if c.unreadable > 0 {
        reasons.push(format!("{} reports could not be read and are left out", c.unreadable));
    }
    if mismatched {
        reasons.push("an agent's final totals disagree with its reports (see agents[].mismatch)".to_owned());
    }
    if status == Status::Passed && (lost || mismatched || c.unreadable > 0) {
        status = Status::Degraded;
    }
    if let Some(why) = &c.aborted {
        reasons.insert(0, format!("aborted: {why}"));
        status = Status::Aborted;
    }
    if c.interrupted {
        reasons.insert(0, "interrupted".to_owned());
        status = Status::Interrupted;
    }
    let exit_code = match status {
        Status::Passed => 0,
        Status::Failed => 3,
        Status::Degraded => 4,
        Status::Aborted => 5,
        Status::Interrupted => 130,
    };
    Verdict {
        status,
        exit_code,
        reasons,
    }
}

fn lost(p: &Profile, c: &Collected) -> Lost {
    let users = f64::from(p.users());
    let planned = p.load.duration.as_secs_f64();
    let lost: Vec<_> = c.agents.iter().filter(|a| a.lost_at.is_some()).collect();
    let lost_users: u32 = lost.iter().map(|a| a.users).sum();
    let missing: f64 = lost
        .iter()
        .map(|a| f64::from(a.users) * (planned - a.lost_at.map_or(0.0, |t| t.as_secs_f64())).max(0.0))
        .sum();
    Lost {
        agents: lost.iter().map(|a| a.name.clone()).collect(),
        users_share: if users > 0.0 {
            f64::from(lost_users) / users
        } else {
            0.0
        },
        load_share: if users > 0.0 && planned > 0.0 {
            missing / (users * planned)
        } else {
            0.0
        },
    }
}

fn skew_ms(c: &Collected, began_at_us: Option<u64>) -> Option<f64> {
    Some((i128::from(began_at_us?) - i128::from(c.start_at_us?)) as f64 / 1e3)
}

fn start_skew(c: &Collected) -> StartSkew {
    let skews: Vec<f64> = c.agents.iter().filter_map(|a| skew_ms(c, a.began_at_us)).collect();
    let began: Vec<u64> = c.agents.iter().filter_map(|a| a.began_at_us).collect();
    StartSkew {
        measured: skews.len(),
        max_ms: skews.iter().map(|s| s.abs()).reduce(f64::max),
        spread_ms: match (began.iter().max(), began.iter().min()) {
            (Some(hi), Some(lo)) => Some((hi - lo) as f64 / 1e3),
            _ => None,
        },
    }
}

fn ms(stats: &Stats, v: u64) -> Option<f64> {
    (stats.count > 0).then(|| v as f64 / 1e3)
}

/// Builds the summary of a finished run.
pub fn build(ctx: &Context<'_>, c: &Collected) -> Summary {
    let p = ctx.profile;
    let m = &c.merger;
    let counters = m.counters();
    let failed = counters.failed();
    let attempted = counters.ok + failed;
    let requests = Requests {
        ok: counters.ok,
        failed,
        cancelled: counters.cancelled,
        error_rate: if attempted == 0 {
            0.0
        } else {
            failed as f64 / attempted as f64
        },
    };
    let elapsed_us = m.agents().iter().map(|a| a.elapsed_us).max().unwrap_or(0);
    let duration_s = if elapsed_us > 0 {
        elapsed_us as f64 / 1e6
    } else {
        p.load.duration.as_secs_f64()
    };
    let per_s = |n: u64| n as f64 / duration_s;
    let total_tokens = counters.input_tokens + counters.output_tokens;
    let stat = |metric| MetricSummary::of(metric, &Stats::of(m.histograms().get(metric)));
    let interval_s = p.report.interval.as_secs_f64();
    Summary {
        schema: SCHEMA,
        run_id: ctx.run_id.to_owned(),
        profile: ProfileInfo {
            name: p.name.clone(),
            path: p.path.display().to_string(),
            seed: p.seed,
        },
        target: TargetInfo {
            url: ctx.target_url.to_owned(),
            api: p.target.api.to_string(),
            model: ctx.model.to_owned(),
            simulated: ctx.simulated,
        },
        load: LoadInfo {
            mode: "users",
            users: p.users(),
            agents: p.agents.get(),
            planned_duration_s: p.load.duration.as_secs_f64(),
            drain_s: p.load.drain.as_secs_f64(),
            interval_s,
            stream: p.request.stream,
            max_tokens: p.request.max_tokens,
            prompts: p.prompt_source.clone(),
        },
        started_at: c.started_at.map(rfc3339),
        duration_s,
        verdict: verdict(p, c, &requests),
        errors: counters
            .errors
            .iter()
            .map(|(class, n)| {
                let info = ErrorInfo {
                    count: *n,
                    first_message: m.samples().get(class).cloned(),
                };
                (class.to_string(), info)
            })
            .collect(),
        requests,
        throughput: Throughput {
            requests_per_s: per_s(counters.ok),
            output_tokens_per_s: per_s(counters.output_tokens),
            total_tokens_per_s: per_s(total_tokens),
            output_tokens_per_minute: per_s(counters.output_tokens) * 60.0,
            tpm: per_s(total_tokens) * 60.0,
        },
        tokens: Tokens {
            input: counters.input_tokens,
            output: counters.output_tokens,
            source: match (counters.tokens_from_usage, counters.tokens_counted) {
                (_, 0) => "server usage",
                (0, _) => "counted stream events",
                _ => "mixed",
            },
            from_usage: counters.tokens_from_usage,
            counted: counters.tokens_counted,
        },
        metrics: Metrics {
            ttft: stat(Metric::Ttft),
            itl: stat(Metric::Itl),
            tpot: stat(Metric::Tpot),
            e2e: stat(Metric::E2e),
            client_queue: stat(Metric::ClientQueue),
            connect: stat(Metric::Connect),
            input_tokens: stat(Metric::InputTokens),
            output_tokens: stat(Metric::OutputTokens),
        },
        agents: c
            .agents
            .iter()
            .zip(m.agents())
            .map(|(a, merged)| {
                let (end, reason) = match &a.end {
                    AgentEnd::Finished => ("finished", None),
                    AgentEnd::Lost(r) => ("lost", Some(r.clone())),
                    AgentEnd::Failed(r) => ("failed", Some(r.clone())),
                    AgentEnd::Unfinished => ("unfinished", None),
                };
                AgentSummary {
                    name: a.name.clone(),
                    index: a.index,
                    users: a.users,
                    ok: merged.counters.ok,
                    failed: merged.counters.failed(),
                    reports: merged.reports,
                    last_interval: merged.last_interval,
                    end,
                    reason,
                    lost_at_s: a.lost_at.map(|t| t.as_secs_f64()),
                    start_skew_ms: skew_ms(c, a.began_at_us),
                    clock_offset_ms: a.clock_offset_us.map(|o| o as f64 / 1e3),
                    clock_rtt_ms: a.clock_rtt_us.map(|r| r as f64 / 1e3),
                    peer: a.peer.map(|p| p.to_string()),
                    mismatch: merged.mismatch.clone(),
                    version: a.version.clone(),
                }
            })
            .collect(),
        lost: lost(p, c),
        start_skew: start_skew(c),
        intervals: c
            .rows
            .iter()
            .map(|r| {
                let (ttft, itl, e2e) = (r.get(Metric::Ttft), r.get(Metric::Itl), r.get(Metric::E2e));
                IntervalSummary {
                    interval: r.interval,
                    end_s: (r.interval + 1) as f64 * interval_s,
                    active_users: r.counters.active_users,
                    ok: r.counters.ok,
                    failed: r.counters.failed(),
                    requests_per_s: r.counters.ok as f64 / interval_s,
                    output_tokens_per_s: r.counters.output_tokens as f64 / interval_s,
                    ttft_p50_ms: ms(ttft, ttft.p50),
                    ttft_p95_ms: ms(ttft, ttft.p95),
                    itl_p50_ms: ms(itl, itl.p50),
                    e2e_p95_ms: ms(e2e, e2e.p95),
                }
            })
            .collect(),
        definitions: DEFINITIONS,
    }
}

/// RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A run identifier: UTC start time, compact, then the profile name and a
/// short suffix that keeps runs started in the same second apart.
pub fn run_id(name: &str, now: SystemTime) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    let suffix = crate::plan::mix(u64::from(nanos) ^ u64::from(std::process::id())) & 0xffff;
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{stamp}-{name}-{suffix:04x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_sortable_and_safe() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let id = run_id("high load/x", t);
        assert!(id.starts_with("20261118T110640Z-"), "{id}");
        assert!(id.contains("-high-load-x-"), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
