//! The gRPC service. It only translates: each agent stream becomes events
//! for the coordinator task, which owns all state.

use std::sync::atomic::{AtomicU64, Ordering};

use stampede_proto::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Messages to one agent. Sending an `Err` ends its stream with that status.
pub(crate) type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

/// What the service tells the coordinator.
#[derive(Debug)]
pub(crate) enum Event {
    /// A new agent stream; messages to it go through `out`.
    Connected { conn: u64, out: Outbound },
    /// A message on stream `conn`.
    Message {
        conn: u64,
        message: pb::AgentMessage,
    },
    /// Stream `conn` ended, with the transport's reason if it broke.
    Closed { conn: u64, reason: Option<String> },
}

/// The `Coordinator` gRPC service.
pub(crate) struct Service {
    events: mpsc::Sender<Event>,
    next: AtomicU64,
}

impl Service {
    pub(crate) fn new(events: mpsc::Sender<Event>) -> Service {
        Service {
            events,
            next: AtomicU64::new(1),
        }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for Service {
    type SessionStream = ReceiverStream<Result<pb::ControllerMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let (out, rx) = mpsc::channel(256);
        let events = self.events.clone();
        events
            .send(Event::Connected { conn, out })
            .await
            .map_err(|_| Status::unavailable("the run is over"))?;
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let reason = loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if events.send(Event::Message { conn, message }).await.is_err() {
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
