//! The run's metrics pushed over OTLP (`[metrics] otlp = true`, or the
//! standard `OTEL_*` variables) to a real receiver on loopback: several
//! pushes arrive while the run goes on, and the last one's values are
//! `summary.json`'s.

use opentelemetry_proto::tonic::metrics::v1::metric;
use serde_json::Value;
use stampede_tests::otlp_metrics::{Push, Receiver, attr};
use stampede_tests::{Sim, exclusive, num, prompt_of, run_profile, run_profile_with_env};

/// A profile of four users on two agents against `url`, with a warm-up
/// (its requests are left out of the summary, and so of the pushes), the
/// simulator's injected failures allowed, and `extra` TOML at the end.
fn profile(url: &str, duration: &str, extra: &str) -> String {
    format!(
        r#"
        name = "otlp-metrics"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "30s"
        [load]
        users = 4
        duration = "{duration}"
        warmup = "1s"
        drain = "30s"
        [request]
        max_tokens = 16
        [prompts]
        inline = [{:?}, {:?}]
        [agents]
        count = 2
        [report]
        interval = "500ms"
        [thresholds]
        max_error_rate = 0.9
        {extra}
        "#,
        prompt_of(40),
        format!("b {}", prompt_of(39)),
    )
}

/// Checks that `last` carries the summary's figures, with the GenAI
/// conventions' names and attributes and the run id on every point.
fn equals_summary(last: &Push, s: &Value) {
    let run_id = s["run_id"].as_str().expect("a run id");
    let count = |pointer: &str| num(s, pointer) as i64;
    let requests = |with: &[(&str, &str)]| last.number("stampede.requests", with);
    eprintln!(
        "last push: ok {:?} (summary {}), failed {:?}, output tokens {:?} (summary {}), e2e count {:?} (summary {})",
        requests(&[("stampede.outcome", "ok")]),
        count("/requests/ok"),
        s["errors"],
        last.number("stampede.tokens", &[("gen_ai.token.type", "output")]),
        count("/tokens/output"),
        last.histograms("stampede.e2e").first().map(|p| p.count),
        count("/metrics/e2e/count"),
    );
    assert_eq!(requests(&[("stampede.outcome", "ok")]), Some(count("/requests/ok")));
    assert_eq!(
        requests(&[("stampede.outcome", "cancelled")]),
        Some(count("/requests/cancelled"))
    );
    let errors = s["errors"].as_object().expect("errors by class");
    assert!(!errors.is_empty(), "the faults failed some requests: {s:#}");
    let mut failed = 0;
    for (class, info) in errors {
        let n = info["count"].as_i64().expect("a count");
        assert_eq!(
            requests(&[("stampede.outcome", "failed"), ("error.type", class)]),
            Some(n),
            "{class}"
        );
        failed += n;
    }
    assert_eq!(failed, count("/requests/failed"));
    let tokens = |kind: &str| last.number("stampede.tokens", &[("gen_ai.token.type", kind)]);
    assert_eq!(tokens("input"), Some(count("/tokens/input")));
    assert_eq!(tokens("output"), Some(count("/tokens/output")));

    for (name, metric) in [
        ("stampede.ttft", "ttft"),
        ("stampede.itl", "itl"),
        ("stampede.chunk_gap", "chunk_gap"),
        ("stampede.tpot", "tpot"),
        ("stampede.e2e", "e2e"),
        ("stampede.client_queue", "client_queue"),
        ("gen_ai.client.operation.duration", "e2e"),
        ("gen_ai.client.operation.time_to_first_chunk", "ttft"),
        ("gen_ai.client.operation.time_per_output_chunk", "chunk_gap"),
    ] {
        let points = last.histograms(name);
        assert_eq!(points.len(), 1, "{name}");
        let p = points[0];
        let n = count(&format!("/metrics/{metric}/count")) as u64;
        assert_eq!(p.count, n, "{name} counts what the summary's {metric} counts");
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), n, "{name}");
        // Min and max are the summary's (milliseconds there, seconds here).
        let (min_ms, max_ms) = (
            num(s, &format!("/metrics/{metric}/min")),
            num(s, &format!("/metrics/{metric}/max")),
        );
        let (min, max) = (p.min.expect("min") * 1e3, p.max.expect("max") * 1e3);
        assert!(
            (min - min_ms).abs() <= min_ms * 2e-3 + 1e-3,
            "{name}: min {min} vs {min_ms}"
        );
        assert!(
            (max - max_ms).abs() <= max_ms * 2e-3 + 1e-3,
            "{name}: max {max} vs {max_ms}"
        );
    }
    assert_eq!(
        last.histograms("gen_ai.client.operation.duration")[0].count,
        count("/requests/ok") as u64,
        "the operation duration counts the successful requests"
    );
    for (kind, metric) in [("input", "input_tokens"), ("output", "output_tokens")] {
        let p = last
            .histograms("gen_ai.client.token.usage")
            .into_iter()
            .find(|p| attr(&p.attributes, "gen_ai.token.type").as_deref() == Some(kind))
            .unwrap_or_else(|| panic!("token usage of type {kind}"));
        assert_eq!(p.count, count(&format!("/metrics/{metric}/count")) as u64, "{kind}");
        assert_eq!(
            p.sum,
            Some(num(s, &format!("/tokens/{kind}"))),
            "{kind}: the sum is the token total"
        );
    }

    // The GenAI attributes, and the run on every point.
    let target = s["target"]["url"].as_str().expect("the target");
    let port = target.rsplit(':').next().expect("a port");
    let genai = last.histograms("gen_ai.client.operation.duration")[0];
    for (key, value) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "llm-sim"),
        ("server.address", "127.0.0.1"),
        ("server.port", port),
    ] {
        assert_eq!(attr(&genai.attributes, key).as_deref(), Some(value), "{key}");
    }
    for m in last.metrics() {
        let attributes: Vec<_> = match m.data.as_ref() {
            Some(metric::Data::Histogram(h)) => h.data_points.iter().map(|p| &p.attributes).collect(),
            Some(metric::Data::Sum(x)) => x.data_points.iter().map(|p| &p.attributes).collect(),
            Some(metric::Data::Gauge(g)) => g.data_points.iter().map(|p| &p.attributes).collect(),
            Some(metric::Data::Summary(x)) => x.data_points.iter().map(|p| &p.attributes).collect(),
            other => panic!("{}: {other:?}", m.name),
        };
        for a in attributes {
            assert_eq!(attr(a, "stampede.run_id").as_deref(), Some(run_id), "{}", m.name);
        }
    }
    assert_eq!(last.resource("stampede.run_id").as_deref(), Some(run_id));
    // The last push is after the end: every agent has finished.
    assert_eq!(
        last.number("stampede.agents", &[("stampede.agent.state", "finished")]),
        Some(2)
    );
    assert_eq!(last.number("stampede.active_users", &[]), Some(0));
}

/// Pushes are cumulative: each push's counts are at least the one's
/// before, all from the same start.
fn cumulative(pushes: &[Push]) {
    let ok = |p: &Push| {
        p.number("stampede.requests", &[("stampede.outcome", "ok")])
            .expect("ok")
    };
    let start = |p: &Push| p.histograms("stampede.e2e")[0].start_time_unix_nano;
    for pair in pushes.windows(2) {
        assert!(ok(&pair[0]) <= ok(&pair[1]));
        assert_eq!(start(&pair[0]), start(&pair[1]));
        let (a, b) = (
            pair[0].histograms("stampede.e2e")[0],
            pair[1].histograms("stampede.e2e")[0],
        );
        assert!(a.bucket_counts.iter().zip(&b.bucket_counts).all(|(a, b)| a <= b));
        assert!(a.time_unix_nano <= b.time_unix_nano);
    }
}

#[test]
fn pushes_over_grpc_arrive_during_the_run_and_the_last_equals_the_summary() {
    let _machine = exclusive();
    let receiver = Receiver::start();
    let sim = Sim::start(&["--fault", "503=0.15", "--fault", "500=0.1"]);
    let extra = format!("[metrics]\notlp = true\nendpoint = \"{}\"\n", receiver.grpc_url());
    let run = run_profile(&profile(&sim.url, "4s", &extra), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    assert!(
        num(s, "/warmup/ok") > 0.0,
        "the warm-up had requests, left out of the figures"
    );
    let pushes = receiver.pushes();
    let push = &s["metrics_push"];
    eprintln!("{} pushes; summary: {push}", pushes.len());
    assert!(pushes.len() >= 4, "several pushes during a 5 s run: {}", pushes.len());
    assert_eq!(num(push, "/ok") as usize, pushes.len());
    assert_eq!((num(push, "/failed"), &push["last_ok"]), (0.0, &Value::Bool(true)));
    assert_eq!(push["protocol"], "grpc");
    // Several arrived while the load ran, a second or more before the end.
    let time = |p: &Push| p.histograms("stampede.e2e")[0].time_unix_nano;
    let last = pushes.last().expect("a push");
    let during = pushes.iter().filter(|p| time(last) - time(p) >= 1_000_000_000).count();
    assert!(during >= 2, "{during} pushes a second or more before the last");
    cumulative(&pushes);
    equals_summary(last, s);
    assert_eq!(last.resource("service.name").as_deref(), Some("stampede"));
}

#[test]
fn the_standard_variables_push_over_http_with_headers() {
    let _machine = exclusive();
    let receiver = Receiver::start();
    let sim = Sim::start(&["--fault", "503=0.25"]);
    let run = run_profile_with_env(
        &profile(&sim.url, "3s", ""),
        &[],
        &[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.http_url()),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "X-Scope-OrgID=team%20one"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
            ("OTEL_SERVICE_NAME", "bench"),
        ],
    );
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let pushes = receiver.pushes();
    let push = &s["metrics_push"];
    assert_eq!(push["protocol"], "http/protobuf");
    assert_eq!(push["endpoint"], format!("{}/v1/metrics", receiver.http_url()));
    assert_eq!(num(push, "/interval_s"), 0.3);
    assert!(pushes.len() >= 3, "{} pushes", pushes.len());
    assert_eq!(num(push, "/ok") as usize, pushes.len());
    let last = pushes.last().expect("a push");
    assert!(
        last.headers
            .iter()
            .any(|(k, v)| k == "x-scope-orgid" && v == "team one"),
        "{:?}",
        last.headers
    );
    assert_eq!(last.resource("service.name").as_deref(), Some("bench"));
    cumulative(&pushes);
    equals_summary(last, s);
}

#[test]
#[allow(clippy::disallowed_types)] // the wall time of a real process
fn a_receiver_that_never_answers_neither_fails_nor_holds_up_the_run() {
    let _machine = exclusive();
    let sim = Sim::start(&[]);
    // A listener that never accepts: connections open (the kernel answers
    // the handshake), and no push ever gets an answer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", silent.local_addr().expect("addr"));
    let extra = format!("[metrics]\notlp = true\nendpoint = \"{url}\"\n");
    let began = std::time::Instant::now();
    let run = run_profile_with_env(
        &profile(&sim.url, "2s", &extra),
        &[],
        &[("OTEL_METRIC_EXPORT_TIMEOUT", "500")],
    );
    let took = began.elapsed();
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let push = &s["metrics_push"];
    eprintln!("took {took:?}; {push}");
    assert_eq!(num(push, "/ok"), 0.0);
    assert!(num(push, "/failed") >= 2.0, "{push}");
    assert_eq!(push["last_ok"], false);
    assert!(
        push["first_error"].as_str().is_some_and(|e| e.contains("500ms")),
        "{push}"
    );
    assert!(num(s, "/requests/ok") > 0.0);
    // Each push gives up after its timeout, the last one too: the run ends
    // a few seconds after its 2 s of load, not when a push would.
    assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    // Logged once, then counted.
    let stderr = run.stderr();
    assert_eq!(stderr.matches("cannot push metrics").count(), 1, "{stderr}");
    assert!(stderr.contains("metrics pushes to"), "{stderr}");
    drop(silent);
}

/// With the built-in simulator's DCGM page, the pushes carry what the live
/// endpoint serves besides the client's figures: the server's mapped
/// figures (gauges, counters), the accelerators' (per device, from DCGM)
/// and each agent's CPU.
#[test]
fn pushes_carry_the_servers_the_accelerators_and_the_agents_figures() {
    let _machine = exclusive();
    let receiver = Receiver::start();
    let profile = format!(
        "name = \"otlp-server\"\n[load]\nusers = 4\nduration = \"3s\"\n[request]\nmax_tokens = 16\n\
         [agents]\ncount = 2\n[report]\ninterval = \"500ms\"\n\
         [server_metrics]\ninterval = \"250ms\"\n\
         [sim]\nmax_batch = 8\ndecode_step = \"10ms\"\ndcgm = true\nkv_cache_tokens = 65536\n\
         [metrics]\notlp = true\nendpoint = \"{}\"\n",
        receiver.grpc_url()
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let pushes = receiver.pushes();
    let last = pushes.last().expect("a push");
    let names: Vec<&str> = last.metrics().iter().map(|m| m.name.as_str()).collect();
    eprintln!("{} pushes; the last names {names:?}", pushes.len());
    for gauge in [
        "stampede.server.running",
        "stampede.server.queue_depth",
        "stampede.server.kv_cache_usage",
    ] {
        let m = last.metric(gauge).unwrap_or_else(|| panic!("{gauge} in {names:?}"));
        assert!(matches!(m.data, Some(metric::Data::Gauge(_))), "{gauge}: {m:?}");
    }
    let tokens = last
        .metric("stampede.server.generation_tokens")
        .unwrap_or_else(|| panic!("the server's token counter in {names:?}"));
    match &tokens.data {
        Some(metric::Data::Sum(s)) => {
            assert!(s.is_monotonic);
            assert_eq!(s.data_points.len(), 1);
            assert!(
                last.number("stampede.server.generation_tokens", &[])
                    .is_some_and(|n| n > 0)
            );
        }
        other => panic!("a monotonic sum: {other:?}"),
    }
    let utilization = last.numbers("stampede.gpu.utilization");
    assert!(!utilization.is_empty(), "{names:?}");
    for p in &utilization {
        assert_eq!(attr(&p.attributes, "stampede.gpu.source").as_deref(), Some("dcgm"));
        assert!(attr(&p.attributes, "stampede.gpu.device").is_some());
        assert!(attr(&p.attributes, "stampede.run_id").is_some());
    }
    let cpu = last.numbers("stampede.agent.cpu");
    assert_eq!(cpu.len(), 2, "one point per agent: {cpu:?}");
}
