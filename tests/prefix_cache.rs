//! Shared prefixes and prefix caching, with llm-sim's prefix cache as the
//! ground truth: the hit rate the summary reports, the TTFT the cache
//! saves, and the finding when the cache cannot hold the groups.

use serde_json::Value;
use stampede_tests::{Sim, exclusive, num, relative_error, run_profile};

/// Tokens of each shared prefix: twelve blocks of 16.
const PREFIX: u32 = 192;
/// Tokens of each prompt's own suffix.
const SUFFIX: u32 = 16;
/// Prefill per token, ms: slow enough that the saving dwarfs timer noise.
const PER_TOKEN_MS: f64 = 1.0;

/// The simulator with a prefix cache of `blocks` blocks of 16 tokens (0:
/// none), a 20 ms + 1 ms/token prefill, a batch large enough that nothing
/// queues, and a short decode step.
fn sim(blocks: u32) -> Sim {
    let blocks = blocks.to_string();
    Sim::start(&[
        "--max-batch",
        "64",
        "--prefill-base",
        "20ms",
        "--prefill-per-token",
        "1ms",
        "--decode-step",
        "10ms",
        "--decode-step-per-seq",
        "0s",
        "--prefix-cache-blocks",
        &blocks,
        "--prefix-block-tokens",
        "16",
    ])
}

/// Two users for `duration` on synthetic prompts of `groups` shared
/// prefixes of [`PREFIX`] tokens, each followed by [`SUFFIX`] tokens of
/// its own, groups in turn.
fn profile(url: &str, groups: u32, duration: &str) -> String {
    format!(
        r#"
        name = "prefix-cache"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "60s"
        [load]
        users = 2
        duration = "{duration}"
        drain = "60s"
        [request]
        max_tokens = 2
        [prompts.synthetic]
        count = 64
        input_tokens = {SUFFIX}
        shared_prefix = {{ groups = {groups}, tokens = {PREFIX}, assign = "round-robin" }}
        "#
    )
}

fn kinds(s: &Value) -> Vec<String> {
    s["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_hit_rate_is_the_servers_and_the_cache_saves_the_predicted_prefill() {
    let _machine = exclusive();

    let cold = sim(0);
    let off = run_profile(&profile(&cold.url, 4, "4s"), &[]);
    assert_eq!(off.code(), 0, "stderr:\n{}", off.stderr());
    let off = off.summary().clone();
    drop(cold);

    let warm = sim(1_000);
    let on = run_profile(&profile(&warm.url, 4, "4s"), &[]);
    assert_eq!(on.code(), 0, "stderr:\n{}", on.stderr());
    let s = on.summary();
    let m = warm.metrics();
    let (hits, queries) = (m["vllm:prefix_cache_hits_total"], m["vllm:prefix_cache_queries_total"]);
    let served = m["llmsim_requests_served_total"];
    let truth = hits / queries;

    // The workload as generated: every prompt 208 tokens, 192 of them shared.
    let shared = num(s, "/prefix_cache/workload/shared_share");
    assert!((shared - f64::from(PREFIX) / f64::from(PREFIX + SUFFIX)).abs() < 1e-9);
    assert_eq!(
        queries,
        served * f64::from(PREFIX + SUFFIX),
        "every prompt is looked up once"
    );

    // The server's figure is the simulator's own count.
    let server = num(s, "/prefix_cache/server_hit_rate");
    eprintln!("prefix cache: summary {server:.4}, llm-sim {truth:.4} ({hits} of {queries} tokens, {served} requests)");
    assert_eq!(num(s, "/prefix_cache/server_hit_tokens"), hits);
    assert_eq!(num(s, "/prefix_cache/server_queried_tokens"), queries);
    assert!((server - truth).abs() < 1e-12);
    assert!(truth > 0.7, "most prompts found their group's prefix: {truth}");
    // So are the answers' cached tokens, request by request.
    assert_eq!(num(s, "/prefix_cache/reported_requests"), served);
    assert_eq!(num(s, "/prefix_cache/cached_tokens"), hits);
    assert!((num(s, "/prefix_cache/cached_share") - truth).abs() < 1e-12);
    // Per interval, the rates lie between none and all of the prefix.
    let rows = s["server"]["intervals"].as_array().expect("server intervals");
    let rates: Vec<f64> = rows
        .iter()
        .filter_map(|r| r["prefix_cache_hit_rate"].as_f64())
        .collect();
    assert!(!rates.is_empty());
    assert!(rates.iter().all(|r| (0.0..=shared + 1e-9).contains(r)), "{rates:?}");

    // Each hit token skipped 1 ms of prefill; nothing queued, so TTFT
    // fell by the mean hit tokens per request, times that.
    let predicted = hits / served * PER_TOKEN_MS;
    let saved = num(&off, "/metrics/ttft/mean") - num(s, "/metrics/ttft/mean");
    eprintln!("TTFT mean: saved {saved:.1} ms, predicted {predicted:.1} ms");
    assert!(
        relative_error(saved, predicted) < 0.10,
        "TTFT fell {saved:.1} ms; the prefill model predicts {predicted:.1} ms"
    );
    assert!(
        !kinds(s).contains(&"prefix_cache_low".to_owned()),
        "{:#}",
        s["findings"]
    );
    // Without a cache nothing is claimed: the server reports none.
    assert!(off["prefix_cache"]["server_hit_rate"].is_null());
}

#[test]
fn a_cache_smaller_than_the_groups_is_a_finding() {
    let _machine = exclusive();
    // Eight groups of twelve blocks cycle through a cache of forty: each
    // prefix is evicted before its group comes round again.
    let small = sim(40);
    let run = run_profile(&profile(&small.url, 8, "3s"), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary();
    let m = small.metrics();
    let truth = m["vllm:prefix_cache_hits_total"] / m["vllm:prefix_cache_queries_total"];
    assert!((num(s, "/prefix_cache/server_hit_rate") - truth).abs() < 1e-12);
    let found = s["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "prefix_cache_low")
        .unwrap_or_else(|| panic!("no prefix_cache_low finding at hit rate {truth}: {:#}", s["findings"]));
    eprintln!("{}", found["title"]);
    assert_eq!(found["evidence"]["groups"], 8);
    assert_eq!(found["evidence"]["prefix_tokens_all_groups"], 8 * PREFIX);
    assert!((num(found, "/evidence/hit_rate") - truth).abs() < 1e-4);
    assert!(found["basis"].as_str().unwrap().contains("--enable-prefix-caching"));
}
