//! `summary.json`: the run's figures, its verdict, and the definitions of
//! its metrics.

mod figures;
mod prefix;
mod queue;
mod server;
mod tokens;
mod types;

use std::time::{Duration, SystemTime};

use stampede_proto::{Counters, Metric};

pub mod trace;
pub use prefix::PrefixCache;
pub use queue::{QueueQuantile, QueueSource, ServerQueue};
pub use server::{Figure, GpuSummary, ServerInterval, ServerSummary};
pub use tokens::{Agreement, Disagreement, TokenizerInfo, Tokens};
pub use types::*;

use crate::analysis::{self, Level};
use crate::merge::{Place, Totals};
use crate::profile::{Model, Shape};
use crate::results::{AgentEnd, Collected, Spec};
use crate::server::Series;
use crate::server::spans::ServerSpans;
use crate::stats::Stats;

/// Every exit code of `controller run`, as the README's table lists them.
pub const EXIT_CODES: [(u8, &str); 9] = [
    (0, "passed"),
    (1, "the run could not be carried out"),
    (3, "requests failed"),
    (4, "degraded"),
    (5, "aborted: an agent was lost"),
    (64, "bad profile or flag"),
    (98, "invalid measurement"),
    (99, "a threshold failed"),
    (130, "interrupted"),
];

/// The verdict, the most serious case first: interrupted (130), aborted
/// by an agent's loss (5), an invalid measurement (98), a failed
/// threshold or a load stopped by one (99), failed requests (3), missing
/// data (4), else passed (0). Every reason is listed, whichever decides.
fn verdict(spec: &Spec, c: &Collected, s: &Summary) -> Verdict {
    let requests = &s.requests;
    let mut reasons = Vec::new();
    if c.interrupted {
        reasons.push("interrupted".to_owned());
    }
    if let Some(why) = &c.aborted {
        reasons.push(format!("aborted: {why}"));
    }
    // With nothing measured there is nothing to invalidate: the request
    // check says what happened.
    let invalid = s.client.bound && !spec.allow_client_bound && requests.ok > 0;
    if s.client.bound {
        let why = s.client.reasons.join("; ");
        reasons.push(if invalid {
            format!(
                "invalid measurement: the client, not the server, was the limit ({why}); the figures measure the client (thresholds.allow_client_bound accepts them)"
            )
        } else {
            format!("client-bound ({why}), allowed by thresholds.allow_client_bound: the figures understate the server")
        });
    }
    if let Some(why) = &c.stopped_by {
        reasons.push(format!("stopped early: {why}"));
    }
    let broken: Vec<&ThresholdResult> = s.thresholds.iter().filter(|t| !t.passed).collect();
    for t in &broken {
        reasons.push(format!("threshold failed: {}", t.message));
    }
    let attempted = requests.ok + requests.failed;
    let requests_failed = if requests.ok == 0 {
        reasons.push(if attempted == 0 {
            "no request completed".to_owned()
        } else {
            format!("no request succeeded: all {attempted} failed")
        });
        true
    } else if requests.error_rate > spec.max_error_rate {
        reasons.push(format!(
            "{} of {attempted} requests failed ({:.2}%), above the allowed {:.2}% (thresholds.max_error_rate)",
            requests.failed,
            requests.error_rate * 100.0,
            spec.max_error_rate * 100.0
        ));
        true
    } else {
        false
    };
    for a in &c.agents {
        match &a.end {
            AgentEnd::Finished => {
                if let Some(why) = &a.stopped_early {
                    reasons.push(format!("agent {} ended its load early: {why}", a.name));
                }
            }
            AgentEnd::Lost(why) | AgentEnd::Failed(why) => reasons.push(format!("agent {} ended early: {why}", a.name)),
            AgentEnd::Unfinished => reasons.push(format!("agent {} did not finish", a.name)),
        }
    }
    let lost = c
        .agents
        .iter()
        .any(|a| a.end != AgentEnd::Finished || a.stopped_early.is_some());
    // With no agent's part whole, there is no run to judge.
    let all_lost = !c.agents.is_empty() && c.agents.iter().all(|a| matches!(a.end, AgentEnd::Lost(_)));
    if all_lost && c.aborted.is_none() {
        reasons.push("every agent was lost: no part of the load ran to its end".to_owned());
    }
    let in_flight: u64 = c
        .agents
        .iter()
        .filter(|a| a.lost_at.is_some())
        .map(|a| u64::from(a.in_flight))
        .sum();
    if in_flight > 0 {
        reasons.push(format!(
            "{in_flight} requests in flight on lost agents are counted nowhere else (lost.requests)"
        ));
    }
    let mismatched = c.merger.agents().iter().any(|a| a.mismatch.is_some());
    if c.unreadable > 0 {
        reasons.push(format!("{} reports could not be read and are left out", c.unreadable));
    }
    if mismatched {
        reasons.push("an agent's final totals disagree with its reports (see agents[].mismatch)".to_owned());
    }
    let degraded = lost || mismatched || c.unreadable > 0;
    let (status, exit_code) = if c.interrupted {
        (Status::Interrupted, 130)
    } else if c.aborted.is_some() || all_lost {
        (Status::Aborted, 5)
    } else if invalid {
        (Status::Invalid, 98)
    } else if c.stopped_by.is_some() || !broken.is_empty() {
        (Status::Failed, 99)
    } else if requests_failed {
        (Status::Failed, 3)
    } else if degraded {
        (Status::Degraded, 4)
    } else {
        (Status::Passed, 0)
    };
    Verdict {
        status,
        exit_code,
        reasons,
        stopped_by: c.stopped_by.clone(),
    }
}

/// Good requests of `c` over `secs`, as a share of `ended`.
fn goodput(spec: &Spec, c: &Counters, ended: u64, secs: f64) -> Option<Goodput> {
    spec.slo.as_ref()?;
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    Some(Goodput {
        requests: c.good,
        ratio: if ended == 0 { 0.0 } else { c.good as f64 / ended as f64 },
        requests_per_s: per_s(c.good),
        output_tokens_per_s: per_s(c.good_output_tokens),
    })
}

/// TTFT and TPOT graded by the run's bands.
fn grading(spec: &Spec, m: &Metrics) -> Grading {
    let g = &spec.grades;
    let graded = |metric: &MetricSummary, band: &crate::profile::Band| {
        let value_ms = metric.stat(g.statistic)?;
        Some(Graded {
            value_ms,
            grade: band.grade(value_ms),
            good_under_ms: band.good.as_secs_f64() * 1e3,
            acceptable_under_ms: band.acceptable.as_secs_f64() * 1e3,
        })
    };
    Grading {
        statistic: g.statistic.name(),
        ttft: graded(&m.ttft, &g.ttft),
        tpot: graded(&m.tpot, &g.tpot),
    }
}

fn slo(spec: &Spec) -> Option<SloSummary> {
    let slo = spec.slo.as_ref()?;
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    Some(SloSummary {
        ttft_ms: ms(slo.ttft),
        tpot_ms: ms(slo.tpot),
        e2e_ms: ms(slo.e2e),
        itl_ms: ms(slo.itl),
        ratio: slo.ratio,
        words: slo.words(),
    })
}

fn lost(p: &Spec, c: &Collected) -> Lost {
    let users: f64 = c.agents.iter().map(|a| f64::from(a.users)).sum();
    let planned = p.load.duration().as_secs_f64();
    let lost: Vec<_> = c.agents.iter().filter(|a| a.lost_at.is_some()).collect();
    let lost_users: u32 = lost.iter().map(|a| a.users).sum();
    let missing: f64 = lost
        .iter()
        .map(|a| f64::from(a.users) * (planned - a.lost_at.map_or(0.0, |t| t.as_secs_f64())).max(0.0))
        .sum();
    // Open-loop agents carry equal shares of the schedule.
    let (users, lost_users, missing) = if p.load.is_users() {
        (users, f64::from(lost_users), missing)
    } else {
        let n = c.agents.len() as f64;
        let gone: f64 = lost
            .iter()
            .map(|a| (planned - a.lost_at.map_or(0.0, |t| t.as_secs_f64())).max(0.0))
            .sum();
        (n, lost.len() as f64, gone)
    };
    Lost {
        agents: lost.iter().map(|a| a.name.clone()).collect(),
        requests: lost.iter().map(|a| u64::from(a.in_flight)).sum(),
        users_share: if users > 0.0 { lost_users / users } else { 0.0 },
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

fn requests(c: &Counters) -> Requests {
    let failed = c.failed();
    let attempted = c.ok + failed;
    Requests {
        ok: c.ok,
        failed,
        cancelled: c.cancelled,
        late: c.late,
        held: c.held,
        dropped: c.dropped,
        error_rate: if attempted == 0 {
            0.0
        } else {
            failed as f64 / attempted as f64
        },
    }
}

fn throughput(c: &Counters, secs: f64) -> Throughput {
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let total_tokens = c.input_tokens + c.output_tokens;
    Throughput {
        requests_per_s: per_s(c.ok),
        sent_per_s: per_s(c.ok + c.failed() + c.cancelled),
        output_tokens_per_s: per_s(c.output_tokens),
        total_tokens_per_s: per_s(total_tokens),
        output_tokens_per_minute: per_s(c.output_tokens) * 60.0,
        tpm: per_s(total_tokens) * 60.0,
    }
}

fn steps(p: &Spec, totals: &[Totals]) -> Vec<StepSummary> {
    let mut start = Duration::ZERO;
    p.load
        .steps
        .iter()
        .zip(totals)
        .enumerate()
        .map(|(index, (step, t))| {
            let measured = step.duration.saturating_sub(p.load.warmup).as_secs_f64();
            let summary = StepSummary {
                index,
                level: step.level,
                label: p.load.label(step.level),
                start_s: start.as_secs_f64(),
                duration_s: step.duration.as_secs_f64(),
                measured_s: measured,
                requests: requests(&t.counters),
                throughput: throughput(&t.counters, measured),
                metrics: Metrics::of(&t.histograms),
                goodput: goodput(p, &t.counters, t.counters.ok + t.counters.failed(), measured),
            };
            start += step.duration;
            summary
        })
        .collect()
}

fn load_table(steps: &[StepSummary]) -> Vec<LoadRow> {
    steps
        .iter()
        .map(|s| LoadRow {
            level: s.level,
            requests_per_s: s.throughput.requests_per_s,
            output_tokens_per_s: s.throughput.output_tokens_per_s,
            ttft_p50_ms: s.metrics.ttft.p50,
            ttft_p95_ms: s.metrics.ttft.p95,
            itl_p50_ms: s.metrics.itl.p50,
            e2e_p95_ms: s.metrics.e2e.p95,
            error_rate: s.requests.error_rate,
        })
        .collect()
}

fn knee(p: &Spec, steps: &[StepSummary]) -> Option<Knee> {
    if steps.len() < 2 {
        return None;
    }
    let levels: Vec<Level> = steps
        .iter()
        .map(|s| Level {
            load: s.level,
            throughput: s.throughput.requests_per_s,
            ttft_p95: s.metrics.ttft.p95,
        })
        .collect();
    let found = analysis::knee(&levels);
    // The baseline is the lowest load that completed a request, as the
    // knee reads it.
    let lowest = steps
        .iter()
        .filter(|s| s.throughput.requests_per_s > 0.0)
        .min_by(|a, b| a.level.total_cmp(&b.level))
        .or_else(|| steps.iter().min_by(|a, b| a.level.total_cmp(&b.level)))
        .expect("two steps or more");
    Some(Knee {
        found: found.is_some(),
        step: found,
        level: found.map(|i| steps[i].level),
        label: found.map(|i| p.load.label(steps[i].level)),
        max_requests_per_s: levels.iter().map(|l| l.throughput).fold(0.0, f64::max),
        baseline_ttft_p95_ms: lowest.metrics.ttft.p95,
        rule: analysis::KNEE_RULE,
    })
}

fn client(c: &Collected) -> Client {
    let measured = c.merger.measured();
    let h = &measured.histograms;
    let ms = |m: Metric, q: f64| {
        let h = h.get(m);
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1e3
        }
    };
    let lag = analysis::Lag {
        p90_ms: ms(Metric::ScheduleLag, 0.9),
        p99_ms: ms(Metric::ScheduleLag, 0.99),
        delay_p90_ms: ms(Metric::RuntimeDelay, 0.9),
        delay_p99_ms: ms(Metric::RuntimeDelay, 0.99),
        e2e_p50_ms: ms(Metric::E2e, 0.5),
        ok: measured.counters.ok,
    };
    let cpu_max = c.merger.agents().iter().map(|a| a.cpu).fold(0.0, f64::max);
    let reasons = analysis::client_bound(&lag, cpu_max);
    Client {
        bound: !reasons.is_empty(),
        reasons,
        schedule_lag_p90_ms: lag.p90_ms,
        schedule_lag_p99_ms: lag.p99_ms,
        runtime_delay_p90_ms: lag.delay_p90_ms,
        runtime_delay_p99_ms: lag.delay_p99_ms,
        cpu_max,
    }
}

fn load_info(p: &Spec, agents: u32) -> LoadInfo {
    let l = &p.load;
    let (users, rate) = if l.is_users() {
        (Some(l.peak() as u32), None)
    } else {
        (None, Some(l.peak()))
    };
    let (think_s, pace_s, arrival, burstiness, max_concurrency) = match &l.model {
        Model::Users { think, pace } => (
            Some(think.as_secs_f64()),
            pace.map(|d| d.as_secs_f64()),
            None,
            None,
            None,
        ),
        Model::Rate {
            process,
            max_concurrency,
        } => {
            use stampede_agent::load::schedule::Process;
            let (name, shape) = match process {
                Process::Constant => ("constant", None),
                Process::Poisson => ("poisson", None),
                Process::Gamma(b) => ("gamma", Some(*b)),
            };
            (None, None, Some(name), shape, max_concurrency.map(|n| n.get()))
        }
    };
    // A trace's arrivals are its rows', not a drawn process.
    let arrival = if l.trace.is_some() { None } else { arrival };
    LoadInfo {
        mode: match (l.is_users(), &l.trace) {
            (true, _) => "users",
            (false, Some(_)) => "trace",
            (false, None) => "rate",
        },
        shape: match l.shape {
            Shape::Single => "single",
            Shape::Stages => "stages",
            Shape::Sweep => "sweep",
        },
        users,
        rate,
        agents,
        planned_duration_s: l.duration().as_secs_f64(),
        warmup_s: l.warmup.as_secs_f64(),
        drain_s: l.drain.as_secs_f64(),
        interval_s: p.interval_s(),
        think_s,
        pace_s,
        arrival,
        burstiness,
        max_concurrency,
        stream: p.request.stream,
        max_tokens: p.request.max_tokens,
        prompts: p.prompt_source.clone(),
        requests: l.requests,
        overrides: p.overrides.clone(),
        trace: l.trace.as_ref().map(|t| TraceInfo {
            file: t.file.clone(),
            format: match t.format {
                crate::profile::replay::Format::Mooncake => "mooncake",
                crate::profile::replay::Format::Azure => "azure",
            },
            speed: t.speed,
            block_size: t.block_size,
            requests: t.requests,
        }),
    }
}

fn agents(c: &Collected) -> Vec<AgentSummary> {
    c.agents
        .iter()
        .zip(c.merger.agents())
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
                lost_requests: if a.lost_at.is_some() { u64::from(a.in_flight) } else { 0 },
                stopped_early: a.stopped_early.clone(),
                start_skew_ms: skew_ms(c, a.began_at_us),
                clock_offset_ms: a.clock_offset_us.map(|o| o as f64 / 1e3),
                clock_rtt_ms: a.clock_rtt_us.map(|r| r as f64 / 1e3),
                cpu: merged.cpu,
                peer: a.peer.map(|p| p.to_string()),
                mismatch: merged.mismatch.clone(),
                version: a.version.clone(),
            }
        })
        .collect()
}

fn intervals(c: &Collected, interval_s: f64) -> Vec<IntervalSummary> {
    c.rows
        .iter()
        .map(|r| {
            let (ttft, itl, e2e) = (r.get(Metric::Ttft), r.get(Metric::Itl), r.get(Metric::E2e));
            let lag = r.get(Metric::ScheduleLag);
            let (step, warmup) = match r.place {
                Place::Warmup(k) => (Some(k), true),
                Place::Step(k) => (Some(k), false),
                Place::Drain => (None, false),
            };
            let per_s = |n: u64| if r.length_s > 0.0 { n as f64 / r.length_s } else { 0.0 };
            IntervalSummary {
                interval: r.interval,
                end_s: r.interval as f64 * interval_s + r.length_s,
                length_s: r.length_s,
                present_s: r.present_s,
                step,
                warmup,
                active: r.counters.active_users,
                ok: r.counters.ok,
                failed: r.counters.failed(),
                requests_per_s: per_s(r.counters.ok),
                output_tokens_per_s: per_s(r.counters.output_tokens),
                ttft_p50_ms: ms(ttft, ttft.p50),
                ttft_p95_ms: ms(ttft, ttft.p95),
                itl_p50_ms: ms(itl, itl.p50),
                e2e_p95_ms: ms(e2e, e2e.p95),
                schedule_lag_p99_ms: ms(lag, lag.p99),
                cpu: r.cpu,
            }
        })
        .collect()
}

/// Builds the summary of a finished run, with the server's metrics when
/// they were scraped.
pub fn build(p: &Spec, c: &Collected, server: Option<&Series>, spans: Option<&ServerSpans>) -> Summary {
    let m = &c.merger;
    let measured = m.measured();
    let counters = &measured.counters;
    let requests = requests(counters);
    let elapsed_us = m.agents().iter().map(|a| a.elapsed_us).max().unwrap_or(0);
    let duration_s = if elapsed_us > 0 {
        elapsed_us as f64 / 1e6
    } else {
        p.load.duration().as_secs_f64()
    };
    let warmups: f64 = p
        .load
        .steps
        .iter()
        .map(|s| p.load.warmup.min(s.duration).as_secs_f64())
        .sum();
    let measured_s = (duration_s - warmups).max(0.0);
    let steps = steps(p, &m.steps());
    let warmup = m.warmup();
    let metrics = Metrics::of(&measured.histograms);
    let mut summary = Summary {
        schema: SCHEMA,
        run_id: p.run_id.clone(),
        profile: ProfileInfo {
            name: p.profile.name.clone(),
            path: p.profile.path.clone(),
            seed: p.profile.seed,
        },
        target: TargetInfo {
            url: p.target.url.clone(),
            api: p.target.api.clone(),
            model: p.target.model.clone(),
            simulated: p.target.simulated,
        },
        load: load_info(p, c.agents.len() as u32),
        started_at: c.started_at.map(rfc3339),
        duration_s,
        measured_s,
        verdict: Verdict {
            status: Status::Passed,
            exit_code: 0,
            reasons: Vec::new(),
            stopped_by: None,
        },
        warmup: Warmup {
            per_step_s: p.load.warmup.as_secs_f64(),
            ok: warmup.ok,
            failed: warmup.failed(),
        },
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
        goodput: goodput(p, counters, requests.ok + requests.failed, measured_s),
        slo: slo(p),
        capacity: analysis::gates::capacity(p.slo.as_ref(), &steps),
        thresholds: Vec::new(),
        requests,
        throughput: throughput(counters, measured_s),
        tokens: tokens::tokens(counters, p.target.tokenizer.as_ref()),
        grades: grading(p, &metrics),
        metrics,
        classes: classes(p, c, if c.classes_whole_run { duration_s } else { measured_s }),
        classes_by: p.classes_by.unwrap_or(crate::dataset::ClassBy::Words),
        classes_whole_run: c.classes_whole_run,
        turns: turns(c),
        load_table: load_table(&steps),
        knee: knee(p, &steps),
        steps,
        client: client(c),
        agents: agents(c),
        lost: lost(p, c),
        start_skew: start_skew(c),
        intervals: intervals(c, p.interval_s()),
        tracing: trace::build(p.trace.as_ref(), &p.run_id, &p.run_trace_id, c),
        server: None,
        server_queue: None,
        prefix_cache: None,
        gpu: server::gpu(c),
        busy_while_present: None,
        metrics_push: c.metrics_push.clone(),
        findings: Vec::new(),
        definitions: DEFINITIONS,
    };
    summary.server = server.map(|series| server::server(series, c.started_at, &summary));
    summary.busy_while_present = analysis::findings::busy_while_present(&summary, c);
    summary.server_queue = queue::build(spans, server, c.started_at, server::measured_from(&summary));
    summary.prefix_cache = prefix::build(
        p.shared_prefix,
        counters,
        server,
        c.started_at,
        server::measured_from(&summary),
    );
    summary.findings = analysis::findings::draw(&summary, c);
    summary.thresholds = analysis::gates::judge(&p.thresholds, &summary);
    summary.verdict = verdict(p, c, &summary);
    summary
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

/// The per-turn table of a run of sessions, turn 1 first.
fn turns(c: &Collected) -> Vec<TurnSummary> {
    let last = stampede_agent::prompts::MAX_TURNS;
    c.turns
        .iter()
        .map(|(turn, t)| {
            let m = |metric| MetricSummary::of(metric, &Stats::of(t.histograms.get(metric)));
            TurnSummary {
                turn: u32::from(*turn),
                and_later: *turn >= last,
                requests: t.counters.ok,
                tokens_in: m(Metric::InputTokens),
                tokens_out: m(Metric::OutputTokens),
                ttft: m(Metric::Ttft),
                tpot: m(Metric::Tpot),
                e2e: m(Metric::E2e),
            }
        })
        .collect()
}

/// The per-class table, shortest prompts first; a class with no successes
/// (all its requests failed) last. Rates divide by `duration_s`.
fn classes(spec: &Spec, c: &Collected, duration_s: f64) -> Vec<ClassSummary> {
    let per_s = |n: u64| if duration_s > 0.0 { n as f64 / duration_s } else { 0.0 };
    let mut out: Vec<ClassSummary> = c
        .classes
        .iter()
        .map(|(class, t)| {
            let m = |metric| MetricSummary::of(metric, &Stats::of(t.histograms.get(metric)));
            ClassSummary {
                class: class.clone(),
                requests: t.counters.ok,
                failed: t.counters.failed(),
                errors: t.counters.errors.iter().map(|(e, n)| (e.to_string(), *n)).collect(),
                input_tokens: t.counters.input_tokens,
                output_tokens: t.counters.output_tokens,
                tpm: per_s(t.counters.input_tokens + t.counters.output_tokens) * 60.0,
                output_tokens_per_s: per_s(t.counters.output_tokens),
                tokens_in: m(Metric::InputTokens),
                tokens_out: m(Metric::OutputTokens),
                ttft: m(Metric::Ttft),
                itl: m(Metric::Itl),
                tpot: m(Metric::Tpot),
                e2e: m(Metric::E2e),
                goodput: goodput(spec, &t.counters, t.counters.ok, duration_s),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.requests == 0)
            .cmp(&(b.requests == 0))
            .then_with(|| a.tokens_in.mean.total_cmp(&b.tokens_in.mean))
            .then_with(|| a.class.cmp(&b.class))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_exit_code() {
        let readme = include_str!("../../../../README.md");
        let table = readme
            .split("| exit | when |")
            .nth(1)
            .expect("the README has the exit code table");
        let listed: Vec<u8> = table
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with("| `"))
            .map(|l| l[3..].split('`').next().and_then(|n| n.parse().ok()).expect("a code"))
            .collect();
        let codes: Vec<u8> = EXIT_CODES.iter().map(|(c, _)| *c).collect();
        assert_eq!(listed, codes);
        for (code, meaning) in EXIT_CODES {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| `{code}` |")))
                .expect("a row");
            assert!(row.contains(meaning), "{row} does not say {meaning:?}");
        }
    }

    #[test]
    fn run_ids_are_sortable_and_safe() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let id = run_id("high load/x", t);
        assert!(id.starts_with("20261118T110640Z-"), "{id}");
        assert!(id.contains("-high-load-x-"), "{id}");
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
