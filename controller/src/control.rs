//! The control plane on a thread of its own: the agents' gRPC server, the
//! coordinator and the live metrics endpoint run on a single-threaded
//! runtime apart from the load. Decoding and merging reports every second
//! then never delays a request that an in-process agent (or the built-in
//! simulator) has due, and a busy load cannot delay heartbeats either.

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use stampede_proto::pb;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::coordinator::{self, Setup, service::Service};
use crate::port::{Incoming, Limits, Port};
use crate::report::live::{self, Live};
use crate::report::progress::Progress;
use crate::results::{Collected, Ledger};
use crate::run::{Interrupt, RunError};

/// How the agents reach the control plane.
pub(crate) struct Listener {
    /// Address to bind.
    pub(crate) bind: SocketAddr,
    /// Token agents must present.
    pub(crate) token: Option<String>,
    /// PEM certificate chain and key, for TLS.
    pub(crate) tls: Option<(Vec<u8>, Vec<u8>)>,
}

/// A running control plane.
pub(crate) struct ControlPlane {
    /// Where agents dial.
    pub(crate) addr: SocketAddr,
    collected: oneshot::Receiver<Collected>,
    thread: JoinHandle<()>,
}

/// What the control plane's thread needs.
pub(crate) struct Parts {
    pub(crate) listener: Listener,
    pub(crate) setup: Setup,
    /// Where the run's entries go (and are logged).
    pub(crate) ledger: Ledger,
    pub(crate) progress: Progress,
    pub(crate) interrupt: Interrupt,
    /// Serve these live metrics here, and keep serving them this long
    /// after the run.
    pub(crate) metrics: Option<(SocketAddr, Live, Duration)>,
}

impl ControlPlane {
    /// Starts the thread and waits until the agents' listener is bound.
    pub(crate) async fn start(parts: Parts) -> Result<ControlPlane, RunError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (collected_tx, collected) = oneshot::channel();
        // The coordinator's log lines carry the run's trace id too.
        let logs = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("stampede-control".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(RunError::Failed(format!("cannot start the control runtime: {e}"))));
                        return;
                    }
                };
                runtime.block_on(tracing::Instrument::instrument(
                    serve(parts, ready_tx, collected_tx),
                    logs,
                ));
            })
            .map_err(|e| RunError::Failed(format!("cannot start the control thread: {e}")))?;
        let addr = match ready_rx.await {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(RunError::Failed("the control thread ended early".to_owned())),
        };
        Ok(ControlPlane {
            addr,
            collected,
            thread,
        })
    }

    /// Waits for the coordinator's result.
    pub(crate) async fn collected(&mut self) -> Result<Collected, RunError> {
        (&mut self.collected)
            .await
            .map_err(|_| RunError::Failed("the coordinator failed".to_owned()))
    }

    /// Waits for the thread to end (after the metrics linger).
    pub(crate) async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

async fn serve(
    parts: Parts,
    ready: oneshot::Sender<Result<SocketAddr, RunError>>,
    collected: oneshot::Sender<Collected>,
) {
    let Parts {
        listener,
        setup,
        ledger,
        progress,
        interrupt,
        metrics,
    } = parts;
    let bound = async {
        let bind = listener.bind;
        let tcp = TcpListener::bind(bind)
            .await
            .map_err(|source| RunError::Listen { addr: bind, source })?;
        let addr = tcp
            .local_addr()
            .map_err(|source| RunError::Listen { addr: bind, source })?;
        let mut builder = tonic::transport::Server::builder();
        if let Some((cert, key)) = &listener.tls {
            let identity = tonic::transport::Identity::from_pem(cert, key);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| RunError::Tls(e.to_string()))?;
        }
        let live_stop = CancellationToken::new();
        if let Some((at, live, _)) = &metrics {
            let bound = live::serve(*at, live.clone(), live_stop.clone())
                .await
                .map_err(|source| RunError::Listen { addr: *at, source })?;
            tracing::info!("live metrics at http://{bound}/metrics");
        }
        Ok::<_, RunError>((tcp, addr, builder, live_stop))
    }
    .await;
    let (tcp, addr, mut builder, live_stop) = match bound {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let (events_tx, events) = tokio::sync::mpsc::channel(1024);
    let server_stop = CancellationToken::new();
    // Every connection must present the token in time, and junk that never
    // does cannot crowd the agents out (see `port`).
    let port = Port::new(Limits::default());
    let service = pb::coordinator_server::CoordinatorServer::new(Service::new(events_tx, listener.token, port.clone()));
    let server = tokio::spawn(
        builder
            .add_service(service)
            .serve_with_incoming_shutdown(Incoming::new(tcp, port), server_stop.clone().cancelled_owned()),
    );
    let _ = ready.send(Ok(addr));
    let result = coordinator::run(setup, events, ledger, progress, interrupt).await;
    let _ = collected.send(result);
    // Let agents see their streams end before the server goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some((_, _, linger)) = metrics {
        tokio::time::sleep(linger).await;
    }
    live_stop.cancel();
}
