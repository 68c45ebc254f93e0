//! Prompt datasets end to end: a JSONL file whose lines carry their own
//! `max_tokens`, and synthetic prompts, against the real `llm-sim`.

use stampede_tests::{Sim, exclusive, num, run_profile};

fn sim() -> Sim {
    Sim::start(&[
        "--decode-step",
        "2ms",
        "--prefill-base",
        "1ms",
        "--prefill-per-token",
        "10us",
    ])
}

#[test]
fn jsonl_prompts_carry_their_own_output_limits_to_every_agent() {
    let _machine = exclusive();
    let sim = sim();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            let limit = if i % 2 == 0 { 5 } else { 9 };
            format!("{{\"prompt\": \"question number {i} about queues\", \"max_tokens\": {limit}}}")
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let profile = format!(
        r#"
        seed = 4
        [target]
        url = "{}"
        [load]
        users = 4
        duration = "2s"
        [request]
        max_tokens = 100
        [prompts]
        file = "{}"
        [agents]
        count = 2
        "#,
        sim.url,
        file.display()
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    let m = sim.metrics();
    assert_eq!(num(s, "/tokens/output"), m["llmsim_generation_tokens_total"]);
    // Every answer was 5 or 9 tokens long: the lines' limits, not the
    // profile's 100.
    assert_eq!(num(s, "/metrics/output_tokens/min"), 5.0);
    assert_eq!(num(s, "/metrics/output_tokens/max"), 9.0);
    assert!(
        s["load"]["prompts"].as_str().unwrap().starts_with("jsonl:"),
        "{}",
        s["load"]
    );
}

#[test]
fn synthetic_prompts_have_the_input_lengths_the_simulator_counts() {
    let _machine = exclusive();
    let sim = sim();
    let profile = format!(
        r#"
        seed = 9
        [target]
        url = "{}"
        [load]
        users = 3
        duration = "2s"
        [prompts.synthetic]
        count = 30
        input_tokens = 200
        output_tokens = {{ min = 4, max = 8 }}
        "#,
        sim.url
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    // Without a tokenizer a token is a word, which is how llm-sim counts:
    // every prompt is exactly 200 tokens on the server.
    assert_eq!(num(s, "/metrics/input_tokens/min"), 200.0);
    assert_eq!(num(s, "/metrics/input_tokens/max"), 200.0);
    let out = (
        num(s, "/metrics/output_tokens/min"),
        num(s, "/metrics/output_tokens/max"),
    );
    assert!(out.0 >= 4.0 && out.1 <= 8.0, "{out:?}");
    assert_eq!(
        num(s, "/tokens/output"),
        sim.metrics()["llmsim_generation_tokens_total"]
    );
}

#[test]
fn every_metric_is_broken_down_by_prompt_class() {
    let _machine = exclusive();
    // Prefill 1 ms per input word: long prompts wait visibly longer for
    // their first token.
    let sim = Sim::start(&[
        "--decode-step",
        "3ms",
        "--prefill-base",
        "1ms",
        "--prefill-per-token",
        "1ms",
    ]);
    let profile = format!(
        r#"
        [target]
        url = "{}"
        [load]
        users = 6
        duration = "3s"
        [request]
        max_tokens = 6
        [prompts]
        builtin = "mixed"
        [agents]
        count = 2
        "#,
        sim.url
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    let classes = s["classes"].as_array().expect("classes");
    let names: Vec<&str> = classes.iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(names, ["short", "medium", "long"], "shortest prompts first");
    let sum = |key: &str| classes.iter().map(|c| c[key].as_f64().unwrap()).sum::<f64>();
    // The classes partition the run (no warm-up here, so the totals agree).
    assert_eq!(sum("requests"), num(s, "/requests/ok"));
    assert_eq!(sum("output_tokens"), num(s, "/tokens/output"));
    assert_eq!(sum("input_tokens"), num(s, "/tokens/input"));
    assert_eq!(sum("input_tokens"), sim.metrics()["llmsim_prompt_tokens_total"]);
    let ttft: Vec<f64> = classes.iter().map(|c| c["ttft"]["p50"].as_f64().unwrap()).collect();
    let tokens_in: Vec<f64> = classes
        .iter()
        .map(|c| c["tokens_in"]["mean"].as_f64().unwrap())
        .collect();
    eprintln!("per class: TTFT p50 {ttft:?} ms, mean input tokens {tokens_in:?}");
    // TTFT is prefill: 1 ms + 1 ms per input token, plus timer lateness.
    for (t, n) in ttft.iter().zip(&tokens_in) {
        assert!(
            *t >= 1.0 + n * 0.9,
            "TTFT p50 {t} ms is below the prefill of {n} tokens"
        );
    }
    assert!(ttft[0] < ttft[1] && ttft[1] < ttft[2], "{ttft:?}");
    for c in classes {
        assert!(c["tpm"].as_f64().unwrap() > 0.0);
        assert_eq!(c["tokens_out"]["max"], 6.0);
        assert!(c["itl"]["count"].as_f64().unwrap() > 0.0);
        assert!(c["e2e"]["p95"].as_f64().unwrap() >= c["ttft"]["p50"].as_f64().unwrap());
    }
}
