//! HTTP/1.1 on one connection, one request at a time, read by the task
//! that sent the request.
//!
//! A load connection carries one request after another and streams each
//! answer back; nothing else shares it. So it needs no connection task, no
//! channel between that task and the request's, no pool and no per-frame
//! allocation: the request's task writes the request, parses the head and
//! decodes the body (whole, chunked or up to the close) straight out of
//! the connection's one read buffer, lending each piece of the body to the
//! caller. That halves the task wake-ups per streamed event and keeps an
//! open stream's memory to its task and that buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use super::{Arrivals, Stamped};

/// Largest response head read.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response head.
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line or trailer line.
const MAX_LINE: usize = 4 * 1024;
/// Room made before each read, at first; a read that fills its room
/// doubles it, up to `MOST_ROOM`. A buffer left larger than `KEEP` by a
/// big answer is given back once the answer has been read.
const READ_ROOM: usize = 2 * 1024;
const MOST_ROOM: usize = 4 * 1024;
const KEEP: usize = 8 * 1024;

/// The connection's socket, plain or TLS.
#[derive(Debug)]
pub(super) enum Io {
    Plain(Stamped),
    Tls(Box<tokio_rustls::client::TlsStream<Stamped>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where a connection is between requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Ready for a request.
    Idle,
    /// A request was written and its answer not read to the end.
    Busy,
    /// Not to be used again: the server closed it or said it would, or an
    /// answer was left unread or ended out of step.
    Closed,
}

/// A request that got no response.
#[derive(Debug)]
pub struct SendError {
    /// Not a byte of response arrived: on a reused connection the server
    /// may have closed it before seeing the request, which can then be
    /// sent again on a new one.
    pub unanswered: bool,
    /// What happened.
    pub message: String,
}

/// A response's status line and the headers the load needs; its body is
/// read with [`Conn::chunk`].
#[derive(Debug)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The `Retry-After` header, when there was one.
    pub retry_after: Option<String>,
    /// How the body is delimited, and how far it has been read.
    pub body: Body,
    /// The server asked to close the connection after this answer.
    close: bool,
}

/// How far a response body has been read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked(Chunked),
    /// Delimited by the connection's close.
    Close,
    /// Read to its end.
    Done,
}

/// Where a chunked body's decoding stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// After a chunk's data, at its line end.
    DataEnd,
    /// After the last chunk, at the trailers.
    Trailers,
}

/// One open HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    /// When bytes last arrived on it.
    pub arrivals: Arrivals,
    io: Io,
    /// The read buffer, zeroed once as it grows so that reads need not
    /// zero their room each time: bytes read and not yet taken are
    /// `buf[pos..end]`.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Room to make before a read: more once a read found more waiting
    /// than its room, so that an answer that arrives at once is read at
    /// once.
    room: usize,
    state: State,
}

impl Conn {
    pub(super) fn new(io: Io, arrivals: Arrivals) -> Conn {
        Conn {
            arrivals,
            io,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            room: READ_ROOM,
            state: State::Idle,
        }
    }

    /// False once the connection cannot take another request: the server
    /// closed it (or said it would), or the last answer was not read to
    /// its end. Looks at the socket without waiting.
    pub fn is_open(&mut self) -> bool {
        if self.state != State::Idle {
            return false;
        }
        // An idle connection has nothing to say: a readable one is closed
        // (end of stream or an error) or out of step (unasked-for bytes).
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut probe) {
            Poll::Pending => true,
            Poll::Ready(_) => {
                self.state = State::Closed;
                false
            }
        }
    }

    /// Writes `request` (head and body, whole) and reads the response's
    /// head, skipping interim (1xx) responses.
    pub async fn send(&mut self, request: &[u8]) -> Result<Head, SendError> {
        if self.state != State::Idle {
            return Err(SendError {
                unanswered: true,
                message: "the connection is not ready for a request".to_owned(),
            });
        }
        self.state = State::Busy;
        let written = async {
            self.io.write_all(request).await?;
            self.io.flush().await
        };
        if let Err(e) = written.await {
            self.state = State::Closed;
            return Err(SendError {
                unanswered: true,
                message: format!("writing the request: {e}"),
            });
        }
        let mut answered = false;
        loop {
            let failed = |conn: &mut Conn, unanswered: bool, message: String| {
                conn.state = State::Closed;
                Err(SendError { unanswered, message })
            };
            match parse_head(&self.buf[self.pos..self.end]) {
                Ok(Parsed::Head(head, len)) => {
                    self.pos += len;
                    return Ok(head);
                }
                // Interim responses (100 Continue, 103 Early Hints) come
                // before the real one.
                Ok(Parsed::Interim(len)) => {
                    self.pos += len;
                    continue;
                }
                Ok(Parsed::Partial) => {
                    if self.end - self.pos >= MAX_HEAD {
                        let message = format!("the response head is larger than {} KiB", MAX_HEAD / 1024);
                        return failed(self, false, message);
                    }
                }
                Err(message) => return failed(self, false, message),
            }
            match self.fill().await {
                Ok(0) => {
                    let message = if answered {
                        "the connection closed in the middle of the response head"
                    } else {
                        "the connection closed before a response"
                    };
                    return failed(self, !answered, message.to_owned());
                }
                Ok(_) => answered = true,
                Err(e) => {
                    let message = format!("reading the response: {e}");
                    return failed(self, !answered, message);
                }
            }
        }
    }

    /// The next piece of the body that `head` began, lent from the read
    /// buffer; `None` at its end, after which the connection takes the next
    /// request unless the server closes it.
    pub async fn chunk(&mut self, head: &mut Head) -> io::Result<Option<&[u8]>> {
        let result = self.next_piece(head).await;
        match &result {
            Ok(Some((start, end))) => return Ok(Some(&self.buf[*start..*end])),
            Ok(None) => self.finish(head.close),
            Err(_) => self.state = State::Closed,
        }
        result.map(|_| None)
    }

    /// Reads the rest of the body into `out`, up to `limit` bytes. A
    /// longer body is cut there, unread, which leaves the connection out
    /// of step: it is closed, and the answer is `false`.
    pub async fn read_body(&mut self, head: &mut Head, out: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
        while let Some(piece) = self.chunk(head).await? {
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(&piece[..piece.len().min(room)]);
            if piece.len() > room {
                self.state = State::Closed;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The body is over: ready for the next request, unless the server
    /// asked to close or sent more than it was asked for.
    fn finish(&mut self, close: bool) {
        let leftover = self.pos < self.end;
        self.state = if close || leftover { State::Closed } else { State::Idle };
        if !leftover {
            self.pos = 0;
            self.end = 0;
            if self.buf.len() > KEEP {
                self.buf = Vec::new();
            }
        }
    }

    /// Where the next piece of the body lies in the buffer, reading as
    /// needed.
    async fn next_piece(&mut self, head: &mut Head) -> io::Result<Option<(usize, usize)>> {
        loop {
            let wait = match self.step(head)? {
                Step::Piece(start, end) => return Ok(Some((start, end))),
                Step::Done => return Ok(None),
                Step::More(wait) => wait,
            };
            if self.fill().await? == 0 {
                let closed = |what: String| Err(io::Error::new(io::ErrorKind::UnexpectedEof, what));
                return match wait {
                    Wait::Close => {
                        head.body = Body::Done;
                        head.close = true;
                        Ok(None)
                    }
                    Wait::Bytes(what) => closed(what.to_owned()),
                    Wait::Line(what) => closed(format!("the connection closed at {what}")),
                };
            }
        }
    }

    /// Goes through the body as far as the bytes at hand allow: to its
    /// next piece, to its end, or to what it waits for. No await: a chunk
    /// that has arrived whole, with its size and line ends, costs a few
    /// comparisons.
    fn step(&mut self, head: &mut Head) -> io::Result<Step> {
        loop {
            match head.body {
                Body::Done => return Ok(Step::Done),
                Body::Length(0) => head.body = Body::Done,
                Body::Length(left) => {
                    let Some((start, end)) = self.take(left) else {
                        return Ok(Step::More(Wait::Bytes(
                            "the connection closed before the body's length",
                        )));
                    };
                    head.body = Body::Length(left - (end - start) as u64);
                    return Ok(Step::Piece(start, end));
                }
                Body::Close => {
                    let Some((start, end)) = self.take(u64::MAX) else {
                        return Ok(Step::More(Wait::Close));
                    };
                    return Ok(Step::Piece(start, end));
                }
                Body::Chunked(Chunked::Data(left)) => {
                    let Some((start, end)) = self.take(left) else {
                        return Ok(Step::More(Wait::Bytes(
                            "the connection closed in the middle of a chunk",
                        )));
                    };
                    let left = left - (end - start) as u64;
                    head.body = Body::Chunked(if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    });
                    return Ok(Step::Piece(start, end));
                }
                Body::Chunked(Chunked::Size) => {
                    const WHAT: &str = "a chunk size";
                    let Some(line) = self.line(WHAT)? else {
                        return Ok(Step::More(Wait::Line(WHAT)));
                    };
                    let size = chunk_size(line)?;
                    head.body = Body::Chunked(if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    });
                }
                Body::Chunked(Chunked::DataEnd) => {
                    const WHAT: &str = "the end of a chunk";
                    let Some(line) = self.line(WHAT)? else {
                        return Ok(Step::More(Wait::Line(WHAT)));
                    };
                    if !line.is_empty() {
                        return Err(invalid("a chunk longer than its size"));
                    }
                    head.body = Body::Chunked(Chunked::Size);
                }
                Body::Chunked(Chunked::Trailers) => {
                    const WHAT: &str = "the trailers";
                    let Some(line) = self.line(WHAT)? else {
                        return Ok(Step::More(Wait::Line(WHAT)));
                    };
                    if line.is_empty() {
                        head.body = Body::Done;
                    }
                }
            }
        }
    }

    /// Up to `left` of the bytes at hand; `None` when there are none.
    fn take(&mut self, left: u64) -> Option<(usize, usize)> {
        if self.pos == self.end {
            return None;
        }
        let start = self.pos;
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(self.end - start);
        self.pos += n;
        Some((start, self.pos))
    }

    /// The next line at hand, without its line end; `None` until all of it
    /// has arrived.
    fn line(&mut self, what: &str) -> io::Result<Option<&[u8]>> {
        let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos..self.end]) else {
            if self.end - self.pos > MAX_LINE {
                return Err(invalid(&format!("{what} line longer than {} KiB", MAX_LINE / 1024)));
            }
            return Ok(None);
        };
        let start = self.pos;
        self.pos += i + 1;
        let line = &self.buf[start..start + i];
        Ok(Some(line.strip_suffix(b"\r").unwrap_or(line)))
    }

    /// One read into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.pos > 0 && self.buf.len() - self.end < READ_ROOM {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        // Zeroed once as it grows: all of it is room for every read.
        let want = self.room.max(self.end + READ_ROOM);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let room = self.buf.len() - self.end;
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == room {
            // More was waiting than the room took.
            self.room = (self.room * 2).min(MOST_ROOM);
        }
        self.end += n;
        Ok(n)
    }
}

/// Where a body stands after the bytes at hand.
enum Step {
    /// A piece of the body, at these bounds in the buffer.
    Piece(usize, usize),
    /// The body is over.
    Done,
    /// It needs more bytes.
    More(Wait),
}

/// What a body waits for, which says what it lacks if the connection
/// closes instead.
enum Wait {
    /// The rest of a line: a chunk size, a chunk's end or a trailer.
    Line(&'static str),
    /// More of a body of known length.
    Bytes(&'static str),
    /// More of a body that ends when the connection closes.
    Close,
}

/// What the bytes at hand hold of a response head.
enum Parsed {
    /// A whole head, of this many bytes.
    Head(Head, usize),
    /// A whole interim (1xx) head, of this many bytes.
    Interim(usize),
    /// Not yet a whole head.
    Partial,
}

/// Parses a response head from `bytes`. A plain function, so that the
/// parser's array of headers lives on the stack for the parse alone and
/// not in the state of every request's future.
fn parse_head(bytes: &[u8]) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => Ok(match read_head(&parsed)? {
            Some(head) => Parsed::Head(head, len),
            None => Parsed::Interim(len),
        }),
        Ok(httparse::Status::Partial) => Ok(Parsed::Partial),
        Err(e) => Err(format!("invalid response head: {e}")),
    }
}

/// The parts of a parsed head the load uses; `None` for an interim (1xx)
/// response.
fn read_head(parsed: &httparse::Response<'_, '_>) -> Result<Option<Head>, String> {
    let status = parsed.code.ok_or("no status code")?;
    if (100..200).contains(&status) && status != 101 {
        return Ok(None);
    }
    let mut length = None;
    let mut chunked = false;
    let mut close = parsed.version == Some(0);
    let mut retry_after = None;
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or_default().trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| format!("invalid Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length headers".to_owned());
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked is the last coding whenever it is there at all.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && parsed.version == Some(0) {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value.to_owned());
        }
    }
    let body = if status == 204 || status == 304 {
        Body::Done
    } else if chunked {
        Body::Chunked(Chunked::Size)
    } else {
        match length {
            Some(n) => Body::Length(n),
            None => Body::Close,
        }
    };
    Ok(Some(Head {
        status,
        retry_after,
        close: close || body == Body::Close,
        body,
    }))
}

/// A chunk-size line's size (hex digits, then any extensions).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    let size = (!digits.is_empty()).then_some(()).and_then(|()| {
        digits.iter().try_fold(0u64, |n, &d| {
            let d = char::from(d).to_digit(16)?;
            n.checked_mul(16)?.checked_add(u64::from(d))
        })
    });
    size.ok_or_else(|| invalid(&format!("invalid chunk size {:?}", String::from_utf8_lossy(line))))
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests;
