//! Malformed server output over real loopback sockets: each case is a
//! server that writes exact bytes (in the reads the case chooses) and the
//! executor's classified outcome. Nothing here may panic.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use stampede_agent::api::{Api, ApiConfig, Dialect, HttpJson, Spec, StreamFormat, TimeUnit};
use stampede_agent::exec::{Executor, Scratch, Timing};
use stampede_agent::http::Endpoint;
use stampede_agent::record::{Outcome, TokenSource};
use stampede_agent::tokenizer::Tokenizer;
use stampede_proto::ErrorClass;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// What the executor made of one answer.
#[derive(Debug, PartialEq)]
enum Seen {
    Ok { tokens: u64, source: TokenSource },
    Failed(ErrorClass, String),
}

/// Serves one connection: reads the request, then writes `head` and each
/// of `reads` as a separate write (with a pause, so that they arrive as
/// separate reads), then closes.
async fn serve_once(listener: TcpListener, head: &'static str, reads: Vec<Vec<u8>>) -> Vec<u8> {
    let (mut sock, _) = listener.accept().await.expect("accepts");
    sock.set_nodelay(true).expect("nodelay");
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    // Read the head and the Content-Length body.
    loop {
        let n = sock.read(&mut buf).await.expect("reads");
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("a length"));
            if request.len() >= end + 4 + length {
                break;
            }
        }
        assert!(n > 0, "the client closed before sending its request");
    }
    sock.write_all(head.as_bytes()).await.expect("writes");
    for r in reads {
        sock.write_all(&r).await.expect("writes");
        sock.flush().await.expect("flushes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = sock.shutdown().await;
    request
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
const NDJSON_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
const JSON_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";

/// Runs one request against a server that answers with `reads`.
async fn run(api: Api, stream: bool, head: &'static str, reads: Vec<Vec<u8>>) -> (Seen, Vec<u8>) {
    let (counted, request) = run_counted(api, stream, head, reads, None).await;
    let seen = match counted {
        Ok(c) => Seen::Ok {
            tokens: c.output,
            source: c.source,
        },
        Err(failed) => failed,
    };
    (seen, request)
}

/// Every token count of one successful answer.
#[derive(Debug, PartialEq)]
struct Counts {
    output: u64,
    source: TokenSource,
    server: Option<u64>,
    events: Option<u64>,
    tokenizer: Option<u64>,
    input: Option<u64>,
    input_source: Option<TokenSource>,
}

/// [`run`], with a client tokenizer, keeping every count.
async fn run_counted(
    api: Api,
    stream: bool,
    head: &'static str,
    reads: Vec<Vec<u8>>,
    tokenizer: Option<Tokenizer>,
) -> (Result<Counts, Seen>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let server = tokio::spawn(serve_once(listener, head, reads));
    let executor = Executor::new(
        Endpoint::parse(&url).expect("a URL"),
        api,
        "m".to_owned(),
        Spec {
            max_tokens: Some(8),
            temperature: None,
            stream,
        },
        Duration::from_secs(20),
    )
    .with_tokenizer(tokenizer.map(Arc::new));
    let mut scratch = Scratch::default();
    let seen = match executor
        .run(&mut None, "hello there".into(), Timing::now(), &mut scratch)
        .await
    {
        Outcome::Ok(s) => Ok(Counts {
            output: s.output_tokens,
            source: s.token_source,
            server: s.server_tokens,
            events: s.counted_events,
            tokenizer: s.tokenizer_tokens,
            input: s.input_tokens,
            input_source: s.input_source,
        }),
        Outcome::Failed { class, message, .. } => Err(Seen::Failed(class, message)),
        other => panic!("unexpected outcome {other:?}"),
    };
    let request = server.await.expect("the server task ends");
    (seen, request)
}

fn one(bytes: &[u8]) -> Vec<Vec<u8>> {
    vec![bytes.to_vec()]
}

fn chat() -> Api {
    Api::plain(Dialect::OpenAiChat)
}

const TOKEN_A: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}]}\n\n";
const TOKEN_B_END: &str =
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" b\"},\"finish_reason\":\"stop\"}]}\n\n";

fn failed(seen: &Seen, class: ErrorClass, needle: &str) {
    match seen {
        Seen::Failed(c, m) if *c == class && m.contains(needle) => {}
        other => panic!("expected {class} containing {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_json_in_an_sse_event_is_malformed() {
    let body = format!("{TOKEN_A}data: {{\"choices\":[{{\"delta\":\n\n");
    let (seen, _) = run(chat(), true, SSE_HEAD, one(body.as_bytes())).await;
    failed(&seen, ErrorClass::Malformed, "invalid JSON");
}

#[tokio::test]
async fn sse_cut_in_the_middle_of_an_event_is_a_stream_error() {
    let body = format!("{TOKEN_A}data: {{\"choices\":[{{\"delta\":{{\"cont");
    let (seen, _) = run(chat(), true, SSE_HEAD, one(body.as_bytes())).await;
    failed(&seen, ErrorClass::Stream, "middle of an event");
}

#[tokio::test]
async fn sse_that_stops_between_events_without_an_end_is_a_stream_error() {
    let (seen, _) = run(chat(), true, SSE_HEAD, one(TOKEN_A.as_bytes())).await;
    failed(&seen, ErrorClass::Stream, "no end marker");
}

#[tokio::test]
async fn missing_usage_falls_back_to_counted_events_and_no_done_is_fine_after_a_finish() {
    // The `transformers serve` quirk: no [DONE], the stream ends after the
    // finish_reason chunk. No usage either: two events are two tokens.
    let body = format!("{TOKEN_A}{TOKEN_B_END}");
    let (seen, request) = run(chat(), true, SSE_HEAD, one(body.as_bytes())).await;
    assert_eq!(
        seen,
        Seen::Ok {
            tokens: 2,
            source: TokenSource::Events
        }
    );
    let request = String::from_utf8(request).expect("the request is text");
    assert!(request.starts_with("POST /v1/chat/completions HTTP/1.1"), "{request}");
    assert!(request.contains("\"include_usage\":true"), "{request}");
}

#[tokio::test]
async fn non_utf8_bytes_in_an_event_are_malformed() {
    let mut body = b"data: {\"choices\":[{\"delta\":{\"content\":\"".to_vec();
    body.extend_from_slice(&[0xff, 0xfe, 0x80]);
    body.extend_from_slice(b"\"}}]}\n\n");
    let (seen, _) = run(chat(), true, SSE_HEAD, vec![body]).await;
    failed(&seen, ErrorClass::Malformed, "invalid JSON");
}

#[tokio::test]
async fn every_byte_in_its_own_read_gives_the_same_answer() {
    // A TGI stream with the server's count in the last event, written one
    // byte per write: every event is split at every offset.
    let body = concat!(
        "data:{\"index\":1,\"token\":{\"id\":1,\"text\":\"a\",\"logprob\":0.0,\"special\":false},\"generated_text\":null,\"details\":null}\n\n",
        "data:{\"index\":2,\"token\":{\"id\":2,\"text\":\" \u{e9}t\u{e9}\",\"logprob\":0.0,\"special\":false},\"generated_text\":null,\"details\":null}\n\n",
        "data:{\"index\":3,\"token\":{\"id\":3,\"text\":\"</s>\",\"logprob\":0.0,\"special\":true},\"generated_text\":\"a \u{e9}t\u{e9}\",\"details\":{\"finish_reason\":\"eos_token\",\"generated_tokens\":3,\"seed\":null}}\n\n",
    );
    let bytes: Vec<Vec<u8>> = body.bytes().map(|b| vec![b]).collect();
    let (seen, request) = run(Api::plain(Dialect::Tgi), true, SSE_HEAD, bytes).await;
    assert_eq!(
        seen,
        Seen::Ok {
            tokens: 3,
            source: TokenSource::Server
        }
    );
    assert!(String::from_utf8_lossy(&request).starts_with("POST /generate_stream "));
}

#[tokio::test]
async fn ndjson_without_a_final_done_is_a_stream_error() {
    let body = b"{\"response\":\"a\",\"done\":false}\n{\"response\":\" b\",\"done\":false}\n";
    let (seen, _) = run(Api::plain(Dialect::Ollama), true, NDJSON_HEAD, one(body)).await;
    failed(&seen, ErrorClass::Stream, "no end marker for ollama");
}

#[tokio::test]
async fn ndjson_final_line_without_newline_still_counts() {
    let body = b"{\"response\":\"a\",\"done\":false}\n{\"response\":\"\",\"done\":true,\"eval_count\":7,\"prompt_eval_count\":2,\"eval_duration\":5000000}";
    let (seen, request) = run(Api::plain(Dialect::Ollama), true, NDJSON_HEAD, one(body)).await;
    assert_eq!(
        seen,
        Seen::Ok {
            tokens: 7,
            source: TokenSource::Server
        }
    );
    assert!(String::from_utf8_lossy(&request).contains("\"num_predict\":8"));
}

#[tokio::test]
async fn an_ollama_error_line_mid_stream_is_a_stream_error() {
    let body =
        b"{\"response\":\"a\",\"done\":false}\n{\"error\":\"an error was encountered while running the model\"}\n";
    let (seen, _) = run(Api::plain(Dialect::OllamaChat), true, NDJSON_HEAD, one(body)).await;
    failed(&seen, ErrorClass::Stream, "while running the model");
}

#[tokio::test]
async fn whole_answers_invalid_json_and_missing_usage() {
    let (seen, _) = run(chat(), false, JSON_HEAD, one(b"{\"choices\": [")).await;
    failed(&seen, ErrorClass::Malformed, "invalid JSON");
    // No usage in a whole answer: the words of the text, and the summary
    // says so.
    let body =
        br#"{"choices":[{"message":{"role":"assistant","content":"three small words"},"finish_reason":"stop"}]}"#;
    let (seen, _) = run(chat(), false, JSON_HEAD, one(body)).await;
    assert_eq!(
        seen,
        Seen::Ok {
            tokens: 3,
            source: TokenSource::Words
        }
    );
}

#[tokio::test]
async fn error_statuses_are_classified_by_status() {
    let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
    let (seen, _) = run(chat(), true, head, one(br#"{"error":{"message":"overloaded"}}"#)).await;
    failed(&seen, ErrorClass::Status(503), "overloaded");
}

fn http_json(stream: StreamFormat) -> Api {
    let mut c = ApiConfig::plain(Dialect::HttpJson);
    c.path = Some("/generate".to_owned());
    c.http_json = Some(HttpJson {
        template: json!({"prompt": "{{prompt}}", "max_new_tokens": "{{max_tokens}}"}),
        text: "/generated_text".to_owned(),
        tokens: None,
        input_tokens: None,
        duration: Some("/inference_time_seconds".to_owned()),
        duration_unit: TimeUnit::Seconds,
        stream,
        done: None,
    });
    c.resolve(|_| None).expect("a valid configuration")
}

#[tokio::test]
async fn http_json_without_its_text_pointer_is_malformed() {
    let (seen, request) = run(http_json(StreamFormat::None), true, JSON_HEAD, one(br#"{"text":"hi"}"#)).await;
    failed(&seen, ErrorClass::Malformed, "no text at /generated_text");
    let request = String::from_utf8_lossy(&request).into_owned();
    assert!(
        request.contains(r#"{"max_new_tokens":8,"prompt":"hello there"}"#),
        "{request}"
    );
}

#[tokio::test]
async fn plain_text_streams_with_non_utf8_bytes_count_words_across_reads() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
    // "alpha be|ta \xff\xfe gamma": a word split across reads and bytes
    // that are not UTF-8; the text is not decoded, only counted.
    let reads = vec![b"alpha be".to_vec(), b"ta \xff\xfe".to_vec(), b" gamma".to_vec()];
    let (seen, _) = run(http_json(StreamFormat::Text), true, head, reads).await;
    assert_eq!(
        seen,
        Seen::Ok {
            tokens: 4,
            source: TokenSource::Words
        }
    );
}

/// A tokenizer whose tokens are single characters (printable ASCII, and
/// `[UNK]` for anything else): a text has as many tokens as non-space
/// characters.
fn characters() -> Tokenizer {
    let mut vocab: serde_json::Map<String, serde_json::Value> = ('!'..='~')
        .enumerate()
        .map(|(i, c)| (c.to_string(), i.into()))
        .collect();
    vocab.insert("[UNK]".to_owned(), vocab.len().into());
    let json = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "[UNK]", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    Tokenizer::from_json("characters", json.to_string().as_bytes()).expect("a valid tokenizer")
}

const USAGE_DONE: &str =
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n";

#[tokio::test]
async fn a_client_tokenizer_counts_beside_the_server_and_the_events() {
    // "a" and " b": two events, two tokens by the server's usage, and
    // two characters.
    let body = format!("{TOKEN_A}{TOKEN_B_END}{USAGE_DONE}");
    let (counts, _) = run_counted(chat(), true, SSE_HEAD, one(body.as_bytes()), Some(characters())).await;
    assert_eq!(
        counts.expect("a complete answer"),
        Counts {
            output: 2,
            source: TokenSource::Server,
            server: Some(2),
            events: Some(2),
            tokenizer: Some(2),
            input: Some(3),
            input_source: Some(TokenSource::Server),
        }
    );
    // Without usage the tokenizer's count wins over the events, and it
    // counts the prompt too ("hello there": 10 characters).
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"abc\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\" de\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let (counts, _) = run_counted(chat(), true, SSE_HEAD, one(body.as_bytes()), Some(characters())).await;
    assert_eq!(
        counts.expect("a complete answer"),
        Counts {
            output: 5,
            source: TokenSource::Tokenizer,
            server: None,
            events: Some(2),
            tokenizer: Some(5),
            input: Some(10),
            input_source: Some(TokenSource::Tokenizer),
        }
    );
}

#[tokio::test]
async fn a_character_split_between_plain_text_reads_is_counted_once() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n";
    // "alpha b\u{e9}ta": the two bytes of \u{e9} arrive in separate reads;
    // decoded apart they would be two replacement characters.
    let reads = vec![b"alpha b\xc3".to_vec(), b"\xa9ta".to_vec()];
    let (counts, _) = run_counted(http_json(StreamFormat::Text), true, head, reads, Some(characters())).await;
    let counts = counts.expect("a complete answer");
    assert_eq!((counts.output, counts.source), (9, TokenSource::Tokenizer));
    assert_eq!(counts.events, None, "plain-text chunks are not token events");
}
