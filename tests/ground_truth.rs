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
    sim_with(max_batch, &[])
}

fn sim_with(max_batch: u32, extra: &[&str]) -> Sim {
    let batch = max_batch.to_string();
    let mut args = vec![
        "--max-batch",
        &batch,
        "--prefill-base",
        "50ms",
        "--prefill-per-token",
        "1ms",
        "--decode-step",
        "40ms",
        "--decode-step-per-seq",
        "0s",
    ];
    args.extend_from_slice(extra);
    Sim::start(&args)
}

fn profile(url: &str, users: u32, duration: &str) -> String {
    profile_with(url, users, duration, 8, "")
}

/// `target` adds lines to the `[target]` table.
fn profile_with(url: &str, users: u32, duration: &str, max_tokens: u32, target: &str) -> String {
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
        {target}
        [load]
        users = {users}
        duration = "{duration}"
        drain = "60s"
        [request]
        max_tokens = {max_tokens}
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
    // One token per event and no empty events: ITL and the chunk gap are
    // the same samples, and both are the simulator's gaps between tokens.
    let truth = Truth::read(&m);
    let chunk = num(s, "/metrics/chunk_gap/p50");
    assert_eq!(num(s, "/metrics/itl/count"), truth.itl_count);
    assert_eq!(num(s, "/metrics/chunk_gap/count"), truth.itl_count);
    assert_eq!(truth.event_count, truth.itl_count);
    assert_eq!(chunk, itl, "one token per event: the chunk gap is the ITL");
    let itl_mean = num(s, "/metrics/itl/mean");
    assert_eq!(num(s, "/metrics/chunk_gap/mean"), itl_mean);
    assert!(
        relative_error(itl_mean, truth.itl_mean_ms()) < 0.02,
        "ITL mean {itl_mean} ms vs the simulator's {} ms",
        truth.itl_mean_ms()
    );
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

/// The simulator's ground truth of gaps, read from its `/metrics`.
#[derive(Clone, Copy, Debug)]
struct Truth {
    /// Gaps between tokens as they were made.
    itl_count: f64,
    itl_sum_s: f64,
    /// Gaps between events carrying tokens as they went out.
    event_count: f64,
    event_sum_s: f64,
}

impl Truth {
    fn read(m: &std::collections::HashMap<String, f64>) -> Truth {
        Truth {
            itl_count: m["llmsim_inter_token_latency_seconds_count"],
            itl_sum_s: m["llmsim_inter_token_latency_seconds_sum"],
            event_count: m["llmsim_event_gap_seconds_count"],
            event_sum_s: m["llmsim_event_gap_seconds_sum"],
        }
    }

    /// What was added between `before` and `self`.
    fn since(self, before: Truth) -> Truth {
        Truth {
            itl_count: self.itl_count - before.itl_count,
            itl_sum_s: self.itl_sum_s - before.itl_sum_s,
            event_count: self.event_count - before.event_count,
            event_sum_s: self.event_sum_s - before.event_sum_s,
        }
    }

    fn itl_mean_ms(self) -> f64 {
        self.itl_sum_s / self.itl_count * 1e3
    }

    fn event_mean_ms(self) -> f64 {
        self.event_sum_s / self.event_count * 1e3
    }
}

/// Tokens per event in the chunked test, and the answer's length: the
/// first token alone, then four events of four.
const PER_EVENT: f64 = 4.0;
const CHUNKED_TOKENS: u32 = 17;

/// Checks one chunked run against the truth it added: ITL per token, the
/// chunk gap per event that carried tokens.
fn assert_chunked(label: &str, s: &serde_json::Value, truth: Truth, check_p50: bool) {
    let ok = num(s, "/requests/ok");
    let per_request = f64::from(CHUNKED_TOKENS - 1);
    assert_eq!(
        truth.itl_count,
        ok * per_request,
        "{label}: the simulator served other requests"
    );
    assert_eq!(truth.event_count, ok * per_request / PER_EVENT);
    // The truth itself: every gap between tokens is one step, every gap
    // between events four.
    assert!(relative_error(truth.itl_mean_ms(), STEP_MS) < 0.02, "{truth:?}");
    assert!(
        relative_error(truth.event_mean_ms(), PER_EVENT * STEP_MS) < 0.02,
        "{truth:?}"
    );

    let (itl_mean, itl_p50) = (num(s, "/metrics/itl/mean"), num(s, "/metrics/itl/p50"));
    let (gap_mean, gap_p50) = (num(s, "/metrics/chunk_gap/mean"), num(s, "/metrics/chunk_gap/p50"));
    eprintln!(
        "{label}: ITL mean {itl_mean} p50 {itl_p50} ms (truth {:.3}); chunk gap mean {gap_mean} p50 {gap_p50} ms (truth {:.3}); {ok} requests",
        truth.itl_mean_ms(),
        truth.event_mean_ms()
    );
    // One ITL sample per token after the first, one chunk gap per event
    // that carried tokens: the empty events are neither.
    assert_eq!(num(s, "/metrics/itl/count"), truth.itl_count, "{label}: ITL samples");
    assert_eq!(
        num(s, "/metrics/chunk_gap/count"),
        truth.event_count,
        "{label}: chunk gaps"
    );
    assert!(
        relative_error(itl_mean, truth.itl_mean_ms()) < 0.02,
        "{label}: ITL mean {itl_mean} ms is not within 2% of the simulator's per-token {} ms",
        truth.itl_mean_ms()
    );
    assert!(
        relative_error(gap_mean, truth.event_mean_ms()) < 0.02,
        "{label}: chunk gap mean {gap_mean} ms is not within 2% of the simulator's per-event {} ms",
        truth.event_mean_ms()
    );
    // The truth's gaps are all one step (four for events), so its median is
    // its mean.
    assert!(
        relative_error(gap_p50, truth.event_mean_ms()) < 0.02,
        "{label}: chunk gap p50 {gap_p50} ms vs the simulator's {} ms",
        truth.event_mean_ms()
    );
    if check_p50 {
        assert!(
            relative_error(itl_p50, truth.itl_mean_ms()) < 0.02,
            "{label}: ITL p50 {itl_p50} ms is not within 2% of the simulator's per-token {} ms",
            truth.itl_mean_ms()
        );
    }
}

#[test]
fn with_four_tokens_an_event_and_empty_events_itl_is_per_token_and_the_chunk_gap_per_event() {
    let _machine = exclusive();
    let sim = sim_with(64, &["--tokens-per-event", "4", "--empty-events", "2"]);

    // The server's running count on every chunk (vLLM's
    // continuous_usage_stats) says what each event carried.
    let continuous = r#"body = { stream_options = { include_usage = true, continuous_usage_stats = true } }"#;
    let run = run_profile(&profile_with(&sim.url, 6, "5s", CHUNKED_TOKENS, continuous), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let first = Truth::read(&sim.metrics());
    assert_chunked("running count", run.summary(), first, true);

    // With the final usage alone, the tokens beyond one an event are shared
    // by bytes of text: the total, and so the mean, is exact; how they
    // fall among the events is an estimate, so the median is not held.
    let run = run_profile(&profile_with(&sim.url, 6, "5s", CHUNKED_TOKENS, ""), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let second = Truth::read(&sim.metrics()).since(first);
    assert_chunked("final usage only", run.summary(), second, false);
}
