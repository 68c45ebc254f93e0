//! The agents' port: which connections may stay.
//!
//! The token is checked per gRPC request, but a connection that never sends
//! one still holds a file descriptor, and a few hundred such connections
//! once locked real agents out of a controller. So every accepted
//! connection starts *waiting*: it must present a valid token (the first
//! request that passes the service's check) within [`Limits::deadline`], or
//! it is closed; and when more than [`Limits::waiting`] connections wait at
//! once, the oldest is closed. Junk can then hold at most that many
//! descriptors, for at most that long, and a new connection always gets its
//! chance. `accept` failing for want of descriptors closes the oldest
//! waiting connection and pauses briefly instead of spinning.
//!
//! [`Incoming`] is the listener tonic serves; each [`Conn`] it yields wraps
//! a TCP stream (beneath TLS, when there is TLS, so a stalled handshake is
//! on the clock too) and ends with an error on its next read or write once
//! the port closes it. The service calls [`Port::trusted`] and
//! [`Port::refused`]. The table of waiting connections sits behind a mutex
//! because three paths touch it (accepting, the service's token check, a
//! connection's drop); each does so once per connection, never per request
//! or per message, and it never holds more than [`Limits::waiting`] entries.

pub(crate) mod refusals;

use std::collections::VecDeque;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use refusals::{Refusals, Why, Wording};

/// How long a connection may go without a valid token, how many may wait
/// at once, and how often refusals are logged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// A connection that has not presented a valid token this long after it
    /// was accepted is closed.
    pub(crate) deadline: Duration,
    /// At most this many connections wait for a token; past it, the oldest
    /// is closed.
    pub(crate) waiting: usize,
    /// At most one refusals line this often.
    pub(crate) log_every: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            deadline: Duration::from_secs(10),
            waiting: 64,
            log_every: Duration::from_secs(5),
        }
    }
}

/// How often the deadline is checked (and a held refusals line written).
const SWEEP: Duration = Duration::from_millis(250);
/// The pause after `accept` failed although a waiting connection could be
/// closed to make room: long enough for its task to drop it.
const RETRY_SOON: Duration = Duration::from_millis(5);
/// The longest pause after `accept` failed with nothing to close; it
/// doubles from [`RETRY_SOON`] up to this.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The port's shared state.
#[derive(Debug)]
pub(crate) struct Port {
    limits: Limits,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    next: u64,
    /// Connections without a valid token yet, oldest first.
    waiting: VecDeque<Waiting>,
    refusals: Refusals,
}

#[derive(Debug)]
struct Waiting {
    id: u64,
    peer: Option<SocketAddr>,
    since: Instant,
    gate: Arc<Gate>,
}

impl Port {
    /// A port with these limits.
    pub(crate) fn new(limits: Limits) -> Arc<Port> {
        let wording = Wording {
            deadline: limits.deadline,
            waiting: limits.waiting,
        };
        Arc::new(Port {
            limits,
            table: Mutex::new(Table {
                next: 0,
                waiting: VecDeque::new(),
                refusals: Refusals::new(limits.log_every, wording),
            }),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table holds no invariant a panic elsewhere could break.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection from `peer` presented a valid token: it stays.
    pub(crate) fn trusted(&self, peer: Option<SocketAddr>) {
        let Some(peer) = peer else { return };
        let mut table = self.table();
        if let Some(i) = table.waiting.iter().position(|w| w.peer == Some(peer))
            && let Some(w) = table.waiting.remove(i)
        {
            w.gate.trust();
        }
    }

    /// A request from `peer` was refused for `why`; it is counted for the
    /// refusals log (its connection stays on the deadline's clock).
    pub(crate) fn refused(&self, why: Why, peer: Option<SocketAddr>) {
        let line = self.table().refusals.add(why, peer, Instant::now());
        write(line);
    }

    /// Registers a newly accepted connection; closes the oldest waiting one
    /// if that makes too many.
    fn admit(self: &Arc<Self>, tcp: TcpStream) -> Conn {
        let info = tcp.connect_info();
        let gate = Arc::new(Gate::default());
        let now = Instant::now();
        let mut table = self.table();
        let id = table.next;
        table.next += 1;
        table.waiting.push_back(Waiting {
            id,
            peer: info.remote_addr(),
            since: now,
            gate: Arc::clone(&gate),
        });
        let mut lines = Vec::new();
        while table.waiting.len() > self.limits.waiting {
            let Some(oldest) = table.waiting.pop_front() else { break };
            oldest.gate.close();
            lines.push(table.refusals.add(Why::Crowded, oldest.peer, now));
        }
        drop(table);
        lines.into_iter().for_each(write);
        Conn {
            tcp,
            info,
            id,
            gate,
            port: Arc::clone(self),
        }
    }

    /// Closes every waiting connection past the deadline, and writes a
    /// held refusals line when one is due.
    fn sweep(&self, now: Instant) {
        let mut table = self.table();
        let mut lines = Vec::new();
        while table
            .waiting
            .front()
            .is_some_and(|w| now.duration_since(w.since) >= self.limits.deadline)
        {
            let Some(late) = table.waiting.pop_front() else { break };
            late.gate.close();
            lines.push(table.refusals.add(Why::Deadline, late.peer, now));
        }
        lines.push(table.refusals.due(now));
        drop(table);
        lines.into_iter().for_each(write);
    }

    /// The port is closing: writes the refusals still held, and closes
    /// the connections still waiting for a token (not counted as refused:
    /// the run is over), so that none holds up the server's shutdown.
    fn close(&self) {
        let mut table = self.table();
        for waiting in table.waiting.drain(..) {
            waiting.gate.close();
        }
        let line = table.refusals.flush(Instant::now());
        drop(table);
        write(line);
    }

    /// `accept` failed: counts it, and closes the oldest waiting connection
    /// when descriptors ran out. Returns whether one was closed.
    fn accept_failed(&self, error: &io::Error) -> bool {
        let out_of_files = matches!(error.raw_os_error(), Some(EMFILE | ENFILE));
        let now = Instant::now();
        let mut table = self.table();
        let mut closed = false;
        let mut lines = Vec::new();
        if out_of_files {
            if let Some(oldest) = table.waiting.pop_front() {
                oldest.gate.close();
                lines.push(table.refusals.add(Why::Crowded, oldest.peer, now));
                closed = true;
            }
            lines.push(table.refusals.add(Why::NoDescriptors, None, now));
        } else {
            tracing::debug!("accepting an agent's connection failed: {error}");
            lines.push(table.refusals.add(Why::Accept, None, now));
        }
        drop(table);
        lines.into_iter().for_each(write);
        closed
    }

    /// A connection ended: it no longer waits.
    fn forget(&self, id: u64) {
        let mut table = self.table();
        if let Some(i) = table.waiting.iter().position(|w| w.id == id) {
            table.waiting.remove(i);
        }
    }

    /// How many connections have been accepted.
    #[cfg(test)]
    fn accepted(&self) -> u64 {
        self.table().next
    }

    /// How many connections wait for a token now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.table().waiting.len()
    }
}

/// `EMFILE` and `ENFILE` (Linux, and the BSDs alike).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

fn write(line: Option<String>) {
    if let Some(line) = line {
        tracing::warn!("{line}");
    }
}

const WAITING: u8 = 0;
const TRUSTED: u8 = 1;
const CLOSED: u8 = 2;

/// One connection's standing, shared between the port and the connection.
#[derive(Debug, Default)]
struct Gate {
    state: AtomicU8,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Gate {
    fn trust(&self) {
        let _ = self
            .state
            .compare_exchange(WAITING, TRUSTED, Ordering::AcqRel, Ordering::Acquire);
    }

    fn close(&self) {
        if self
            .state
            .compare_exchange(WAITING, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.reader.wake();
            self.writer.wake();
        }
    }

    /// `Err` once closed; while waiting, registers `waker` so that closing
    /// wakes the task that is blocked on this connection.
    fn check(&self, waker: &AtomicWaker, cx: &Context<'_>) -> io::Result<()> {
        match self.state.load(Ordering::Acquire) {
            TRUSTED => Ok(()),
            CLOSED => Err(closed()),
            _ => {
                waker.register(cx.waker());
                // Closed between the load and the registration?
                if self.state.load(Ordering::Acquire) == CLOSED {
                    Err(closed())
                } else {
                    Ok(())
                }
            }
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed by the controller: no valid token in time",
    )
}

/// An accepted connection on the agents' port.
#[derive(Debug)]
pub(crate) struct Conn {
    tcp: TcpStream,
    info: TcpConnectInfo,
    id: u64,
    gate: Arc<Gate>,
    port: Arc<Port>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.gate.state.load(Ordering::Acquire) == WAITING {
            self.port.forget(self.id);
        }
    }
}

impl Connected for Conn {
    // The plain TCP information, so that `Request::remote_addr` works as it
    // does for a bare `TcpStream` (and beneath TLS).
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.gate.check(&self.gate.reader, cx)?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.gate.check(&self.gate.writer, cx)?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.gate.check(&self.gate.writer, cx)?;
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.gate.check(&self.gate.writer, cx)?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The agents' listener, as the stream of connections tonic serves. It
/// never yields an error: tonic 0.14 would only log it and poll again at
/// once, which on `EMFILE` spins, since the listener stays ready.
#[derive(Debug)]
pub(crate) struct Incoming {
    listener: TcpListener,
    port: Arc<Port>,
    sweep: Interval,
    pause: Option<Pin<Box<Sleep>>>,
    /// The next pause when `accept` fails with nothing to close.
    backoff: Duration,
}

impl Incoming {
    /// Serves `listener` under `port`'s limits.
    pub(crate) fn new(listener: TcpListener, port: Arc<Port>) -> Incoming {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Incoming {
            listener,
            port,
            sweep,
            pause: None,
            backoff: RETRY_SOON,
        }
    }
}

impl Drop for Incoming {
    // tonic drops the listener when the server is told to stop.
    fn drop(&mut self) {
        self.port.close();
    }
}

impl Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Conn>>> {
        let this = &mut *self;
        while this.sweep.poll_tick(cx).is_ready() {
            this.port.sweep(Instant::now());
        }
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(this.listener.poll_accept(cx)) {
                Ok((tcp, _)) => {
                    this.backoff = RETRY_SOON;
                    return Poll::Ready(Some(Ok(this.port.admit(tcp))));
                }
                // The peer gave up before we took it: nothing held.
                Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) => {}
                Err(e) => {
                    let wait = if this.port.accept_failed(&e) {
                        RETRY_SOON
                    } else {
                        let wait = this.backoff;
                        this.backoff = (wait * 2).min(RETRY_MAX);
                        wait
                    };
                    this.pause = Some(Box::pin(tokio::time::sleep(wait)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
