//! Connections to the server under test.
//!
//! Each virtual user owns one HTTP/1.1 keep-alive connection, as a real
//! client does. That makes `t0` exact (the request is written as soon as it
//! is handed over, never after waiting for a pooled connection), makes
//! connection setup a measurement of its own, and shares no lock between
//! users.
//!
//! Each connection's socket is read through [`Stamped`], which notes when
//! bytes last arrived ([`Arrivals`]): token times are taken where the
//! bytes leave the socket, not one task hop later when the request's task
//! gets round to the frame that hyper decoded from them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// A request body.
pub type Body = Full<Bytes>;

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
        let tcp = Stamped {
            io: tcp,
            arrivals: arrivals.clone(),
        };
        match &self.tls {
            None => handshake(tcp, &self.authority, arrivals).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("TLS server name {:?}: {e}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.authority))?;
                handshake(stream, &self.authority, arrivals).await
            }
        }
    }
}

impl Endpoint {
    /// `GET path` over a new connection: the status and up to `limit`
    /// bytes of the body. For discovery and scraping, not for load.
    pub async fn get(&self, path: &str, limit: usize) -> Result<(u16, Bytes), String> {
        use http_body_util::BodyExt as _;
        let mut conn = self.connect().await?;
        let request = http::Request::get(self.path(path))
            .header(http::header::HOST, self.authority())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = conn
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET {path} from {}: {e}", self.authority))?;
        let status = response.status().as_u16();
        let body = http_body_util::Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading GET {path} from {}: {e}", self.authority))?
            .to_bytes();
        Ok((status, body))
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

async fn handshake<T>(io: T, authority: &str, arrivals: Arrivals) -> Result<Conn, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
    // The connection task ends when the connection closes; its error, if
    // any, surfaces on the next request sent over it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Conn { sender, arrivals })
}

/// One open HTTP/1.1 connection.
#[derive(Debug)]
pub struct Conn {
    /// Sends requests over the connection.
    pub sender: SendRequest<Body>,
    /// When bytes last arrived on it.
    pub arrivals: Arrivals,
}

impl Conn {
    /// False once the server has closed the connection.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
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

    /// Notes that bytes arrived now.
    fn mark(&self) {
        let nanos = u64::try_from(self.0.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
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

/// A socket whose reads stamp [`Arrivals`] whenever they return bytes.
#[derive(Debug)]
pub struct Stamped<T> {
    io: T,
    arrivals: Arrivals,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.arrivals.mark();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
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

    #[tokio::test(start_paused = true)]
    async fn reads_that_return_bytes_stamp_the_connection() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (client, mut server) = tokio::io::duplex(64);
        let arrivals = Arrivals::new();
        let mut stamped = Stamped {
            io: client,
            arrivals: arrivals.clone(),
        };
        assert_eq!(arrivals.last(), None);
        let opened = Instant::now();
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        server.write_all(b"data: 1\n\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = stamped.read(&mut buf).await.unwrap();
        assert_eq!(n, 9);
        assert_eq!(arrivals.last(), Some(opened + std::time::Duration::from_millis(30)));
        // A read that returns nothing (the end of the stream) leaves the
        // stamp of the last bytes.
        drop(server);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert_eq!(stamped.read(&mut buf).await.unwrap(), 0);
        assert_eq!(arrivals.last(), Some(opened + std::time::Duration::from_millis(30)));
        stamped.write_all(b"x").await.unwrap_err();
    }
}
