//! What an hour-long run costs the tools that read it: a one-hour run of
//! four agents (3,600 one-second intervals, a four-step sweep, errors)
//! recorded through the real ledger into a run log, then
//!
//! - `report.html` rendered from its summary, with server metrics (best of
//!   five), and its size;
//! - `controller report`'s path: the log read back and replayed, the
//!   summary, page and CSV files written;
//! - `controller compare`'s path: two such runs read back and every figure
//!   compared with its bootstrap interval, and `compare.html` rendered.
//!
//! ```sh
//! cargo run --release -p stampede-controller --example report_bench [-- OUT.html]
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use stampede_controller::compare::{self, Side};
use stampede_controller::merge::Report;
use stampede_controller::profile::{Overrides, Profile};
use stampede_controller::report::html::{self, ReportData};
use stampede_controller::report::summary::{self, Figure, ServerInterval, ServerSummary, Summary};
use stampede_controller::results::log::{End, Entry, FinishedEntry, Joined, Log, ReportEntry};
use stampede_controller::results::spec::TargetRef;
use stampede_controller::results::{self, Ledger, Spec};
use stampede_controller::server::{Canon, Kind, Source};
use stampede_proto::{Counters, ErrorClass, Histograms, Metric, Sparse, pb};
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
/// TTFT; a few errors now and then. `slower` stretches the decode step.
fn report(agent: u32, interval: u64, slower: f64) -> Report {
    let step = interval / 900;
    let users = 2u64 << step;
    let mut h = Histograms::new();
    let n = 4 * users;
    for k in 0..n {
        let j = jitter(interval * 1_000 + u64::from(agent) * 100 + k);
        let queue = if step >= 2 { 200_000 * (step - 1) } else { 0 };
        h.record(Metric::Ttft, 30_000 + queue + (j * 40_000.0) as u64);
        h.record(Metric::ClientQueue, 50 + (j * 500.0) as u64);
        h.record(
            Metric::Tpot,
            ((15_000 + step * 2_000 + (j * 3_000.0) as u64) as f64 * slower) as u64,
        );
        h.record(Metric::E2e, 1_000_000 + queue + (j * 300_000.0) as u64);
        h.record(Metric::OutputTokens, 64);
        h.record(Metric::InputTokens, 200);
        for g in 0..16 {
            h.record(
                Metric::Itl,
                ((14_000 + step * 2_000 + g * 50 + (j * 2_000.0) as u64) as f64 * slower) as u64,
            );
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
        histograms: Sparse::from(&h),
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
        presence: vec![0xff; 125],
        class_ttft: BTreeMap::new(),
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
                preemptions: Some(if step >= 3.0 { (4.0 * j).round() } else { 0.0 }),
                prefix_cache_hit_rate: None,
                vram_used_mib: Some(16_384.0 + 59_000.0 * (0.2 + 0.2 * step).min(1.0)),
                vram_free_mib: Some(81_920.0 - 16_384.0 - 59_000.0 * (0.2 + 0.2 * step).min(1.0)),
                vram_used_share: Some((16_384.0 + 59_000.0 * (0.2 + 0.2 * step).min(1.0)) / 81_920.0),
                memory_bandwidth: Some((0.5 + 0.15 * step + 0.05 * j).min(1.0)),
                compute_active: Some((0.3 + 0.05 * j).min(1.0)),
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
        busy_s: None,
    }
}

/// The report as the agent sends it, naming its slowest request.
fn wire(r: &Report, agent: u32) -> pb::Report {
    let mut full = Histograms::new();
    full.add_sparse(&r.histograms);
    let slowest = full.get(Metric::E2e).max();
    pb::Report {
        turns: Vec::new(),
        interval: r.interval,
        sequence: r.sequence,
        elapsed_us: r.elapsed_us,
        histograms: full.to_wire(),
        counters: Some(r.counters.to_wire()),
        error_samples: r
            .counters
            .errors
            .keys()
            .map(|class| pb::ErrorSample {
                class: class.to_string(),
                message: format!("a {class} now and then"),
            })
            .collect(),
        cpu: r.cpu,
        in_flight: 0,
        sampled_exemplars: Vec::new(),
        gpu: Vec::new(),
        exemplars: vec![pb::Exemplar {
            metric: pb::Metric::E2e as i32,
            value_us: slowest,
            trace_id: format!("{:016x}{:016x}", r.interval, agent),
            interval: r.interval,
        }],
        presence: r.presence.clone(),
        classes: Vec::new(),
    }
}

/// Records a one-hour run into `dir` through the ledger, as the
/// coordinator would, and returns its description.
fn record(profile: &Profile, dir: &Path, run_id: &str, slower: f64) -> Spec {
    let spec = Spec {
        target: TargetRef {
            url: "http://gpu-box:8000".to_owned(),
            api: "openai-chat".to_owned(),
            model: "example".to_owned(),
            simulated: false,
            tokenizer: None,
        },
        ..Spec::sample(profile, run_id, AGENTS)
    };
    std::fs::create_dir_all(dir).expect("the run directory is made");
    let log = Log::create(&dir.join(results::log::FILE)).expect("the log is created");
    let mut ledger = Ledger::new(&spec, Some(log));
    for a in 0..AGENTS {
        ledger.record(Entry::Joined(Joined {
            agent_index: a,
            name: format!("agent-{a}"),
            users: 16,
            version: env!("CARGO_PKG_VERSION").into(),
            peer: None,
            gpu_note: None,
        }));
        ledger.record(Entry::Ready {
            agent_index: a,
            clock_offset_us: Some(120),
            clock_rtt_us: Some(300),
        });
    }
    ledger.record(Entry::Started {
        unix_ns: 1_800_000_000_000_000_000,
        start_at_us: 1_800_000_000_000_000,
    });
    let mut totals: Vec<(Histograms, Counters)> = (0..AGENTS).map(|_| Default::default()).collect();
    for a in 0..AGENTS {
        ledger.record(Entry::Began {
            agent_index: a,
            at_us: 1_800_000_000_000_000 + u64::from(a) * 250,
        });
    }
    let intervals = profile.load.duration().as_secs();
    for i in 0..intervals {
        for a in 0..AGENTS {
            let r = report(a, i, slower);
            let (h, c) = &mut totals[a as usize];
            h.add_sparse(&r.histograms);
            let mut counters = r.counters.clone();
            counters.active_users = 0;
            c.add(&counters);
            ledger.record(Entry::Report(ReportEntry {
                agent: format!("agent-{a}"),
                agent_index: a,
                report: wire(&r, a),
            }));
        }
    }
    for (a, (h, c)) in totals.iter().enumerate() {
        ledger.record(Entry::Finished(FinishedEntry {
            agent: format!("agent-{a}"),
            agent_index: a as u32,
            finished: pb::Finished {
                turns: Vec::new(),
                histograms: h.to_wire(),
                counters: Some(c.to_wire()),
                elapsed_us: intervals * 1_000_000,
                last_sequence: intervals,
                classes: Vec::new(),
                stopped_early: String::new(),
            },
        }));
    }
    ledger.close(End::default());
    spec
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let profile = Profile::parse(PROFILE, Path::new("hour.toml"), &Overrides::default()).expect("a valid profile");
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let t = Instant::now();
    record(&profile, &a, "20270115T080000Z-hour-0001", 1.0);
    let recorded = t.elapsed();
    record(&profile, &b, "20270115T090000Z-hour-0002", 1.05);
    let log_bytes = std::fs::metadata(a.join(results::log::FILE)).map_or(0, |m| m.len());

    // The page alone, from a summary with the server's figures.
    let loaded = results::load(&a).expect("the run reads back");
    let mut s = summary::build(&loaded.run.spec, &loaded.run.collected, None, None);
    s.server = Some(server(&s));
    let data = ReportData::of(&loaded.run.collected, profile.report.interval.as_secs_f64());
    let mut best = Duration::MAX;
    let mut page = String::new();
    for _ in 0..5 {
        let t = Instant::now();
        page = html::render(&s, &data);
        best = best.min(t.elapsed());
    }
    println!(
        "report.html of {} intervals from {AGENTS} agents: rendered in {:.1} ms (best of 5), {:.2} MB ({} bytes)",
        s.intervals.len(),
        ms(best),
        page.len() as f64 / 1e6,
        page.len(),
    );

    // controller report: the log read back, replayed and rendered.
    let out = tmp.path().join("rebuilt");
    std::fs::create_dir_all(&out).expect("made");
    let t = Instant::now();
    let loaded = results::load(&a).expect("the run reads back");
    let read = t.elapsed();
    stampede_controller::report::write(&out, &loaded.run).expect("written");
    let rebuilt = t.elapsed();
    println!(
        "controller report: the {:.1} MB run log read and replayed in {:.0} ms, every file written after {:.0} ms (recording it through the ledger took {:.0} ms)",
        log_bytes as f64 / 1e6,
        ms(read),
        ms(rebuilt),
        ms(recorded)
    );

    // controller compare: two runs, every figure with its interval.
    let t = Instant::now();
    let sides = [Side::load(&a).expect("a"), Side::load(&b).expect("b")];
    let read = t.elapsed();
    let options = compare::Options {
        min_change: 0.01,
        limits: Vec::new(),
    };
    let c = compare::compare(&sides, &options);
    let compared = t.elapsed();
    let page = html::render_compare(&c, &sides);
    let figures = c.runs[0].figures.len();
    let changed = c.runs[0]
        .figures
        .iter()
        .filter(|r| r.step.is_none() && r.verdict == compare::Verdict::Changed)
        .map(|r| r.figure.as_str())
        .collect::<Vec<_>>();
    println!(
        "controller compare of two such runs: read in {:.0} ms, {figures} figures compared after {:.0} ms, compare.html {:.0} KB; changed: {}",
        ms(read),
        ms(compared),
        page.len() as f64 / 1e3,
        changed.join(", ")
    );
    if let Some(out) = std::env::args().nth(1) {
        std::fs::write(&out, html::render(&s, &data)).expect("the page is written");
        println!("written to {out}");
    }
}
