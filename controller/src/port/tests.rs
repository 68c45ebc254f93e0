//! The port on real loopback sockets: each accepted connection is served by
//! an echo task that ends when its connection errs, as hyper's does.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt as _;

use super::*;

fn limits(deadline: Duration, waiting: usize) -> Limits {
    Limits {
        deadline,
        waiting,
        log_every: Duration::from_secs(5),
    }
}

/// Serves an echo on a fresh listener under `port`; returns its address.
async fn echo(port: Arc<Port>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Incoming::new(listener, port);
    tokio::spawn(async move {
        while let Some(conn) = incoming.next().await {
            let mut conn = conn.expect("the port yields no errors");
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Connects and waits until the port has taken the connection in.
async fn connect(port: &Port, addr: SocketAddr) -> TcpStream {
    let before = port.accepted();
    let client = TcpStream::connect(addr).await.unwrap();
    for _ in 0..400 {
        if port.accepted() > before {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the port did not take the connection in");
}

/// Whether the server closed `client` (EOF or reset) within `within`.
async fn closed(client: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 8];
    match tokio::time::timeout(within, client.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => panic!("nothing was sent, yet something came back"),
        Err(_) => false,
    }
}

async fn echoes(client: &mut TcpStream) -> bool {
    if client.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.read_exact(&mut buf)).await,
        Ok(Ok(4))
    ) && &buf == b"ping"
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_deadline_and_a_trusted_one_stays() {
    let deadline = Duration::from_millis(300);
    let port = Port::new(limits(deadline, 64));
    let addr = echo(port.clone()).await;
    let mut silent = connect(&port, addr).await;
    let mut agent = connect(&port, addr).await;
    port.trusted(Some(agent.local_addr().unwrap()));
    assert_eq!(port.waiting(), 1, "the trusted connection no longer waits");

    let start = Instant::now();
    assert!(
        !closed(&mut silent, Duration::from_millis(150)).await,
        "closed before the deadline"
    );
    assert!(
        closed(&mut silent, Duration::from_secs(3)).await,
        "still open past the deadline"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}, for a deadline of {deadline:?}"
    );
    assert_eq!(port.waiting(), 0);
    assert!(echoes(&mut agent).await, "the trusted connection was closed");
    tokio::time::sleep(deadline * 2).await;
    assert!(echoes(&mut agent).await, "the trusted connection was closed later");
}

#[tokio::test]
async fn past_the_cap_the_oldest_waiting_connections_are_closed() {
    let port = Port::new(limits(Duration::from_secs(60), 3));
    let addr = echo(port.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&port, addr).await);
    }
    assert_eq!(port.waiting(), 3);
    for (i, client) in clients.iter_mut().enumerate() {
        let was_closed = closed(client, Duration::from_millis(300)).await;
        assert_eq!(
            was_closed,
            i < 2,
            "connection {i} (the 2 oldest of 5 go, with room for 3)"
        );
    }
    // A newcomer that presents a token in time stays, whatever came before.
    let mut agent = connect(&port, addr).await;
    port.trusted(Some(agent.local_addr().unwrap()));
    assert!(
        closed(&mut clients[2], Duration::from_secs(1)).await,
        "the oldest made room"
    );
    assert!(echoes(&mut agent).await);
}

#[tokio::test]
async fn running_out_of_descriptors_closes_the_oldest_waiting_connection() {
    let port = Port::new(limits(Duration::from_secs(60), 64));
    let addr = echo(port.clone()).await;
    let mut old = connect(&port, addr).await;
    let mut young = connect(&port, addr).await;
    let emfile = io::Error::from_raw_os_error(EMFILE);
    assert!(port.accept_failed(&emfile), "a waiting connection makes room");
    assert!(closed(&mut old, Duration::from_secs(1)).await);
    assert!(!closed(&mut young, Duration::from_millis(200)).await);
    port.trusted(Some(young.local_addr().unwrap()));
    assert!(!port.accept_failed(&emfile), "nothing waits, nothing to close");
    assert!(!port.accept_failed(&io::Error::other("something else")));
    assert!(echoes(&mut young).await);
}

#[tokio::test]
async fn a_connection_that_ends_on_its_own_no_longer_waits() {
    let port = Port::new(limits(Duration::from_secs(60), 64));
    let addr = echo(port.clone()).await;
    let client = connect(&port, addr).await;
    drop(client);
    for _ in 0..200 {
        if port.waiting() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("a closed connection still waits");
}

#[tokio::test]
async fn closing_the_listener_closes_the_connections_still_waiting() {
    let port = Port::new(limits(Duration::from_secs(60), 64));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Incoming::new(listener, port.clone());
    let (waiting, trusted) = (
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    );
    let (mut a, mut b) = (
        incoming.next().await.unwrap().unwrap(),
        incoming.next().await.unwrap().unwrap(),
    );
    port.trusted(Some(trusted.local_addr().unwrap()));
    drop(incoming);
    assert_eq!(port.waiting(), 0);
    let mut buf = [0u8; 1];
    // Which accepted connection is which client's: by the peer address.
    if a.connect_info().remote_addr() != Some(waiting.local_addr().unwrap()) {
        std::mem::swap(&mut a, &mut b);
    }
    assert_eq!(
        a.read(&mut buf).await.unwrap_err().kind(),
        io::ErrorKind::ConnectionAborted
    );
    trusted.try_write(b"x").unwrap();
    assert_eq!(
        b.read(&mut buf).await.unwrap(),
        1,
        "a trusted connection outlives the listener"
    );
}
