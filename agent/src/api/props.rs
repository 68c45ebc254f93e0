//! Property tests: the OpenAI event parser's fast path and its full parse
//! agree on every event, and on whatever text they keep.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::openai::{self, Shape};
use crate::prompts::Message;

/// Cases each property runs (see README: Testing).
const CASES: u32 = 4096;

/// Generated text: plain words, and the characters JSON escapes (quotes,
/// backslashes, newlines, control characters), accents, and characters
/// outside the basic plane (written as surrogate pairs when escaped).
fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just(String::new()),
            "[a-z ]{1,6}",
            Just("\n".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("\t\r\u{8}\u{c}\u{1}".to_owned()),
            Just("/".to_owned()),
            Just("é".to_owned()),
            Just("日本".to_owned()),
            Just("😀".to_owned()),
            any::<char>().prop_map(String::from),
        ],
        0..4,
    )
    .prop_map(|parts| parts.concat())
}

/// A string field: absent, null, or text.
fn field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        text().prop_map(|t| Some(Value::String(t))),
    ]
}

fn count() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Value::Null)),
        8 => (0u64..100_000).prop_map(|n| Some(Value::from(n))),
        1 => Just(Some(Value::from(u64::MAX))),
        1 => Just(Some(json!(1.5))),
        1 => Just(Some(json!(-3))),
        1 => Just(Some(json!("7"))),
    ]
}

/// Fields no parser reads, of every JSON kind.
fn extra() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("index".to_owned()),
                Just("logprobs".to_owned()),
                Just("id".to_owned()),
                Just("x_\u{e9}".to_owned()),
            ],
            prop_oneof![
                Just(Value::Null),
                Just(json!(true)),
                Just(json!(0)),
                Just(json!(-12.5e-3)),
                text().prop_map(Value::String),
                Just(json!({"a": [1, {"b": null}], "c": "d\"e"})),
                Just(json!([])),
            ],
        ),
        0..3,
    )
}

fn object(fields: Vec<(&str, Option<Value>)>, extra: Vec<(String, Value)>) -> Value {
    let mut map = Map::new();
    for (k, v) in extra {
        map.insert(k, v);
    }
    for (k, v) in fields {
        if let Some(v) = v {
            map.insert(k.to_owned(), v);
        }
    }
    Value::Object(map)
}

fn choice() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            1 => Just(None),
            1 => Just(Some(Value::Null)),
            6 => (field(), field(), field(), prop_oneof![Just(None), Just(Some(json!("assistant")))], extra())
                .prop_map(|(c, rc, r, role, extra)| Some(object(
                    vec![("content", c), ("reasoning_content", rc), ("reasoning", r), ("role", role)],
                    extra
                ))),
        ],
        field(),
        prop_oneof![
            4 => Just(None),
            4 => Just(Some(Value::Null)),
            1 => Just(Some(json!("stop"))),
            1 => Just(Some(json!("length"))),
            1 => Just(Some(json!("eos_token"))),
            1 => Just(Some(json!("something new"))),
            1 => Just(Some(json!("st\nop"))),
        ],
        prop_oneof![
            8 => Just(None),
            1 => Just(Some(Value::Null)),
            1 => Just(Some(json!({"content": "m"}))),
        ],
        extra(),
    )
        .prop_map(|(delta, text, finish, message, extra)| {
            object(
                vec![
                    ("delta", delta),
                    ("text", text),
                    ("finish_reason", finish),
                    ("message", message),
                ],
                extra,
            )
        })
}

fn usage() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        (
            count(),
            count(),
            prop_oneof![
                Just(None),
                Just(Some(Value::Null)),
                count().prop_map(|c| Some(object(vec![("cached_tokens", c)], vec![]))),
            ],
        )
            .prop_map(|(p, c, d)| Some(object(
                vec![
                    ("prompt_tokens", p),
                    ("completion_tokens", c),
                    ("prompt_tokens_details", d),
                ],
                vec![("total_tokens".to_owned(), json!(3))]
            ))),
    ]
}

/// A streamed event as a value.
fn event() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            1 => Just(None),
            6 => prop::collection::vec(choice(), 0..3).prop_map(|c| Some(Value::Array(c))),
            // More choices than the fast path takes.
            1 => prop::collection::vec(choice(), 3..5).prop_map(|c| Some(Value::Array(c))),
        ],
        usage(),
        prop_oneof![
            8 => Just(None),
            2 => Just(Some(Value::Null)),
            1 => Just(Some(json!({"message": "out of memory"}))),
            1 => Just(Some(json!("busy"))),
        ],
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            count().prop_map(|c| Some(object(vec![("cache_n", c)], vec![("prompt_n".to_owned(), json!(3))]))),
        ],
        extra(),
    )
        .prop_map(|(choices, usage, error, timings, extra)| {
            object(
                vec![
                    ("choices", choices),
                    ("usage", usage),
                    ("error", error),
                    ("timings", timings),
                ],
                extra,
            )
        })
}

/// An event whose one choice carries one text, in any of the four fields
/// (the others absent or null), the rest drawn as [`event`] draws it: the
/// events a shape is learnt from.
fn one_text_event() -> impl Strategy<Value = Value> {
    (event(), choice(), 0..4usize, text(), any::<bool>()).prop_map(|(mut v, mut c, slot, t, nulls)| {
        const DELTA: [&str; 3] = ["content", "reasoning_content", "reasoning"];
        let map = c.as_object_mut().expect("a choice is an object");
        map.remove("text");
        let delta = map.entry("delta").or_insert_with(|| json!({}));
        if !delta.is_object() {
            *delta = json!({});
        }
        let delta = delta.as_object_mut().expect("made an object");
        for key in DELTA {
            delta.remove(key);
            if nulls {
                delta.insert(key.to_owned(), Value::Null);
            }
        }
        match DELTA.get(slot) {
            Some(key) => delta.insert((*key).to_owned(), Value::String(t)),
            None => map.insert("text".to_owned(), Value::String(t)),
        };
        v.as_object_mut()
            .expect("an event is an object")
            .insert("choices".to_owned(), Value::Array(vec![c]));
        v
    })
}

/// Writes `v` with its keys in a shuffled order, whitespace around every
/// token, and strings escaped in any of the ways JSON allows.
fn write(v: &Value, style: &mut Style, out: &mut String) {
    let ws = |style: &mut Style, out: &mut String| {
        let n = style.next();
        if style.1 {
            out.push_str([" ", ""][n % 2]);
        } else {
            out.push_str([" ", "", "\n", "\t ", "\r\n", ""][n % 6]);
        }
    };
    ws(style, out);
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut entries: Vec<_> = map.iter().collect();
            let n = entries.len();
            if n > 1 {
                entries.rotate_left(style.next() % n);
                if style.next().is_multiple_of(2) {
                    entries.reverse();
                }
            }
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                ws(style, out);
                // A key with escapes is rare, and sends the event the full
                // way: most keys are written plainly.
                if style.next().is_multiple_of(32) {
                    string(k, style, out);
                } else {
                    out.push('"');
                    out.push_str(k);
                    out.push('"');
                }
                ws(style, out);
                out.push(':');
                write(v, style, out);
            }
            ws(style, out);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, style, out);
            }
            ws(style, out);
            out.push(']');
        }
        Value::String(s) => string(s, style, out),
        other => out.push_str(&other.to_string()),
    }
    ws(style, out);
}

fn string(s: &str, style: &mut Style, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        let how = style.next() % 4;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if how < 3 => out.push_str("\\n"),
            '\t' if how < 3 => out.push_str("\\t"),
            '/' if how == 0 => out.push_str("\\/"),
            c if (c as u32) < 0x20 || how == 0 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Choices of layout, drawn from a seed; with `.1`, whitespace is only
/// spaces (the usual compact event, with no control character at all).
struct Style(u64, bool);

impl Style {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize
    }
}

/// Both parses of `data`, with the text each kept: the fast one with
/// `shape`, which it may read the event by and learn from.
fn both_with(data: &[u8], shape: &mut Shape) -> ((super::Parsed, String), (super::Parsed, String)) {
    let (mut fast_text, mut full_text) = (String::new(), String::new());
    let fast = openai::event(data, Some(&mut fast_text), shape);
    let full = openai::full_event(data, Some(&mut full_text));
    ((fast, fast_text), (full, full_text))
}

/// Both parses of `data`, the fast one knowing no shape yet.
fn both(data: &[u8]) -> ((super::Parsed, String), (super::Parsed, String)) {
    both_with(data, &mut Shape::default())
}

/// The bytes between the quotes of `text` written as a JSON string.
fn inside(text: &str, style: &mut Style) -> Vec<u8> {
    let mut quoted = String::new();
    string(text, style, &mut quoted);
    quoted.as_bytes()[1..quoted.len() - 1].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Generated events, laid out in any way JSON allows, parse the same
    /// both ways, and keep the same text.
    #[test]
    fn fast_and_full_parses_agree(v in event(), seed in any::<u64>()) {
        for spaces_only in [false, true] {
            let mut data = String::new();
            write(&v, &mut Style(seed, spaces_only), &mut data);
            let (fast, full) = both(data.as_bytes());
            prop_assert_eq!(fast, full, "{}", data);
        }
    }

    /// Events damaged at any byte (cut short, a byte changed, a byte
    /// added) still parse the same both ways.
    #[test]
    fn damaged_events_agree(v in event(), seed in any::<u64>(), spaces_only in any::<bool>(), at in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0..3u8) {
        let mut data = String::new();
        write(&v, &mut Style(seed, spaces_only), &mut data);
        let mut data = data.into_bytes();
        let i = at.index(data.len().max(1)).min(data.len());
        match how {
            0 => data.truncate(i),
            1 if i < data.len() => data[i] = byte,
            _ => data.insert(i, byte),
        }
        let (fast, full) = both(&data);
        prop_assert_eq!(fast, full, "{}", String::from_utf8_lossy(&data));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Once an event has taught its shape, any bytes at all put where its
    /// text was (another text in any escaping, or that damaged at any
    /// byte) parse as the full parse reads them; and a text that is a
    /// JSON string is read by the shape.
    #[test]
    fn shaped_events_agree(v in one_text_event(), seed in any::<u64>(), spaces_only in any::<bool>(), texts in prop::collection::vec(text(), 1..4), at in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0..4u8) {
        let mut data = String::new();
        let mut style = Style(seed, spaces_only);
        write(&v, &mut style, &mut data);
        let mut shape = Shape::default();
        let (fast, full) = both_with(data.as_bytes(), &mut shape);
        prop_assert_eq!(fast, full, "{}", data);
        if shape.before.is_empty() {
            return Ok(());
        }
        for text in &texts {
            let whole = |shape: &Shape, middle: &[u8]| [&shape.before[..], middle, &shape.after[..]].concat();
            let mut middle = inside(text, &mut style);
            let event = whole(&shape, &middle);
            prop_assert!(shape.read(&event, None).is_some(), "{}", String::from_utf8_lossy(&event));
            let (fast, full) = both_with(&event, &mut shape);
            prop_assert_eq!(fast, full, "{}", String::from_utf8_lossy(&event));
            // Damaged inside the shape: a byte cut, changed or added, or
            // one of those a string must escape.
            let i = at.index(middle.len() + 1).min(middle.len());
            match how {
                0 => middle.truncate(i),
                1 if i < middle.len() => middle[i] = byte,
                2 => middle.insert(i, byte),
                _ => middle.insert(i, [b'"', b'\\', b'\n', 0xC3][usize::from(byte % 4)]),
            }
            let event = whole(&shape, &middle);
            let (fast, full) = both_with(&event, &mut shape);
            prop_assert_eq!(fast, full, "{}", String::from_utf8_lossy(&event));
        }
    }
}

#[test]
fn a_stream_is_read_by_its_shape() {
    // llm-sim's events: after the role's, every one until the last is read
    // by the shape, and each says what the full parse says.
    let event = |text: &str, finish: &str| {
        format!(
            r#"{{"choices":[{{"delta":{{"content":{}}},"finish_reason":{finish},"index":0,"logprobs":null}}],"created":1796602203,"id":"chatcmpl-sim-155090","model":"m","object":"chat.completion.chunk"}}"#,
            serde_json::to_string(text).unwrap()
        )
    };
    let mut shape = Shape::default();
    let role = r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1796602203,"id":"chatcmpl-sim-155090","model":"m","object":"chat.completion.chunk"}"#;
    let (fast, full) = both_with(role.as_bytes(), &mut shape);
    assert_eq!(fast, full);
    let words = [
        "gap",
        " the",
        " \"step\"",
        "\n",
        " caf\u{e9}",
        " \u{1F600}",
        "",
        " tail",
    ];
    let mut read_by_shape = 0;
    for (i, w) in words.iter().enumerate() {
        let data = event(w, "null");
        read_by_shape += usize::from(i > 0 && shape.read(data.as_bytes(), None).is_some());
        let (fast, full) = both_with(data.as_bytes(), &mut shape);
        assert_eq!(fast, full, "{data}");
    }
    assert_eq!(read_by_shape, words.len() - 1);
    // The last event has its finish reason: a shape of its own.
    let last = event(" end", r#""length""#);
    assert!(shape.read(last.as_bytes(), None).is_none());
    let (fast, full) = both_with(last.as_bytes(), &mut shape);
    assert_eq!(fast, full);
    assert!(matches!(
        fast.0,
        super::Parsed::Chunk(super::Chunk { finished: true, .. })
    ));
}

#[test]
fn the_fast_path_takes_the_common_events() {
    // The usual events of a vLLM stream go the fast way, and give what
    // the full parse gives.
    for data in [
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":" caf\u00e9\n"},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"chatcmpl-1","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
        r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46,"prompt_tokens_details":{"cached_tokens":8}}}"#,
    ] {
        assert!(openai::fast_path_takes(data.as_bytes()), "{data}");
        let (fast, full) = both(data.as_bytes());
        assert_eq!(fast, full, "{data}");
    }
}

/// An OpenAI body as a JSON value builds it: the oracle for the bodies
/// written from borrowed fields.
fn value_body(
    chat: bool,
    model: &str,
    history: &[Message],
    prompt: &str,
    spec: &super::Spec,
    extra: &Map<String, Value>,
) -> Vec<u8> {
    let mut body = if chat {
        let mut messages: Vec<Value> = history
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        messages.push(json!({"role": "user", "content": prompt}));
        json!({"model": model, "messages": messages, "stream": spec.stream})
    } else {
        let mut all: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
        all.push(prompt);
        json!({"model": model, "prompt": all.join("\n\n"), "stream": spec.stream})
    };
    if spec.stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(n) = spec.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = spec.temperature {
        body["temperature"] = json!(t);
    }
    for (k, v) in extra {
        body[k] = v.clone();
    }
    serde_json::to_vec(&body).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Chat and completions bodies are, byte for byte, what a JSON value of
    /// the same fields writes, with or without a history, and with the
    /// profile's own fields set over them.
    #[test]
    fn openai_bodies_are_the_bytes_a_json_value_writes(
        chat in any::<bool>(),
        model in text(),
        prompt in text(),
        history in prop::collection::vec((prop::sample::select(vec!["system", "user", "assistant"]), text()), 0..4),
        max_tokens in prop::option::of(any::<u32>()),
        temperature in prop::option::of(prop_oneof![Just(0.0), Just(0.7), Just(1.0), any::<f64>()]),
        stream in any::<bool>(),
        extra in prop::collection::vec((prop::sample::select(vec!["max_tokens", "ignore_eos", "a", "zz", "stream"]), prop_oneof![Just(Value::Null), any::<i64>().prop_map(Value::from), text().prop_map(Value::from)]), 0..3),
    ) {
        let history: Vec<Message> = history.into_iter().map(|(role, content)| Message { role, content }).collect();
        let spec = super::Spec { max_tokens, temperature, stream };
        let mut config = super::ApiConfig::plain(if chat { super::Dialect::OpenAiChat } else { super::Dialect::OpenAiCompletions });
        config.body = extra.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let api = config.resolve(|_| None).unwrap();
        let written = api.body_with(&model, &history, &prompt, &spec);
        let expected = value_body(chat, &model, &history, &prompt, &spec, &config.body);
        prop_assert_eq!(String::from_utf8_lossy(&written), String::from_utf8_lossy(&expected));
    }
}
