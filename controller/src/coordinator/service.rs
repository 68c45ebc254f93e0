//! The gRPC service. It only translates: each agent stream becomes events
//! for the coordinator task, which owns all state. Two things are settled
//! here, before the coordinator sees a stream: the token, and clock probes,
//! which are answered at once so that the coordinator's queue does not
//! lengthen their round trip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use stampede_proto::pb::{self, agent_message, controller_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::port::Port;
use crate::port::refusals::Why;

/// Messages to one agent. Sending an `Err` ends its stream with that status.
pub(crate) type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// What the service tells the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    /// A new agent stream; messages to it go through `out`.
    Connected {
        conn: u64,
        out: Outbound,
        peer: Option<SocketAddr>,
    },
    /// A message on stream `conn` (boxed: a report is large, the other
    /// events small).
    Message { conn: u64, message: Box<pb::AgentMessage> },
    /// Stream `conn` ended, with the transport's reason if it broke.
    Closed { conn: u64, reason: Option<String> },
}

/// The `Coordinator` gRPC service.
pub(crate) struct Service {
    events: mpsc::Sender<Event>,
    token: Option<String>,
    /// Told which connections presented a valid token, and of refusals.
    port: Arc<Port>,
    next: AtomicU64,
}

impl Service {
    /// A service that forwards to `events`, and admits only streams that
    /// present `token`, when there is one; `port` learns which
    /// connections did.
    pub(crate) fn new(events: mpsc::Sender<Event>, token: Option<String>, port: Arc<Port>) -> Service {
        Service {
            events,
            token,
            port,
            next: AtomicU64::new(1),
        }
    }

    fn check_token<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = request.remote_addr();
        let Some(expected) = &self.token else {
            self.port.trusted(peer);
            return Ok(());
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            None => {
                self.port.refused(Why::NoToken, peer);
                Err(Status::unauthenticated(
                    "this controller requires a token (agent --token-file)",
                ))
            }
            Some(token) if same(token.as_bytes(), expected.as_bytes()) => {
                self.port.trusted(peer);
                Ok(())
            }
            Some(_) => {
                self.port.refused(Why::WrongToken, peer);
                Err(Status::unauthenticated("wrong token"))
            }
        }
    }
}

/// Compares two secrets in time that depends only on their lengths.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Service {
    type SessionStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        self.check_token(&request)?;
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let peer = request.remote_addr();
        let (out, rx) = mpsc::channel(256);
        // Weak: the coordinator's sender alone decides when the stream ends.
        let replies = out.downgrade();
        let events = self.events.clone();
        events
            .send(Event::Connected { conn, out, peer })
            .await
            .map_err(|_| Status::unavailable("the run is over"))?;
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(pb::AgentMessage {
                        kind: Some(agent_message::Kind::ClockProbe(probe)),
                    })) => {
                        let reply = pb::ClockReply {
                            id: probe.id,
                            controller_time_us: wall_us(),
                        };
                        let kind = controller_message::Kind::ClockReply(reply);
                        if let Some(out) = replies.upgrade() {
                            let _ = out.try_send(Ok(pb::ControllerMessage { kind: Some(kind) }));
                        }
                    }
                    Ok(Some(message)) => {
                        if events
                            .send(Event::Message {
                                conn,
                                message: Box::new(message),
                            })
                            .await
                            .is_err()
                        {
                            return; // The coordinator has finished.
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => break Some(status.message().to_owned()),
                }
            };
            let _ = events.send(Event::Closed { conn, reason }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(same(b"s3cret", b"s3cret"));
        assert!(!same(b"s3cret", b"s3creT"));
        assert!(!same(b"s3cret", b"s3cret!"));
        assert!(same(b"", b""));
    }
}
