//! Ollama's native API: `POST /api/generate` and `POST /api/chat`, streamed
//! as newline-delimited JSON (the default) or answered whole.
//!
//! Every line carries a piece of the answer (`response`, or
//! `message.content` for chat); the last has `"done": true` and Ollama's
//! own accounting: `prompt_eval_count` and `eval_count` tokens, and
//! `load_duration`, `prompt_eval_duration` and `eval_duration` in
//! nanoseconds. Those durations become the server prefill, server decode
//! and model load histograms.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

use super::openai::Messages;
use super::{Chunk, Finish, Parsed, ServerTimes, Spec, Usage, keep, words};

/// Generate request path.
pub(super) const GENERATE_PATH: &str = "/api/generate";
/// Chat request path.
pub(super) const CHAT_PATH: &str = "/api/chat";

fn options(spec: &Spec) -> Value {
    let mut options = json!({});
    if let Some(n) = spec.max_tokens {
        options["num_predict"] = json!(n);
    }
    if let Some(t) = spec.temperature {
        options["temperature"] = json!(t);
    }
    options
}

/// The body of one `/api/generate` request.
pub(super) fn generate_body(model: &str, prompt: &str, spec: &Spec) -> Value {
    json!({"model": model, "prompt": prompt, "stream": spec.stream, "options": options(spec)})
}

/// The body of one `/api/chat` request.
pub(super) fn chat_body(model: &str, history: &[crate::prompts::Message], prompt: &str, spec: &Spec) -> Value {
    json!({
        "model": model,
        "messages": Messages::new(history, prompt),
        "stream": spec.stream,
        "options": options(spec),
    })
}

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    response: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    #[serde(default)]
    done: bool,
    /// Why it ended: `stop`, `length`, … (newer servers).
    #[serde(default)]
    done_reason: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    load_duration: Option<u64>,
    prompt_eval_duration: Option<u64>,
    eval_duration: Option<u64>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
}

fn micros(ns: Option<u64>) -> Option<u64> {
    ns.map(|n| n / 1_000)
}

/// Parses one NDJSON line (`streamed`) or a whole answer.
pub(super) fn parse(data: &[u8], streamed: bool, text: Option<&mut String>) -> Parsed {
    let line: Line<'_> = match serde_json::from_slice(data) {
        Ok(l) => l,
        Err(e) if streamed => return Parsed::Malformed(format!("invalid JSON in an Ollama stream line: {e}")),
        Err(e) => return Parsed::Malformed(format!("invalid JSON response: {e}")),
    };
    if let Some(error) = line.error {
        return Parsed::ServerError(error.into_owned());
    }
    let message = line.message.as_ref();
    let texts = [
        line.response.as_deref(),
        line.thinking.as_deref(),
        message.and_then(|m| m.content.as_deref()),
        message.and_then(|m| m.thinking.as_deref()),
    ];
    let has_text = texts.iter().flatten().any(|t| !t.is_empty());
    if !streamed && !line.done {
        return Parsed::Malformed("the Ollama answer is not marked \"done\": true".to_owned());
    }
    keep(text, texts.iter().flatten().copied());
    let usage = match (line.done, line.eval_count) {
        (true, Some(output_tokens)) => Some(Usage {
            input_tokens: line.prompt_eval_count,
            output_tokens,
        }),
        _ => None,
    };
    Parsed::Chunk(Chunk {
        content_events: u32::from(has_text),
        // Streamed lines are counted as events, never by words.
        words: if streamed {
            0
        } else {
            texts.iter().flatten().map(|t| words(t)).sum()
        },
        text_bytes: texts.iter().flatten().map(|t| t.len() as u64).sum(),
        finished: line.done,
        finish: line.done_reason.as_deref().map(Finish::from_openai),
        usage,
        server: ServerTimes {
            prefill_us: micros(line.prompt_eval_duration),
            decode_us: micros(line.eval_duration),
            load_us: micros(line.load_duration),
            total_us: None,
        },
        // Ollama does not say what it reused.
        cached_tokens: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as Ollama's API documentation shows them.
    const TOKEN: &[u8] =
        br#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","response":"The","done":false}"#;
    const FINAL: &[u8] = br#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop","context":[1,2,3],"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000}"#;
    const CHAT_TOKEN: &[u8] = br#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The","images":null},"done":false}"#;

    #[test]
    fn token_lines_and_the_final_accounting() {
        assert_eq!(
            parse(TOKEN, true, None),
            Parsed::Chunk(Chunk {
                content_events: 1,
                text_bytes: 3,
                ..Chunk::default()
            })
        );
        assert!(matches!(
            parse(CHAT_TOKEN, true, None),
            Parsed::Chunk(Chunk { content_events: 1, .. })
        ));
        let Parsed::Chunk(last) = parse(FINAL, true, None) else {
            panic!("final line not parsed")
        };
        assert_eq!(last.content_events, 0);
        assert!(last.finished);
        assert_eq!(
            last.usage,
            Some(Usage {
                input_tokens: Some(26),
                output_tokens: 259
            })
        );
        assert_eq!(last.server.load_us, Some(6_338_219));
        assert_eq!(last.server.prefill_us, Some(130_079));
        assert_eq!(last.server.decode_us, Some(4_232_710));
    }

    #[test]
    fn whole_answers_must_be_done_and_errors_are_the_servers() {
        assert!(matches!(parse(TOKEN, false, None), Parsed::Malformed(m) if m.contains("done")));
        let whole = br#"{"model":"m","response":"two words","done":true,"eval_count":2,"prompt_eval_count":3}"#;
        assert!(matches!(
            parse(whole, false, None),
            Parsed::Chunk(Chunk {
                words: 2,
                finished: true,
                usage: Some(_),
                ..
            })
        ));
        let err = br#"{"error":"model \"x\" not found, try pulling it first"}"#;
        assert!(matches!(parse(err, true, None), Parsed::ServerError(m) if m.contains("not found")));
        assert!(matches!(parse(b"{\"response\":", true, None), Parsed::Malformed(_)));
        // A final line without counts leaves the tokens to be counted.
        assert!(matches!(
            parse(br#"{"done":true}"#, true, None),
            Parsed::Chunk(Chunk {
                usage: None,
                finished: true,
                ..
            })
        ));
    }

    #[test]
    fn bodies_carry_options() {
        let spec = Spec {
            max_tokens: Some(8),
            temperature: Some(0.0),
            stream: true,
        };
        let b = chat_body("m", &[], "hi", &spec);
        assert_eq!(b["options"]["num_predict"], 8);
        assert_eq!(b["messages"][0]["content"], "hi");
        assert_eq!(generate_body("m", "hi", &spec)["prompt"], "hi");
    }
}
