//! The least a streaming client can do: the floor under any load
//! generator's CPU per request and per event on a given machine and server.
//!
//! Closed-loop users, one kept-alive connection each, send the same
//! streaming chat request (a one-sentence prompt, so never more to send
//! than a real client) and read every byte of the chunked answer until its
//! last chunk. Nothing is parsed, timed or recorded: the bytes are not
//! split into events, no token is counted and no clock is read per read. A
//! real client does all of that on top of these system calls, so its CPU per
//! request can only be higher; `bench/peers.sh --tools stampede,floor`
//! measures both against the same llm-sim.
//!
//!     cargo run --release -p stampede-agent --example floor -- URL USERS TOKENS SECONDS
//!
//! URL is the server's base (`http://127.0.0.1:8000`); it must answer
//! `POST /v1/chat/completions` with a chunked `200` stream, as llm-sim and
//! vLLM do. Prints the requests it completed.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The end of a chunked body: the last chunk, of size zero, and no trailers.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, users, tokens, seconds] = args.as_slice() else {
        eprintln!("usage: floor URL USERS TOKENS SECONDS");
        std::process::exit(2);
    };
    let count = |what: &str, v: &str| -> u64 {
        v.parse().unwrap_or_else(|_| {
            eprintln!("floor: {what} must be a whole number, not {v:?}");
            std::process::exit(2)
        })
    };
    let (users, tokens, seconds) = (
        count("USERS", users),
        count("TOKENS", tokens),
        count("SECONDS", seconds),
    );
    let Some(addr) = url.strip_prefix("http://").map(|a| a.trim_end_matches('/')) else {
        eprintln!("floor: URL must be http://HOST:PORT, not {url:?}");
        std::process::exit(2);
    };
    let body = format!(
        r#"{{"model":"llm-sim","messages":[{{"role":"user","content":"the model answers every prompt under load"}}],"max_tokens":{tokens},"stream":true}}"#
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let done = runtime.block_on(async {
        let end = Instant::now() + Duration::from_secs(seconds);
        let users: Vec<_> = (0..users)
            .map(|_| tokio::spawn(user(addr.to_string(), request.clone(), end)))
            .collect();
        let mut done = 0;
        for user in users {
            match user.await.expect("a user task ends") {
                Ok(n) => done += n,
                Err(e) => {
                    eprintln!("floor: {e}");
                    std::process::exit(1);
                }
            }
        }
        done
    });
    println!("{done} requests");
}

/// One user until `end`: how many answers it read whole.
async fn user(addr: String, request: Vec<u8>, end: Instant) -> std::io::Result<u64> {
    let mut tcp = TcpStream::connect(&addr).await?;
    tcp.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0;
    while Instant::now() < end {
        tcp.write_all(&request).await?;
        // The last bytes read, across reads: the answer ends when they are
        // the last chunk. Nothing of the next answer can come before the
        // next request.
        let mut tail = [0u8; LAST_CHUNK.len()];
        let mut first = true;
        loop {
            let n = tcp.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("the server closed the connection mid-answer"));
            }
            if first {
                first = false;
                if !buf[..n].starts_with(b"HTTP/1.1 200 ") {
                    let head = String::from_utf8_lossy(&buf[..n.min(200)]).into_owned();
                    return Err(std::io::Error::other(format!("not a 200 answer: {head:?}")));
                }
            }
            let keep = LAST_CHUNK.len().min(n);
            tail.copy_within(keep.., 0);
            tail[LAST_CHUNK.len() - keep..].copy_from_slice(&buf[n - keep..n]);
            if tail == LAST_CHUNK {
                break;
            }
        }
        done += 1;
    }
    Ok(done)
}
