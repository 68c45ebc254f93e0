//! Hugging Face Text Generation Inference: `POST /generate_stream` (SSE,
//! one event per token) and `POST /generate` (one JSON answer).
//!
//! Requests ask for `details`, so the last streamed event (and the whole
//! answer) carries `details.generated_tokens`, the server's own count.
//! Tokens marked `special` (such as the end-of-sequence token) carry no
//! text and are not content events.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Chunk, Parsed, Spec, Usage, keep, words};

/// Non-streamed request path.
pub(super) const PATH: &str = "/generate";
/// Streamed request path.
pub(super) const STREAM_PATH: &str = "/generate_stream";

/// The body of one request. TGI refuses a temperature of zero: greedy
/// decoding is `do_sample: false` instead.
pub(super) fn body(prompt: &str, spec: &Spec) -> Value {
    let mut parameters = json!({"details": true});
    if let Some(n) = spec.max_tokens {
        parameters["max_new_tokens"] = json!(n);
    }
    match spec.temperature {
        Some(t) if t > 0.0 => {
            parameters["temperature"] = json!(t);
            parameters["do_sample"] = json!(true);
        }
        Some(_) => parameters["do_sample"] = json!(false),
        None => {}
    }
    json!({"inputs": prompt, "parameters": parameters})
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    token: Option<Token<'a>>,
    #[serde(borrow)]
    generated_text: Option<Cow<'a, str>>,
    details: Option<Details>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Token<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct Details {
    generated_tokens: Option<u64>,
    input_length: Option<u64>,
    finish_reason: Option<Value>,
}

fn usage(details: Option<&Details>) -> Option<Usage> {
    let d = details?;
    Some(Usage {
        input_tokens: d.input_length,
        output_tokens: d.generated_tokens?,
    })
}

/// Parses the data of one SSE event.
pub(super) fn event(data: &[u8], out: Option<&mut String>) -> Parsed {
    let e: Event<'_> = match serde_json::from_slice(data) {
        Ok(e) => e,
        Err(e) => return Parsed::Malformed(format!("invalid JSON in a TGI stream event: {e}")),
    };
    if let Some(error) = e.error {
        return Parsed::ServerError(error.into_owned());
    }
    let text = e.token.as_ref().filter(|t| !t.special).and_then(|t| t.text.as_deref());
    let has_text = text.is_some_and(|t| !t.is_empty());
    keep(out, text);
    let finished = e.generated_text.is_some() || e.details.as_ref().is_some_and(|d| d.finish_reason.is_some());
    Parsed::Chunk(Chunk {
        content_events: u32::from(has_text),
        // Streamed events are counted as events, never by words.
        words: 0,
        text_bytes: text.map_or(0, |t| t.len() as u64),
        finished,
        usage: usage(e.details.as_ref()),
        ..Chunk::default()
    })
}

/// Parses a whole answer: an object, or a one-element list as TGI's `/`
/// route returns.
pub(super) fn whole(body: &[u8], out: Option<&mut String>) -> Parsed {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Parsed::Malformed(format!("invalid JSON response: {e}")),
    };
    let answer = match &value {
        Value::Array(list) => list.first().unwrap_or(&Value::Null),
        v => v,
    };
    if let Some(error) = answer.get("error") {
        return Parsed::ServerError(error.as_str().map_or_else(|| error.to_string(), str::to_owned));
    }
    let Some(text) = answer.get("generated_text").and_then(Value::as_str) else {
        return Parsed::Malformed("the TGI answer has no generated_text".to_owned());
    };
    let details: Option<Details> = answer.get("details").and_then(|d| Details::deserialize(d).ok());
    keep(out, [text]);
    Parsed::Chunk(Chunk {
        content_events: u32::from(!text.is_empty()),
        words: words(text),
        text_bytes: text.len() as u64,
        finished: true,
        usage: usage(details.as_ref()),
        ..Chunk::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Events as TGI's API documentation shows them.
    const TOKEN: &[u8] =
        br#"{"index":1,"token":{"id":1313,"text":" test","logprob":-0.34,"special":false},"top_tokens":null,"generated_text":null,"details":null}"#;
    const LAST: &[u8] = br#"{"index":2,"token":{"id":2,"text":"</s>","logprob":-0.01,"special":true},"top_tokens":null,"generated_text":" test","details":{"finish_reason":"eos_token","generated_tokens":2,"input_length":5,"seed":null}}"#;

    #[test]
    fn token_events_and_the_last_with_details() {
        assert_eq!(
            event(TOKEN, None),
            Parsed::Chunk(Chunk {
                content_events: 1,
                text_bytes: 5,
                ..Chunk::default()
            })
        );
        let Parsed::Chunk(last) = event(LAST, None) else {
            panic!("last event not parsed")
        };
        // The end-of-sequence token is special: no text.
        assert_eq!((last.content_events, last.finished), (0, true));
        assert_eq!(
            last.usage,
            Some(Usage {
                input_tokens: Some(5),
                output_tokens: 2
            })
        );
    }

    #[test]
    fn whole_answers_errors_and_garbage() {
        let body = br#"{"generated_text":"a b c","details":{"finish_reason":"length","generated_tokens":3,"seed":null,"prefill":[],"tokens":[]}}"#;
        assert!(matches!(
            whole(body, None),
            Parsed::Chunk(Chunk {
                words: 3,
                usage: Some(Usage { output_tokens: 3, .. }),
                ..
            })
        ));
        assert!(matches!(
            whole(br#"[{"generated_text":"x"}]"#, None),
            Parsed::Chunk(Chunk { usage: None, .. })
        ));
        assert!(matches!(whole(br#"{"details":{}}"#, None), Parsed::Malformed(_)));
        let err = br#"{"error":"Input validation error: `inputs` must have less than 4096 tokens","error_type":"validation"}"#;
        assert!(matches!(event(err, None), Parsed::ServerError(m) if m.contains("validation")));
        assert!(matches!(event(b"{\"token\"", None), Parsed::Malformed(_)));
    }

    #[test]
    fn greedy_decoding_is_do_sample_false() {
        let spec = Spec {
            max_tokens: Some(4),
            temperature: Some(0.0),
            stream: true,
        };
        let b = body("hi", &spec);
        assert_eq!(b["parameters"]["do_sample"], false);
        assert!(b["parameters"].get("temperature").is_none());
        assert_eq!(b["parameters"]["max_new_tokens"], 4);
        assert_eq!(b["parameters"]["details"], true);
    }
}
