//! Gating a deploy on a run: thresholds on any figure fail it (exit 99) and
//! name the value and the limit in `junit.xml`, read by a real JUnit
//! reader; a threshold with `abort` stops the load early; goodput equals
//! the share of requests that met every objective, counted from their own
//! spans; a sweep states its capacity at SLO where the simulator's batch
//! runs out.

#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_tests::collector::Collector;
use stampede_tests::harness::{Missing, Outcome};
use stampede_tests::{Sim, exclusive, num, prompt_of, run_profile};

stampede_tests::suite![
    a_failed_threshold_exits_99_and_junit_names_the_value_and_the_limit,
    an_abort_threshold_stops_the_load_within_two_intervals,
    goodput_is_the_share_of_requests_that_met_every_objective_by_their_spans,
    a_sweep_holds_as_many_users_as_the_simulator_has_slots,
];

/// Python with junitparser: `STAMPEDE_JUNIT_PYTHON`.
fn junit_python() -> Result<PathBuf, Missing> {
    std::env::var_os("STAMPEDE_JUNIT_PYTHON")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Missing::new("junitparser is not installed (.ci/run installs it from PyPI and sets STAMPEDE_JUNIT_PYTHON)")
        })
}

/// `junit.xml` as junitparser reads it: every case with its class, name and
/// failures' messages.
fn read_junit(python: &Path, path: &Path) -> Value {
    let script = r#"
import json, sys
from junitparser import JUnitXml
xml = JUnitXml.fromfile(sys.argv[1])
cases = []
for suite in xml:
    for case in suite:
        cases.append({
            "suite": suite.name,
            "class": case.classname,
            "name": case.name,
            "failures": [r.message for r in case.result if r._tag == "failure"],
        })
print(json.dumps({"tests": xml.tests, "failures": xml.failures, "cases": cases}))
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .arg(path)
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the reader prints JSON")
}

/// Four users on a simulator that serves one request at a time: each
/// waits for the three ahead of it, so TTFT p95 is well over 100 ms.
fn one_slot(sim: &Sim, limit: &str) -> String {
    format!(
        r#"
        name = "gate"
        [target]
        url = "{}"
        model = "llm-sim"
        [load]
        users = 4
        duration = "3s"
        drain = "20s"
        [request]
        max_tokens = 8
        [prompts]
        inline = ["{}"]
        [thresholds]
        "ttft.p95" = "{limit}"
        "error_rate" = "< 1%"
        "#,
        sim.url,
        prompt_of(10)
    )
}

fn a_failed_threshold_exits_99_and_junit_names_the_value_and_the_limit() -> Outcome {
    let python = junit_python()?;
    let _machine = exclusive();
    let sim = Sim::start(&["--max-batch", "1", "--decode-step", "20ms"]);
    let run = run_profile(&one_slot(&sim, "< 100ms"), &[]);
    let s = run.summary();
    assert_eq!(run.code(), 99, "{:#}\n{}", s["verdict"], run.stderr());
    let ttft_p95 = num(s, "/metrics/ttft/p95");
    assert!(ttft_p95 > 100.0, "{ttft_p95}");
    let t = &s["thresholds"][0];
    assert_eq!(
        (t["key"].as_str(), t["passed"].as_bool()),
        (Some("ttft.p95"), Some(false))
    );
    assert_eq!(t["value"].as_f64(), Some(ttft_p95));
    assert!(run.stdout().contains("FAIL ttft.p95 = "), "{}", run.stdout());
    assert!(run.stdout().contains("result    failed (exit 99)"), "{}", run.stdout());

    let junit = read_junit(&python, &run.dir.as_ref().unwrap().join("junit.xml"));
    let cases = junit["cases"].as_array().unwrap();
    let case = cases
        .iter()
        .find(|c| c["name"] == "ttft.p95 < 100 ms")
        .unwrap_or_else(|| panic!("no case for the threshold: {junit:#}"));
    assert_eq!(case["class"], "stampede.thresholds");
    let failure = case["failures"][0].as_str().unwrap();
    assert!(
        failure.starts_with("ttft.p95 = ") && failure.ends_with(" ms, limit < 100 ms"),
        "{failure}"
    );
    let named: f64 = failure["ttft.p95 = ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (named - ttft_p95).abs() <= ttft_p95 * 1e-3,
        "{failure} against {ttft_p95}"
    );
    let error_rate = cases.iter().find(|c| c["name"] == "error_rate < 1%").unwrap();
    assert_eq!(error_rate["failures"].as_array().unwrap().len(), 0, "{error_rate:#}");
    for class in ["stampede.requests", "stampede.validity", "stampede.agents"] {
        assert!(cases.iter().any(|c| c["class"] == class), "no {class} case: {junit:#}");
    }
    assert_eq!(junit["failures"], 1, "{junit:#}");

    // The same run with a limit it meets passes.
    let run = run_profile(&one_slot(&sim, "< 60s"), &[]);
    assert_eq!(run.code(), 0, "{:#}", run.summary()["verdict"]);
    let junit = read_junit(&python, &run.dir.as_ref().unwrap().join("junit.xml"));
    assert_eq!(junit["failures"], 0, "{junit:#}");
    Ok(())
}

fn an_abort_threshold_stops_the_load_within_two_intervals() -> Outcome {
    let _machine = exclusive();
    let sim = Sim::start(&["--max-batch", "1", "--decode-step", "20ms"]);
    let profile = format!(
        r#"
        name = "abort"
        [target]
        url = "{}"
        model = "llm-sim"
        [load]
        users = 6
        duration = "30s"
        drain = "20s"
        [request]
        max_tokens = 8
        [prompts]
        inline = ["{}"]
        [thresholds]
        "ttft.p95" = {{ limit = "< 50ms", abort = true }}
        "#,
        sim.url,
        prompt_of(10)
    );
    let started = Instant::now();
    let run = run_profile(&profile, &[]);
    let took = started.elapsed();
    let s = run.summary();
    assert_eq!(run.code(), 99, "{:#}\n{}", s["verdict"], run.stderr());
    let why = s["verdict"]["stopped_by"]
        .as_str()
        .expect("the summary says what stopped the load");
    assert!(why.starts_with("threshold ttft.p95 broke at "), "{why}");
    assert!(why.contains("limit < 50 ms"), "{why}");
    let broke_s: f64 = why["threshold ttft.p95 broke at ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(broke_s <= 5.0, "the limit breaks in the first seconds: {why}");
    // No user is running two intervals after the breach, and the run
    // ended long before its 30 s.
    for i in s["intervals"].as_array().unwrap() {
        if num(i, "/end_s") > broke_s + 2.0 {
            assert_eq!(i["active"], 0, "users still running after the stop: {i:#}");
        }
    }
    assert!(num(s, "/duration_s") < broke_s + 3.0, "{:#}", s["duration_s"]);
    assert!(took < Duration::from_secs(20), "the run took {took:?}");
    assert!(
        s["verdict"]["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("stopped early: threshold ttft.p95"),
        "{:#}",
        s["verdict"]
    );
    eprintln!("{why}; the run ended after {:.1} s", num(s, "/duration_s"));
    Ok(())
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn goodput_is_the_share_of_requests_that_met_every_objective_by_their_spans() -> Outcome {
    let _machine = exclusive();
    let collector = Collector::start();
    // Prefill is 5 ms plus 1 ms a word: short prompts answer within the
    // TTFT objective, long ones never do.
    let sim = Sim::start(&[
        "--max-batch",
        "64",
        "--prefill-base",
        "5ms",
        "--prefill-per-token",
        "1ms",
        "--decode-step",
        "15ms",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| {
            let (class, words) = if i % 3 == 0 { ("long", 400) } else { ("short", 10) };
            serde_json::json!({ "prompt": format!("{i} {}", prompt_of(words - 1)), "class": class }).to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let service = "stampede-goodput";
    let profile = format!(
        r#"
        name = "goodput"
        [target]
        url = "{}"
        model = "llm-sim"
        [load]
        users = 6
        duration = "5s"
        drain = "20s"
        [request]
        max_tokens = 8
        [prompts]
        file = "{}"
        [agents]
        count = 2
        [slo]
        ttft = "200ms"
        tpot = "100ms"
        e2e = "2s"
        [trace]
        endpoint = "{}"
        protocol = "grpc"
        service_name = "{service}"
        "#,
        sim.url,
        file.display(),
        collector.grpc_url()
    );
    let run = run_profile(&profile, &[]);
    let s = run.summary();
    assert_eq!(run.code(), 0, "{:#}\n{}", s["verdict"], run.stderr());
    let ok = num(s, "/requests/ok") as usize;
    assert_eq!(num(s, "/requests/failed"), 0.0);
    assert_eq!(num(s, "/tracing/spans_exported") as usize, ok);
    let deadline = Instant::now() + Duration::from_secs(30);
    let traces = loop {
        let t = collector.traces(service, "llm.request");
        if t.len() == ok || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(traces.len(), ok, "one trace per request");
    // Count the good requests from each request's own span.
    let us = |span: &Value, key: &str| {
        tag(span, key)
            .and_then(Value::as_f64)
            .map(|ms| (ms * 1e3).round() as u64)
    };
    let mut good = 0;
    let mut flagged = 0;
    for t in &traces {
        let span = t["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["operationName"] == "llm.request")
            .unwrap();
        let ttft = us(span, "stampede.ttft_ms").expect("a streamed answer has a TTFT");
        let e2e = us(span, "stampede.e2e_ms").expect("every success has an E2E");
        let tpot_ok = us(span, "stampede.tpot_ms").is_none_or(|t| t <= 100_000);
        if ttft <= 200_000 && tpot_ok && e2e <= 2_000_000 {
            good += 1;
        }
        if tag(span, "stampede.slo_met") == Some(&Value::Bool(true)) {
            flagged += 1;
        }
    }
    assert_eq!(flagged, good, "the spans' own flag agrees with their timings");
    let g = &s["goodput"];
    assert_eq!(num(g, "/requests") as usize, good, "{g:#}");
    let ratio = good as f64 / ok as f64;
    assert!((num(g, "/ratio") - ratio).abs() < 1e-12, "{g:#} against {ratio}");
    assert!(good > 0 && good < ok, "both kinds of request ran: {good} of {ok}");
    let class = |name: &str| {
        s["classes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["class"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(num(&class("short"), "/goodput/ratio"), 1.0);
    assert_eq!(num(&class("long"), "/goodput/ratio"), 0.0);
    assert!(
        run.stdout().contains(&format!(
            "goodput   {good} of {ok} requests met TTFT ≤ 200 ms, TPOT ≤ 100 ms, E2E ≤ 2 s"
        )),
        "{}",
        run.stdout()
    );
    eprintln!("goodput: {good} of {ok} requests met every objective, by their spans and by the summary");
    Ok(())
}

fn a_sweep_holds_as_many_users_as_the_simulator_has_slots() -> Outcome {
    let _machine = exclusive();
    // Four slots, answers of about 8 × 25 ms: up to 4 users nobody waits;
    // at 8 half of the requests wait a whole answer for a slot.
    let sim = Sim::start(&[
        "--max-batch",
        "4",
        "--prefill-base",
        "5ms",
        "--prefill-per-token",
        "0s",
        "--decode-step",
        "25ms",
        "--decode-step-per-seq",
        "0s",
    ]);
    let profile = format!(
        r#"
        name = "capacity"
        [target]
        url = "{}"
        model = "llm-sim"
        [load.sweep]
        users = [1, 2, 4, 8]
        step = "3s"
        [load]
        warmup = "1s"
        drain = "20s"
        [request]
        max_tokens = 8
        [prompts]
        inline = ["{}"]
        [slo]
        ttft = "100ms"
        ratio = 0.95
        "#,
        sim.url,
        prompt_of(10)
    );
    let run = run_profile(&profile, &[]);
    let s = run.summary();
    assert_eq!(run.code(), 0, "{:#}\n{}", s["verdict"], run.stderr());
    let c = &s["capacity"];
    assert_eq!(c["label"], "4 users", "{c:#}\n{:#}", s["steps"]);
    assert_eq!(c["step"], 2);
    let ratios: Vec<f64> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| num(st, "/goodput/ratio"))
        .collect();
    assert!(ratios[..3].iter().all(|r| *r >= 0.95), "{ratios:?}");
    assert!(ratios[3] < 0.95, "{ratios:?}");
    let finding = s["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "capacity")
        .expect("a capacity finding");
    assert!(
        finding["title"]
            .as_str()
            .unwrap()
            .starts_with("capacity: this server holds 4 users with"),
        "{finding:#}"
    );
    assert!(run.stdout().contains("capacity  4 users: "), "{}", run.stdout());
    eprintln!("capacity at SLO: {} (goodput ratio per step {ratios:?})", c["label"]);
    Ok(())
}
