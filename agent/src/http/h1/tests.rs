//! The client against a server on a loopback socket that answers with
//! exactly the bytes each test gives it.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::http::Endpoint;

/// A server that reads each request head (and its body, by
/// `content-length`) and answers with the next of `answers`, then closes.
/// Returns its URL and a handle yielding the requests it saw.
async fn server(answers: Vec<Vec<u8>>) -> (String, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        for answer in answers {
            seen.push(read_request(&mut s).await);
            s.write_all(&answer).await.unwrap();
        }
        seen
    });
    (url, task)
}

async fn read_request(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "the request ended early");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    got.extend_from_slice(&body);
    got
}

async fn connect(url: &str) -> Conn {
    Endpoint::parse(url).unwrap().connect().await.unwrap()
}

fn request(url: &str, body: &str) -> Vec<u8> {
    let endpoint = Endpoint::parse(url).unwrap();
    let mut out = Vec::new();
    endpoint.head(
        "POST",
        "/v1/x",
        [("accept", b"text/event-stream".as_slice())],
        body.len(),
        &mut out,
    );
    out.extend_from_slice(body.as_bytes());
    out
}

/// The body, each piece as it was lent.
async fn pieces(conn: &mut Conn, head: &mut Head) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while let Some(p) = conn.chunk(head).await? {
        out.push(p.to_vec());
    }
    Ok(out)
}

#[tokio::test]
async fn answers_by_length_chunks_and_close_and_keeps_the_connection() {
    let (url, server) = server(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        // Interim response, chunk extensions, a trailer.
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          6;ext=1\r\ndata: \r\n3\r\nab\n\r\n0\r\nx-trailer: 1\r\n\r\n"
            .to_vec(),
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nslow".to_vec(),
        b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end".to_vec(),
    ])
    .await;
    let mut conn = connect(&url).await;

    let mut head = conn.send(&request(&url, "{\"a\":1}")).await.unwrap();
    assert_eq!((head.status, head.body), (200, Body::Length(5)));
    assert_eq!(pieces(&mut conn, &mut head).await.unwrap().concat(), b"hello");
    assert!(conn.is_open());

    let mut head = conn.send(&request(&url, "")).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(pieces(&mut conn, &mut head).await.unwrap().concat(), b"data: ab\n");
    assert!(conn.is_open());

    let mut head = conn.send(&request(&url, "")).await.unwrap();
    assert_eq!((head.status, head.retry_after.as_deref()), (429, Some("3")));
    let mut body = Vec::new();
    assert!(conn.read_body(&mut head, &mut body, 100).await.unwrap());
    assert_eq!(body, b"slow");
    assert!(conn.is_open());

    let mut head = conn.send(&request(&url, "")).await.unwrap();
    assert_eq!((head.status, head.body), (204, Body::Done));
    assert!(pieces(&mut conn, &mut head).await.unwrap().is_empty());
    assert!(conn.is_open());

    let mut head = conn.send(&request(&url, "")).await.unwrap();
    assert_eq!((head.status, head.body), (200, Body::Close));
    assert_eq!(pieces(&mut conn, &mut head).await.unwrap().concat(), b"to the end");
    assert!(!conn.is_open(), "the server said it would close");

    let seen = server.await.unwrap();
    assert_eq!(seen.len(), 5);
    let first = String::from_utf8(seen[0].clone()).unwrap();
    let host = url.trim_start_matches("http://");
    assert_eq!(
        first,
        format!(
            "POST /v1/x HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\ncontent-length: 7\r\n\r\n{{\"a\":1}}"
        )
    );
}

#[tokio::test]
async fn a_chunked_body_read_a_byte_at_a_time_decodes_the_same() {
    // The server writes the answer one byte per write, with pauses: every
    // state of the decoder meets the end of the buffer.
    let answer: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_request(&mut s).await;
        for b in answer {
            s.write_all(&[*b]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        s
    });
    let mut conn = connect(&url).await;
    let mut head = conn.send(&request(&url, "")).await.unwrap();
    assert_eq!(pieces(&mut conn, &mut head).await.unwrap().concat(), b"wikipedia");
    assert!(conn.is_open());
    drop(server.await.unwrap());
}

#[tokio::test]
async fn broken_answers_are_errors_and_close_the_connection() {
    for (answer, expect) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            "before the body's length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            "middle of a chunk",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "invalid chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
            "longer than its size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            "closed at a chunk size",
        ),
    ] {
        let (url, server) = server(vec![answer.to_vec()]).await;
        let mut conn = connect(&url).await;
        let mut head = conn.send(&request(&url, "")).await.unwrap();
        server.await.unwrap();
        let e = pieces(&mut conn, &mut head).await.unwrap_err().to_string();
        assert!(e.contains(expect), "{e:?} should say {expect:?}");
        assert!(!conn.is_open());
    }
}

#[tokio::test]
async fn no_response_says_whether_any_byte_arrived() {
    for (answer, unanswered, expect) in [
        (&b""[..], true, "closed before a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", false, "middle of the response head"),
        (b"SMTP ready\r\n\r\n", false, "invalid response head"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            false,
            "invalid Content-Length",
        ),
    ] {
        let (url, server) = server(vec![answer.to_vec()]).await;
        let mut conn = connect(&url).await;
        let e = conn.send(&request(&url, "")).await.unwrap_err();
        server.await.unwrap();
        assert_eq!(e.unanswered, unanswered, "{answer:?}");
        assert!(e.message.contains(expect), "{:?} should say {expect:?}", e.message);
        assert!(!conn.is_open());
    }
}

#[tokio::test]
async fn an_idle_connection_the_server_closed_is_not_open() {
    let (url, server) = server(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()]).await;
    let mut conn = connect(&url).await;
    let mut head = conn.send(&request(&url, "")).await.unwrap();
    assert!(pieces(&mut conn, &mut head).await.unwrap().is_empty());
    // The server closes once it has answered.
    server.await.unwrap();
    let closed = async {
        while conn.is_open() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), closed)
        .await
        .expect("the close is seen");
    // Sending anyway says no byte came back, so the request may be sent
    // again elsewhere.
    assert!(conn.send(&request(&url, "")).await.unwrap_err().unanswered);
}

#[tokio::test]
async fn a_body_cut_at_its_limit_closes_the_connection() {
    let (url, server) = server(vec![
        b"HTTP/1.1 500 Oops\r\nContent-Length: 10\r\n\r\n0123456789".to_vec(),
    ])
    .await;
    let mut conn = connect(&url).await;
    let mut head = conn.send(&request(&url, "")).await.unwrap();
    let mut body = Vec::new();
    assert!(!conn.read_body(&mut head, &mut body, 4).await.unwrap());
    assert_eq!(body, b"0123");
    assert!(!conn.is_open());
    server.await.unwrap();
}

#[tokio::test]
async fn a_response_head_past_the_limit_is_refused() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    while answer.len() <= MAX_HEAD {
        answer.extend_from_slice(format!("x-filler: {}\r\n", "0".repeat(1000)).as_bytes());
    }
    let (url, server) = server(vec![answer]).await;
    let mut conn = connect(&url).await;
    let e = conn.send(&request(&url, "")).await.unwrap_err();
    assert!(!e.unanswered);
    assert!(e.message.contains("larger than 64 KiB"), "{}", e.message);
    server.abort();
}

#[test]
fn chunk_sizes_are_hex_digits_before_any_extension() {
    for (line, size) in [
        (&b"0"[..], Some(0)),
        (b"1a", Some(26)),
        (b"FF", Some(255)),
        (b"10;name=value", Some(16)),
        (b" 8 ; ext", Some(8)),
        (b"ffffffffffffffff", Some(u64::MAX)),
        (b"10000000000000000", None),
        (b"", None),
        (b";ext", None),
        (b"zz", None),
        (b"+1", None),
        (b"-1", None),
        (b"1 2", None),
        (b"0x10", None),
        ("\u{e9}".as_bytes(), None),
    ] {
        assert_eq!(
            super::chunk_size(line).ok(),
            size,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[tokio::test]
async fn a_read_that_fills_its_room_makes_more_for_the_next() {
    // Each answer goes out in one write: a head and 3,000 bytes of body.
    // The first is read 2 KiB at a time, in two pieces; the full read
    // doubled the room, and the second answer is taken in one read, one
    // piece.
    let body = vec![b'x'; 3000];
    let answer = [
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
        &body,
    ]
    .concat();
    let (url, server) = server(vec![answer.clone(), answer]).await;
    let mut conn = connect(&url).await;
    let mut counts = Vec::new();
    for _ in 0..2 {
        let mut head = conn.send(&request(&url, "")).await.unwrap();
        let got = pieces(&mut conn, &mut head).await.unwrap();
        assert_eq!(got.concat(), body);
        counts.push(got.len());
    }
    assert_eq!(counts, [2, 1]);
    assert_eq!(conn.room, MOST_ROOM);
    assert!(conn.buf.len() <= KEEP, "{}", conn.buf.len());
    server.await.unwrap();
}
