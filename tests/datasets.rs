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

/// Writes a byte-pair tokenizer with no merges over printable ASCII and a
/// whitespace pre-tokenizer: every non-space character is one token.
fn write_characters_tokenizer(path: &std::path::Path) {
    let vocab: serde_json::Map<String, serde_json::Value> = ('!'..='~')
        .enumerate()
        .map(|(i, c)| (c.to_string(), i.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(path, json.to_string()).expect("tokenizer.json written");
}

/// With a tokenizer, file prompts are classed by their tokens: identical
/// prompts land in one class, and a class the server refuses outright
/// (prompts too long for its KV cache) still has its row, with its
/// failures. The rows count the measured time only: warm-ups are left out
/// as they are of the run's figures.
#[test]
fn prompts_are_classed_by_tokens_and_a_class_that_only_failed_has_its_row() {
    let _machine = exclusive();
    // 300 KV-cache slots: a prompt of 320 words (llm-sim counts words) can
    // never fit and is refused with 400, as a server refuses a prompt
    // above its context.
    let sim = Sim::start(&[
        "--max-batch",
        "8",
        "--decode-step",
        "3ms",
        "--prefill-base",
        "1ms",
        "--kv-cache-tokens",
        "300",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    write_characters_tokenizer(&tokenizer);
    // One token per character: 19 tokens (short), 40 × 5 = 200 tokens
    // (medium), 320 × 2 = 640 tokens (long).
    let short = "why is the queue so long";
    let medium = vec!["abcde"; 40].join(" ");
    let long = vec!["ab"; 320].join(" ");
    let mut lines = Vec::new();
    for i in 0..24 {
        let text = match i % 4 {
            0 | 1 => short,
            2 => medium.as_str(),
            _ => long.as_str(),
        };
        lines.push(format!("{{\"prompt\": \"{text}\"}}"));
    }
    let file = dir.path().join("prompts.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let profile = format!(
        r#"
        seed = 3
        [target]
        url = "{}"
        tokenizer = "{}"
        [load]
        users = 4
        duration = "3s"
        warmup = "1s"
        [request]
        max_tokens = 4
        [prompts]
        file = "{}"
        [agents]
        count = 2
        [thresholds]
        max_error_rate = 1.0
        "#,
        sim.url,
        tokenizer.display(),
        file.display()
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    assert_eq!(s["classes_by"], "tokens");
    assert_eq!(s["classes_whole_run"], false);
    let classes = s["classes"].as_array().expect("classes");
    let names: Vec<&str> = classes.iter().map(|c| c["class"].as_str().unwrap()).collect();
    assert_eq!(names, ["short", "medium", "long"], "{classes:#?}");
    let (short, medium, long) = (&classes[0], &classes[1], &classes[2]);
    for c in [short, medium] {
        assert!(num(c, "/requests") > 0.0, "{c:#}");
        assert_eq!(num(c, "/failed"), 0.0, "{c:#}");
    }
    // The simulator counts words: every short prompt is 6, every medium 40.
    assert_eq!(num(short, "/tokens_in/min"), 6.0);
    assert_eq!(num(short, "/tokens_in/max"), 6.0);
    assert_eq!(num(medium, "/tokens_in/min"), 40.0);
    // Every long prompt was refused: no success, every request a failure.
    assert_eq!(num(long, "/requests"), 0.0, "{long:#}");
    assert!(num(long, "/failed") > 0.0, "{long:#}");
    assert_eq!(num(long, "/errors/http_400"), num(long, "/failed"), "{long:#}");
    // The rows add up to the measured time's requests, not the warm-up's.
    assert!(num(s, "/warmup/ok") > 0.0, "the warm-up held requests: {}", s["warmup"]);
    let sum = |key: &str| classes.iter().map(|c| num(c, &format!("/{key}"))).sum::<f64>();
    assert_eq!(sum("requests"), num(s, "/requests/ok"));
    assert_eq!(sum("failed"), num(s, "/requests/failed"));
    assert_eq!(num(long, "/failed"), num(s, "/errors/http_400/count"));
    let stdout = run.stdout();
    let row = stdout
        .lines()
        .find(|l| l.starts_with("long "))
        .unwrap_or_else(|| panic!("a long row: {stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "0", "{row}");
    assert_eq!(cells[2], num(long, "/failed").to_string(), "{row}");
    assert!(
        stdout.contains("measured time, warm-ups left out; classed by tokens"),
        "{stdout}"
    );
}

/// Synthetic prompts of one token length land in one class, whatever
/// their words: 200 tokens of this tokenizer are about 35 to 65 words,
/// which a count of words split between short and medium.
#[test]
fn identical_synthetic_prompts_land_in_one_class() {
    let _machine = exclusive();
    let sim = sim();
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    write_characters_tokenizer(&tokenizer);
    let profile = format!(
        r#"
        seed = 5
        [target]
        url = "{}"
        tokenizer = "{}"
        [load]
        users = 3
        duration = "2s"
        [request]
        max_tokens = 4
        [prompts.synthetic]
        count = 169
        input_tokens = 200
        "#,
        sim.url,
        tokenizer.display()
    );
    let run = run_profile(&profile, &[]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let s = run.summary();
    assert_eq!(s["classes_by"], "tokens");
    // The simulator counts words: they straddle 50, where words parted
    // short from medium.
    let words = (num(s, "/metrics/input_tokens/min"), num(s, "/metrics/input_tokens/max"));
    eprintln!("200-token prompts of {} to {} words", words.0, words.1);
    assert!(words.0 <= 50.0 && words.1 > 50.0, "{words:?}");
    let classes = s["classes"].as_array().expect("classes");
    assert_eq!(classes.len(), 1, "{classes:#?}");
    assert_eq!(classes[0]["class"], "medium");
    assert_eq!(num(&classes[0], "/requests"), num(s, "/requests/ok"));
    assert_eq!(num(&classes[0], "/failed"), 0.0);
}
