//! The gRPC session with the controller: hello, assignment, start barrier,
//! interval reports, heartbeats, and the final totals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stampede_proto::pb::{self, agent_message, controller_message};
use stampede_proto::{Counters, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::api::Dialect;
use crate::assignment::Plan;
use crate::load::Control;
use crate::load::users::Shared;
use crate::record::{Interval, Recorder};
use crate::{Config, Error};

/// How often liveness is signalled.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long to wait for the controller to close the session after
/// Finished before leaving anyway.
const GOODBYE: Duration = Duration::from_secs(10);

/// What an agent did in a run.
#[derive(Debug, Default)]
pub struct Ended {
    /// Run totals.
    pub counters: Counters,
}

/// Takes part in one run: connects, receives the assignment, runs the load
/// when told, and reports until the load is over.
pub async fn run(config: &Config, shutdown: CancellationToken) -> Result<Ended, Error> {
    let channel = tonic::transport::Endpoint::from_shared(config.controller.clone())
        .map_err(|e| Error::Connect {
            url: config.controller.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Connect {
            url: config.controller.clone(),
            reason: source_chain(&e),
        })?;
    let mut client = pb::coordinator_client::CoordinatorClient::new(channel);
    let (out, out_rx) = mpsc::channel(1024);
    let hello = pb::Hello {
        name: config.name.clone(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: capabilities(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    send(&out, agent_message::Kind::Hello(hello)).await;
    let mut inbound = client
        .session(ReceiverStream::new(out_rx))
        .await
        .map_err(|s| Error::Refused(s.message().to_owned()))?
        .into_inner();

    let assignment = loop {
        match recv(&mut inbound, &shutdown).await? {
            controller_message::Kind::Assignment(a) => break a,
            controller_message::Kind::Heartbeat(_) => {}
            controller_message::Kind::Stop(s) => return Err(Error::Stopped(s.reason)),
            other => {
                return Err(Error::Protocol(format!(
                    "expected an assignment, got {other:?}"
                )));
            }
        }
    };
    let plan = match Plan::from_wire(assignment) {
        Ok(plan) => plan,
        Err(reason) => {
            send(
                &out,
                agent_message::Kind::Failed(pb::Failed {
                    reason: reason.clone(),
                }),
            )
            .await;
            return Err(Error::Assignment(reason));
        }
    };
    tracing::info!(
        run = %plan.run_id,
        agent = plan.agent_index,
        users = plan.users.count,
        prompts = plan.prompts.len(),
        "assignment accepted"
    );
    send(&out, agent_message::Kind::Ready(pb::Ready {})).await;
    let delay = loop {
        match recv(&mut inbound, &shutdown).await? {
            controller_message::Kind::Start(s) => break s.delay_ms,
            controller_message::Kind::Heartbeat(_) | controller_message::Kind::Ack(_) => {}
            controller_message::Kind::Stop(s) => return Err(Error::Stopped(s.reason)),
            other => return Err(Error::Protocol(format!("expected start, got {other:?}"))),
        }
    };
    let start = Instant::now() + Duration::from_millis(delay);
    running(plan, start, out, inbound, shutdown).await
}

fn capabilities() -> Vec<String> {
    let mut caps: Vec<String> = Dialect::ALL.iter().map(|d| format!("api:{d}")).collect();
    caps.push("load:users".to_owned());
    caps
}

/// Sends one message; false when the controller's side is gone.
async fn send(out: &mpsc::Sender<pb::AgentMessage>, kind: agent_message::Kind) -> bool {
    out.send(pb::AgentMessage { kind: Some(kind) })
        .await
        .is_ok()
}

/// The next message from the controller, before the load starts.
async fn recv(
    inbound: &mut Streaming<pb::ControllerMessage>,
    shutdown: &CancellationToken,
) -> Result<controller_message::Kind, Error> {
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            _ = shutdown.cancelled() => return Err(Error::Interrupted),
        };
        match message {
            Ok(Some(pb::ControllerMessage { kind: Some(kind) })) => return Ok(kind),
            Ok(Some(_)) => {} // An empty message from a newer controller.
            Ok(None) => {
                return Err(Error::Refused(
                    "the controller closed the session".to_owned(),
                ));
            }
            Err(status) => return Err(Error::Refused(status.message().to_owned())),
        }
    }
}

/// Cuts interval reports and keeps the run's totals.
struct Reporter {
    recorder: Recorder,
    active: Arc<AtomicU32>,
    start: Instant,
    interval: Duration,
    next_index: u64,
    sequence: u64,
    cut: Interval,
    spare: Interval,
    total: Interval,
}

impl Reporter {
    fn due(&self) -> Instant {
        let ends = u32::try_from(self.next_index + 1).unwrap_or(u32::MAX);
        self.start + self.interval * ends
    }

    fn report(&mut self) -> pb::Report {
        self.recorder.cut(&mut self.cut, &mut self.spare);
        self.total.add(&self.cut);
        self.cut.counters.active_users = self.active.load(Ordering::Relaxed);
        self.sequence += 1;
        let report = pb::Report {
            interval: self.next_index,
            sequence: self.sequence,
            elapsed_us: micros(self.start.elapsed()),
            histograms: self.cut.histograms.to_wire(),
            counters: Some(self.cut.counters.to_wire()),
            error_samples: self
                .cut
                .samples
                .iter()
                .map(|(class, message)| pb::ErrorSample {
                    class: class.to_string(),
                    message: message.clone(),
                })
                .collect(),
        };
        self.cut.reset();
        self.next_index += 1;
        report
    }

    fn finished(&self, elapsed: Duration) -> pb::Finished {
        pb::Finished {
            histograms: self.total.histograms.to_wire(),
            counters: Some(self.total.counters.to_wire()),
            elapsed_us: micros(elapsed),
            last_sequence: self.sequence,
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn running(
    plan: Plan,
    start: Instant,
    out: mpsc::Sender<pb::AgentMessage>,
    mut inbound: Streaming<pb::ControllerMessage>,
    shutdown: CancellationToken,
) -> Result<Ended, Error> {
    let recorder = Recorder::new();
    let active = Arc::new(AtomicU32::new(0));
    let control = Control::default();
    let shared = Shared {
        executor: Arc::clone(&plan.executor),
        prompts: Arc::clone(&plan.prompts),
        recorder: recorder.clone(),
        active: Arc::clone(&active),
    };
    let users = plan.users.clone();
    let (end, drain) = (start + plan.duration, plan.drain);
    let load_control = control.clone();
    let mut load = tokio::spawn(async move {
        users.run(shared, start, end, drain, load_control).await;
    });
    let mut reporter = Reporter {
        recorder,
        active,
        start,
        interval: plan.interval,
        next_index: 0,
        sequence: 0,
        cut: Interval::default(),
        spare: Interval::default(),
        total: Interval::default(),
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beats = 0;
    let mut lost: Option<String> = None;
    let stop_load = |control: &Control, abort: bool| {
        control.stop.cancel();
        if abort {
            control.abort.cancel();
        }
    };
    loop {
        tokio::select! {
            joined = &mut load => {
                if let Err(e) = joined {
                    tracing::error!("the load task failed: {e}");
                }
                break;
            }
            _ = sleep_until(reporter.due()) => {
                let report = reporter.report();
                if !send(&out, agent_message::Kind::Report(report)).await && lost.is_none() {
                    lost = Some("the session's outbound stream closed".to_owned());
                    stop_load(&control, true);
                }
            }
            _ = heartbeat.tick() => {
                beats += 1;
                send(&out, agent_message::Kind::Heartbeat(pb::Heartbeat { sequence: beats })).await;
            }
            message = inbound.message(), if lost.is_none() => match message {
                Ok(Some(pb::ControllerMessage { kind: Some(controller_message::Kind::Stop(stop)) })) => {
                    tracing::info!(reason = %stop.reason, abort = stop.abort, "the controller stopped the load");
                    stop_load(&control, stop.abort);
                }
                Ok(Some(_)) => {} // Heartbeats and acks.
                Ok(None) => {
                    tracing::error!("the controller closed the session; stopping the load");
                    lost = Some("the controller closed the session".to_owned());
                    stop_load(&control, true);
                }
                Err(status) => {
                    tracing::error!("lost the controller ({}); stopping the load", status.message());
                    lost = Some(status.message().to_owned());
                    stop_load(&control, true);
                }
            },
            _ = shutdown.cancelled(), if !control.stop.is_cancelled() => {
                tracing::info!("interrupted: no new requests; in-flight ones may finish");
                stop_load(&control, false);
            }
        }
    }
    let elapsed = start.elapsed();
    let last = reporter.report();
    send(&out, agent_message::Kind::Report(last)).await;
    let finished = reporter.finished(elapsed);
    send(&out, agent_message::Kind::Finished(finished)).await;
    if let Some(reason) = lost {
        return Err(Error::ControllerLost(reason));
    }
    // The controller ends the session once it has everything.
    let _ = tokio::time::timeout(GOODBYE, async {
        while let Ok(Some(_)) = inbound.message().await {}
    })
    .await;
    let mut counters = reporter.total.counters;
    counters.active_users = 0;
    Ok(Ended { counters })
}

/// An error and its causes on one line: tonic's transport errors say
/// little at the top level.
pub(crate) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
