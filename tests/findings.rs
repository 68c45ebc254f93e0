//! Findings against ground truth: the simulator says how long requests
//! queued and how busy it was; the run's findings must agree. And the
//! server-metrics mapping against pages in vLLM's format, served over HTTP.

use serde_json::Value;
use stampede_tests::files::Files;
use stampede_tests::{Sim, exclusive, num, relative_error, repo, run_profile, two_agent_profile};

fn profile(url: &str, users: u32, duration: &str, max_tokens: u32, extra: &str) -> String {
    two_agent_profile("findings", url, users, duration, max_tokens, extra)
}

fn finding<'a>(s: &'a Value, kind: &str) -> Option<&'a Value> {
    s["findings"].as_array()?.iter().find(|f| f["kind"] == kind)
}

fn ratio(m: &std::collections::HashMap<String, f64>, name: &str) -> f64 {
    m[&format!("{name}_sum")] / m[&format!("{name}_count")]
}

#[test]
fn one_slot_and_ten_users_queue_and_leave_the_gpu_idle() {
    let _machine = exclusive();
    // One request at a time; three quarters of every decode step is host
    // work, as in a server that neither batches nor keeps its GPU fed.
    let sim = Sim::start(&[
        "--max-batch",
        "1",
        "--decode-step",
        "20ms",
        "--decode-step-per-seq",
        "0s",
        "--step-overhead",
        "15ms",
        "--dcgm",
    ]);
    let before = sim.metrics();
    let run = run_profile(&profile(&sim.url, 10, "8s", 16, ""), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let after = sim.metrics();

    // Ground truth: the simulator's queue time against its TTFT.
    let truth = ratio(&after, "llmsim_queue_time_seconds") / ratio(&after, "llmsim_time_to_first_token_seconds");
    let q = finding(s, "queueing").unwrap_or_else(|| panic!("no queueing finding: {:#}", s["findings"]));
    let share = num(q, "/evidence/queue_share_of_ttft");
    eprintln!("queue share of TTFT: reported {share:.4}, simulator {truth:.4}");
    assert!(
        relative_error(share, truth) <= 0.10,
        "reported {share} against {truth}: {q:#}"
    );
    assert_eq!(s["server"]["families"], serde_json::json!(["dcgm", "llm-sim"]));

    // Ground truth: busy time over the time requests were present.
    let delta = |name: &str| after[name] - before[name];
    let busy = delta("llmsim_busy_seconds_total") / delta("llmsim_occupied_seconds_total");
    let g = finding(s, "gpu_idle").unwrap_or_else(|| panic!("no GPU-idle finding: {:#}", s["findings"]));
    let util = num(g, "/evidence/utilisation_mean");
    eprintln!("utilisation while requests were present: reported {util:.4}, simulator {busy:.4}");
    assert!((util - busy).abs() <= 0.05, "reported {util} against {busy}: {g:#}");
    assert!(
        g["title"].as_str().unwrap().starts_with("GPU idle while requests wait"),
        "{g:#}"
    );
    assert!(g["basis"].as_str().unwrap().contains("DCGM_FI_DEV_GPU_UTIL"), "{g:#}");
    // The terminal says it too.
    assert!(run.stdout().contains("\nfindings\n"), "{}", run.stdout());
    assert!(run.stdout().contains("  - queueing: "), "{}", run.stdout());
    // Every scrape is kept raw.
    let raw = std::fs::read_to_string(run.dir.as_ref().unwrap().join("server-metrics.jsonl")).unwrap();
    assert!(raw.lines().count() as u64 >= num(s, "/server/scrapes") as u64);
    assert!(raw.contains("DCGM_FI_DEV_GPU_UTIL"));
}

#[test]
fn a_batching_server_does_not_queue_and_a_host_without_gpu_says_so() {
    let _machine = exclusive();
    let sim = Sim::start(&["--max-batch", "64", "--decode-step", "20ms"]);
    let run = run_profile(&profile(&sim.url, 10, "4s", 16, ""), &["--gpu"]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    assert!(finding(s, "queueing").is_none(), "{:#}", s["findings"]);
    assert!(finding(s, "gpu_idle").is_none(), "{:#}", s["findings"]);
    assert!(num(s, "/server/mapped/queue_time/count") > 0.0, "{:#}", s["server"]);
    let notes = s["gpu"]["notes"].as_object().expect("a note per sampling agent");
    assert_eq!(notes.len(), 2, "{:#}", s["gpu"]);
    for note in notes.values() {
        let note = note.as_str().unwrap();
        if note.starts_with("no GPU found") {
            assert_eq!(s["gpu"]["samples"], 0);
        } else {
            // A host with a GPU: the readings came with the reports.
            assert!(num(s, "/gpu/samples") > 0.0, "{note}");
        }
    }
    assert!(run.stdout().contains("gpu       local-0: "), "{}", run.stdout());
}

#[test]
fn a_slow_first_answer_is_a_cold_start() {
    let _machine = exclusive();
    // The model loads for 4 s from the simulator's start; the run begins
    // a moment after it, so its first answers wait out most of that.
    let sim = Sim::start(&["--max-batch", "8", "--load-time", "4s", "--decode-step", "20ms"]);
    let run = run_profile(&profile(&sim.url, 2, "10s", 40, ""), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let c = finding(s, "cold_start").unwrap_or_else(|| panic!("no cold start: {:#}", s["intervals"]));
    assert!(num(c, "/evidence/first_ttft_p95_ms") >= 1000.0, "{c:#}");
    assert!(num(c, "/evidence/steady_ttft_p95_ms") < 100.0, "{c:#}");
}

#[test]
fn an_unreachable_metrics_page_is_a_note_not_a_failure() {
    let _machine = exclusive();
    let sim = Sim::start(&[]);
    let extra = "[server_metrics]\nurl = \"http://127.0.0.1:9/metrics\"";
    let run = run_profile(&profile(&sim.url, 2, "2s", 8, extra), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let note = run.summary()["server"]["note"].as_str().unwrap().to_owned();
    assert!(note.contains("GET http://127.0.0.1:9/metrics"), "{note}");
    assert!(run.stdout().contains(&format!("server    {note}")), "{}", run.stdout());
}

fn scrape_page(files: &Files, sim: &Sim, page: &str) -> Value {
    let extra = format!("[server_metrics]\nurl = \"{}/{page}\"\ninterval = \"500ms\"", files.url);
    let run = run_profile(&profile(&sim.url, 2, "2s", 8, &extra), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    run.summary()["server"].clone()
}

#[test]
fn vllm_pages_map_every_listed_metric_under_old_and_new_names() {
    let _machine = exclusive();
    let files = Files::serve(&repo().join("tests/fixtures"));
    let sim = Sim::start(&[]);
    let expected = [
        ("running", "vllm:num_requests_running"),
        ("waiting", "vllm:num_requests_waiting"),
        ("queue_time", "vllm:request_queue_time_seconds"),
        ("ttft", "vllm:time_to_first_token_seconds"),
        ("e2e", "vllm:e2e_request_latency_seconds"),
        ("prefill", "vllm:request_prefill_time_seconds"),
        ("decode", "vllm:request_decode_time_seconds"),
        ("prompt_tokens", "vllm:prompt_tokens_total"),
        ("generation_tokens", "vllm:generation_tokens_total"),
        ("requests_done", "vllm:request_success_total"),
        ("preemptions", "vllm:num_preemptions_total"),
    ];
    for (page, kv, itl) in [
        (
            "vllm-metrics.txt",
            "vllm:kv_cache_usage_perc",
            "vllm:inter_token_latency_seconds",
        ),
        (
            "vllm-metrics-older.txt",
            "vllm:gpu_cache_usage_perc",
            "vllm:time_per_output_token_seconds",
        ),
    ] {
        let server = scrape_page(&files, &sim, page);
        assert_eq!(server["families"], serde_json::json!(["vllm"]), "{page}: {server:#}");
        assert!(server["note"].is_null(), "{page}: {server:#}");
        let mapped = &server["mapped"];
        for (canon, metric) in expected.iter().chain(&[("kv_cache_usage", kv), ("itl", itl)]) {
            assert_eq!(
                mapped[canon]["source"]["metric"], *metric,
                "{page}: {canon} in {mapped:#}"
            );
        }
        // Values are read, labelled series added up.
        assert_eq!(num(mapped, "/running/mean"), 7.0);
        assert_eq!(num(mapped, "/waiting/max"), 12.0);
        assert_eq!(num(mapped, "/kv_cache_usage/mean"), 0.6431);
        assert_eq!(mapped["requests_done"]["source"]["series"], 3);
        // What is not understood is kept, by name.
        let unmapped: Vec<&str> = server["unmapped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(unmapped.contains(&"vllm:cache_config_info"), "{unmapped:?}");
        assert!(unmapped.contains(&"vllm:request_prompt_tokens"), "{unmapped:?}");
        assert_eq!(server["skipped_lines"], 0);
    }
}

#[test]
fn ttft_and_tpot_are_graded_by_the_default_bands_or_the_profiles() {
    let _machine = exclusive();
    let sim = Sim::start(&["--max-batch", "64", "--decode-step", "20ms"]);
    let grade = |run: &stampede_tests::Run, statistic: &str| {
        assert_eq!(run.code(), 0, "a grade is never a verdict; stderr:\n{}", run.stderr());
        let s = run.summary().clone();
        let g = s["grades"].clone();
        assert_eq!(g["statistic"], statistic, "{g:#}");
        for metric in ["ttft", "tpot"] {
            assert_eq!(
                num(&g, &format!("/{metric}/value_ms")),
                num(&s, &format!("/metrics/{metric}/{statistic}")),
                "{g:#}"
            );
        }
        let line = format!(
            "grades    TTFT {statistic} {:.1} ms {} · TPOT {statistic} {:.1} ms {}  (",
            num(&g, "/ttft/value_ms"),
            g["ttft"]["grade"].as_str().unwrap(),
            num(&g, "/tpot/value_ms"),
            g["tpot"]["grade"].as_str().unwrap()
        );
        assert!(run.stdout().contains(&line), "{line:?} not in\n{}", run.stdout());
        g
    };
    // By default TTFT is good under 500 ms and TPOT under 50 ms, on p95:
    // this quick server is good at both.
    let g = grade(&run_profile(&profile(&sim.url, 4, "2s", 16, ""), &[]), "p95");
    assert_eq!(
        (&g["ttft"]["grade"], &g["tpot"]["grade"]),
        (&"good".into(), &"good".into()),
        "{g:#}"
    );
    assert_eq!(
        (num(&g, "/ttft/good_under_ms"), num(&g, "/ttft/acceptable_under_ms")),
        (500.0, 1_000.0)
    );
    assert_eq!(
        (num(&g, "/tpot/good_under_ms"), num(&g, "/tpot/acceptable_under_ms")),
        (50.0, 100.0)
    );
    // A profile's own bands, on the median: no TTFT is under 2 ms, and
    // TPOT (20 ms steps) is over 1 ms but under a second.
    let bands = "[grades]\nstatistic = \"p50\"\nttft = { good = \"1ms\", acceptable = \"2ms\" }\ntpot = { good = \"1ms\", acceptable = \"1s\" }";
    let g = grade(&run_profile(&profile(&sim.url, 4, "2s", 16, bands), &[]), "p50");
    assert_eq!(g["ttft"]["grade"], "poor", "{g:#}");
    assert_eq!(g["tpot"]["grade"], "acceptable", "{g:#}");
    assert_eq!(num(&g, "/ttft/acceptable_under_ms"), 2.0);
}
