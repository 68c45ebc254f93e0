//! The terminal table of a made-up run, held as a snapshot: a change to
//! what a person reads must be deliberate. Set `UPDATE_SNAPSHOTS=1` to
//! accept one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use stampede_proto::{Counters, ErrorClass, Histograms, Metric, Sparse};

use super::render;
use crate::merge::{Finished, Merger, Report, Timeline};
use crate::profile::{Overrides, Profile};
use crate::report::summary;
use crate::results::ledger::ClassTotals;
use crate::results::spec::TargetRef;
use crate::results::{AgentEnd, AgentRecord, Collected, Spec};
use crate::server::{Scrape, Series, map, prom};

const PROFILE: &str = r#"
name = "snapshot"
seed = 7
[load]
users = 4
duration = "3s"
[request]
max_tokens = 16
[prompts]
builtin = "short"
"#;

fn report(interval: u64, scale: u64) -> Report {
    let mut h = Histograms::new();
    for i in 0..20 {
        h.record(Metric::Ttft, scale * (100_000 + i * 2_000));
        h.record(Metric::E2e, scale * (700_000 + i * 5_000));
        h.record(Metric::Tpot, 40_000 + i * 100);
        h.record(Metric::ClientQueue, 300 + i * 10);
        h.record(Metric::ScheduleLag, 100 + i);
        h.record(Metric::OutputTokens, 16);
        h.record(Metric::InputTokens, 12 + i % 3);
        for k in 0..15 {
            h.record(Metric::Itl, 39_000 + k * 150 + i * 10);
        }
        // Three tokens to an event: a chunk gap is three tokens' time.
        for k in 0..5 {
            h.record(Metric::ChunkGap, 3 * (39_000 + k * 450 + i * 10));
        }
    }
    let mut errors = BTreeMap::new();
    if interval == 1 {
        errors.insert(ErrorClass::Timeout, 2);
    }
    Report {
        interval,
        sequence: interval + 1,
        elapsed_us: (interval + 1) * 1_000_000,
        histograms: Sparse::from(&h),
        counters: Counters {
            ok: 20,
            errors,
            input_tokens: 260,
            output_tokens: 320,
            tokens_from_usage: 20,
            inputs_from_server: 20,
            active_users: 4,
            ..Counters::default()
        },
        samples: BTreeMap::from([(ErrorClass::Timeout, "no answer within 30s".to_owned())]),
        cpu: 0.12,
        presence: Vec::new(),
        class_ttft: BTreeMap::new(),
    }
}

fn series(start: SystemTime) -> Series {
    let pages = [
        "vllm:num_requests_running 3\nvllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.25\nvllm:num_preemptions_total 0\nvllm:request_queue_time_seconds_sum 0\nvllm:request_queue_time_seconds_count 0\nvllm:request_queue_time_seconds_bucket{le=\"0.01\"} 0\nvllm:request_queue_time_seconds_bucket{le=\"0.05\"} 0\nvllm:request_queue_time_seconds_bucket{le=\"0.1\"} 0\nvllm:request_queue_time_seconds_bucket{le=\"+Inf\"} 0\n",
        "vllm:num_requests_running 4\nvllm:num_requests_waiting 2\nvllm:kv_cache_usage_perc 0.5\nvllm:num_preemptions_total 2\nvllm:request_queue_time_seconds_sum 1.2\nvllm:request_queue_time_seconds_count 40\nvllm:request_queue_time_seconds_bucket{le=\"0.01\"} 10\nvllm:request_queue_time_seconds_bucket{le=\"0.05\"} 30\nvllm:request_queue_time_seconds_bucket{le=\"0.1\"} 38\nvllm:request_queue_time_seconds_bucket{le=\"+Inf\"} 40\n",
        "vllm:num_requests_running 4\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0.75\nvllm:num_preemptions_total 5\nvllm:request_queue_time_seconds_sum 2.4\nvllm:request_queue_time_seconds_count 60\nvllm:request_queue_time_seconds_bucket{le=\"0.01\"} 15\nvllm:request_queue_time_seconds_bucket{le=\"0.05\"} 45\nvllm:request_queue_time_seconds_bucket{le=\"0.1\"} 57\nvllm:request_queue_time_seconds_bucket{le=\"+Inf\"} 60\n",
    ];
    let mut s = Series {
        url: "http://gpu-box:8000/metrics".to_owned(),
        ..Series::default()
    };
    for (i, page) in pages.iter().enumerate() {
        let reading = map::map(&prom::parse(page).samples);
        s.sources.extend(reading.sources.iter().map(|(k, v)| (*k, v.clone())));
        s.scrapes.push(Scrape {
            at: start + Duration::from_millis(1_500 * i as u64),
            reading,
        });
    }
    s
}

/// A class with successes and a few failures, and one whose requests all
/// failed (a prompt the server refused).
fn classes() -> BTreeMap<String, ClassTotals> {
    let short = report(1, 1);
    let long = ClassTotals {
        histograms: Histograms::new(),
        counters: Counters {
            errors: BTreeMap::from([(ErrorClass::Status(400), 3)]),
            ..Counters::default()
        },
    };
    BTreeMap::from([
        (
            "short".to_owned(),
            ClassTotals {
                histograms: {
                    let mut h = Histograms::new();
                    h.add_sparse(&short.histograms);
                    h
                },
                counters: short.counters,
            },
        ),
        ("long".to_owned(), long),
    ])
}

#[test]
fn the_table_reads_as_it_did() {
    let profile =
        Profile::parse(PROFILE, Path::new("snapshot.toml"), &Overrides::default()).expect("the profile parses");
    let mut merger = Merger::new(1, Timeline::new(&profile.load, Duration::from_secs(1)));
    let mut rows = Vec::new();
    let mut total = Histograms::new();
    let mut counters = Counters::default();
    for (interval, scale) in [(0, 1), (1, 2), (2, 1)] {
        let r = report(interval, scale);
        total.add_sparse(&r.histograms);
        let mut c = r.counters.clone();
        c.active_users = 0;
        counters.add(&c);
        rows.extend(merger.add(0, &r).1);
    }
    rows.extend(merger.finish(
        0,
        &Finished {
            histograms: total,
            counters,
            elapsed_us: 3_000_000,
            last_sequence: 3,
        },
    ));
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let collected = Collected {
        merger,
        agents: vec![AgentRecord {
            name: "local-0".to_owned(),
            index: 0,
            users: 4,
            version: "0.1.0".to_owned(),
            peer: None,
            end: AgentEnd::Finished,
            lost_at: None,
            in_flight: 0,
            in_flight_sequence: 0,
            stopped_early: None,
            began_at_us: Some(1_800_000_000_000_000),
            clock_offset_us: Some(0),
            clock_rtt_us: Some(50),
            gpu_note: None,
            gpu: Vec::new(),
        }],
        rows,
        started_at: Some(start),
        start_at_us: Some(1_800_000_000_000_000),
        interrupted: false,
        aborted: None,
        failure: None,
        stopped_by: None,
        metrics_push: None,
        unreadable: 0,
        exemplars: Vec::new(),
        classes: classes(),
        classes_whole_run: false,
        turns: std::collections::BTreeMap::new(),
    };
    let server = series(start);
    let spec = Spec {
        target: TargetRef {
            url: "http://gpu-box:8000".to_owned(),
            api: "openai-chat".to_owned(),
            model: String::new(),
            simulated: false,
            tokenizer: None,
        },
        ..Spec::sample(&profile, "20270115T080000Z-snapshot-0001", 1)
    };
    let summary = summary::build(&spec, &collected, Some(&server), None);
    let files = [
        (
            "summary",
            "results/20270115T080000Z-snapshot-0001/summary.json".to_owned(),
        ),
        (
            "csv",
            "results/20270115T080000Z-snapshot-0001/{metrics,intervals,classes,steps}.csv".to_owned(),
        ),
    ];
    let text = render(&summary, &files);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/report/snapshots/terminal.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("the folder is made");
        std::fs::write(&path, &text).expect("the snapshot is written");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text == expected,
        "the terminal table changed; run with UPDATE_SNAPSHOTS=1 if that is intended:\n{text}"
    );
}
