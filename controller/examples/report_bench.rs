//! How long `report.html` takes to render, and how large it is, for a
//! one-hour run of four agents (3,600 one-second intervals) with server
//! metrics, errors and a four-step sweep.
//!
//! ```sh
//! cargo run --release -p stampede-controller --example report_bench [-- OUT.html]
//! ```
//!
//! The run is synthesised through the real merge and summary code; only
//! the rendering is timed (best of five).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use stampede_controller::merge::{Merger, Report, Timeline};
use stampede_controller::profile::{Overrides, Profile};
use stampede_controller::report::html::{self, ReportData};
use stampede_controller::report::summary::{self, Figure, ServerInterval, ServerSummary, Summary};
use stampede_controller::results::spec::TargetRef;
use stampede_controller::results::{AgentEnd, AgentRecord, Collected, Exemplar, Spec};
use stampede_controller::server::{Canon, Kind, Source};
use stampede_proto::{Counters, ErrorClass, Histograms, Metric};
use tokio::time::Instant;

const AGENTS: u32 = 4;
const PROFILE: &str = r#"
name = "hour"
[load.sweep]
users = [8, 16, 32, 64]
step = "900s"
[load]
warmup = "30s"
drain = "0s"
"#;

/// A cheap deterministic jitter in [0, 1).
fn jitter(seed: u64) -> f64 {
    let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ 0xD1B5_4A32_D192_ED03;
    (x.wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 11) as f64 / (1u64 << 53) as f64
}

/// One agent's report of one interval: load grows by step, and with it
/// TTFT; a few errors now and then.
fn report(agent: u32, interval: u64) -> Report {
    let step = interval / 900;
    let users = 2u64 << step;
    let mut h = Histograms::new();
    let n = 4 * users;
    for k in 0..n {
        let j = jitter(interval * 1_000 + u64::from(agent) * 100 + k);
        let queue = if step >= 2 { 200_000 * (step - 1) } else { 0 };
        h.record(Metric::Ttft, 30_000 + queue + (j * 40_000.0) as u64);
        h.record(Metric::ClientQueue, 50 + (j * 500.0) as u64);
        h.record(Metric::Tpot, 15_000 + step * 2_000 + (j * 3_000.0) as u64);
        h.record(Metric::E2e, 1_000_000 + queue + (j * 300_000.0) as u64);
        h.record(Metric::OutputTokens, 64);
        h.record(Metric::InputTokens, 200);
        for g in 0..16 {
            h.record(Metric::Itl, 14_000 + step * 2_000 + g * 50 + (j * 2_000.0) as u64);
        }
    }
    let mut errors = BTreeMap::new();
    if jitter(interval * 7 + u64::from(agent)) < 0.02 {
        errors.insert(ErrorClass::Timeout, 1);
    }
    if step == 3 && jitter(interval * 13 + u64::from(agent)) < 0.1 {
        errors.insert(ErrorClass::Status(503), 2);
    }
    Report {
        interval,
        sequence: interval + 1,
        elapsed_us: (interval + 1) * 1_000_000,
        histograms: h,
        counters: Counters {
            ok: n,
            errors,
            input_tokens: n * 200,
            output_tokens: n * 64,
            tokens_from_usage: n,
            active_users: users as u32,
            ..Counters::default()
        },
        samples: BTreeMap::new(),
        cpu: 0.05 + 0.02 * step as f64,
    }
}

fn server(s: &Summary) -> ServerSummary {
    let figure = |metric, kind, unit, mean| Figure {
        source: Source {
            family: "vllm",
            metric,
            series: 1,
        },
        kind,
        unit,
        mean: Some(mean),
        max: None,
        count: Some(1.0),
        per_s: None,
    };
    let mut mapped = BTreeMap::new();
    mapped.insert(
        Canon::QueueTime,
        figure("vllm:request_queue_time_seconds", Kind::Histogram, "ms", 150.0),
    );
    mapped.insert(
        Canon::Running,
        figure("vllm:num_requests_running", Kind::Gauge, "requests", 20.0),
    );
    mapped.insert(
        Canon::Waiting,
        figure("vllm:num_requests_waiting", Kind::Gauge, "requests", 10.0),
    );
    mapped.insert(
        Canon::KvCacheUsage,
        figure("vllm:kv_cache_usage_perc", Kind::Gauge, "share", 0.5),
    );
    mapped.insert(
        Canon::GpuUtil,
        figure("DCGM_FI_DEV_GPU_UTIL", Kind::Gauge, "share", 0.8),
    );
    let intervals = s
        .intervals
        .iter()
        .map(|i| {
            let step = (i.interval / 900) as f64;
            let j = jitter(i.interval);
            ServerInterval {
                interval: i.interval,
                running: Some((8.0 * 2f64.powf(step)).min(32.0)),
                waiting: Some((8.0 * 2f64.powf(step) - 32.0).max(0.0) + j),
                kv_cache_usage: Some((0.2 + 0.2 * step + 0.05 * j).min(1.0)),
                utilisation: Some((0.4 + 0.2 * step + 0.1 * j).min(1.0)),
                queue_time_ms: Some(if step >= 2.0 { 200.0 * (step - 1.0) } else { 1.0 + j }),
                prefill_ms: None,
            }
        })
        .collect();
    ServerSummary {
        url: "http://gpu-box:8000/metrics".into(),
        scrapes: s.intervals.len(),
        failed_scrapes: 0,
        note: None,
        families: vec!["vllm", "dcgm"],
        mapped,
        unmapped: Vec::new(),
        skipped_lines: 0,
        intervals,
    }
}

fn main() {
    let profile = Profile::parse(PROFILE, Path::new("hour.toml"), &Overrides::default()).expect("a valid profile");
    let intervals = profile.load.duration().as_secs();
    let built = Instant::now();
    let mut merger = Merger::new(AGENTS, Timeline::new(&profile.load, profile.report.interval));
    let mut rows = Vec::new();
    for i in 0..intervals {
        for a in 0..AGENTS {
            rows.extend(merger.add(a, &report(a, i)).1);
        }
    }
    for a in 0..AGENTS {
        rows.extend(merger.gone(a));
    }
    rows.extend(merger.flush());
    let agents = (0..AGENTS)
        .map(|a| AgentRecord {
            name: format!("agent-{a}"),
            index: a,
            users: 16,
            version: env!("CARGO_PKG_VERSION").into(),
            peer: None,
            end: AgentEnd::Finished,
            lost_at: None,
            began_at_us: Some(1_000_000 + u64::from(a) * 250),
            clock_offset_us: Some(120),
            clock_rtt_us: Some(300),
            gpu_note: None,
            gpu: Vec::new(),
        })
        .collect();
    let exemplars = (0..10)
        .flat_map(|k| {
            [Metric::Ttft, Metric::E2e].map(|metric| Exemplar {
                agent: (k % u64::from(AGENTS)) as u32,
                metric,
                value_us: 2_000_000 - k * 10_000,
                trace_id: format!("{:032x}", k * 7919 + 1),
                interval: 2_700 + k * 61,
            })
        })
        .collect();
    let collected = Collected {
        merger,
        agents,
        rows,
        started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        start_at_us: Some(1_000_000),
        interrupted: false,
        aborted: None,
        failure: None,
        unreadable: 0,
        exemplars,
        classes: BTreeMap::new(),
    };
    let spec = Spec {
        target: TargetRef {
            url: "http://gpu-box:8000".to_owned(),
            api: "openai-chat".to_owned(),
            model: "example".to_owned(),
            simulated: false,
            tokenizer: None,
        },
        ..Spec::sample(&profile, "20270115T080000Z-hour-0001", AGENTS)
    };
    let mut s = summary::build(&spec, &collected, None);
    s.server = Some(server(&s));
    let data = ReportData::of(&collected, profile.report.interval.as_secs_f64());
    let setup = built.elapsed();

    let mut best = Duration::MAX;
    let mut page = String::new();
    for _ in 0..5 {
        let t = Instant::now();
        page = html::render(&s, &data);
        best = best.min(t.elapsed());
    }
    println!(
        "report.html of {} intervals from {AGENTS} agents: rendered in {:.1} ms (best of 5), {:.2} MB ({} bytes); synthesising the run took {:.1} s",
        s.intervals.len(),
        best.as_secs_f64() * 1e3,
        page.len() as f64 / 1e6,
        page.len(),
        setup.as_secs_f64()
    );
    if let Some(out) = std::env::args().nth(1) {
        std::fs::write(&out, &page).expect("the page is written");
        println!("written to {out}");
    }
}
