//! The OpenAI dialects, chat completions (`POST /v1/chat/completions`) and
//! text completions (`POST /v1/completions`), as spoken by vLLM, llama.cpp,
//! TGI's Messages API, Ollama's OpenAI layer and others.

use std::borrow::Cow;

use serde::ser::SerializeSeq as _;
use serde::{Deserialize, Serialize};

use crate::prompts::Message;

use super::scan::{self, Scan, Str};
use super::{Chunk, Finish, Parsed, Spec, Usage, keep, words};

/// Chat request path, appended to the target's base URL.
pub(super) const CHAT_PATH: &str = "/v1/chat/completions";
/// Text completions request path.
pub(super) const COMPLETIONS_PATH: &str = "/v1/completions";

/// The body of one chat request: the history's messages, then the user's
/// prompt.
pub(super) fn chat_body<'a>(model: &'a str, history: &'a [Message], prompt: &'a str, spec: &Spec) -> Body<'a> {
    Body {
        messages: Some(Messages::new(history, prompt)),
        prompt: None,
        ..Body::common(model, spec)
    }
}

/// The body of one text completions request.
pub(super) fn completions_body<'a>(model: &'a str, prompt: &'a str, spec: &Spec) -> Body<'a> {
    Body {
        prompt: Some(prompt),
        ..Body::common(model, spec)
    }
}

/// An OpenAI request body, written straight from borrowed fields.
///
/// The fields are in the order of their names, the order in which a JSON
/// object value (`serde_json`'s sorted map) writes its keys, so a body
/// reads the same whether or not the profile adds fields of its own
/// (those go through a value).
#[derive(Serialize)]
pub(super) struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Messages<'a>>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    stream: bool,
    /// Asks for a final usage chunk, so that token counts come from the
    /// server.
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
}

impl<'a> Body<'a> {
    fn common(model: &'a str, spec: &Spec) -> Body<'a> {
        Body {
            max_tokens: spec.max_tokens,
            messages: None,
            model,
            prompt: None,
            stream: spec.stream,
            stream_options: spec.stream.then_some(StreamOptions { include_usage: true }),
            temperature: spec.temperature,
        }
    }
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A chat request's messages: the history's, then the user's prompt.
pub(super) struct Messages<'a> {
    history: &'a [Message],
    prompt: &'a str,
}

impl<'a> Messages<'a> {
    pub(super) fn new(history: &'a [Message], prompt: &'a str) -> Messages<'a> {
        Messages { history, prompt }
    }
}

impl Serialize for Messages<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        /// One message, its keys in the order of their names.
        #[derive(Serialize)]
        struct One<'a> {
            content: &'a str,
            role: &'a str,
        }
        let mut list = s.serialize_seq(Some(self.history.len() + 1))?;
        for m in self.history {
            list.serialize_element(&One {
                content: &m.content,
                role: m.role,
            })?;
        }
        list.serialize_element(&One {
            content: self.prompt,
            role: "user",
        })?;
        list.end()
    }
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    choices: Vec<Choice<'a>>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<WireError<'a>>,
    /// llama.cpp's server times, with the prompt tokens it reused.
    timings: Option<Timings>,
}

/// llama.cpp's `timings`: `cache_n` is the prompt tokens taken from its
/// cache.
#[derive(Deserialize)]
struct Timings {
    cache_n: Option<u64>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    message: Option<Delta<'a>>,
    /// Text completions put the text here.
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

impl Choice<'_> {
    /// The generated text of a streamed choice (`delta`) or a whole one
    /// (`message`), or of a text completion (`text`).
    fn texts(&self) -> impl Iterator<Item = &str> {
        let d = self.delta.as_ref().or(self.message.as_ref());
        let from_delta = d
            .into_iter()
            .flat_map(|d| [&d.content, &d.reasoning_content, &d.reasoning]);
        from_delta
            .chain([&self.text])
            .filter_map(|t| t.as_deref())
            .filter(|t| !t.is_empty())
    }

    fn has_text(&self) -> bool {
        self.texts().next().is_some()
    }

    fn words(&self) -> u64 {
        self.texts().map(words).sum()
    }
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

#[derive(Deserialize)]
struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
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

/// Prompt tokens the answer says came from the server's cache: OpenAI's
/// usage detail, else llama.cpp's `cache_n`.
fn cached(w: &Wire<'_>) -> Option<u64> {
    w.usage
        .as_ref()
        .and_then(|u| u.prompt_tokens_details.as_ref())
        .and_then(|d| d.cached_tokens)
        .or_else(|| w.timings.as_ref().and_then(|t| t.cache_n))
}

fn usage(u: Option<WireUsage>) -> Option<Usage> {
    u.and_then(|u| {
        Some(Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens?,
        })
    })
}

/// Parses the data of one SSE event: by `shape` when the event has it, by
/// the fast path when that is sure (teaching `shape` the event's own), else
/// in full.
pub(super) fn event(data: &[u8], mut text: Option<&mut String>, shape: &mut Shape) -> Parsed {
    if data == b"[DONE]" {
        return Parsed::Done;
    }
    if let Some(parsed) = shape.read(data, text.as_deref_mut()) {
        return parsed;
    }
    // Filled in place: the fast path's state is a few hundred bytes,
    // which returning it would copy for every event.
    let mut f = Fast::default();
    match fast(data, &mut f) {
        Some(()) => {
            let parsed = f.parsed(text);
            if let Parsed::Chunk(said) = &parsed {
                shape.learn(data, &f, said);
            }
            parsed
        }
        None => full_event(data, text),
    }
}

/// The shape of a recent event that carried one text: its bytes before and
/// after that text, and what the rest of it said. Servers send nearly every
/// event of an answer in one shape, the text aside (the answer's id, model
/// and creation time repeat), so an event is read by comparing its ends
/// with the shape's and scanning the string between them alone.
///
/// Whichever event taught it, a shape never changes what an event says:
/// the scan of an event that has the shape's bytes up to a string and from
/// its end on takes, byte for byte, the steps it took in the event that
/// taught it, but for that one string. Every decision before the string is
/// made on bytes before its opening quote (nothing the scanner reads runs
/// on through a quote it has not reached), and after it the scanner is in
/// the same state on the same bytes. So the answer is the fast path's,
/// with the event's own text.
#[derive(Debug, Default)]
pub struct Shape {
    /// Up to and including the text's opening quote; empty until learnt.
    pub(super) before: Vec<u8>,
    /// From the text's closing quote to the end.
    pub(super) after: Vec<u8>,
    /// What the event said besides its text.
    rest: Chunk,
}

impl Shape {
    /// What `data` says, when it has this shape; `None` when it has not,
    /// or its text is not one the scanner is sure of.
    pub(super) fn read(&self, data: &[u8], text: Option<&mut String>) -> Option<Parsed> {
        let (before, after) = (self.before.len(), self.after.len());
        if before == 0 || data.len() < before + after || !data.starts_with(&self.before) || !data.ends_with(&self.after)
        {
            return None;
        }
        // The text as a JSON string: from its opening quote, the last byte
        // of `before`, to its closing quote, the first of `after`.
        let mut s = Scan::new(&data[before - 1..=data.len() - after])?;
        let string = s.string()?;
        if !s.at_end() {
            return None;
        }
        if let Some(out) = text {
            string.push_to(out);
        }
        Some(Parsed::Chunk(Chunk {
            content_events: u32::from(string.len() > 0),
            text_bytes: string.len() as u64,
            ..self.rest
        }))
    }

    /// Takes the shape of `data`, which the fast path read as `f` and found
    /// to say `said`, when it holds one choice with one text.
    fn learn(&mut self, data: &[u8], f: &Fast<'_>, said: &Chunk) {
        let [choice] = f.choices() else { return };
        let mut texts = choice.texts.iter().flatten();
        let (Some(string), None) = (texts.next(), texts.next()) else {
            return;
        };
        // The string's bytes are a slice of `data`: where they start in it.
        let start = string.raw().as_ptr() as usize - data.as_ptr() as usize;
        let end = start + string.raw().len();
        self.before.clear();
        self.before.extend_from_slice(&data[..start]);
        self.after.clear();
        self.after.extend_from_slice(&data[end..]);
        self.rest = Chunk {
            content_events: 0,
            text_bytes: 0,
            ..*said
        };
    }
}

/// Parses the data of one SSE event into a full [`Wire`] value.
pub(super) fn full_event(data: &[u8], text: Option<&mut String>) -> Parsed {
    if data == b"[DONE]" {
        return Parsed::Done;
    }
    let chunk: Wire<'_> = match serde_json::from_slice(data) {
        Ok(c) => c,
        Err(e) => return Parsed::Malformed(format!("invalid JSON in stream event: {e}")),
    };
    if let Some(error) = chunk.error {
        return Parsed::ServerError(error.message());
    }
    let content = chunk.choices.iter().filter(|c| c.has_text()).count();
    keep(text, chunk.choices.iter().flat_map(Choice::texts));
    Parsed::Chunk(Chunk {
        content_events: u32::try_from(content).unwrap_or(u32::MAX),
        // Streamed events are counted as events, never by words.
        words: 0,
        text_bytes: chunk
            .choices
            .iter()
            .flat_map(Choice::texts)
            .map(|t| t.len() as u64)
            .sum(),
        finished: chunk.choices.iter().any(|c| c.finish_reason.is_some()),
        finish: chunk
            .choices
            .iter()
            .find_map(|c| c.finish_reason.as_deref())
            .map(Finish::from_openai),
        cached_tokens: cached(&chunk),
        usage: usage(chunk.usage),
        ..Chunk::default()
    })
}

/// Choices one event may have on the fast path; more go the full way.
const FAST_CHOICES: usize = 2;

/// One streamed event as the fast path reads it: borrowed, nothing
/// allocated.
#[derive(Default)]
struct Fast<'a> {
    choices: [FastChoice<'a>; FAST_CHOICES],
    count: usize,
    /// `usage`, when present: prompt and completion tokens.
    usage: Option<(Option<u64>, Option<u64>)>,
    /// `usage.prompt_tokens_details.cached_tokens`.
    cached_tokens: Option<u64>,
    /// llama.cpp's `timings.cache_n`.
    cache_n: Option<u64>,
}

#[derive(Default)]
struct FastChoice<'a> {
    /// `delta.content`, `delta.reasoning_content`, `delta.reasoning` and
    /// `text`, in the order [`Choice::texts`] gives them.
    texts: [Option<Str<'a>>; 4],
    finish_reason: Option<&'a str>,
}

impl FastChoice<'_> {
    fn texts(&self) -> impl Iterator<Item = &Str<'_>> {
        self.texts.iter().flatten().filter(|t| t.len() > 0)
    }
}

impl Fast<'_> {
    fn choices(&self) -> &[FastChoice<'_>] {
        &self.choices[..self.count]
    }

    /// The same [`Parsed`] as [`full_event`] gives.
    fn parsed(&self, text: Option<&mut String>) -> Parsed {
        let choices = self.choices();
        if let Some(out) = text {
            for t in choices.iter().flat_map(FastChoice::texts) {
                t.push_to(out);
            }
        }
        let content = choices.iter().filter(|c| c.texts().next().is_some()).count();
        let finish = choices.iter().find_map(|c| c.finish_reason);
        Parsed::Chunk(Chunk {
            content_events: u32::try_from(content).unwrap_or(u32::MAX),
            words: 0,
            text_bytes: choices.iter().flat_map(FastChoice::texts).map(|t| t.len() as u64).sum(),
            finished: finish.is_some(),
            finish: finish.map(Finish::from_openai),
            cached_tokens: self.cached_tokens.or(self.cache_n),
            usage: self.usage.and_then(|(input_tokens, output)| {
                Some(Usage {
                    input_tokens,
                    output_tokens: output?,
                })
            }),
            ..Chunk::default()
        })
    }
}

/// Reads one streamed event without building a value; `None` when unsure
/// (see [`scan`]), and always for an error, which the full parse reports.
fn fast<'a>(data: &'a [u8], f: &mut Fast<'a>) -> Option<()> {
    let mut s = Scan::new(data)?;
    let (mut choices, mut usage, mut error, mut timings) = (false, false, false, false);
    s.object(|s, key| match key {
        "choices" => {
            scan::once(&mut choices)?;
            s.array(|s| {
                let choice = f.choices.get_mut(f.count)?;
                f.count += 1;
                fast_choice(s, choice)
            })
        }
        "usage" => {
            scan::once(&mut usage)?;
            if s.null() {
                return Some(());
            }
            let (mut prompt, mut completion, mut details) = (false, false, false);
            let mut u = (None, None);
            s.object(|s, key| match key {
                "prompt_tokens" => {
                    scan::once(&mut prompt)?;
                    u.0 = s.u64_or_null()?;
                    Some(())
                }
                "completion_tokens" => {
                    scan::once(&mut completion)?;
                    u.1 = s.u64_or_null()?;
                    Some(())
                }
                "prompt_tokens_details" => {
                    scan::once(&mut details)?;
                    if s.null() {
                        return Some(());
                    }
                    let mut cached = false;
                    s.object(|s, key| match key {
                        "cached_tokens" => {
                            scan::once(&mut cached)?;
                            f.cached_tokens = s.u64_or_null()?;
                            Some(())
                        }
                        _ => s.skip(),
                    })
                }
                _ => s.skip(),
            })?;
            f.usage = Some(u);
            Some(())
        }
        "error" => {
            scan::once(&mut error)?;
            // A server error goes the full way, which words it.
            s.null().then_some(())
        }
        "timings" => {
            scan::once(&mut timings)?;
            if s.null() {
                return Some(());
            }
            let mut cache_n = false;
            s.object(|s, key| match key {
                "cache_n" => {
                    scan::once(&mut cache_n)?;
                    f.cache_n = s.u64_or_null()?;
                    Some(())
                }
                _ => s.skip(),
            })
        }
        _ => s.skip(),
    })?;
    s.at_end().then_some(())
}

/// True when the fast path reads `data` (unit tests: that it takes the
/// common events rather than leaving them all to the full parse).
#[cfg(test)]
pub(super) fn fast_path_takes(data: &[u8]) -> bool {
    fast(data, &mut Fast::default()).is_some()
}

/// One element of `choices`.
fn fast_choice<'a>(s: &mut Scan<'a>, choice: &mut FastChoice<'a>) -> Option<()> {
    let (mut delta, mut message, mut text, mut finish) = (false, false, false, false);
    s.object(|s, key| match key {
        "delta" => {
            scan::once(&mut delta)?;
            if s.null() {
                return Some(());
            }
            let mut seen = [false; 3];
            s.object(|s, key| {
                let i = match key {
                    "content" => 0,
                    "reasoning_content" => 1,
                    "reasoning" => 2,
                    _ => return s.skip(),
                };
                scan::once(&mut seen[i])?;
                choice.texts[i] = s.string_or_null()?;
                Some(())
            })
        }
        // A whole message in a stream is rare: the full parse reads it.
        "message" => {
            scan::once(&mut message)?;
            s.null().then_some(())
        }
        "text" => {
            scan::once(&mut text)?;
            choice.texts[3] = s.string_or_null()?;
            Some(())
        }
        "finish_reason" => {
            scan::once(&mut finish)?;
            choice.finish_reason = match s.string_or_null()? {
                Some(reason) => Some(reason.plain()?),
                None => None,
            };
            Some(())
        }
        _ => s.skip(),
    })
}

/// Parses a whole (non-streamed) response body.
pub(super) fn whole(body: &[u8], text: Option<&mut String>) -> Parsed {
    let chunk: Wire<'_> = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => return Parsed::Malformed(format!("invalid JSON response: {e}")),
    };
    if let Some(error) = chunk.error {
        return Parsed::ServerError(error.message());
    }
    let Some(choice) = chunk.choices.first() else {
        return Parsed::Malformed("response has no choices".to_owned());
    };
    keep(text, choice.texts());
    Parsed::Chunk(Chunk {
        content_events: u32::from(choice.has_text()),
        words: choice.words(),
        text_bytes: choice.texts().map(|t| t.len() as u64).sum(),
        finished: true,
        finish: choice.finish_reason.as_deref().map(Finish::from_openai),
        cached_tokens: cached(&chunk),
        usage: usage(chunk.usage),
        ..Chunk::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event on its own, with no shape learnt before it.
    fn event(data: &[u8], text: Option<&mut String>) -> Parsed {
        super::event(data, text, &mut Shape::default())
    }

    #[test]
    fn streaming_body_asks_for_usage() {
        let spec = Spec {
            max_tokens: Some(64),
            temperature: Some(0.5),
            stream: true,
        };
        let body = serde_json::to_value(chat_body("m", &[], "hi \"there\"", &spec)).unwrap();
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
        let body = serde_json::to_value(chat_body("m", &[], "x", &spec)).unwrap();
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("temperature").is_none());
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn role_only_and_empty_chunks_are_not_tokens() {
        let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(event(role, None), Parsed::Chunk(Chunk::default()));
        let token = br#"{"choices":[{"index":0,"delta":{"content":" hi"},"finish_reason":null}]}"#;
        assert!(matches!(
            event(token, None),
            Parsed::Chunk(Chunk { content_events: 1, .. })
        ));
        let last = br#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#;
        assert!(matches!(
            event(last, None),
            Parsed::Chunk(Chunk {
                finished: true,
                finish: Some(Finish::Length),
                ..
            })
        ));
        let reasoning = br#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#;
        assert!(matches!(
            event(reasoning, None),
            Parsed::Chunk(Chunk { content_events: 1, .. })
        ));
    }

    #[test]
    fn usage_chunk_and_done() {
        let usage = br#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        match event(usage, None) {
            Parsed::Chunk(Chunk { usage: Some(u), .. }) => {
                assert_eq!((u.input_tokens, u.output_tokens), (Some(12), 34));
            }
            _ => panic!("usage not parsed"),
        }
        assert!(matches!(event(b"[DONE]", None), Parsed::Done));
    }

    #[test]
    fn cached_prompt_tokens_from_usage_details_or_llama_timings() {
        let vllm = br#"{"choices":[],"usage":{"prompt_tokens":40,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":32}}}"#;
        assert!(matches!(
            event(vllm, None),
            Parsed::Chunk(Chunk {
                cached_tokens: Some(32),
                ..
            })
        ));
        let llama = br#"{"choices":[{"index":0,"message":{"content":"hi"},"finish_reason":"stop"}],"timings":{"cache_n":17,"prompt_n":3}}"#;
        assert!(matches!(
            whole(llama, None),
            Parsed::Chunk(Chunk {
                cached_tokens: Some(17),
                ..
            })
        ));
        let neither = br#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}"#;
        assert!(matches!(
            event(neither, None),
            Parsed::Chunk(Chunk {
                cached_tokens: None,
                ..
            })
        ));
    }

    #[test]
    fn escaped_text_and_errors() {
        let escaped = br#"{"choices":[{"delta":{"content":"a\"b\u00e9"}}]}"#;
        assert!(matches!(
            event(escaped, None),
            Parsed::Chunk(Chunk { content_events: 1, .. })
        ));
        let err = br#"{"error":{"message":"out of memory","code":500}}"#;
        assert!(matches!(event(err, None), Parsed::ServerError(m) if m == "out of memory"));
        assert!(matches!(event(b"{not json", None), Parsed::Malformed(_)));
        assert!(matches!(event(&[0xff, 0xfe], None), Parsed::Malformed(_)));
    }

    #[test]
    fn whole_response() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
        assert!(matches!(
            whole(body, None),
            Parsed::Chunk(Chunk {
                content_events: 1,
                words: 1,
                finished: true,
                finish: Some(Finish::Stop),
                usage: Some(_),
                ..
            })
        ));
        let text = br#"{"choices":[{"text":" two words","index":0,"finish_reason":"length"}]}"#;
        assert!(matches!(
            whole(text, None),
            Parsed::Chunk(Chunk {
                words: 2,
                usage: None,
                ..
            })
        ));
        let streamed = br#"{"choices":[{"text":" tok","index":0,"finish_reason":null}]}"#;
        assert!(matches!(
            event(streamed, None),
            Parsed::Chunk(Chunk {
                content_events: 1,
                finished: false,
                ..
            })
        ));
        assert!(matches!(whole(br#"{"choices":[]}"#, None), Parsed::Malformed(_)));
    }
}
