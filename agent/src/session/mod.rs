//! The gRPC session with the controller: hello, assignment, clock offset,
//! start barrier, interval reports, heartbeats, and the final totals.
//!
//! Once the load has started, a broken stream is resumed ([`outbox`]): the
//! agent keeps every report until the controller acknowledges it, dials
//! again with capped, jittered backoff and sends what is unacknowledged on
//! the new stream. The load runs on through a gap shorter than the
//! dead-man limit; past it the agent abandons its load (load never runs
//! long unsupervised against a server) but goes on trying to deliver what
//! it recorded until the resume limit.

mod clock;
mod connect;
mod outbox;
mod reporter;

use std::future::pending;
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
use connect::{Attempt, Redial};
use outbox::Outbox;
use reporter::Reporter;

/// How often liveness is signalled, until the assignment says.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Silence from the controller after which it is taken for lost before
/// the start, and the dead-man limit when the assignment gives none.
pub const SILENCE: Duration = Duration::from_secs(10);
/// How long to go on trying to deliver reports when the assignment gives
/// no resume limit.
const RESUME_LIMIT: Duration = Duration::from_secs(120);
/// How long to wait for the controller to close the session after Failed
/// before leaving anyway.
const GOODBYE: Duration = Duration::from_secs(10);
/// A gap this long between two ticks of the watchdog means this process
/// was not running (stopped, or starved): silence in it is not the
/// controller's.
const STALL: Duration = Duration::from_secs(1);
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
    /// Silence after which the controller is taken for lost (before the
    /// start).
    silence: Duration,
    /// Sends heartbeats for as long as the link lives.
    _heartbeat: AbortOnDrop,
}

/// The session's liveness limits, from the assignment.
#[derive(Clone, Copy, Debug)]
struct Limits {
    heartbeat: Duration,
    /// No word this long: the stream is taken for broken and dialled again.
    redial_after: Duration,
    dead_man: Duration,
    resume_limit: Duration,
}

impl Limits {
    /// The assignment's limits; a limit it leaves at zero keeps its
    /// default.
    fn from_wire(l: Option<pb::Liveness>) -> Limits {
        let l = l.unwrap_or_default();
        let ms = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
        let heartbeat = ms(l.heartbeat_ms, HEARTBEAT);
        Limits {
            heartbeat,
            redial_after: heartbeat * 3,
            dead_man: ms(l.dead_man_ms, SILENCE),
            resume_limit: ms(l.resume_limit_ms, RESUME_LIMIT),
        }
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn heartbeats(out: mpsc::Sender<pb::AgentMessage>, every: Duration) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        for sequence in 1.. {
            tick.tick().await;
            let beat = agent_message::Kind::Heartbeat(pb::Heartbeat { sequence });
            // Never waits: a stream the controller does not read has room
            // for the messages that matter, not for heartbeats.
            if let Err(mpsc::error::TrySendError::Closed(_)) = out.try_send(pb::AgentMessage { kind: Some(beat) }) {
                break;
            }
        }
    }))
}

impl Link {
    fn new((out, inbound): connect::Opened, shutdown: CancellationToken, heartbeat: Duration) -> Link {
        Link {
            _heartbeat: heartbeats(out.clone(), heartbeat),
            out,
            inbound,
            shutdown,
            heard: Instant::now(),
            silence: SILENCE,
        }
    }

    /// Queues one message without waiting; false when the stream is gone
    /// or does not drain.
    fn offer(&self, message: pb::AgentMessage) -> bool {
        self.out.try_send(message).is_ok()
    }

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
                _ = sleep_until(self.heard + self.silence) => {
                    return Err(Error::ControllerLost(format!("no word from the controller for {:?}", self.silence)));
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
        resume: None,
    };
    let opened = connect::open(config, hello.clone(), &shutdown).await?;
    let mut link = Link::new(opened, shutdown, HEARTBEAT);
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
    let limits = Limits::from_wire(assignment.liveness);
    if limits.heartbeat != HEARTBEAT {
        link._heartbeat = heartbeats(link.out.clone(), limits.heartbeat);
    }
    link.silence = limits.dead_man;
    let redial = Redial::new(
        config,
        pb::Hello {
            resume: Some(pb::Resume {
                run_id: assignment.run_id.clone(),
                secret: assignment.session_secret.clone(),
            }),
            ..hello
        },
    )?;
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
            // Leaving at once could drop the message with the stream: wait
            // for the controller to close it, as it does once it has read it.
            let _ = tokio::time::timeout(GOODBYE, async {
                while let Ok(Some(_)) = link.inbound.message().await {}
            })
            .await;
            return Err(Error::Assignment(reason));
        }
    };
    let offset = clock::estimate(&mut link).await?;
    // An in-process agent's controller logs the run it takes part in.
    macro_rules! accepted {
        ($level:expr) => {
            tracing::event!(
                $level,
                run = %plan.run_id,
                agent = plan.agent_index,
                prompts = plan.prompts.len(),
                clock_offset_us = offset.map(|o| o.offset_us),
                clock_rtt_us = offset.map(|o| o.rtt_us),
                "assignment accepted"
            )
        };
    }
    if config.in_process {
        accepted!(tracing::Level::DEBUG);
    } else {
        accepted!(tracing::Level::INFO);
    }
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
    let session = Session {
        link: Some(link),
        redial,
        limits,
        in_process: config.in_process,
    };
    running(plan, start, offset, session, gpu, load).instrument(logs).await
}

/// The stream to the controller once the load has started, and how to
/// take it up again when it breaks.
struct Session {
    /// `None` while out of contact.
    link: Option<Link>,
    redial: Redial,
    limits: Limits,
    /// The controller's own log tells of its stop ([`Config::in_process`]).
    in_process: bool,
}

/// The next message on `link`; never, without one.
async fn next_message(link: &mut Option<Link>) -> Result<Option<pb::ControllerMessage>, tonic::Status> {
    match link {
        Some(l) => l.inbound.message().await,
        None => pending().await,
    }
}

/// A dial in progress; never, without one.
async fn dialled(
    dialing: &mut Option<tokio::task::JoinHandle<Result<connect::Opened, Attempt>>>,
) -> Result<connect::Opened, Attempt> {
    let Some(handle) = dialing else {
        return pending().await;
    };
    let result = handle
        .await
        .unwrap_or_else(|e| Err(Attempt::Retry(format!("the dialling task failed: {e}"))));
    *dialing = None;
    result
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
    session: Session,
    gpu: Option<Arc<crate::gpu::Sampler>>,
    runtime: tokio::runtime::Handle,
) -> Result<Ended, Error> {
    let Session {
        mut link,
        mut redial,
        limits,
        in_process,
    } = session;
    let shutdown = link.as_ref().map(|l| l.shutdown.clone()).unwrap_or_default();
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
    let stop_load = |abort: bool| {
        control.stop.cancel();
        if abort {
            control.abort.cancel();
        }
    };
    let mut outbox = Outbox::default();
    // When the controller was last heard from, on any stream.
    let mut heard = Instant::now();
    let mut began = false;
    let mut load_done = false;
    // The load was abandoned for want of the controller: why.
    let mut stopped_early: Option<String> = None;
    let mut dialing = None;
    let mut next_dial: Option<Instant> = None;
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    let ended: Result<(), String> = loop {
        tokio::select! {
            joined = &mut load, if !load_done => {
                if let Err(e) = joined {
                    tracing::error!("the load task failed: {e}");
                }
                load_done = true;
                let elapsed = start.elapsed();
                // The last report exports the spans still queued, within a
                // bounded time, and counts them as exported or dropped.
                let last = reporter.report_last(elapsed).await;
                post(&mut link, &mut next_dial, &mut outbox, message(agent_message::Kind::Report(last)));
                let (mut finished, counters) = reporter.finished(elapsed, &plan_classes);
                finished.stopped_early = stopped_early.clone().unwrap_or_default();
                post(&mut link, &mut next_dial, &mut outbox, message(agent_message::Kind::Finished(finished)));
                outbox.counters = Some(counters);
            }
            _ = sleep_until(start), if !began => {
                began = true;
                let started_at_us = wall_us() + offset.map_or(0, |o| o.offset_us);
                opener.open();
                let began = pb::Began { started_at_us: u64::try_from(started_at_us).unwrap_or(0) };
                post(&mut link, &mut next_dial, &mut outbox, message(agent_message::Kind::Began(began)));
            }
            _ = sleep_until(reporter.due()), if !load_done => {
                let report = reporter.report().await;
                post(&mut link, &mut next_dial, &mut outbox, message(agent_message::Kind::Report(report)));
            }
            received = next_message(&mut link) => match received {
                Ok(Some(pb::ControllerMessage { kind })) => {
                    heard = Instant::now();
                    match kind {
                        Some(controller_message::Kind::Stop(stop)) => {
                            if in_process {
                                tracing::debug!(reason = %stop.reason, abort = stop.abort, "the controller stopped the load");
                            } else {
                                tracing::info!(reason = %stop.reason, abort = stop.abort, "the controller stopped the load");
                            }
                            stop_load(stop.abort);
                        }
                        // The controller has recorded the totals: all is delivered.
                        Some(controller_message::Kind::Ack(ack)) if ack.finished => break Ok(()),
                        Some(controller_message::Kind::Ack(ack)) => outbox.acked(ack.sequence),
                        Some(controller_message::Kind::Resumed(r)) if r.finished => break Ok(()),
                        Some(controller_message::Kind::Resumed(_)) => {
                            tracing::info!(unacknowledged = outbox.len(), "resumed the session with the controller");
                        }
                        _ => {} // Heartbeats, late clock replies.
                    }
                }
                Ok(None) => {
                    tracing::warn!("the controller closed the session; dialling again");
                    link = None;
                    next_dial = Some(Instant::now());
                }
                // The controller's answer, not a broken transport: trying
                // again cannot help.
                Err(status) if refusal(status.code()) => {
                    break Err(format!("the controller refused the session: {}", status.message()));
                }
                Err(status) => {
                    tracing::warn!("the stream to the controller broke ({}); dialling again", status.message());
                    link = None;
                    next_dial = Some(Instant::now());
                }
            },
            _ = sleep_until(heard + limits.redial_after), if link.is_some() => {
                if own_stall(&mut last_tick, &mut heard) {
                    continue;
                }
                tracing::warn!("no word from the controller for {:?}; dialling again", limits.redial_after);
                link = None;
                next_dial = Some(Instant::now());
            }
            _ = sleep_until(heard + limits.dead_man), if !load_done && stopped_early.is_none() => {
                if own_stall(&mut last_tick, &mut heard) {
                    continue;
                }
                tracing::error!(
                    "no word from the controller for {:?} (its dead-man limit); abandoning the load, and keeping its reports for the controller",
                    limits.dead_man
                );
                stopped_early = Some(format!("no word from the controller for {:?} (agents.dead_man)", limits.dead_man));
                stop_load(true);
            }
            _ = sleep_until(heard + limits.resume_limit) => {
                if own_stall(&mut last_tick, &mut heard) {
                    continue;
                }
                break Err(format!("no word from the controller for {:?} (agents.resume_limit)", limits.resume_limit));
            }
            _ = sleep_until(next_dial.unwrap_or(heard)), if next_dial.is_some() && dialing.is_none() => {
                next_dial = None;
                dialing = Some(tokio::spawn(redial.attempt()));
            }
            opened = dialled(&mut dialing) => match opened {
                Ok(opened) => {
                    redial.succeeded();
                    heard = Instant::now();
                    let l = Link::new(opened, shutdown.clone(), limits.heartbeat);
                    tracing::info!(unacknowledged = outbox.len(), "reached the controller again; resuming the session");
                    if outbox.iter().all(|m| l.offer(m.clone())) {
                        link = Some(l);
                    } else {
                        next_dial = Some(Instant::now() + redial.failed());
                    }
                }
                Err(Attempt::Refused(reason)) => {
                    break Err(format!("the controller refused to resume the session: {reason}"));
                }
                Err(Attempt::Retry(reason)) => {
                    let pause = redial.failed();
                    tracing::debug!("cannot reach the controller ({reason}); trying again in {pause:?}");
                    next_dial = Some(Instant::now() + pause);
                }
            },
            _ = watchdog.tick() => {
                own_stall(&mut last_tick, &mut heard);
            }
            _ = shutdown.cancelled(), if !control.stop.is_cancelled() => {
                tracing::info!("interrupted: no new requests; in-flight ones may finish");
                stop_load(false);
            }
        }
    };
    if !load_done {
        // Given up on the controller while the load ran: end it first.
        stop_load(true);
        let _ = load.await;
    }
    let counters = outbox.counters.take().unwrap_or_default();
    match ended {
        Ok(()) => {
            if let Some(why) = stopped_early {
                tracing::warn!("the load ended early ({why}); everything it recorded was delivered");
            }
            Ok(Ended { counters })
        }
        Err(why) => Err(Error::ControllerLost(match outbox.reports() {
            0 => why,
            n => format!("{why}; {n} reports were not delivered"),
        })),
    }
}

/// Whether a stream ended with `code` because the controller refused it
/// (a session it lost, another run, a wrong secret), rather than because
/// the transport broke.
fn refusal(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::NotFound
            | Code::Unauthenticated
            | Code::AlreadyExists
            | Code::ResourceExhausted
    )
}

/// Whether this agent itself did not run for a while since `last_tick`
/// (stopped, or starved of CPU): the controller's silence during it is not
/// the controller's, so it counts afresh from now. Checked by the
/// watchdog's tick and before any silence is acted on, since after a stall
/// the timers and the tick are all due at once.
fn own_stall(last_tick: &mut Instant, heard: &mut Instant) -> bool {
    let now = Instant::now();
    let gap = now - *last_tick;
    *last_tick = now;
    if gap <= STALL {
        return false;
    }
    tracing::warn!("this agent did not run for {gap:.1?}; the controller's silence during it is not held against it");
    *heard = (*heard).max(now);
    true
}

fn message(kind: agent_message::Kind) -> pb::AgentMessage {
    pb::AgentMessage { kind: Some(kind) }
}

/// Keeps `message` until it is acknowledged and sends it on the current
/// stream; a stream that cannot take it is given up, to be dialled again.
fn post(link: &mut Option<Link>, next_dial: &mut Option<Instant>, outbox: &mut Outbox, message: pb::AgentMessage) {
    outbox.push(message.clone());
    let Some(l) = link.as_ref() else { return };
    if !l.offer(message) {
        tracing::warn!("the stream to the controller does not drain; dialling again");
        *link = None;
        *next_dial = Some(Instant::now());
    }
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
