//! Connections to the server under test.
//!
//! Each virtual user owns one HTTP/1.1 keep-alive connection, as a real
//! client does. That makes `t0` exact (the request is written as soon as it
//! is handed over, never after waiting for a pooled connection), makes
//! connection setup a measurement of its own, and shares no lock between
//! users.
//!
//! Each connection's socket is read through [`Stamped`], which notes when
//! bytes last arrived ([`Arrivals`]). On Linux that is the kernel's own
//! receive time (`SO_TIMESTAMPNS`, read with each `recvmsg`): when the
//! packet reached this host, however long the agent took to get round to
//! reading it, so a burst of thousands of events, all read one after
//! another by one busy core, is stamped as it arrived. Elsewhere, and
//! should the kernel not say, it is the time the read returned: where the
//! bytes left the socket.
//!
//! HTTP/1.1 itself is spoken by [`h1`], on the request's own task.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

mod h1;

pub use h1::{Body, Conn, Head, SendError};

/// A target URL that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("target URL {url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: String,
}

/// Where the server is and how to reach it.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    authority: String,
    base_path: String,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Endpoint {
    /// Parses a base URL such as `http://gpu-box:8000` or
    /// `https://api.example.com/v1`. A trailing `/v1` is accepted and
    /// dropped, since dialect paths start with it.
    pub fn parse(url: &str) -> Result<Endpoint, UrlError> {
        let bad = |reason: &str| UrlError {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => {
                return Err(bad("no scheme; expected an absolute URL such as http://host:8000"));
            }
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        if uri.query().is_some() {
            return Err(bad("a base URL takes no query string"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| bad("no host"))?;
        let path = uri.path().trim_end_matches('/');
        let base_path = path.strip_suffix("/v1").unwrap_or(path).to_owned();
        // IPv6 literals come bracketed in URLs and bare in socket addresses.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = tls.then(tls_connector);
        Ok(Endpoint {
            host,
            port,
            authority,
            base_path,
            tls,
        })
    }

    /// The server's host name or address, as in the URL.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` as written in the URL, for the `Host` header and logs.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request path of a dialect endpoint below this base URL.
    pub fn path(&self, endpoint: &str) -> String {
        format!("{}{endpoint}", self.base_path)
    }

    /// Opens a connection, with TLS when the URL says `https`.
    pub async fn connect(&self) -> Result<Conn, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| {
            match crate::open_files::exhausted(&e) {
                // Out of descriptors: this client's doing, not the server's.
                Some(why) => format!("connect to {}: {e}; {why}", self.authority),
                None => format!("connect to {}: {e}", self.authority),
            }
        })?;
        // Tokens are small writes; Nagle's algorithm would delay them.
        let _ = tcp.set_nodelay(true);
        let arrivals = Arrivals::new();
        // Stamped below TLS: the time the bytes came off the socket, not
        // when a record was decrypted.
        let tcp = Stamped::new(tcp, arrivals.clone());
        match &self.tls {
            None => Ok(Conn::new(h1::Io::Plain(tcp), arrivals)),
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("TLS server name {:?}: {e}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.authority))?;
                Ok(Conn::new(h1::Io::Tls(Box::new(stream)), arrivals))
            }
        }
    }

    /// A request's head, up to and including the blank line, for `method
    /// path` below this base URL (`path` taken as it is) with `headers` and
    /// a body of `length` bytes.
    pub fn head<'h>(
        &self,
        method: &str,
        path: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        length: usize,
        out: &mut Vec<u8>,
    ) {
        use std::io::Write as _;
        let _ = write!(out, "{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.authority);
        for (name, value) in headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        if method != "GET" || length > 0 {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// One request over a new connection: the status and up to `limit`
    /// bytes of the body. For discovery, scraping and exports, not for
    /// load.
    pub async fn exchange<'h>(
        &self,
        method: &str,
        path: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        body: &[u8],
        limit: usize,
    ) -> Result<(u16, Vec<u8>), String> {
        let mut conn = self.connect().await?;
        let mut request = Vec::with_capacity(256 + body.len());
        self.head(method, path, headers, body.len(), &mut request);
        request.extend_from_slice(body);
        let mut head = conn
            .send(&request)
            .await
            .map_err(|e| format!("{method} {path} to {}: {}", self.authority, e.message))?;
        let mut out = Vec::new();
        let whole = conn
            .read_body(&mut head, &mut out, limit)
            .await
            .map_err(|e| format!("reading {method} {path} from {}: {e}", self.authority))?;
        if !whole {
            return Err(format!(
                "reading {method} {path} from {}: the body is larger than {limit} bytes",
                self.authority
            ));
        }
        Ok((head.status, out))
    }
}

impl Endpoint {
    /// `GET path` over a new connection: the status and up to `limit`
    /// bytes of the body. For discovery and scraping, not for load.
    pub async fn get(&self, path: &str, limit: usize) -> Result<(u16, Vec<u8>), String> {
        self.exchange("GET", &self.path(path), [], &[], limit).await
    }
}

fn tls_connector() -> TlsConnector {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// When bytes last arrived on one connection: written by the connection's
/// reads, read by the request's task. One atomic store per read, no lock
/// and no allocation.
#[derive(Clone, Debug)]
pub struct Arrivals(Arc<Stamp>);

#[derive(Debug)]
struct Stamp {
    /// The connection's opening: stamps count from it.
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last read that returned bytes, plus
    /// one (0: nothing read yet).
    last: AtomicU64,
}

impl Arrivals {
    /// A connection that has read nothing yet.
    pub fn new() -> Arrivals {
        Arrivals(Arc::new(Stamp {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }))
    }

    /// Notes that bytes arrived at `at` (never before the connection
    /// opened).
    fn mark(&self, at: Instant) {
        let since = at.saturating_duration_since(self.0.epoch);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1);
        self.0.last.store(nanos + 1, Ordering::Release);
    }

    /// When the last read that returned bytes returned; `None` before the
    /// first.
    pub fn last(&self) -> Option<Instant> {
        match self.0.last.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.0.epoch + std::time::Duration::from_nanos(n - 1)),
        }
    }
}

impl Default for Arrivals {
    fn default() -> Self {
        Arrivals::new()
    }
}

/// A TCP socket whose reads stamp [`Arrivals`] whenever they return bytes.
#[derive(Debug)]
pub struct Stamped {
    io: TcpStream,
    arrivals: Arrivals,
    /// How the kernel's receive times are read, where it gives them.
    #[cfg(target_os = "linux")]
    kernel: kernel::Receiver,
}

impl Stamped {
    /// Reads from `io`, stamping `arrivals`.
    pub fn new(io: TcpStream, arrivals: Arrivals) -> Stamped {
        Stamped {
            #[cfg(target_os = "linux")]
            kernel: kernel::Receiver::new(&io),
            io,
            arrivals,
        }
    }
}

impl AsyncRead for Stamped {
    #[cfg(target_os = "linux")]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            std::task::ready!(this.io.poll_read_ready(cx))?;
            let dst = this.kernel.room(buf);
            let room = dst.len();
            let (io, kernel) = (&this.io, &mut this.kernel);
            let mut short = None;
            let tried = io.try_io(tokio::io::Interest::READABLE, || {
                let (n, at) = kernel.receive(io, dst)?;
                // A read that did not fill its room took all there was:
                // the next one would only find nothing. Saying "would
                // block" here has tokio clear the readiness this read was
                // made on (as its own reads do), so the next read waits for
                // the socket to have more instead of trying in vain; bytes
                // that came after the readiness was seen keep it set.
                if n > 0 && n < room {
                    short = Some((n, at));
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok((n, at))
            });
            match tried.or_else(|e| short.ok_or(e)) {
                Ok((n, at)) => {
                    buf.advance(n);
                    if n > 0 {
                        this.arrivals.mark(at);
                    }
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.arrivals.mark(Instant::now());
        }
        polled
    }
}

/// Reads with the kernel's receive time of the bytes (`SO_TIMESTAMPNS`).
#[cfg(target_os = "linux")]
mod kernel {
    use std::io::{self, IoSliceMut};
    use std::os::fd::AsRawFd as _;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, sockopt};
    use nix::sys::time::TimeSpec;
    use tokio::io::ReadBuf;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    /// Smallest and largest read into room not yet initialised (TLS's
    /// buffer): such room is zeroed before the read, so it follows what
    /// the reads return instead of always being the whole of the buffer
    /// (events are a few hundred bytes; whole answers grow it). Room
    /// already initialised, as the plain connection's buffer is, is
    /// offered whole.
    const MIN_READ: usize = 2 * 1024;
    const MAX_READ: usize = 64 * 1024;

    #[derive(Debug)]
    pub(super) struct Receiver {
        /// Room for one `SCM_TIMESTAMPNS` control message; empty when the
        /// kernel refused to give receive times.
        control: Vec<u8>,
        /// How much to read next.
        want: usize,
    }

    impl Receiver {
        pub(super) fn new(tcp: &TcpStream) -> Receiver {
            let on = socket::setsockopt(tcp, sockopt::ReceiveTimestampns, &true).is_ok();
            Receiver {
                control: if on { nix::cmsg_space!(TimeSpec) } else { Vec::new() },
                want: MIN_READ,
            }
        }

        /// The part of `buf` the next read fills: all the room that is
        /// initialised already, or as much as the reads so far call for.
        /// One read of an answer that has arrived whole is one system call
        /// fewer than two.
        pub(super) fn room<'b>(&self, buf: &'b mut ReadBuf<'_>) -> &'b mut [u8] {
            let initialised = buf.initialized().len() - buf.filled().len();
            let n = buf.remaining().min(self.want.max(initialised));
            buf.initialize_unfilled_to(n)
        }

        /// One `recvmsg` into `dst`: how many bytes, and when they arrived
        /// (the kernel's receive time of the last packet read, on this
        /// process's monotonic clock; now when the kernel did not say).
        pub(super) fn receive(&mut self, tcp: &TcpStream, dst: &mut [u8]) -> io::Result<(usize, Instant)> {
            let room = dst.len();
            let mut iov = [IoSliceMut::new(dst)];
            let control = (!self.control.is_empty()).then_some(&mut self.control[..]);
            let msg = socket::recvmsg::<()>(tcp.as_raw_fd(), &mut iov, control, MsgFlags::empty())?;
            let mut received = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmTimestampns(ts) = c {
                        received = Some(ts);
                    }
                }
            }
            let n = msg.bytes;
            self.want = if n == room {
                (room * 2).min(MAX_READ)
            } else {
                (n * 2).clamp(MIN_READ, MAX_READ)
            };
            // The wall clock first: a pause between the two readings can
            // only move the stamp later, never before the bytes arrived.
            let wall_now = SystemTime::now();
            let now = Instant::now();
            let at = match received.and_then(wall) {
                // How long ago, on the wall clock, taken back from now on
                // the monotonic one; never later than now.
                Some(wall) => now
                    .checked_sub(wall_now.duration_since(wall).unwrap_or_default())
                    .unwrap_or(now),
                None => now,
            };
            Ok((n, at))
        }
    }

    /// A kernel time stamp as a wall-clock time; `None` for an unset one.
    fn wall(ts: TimeSpec) -> Option<SystemTime> {
        let secs = u64::try_from(ts.tv_sec()).ok()?;
        let nanos = u32::try_from(ts.tv_nsec()).ok()?;
        (secs > 0).then(|| UNIX_EPOCH + Duration::new(secs, nanos))
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let e = Endpoint::parse("http://gpu-box:8000").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.authority()),
            ("gpu-box", 8000, "gpu-box:8000")
        );
        assert_eq!(e.path("/v1/chat/completions"), "/v1/chat/completions");
        let e = Endpoint::parse("https://api.example.com/v1/").unwrap();
        assert_eq!((e.port, e.tls.is_some()), (443, true));
        assert_eq!(e.path("/v1/chat/completions"), "/v1/chat/completions");
        let e = Endpoint::parse("http://proxy/llm").unwrap();
        assert_eq!(e.path("/v1/chat/completions"), "/llm/v1/chat/completions");
        let e = Endpoint::parse("http://[::1]:9000").unwrap();
        assert_eq!((e.host.as_str(), e.authority()), ("::1", "[::1]:9000"));
    }

    #[test]
    fn unusable_urls_say_why() {
        for (url, why) in [
            ("gpu-box:8000", "scheme"),
            ("ftp://x", "http or https"),
            ("http://x:8000/?a=1", "query"),
            ("not a url", "target URL"),
        ] {
            let e = Endpoint::parse(url).unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn reads_stamp_the_connection_with_when_the_bytes_arrived() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let arrivals = Arrivals::new();
        let mut stamped = Stamped::new(client, arrivals.clone());
        assert_eq!(arrivals.last(), None);
        let slack = std::time::Duration::from_millis(1);
        if cfg!(target_os = "linux") {
            // Linux turns receive times on for the whole system a moment
            // after the first socket asks for them (deferred work); bytes
            // that arrive before then have none, and their read is stamped
            // when it returns. Wait for a read the kernel stamped.
            let mut one = [0u8; 1];
            for tries in 1.. {
                server.write_all(b"x").await.unwrap();
                let written = Instant::now();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                assert_eq!(stamped.read(&mut one).await.unwrap(), 1);
                if arrivals.last().expect("a read that returned bytes stamps") <= written + slack {
                    break;
                }
                assert!(tries < 200, "no receive time from the kernel in {tries} reads");
            }
        }
        let before = Instant::now();
        server.write_all(b"data: 1\n\n").await.unwrap();
        let written = Instant::now();
        // Read long after the bytes arrived.
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let mut buf = [0u8; 64];
        let n = stamped.read(&mut buf).await.unwrap();
        let read = Instant::now();
        assert_eq!(&buf[..n], b"data: 1\n\n");
        let at = arrivals.last().expect("a read that returned bytes stamps");
        assert!(at + slack >= before && at <= read, "stamp within the exchange");
        if cfg!(target_os = "linux") {
            // The kernel's receive time: when the bytes were written, not
            // when they were read.
            assert!(
                at <= written + slack,
                "stamped {:?} after the write, {:?} before the read",
                at - written,
                read - at
            );
        }
        // A read that returns nothing (the end of the stream) leaves the
        // stamp of the last bytes.
        drop(server);
        assert_eq!(stamped.read(&mut buf).await.unwrap(), 0);
        assert_eq!(arrivals.last(), Some(at));
    }
}
