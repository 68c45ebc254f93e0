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
