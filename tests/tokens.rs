//! Token accounting with provenance, end to end against the real
//! `llm-sim`: a `tokenizer.json` written here (one token per non-space
//! character, so that it disagrees with the simulator's one token per
//! word by an amount the test can work out) is given as
//! `target.tokenizer`; the controller sends it to its agents, which count
//! every answer with it beside the server's count and the stream events.
//! `summary.json` must name each source and give exactly the disagreement
//! that the simulator's known answers imply.

use std::path::Path;

use serde_json::{Value, json};
use stampede_tests::{Sim, exclusive, num, post_json, run_profile};

/// Lower-case words only, so that the server's and the tokenizer's
/// counts of it are easy to state: 6 words, 19 characters.
const PROMPT: &str = "why is the queue so long";
const MAX_TOKENS: u64 = 12;

/// Writes a byte-pair tokenizer with no merges over printable ASCII and a
/// whitespace pre-tokenizer: every non-space character is one token.
fn write_characters_tokenizer(path: &Path) {
    let vocab: serde_json::Map<String, Value> = ('!'..='~')
        .enumerate()
        .map(|(i, c)| (c.to_string(), i.into()))
        .collect();
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(path, json.to_string()).expect("tokenizer.json written");
}

/// Tokens of `text` under that tokenizer.
fn characters(text: &str) -> u64 {
    text.chars().filter(|c| !c.is_whitespace()).count() as u64
}

/// A fast simulator: a 2 s run completes dozens of requests.
fn sim(extra: &[&str]) -> Sim {
    let mut args = vec![
        "--max-batch",
        "16",
        "--prefill-base",
        "2ms",
        "--decode-step",
        "3ms",
        "--decode-step-per-seq",
        "0s",
    ];
    args.extend_from_slice(extra);
    Sim::start(&args)
}

fn profile(url: &str, tokenizer: &Path, target: &str, stream: bool) -> String {
    format!(
        r#"
        name = "tokens"
        [target]
        url = "{url}"
        model = "llm-sim"
        tokenizer = "{}"
        {target}
        [load]
        users = 2
        duration = "2s"
        drain = "30s"
        [request]
        max_tokens = {MAX_TOKENS}
        stream = {stream}
        [prompts]
        inline = ["{PROMPT}", "{PROMPT}"]
        [agents]
        count = 2
        "#,
        tokenizer.display()
    )
}

/// Asserts one pair of `tokens.agreement`: every one of `ok` requests had
/// `first` and `second` tokens.
fn assert_pair(s: &Value, pair: &str, ok: f64, first: u64, second: u64) {
    let d = &s["tokens"]["agreement"][pair];
    let (first, second) = (first as f64, second as f64);
    assert_eq!(num(d, "/requests"), ok, "{pair}: {d}");
    assert_eq!(num(d, "/first"), first * ok, "{pair}: {d}");
    assert_eq!(num(d, "/second"), second * ok, "{pair}: {d}");
    let relative = (second - first) / first;
    assert!((num(d, "/relative_difference") - relative).abs() < 1e-9, "{pair}: {d}");
    assert!(
        (num(d, "/mean_abs_difference") - (second - first).abs()).abs() < 1e-9,
        "{pair}: {d}"
    );
    let differing = if first == second { 0.0 } else { ok };
    assert_eq!(num(d, "/requests_differing"), differing, "{pair}: {d}");
}

#[test]
fn beside_the_servers_count_and_the_events_the_tokenizer_counts_and_the_summary_says_how_far_they_disagree() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tokenizer = dir.path().join("tokenizer.json");
    write_characters_tokenizer(&tokenizer);
    let sim = sim(&[]);
    let run = run_profile(&profile(&sim.url, &tokenizer, r#"api = "openai-chat""#, true), &[]);
    assert_eq!(run.code(), 0, "stderr:\n{}", run.stderr());
    let s = run.summary().clone();
    let served = sim.metrics()["llmsim_generation_tokens_total"];
    // The simulator answers a prompt the same way every time: ask it once
    // more, directly, for the text every request got.
    let answer = post_json(
        sim.addr(),
        "/v1/chat/completions",
        &json!({"model": "llm-sim", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}),
    );
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("an answer")
        .to_owned();
    let counted = characters(&text);
    let ok = num(&s, "/requests/ok");
    eprintln!(
        "openai-chat streamed, {ok} requests: server {MAX_TOKENS} tokens each, tokenizer {counted} ({text:?}); agreement {:#}",
        s["tokens"]["agreement"]
    );
    assert!(ok >= 10.0, "too few requests to judge: {ok}");
    assert_eq!(num(&s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
    // The figures use the server's count, and say so.
    assert_eq!(s["tokens"]["source"], "server usage");
    assert_eq!(num(&s, "/tokens/output"), served);
    assert_eq!(num(&s, "/tokens/output"), ok * MAX_TOKENS as f64);
    assert_eq!(s["tokens"]["input_source"], "server usage");
    assert_eq!(
        num(&s, "/tokens/input"),
        ok * 6.0,
        "the simulator counts the prompt's words"
    );
    assert_eq!(s["tokens"]["tokenizer"]["file"], tokenizer.display().to_string());
    assert_eq!(num(&s, "/tokens/tokenizer/vocab_size"), 94.0);
    // Every pair, exactly.
    assert_pair(&s, "server_vs_events", ok, MAX_TOKENS, MAX_TOKENS);
    assert_pair(&s, "server_vs_tokenizer", ok, MAX_TOKENS, counted);
    assert_pair(&s, "events_vs_tokenizer", ok, MAX_TOKENS, counted);
    assert!(
        run.stdout().contains("server vs tokenizer +"),
        "the terminal summary shows the disagreement:\n{}",
        run.stdout()
    );
}

#[test]
fn without_a_server_count_the_tokenizer_counts_answers_and_prompts() {
    let _machine = exclusive();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tokenizer = dir.path().join("tokenizer.json");
    write_characters_tokenizer(&tokenizer);
    // A home-made JSON server that says nothing about tokens, answered
    // whole, then streamed as NDJSON.
    let whole = r#"
        api = "http-json"
        path = "/generate"
        [target.http_json]
        body = { prompt = "{{prompt}}", max_new_tokens = "{{max_tokens}}" }
        text = "/generated_text"
        duration = "/inference_time_seconds"
    "#;
    let ndjson = r#"
        api = "http-json"
        path = "/generate_ndjson"
        [target.http_json]
        body = { prompt = "{{prompt}}", max_new_tokens = "{{max_tokens}}" }
        text = "/token"
        done = "/done"
        stream = "ndjson"
    "#;
    for (target, stream) in [(whole, false), (ndjson, true)] {
        let sim = sim(&["--generate-shape", "seconds"]);
        let run = run_profile(&profile(&sim.url, &tokenizer, target, stream), &[]);
        assert_eq!(run.code(), 0, "stream={stream}: stderr:\n{}", run.stderr());
        let s = run.summary().clone();
        let served = sim.metrics()["llmsim_generation_tokens_total"];
        let answer = post_json(
            sim.addr(),
            "/generate",
            &json!({"prompt": PROMPT, "max_new_tokens": MAX_TOKENS}),
        );
        let counted = characters(answer["generated_text"].as_str().expect("an answer"));
        let ok = num(&s, "/requests/ok");
        eprintln!(
            "http-json stream={stream}, {ok} requests: simulator {MAX_TOKENS} tokens each, tokenizer {counted}; source {}, agreement {:#}",
            s["tokens"]["source"], s["tokens"]["agreement"]
        );
        assert!(ok >= 10.0, "too few requests to judge: {ok}");
        assert_eq!(num(&s, "/requests/failed"), 0.0, "{:#}", s["errors"]);
        assert_eq!(s["tokens"]["source"], "client tokenizer");
        assert_eq!(num(&s, "/tokens/from_tokenizer"), ok);
        assert_eq!(num(&s, "/tokens/output"), ok * counted as f64);
        assert_eq!(
            served,
            ok * MAX_TOKENS as f64,
            "the simulator's own count is not the tokenizer's"
        );
        // The prompt, counted by the tokenizer: 19 characters.
        assert_eq!(s["tokens"]["input_source"], "client tokenizer");
        assert_eq!(num(&s, "/tokens/input"), ok * characters(PROMPT) as f64);
        assert!(s["tokens"]["agreement"]["server_vs_tokenizer"].is_null());
        if stream {
            assert_pair(&s, "events_vs_tokenizer", ok, MAX_TOKENS, counted);
        } else {
            assert!(s["tokens"]["agreement"]["events_vs_tokenizer"].is_null());
        }
    }
}
