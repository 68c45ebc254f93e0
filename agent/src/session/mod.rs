//! The gRPC session with the controller: hello, assignment, clock offset,
//! start barrier, interval reports, heartbeats, and the final totals.
//!
//! Dead-man switch: the controller sends a heartbeat every second. An agent
//! that hears nothing for [`SILENCE`], or whose stream breaks, abandons its
//! load at once and ends with [`Error::ControllerLost`]: load never runs
//! unsupervised against a server.

mod clock;
mod connect;
mod reporter;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use stampede_otel::Traceparent;
use stampede_proto::pb::{self, agent_message, controller_message};
use stampede_proto::{Counters, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::Instrument as _;

pub use clock::{Offset, wall_us};

use crate::api::Dialect;
use crate::assignment::Plan;
use crate::load::{Control, Gate, Shared};
use crate::record::Recorder;
use crate::{Config, Error};
use reporter::Reporter;

/// How often liveness is signalled.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence from the controller after which it is taken for lost.
pub const SILENCE: Duration = Duration::from_secs(3);
/// How long to wait for the controller to close the session after
/// Finished before leaving anyway.
const GOODBYE: Duration = Duration::from_secs(10);
/// Longest start delay believed; a later start means a clock estimate
/// gone wrong, and the relative delay is used instead.
const MAX_START_WAIT: Duration = Duration::from_secs(60);

/// What an agent did in a run.
#[derive(Debug, Default)]
pub struct Ended {
    /// Run totals.
    pub counters: Counters,
}

/// The open stream to the controller.
pub(crate) struct Link {
    out: mpsc::Sender<pb::AgentMessage>,
    inbound: Streaming<pb::ControllerMessage>,
    shutdown: CancellationToken,
    /// When the controller was last heard from.
    heard: Instant,
    /// Sends a heartbeat every second for as long as the link lives.
    _heartbeat: AbortOnDrop,
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn heartbeats(out: mpsc::Sender<pb::AgentMessage>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for sequence in 1.. {
            tick.tick().await;
            let beat = agent_message::Kind::Heartbeat(pb::Heartbeat { sequence });
            if out.send(pb::AgentMessage { kind: Some(beat) }).await.is_err() {
                break;
            }
        }
    }))
}

impl Link {
    /// Sends one message; false when the stream is gone.
    async fn send(&self, kind: agent_message::Kind) -> bool {
        self.out.send(pb::AgentMessage { kind: Some(kind) }).await.is_ok()
    }

    /// The next message, before the load starts. Silence, a broken stream
    /// and an interrupt are errors.
    async fn recv(&mut self) -> Result<controller_message::Kind, Error> {
        loop {
            let message = tokio::select! {
                m = self.inbound.message() => m,
                _ = sleep_until(self.heard + SILENCE) => {
                    return Err(Error::ControllerLost(format!("no word from the controller for {SILENCE:?}")));
                }
                _ = self.shutdown.cancelled() => return Err(Error::Interrupted),
            };
            self.heard = Instant::now();
            match message {
                Ok(Some(pb::ControllerMessage { kind: Some(kind) })) => return Ok(kind),
                Ok(Some(_)) => {} // An empty message from a newer controller.
                Ok(None) => return Err(Error::Refused("the controller closed the session".to_owned())),
                Err(status) => return Err(Error::Refused(status.message().to_owned())),
            }
        }
    }
}

/// Takes part in one run: connects, receives the assignment, runs the load
/// on `load` when told, and reports until the load is over.
pub async fn run(config: &Config, shutdown: CancellationToken, load: tokio::runtime::Handle) -> Result<Ended, Error> {
    let gpu = config.gpu.then(|| Arc::new(crate::gpu::Sampler::start()));
    if let Some(g) = &gpu {
        tracing::info!("{}", g.note);
    }
    let hello = pb::Hello {
        name: config.name.clone(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: capabilities(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        gpu: gpu.as_ref().map(|g| g.note.clone()).unwrap_or_default(),
    };
    let (out, inbound) = connect::open(config, hello, &shutdown).await?;
    let mut link = Link {
        _heartbeat: heartbeats(out.clone()),
        out,
        inbound,
        shutdown,
        heard: Instant::now(),
    };
    let mut assignment = loop {
        match link.recv().await? {
            controller_message::Kind::Assignment(a) => break a,
            controller_message::Kind::Stop(s) => return Err(Error::Stopped(s.reason)),
            controller_message::Kind::Heartbeat(_) | controller_message::Kind::ClockReply(_) => {}
            other => return Err(Error::Protocol(format!("expected an assignment, got {other:?}"))),
        }
    };
    if assignment.trace.is_none() {
        assignment.trace = config.trace.clone();
    }
    // A remote agent's log lines (its span exporter's included) carry the
    // run's trace id, as the controller's do; an in-process agent's are
    // inside the controller's already.
    let logs = match assignment
        .trace
        .as_ref()
        .and_then(|t| Traceparent::parse(&t.run_traceparent))
    {
        Some(t) if tracing::Span::current().is_none() => tracing::info_span!("run", trace_id = %t.trace_id),
        _ => tracing::Span::none(),
    };
    let plan = match logs.in_scope(|| Plan::from_wire(assignment)) {
        Ok(plan) => plan,
        Err(reason) => {
            link.send(agent_message::Kind::Failed(pb::Failed { reason: reason.clone() }))
                .await;
            return Err(Error::Assignment(reason));
        }
    };
    let offset = clock::estimate(&mut link).await?;
    tracing::info!(
        run = %plan.run_id,
        agent = plan.agent_index,
        prompts = plan.prompts.len(),
        clock_offset_us = offset.map(|o| o.offset_us),
        clock_rtt_us = offset.map(|o| o.rtt_us),
        "assignment accepted"
    );
    let ready = pb::Ready {
        clock_offset_us: offset.map_or(0, |o| o.offset_us),
        clock_rtt_us: offset.map_or(0, |o| o.rtt_us),
    };
    link.send(agent_message::Kind::Ready(ready)).await;
    let start = loop {
        match link.recv().await? {
            controller_message::Kind::Start(s) => break start_instant(&s, offset),
            controller_message::Kind::Stop(s) => return Err(Error::Stopped(s.reason)),
            controller_message::Kind::Heartbeat(_)
            | controller_message::Kind::Ack(_)
            | controller_message::Kind::ClockReply(_) => {}
            other => return Err(Error::Protocol(format!("expected start, got {other:?}"))),
        }
    };
    running(plan, start, offset, link, gpu, load).instrument(logs).await
}

/// When to begin: at the controller's `start_at` in this host's clock when
/// the offset is known, else after the relative delay.
fn start_instant(start: &pb::Start, offset: Option<Offset>) -> Instant {
    let relative = Instant::now() + Duration::from_millis(start.delay_ms);
    let (Some(offset), at) = (offset, start.start_at_us) else {
        return relative;
    };
    if at == 0 {
        return relative;
    }
    let local_target = i64::try_from(at).unwrap_or(i64::MAX) - offset.offset_us;
    let wait_us = local_target - wall_us();
    match u64::try_from(wait_us) {
        Err(_) => Instant::now(), // Already due.
        Ok(us) if Duration::from_micros(us) <= MAX_START_WAIT => Instant::now() + Duration::from_micros(us),
        Ok(_) => {
            tracing::warn!("the start time is implausibly far away; using the relative delay");
            relative
        }
    }
}

fn capabilities() -> Vec<String> {
    let mut caps: Vec<String> = Dialect::ALL.iter().map(|d| format!("api:{d}")).collect();
    caps.push("load:users".to_owned());
    caps.push("load:rate".to_owned());
    caps.push("clock:probe".to_owned());
    caps.push("tokens:tokenizer".to_owned());
    caps.push("slo:goodput".to_owned());
    caps
}

async fn running(
    plan: Plan,
    start: Instant,
    offset: Option<Offset>,
    mut link: Link,
    gpu: Option<Arc<crate::gpu::Sampler>>,
    runtime: tokio::runtime::Handle,
) -> Result<Ended, Error> {
    let recorder = Recorder::new();
    let active = Arc::new(AtomicU32::new(0));
    let control = Control::default();
    let shared = Shared {
        executor: Arc::clone(&plan.executor),
        prompts: Arc::clone(&plan.prompts),
        recorder: recorder.clone(),
        active: Arc::clone(&active),
        budget: crate::load::Budget::new(plan.max_requests),
    };
    let work = plan.load.clone();
    let (end, drain) = (start + plan.duration, plan.drain);
    let load_control = control.clone();
    let (opener, gate) = Gate::new();
    let mut load = runtime.spawn(
        async move {
            work.run(shared, gate, start, end, drain, load_control).await;
        }
        .in_current_span(),
    );
    let _delay = AbortOnDrop(runtime.spawn(crate::cpu::measure_delay(recorder.clone())));
    let tracing = Arc::clone(&plan.executor.trace);
    tracing.began(start);
    let plan_classes: Vec<String> = plan.prompts.class_names().to_vec();
    let mut reporter = Reporter::new(
        recorder,
        Arc::clone(&tracing),
        Arc::clone(&plan.executor.presence),
        active,
        start,
        plan.interval,
        gpu,
    );
    reporter.name_classes(&plan_classes);
    let mut began = false;
    let mut lost: Option<String> = None;
    let stop_load = |abort: bool| {
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
            _ = sleep_until(start), if !began => {
                began = true;
                let started_at_us = wall_us() + offset.map_or(0, |o| o.offset_us);
                opener.open();
                let began = pb::Began { started_at_us: u64::try_from(started_at_us).unwrap_or(0) };
                link.send(agent_message::Kind::Began(began)).await;
            }
            _ = sleep_until(reporter.due()) => {
                let report = reporter.report().await;
                link.send(agent_message::Kind::Report(report)).await;
            }
            _ = sleep_until(link.heard + SILENCE), if lost.is_none() => {
                tracing::error!("no word from the controller for {SILENCE:?}; abandoning the load");
                lost = Some(format!("no word from the controller for {SILENCE:?}"));
                stop_load(true);
            }
            message = link.inbound.message(), if lost.is_none() => {
                link.heard = Instant::now();
                match message {
                    Ok(Some(pb::ControllerMessage { kind: Some(controller_message::Kind::Stop(stop)) })) => {
                        tracing::info!(reason = %stop.reason, abort = stop.abort, "the controller stopped the load");
                        stop_load(stop.abort);
                    }
                    Ok(Some(_)) => {} // Heartbeats, acks, late clock replies.
                    Ok(None) => {
                        tracing::error!("the controller closed the session; abandoning the load");
                        lost = Some("the controller closed the session".to_owned());
                        stop_load(true);
                    }
                    Err(status) => {
                        tracing::error!("lost the controller ({}); abandoning the load", status.message());
                        lost = Some(status.message().to_owned());
                        stop_load(true);
                    }
                }
            }
            _ = link.shutdown.cancelled(), if !control.stop.is_cancelled() => {
                tracing::info!("interrupted: no new requests; in-flight ones may finish");
                stop_load(false);
            }
        }
    }
    let elapsed = start.elapsed();
    // The last report exports the spans still queued, within a bounded
    // time, and counts them as exported or dropped.
    let last = reporter.report_last(elapsed).await;
    link.send(agent_message::Kind::Report(last)).await;
    let (finished, counters) = reporter.finished(elapsed, &plan_classes);
    link.send(agent_message::Kind::Finished(finished)).await;
    if let Some(reason) = lost {
        return Err(Error::ControllerLost(reason));
    }
    // The controller ends the session once it has everything.
    let _ = tokio::time::timeout(GOODBYE, async {
        while let Ok(Some(_)) = link.inbound.message().await {}
    })
    .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_follows_the_controllers_clock_when_the_offset_is_known() {
        // The controller is 5 s ahead and wants to start 200 ms from its now.
        let offset = Offset {
            offset_us: 5_000_000,
            rtt_us: 100,
        };
        let start_at = wall_us() + 5_000_000 + 200_000;
        let start = pb::Start {
            delay_ms: 10_000,
            start_at_us: start_at as u64,
        };
        let wait = start_instant(&start, Some(offset)) - Instant::now();
        assert!(
            wait > Duration::from_millis(150) && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        // Without an offset the relative delay applies.
        let wait = start_instant(&start, None) - Instant::now();
        assert!(wait > Duration::from_millis(9_900), "{wait:?}");
        // A start in the past begins at once; an absurd one falls back.
        let past = pb::Start {
            delay_ms: 250,
            start_at_us: 1,
        };
        assert!(start_instant(&past, Some(offset)) <= Instant::now());
        let far = pb::Start {
            delay_ms: 250,
            start_at_us: (wall_us() + 3_600_000_000) as u64,
        };
        assert!(start_instant(&far, Some(offset)) - Instant::now() <= Duration::from_millis(250));
    }
}
