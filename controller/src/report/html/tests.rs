//! The page against synthetic runs built through the real merge and
//! summary code.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use stampede_proto::{Counters, ErrorClass, Histograms, Metric, Sparse};

use super::*;
use crate::findings::Finding;
use crate::merge::{Merger, Report, Timeline as Places};
use crate::profile::{Overrides, Profile};
use crate::report::summary::{self, Figure, IntervalSummary, ServerInterval, ServerSummary, trace};
use crate::results::{AgentEnd, AgentRecord, Collected, Exemplar, Spec};
use crate::server::{Canon, Kind, Source};

const STAGES: &str = r#"
name = "html <test> & co"
[load]
stages = [{ users = 2, duration = "3s" }, { users = 8, duration = "3s" }, { users = 24, duration = "3s" }]
warmup = "1s"
"#;

/// A run of `agents` agents over `intervals` one-second intervals: TTFT
/// grows with the interval, a few timeouts and 503s, and exemplars.
fn run(profile: &str, agents: u32, intervals: u64) -> (Summary, ReportData) {
    let p = Profile::parse(profile, Path::new("test.toml"), &Overrides::default()).expect("a valid profile");
    let mut m = Merger::new(agents, Places::new(&p.load, p.report.interval));
    let mut rows = Vec::new();
    for i in 0..intervals {
        for a in 0..agents {
            let mut h = Histograms::new();
            for k in 0..20u64 {
                h.record(Metric::Ttft, 20_000 + i * 1_000 + k * 500);
                h.record(Metric::ClientQueue, 100 + k * 10);
                h.record(Metric::Tpot, 8_000 + k * 10);
                h.record(Metric::E2e, 300_000 + i * 1_000 + k * 700);
                for g in 0..8 {
                    h.record(Metric::Itl, 7_000 + g * 100 + k);
                }
            }
            let mut errors = BTreeMap::new();
            if i % 7 == 3 {
                errors.insert(ErrorClass::Timeout, 1);
            }
            if i % 11 == 5 {
                errors.insert(ErrorClass::Status(503), 2);
            }
            let report = Report {
                interval: i,
                sequence: i + 1,
                elapsed_us: (i + 1) * 1_000_000,
                histograms: Sparse::from(&h),
                counters: Counters {
                    ok: 20,
                    errors,
                    output_tokens: 20 * 64,
                    input_tokens: 20 * 100,
                    tokens_from_usage: 20,
                    active_users: 2,
                    ..Counters::default()
                },
                samples: BTreeMap::new(),
                cpu: 0.1,
                presence: Vec::new(),
                class_ttft: BTreeMap::new(),
            };
            rows.extend(m.add(a, &report).1);
        }
    }
    for a in 0..agents {
        rows.extend(m.gone(a));
    }
    rows.extend(m.flush());
    let records = (0..agents)
        .map(|a| AgentRecord {
            name: format!("local-{a}"),
            index: a,
            users: 2,
            version: "0".into(),
            peer: None,
            end: AgentEnd::Finished,
            lost_at: None,
            in_flight: 0,
            in_flight_sequence: 0,
            stopped_early: None,
            began_at_us: Some(1_000 + u64::from(a) * 100),
            clock_offset_us: Some(5),
            clock_rtt_us: Some(40),
            gpu_note: None,
            gpu: Vec::new(),
        })
        .collect();
    let exemplars = (0..3)
        .map(|k| Exemplar {
            agent: 0,
            metric: Metric::E2e,
            value_us: 900_000 - k * 1_000,
            trace_id: format!("{k:032x}"),
            interval: k,
        })
        .collect();
    let collected = Collected {
        merger: m,
        agents: records,
        rows,
        started_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        start_at_us: Some(1_000),
        interrupted: false,
        aborted: None,
        failure: None,
        stopped_by: None,
        metrics_push: None,
        unreadable: 0,
        exemplars,
        classes: BTreeMap::new(),
        classes_whole_run: false,
        turns: BTreeMap::new(),
    };
    let spec = Spec::sample(&p, "20270115T080000Z-test-0001", agents);
    let mut s = summary::build(&spec, &collected, None, None);
    s.server = Some(server(&s));
    let d = ReportData::of(&collected, 1.0);
    (s, d)
}

/// Server figures for every interval, as a scrape of llm-sim gives them.
fn server(s: &Summary) -> ServerSummary {
    let source = |metric| Source {
        family: "llm-sim",
        metric,
        series: 1,
    };
    let figure = |metric, kind, unit, mean| Figure {
        source: source(metric),
        kind,
        unit,
        mean: Some(mean),
        max: None,
        count: Some(10.0),
        per_s: None,
    };
    let mut mapped = BTreeMap::new();
    mapped.insert(
        Canon::QueueTime,
        figure("llmsim_queue_time_seconds", Kind::Histogram, "ms", 5.0),
    );
    mapped.insert(
        Canon::Running,
        figure("llmsim_running_sequences", Kind::Gauge, "requests", 4.0),
    );
    ServerSummary {
        url: "http://127.0.0.1:1/metrics".into(),
        scrapes: s.intervals.len(),
        failed_scrapes: 0,
        note: None,
        families: vec!["llm-sim"],
        mapped,
        unmapped: Vec::new(),
        skipped_lines: 0,
        busy_s: None,
        intervals: s
            .intervals
            .iter()
            .map(|i| ServerInterval {
                interval: i.interval,
                running: Some(4.0),
                waiting: Some((i.interval % 5) as f64),
                kv_cache_usage: Some(0.5),
                utilisation: Some(0.8),
                queue_time_ms: Some(5.0),
                prefill_ms: None,
                preemptions: Some(if i.interval % 7 == 3 { 2.0 } else { 0.0 }),
                prefix_cache_hit_rate: None,
                vram_used_mib: Some(60_000.0),
                vram_free_mib: Some(21_920.0),
                vram_used_share: Some(60_000.0 / 81_920.0),
                memory_bandwidth: Some(0.7),
                compute_active: Some(0.3),
            })
            .collect(),
    }
}

/// Every `<svg ...>` opening tag with the body up to its `</svg>`.
fn svgs(html: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("<svg ") {
        let tail = &rest[at..];
        let open_end = tail.find('>').expect("a closed tag");
        let end = tail.find("</svg>").expect("a closed svg");
        out.push((&tail[..open_end], &tail[open_end..end]));
        rest = &tail[end..];
    }
    out
}

/// The value of `name="..."` in a tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let at = tag.find(&key)? + key.len();
    tag[at..].split('"').next()
}

/// Every element of a body that names a series, as its tag.
fn series_tags(body: &str) -> Vec<&str> {
    body.split('<').filter(|t| t.contains(" data-series=\"")).collect()
}

#[test]
fn every_time_chart_has_one_point_per_interval() {
    let (s, d) = run(STAGES, 2, 12);
    let html = render(&s, &d);
    let n = s.intervals.len();
    assert_eq!(n, 12);
    let time: Vec<_> = svgs(&html)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("time"))
        .collect();
    // Load, requests, tokens, TTFT, ITL, E2E, errors, server requests,
    // server queue, memory, preemptions, utilisation, and TTFT's parts.
    assert_eq!(
        time.len(),
        13,
        "{:?}",
        time.iter().map(|t| attr(t.0, "data-chart")).collect::<Vec<_>>()
    );
    for (open, body) in &time {
        let series = series_tags(body);
        assert!(!series.is_empty(), "{open}");
        for tag in series {
            assert_eq!(attr(tag, "data-points"), Some(n.to_string().as_str()), "{tag}");
            let values = attr(tag, "data-values").expect("values").split(' ').count();
            assert_eq!(values, n, "{tag}");
        }
    }
    // The TTFT p50 line has a point wherever the summary has a value.
    let ttft = time.iter().find(|t| attr(t.0, "data-chart") == Some("ttft")).unwrap();
    let p50 = series_tags(ttft.1)[0];
    let missing = s.intervals.iter().filter(|i| i.ttft_p50_ms.is_none()).count();
    assert_eq!(attr(p50, "data-missing"), Some(missing.to_string().as_str()));
    // Errors stacked by class.
    let errors = time.iter().find(|t| attr(t.0, "data-chart") == Some("errors")).unwrap();
    let classes: Vec<_> = series_tags(errors.1).iter().map(|t| attr(t, "data-series")).collect();
    assert_eq!(classes, [Some("timeout"), Some("http_503")]);
}

#[test]
fn the_page_names_no_url_but_its_trace_links() {
    let (mut s, d) = run(STAGES, 2, 12);
    s.tracing.slowest_e2e = vec![trace::Exemplar {
        trace_id: "ab".repeat(16),
        value_ms: 900.0,
        agent: 0,
        interval: 3,
        link: Some(format!("http://localhost:16686/trace/{}", "ab".repeat(16))),
    }];
    s.tracing.search = Some(trace::Search {
        service: "stampede".into(),
        tag: "stampede.run_id".into(),
        value: s.run_id.clone(),
        link: Some(stampede_otel::search_link(
            "http://localhost:16686",
            "stampede",
            "stampede.run_id",
            &s.run_id,
        )),
    });
    let html = render(&s, &d);
    assert!(html.contains(r#"id="trace-search""#));
    for banned in ["<link", "<img", "<iframe", "src=", "url(", "@import", "@font-face"] {
        assert!(!html.contains(banned), "{banned}");
    }
    let mut rest = html.as_str();
    let mut links = 0;
    while let Some(at) = rest.find("://") {
        let before = &rest[..at];
        let context = rest.get(at.saturating_sub(40)..at + 30).unwrap_or("");
        let svg_namespace = rest[at..].starts_with("://www.w3.org/2000/svg\"");
        // Text (the target's URL, the server's metrics page) is fine;
        // what a browser would fetch is not.
        let in_anchor = before.ends_with("<a href=\"http") || before.ends_with("<a href=\"https");
        let in_text = before.rfind('<') < before.rfind('>');
        assert!(svg_namespace || in_anchor || in_text, "a URL outside a link: {context}");
        links += usize::from(in_anchor);
        rest = &rest[at + 3..];
    }
    assert_eq!(links, 2);
}

#[test]
fn text_is_escaped() {
    let (mut s, d) = run(STAGES, 1, 10);
    s.findings.push(Finding {
        kind: "errors",
        title: "<script>alert(1)</script>".into(),
        evidence: [("top_class", serde_json::json!("<b>"))].into_iter().collect(),
        basis: "\"quoted\" & more".into(),
    });
    let html = render(&s, &d);
    assert!(html.contains("html &lt;test&gt; &amp; co"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script>alert"));
    assert!(html.contains("&quot;quoted&quot; &amp; more"));
    // One script element: the page's own.
    assert_eq!(html.matches("<script>").count(), 1);
}

#[test]
fn findings_come_first_and_the_knee_is_marked() {
    let (mut s, d) = run(STAGES, 2, 12);
    if let Some(k) = s.knee.as_mut() {
        k.found = true;
        k.step = Some(2);
        k.label = Some("24 users".into());
    }
    let html = render(&s, &d);
    let findings = html.find(r#"id="findings""#).expect("the findings section");
    assert!(findings < html.find(r#"id="timeline""#).expect("the time charts"));
    let knees: Vec<_> = html.match_indices("data-knee=\"").collect();
    assert_eq!(knees.len(), 4, "one ring per latency-against-throughput chart");
    assert!(html.contains(r#"data-knee="24 users""#));
    assert!(html.contains("24 users · knee"));
    // Four steps charts, one point per step.
    let steps: Vec<_> = svgs(&html)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("steps"))
        .collect();
    assert_eq!(steps.len(), 4);
    for (_, body) in steps {
        assert_eq!(attr(series_tags(body)[0], "data-points"), Some("3"));
    }
}

#[test]
fn distributions_reach_into_the_tail() {
    let (s, d) = run(STAGES, 2, 12);
    let html = render(&s, &d);
    let dists: Vec<_> = svgs(&html)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("percentiles"))
        .collect();
    assert_eq!(dists.len(), 4);
    for (open, body) in dists {
        let tags = series_tags(body);
        let points: usize = attr(tags[0], "data-points").unwrap().parse().unwrap();
        assert!(points > 10, "{open}: {points}");
        for label in ["50%", "90%", "99%"] {
            assert!(body.contains(&format!(">{label}</text>")), "{open}: {label}");
        }
    }
}

#[test]
fn where_ttft_goes_names_its_sources_and_adds_up() {
    let (s, d) = run(STAGES, 2, 12);
    let html = render(&s, &d);
    assert!(html.contains("llmsim_queue_time_seconds"));
    let parts = svgs(&html)
        .into_iter()
        .find(|(open, _)| attr(open, "data-kind") == Some("parts"))
        .expect("the overall bar");
    let sum: f64 = series_tags(parts.1)
        .iter()
        .map(|t| attr(t, "data-value").unwrap().parse::<f64>().unwrap())
        .sum();
    let expected = s.metrics.ttft.mean + s.metrics.client_queue.mean;
    assert!((sum - expected).abs() / expected < 0.01, "{sum} vs {expected}");
}

/// The page grows with the intervals, not with the agents (merged before
/// it sees them): a short run's intervals repeated over an hour stand for
/// a long run here, where merging 3,600 real ones would take most of a
/// debug build's minute. The example `report_bench` renders a real hour
/// of four agents in a release build.
#[test]
fn an_hour_of_intervals_stays_small() {
    let (mut s, mut d) = run(STAGES, 2, 12);
    let n = 3_600;
    let (iv, extra) = (s.intervals.clone(), d.intervals.clone());
    let mut rows = s.server.as_ref().unwrap().intervals.clone();
    s.intervals = (0..n)
        .map(|k| IntervalSummary {
            interval: k as u64,
            end_s: (k + 1) as f64,
            length_s: 1.0,
            ..iv[k % iv.len()].clone()
        })
        .collect();
    d.intervals = (0..n)
        .map(|k| IntervalData {
            interval: k as u64,
            ..extra[k % extra.len()].clone()
        })
        .collect();
    rows = (0..n)
        .map(|k| ServerInterval {
            interval: k as u64,
            ..rows[k % rows.len()].clone()
        })
        .collect();
    s.server.as_mut().unwrap().intervals = rows;
    let html = render(&s, &d);
    assert!(html.len() < 5_000_000, "{} bytes", html.len());
    let time: Vec<_> = svgs(&html)
        .into_iter()
        .filter(|(open, _)| attr(open, "data-kind") == Some("time"))
        .collect();
    assert_eq!(time.len(), 13);
    for (open, body) in time {
        for tag in series_tags(body) {
            assert_eq!(attr(tag, "data-points"), Some("3600"), "{open}");
        }
    }
}
