//! A run's traces as a user finds them in Jaeger: through the query API of
//! a real Jaeger-compatible store (otlp-embedded, built by
//! `.ci/jaeger-query`), searched by the `stampede.run_id` tag, each request
//! trace whole (no reference to a span outside it) with llm-sim's spans
//! beneath the request's, and the run's own span carrying the summary's
//! counts.

// These tests watch real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_tests::harness::Outcome;
use stampede_tests::jaeger::{Jaeger, tag};
use stampede_tests::{Sim, exclusive, num, prompt_of, run_profile, run_profile_with_env};

stampede_tests::suite![a_runs_traces_are_found_in_jaeger_by_its_run_id_and_each_is_whole];

const SERVICE: &str = "stampede-jaeger";
const RUN_TAG: &str = "stampede.run_id";

fn profile(name: &str, sim: &Sim, jaeger: &Jaeger, users: u32, duration: &str) -> String {
    format!(
        r#"
        name = "{name}"
        [target]
        url = "{}"
        model = "llm-sim"
        timeout = "30s"
        [load]
        users = {users}
        duration = "{duration}"
        drain = "30s"
        [request]
        max_tokens = 8
        [prompts]
        inline = ["{}", "{}"]
        [agents]
        count = 2
        [trace]
        endpoint = "{}"
        protocol = "grpc"
        service_name = "{SERVICE}"
        ui = "{}"
        "#,
        sim.url,
        prompt_of(12),
        prompt_of(20),
        jaeger.otlp_url(),
        jaeger.ui_url()
    )
}

fn spans_named<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["spans"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["operationName"] == name).collect())
        .unwrap_or_default()
}

fn parent_of(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .and_then(|r| r["spanID"].as_str())
}

/// Every reference of every span names a span of the same trace: nothing
/// for Jaeger to draw as a missing parent.
fn check_whole(trace: &Value) {
    let id = trace["traceID"].as_str().unwrap();
    let spans = trace["spans"].as_array().unwrap();
    let ids: HashSet<&str> = spans.iter().map(|s| s["spanID"].as_str().unwrap()).collect();
    let mut roots = 0;
    for span in spans {
        assert_eq!(span["traceID"], id, "{span:#}");
        let refs = span["references"].as_array().cloned().unwrap_or_default();
        roots += usize::from(refs.is_empty());
        for r in refs {
            assert_eq!(r["traceID"], id, "a reference out of the trace: {span:#}");
            assert!(
                ids.contains(r["spanID"].as_str().unwrap()),
                "a reference to a span the trace does not hold: {span:#}"
            );
        }
    }
    assert_eq!(roots, 1, "one root span: {trace:#}");
}

/// Whether a trace holds what its request left: a served request's
/// trace has llm-sim's three spans beside stampede's.
fn arrived(trace: &Value) -> bool {
    match spans_named(trace, "llm.request").first() {
        Some(client) if tag(client, "error.type").is_none() => trace["spans"].as_array().map_or(0, Vec::len) >= 4,
        _ => true,
    }
}

/// The traces of the run `run_id`, once `want` of them have arrived, each
/// with its server spans: the store lists a trace from its first span,
/// and the simulator's spans come on the simulator's own schedule.
fn search(jaeger: &Jaeger, run_id: &str, want: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = jaeger.search(SERVICE, RUN_TAG, run_id);
        let whole = found.iter().filter(|t| arrived(t)).count();
        if found.len() >= want && whole == found.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} traces of {run_id} found, {whole} with all their spans",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn a_runs_traces_are_found_in_jaeger_by_its_run_id_and_each_is_whole() -> Outcome {
    let jaeger = Jaeger::start()?;
    let _machine = exclusive();
    let otlp = jaeger.otlp_url();
    let sim = Sim::start(&[
        "--max-batch",
        "2",
        "--prefill-base",
        "20ms",
        "--decode-step",
        "10ms",
        "--fault",
        "503=0.1",
        "--otlp-endpoint",
        &otlp,
        "--otlp-protocol",
        "grpc",
    ]);
    let run = run_profile(&profile("jaeger", &sim, &jaeger, 4, "3s"), &[]);
    // Failed requests beyond the allowed rate (none): exit 3.
    assert_eq!(run.code(), 3, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let run_id = s["run_id"].as_str().unwrap();
    let (ok, failed) = (num(s, "/requests/ok") as usize, num(s, "/requests/failed") as usize);
    let faults = sim.metrics()["llmsim_faults_total{kind=\"http_503\"}"] as usize;
    assert!(ok > 30 && failed > 0, "ok {ok}, failed {failed}\n{}", run.stderr());
    assert_eq!(failed, faults, "every 503 the simulator drew is a failure");
    assert_eq!(num(s, "/requests/cancelled"), 0.0);
    assert_eq!(num(s, "/tracing/spans_exported") as usize, ok + failed);
    assert_eq!(num(s, "/tracing/spans_dropped"), 0.0);

    // The summary says how to find them, and links to Jaeger's search.
    let ui = jaeger.ui_url();
    let search_link = &s["tracing"]["search"];
    assert_eq!(search_link["service"], SERVICE);
    assert_eq!(search_link["tag"], RUN_TAG);
    assert_eq!(search_link["value"], run_id);
    assert_eq!(
        search_link["link"],
        format!("{ui}/search?service={SERVICE}&tags=%7B%22stampede.run_id%22%3A%22{run_id}%22%7D&limit=1500")
    );
    assert!(run.stdout().contains("find      http://"), "{}", run.stdout());
    let html = std::fs::read_to_string(run.dir.as_ref().unwrap().join("report.html")).unwrap();
    let href = search_link["link"].as_str().unwrap().replace('&', "&amp;");
    assert!(
        html.contains(&format!("<a href=\"{href}\">")),
        "the report links the search"
    );

    // Found by the tag: each request's trace and the run's own.
    let traces = search(&jaeger, run_id, ok + failed + 1);
    assert_eq!(traces.len(), ok + failed + 1, "the run's traces and no other");
    let mut by_root: HashMap<String, Vec<&Value>> = HashMap::new();
    for trace in &traces {
        check_whole(trace);
        let root = trace["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["references"].as_array().is_none_or(Vec::is_empty))
            .unwrap();
        // Every span stampede made carries the run id; llm-sim's do not.
        for span in trace["spans"].as_array().unwrap() {
            if ["llm.request", "stampede.run"].contains(&span["operationName"].as_str().unwrap()) {
                assert_eq!(tag(span, RUN_TAG), Some(&Value::from(run_id)), "{span:#}");
            }
        }
        by_root
            .entry(root["operationName"].as_str().unwrap().to_owned())
            .or_default()
            .push(trace);
    }
    assert_eq!(by_root["llm.request"].len(), ok + failed);
    assert_eq!(by_root["stampede.run"].len(), 1);
    let mut served = 0;
    for trace in &by_root["llm.request"] {
        let client = spans_named(trace, "llm.request")[0];
        if tag(client, "error.type").is_some() {
            // A 503 is answered before the engine: no server spans.
            assert_eq!(tag(client, "error.type"), Some(&Value::from("http_503")));
            assert_eq!(trace["spans"].as_array().unwrap().len(), 1, "{trace:#}");
            continue;
        }
        served += 1;
        for phase in ["queue", "prefill", "decode"] {
            let p = spans_named(trace, phase);
            assert_eq!(p.len(), 1, "{phase}: {trace:#}");
            assert_eq!(parent_of(p[0]), client["spanID"].as_str(), "{phase}'s parent");
        }
    }
    assert_eq!(served, ok);

    // One request's trace by id, as the link of a slow request leads.
    let worst = &s["tracing"]["slowest_e2e"][0];
    let id = worst["trace_id"].as_str().unwrap();
    assert_eq!(worst["link"], format!("{ui}/trace/{id}"));
    let one = jaeger.api(&format!("/api/traces/{id}")).expect("found by id");
    let trace = &one["data"][0];
    check_whole(trace);
    let client = spans_named(trace, "llm.request")[0];
    assert!(client["references"].as_array().is_none_or(Vec::is_empty), "{client:#}");
    for phase in ["queue", "prefill", "decode"] {
        assert_eq!(parent_of(spans_named(trace, phase)[0]), client["spanID"].as_str());
    }

    // The run's span: its settings, verdict and the summary's counts.
    let run_span = spans_named(by_root["stampede.run"][0], "stampede.run")[0];
    assert_eq!(by_root["stampede.run"][0]["traceID"], s["tracing"]["run_trace_id"]);
    let int = |key: &str| tag(run_span, key).and_then(Value::as_u64);
    for (key, pointer) in [
        ("stampede.requests.ok", "/requests/ok"),
        ("stampede.requests.failed", "/requests/failed"),
        ("stampede.requests.failed.http_503", "/errors/http_503/count"),
        ("stampede.requests.cancelled", "/requests/cancelled"),
        ("stampede.requests.lost", "/lost/requests"),
        ("stampede.tokens.input", "/tokens/input"),
        ("stampede.tokens.output", "/tokens/output"),
        ("stampede.agents", "/load/agents"),
        ("stampede.exit_code", "/verdict/exit_code"),
    ] {
        assert_eq!(
            int(key),
            s.pointer(pointer).and_then(Value::as_u64),
            "{key}: {run_span:#}"
        );
    }
    for (key, want) in [
        ("stampede.profile", Value::from("jaeger")),
        ("stampede.target.url", Value::from(sim.url.as_str())),
        ("gen_ai.request.model", Value::from("llm-sim")),
        ("stampede.status", Value::from("failed")),
    ] {
        assert_eq!(tag(run_span, key), Some(&want), "{key}: {run_span:#}");
    }
    let duration = tag(run_span, "stampede.duration_s").and_then(Value::as_f64).unwrap();
    assert!((duration - num(s, "/duration_s")).abs() < 1e-9, "{duration}");
    let reasons = tag(run_span, "stampede.verdict.reasons").unwrap().to_string();
    let first = s["verdict"]["reasons"][0].as_str().unwrap();
    assert!(
        reasons.contains(first.split(':').next().unwrap()),
        "{reasons} against {first}"
    );
    eprintln!(
        "{run_id}: {} traces found by {RUN_TAG} ({ok} ok and {failed} failed requests, the run's own), each whole",
        traces.len()
    );

    // A second run into the same store, with a sampler argument that the
    // specification ignores: each run's search finds its own traces only.
    let second = run_profile_with_env(
        &profile("jaeger-again", &sim, &jaeger, 2, "1s"),
        &[],
        &[("OTEL_TRACES_SAMPLER_ARG", "0.25")],
    );
    let s2 = second.summary();
    let ignored = "OTEL_TRACES_SAMPLER_ARG=0.25 is ignored";
    assert_eq!(second.stderr().matches(ignored).count(), 1, "{}", second.stderr());
    assert_eq!(num(s2, "/tracing/sample_ratio"), 1.0);
    let id2 = s2["run_id"].as_str().unwrap();
    let want2 = num(s2, "/tracing/spans_exported") as usize + 1;
    assert_eq!(search(&jaeger, id2, want2).len(), want2, "the second run's traces");
    assert_eq!(
        jaeger.search(SERVICE, RUN_TAG, run_id).len(),
        ok + failed + 1,
        "the first run's search finds none of the second's"
    );
    Ok(())
}
