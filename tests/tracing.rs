//! Every request a trace: spans found through Jaeger's query API, as a
//! user finds them, in an in-memory OTLP collector (the OpenTelemetry
//! project's generated receiver, `stampede_tests::collector`), directly
//! over gRPC and over HTTP through a real collector hop (rotel).

// These tests watch real processes from outside; there is no tokio clock to
// share here. Their helpers panic on failure: that is how a test fails.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use stampede_tests::collector::Collector;
use stampede_tests::harness::{Missing, Outcome};
use stampede_tests::prom::free_port;
use stampede_tests::{Run, SIM_NDJSON_TARGET, Sim, exclusive, http_post, num, prompt_of, relative_error, run_profile};

stampede_tests::suite![
    over_grpc_every_request_is_one_client_span_joined_with_the_servers_spans,
    over_http_through_a_real_collector_every_request_is_one_client_span,
    every_dialect_joins_the_servers_spans,
    the_server_queue_percentiles_are_the_servers_own_spans_or_within_a_bucket_of_them,
    sampling_keeps_every_failure_and_each_intervals_slowest,
    with_the_collector_down_the_run_ends_on_time_and_counts_the_lost_spans,
    with_the_collector_down_the_rates_are_those_of_a_run_without_tracing,
];

/// A real OTLP collector hop: rotel, HTTP and gRPC in, gRPC out.
struct Rotel {
    child: Child,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Rotel {
    fn binary() -> Result<PathBuf, Missing> {
        let path = std::env::var_os("STAMPEDE_ROTEL").map(PathBuf::from).or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(
                PathBuf::from(home)
                    .join(".cache/stampede/rotel-0.0.1a15/venv/lib/python3.11/site-packages/rotel/rotel-agent"),
            )
        });
        match path {
            Some(path) if path.is_file() => Ok(path),
            _ => Err(Missing::new(
                "rotel is not installed (.ci/run installs it from PyPI and sets STAMPEDE_ROTEL)",
            )),
        }
    }

    fn start(binary: &PathBuf, export_to: &str) -> Rotel {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(binary)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &grpc.to_string()])
            .args(["--otlp-http-endpoint", &http.to_string()])
            .args(["--exporter", "otlp", "--otlp-exporter-endpoint", export_to])
            .args(["--pid-file", dir.path().join("rotel.pid").to_str().expect("utf-8")])
            .stdout(std::fs::File::create(dir.path().join("rotel.log")).expect("a log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("rotel starts");
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(http).is_err() {
            assert!(Instant::now() < deadline, "rotel did not listen on {http}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Rotel { child, http, _dir: dir }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self._dir.path().join("rotel.log")).unwrap_or_default();
            eprintln!("rotel's log:\n{log}");
        }
    }
}

/// A simulator exporting its spans to `endpoint`, with a queue: two batch
/// slots for more users than that.
fn traced_sim(endpoint: &str, protocol: &str, max_batch: u32) -> Sim {
    Sim::start(&[
        "--max-batch",
        &max_batch.to_string(),
        "--prefill-base",
        "20ms",
        "--prefill-per-token",
        "0s",
        "--decode-step",
        "10ms",
        "--decode-step-per-seq",
        "0s",
        "--otlp-endpoint",
        endpoint,
        "--otlp-protocol",
        protocol,
    ])
}

fn profile(url: &str, users: u32, duration: &str, timeout: &str, trace: &str) -> String {
    format!(
        r#"
        name = "traced"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "{timeout}"
        [load]
        users = {users}
        duration = "{duration}"
        drain = "30s"
        [request]
        max_tokens = 8
        temperature = 0.5
        [prompts]
        inline = ["{}", "{}"]
        [agents]
        count = 2
        [trace]
        {trace}
        "#,
        prompt_of(12),
        prompt_of(20)
    )
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn spans_named<'a>(trace: &'a Value, name: &str) -> Vec<&'a Value> {
    trace["spans"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["operationName"] == name).collect())
        .unwrap_or_default()
}

fn parent_of(span: &Value) -> Option<String> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")
        .and_then(|r| r["spanID"].as_str())
        .map(str::to_owned)
}

/// Polls until `done` holds, for up to 15 s (spans arrive in batches).
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks one successful request's client span against the run.
fn check_client_span(span: &Value, s: &Value, sim: &Sim) {
    let port: i64 = sim.addr().rsplit(':').next().unwrap().parse().unwrap();
    let expect = [
        ("gen_ai.operation.name", Value::from("chat")),
        ("gen_ai.provider.name", Value::from("openai")),
        ("gen_ai.system", Value::from("openai")),
        ("gen_ai.request.model", Value::from("llm-sim")),
        ("gen_ai.request.max_tokens", Value::from(8)),
        ("gen_ai.request.temperature", Value::from(0.5)),
        ("gen_ai.usage.output_tokens", Value::from(8)),
        ("server.address", Value::from("127.0.0.1")),
        ("server.port", Value::from(port)),
        ("http.response.status_code", Value::from(200)),
        ("stampede.run_id", s["run_id"].clone()),
        ("stampede.stage", Value::from(0)),
    ];
    for (key, value) in expect {
        assert_eq!(tag(span, key), Some(&value), "{key} of {span:#}");
    }
    assert!(
        tag(span, "gen_ai.usage.input_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
    );
    assert!(
        tag(span, "stampede.agent")
            .and_then(Value::as_i64)
            .is_some_and(|a| (0..2).contains(&a))
    );
    assert!(tag(span, "stampede.user").and_then(Value::as_i64).is_some());
    // The simulator stops at max_tokens: "length".
    let reasons = tag(span, "gen_ai.response.finish_reasons").expect("finish reasons");
    assert!(reasons.to_string().contains("length"), "{reasons}");
    let ttft = tag(span, "stampede.ttft_ms")
        .and_then(Value::as_f64)
        .expect("TTFT attribute");
    let tpot = tag(span, "stampede.tpot_ms")
        .and_then(Value::as_f64)
        .expect("TPOT attribute");
    assert!(ttft > 0.0 && tpot > 0.0, "{span:#}");
    let logs = span["logs"].as_array().expect("logs");
    let first = logs
        .iter()
        .find(|l| l["fields"].to_string().contains("first_token"))
        .expect("a first_token event");
    let at = first["timestamp"].as_u64().unwrap() - span["startTime"].as_u64().unwrap();
    assert!(
        (at as f64 / 1e3 - ttft).abs() < 1.0,
        "the first_token event at {at} us, TTFT {ttft} ms"
    );
}

/// The simulator's spans: one per phase, in the client span's trace, each
/// naming the client span as its parent.
fn check_server_phases(trace: &Value, client: &Value, what: &str) {
    for phase in ["queue", "prefill", "decode"] {
        let p = spans_named(trace, phase);
        assert_eq!(p.len(), 1, "{what}, {phase}: {trace:#}");
        assert_eq!(p[0]["traceID"], client["traceID"]);
        assert_eq!(
            parent_of(p[0]).as_deref(),
            client["spanID"].as_str(),
            "{what}: {phase}'s parent"
        );
    }
}

/// Every successful request has exactly one client span with the GenAI
/// attributes; the server's spans share its trace and name it as parent.
/// Returns the queue-wait spans' total, microseconds.
fn check_traces(c: &Collector, service: &str, run: &Run, sim: &Sim) -> f64 {
    let s = run.summary();
    let ok = num(s, "/requests/ok") as usize;
    let served = sim.metrics()["llmsim_requests_served_total"] as usize;
    assert_eq!(num(s, "/requests/failed"), 0.0, "{}", run.stderr());
    assert_eq!(served, ok, "the simulator served every request once");
    assert_eq!(
        num(s, "/tracing/spans_exported") as usize,
        ok,
        "{:#}\n{}",
        s["tracing"],
        run.stderr()
    );
    assert_eq!(num(s, "/tracing/spans_dropped"), 0.0);
    // Server spans arrive on their own schedule: wait for all of them.
    let mut seen = (0, 0);
    let complete = |seen: &mut (usize, usize)| {
        let traces = c.traces(service, "llm.request");
        let joined = traces.iter().filter(|t| spans_named(t, "decode").len() == 1).count();
        *seen = (traces.len(), joined);
        traces.len() == ok && joined == ok
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !complete(&mut seen) {
        assert!(
            Instant::now() < deadline,
            "of {ok} requests, {} traces arrived and {} with their server spans",
            seen.0,
            seen.1
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let traces = c.traces(service, "llm.request");
    let mut queue_us = 0.0;
    let mut sampled = None;
    for trace in &traces {
        let clients = spans_named(trace, "llm.request");
        assert_eq!(clients.len(), 1, "one client span per trace: {trace:#}");
        let client = clients[0];
        check_client_span(client, s, sim);
        check_server_phases(trace, client, "openai-chat");
        queue_us += spans_named(trace, "queue")[0]["duration"].as_f64().unwrap();
        sampled.get_or_insert_with(|| {
            (
                client["traceID"].as_str().unwrap().to_owned(),
                client["spanID"].as_str().unwrap().to_owned(),
            )
        });
    }
    // Kinds, as OTLP carries them: the client span is CLIENT (3), the
    // simulator's SERVER (2).
    let (trace_id, client_id) = sampled.expect("at least one trace");
    let raw = c.otlp_spans(&trace_id);
    assert_eq!(raw[&client_id]["kind"], 3, "{:#}", raw[&client_id]);
    for phase in ["queue", "prefill", "decode"] {
        assert!(raw.values().any(|s| s["name"] == phase && s["kind"] == 2), "{raw:#?}");
    }
    // Found by trace id too, as a link from the summary leads there.
    let one = c.api(&format!("/api/traces/{trace_id}")).expect("found by id");
    assert_eq!(one["data"][0]["traceID"], trace_id.as_str());
    queue_us
}
fn over_grpc_every_request_is_one_client_span_joined_with_the_servers_spans() -> Outcome {
    let _machine = exclusive();
    let c = Collector::start();
    let sim = traced_sim(&c.grpc_url(), "grpc", 2);
    let service = "stampede-grpc";
    let trace = format!(
        "endpoint = \"{}\"\nprotocol = \"grpc\"\nservice_name = \"{service}\"",
        c.grpc_url()
    );
    let run = run_profile(&profile(&sim.url, 6, "3s", "30s", &trace), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    assert!(num(s, "/requests/ok") > 50.0, "too few requests to judge");
    let queue_us = check_traces(&c, service, &run, &sim);
    // The queue-wait spans against the simulator's ground truth.
    let truth_us = sim.metrics()["llmsim_queue_time_seconds_sum"] * 1e6;
    eprintln!("queue-wait spans {queue_us:.0} us, ground truth {truth_us:.0} us");
    assert!(truth_us > 1e6, "the load queued too little to judge: {truth_us} us");
    assert!(
        relative_error(queue_us, truth_us) < 0.05,
        "queue-wait spans sum to {queue_us} us, the simulator's histogram to {truth_us} us"
    );
    // The controller's run span, and log lines naming its trace.
    let run_trace = s["tracing"]["run_trace_id"].as_str().unwrap();
    let found = c.api(&format!("/api/traces/{run_trace}")).expect("the run's span");
    assert_eq!(found["data"][0]["spans"][0]["operationName"], "stampede.run");
    assert!(
        run.stderr().contains(&format!("trace_id={run_trace}")),
        "{}",
        run.stderr()
    );
    // The default UI link and the terminal's worst request.
    let worst = &s["tracing"]["slowest_e2e"][0];
    let id = worst["trace_id"].as_str().unwrap();
    assert_eq!(worst["link"], format!("http://localhost:16686/trace/{id}"));
    assert!(run.stdout().contains(id), "{}", run.stdout());
    Ok(())
}
/// The `ceil(q·n)`-th smallest, as HDR and the summary read a percentile.
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// With `query_url`, the controller reads the simulator's queue spans back
/// from the trace store: the percentiles are those of the spans exactly.
/// Rebuilt without them, the same run's percentiles come from the
/// simulator's histogram buckets, within a bucket of the truth.
fn the_server_queue_percentiles_are_the_servers_own_spans_or_within_a_bucket_of_them() -> Outcome {
    let _machine = exclusive();
    let c = Collector::start();
    let sim = traced_sim(&c.grpc_url(), "grpc", 2);
    let service = "stampede-queue";
    let trace = format!(
        "endpoint = \"{}\"\nservice_name = \"{service}\"\nquery_url = \"http://{}\"",
        c.grpc_url(),
        c.query
    );
    let run = run_profile(&profile(&sim.url, 6, "3s", "30s", &trace), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let ok = num(s, "/requests/ok") as usize;
    assert!(ok > 50, "too few requests to judge");
    // The truth: every queue span the simulator exported, to the
    // microsecond the spans carry.
    wait_until("every request's server spans", || {
        let traces = c.traces(service, "llm.request");
        traces.len() == ok && traces.iter().all(|t| spans_named(t, "queue").len() == 1)
    });
    let mut truth: Vec<u64> = c
        .traces(service, "llm.request")
        .iter()
        .map(|t| spans_named(t, "queue")[0]["duration"].as_u64().unwrap())
        .collect();
    truth.sort_unstable();
    let q = &s["server_queue"];
    assert_eq!(q["source"], "spans", "{q:#}\n{}", run.stderr());
    assert_eq!(q["interpolated"], false);
    assert_eq!(q["count"].as_u64(), Some(truth.len() as u64), "{q:#}");
    assert!(q["note"].is_null(), "{q:#}");
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let reported_us = (num(q, &format!("/{name}/ms")) * 1e3).round() as u64;
        let want = nearest_rank(&truth, p);
        eprintln!("server queue {name}: {reported_us} us from the spans, {want} us in the simulator's spans");
        assert_eq!(reported_us, want, "{name}: {q:#}");
    }
    let mean_us = truth.iter().sum::<u64>() as f64 / truth.len() as f64;
    assert!((num(q, "/mean_ms") * 1e3 - mean_us).abs() < 0.5, "{q:#}");
    assert!(
        nearest_rank(&truth, 0.5) > 20_000,
        "the load queued too little to judge: {truth:?}"
    );
    assert!(
        run.stdout().contains("exact, from the server's spans"),
        "{}",
        run.stdout()
    );
    let dir = run.dir.as_ref().unwrap();
    assert!(dir.join("server-spans.json").is_file());

    // The same run without its spans: the simulator's buckets.
    std::fs::remove_file(dir.join("server-spans.json")).unwrap();
    let rebuilt = Command::new(stampede_tests::bin("controller"))
        .args(["report", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        rebuilt.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let s = stampede_tests::read_summary(&std::fs::read(dir.join("summary.json")).unwrap());
    let q = &s["server_queue"];
    assert_eq!(q["source"], "buckets", "{q:#}");
    assert_eq!(q["interpolated"], true);
    assert_eq!(q["from"], "llmsim_queue_time_seconds");
    assert_eq!(q["count"].as_u64(), Some(truth.len() as u64), "{q:#}");
    for (name, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let reported_ms = num(q, &format!("/{name}/ms"));
        let (from, to) = (
            num(q, &format!("/{name}/bucket_from_ms")),
            num(q, &format!("/{name}/bucket_to_ms")),
        );
        let want_ms = nearest_rank(&truth, p) as f64 / 1e3;
        eprintln!(
            "server queue {name}: {reported_ms:.3} ms interpolated in ({from}, {to}], {want_ms:.3} ms in the simulator's spans"
        );
        assert!(
            (reported_ms - want_ms).abs() <= to - from,
            "{name}: {reported_ms} ms against {want_ms} ms, beyond the bucket's width {}",
            to - from
        );
    }
    let stdout = String::from_utf8_lossy(&rebuilt.stdout);
    assert!(
        stdout.contains("interpolated within the buckets of llmsim_queue_time_seconds"),
        "{stdout}"
    );
    Ok(())
}

fn over_http_through_a_real_collector_every_request_is_one_client_span() -> Outcome {
    let rotel = Rotel::binary()?;
    let _machine = exclusive();
    let c = Collector::start();
    let hop = Rotel::start(&rotel, &c.grpc_url());
    let http = format!("http://{}", hop.http);
    let sim = traced_sim(&http, "http/protobuf", 2);
    let service = "stampede-http";
    let trace = format!("endpoint = \"{http}\"\nprotocol = \"http/protobuf\"\nservice_name = \"{service}\"");
    let run = run_profile(&profile(&sim.url, 4, "2s", "30s", &trace), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    assert!(num(run.summary(), "/requests/ok") > 20.0, "too few requests to judge");
    assert_eq!(run.summary()["tracing"]["protocol"], "http/protobuf");
    check_traces(&c, service, &run, &sim);
    Ok(())
}

/// llm-sim's Ollama, TGI and JSON endpoints read `traceparent` as its
/// OpenAI ones do: every request's trace holds the client span, named for
/// its dialect, and the server's phases beneath it.
fn every_dialect_joins_the_servers_spans() -> Outcome {
    let _machine = exclusive();
    let c = Collector::start();
    let sim = traced_sim(&c.grpc_url(), "grpc", 2);
    let dialects = [
        ("ollama", "api = \"ollama\"", "ollama"),
        ("tgi", "api = \"tgi\"", "huggingface.tgi"),
        ("json", SIM_NDJSON_TARGET, "http-json"),
    ];
    for (name, target, provider) in dialects {
        let service = format!("stampede-{name}");
        let url = &sim.url;
        let profile = format!(
            r#"
            name = "traced-{name}"
            [target]
            url = "{url}"
            model = "llm-sim"
            timeout = "30s"
            {target}
            [load]
            users = 2
            duration = "1s"
            drain = "30s"
            [request]
            max_tokens = 4
            stream = true
            [prompts]
            inline = ["{}"]
            [trace]
            endpoint = "{}"
            protocol = "grpc"
            service_name = "{service}"
            "#,
            prompt_of(12),
            c.grpc_url()
        );
        let run = run_profile(&profile, &[]);
        assert_eq!(run.code(), 0, "{name}: stderr:\n{}", run.stderr());
        let ok = num(run.summary(), "/requests/ok") as usize;
        assert!(ok >= 4, "{name}: too few requests to judge ({ok})");
        assert_eq!(num(run.summary(), "/tracing/spans_exported") as usize, ok, "{name}");
        wait_until(&format!("{name}: {ok} traces with their server spans"), || {
            let traces = c.traces(&service, "llm.request");
            traces.len() == ok && traces.iter().all(|t| spans_named(t, "decode").len() == 1)
        });
        for trace in c.traces(&service, "llm.request") {
            let clients = spans_named(&trace, "llm.request");
            assert_eq!(clients.len(), 1, "{name}: one client span per trace: {trace:#}");
            let client = clients[0];
            assert_eq!(
                tag(client, "gen_ai.provider.name"),
                Some(&Value::from(provider)),
                "{name}: {client:#}"
            );
            check_server_phases(&trace, client, name);
        }
        eprintln!("{name}: {ok} requests, each joined with llm-sim's queue, prefill and decode spans");
    }
    Ok(())
}
fn sampling_keeps_every_failure_and_each_intervals_slowest() -> Outcome {
    let _machine = exclusive();
    let c = Collector::start();
    let sim = traced_sim(&c.grpc_url(), "grpc", 8);
    let service = "stampede-sampled";
    let ui = format!("http://{}/api/traces/{{trace_id}}", c.query);
    let trace = format!(
        "endpoint = \"{}\"\nsample_ratio = 0.1\nservice_name = \"{service}\"\nui_url = \"{ui}\"",
        c.grpc_url()
    );
    // A stall in the middle of the run makes the requests in flight time
    // out: failures the ratio would mostly have left out.
    let text = profile(&sim.url, 4, "5s", "400ms", &trace);
    let addr = sim.addr().to_owned();
    let staller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2_500));
        http_post(&addr, "/admin/stall?for=1s")
    });
    let run = run_profile(&text, &[]);
    assert!(staller.join().unwrap().contains("200"));
    let s = run.summary();
    let (ok, failed) = (num(s, "/requests/ok") as usize, num(s, "/requests/failed") as usize);
    assert!(ok > 100 && failed >= 4, "ok {ok}, failed {failed}\n{}", run.stderr());
    assert_eq!(num(s, "/tracing/spans_dropped"), 0.0);
    let exported = num(s, "/tracing/spans_exported") as usize;
    wait_until("the exported client spans", || {
        c.traces(service, "llm.request").len() == exported
    });
    let traces = c.traces(service, "llm.request");
    let clients: Vec<&Value> = traces.iter().flat_map(|t| spans_named(t, "llm.request")).collect();
    let errors = clients.iter().filter(|s| tag(s, "error.type").is_some()).count();
    assert_eq!(errors, failed, "every failed request is exported");
    assert!(
        clients
            .iter()
            .filter(|s| tag(s, "error.type").is_some())
            .all(|s| tag(s, "error.type") == Some(&Value::from("timeout"))),
        "failures are timeouts"
    );
    // Each interval's slowest requests, as the agents named them, are
    // among the exported traces.
    let ids: std::collections::HashSet<&str> = clients.iter().map(|s| s["traceID"].as_str().unwrap()).collect();
    let log = std::fs::read_to_string(run.dir.as_ref().unwrap().join("intervals.jsonl")).unwrap();
    let mut intervals = BTreeMap::new();
    let mut exemplars = std::collections::HashSet::new();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["event"] != "report" || v["counters"]["ok"].as_u64().unwrap_or(0) == 0 {
            continue;
        }
        let ex = v["exemplars"].as_array().unwrap();
        assert!(
            ex.iter().any(|e| e["metric"] == "e2e"),
            "an interval with successes names its slowest: {v}"
        );
        for e in ex {
            let id = e["trace_id"].as_str().unwrap();
            exemplars.insert(id.to_owned());
            assert!(
                ids.contains(id),
                "exemplar {id} of interval {} was not exported",
                v["interval"]
            );
        }
        *intervals.entry(v["interval"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert!(intervals.len() >= 4, "{intervals:?}");
    // Every other exported success is one the ratio kept, decided from its
    // trace id alone; it kept about a tenth.
    let mut by_ratio = 0;
    for span in clients.iter().filter(|s| tag(s, "error.type").is_none()) {
        let id = span["traceID"].as_str().unwrap();
        let kept = stampede_otel::sampled_by_ratio(stampede_otel::TraceId::from_hex(id).unwrap(), 0.1);
        assert!(
            kept || exemplars.contains(id),
            "{id} was exported though neither sampled nor among the slowest"
        );
        by_ratio += usize::from(kept);
    }
    let share = by_ratio as f64 / ok as f64;
    assert!(
        (0.02..0.25).contains(&share),
        "the ratio kept {by_ratio} of {ok} successes"
    );
    // The run's slowest request is the first exemplar, and every link in
    // summary.json resolves to an exported trace.
    let slowest = &s["tracing"]["slowest_e2e"];
    assert!(relative_error(num(slowest, "/0/value_ms"), num(s, "/metrics/e2e/max")) < 0.002);
    for list in ["slowest_ttft", "slowest_e2e"] {
        let list = s["tracing"][list].as_array().unwrap();
        assert!(!list.is_empty());
        for e in list {
            let link = e["link"].as_str().unwrap();
            let path = link.strip_prefix(&format!("http://{}", c.query)).unwrap();
            let found = c.api(path).unwrap_or_else(|| panic!("{link} does not resolve"));
            assert_eq!(found["data"][0]["traceID"], e["trace_id"]);
        }
    }
    Ok(())
}
fn with_the_collector_down_the_run_ends_on_time_and_counts_the_lost_spans() -> Outcome {
    let _machine = exclusive();
    let sim = Sim::start(&[]);
    // A port that was free a moment ago: nothing listens there.
    let down = format!("http://127.0.0.1:{}", free_port());
    let trace = format!("endpoint = \"{down}\"");
    let started = Instant::now();
    let run = run_profile(&profile(&sim.url, 8, "3s", "30s", &trace), &[]);
    let took = started.elapsed();
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    eprintln!("collector down: the 3 s run took {took:?}");
    assert!(took < Duration::from_secs(3 + 6), "the run took {took:?}");
    let s = run.summary();
    let requests = num(s, "/requests/ok") + num(s, "/requests/failed");
    assert!(requests > 20.0);
    assert_eq!(num(s, "/tracing/spans_exported"), 0.0);
    assert_eq!(num(s, "/tracing/spans_dropped"), requests, "{:#}", s["tracing"]);
    let dropped = num(s, "/tracing/spans_dropped") as u64;
    eprintln!("collector down: {dropped} spans dropped, 0 exported");
    assert!(run.stdout().contains(&format!("{dropped} dropped")), "{}", run.stdout());
    // Logged once (the two agents' exporters and the controller's share
    // the warning), not per span.
    let complaints = run.stderr().matches("cannot export spans").count();
    assert_eq!(complaints, 1, "{}", run.stderr());
    Ok(())
}

/// At the end of a run the agents flush their spans, which against a
/// collector that is down takes up to the flush limit; the run's rates are
/// over the load's own time and do not count it.
fn with_the_collector_down_the_rates_are_those_of_a_run_without_tracing() -> Outcome {
    let _machine = exclusive();
    let sim = Sim::start(&[]);
    // Open loop: both runs send the same requests at the same times.
    let profile = |trace: &str| {
        format!(
            r#"
            name = "rates"
            [target]
            url = "{}"
            model = "llm-sim"
            [load]
            rate = 30
            duration = "5s"
            [request]
            max_tokens = 8
            [prompts]
            inline = ["{}", "{}"]
            [agents]
            count = 2
            [trace]
            {trace}
            "#,
            sim.url,
            prompt_of(12),
            prompt_of(20)
        )
    };
    let off = run_profile(&profile("enabled = false"), &[]);
    let down = format!("endpoint = \"http://127.0.0.1:{}\"", free_port());
    let started = Instant::now();
    let down = run_profile(&profile(&down), &[]);
    let took = started.elapsed();
    for run in [&off, &down] {
        assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    }
    let (off, down) = (off.summary(), down.summary());
    assert_eq!(num(off, "/requests/ok"), 150.0);
    assert_eq!(num(down, "/requests/ok"), 150.0);
    assert_eq!(num(down, "/tracing/spans_dropped"), 150.0, "{:#}", down["tracing"]);
    let rate = |s: &Value| num(s, "/throughput/requests_per_s");
    eprintln!(
        "requests/s: tracing off {:.3} over {:.3} s; collector down {:.3} over {:.3} s (the run took {took:?})",
        rate(off),
        num(off, "/duration_s"),
        rate(down),
        num(down, "/duration_s")
    );
    assert!(
        relative_error(rate(down), rate(off)) < 0.01,
        "requests/s with the collector down {} against {} without tracing",
        rate(down),
        rate(off)
    );
    Ok(())
}
