//! Ground truth: what stampede measures against what the simulator was
//! configured to do and says it did.

use stampede_tests::{Sim, exclusive, num, prompt_of, relative_error, run_profile};

/// Input tokens of every prompt (the simulator counts words).
const PROMPT_WORDS: usize = 150;
/// Prefill: 50 ms + 1 ms per input token. Long enough that the runtime's
/// 1 ms timer granularity (about 2 ms, always late) stays near 1 %.
const PREFILL_MS: f64 = 50.0 + PROMPT_WORDS as f64;
/// Decode step, the same at every batch size.
const STEP_MS: f64 = 40.0;

fn sim(max_batch: u32) -> Sim {
    Sim::start(&[
        "--max-batch",
        &max_batch.to_string(),
        "--prefill-base",
        "50ms",
        "--prefill-per-token",
        "1ms",
        "--decode-step",
        "40ms",
        "--decode-step-per-seq",
        "0s",
    ])
}

fn profile(url: &str, users: u32, duration: &str) -> String {
    // One distinct prompt per agent, all of the same length.
    let prompts: Vec<String> = (0..3)
        .map(|a| format!("{:?}", format!("a{a} {}", prompt_of(PROMPT_WORDS - 1))))
        .collect();
    format!(
        r#"
        name = "ground-truth"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "60s"
        [load]
        users = {users}
        duration = "{duration}"
        drain = "60s"
        [request]
        max_tokens = 8
        [prompts]
        inline = [{}]
        [agents]
        count = 3
        "#,
        prompts.join(", ")
    )
}

#[test]
fn without_queueing_ttft_and_itl_match_the_configured_prefill_and_step() {
    let _machine = exclusive();
    let sim = sim(64);
    let run = run_profile(&profile(&sim.url, 6, "6s"), &[]);
    let s = run.summary();
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());

    let ttft = num(s, "/metrics/ttft/p50");
    let itl = num(s, "/metrics/itl/p50");
    eprintln!("no queueing: TTFT p50 {ttft} ms (prefill {PREFILL_MS}), ITL p50 {itl} ms (step {STEP_MS})");
    assert!(
        relative_error(ttft, PREFILL_MS) < 0.02,
        "merged TTFT p50 {ttft} ms is not within 2% of the configured prefill {PREFILL_MS} ms"
    );
    assert!(
        relative_error(itl, STEP_MS) < 0.02,
        "merged ITL p50 {itl} ms is not within 2% of the configured decode step {STEP_MS} ms"
    );

    let m = sim.metrics();
    let served = m["llmsim_requests_served_total"];
    assert!(served > 30.0, "too few requests to judge: {served}");
    assert_eq!(
        num(s, "/requests/ok"),
        served,
        "summary.json and the simulator disagree on the request count"
    );
    assert_eq!(num(s, "/requests/failed"), 0.0);
    assert_eq!(m["llmsim_requests_cancelled_total"], 0.0);
    // Every request's tokens came from the server's usage and match it.
    assert_eq!(num(s, "/tokens/output"), m["llmsim_generation_tokens_total"]);
    assert_eq!(num(s, "/tokens/input"), m["llmsim_prompt_tokens_total"]);
    assert_eq!(s["tokens"]["source"], "server usage");
    // The three agents split six users 2/2/2 and each did its share.
    let agents = s["agents"].as_array().expect("agents");
    assert_eq!(
        agents.iter().map(|a| a["users"].as_u64().unwrap()).collect::<Vec<_>>(),
        [2, 2, 2]
    );
    assert!(
        agents
            .iter()
            .all(|a| a["ok"].as_u64().unwrap() > 0 && a["end"] == "finished")
    );
}

#[test]
fn with_one_slot_queueing_dominates_ttft_and_matches_the_servers_queue_time() {
    let _machine = exclusive();
    let sim = sim(1);
    let run = run_profile(&profile(&sim.url, 10, "8s"), &[]);
    let s = run.summary();
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());

    // Without queueing TTFT is the prefill (the test above); with ten users
    // sharing one slot each request waits for the others first.
    let ttft_p50 = num(s, "/metrics/ttft/p50");
    assert!(
        ttft_p50 >= 5.0 * PREFILL_MS,
        "TTFT p50 {ttft_p50} ms is less than 5x the no-queue TTFT of {PREFILL_MS} ms"
    );

    // Client-side: TTFT minus the prefill is the time spent queued. The
    // simulator's own queue-time histogram is the ground truth.
    let m = sim.metrics();
    let count = m["llmsim_queue_time_seconds_count"];
    assert_eq!(num(s, "/requests/ok"), count, "both sides must see the same requests");
    let server_queue_ms = m["llmsim_queue_time_seconds_sum"] / count * 1e3;
    let client_queue_ms = num(s, "/metrics/ttft/mean") - PREFILL_MS;
    eprintln!(
        "one slot: TTFT p50 {ttft_p50} ms; queue time client {client_queue_ms:.1} ms, simulator {server_queue_ms:.1} ms over {count} requests"
    );
    assert!(
        relative_error(client_queue_ms, server_queue_ms) < 0.10,
        "client TTFT - prefill = {client_queue_ms:.1} ms, simulator queue time = {server_queue_ms:.1} ms"
    );
    assert_eq!(num(s, "/requests/ok"), m["llmsim_requests_served_total"]);
}
