//! Every dialect end to end against the real `llm-sim`, streaming and not:
//! no request fails, and the token counts in summary.json are exactly what
//! the simulator says it served. Then every shipped example profile in
//! `load-profiles/examples/`, as written, against a simulator answering in
//! its server's shape.

use serde_json::Value;
use stampede_tests::{SIM_NDJSON_TARGET, Sim, exclusive, num, repo, run_profile, run_shipped_with_env};

/// A simulator fast enough that a 2 s run completes dozens of requests.
fn sim(extra: &[&str]) -> Sim {
    let mut args = vec![
        "--max-batch",
        "16",
        "--prefill-base",
        "2ms",
        "--prefill-per-token",
        "50us",
        "--decode-step",
        "3ms",
        "--decode-step-per-seq",
        "0s",
    ];
    args.extend_from_slice(extra);
    Sim::start(&args)
}

fn profile(url: &str, target: &str, stream: bool) -> String {
    format!(
        r#"
        name = "dialect"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "30s"
        {target}
        [load]
        users = 3
        duration = "2s"
        drain = "30s"
        [request]
        max_tokens = 12
        stream = {stream}
        [prompts]
        builtin = "mixed"
        [agents]
        count = 2
        "#
    )
}

/// Runs `target` against a fresh simulator and checks the counts against
/// its ground truth; returns the summary.
fn check(target: &str, stream: bool, sim_args: &[&str], source: &str) -> Value {
    check_as(target, stream, stream, sim_args, source)
}

/// [`check`], for a profile that asks for `stream` from an endpoint whose
/// answers are `streamed` or not.
fn check_as(target: &str, stream: bool, streamed: bool, sim_args: &[&str], source: &str) -> Value {
    let _machine = exclusive();
    let sim = sim(sim_args);
    let run = run_profile(&profile(&sim.url, target, stream), &[]);
    assert_eq!(run.code(), 0, "{target} stream={stream}: stderr:\n{}", run.stderr());
    let s = run.summary().clone();
    let m = sim.metrics();
    let served = m["llmsim_requests_served_total"];
    eprintln!(
        "{target} stream={stream}: {} ok, output tokens {} (simulator {}), source {}",
        num(&s, "/requests/ok"),
        num(&s, "/tokens/output"),
        m["llmsim_generation_tokens_total"],
        s["tokens"]["source"]
    );
    assert!(served >= 10.0, "{target}: too few requests to judge: {served}");
    assert_eq!(num(&s, "/requests/failed"), 0.0, "{target}: {:#}", s["errors"]);
    assert_eq!(num(&s, "/requests/ok"), served, "{target}: request counts differ");
    assert_eq!(
        num(&s, "/tokens/output"),
        m["llmsim_generation_tokens_total"],
        "{target} stream={stream}: output tokens differ from what the simulator served"
    );
    assert_eq!(s["tokens"]["source"], source, "{target} stream={stream}");
    if streamed {
        assert_eq!(
            num(&s, "/metrics/ttft/count"),
            served,
            "{target}: every request has a TTFT"
        );
        // 12 tokens per answer: 11 gaps each.
        assert_eq!(num(&s, "/metrics/itl/count"), served * 11.0, "{target}: ITL samples");
    } else {
        assert_eq!(
            num(&s, "/metrics/ttft/count"),
            0.0,
            "{target}: whole answers have no TTFT"
        );
    }
    s
}

#[test]
fn openai_chat() {
    for stream in [true, false] {
        let s = check(r#"api = "openai-chat""#, stream, &[], "server usage");
        assert!(num(&s, "/tokens/input") > 0.0);
    }
}

#[test]
fn openai_completions() {
    for stream in [true, false] {
        check(r#"api = "openai-completions""#, stream, &[], "server usage");
    }
}

#[test]
fn ollama_generate_and_chat_with_the_servers_timings() {
    for api in ["ollama", "ollama-chat"] {
        for stream in [true, false] {
            let s = check(&format!("api = {api:?}"), stream, &[], "server usage");
            let ok = num(&s, "/requests/ok");
            // Ollama's own durations became histograms, one sample per
            // request: prefill of a ~2 ms simulated prompt, decode of 11
            // steps of 3 ms.
            assert_eq!(num(&s, "/metrics/server_prefill/count"), ok, "{api}");
            assert_eq!(num(&s, "/metrics/server_decode/count"), ok, "{api}");
            assert_eq!(num(&s, "/metrics/model_load/count"), ok, "{api}");
            let decode = num(&s, "/metrics/server_decode/p50");
            assert!((30.0..200.0).contains(&decode), "{api}: server decode p50 {decode} ms");
            assert!(num(&s, "/tokens/input") > 0.0, "{api}: prompt_eval_count was read");
        }
    }
}

#[test]
fn a_cold_start_shows_in_ollamas_model_load() {
    let _machine = exclusive();
    // The model loads for 4 s from the simulator's start. The controller
    // starts in well under that, so the first requests (one per user) wait
    // for the load and report it as load_duration; the rest, sent after
    // it, report none.
    let sim = sim(&["--load-time", "4s"]);
    let text = profile(&sim.url, r#"api = "ollama""#, true).replace(r#"duration = "2s""#, r#"duration = "6s""#);
    let run = run_profile(&text, &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let ok = num(s, "/requests/ok");
    let load = &s["metrics"]["model_load"];
    eprintln!("ollama cold start: {ok} requests, model load {load}");
    assert_eq!(num(s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
    assert!(ok >= 20.0, "too few requests to judge: {ok}");
    assert_eq!(num(load, "/count"), ok);
    let max = num(load, "/max");
    assert!(
        (100.0..=4100.0).contains(&max),
        "the first requests waited for the load: {max} ms"
    );
    assert!(num(load, "/p50") < 1.0, "later requests did not: {load}");
    // Prefill is timed from the end of the load, not from admission.
    assert!(
        num(s, "/metrics/server_prefill/max") < 100.0,
        "{}",
        s["metrics"]["server_prefill"]
    );
}

#[test]
fn tgi() {
    for stream in [true, false] {
        check(r#"api = "tgi""#, stream, &[], "server usage");
    }
}

#[test]
fn http_json_streams_as_ndjson_and_plain_text() {
    let s = check(SIM_NDJSON_TARGET, true, &[], "server usage");
    // Both sources were there, and they agree exactly.
    let agreement = &s["tokens"]["agreement"]["server_vs_events"];
    assert_eq!(agreement["relative_difference"], 0.0, "{agreement}");
    assert_eq!(agreement["requests_differing"], 0, "{agreement}");
    let text = r#"
        api = "http-json"
        path = "/generate_text"
        [target.http_json]
        body = { inputs = "{{prompt}}", parameters = { max_new_tokens = "{{max_tokens}}" } }
        text = "/generated_text"
        stream = "text"
    "#;
    // The simulator's tokens are words, so counting words is exact here.
    check(text, true, &[], "counted words");
}

#[test]
fn http_json_answers_in_both_seed_shapes() {
    let seconds = r#"
        api = "http-json"
        path = "/generate"
        [target.http_json]
        body = { prompt = "{{prompt}}", max_new_tokens = "{{max_tokens}}" }
        text = "/generated_text"
        duration = "/inference_time_seconds"
        duration_unit = "s"
    "#;
    // The profile asks for streaming or not; an endpoint that cannot
    // stream (no http_json.stream) answers whole either way.
    for stream in [false, true] {
        let s = check_as(
            seconds,
            stream,
            false,
            &["--generate-shape", "seconds"],
            "counted words",
        );
        assert_eq!(num(&s, "/metrics/server_time/count"), num(&s, "/requests/ok"));
        // The server's time is at most the client's.
        assert!(num(&s, "/metrics/server_time/p50") <= num(&s, "/metrics/e2e/p50"));
    }
    let ms = r#"
        api = "http-json"
        path = "/generate"
        [target.http_json]
        body = { prompt = "{{prompt}}", max_tokens = "{{max_tokens}}", temperature = "{{temperature}}" }
        text = "/generated_text"
        tokens = "/tokens_generated"
        duration = "/inference_time_ms"
        duration_unit = "ms"
    "#;
    let s = check(ms, false, &["--generate-shape", "ms"], "server usage");
    assert_eq!(num(&s, "/metrics/server_time/count"), num(&s, "/requests/ok"));
}

/// Simulator arguments that make it answer like each example's server.
fn shape_of(example: &str) -> &'static [&'static str] {
    match example {
        "flask-generate.toml" => &["--generate-shape", "seconds"],
        "fastapi-generate.toml" => &["--generate-shape", "ms"],
        _ => &[],
    }
}

#[test]
fn every_example_profile_runs_as_written_against_the_simulator() {
    let dir = repo().join("load-profiles/examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("load-profiles/examples exists")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 9,
        "one example per dialect and both seed shapes: {names:?}"
    );
    for name in names {
        let _machine = exclusive();
        let sim = sim(shape_of(&name));
        // The OpenAI example reads its key from the environment.
        let run = run_shipped_with_env(
            &format!("examples/{name}"),
            &["--target", &sim.url, "--duration", "2s"],
            &[("OPENAI_API_KEY", "Bearer test-key")],
        );
        assert_eq!(run.code(), 0, "{name}: stderr:\n{}", run.stderr());
        let s = run.summary();
        let m = sim.metrics();
        eprintln!(
            "{name}: {} ok, output tokens {} (simulator {}), source {}",
            num(s, "/requests/ok"),
            num(s, "/tokens/output"),
            m["llmsim_generation_tokens_total"],
            s["tokens"]["source"]
        );
        assert_eq!(num(s, "/requests/failed"), 0.0, "{name}: {:#}", s["errors"]);
        assert!(num(s, "/requests/ok") > 0.0, "{name}");
        assert_eq!(num(s, "/requests/ok"), m["llmsim_requests_served_total"], "{name}");
        assert_eq!(
            num(s, "/tokens/output"),
            m["llmsim_generation_tokens_total"],
            "{name}: output tokens differ from what the simulator served"
        );
    }
}

#[test]
fn a_secret_header_whose_variable_is_unset_is_named() {
    let sim = sim(&[]);
    let target = r#"
        api = "openai-chat"
        headers = { Authorization = { env = "STAMPEDE_TEST_UNSET_KEY" } }
    "#;
    let run = run_profile(&profile(&sim.url, target, true), &[]);
    assert_ne!(run.code(), 0);
    let stderr = run.stderr();
    assert!(
        stderr.contains("STAMPEDE_TEST_UNSET_KEY") && stderr.contains("not set"),
        "{stderr}"
    );
}
