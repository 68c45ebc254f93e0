//! A run recorded live and the same run read back from its directory give
//! the same summary, field for field.

use std::path::Path;

use stampede_proto::{Counters, Histograms, Metric, pb};

use super::log::{End, Entry, FinishedEntry, Joined, Log, ReportEntry};
use super::*;
use crate::profile::{Overrides, Profile};
use crate::report::summary;

const PROFILE: &str = r#"
name = "ledger"
[load]
stages = [{ users = 2, duration = "3s" }, { users = 4, duration = "3s" }]
warmup = "1s"
"#;

fn report(agent: u32, interval: u64, sequence: u64) -> Entry {
    let mut h = Histograms::new();
    let mut c = Counters {
        active_users: 2,
        ..Counters::default()
    };
    for k in 0..(3 + interval) {
        h.record(Metric::Ttft, 10_000 + 1_000 * interval + 37 * k + u64::from(agent));
        h.record(Metric::E2e, 90_000 + 500 * k);
        h.record(Metric::OutputTokens, 16);
        c.ok += 1;
        c.output_tokens += 16;
    }
    if interval == 2 {
        c.count_error(stampede_proto::ErrorClass::Timeout);
    }
    Entry::Report(ReportEntry {
        agent: format!("a{agent}"),
        agent_index: agent,
        report: pb::Report {
            interval,
            sequence,
            elapsed_us: (interval + 1) * 1_000_000,
            histograms: h.to_wire(),
            counters: Some(c.to_wire()),
            cpu: 0.01 * interval as f64,
            exemplars: vec![pb::Exemplar {
                metric: pb::Metric::Ttft as i32,
                value_us: 10_000 + interval,
                trace_id: format!("{:032x}", interval * 10 + u64::from(agent)),
                interval,
            }],
            ..pb::Report::default()
        },
    })
}

#[test]
fn a_replayed_log_gives_the_summary_of_the_live_run() {
    let profile = Profile::parse(PROFILE, Path::new("ledger.toml"), &Overrides::default()).expect("valid");
    let spec = Spec::sample(&profile, "20270115T080000Z-ledger-0001", 2);
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = Log::create(&dir.path().join(log::FILE)).expect("the log is created");
    let mut live = Ledger::new(&spec, Some(log));
    for a in 0..2 {
        live.record(Entry::Joined(Joined {
            agent_index: a,
            name: format!("a{a}"),
            users: 2,
            version: "0.1.0".to_owned(),
            peer: Some(format!("127.0.0.1:{}", 4000 + a)),
            gpu_note: None,
        }));
        live.record(Entry::Ready {
            agent_index: a,
            clock_offset_us: Some(3),
            clock_rtt_us: Some(50),
        });
    }
    live.record(Entry::Started {
        unix_ns: 1_800_000_000_000_000_000,
        start_at_us: 1_800_000_000_000_000,
    });
    for a in 0..2 {
        live.record(Entry::Began {
            agent_index: a,
            at_us: 1_800_000_000_000_100 + u64::from(a),
        });
    }
    let mut sent = Histograms::new();
    let mut totals = Counters::default();
    for i in 0..7 {
        for a in 0..2 {
            if a == 1 && i >= 4 {
                continue;
            }
            let entry = report(a, i, i + 1);
            if a == 0
                && let Entry::Report(r) = &entry
            {
                sent.add(&Histograms::from_wire(&r.report.histograms).expect("decodes"));
                let mut c = Counters::from_wire(r.report.counters.as_ref().expect("set")).expect("decodes");
                c.active_users = 0;
                totals.add(&c);
            }
            let effect = live.record(entry.clone());
            assert!(!effect.duplicate);
            // Sent twice, taken once and logged once.
            assert!(live.record(entry).duplicate);
        }
    }
    // An unreadable report is logged and counted, live and replayed.
    let mut bad = report(0, 7, 8);
    if let Entry::Report(r) = &mut bad {
        r.report.histograms[0].v2_deflate = vec![0; 8];
    }
    assert!(live.record(bad).unreadable.is_some());
    live.record(Entry::Lost {
        agent_index: 1,
        reason: "silent for 3s".to_owned(),
        after_start_us: Some(4_200_000),
    });
    live.record(Entry::Finished(FinishedEntry {
        agent: "a0".to_owned(),
        agent_index: 0,
        finished: pb::Finished {
            turns: Vec::new(),
            histograms: sent.to_wire(),
            counters: Some(totals.to_wire()),
            elapsed_us: 7_000_000,
            last_sequence: 7,
            classes: Vec::new(),
            stopped_early: String::new(),
        },
    }));
    let collected = live.close(End::default());
    let original = summary::build(&spec, &collected, None, None);
    assert_eq!(original.requests.failed, 2, "{:?}", original.requests);
    assert_eq!(original.agents[1].end, "lost");
    assert_eq!(original.agents[0].mismatch, None);

    let loaded = load(dir.path()).expect("the run reads back");
    assert!(loaded.notes.is_empty(), "{:?}", loaded.notes);
    let rebuilt = summary::build(&loaded.run.spec, &loaded.run.collected, None, None);
    assert_eq!(
        serde_json::to_string_pretty(&rebuilt).expect("serializes"),
        serde_json::to_string_pretty(&original).expect("serializes")
    );
    assert_eq!(loaded.run.collected.rows.len(), collected.rows.len());
    assert_eq!(loaded.run.collected.unreadable, 1);
}

#[test]
fn a_directory_without_a_log_is_not_a_run() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let e = load(dir.path()).err().expect("no run here");
    assert!(e.to_string().contains("holds no intervals.jsonl"), "{e}");
}
