//! The client's own cost per streamed event, without the network: SSE
//! framing and the OpenAI chat parser over events shaped as llm-sim and
//! vLLM send them, fed in reads of about 1 KiB. A microbenchmark for the
//! stream path's user-space work; `bench/stream-cost.sh` measures the
//! whole process against a real server.
//!
//! Two streams: one as servers send it, with one id for the whole answer
//! (most events are then read by their shape, see `api::Shape`), and one
//! whose every event has an id of its own, so that no event has the
//! shape of the one before and each is scanned whole.
//!
//!     cargo run --release -p stampede-agent --example parse_cost [EVENTS]

use stampede_agent::api::{Api, Dialect, Parsed, Shape};
use stampede_agent::stream::sse::Framer;

fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("EVENTS is a count"))
        .unwrap_or(2_000_000);
    for (name, id_per_event) in [("one id per answer", false), ("one id per event", true)] {
        let stream = stream(id_per_event);
        let (ns, chunks, seen) = cost(&stream, events);
        println!(
            "{name}: {seen} events ({chunks} chunks, {} bytes each on average): {ns:.0} ns per event",
            stream.len() / 257,
        );
    }
}

/// An answer of 256 events and `[DONE]`.
fn stream(id_per_event: bool) -> Vec<u8> {
    let words = [
        " the",
        " quick",
        " brown",
        " fox",
        " jumps",
        " over",
        " lazy",
        " dog\n",
        " \"quoted\"",
        " café",
    ];
    let mut stream = Vec::new();
    for (i, w) in words.iter().cycle().take(256).enumerate() {
        let text = serde_json::to_string(w).expect("a string");
        let finish = if i == 255 { "\"length\"" } else { "null" };
        let id = if id_per_event { i } else { 0 };
        stream.extend_from_slice(
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"content\":{text}}},\"finish_reason\":{finish},\"index\":0,\
                 \"logprobs\":null}}],\"created\":1765000000,\"id\":\"chatcmpl-sim-{id}\",\"model\":\"llm-sim\",\
                 \"object\":\"chat.completion.chunk\"}}\n\n"
            )
            .as_bytes(),
        );
    }
    stream.extend_from_slice(b"data: [DONE]\n\n");
    stream
}

/// Nanoseconds per event over at least `events` events of `stream`
/// repeated, with the chunks and events seen.
fn cost(stream: &[u8], events: usize) -> (f64, usize, usize) {
    let api = Api::plain(Dialect::OpenAiChat);
    let (mut seen, mut chunks) = (0usize, 0usize);
    let mut shape = Shape::default();
    let at = tokio::time::Instant::now();
    let began = at;
    while seen < events {
        let mut framer = Framer::new();
        for read in stream.chunks(1100) {
            framer
                .push(read, at, |event| {
                    seen += 1;
                    if let Parsed::Chunk(_) = api.event(event.data, None, &mut shape) {
                        chunks += 1;
                    }
                    Ok::<_, ()>(())
                })
                .expect("well-formed");
        }
    }
    let took = began.elapsed();
    (took.as_nanos() as f64 / seen as f64, chunks, seen)
}
