//! The OpenAI chat completions dialect (`POST /v1/chat/completions`), as
//! spoken by vLLM, llama.cpp, TGI's Messages API, Ollama's OpenAI layer and
//! others.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::json;

use super::{Finish, Parsed, Spec, Usage};

/// Request path, appended to the target's base URL.
pub(super) const PATH: &str = "/v1/chat/completions";

/// The JSON body of one request.
pub(super) fn body(model: &str, prompt: &str, spec: &Spec) -> Vec<u8> {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": spec.stream,
    });
    if spec.stream {
        // Ask for a final usage chunk so token counts come from the server.
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(n) = spec.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = spec.temperature {
        body["temperature"] = json!(t);
    }
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    message: Option<Delta<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

/// A streamed delta or a whole message. Reasoning models stream their
/// reasoning under other names; those are generated tokens too.
#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
}

impl Delta<'_> {
    fn has_text(&self) -> bool {
        [&self.content, &self.reasoning_content, &self.reasoning]
            .into_iter()
            .any(|t| t.as_deref().is_some_and(|t| !t.is_empty()))
    }
}

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WireError<'a> {
    Object {
        #[serde(borrow)]
        message: Option<Cow<'a, str>>,
    },
    Text(#[serde(borrow)] Cow<'a, str>),
}

impl WireError<'_> {
    fn message(&self) -> String {
        match self {
            WireError::Object { message } => message.as_deref().unwrap_or("error").to_owned(),
            WireError::Text(t) => t.to_string(),
        }
    }
}

fn usage(u: Option<WireUsage>) -> Option<Usage> {
    u.and_then(|u| {
        Some(Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens?,
        })
    })
}

/// Parses the data of one SSE event.
pub(super) fn event(data: &[u8]) -> Parsed {
    if data == b"[DONE]" {
        return Parsed::Done;
    }
    let chunk: Chunk<'_> = match serde_json::from_slice(data) {
        Ok(c) => c,
        Err(e) => return Parsed::Malformed(format!("invalid JSON in stream event: {e}")),
    };
    if let Some(error) = chunk.error {
        return Parsed::ServerError(error.message());
    }
    let content = chunk
        .choices
        .iter()
        .filter(|c| c.delta.as_ref().is_some_and(Delta::has_text))
        .count();
    Parsed::Chunk {
        content_events: u32::try_from(content).unwrap_or(u32::MAX),
        finished: chunk
            .choices
            .iter()
            .find_map(|c| c.finish_reason.as_deref())
            .map(Finish::from_openai),
        usage: usage(chunk.usage),
    }
}

/// Parses a whole (non-streamed) response body.
pub(super) fn whole(body: &[u8]) -> Parsed {
    let chunk: Chunk<'_> = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => return Parsed::Malformed(format!("invalid JSON response: {e}")),
    };
    if let Some(error) = chunk.error {
        return Parsed::ServerError(error.message());
    }
    let Some(choice) = chunk.choices.first() else {
        return Parsed::Malformed("response has no choices".to_owned());
    };
    let has_text = choice.message.as_ref().is_some_and(Delta::has_text);
    Parsed::Chunk {
        content_events: u32::from(has_text),
        finished: Some(
            choice
                .finish_reason
                .as_deref()
                .map_or(Finish::Unstated, Finish::from_openai),
        ),
        usage: usage(chunk.usage),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_body_asks_for_usage() {
        let spec = Spec {
            max_tokens: Some(64),
            temperature: Some(0.5),
            stream: true,
        };
        let body: serde_json::Value = serde_json::from_slice(&body("m", "hi \"there\"", &spec)).unwrap();
        assert_eq!(body["model"], "m");
        assert_eq!(body["messages"][0]["content"], "hi \"there\"");
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(body["temperature"], 0.5);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn plain_body_leaves_unset_fields_out() {
        let spec = Spec {
            max_tokens: None,
            temperature: None,
            stream: false,
        };
        let body: serde_json::Value = serde_json::from_slice(&body("m", "x", &spec)).unwrap();
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("temperature").is_none());
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn role_only_and_empty_chunks_are_not_tokens() {
        let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert!(matches!(
            event(role),
            Parsed::Chunk {
                content_events: 0,
                finished: None,
                usage: None
            }
        ));
        let token = br#"{"choices":[{"index":0,"delta":{"content":" hi"},"finish_reason":null}]}"#;
        assert!(matches!(event(token), Parsed::Chunk { content_events: 1, .. }));
        let last = br#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        assert!(matches!(
            event(last),
            Parsed::Chunk {
                finished: Some(Finish::Length),
                ..
            }
        ));
        let reasoning = br#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#;
        assert!(matches!(event(reasoning), Parsed::Chunk { content_events: 1, .. }));
    }

    #[test]
    fn usage_chunk_and_done() {
        let usage = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        match event(usage) {
            Parsed::Chunk { usage: Some(u), .. } => {
                assert_eq!((u.input_tokens, u.output_tokens), (Some(12), 34));
            }
            _ => panic!("usage not parsed"),
        }
        assert!(matches!(event(b"[DONE]"), Parsed::Done));
    }

    #[test]
    fn escaped_text_and_errors() {
        let escaped = br#"{"choices":[{"delta":{"content":"a\"b\u00e9"}}]}"#;
        assert!(matches!(event(escaped), Parsed::Chunk { content_events: 1, .. }));
        let err = br#"{"error":{"message":"out of memory","code":500}}"#;
        assert!(matches!(event(err), Parsed::ServerError(m) if m == "out of memory"));
        assert!(matches!(event(b"{not json"), Parsed::Malformed(_)));
        assert!(matches!(event(&[0xff, 0xfe]), Parsed::Malformed(_)));
    }

    #[test]
    fn whole_response() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        assert!(matches!(
            whole(body),
            Parsed::Chunk {
                content_events: 1,
                finished: Some(Finish::Stop),
                usage: Some(_)
            }
        ));
        assert!(matches!(whole(br#"{"choices":[]}"#), Parsed::Malformed(_)));
    }
}
