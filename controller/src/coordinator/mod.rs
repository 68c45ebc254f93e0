//! The coordinator: one task that owns the run's connections. It admits
//! agents, hands out assignments, holds the start barrier, takes in
//! reports, lets an agent whose stream broke resume its session on a new
//! one, and declares agents lost when they have been out of contact for
//! `agents.lost_after`. Everything the run's results depend on goes
//! through the [`Ledger`], which logs it before it takes effect (a report
//! before its acknowledgement).

pub(crate) mod service;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_proto::PROTOCOL_VERSION;
use stampede_proto::pb::{self, agent_message, controller_message};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tonic::Status;

use crate::analysis::gates;
use crate::dataset::Prompt;
use crate::merge::{Place, Row};
use crate::plan::Slice;
use crate::profile::{Liveness, Load, Model, OnAgentLoss, Threshold};
use crate::report::live::Live;
use crate::report::progress::Progress;
use crate::results::log::{End, Entry, FinishedEntry, Joined, ReportEntry};
use crate::results::{AgentEnd, Collected, Ledger};
use crate::run::Interrupt;
use service::{Event, Outbound};

/// A gap this long between two ticks of the watchdog means the controller
/// itself did not run (stopped, or starved): the agents' silence during it
/// is not theirs.
const STALL: Duration = Duration::from_secs(1);
/// How often the watchdog ticks.
const WATCHDOG: Duration = Duration::from_millis(250);
/// Slack after the planned end of the load before agents are told to stop.
const OVERRUN: Duration = Duration::from_secs(10);
/// How long agents get to report after a stop before the run is closed
/// without them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything the coordinator needs to run.
pub(crate) struct Setup {
    pub(crate) run_id: String,
    pub(crate) slices: Vec<Slice>,
    pub(crate) target: pb::Target,
    pub(crate) request: pb::RequestSpec,
    pub(crate) prompts: Vec<Prompt>,
    pub(crate) load: Load,
    /// Seed of the open-loop arrival schedule, the same for every agent.
    pub(crate) schedule_seed: u64,
    pub(crate) interval: Duration,
    pub(crate) start_delay: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) capabilities: Vec<String>,
    pub(crate) on_agent_loss: OnAgentLoss,
    /// How the controller and the agents tell that the other is gone.
    pub(crate) liveness: Liveness,
    /// Live metrics to feed, when served.
    pub(crate) live: Option<Live>,
    /// How agents export request spans; `None`: tracing is off.
    pub(crate) trace: Option<pb::Trace>,
    /// Per-request objectives agents check (goodput).
    pub(crate) slo: Option<pb::Slo>,
    /// The profile's thresholds; those with `abort` are checked as each
    /// interval completes.
    pub(crate) thresholds: Vec<Threshold>,
}

struct Conn {
    /// `None` once the coordinator has ended the stream.
    out: Option<Outbound>,
    agent: Option<u32>,
    peer: Option<SocketAddr>,
}

/// An agent's session; what it has done is in the ledger.
struct Slot {
    name: String,
    index: u32,
    /// Its stream, or the last one it had.
    conn: u64,
    /// Why its last stream broke, while it has not resumed.
    broke: Option<String>,
    /// What a stream that takes up this session presents.
    secret: String,
    ready: bool,
    /// When it was last heard from: its last contact.
    heard: Instant,
}

enum Phase {
    Joining,
    Running,
    Stopping,
}

struct Coordinator {
    setup: Setup,
    conns: HashMap<u64, Conn>,
    slots: Vec<Option<Slot>>,
    ledger: Ledger,
    progress: Progress,
    phase: Phase,
    deadline: Instant,
    started: Option<Instant>,
    interrupted: bool,
    aborted: Option<String>,
    failure: Option<String>,
    /// A threshold with `abort` broke: why.
    stopped_by: Option<String>,
    /// The run cannot go on; end the loop without waiting for agents.
    give_up: bool,
    /// The watchdog's last tick, or the last check for a stall.
    last_tick: Instant,
}

fn message(kind: controller_message::Kind) -> Result<pb::ControllerMessage, Status> {
    Ok(pb::ControllerMessage { kind: Some(kind) })
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Runs the coordinator until every agent has finished or been lost, or the
/// run cannot go on.
pub(crate) async fn run(
    setup: Setup,
    mut events: mpsc::Receiver<Event>,
    ledger: Ledger,
    progress: Progress,
    interrupt: Interrupt,
) -> Collected {
    let n = setup.slices.len();
    let mut c = Coordinator {
        deadline: Instant::now() + setup.join_timeout,
        slots: (0..n).map(|_| None).collect(),
        setup,
        conns: HashMap::new(),
        ledger,
        progress,
        phase: Phase::Joining,
        started: None,
        interrupted: false,
        aborted: None,
        failure: None,
        stopped_by: None,
        give_up: false,
        last_tick: Instant::now(),
    };
    let mut heartbeat = tokio::time::interval(c.setup.liveness.heartbeat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watchdog = tokio::time::interval(WATCHDOG);
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beats = 0;
    let mut force = false;
    while !c.all_ended() {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    c.handle(event);
                    c.count_agents();
                }
                None => break,
            },
            _ = heartbeat.tick() => {
                beats += 1;
                c.broadcast(controller_message::Kind::Heartbeat(pb::Heartbeat { sequence: beats }));
            }
            _ = watchdog.tick() => {
                c.own_stall();
            }
            // Checked when the first silence can complete, not by polling,
            // so that an agent is lost the moment it has been out of
            // contact for the limit.
            _ = sleep_until(c.next_silence()), if c.watching() => {
                if !c.own_stall() {
                    c.watch();
                    c.count_agents();
                }
            }
            _ = sleep_until(c.deadline) => {
                if !c.own_stall() {
                    c.overdue();
                }
            }
            _ = interrupt.stop.cancelled(), if !c.interrupted => {
                c.interrupted = true;
                c.stop("interrupted; in-flight requests may finish (interrupt again to abandon them)", false);
            }
            _ = interrupt.abort.cancelled(), if !force => {
                force = true;
                c.interrupted = true;
                c.stop("interrupted again; abandoning in-flight requests", true);
            }
        }
    }
    c.close()
}

impl Coordinator {
    fn all_ended(&self) -> bool {
        self.give_up
            || self
                .slots
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| !self.unfinished(s.index)))
    }

    /// Agent `index` has a place and has not ended.
    fn unfinished(&self, index: u32) -> bool {
        self.ledger.agent(index).is_some_and(|a| a.end == AgentEnd::Unfinished)
    }

    /// Queues a message without waiting: an agent that does not read its
    /// stream must not stall the run. Returns false when it could not.
    fn send(&self, conn: u64, kind: controller_message::Kind) -> bool {
        let Some(out) = self.conns.get(&conn).and_then(|c| c.out.as_ref()) else {
            return false;
        };
        out.try_send(message(kind)).is_ok()
    }

    fn broadcast(&self, kind: controller_message::Kind) {
        for slot in self.slots.iter().flatten() {
            if self.unfinished(slot.index) {
                self.send(slot.conn, kind.clone());
            }
        }
    }

    /// Ends stream `conn`: with `status` when refusing, plainly otherwise.
    fn hang_up(&mut self, conn: u64, status: Option<Status>) {
        if let Some(out) = self.conns.get_mut(&conn).and_then(|c| c.out.take())
            && let Some(status) = status
        {
            let _ = out.try_send(Err(status));
        }
    }

    fn refuse(&mut self, conn: u64, status: Status) {
        let peer = self.conns.get(&conn).and_then(|c| c.peer);
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        tracing::warn!("refused an agent{from}: {}", status.message());
        self.hang_up(conn, Some(status));
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { conn, out, peer } => {
                self.conns.insert(
                    conn,
                    Conn {
                        out: Some(out),
                        agent: None,
                        peer,
                    },
                );
            }
            Event::Message { conn, message } => {
                let Some(kind) = message.kind else { return };
                let Some(c) = self.conns.get(&conn) else { return };
                let agent = c.agent;
                if let Some(i) = agent
                    && let Some(slot) = self.slots[i as usize].as_mut()
                    && slot.conn == conn
                {
                    slot.heard = Instant::now();
                }
                match (kind, agent) {
                    (agent_message::Kind::Hello(hello), None) if hello.resume.is_some() => self.resume(conn, hello),
                    (agent_message::Kind::Hello(hello), None) => self.hello(conn, hello),
                    (_, None) => self.refuse(conn, Status::failed_precondition("the first message must be Hello")),
                    (agent_message::Kind::Hello(_), Some(_)) => {
                        self.refuse(conn, Status::failed_precondition("Hello was already received"));
                    }
                    (agent_message::Kind::Ready(r), Some(i)) => self.ready(i, &r),
                    (agent_message::Kind::Began(b), Some(i)) => {
                        // Sent again on a resumed stream: taken once.
                        if self.ledger.agent(i).is_some_and(|a| a.began_at_us.is_none()) {
                            self.ledger.record(Entry::Began {
                                agent_index: i,
                                at_us: b.started_at_us,
                            });
                        }
                    }
                    (agent_message::Kind::Report(r), Some(i)) => self.report(conn, i, r),
                    (agent_message::Kind::Finished(f), Some(i)) => self.finished(conn, i, f),
                    (agent_message::Kind::Failed(f), Some(i)) => self.failed(i, f.reason),
                    (agent_message::Kind::Heartbeat(_) | agent_message::Kind::ClockProbe(_), Some(_)) => {}
                }
            }
            Event::Closed { conn, reason } => {
                let Some(c) = self.conns.remove(&conn) else { return };
                let Some(i) = c.agent else { return };
                let unfinished = self.slots[i as usize]
                    .as_ref()
                    .is_some_and(|s| s.conn == conn && self.unfinished(i));
                if !unfinished {
                    return;
                }
                let why = reason.map_or_else(|| "its stream ended".to_owned(), |r| format!("its stream broke: {r}"));
                if matches!(self.phase, Phase::Joining) {
                    return self.lose(i, why);
                }
                // After the start a session outlives its stream: the agent
                // dials again and resumes it, or is lost once it has been
                // out of contact for the limit.
                let limit = self.setup.liveness.lost_after;
                if let Some(slot) = self.slots[i as usize].as_mut() {
                    tracing::warn!(agent = %slot.name, "{why}; waiting up to {limit:?} from its last contact for it to resume");
                    slot.broke = Some(why);
                }
            }
        }
    }

    /// Tells the live metrics how many agents stand in each state.
    fn count_agents(&self) {
        let Some(live) = &self.setup.live else { return };
        let (mut running, mut finished, mut lost) = (0, 0, 0);
        for agent in self.ledger.agents() {
            match agent.end {
                AgentEnd::Unfinished => running += 1,
                AgentEnd::Finished => finished += 1,
                AgentEnd::Lost(_) | AgentEnd::Failed(_) => lost += 1,
            }
            if agent.end != AgentEnd::Unfinished {
                live.agent_ended(agent.index);
            }
        }
        live.agents(running, finished, lost);
    }

    fn hello(&mut self, conn: u64, hello: pb::Hello) {
        if hello.protocol_version != PROTOCOL_VERSION {
            let text = format!(
                "protocol version mismatch: agent {:?} speaks version {}, this controller speaks version {PROTOCOL_VERSION}",
                hello.name, hello.protocol_version
            );
            return self.refuse(conn, Status::failed_precondition(text));
        }
        if !matches!(self.phase, Phase::Joining) {
            return self.refuse(conn, Status::failed_precondition("the run has already started"));
        }
        if let Some(missing) = self.setup.capabilities.iter().find(|c| !hello.capabilities.contains(c)) {
            let text = format!(
                "agent {:?} lacks capability {missing:?} that this run needs",
                hello.name
            );
            return self.refuse(conn, Status::failed_precondition(text));
        }
        if self.slots.iter().flatten().any(|s| s.name == hello.name) {
            let text = format!("an agent named {:?} has already joined this run", hello.name);
            return self.refuse(conn, Status::already_exists(text));
        }
        let Some(index) = self.slots.iter().position(Option::is_none) else {
            let text = format!("this run already has all {} agents it needs", self.slots.len());
            return self.refuse(conn, Status::resource_exhausted(text));
        };
        let slice = self.setup.slices[index].clone();
        let peer = self.conns.get_mut(&conn).and_then(|c| {
            c.agent = Some(index as u32);
            c.peer
        });
        self.ledger.record(Entry::Joined(Joined {
            agent_index: index as u32,
            name: hello.name.clone(),
            users: slice.peak_users(),
            version: hello.agent_version,
            peer: peer.map(|p| p.to_string()),
            gpu_note: (!hello.gpu.is_empty()).then_some(hello.gpu),
        }));
        self.slots[index] = Some(Slot {
            name: hello.name.clone(),
            index: index as u32,
            conn,
            broke: None,
            // Two random 128-bit ids from the trace id generator.
            secret: format!("{}{}", stampede_otel::new_trace_id(), stampede_otel::new_trace_id()),
            ready: false,
            heard: Instant::now(),
        });
        let joined = self.slots.iter().flatten().count();
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        tracing::info!(agent = %hello.name, index, users = slice.peak_users(), "agent joined{from} ({joined}/{})", self.slots.len());
        let mut assignment = self.assignment(&slice);
        assignment.session_secret = self.slots[index].as_ref().map(|s| s.secret.clone()).unwrap_or_default();
        self.send(conn, controller_message::Kind::Assignment(assignment));
    }

    /// A new stream takes up the session of an agent whose stream broke.
    fn resume(&mut self, conn: u64, hello: pb::Hello) {
        let resume = hello.resume.unwrap_or_default();
        if hello.protocol_version != PROTOCOL_VERSION {
            let text = format!(
                "protocol version mismatch: agent {:?} speaks version {}, this controller speaks version {PROTOCOL_VERSION}",
                hello.name, hello.protocol_version
            );
            return self.refuse(conn, Status::failed_precondition(text));
        }
        if resume.run_id != self.setup.run_id {
            let text = format!(
                "this controller runs {}, not {}: a session cannot be resumed with another run",
                self.setup.run_id, resume.run_id
            );
            return self.refuse(conn, Status::failed_precondition(text));
        }
        let Some(index) = self
            .slots
            .iter()
            .flatten()
            .find(|s| s.name == hello.name)
            .map(|s| s.index)
        else {
            let text = format!("no agent named {:?} has a session in this run", hello.name);
            return self.refuse(conn, Status::not_found(text));
        };
        let slot = self.slots[index as usize].as_ref().expect("found above");
        if !service::same(resume.secret.as_bytes(), slot.secret.as_bytes()) {
            let text = format!("wrong session secret for agent {:?}", hello.name);
            return self.refuse(conn, Status::permission_denied(text));
        }
        let end = self.ledger.agent(index).map(|a| a.end.clone());
        match end {
            Some(AgentEnd::Finished) => {
                // Its Finished arrived and the goodbye did not: say so. What
                // it sends again on this stream is taken in once, as ever.
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.agent = Some(index);
                }
                self.send(conn, controller_message::Kind::Resumed(pb::Resumed { finished: true }));
                return self.hang_up(conn, None);
            }
            Some(AgentEnd::Lost(why) | AgentEnd::Failed(why)) => {
                let text = format!(
                    "agent {:?} was declared lost ({why}); this run takes nothing more from it",
                    hello.name
                );
                return self.refuse(conn, Status::failed_precondition(text));
            }
            Some(AgentEnd::Unfinished) | None => {}
        }
        let old = slot.conn;
        let gap = slot.heard.elapsed();
        if old != conn {
            self.hang_up(old, None);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(index);
        }
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.conn = conn;
            slot.broke = None;
            slot.heard = Instant::now();
        }
        tracing::info!(agent = %hello.name, "agent resumed its session after {gap:.1?} out of contact");
        self.send(conn, controller_message::Kind::Resumed(pb::Resumed { finished: false }));
    }

    fn assignment(&self, slice: &Slice) -> pb::Assignment {
        let s = &self.setup;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        pb::Assignment {
            run_id: s.run_id.clone(),
            agent_index: slice.index,
            agent_count: s.slices.len() as u32,
            target: Some(s.target.clone()),
            request: Some(s.request),
            load: Some(wire_load(&s.load, slice, s.slices.len() as u32, s.schedule_seed)),
            duration_ms: ms(s.load.duration()),
            drain_ms: ms(s.load.drain),
            interval_ms: ms(s.interval),
            trace: s.trace.clone(),
            prompts: Some(pb::DatasetShare {
                prompts: s.prompts[slice.prompts.clone()]
                    .iter()
                    .map(|p| pb::Prompt {
                        text: p.text.clone(),
                        class: p.class.clone(),
                        max_tokens: p.max_tokens,
                    })
                    .collect(),
                offset: slice.prompts.start as u64,
                total: s.prompts.len() as u64,
            }),
            seed: slice.seed,
            slo: s.slo,
            max_requests: slice.requests.unwrap_or(0),
            session_secret: String::new(),
            liveness: Some(pb::Liveness {
                heartbeat_ms: ms(s.liveness.heartbeat),
                dead_man_ms: ms(s.liveness.dead_man),
                resume_limit_ms: ms(s.liveness.resume_limit),
                lost_after_ms: ms(s.liveness.lost_after),
            }),
        }
    }

    fn ready(&mut self, index: u32, ready: &pb::Ready) {
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.ready = true;
            let measured = ready.clock_rtt_us > 0;
            self.ledger.record(Entry::Ready {
                agent_index: index,
                clock_offset_us: measured.then_some(ready.clock_offset_us),
                clock_rtt_us: measured.then_some(ready.clock_rtt_us),
            });
        }
        let all_ready = self.slots.iter().all(|s| s.as_ref().is_some_and(|s| s.ready));
        if !matches!(self.phase, Phase::Joining) || !all_ready {
            return;
        }
        let delay = self.setup.start_delay;
        let start_at_us = wall_us() + u64::try_from(delay.as_micros()).unwrap_or(0);
        self.phase = Phase::Running;
        self.started = Some(Instant::now() + delay);
        let started_at = SystemTime::now() + delay;
        self.ledger.record(Entry::Started {
            unix_ns: started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            start_at_us,
        });
        self.deadline = Instant::now() + delay + self.setup.load.duration() + self.setup.load.drain + OVERRUN;
        tracing::info!(agents = self.slots.len(), "all agents ready; starting in {delay:?}");
        let start = pb::Start {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            start_at_us,
        };
        self.broadcast(controller_message::Kind::Start(start));
    }

    fn report(&mut self, conn: u64, index: u32, wire: pb::Report) {
        let sequence = wire.sequence;
        // Logged before acknowledged: a crash after the ack loses nothing
        // the agent was told is safe.
        let effect = self.ledger.record(Entry::Report(ReportEntry {
            agent: self.name(index),
            agent_index: index,
            report: wire,
        }));
        if let Some(why) = &effect.unreadable {
            tracing::error!("{why}");
        }
        if let (Some(report), Some(live)) = (&effect.added, &self.setup.live) {
            live.report(index, &report.histograms, &report.counters);
        }
        self.send(conn, controller_message::Kind::Ack(pb::ReportAck { sequence }));
        self.on_rows(effect.rows);
    }

    fn finished(&mut self, conn: u64, index: u32, wire: pb::Finished) {
        if !self.unfinished(index) {
            // Sent again on a resumed stream, or after the agent was lost.
            return self.hang_up(conn, None);
        }
        let name = self.name(index);
        let effect = self.ledger.record(Entry::Finished(FinishedEntry {
            agent: name.clone(),
            agent_index: index,
            finished: wire,
        }));
        if let Some(why) = &effect.unreadable {
            tracing::error!("{why}");
        }
        if let Some(mismatch) = &effect.mismatch {
            tracing::warn!(agent = %name, "{mismatch}");
        }
        // Ending the stream tells the agent everything was received.
        self.hang_up(conn, None);
        self.on_rows(effect.rows);
    }

    fn failed(&mut self, index: u32, reason: String) {
        let name = self.name(index);
        tracing::error!(agent = %name, "agent cannot carry out its assignment: {reason}");
        let effect = self.ledger.record(Entry::Failed {
            agent_index: index,
            reason: reason.clone(),
        });
        self.on_rows(effect.rows);
        self.failure = Some(format!("agent {name} cannot carry out its assignment: {reason}"));
        self.stop("an agent failed", true);
    }

    /// Declares agent `index` lost: keeps everything it reported, tells it
    /// to stop, ends its stream, and applies the profile's policy.
    fn lose(&mut self, index: u32, reason: String) {
        let Some(slot) = self.slots[index as usize].as_ref() else {
            return;
        };
        let (name, conn, heard) = (slot.name.clone(), slot.conn, slot.heard);
        if matches!(self.phase, Phase::Joining) {
            // Nothing ran: free its place for another agent.
            tracing::warn!(agent = %name, "agent left before the start ({reason}); its place is open");
            self.ledger.record(Entry::Left {
                agent_index: index,
                reason,
            });
            self.slots[index as usize] = None;
            self.hang_up(conn, None);
            return;
        }
        tracing::warn!(agent = %name, "agent lost: {reason}");
        // Lost as of its last contact, not of when that was noticed.
        let after_start = self.started.map(|s| heard.saturating_duration_since(s));
        let effect = self.ledger.record(Entry::Lost {
            agent_index: index,
            reason: reason.clone(),
            after_start_us: after_start.map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        });
        let stop = pb::Stop {
            reason: format!("this agent was declared lost: {reason}"),
            abort: true,
        };
        self.send(conn, controller_message::Kind::Stop(stop));
        self.hang_up(conn, None);
        self.on_rows(effect.rows);
        if self.setup.on_agent_loss == OnAgentLoss::Abort && self.aborted.is_none() && !self.interrupted {
            let why = format!("agent {name} was lost ({reason}) and agents.on_agent_loss is \"abort\"");
            self.aborted = Some(why.clone());
            self.stop(&why, true);
        }
    }

    fn watching(&self) -> bool {
        self.slots.iter().flatten().any(|s| self.unfinished(s.index))
    }

    /// When the earliest time out of contact among running agents reaches
    /// `lost_after`.
    fn next_silence(&self) -> Instant {
        let limit = self.setup.liveness.lost_after;
        self.slots
            .iter()
            .flatten()
            .filter(|s| self.unfinished(s.index))
            .map(|s| s.heard + limit)
            .min()
            .unwrap_or_else(|| Instant::now() + limit)
    }

    /// Declares agents out of contact for `lost_after` lost.
    fn watch(&mut self) {
        let limit = self.setup.liveness.lost_after;
        let gone: Vec<(u32, String)> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| self.unfinished(s.index) && s.heard.elapsed() >= limit)
            .map(|s| {
                let why = match &s.broke {
                    Some(broke) => format!("{broke}, and it did not resume within {limit:?}"),
                    None => format!("silent for {limit:?}"),
                };
                (s.index, why)
            })
            .collect();
        for (index, why) in gone {
            self.lose(index, why);
        }
    }

    /// Whether the controller itself did not run for a while since the
    /// last tick (stopped, or starved of CPU). No agent could be heard in
    /// that gap, so each gets a fresh `lost_after` from now, and the run's
    /// deadline moves by the gap. Checked by the watchdog's tick and
    /// before any silence or deadline is acted on, since after a stall the
    /// timers and the tick are all due at once.
    fn own_stall(&mut self) -> bool {
        let now = Instant::now();
        let gap = now - self.last_tick;
        self.last_tick = now;
        if gap <= STALL {
            return false;
        }
        tracing::warn!(
            "the controller did not run for {gap:.1?}; the agents' silence during it is not held against them"
        );
        for slot in self.slots.iter_mut().flatten() {
            slot.heard = slot.heard.max(now);
        }
        self.deadline += gap;
        true
    }

    fn stop(&mut self, reason: &str, abort: bool) {
        tracing::info!("stopping the run: {reason}");
        self.broadcast(controller_message::Kind::Stop(pb::Stop {
            reason: reason.to_owned(),
            abort,
        }));
        if matches!(self.phase, Phase::Joining) {
            // Nothing ran: there is nothing to wait for.
            self.failure
                .get_or_insert_with(|| format!("the run was stopped before it started: {reason}"));
            self.give_up = true;
        }
        // An agent out of contact has until it would be lost to resume
        // and deliver.
        let grace = STOP_GRACE.max(self.setup.liveness.lost_after);
        let grace = if abort { grace } else { self.setup.load.drain + grace };
        self.phase = Phase::Stopping;
        self.deadline = Instant::now() + grace;
    }

    fn overdue(&mut self) {
        match self.phase {
            Phase::Joining => {
                let joined = self.slots.iter().flatten().count();
                let ready = self.slots.iter().flatten().filter(|s| s.ready).count();
                self.failure = Some(format!(
                    "only {joined} of {} agents joined and {ready} were ready within {:?}",
                    self.slots.len(),
                    self.setup.join_timeout
                ));
                self.stop("not every agent joined in time", true);
            }
            Phase::Running => self.stop("the load overran its duration and drain time", true),
            Phase::Stopping => {
                tracing::warn!("agents did not finish within the grace period; closing the run without them");
                self.give_up = true;
            }
        }
    }

    fn name(&self, index: u32) -> String {
        self.slots[index as usize]
            .as_ref()
            .map_or_else(|| format!("#{index}"), |s| s.name.clone())
    }

    fn on_rows(&mut self, rows: Vec<Row>) {
        for row in &rows {
            self.progress.row(row);
        }
        if !rows.is_empty() {
            self.check_thresholds();
        }
    }

    /// Stops the load when a threshold with `abort` breaks, judged on
    /// everything merged so far.
    fn check_thresholds(&mut self) {
        if self.stopped_by.is_some()
            || !matches!(self.phase, Phase::Running)
            || !self.setup.thresholds.iter().any(|t| t.abort)
        {
            return;
        }
        let rows = self.ledger.rows();
        let Some(last) = rows.last() else { return };
        let interval_s = self.setup.interval.as_secs_f64();
        let merger = self.ledger.merger();
        let mut steps_s = vec![0.0; merger.steps().len()];
        let mut measured_s = 0.0;
        for r in rows {
            match r.place {
                Place::Step(k) => {
                    measured_s += interval_s;
                    if let Some(s) = steps_s.get_mut(k) {
                        *s += interval_s;
                    }
                }
                Place::Drain => measured_s += interval_s,
                Place::Warmup(_) => {}
            }
        }
        let progress = gates::Progress {
            measured: merger.measured(),
            measured_s,
            steps: merger.steps(),
            steps_s: &steps_s,
            elapsed_s: (last.interval + 1) as f64 * interval_s,
        };
        if let Some(why) = gates::breached(&self.setup.thresholds, &progress) {
            tracing::warn!("{why}; stopping the load");
            self.stopped_by = Some(why.clone());
            self.stop(&why, true);
        }
    }

    fn close(mut self) -> Collected {
        let rows = self.ledger.flush();
        self.on_rows(rows);
        self.progress.finish();
        self.ledger.close(End {
            interrupted: self.interrupted,
            aborted: self.aborted,
            failure: self.failure,
            stopped_by: self.stopped_by,
        })
    }
}

/// This agent's load on the wire.
pub(crate) fn wire_load(load: &Load, slice: &Slice, streams: u32, schedule_seed: u64) -> pb::Load {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let kind = match &load.model {
        Model::Users { think, pace } => pb::load::Kind::Closed(pb::Closed {
            phases: load
                .steps
                .iter()
                .zip(&slice.users)
                .map(|(step, users)| pb::UsersPhase {
                    users: *users,
                    duration_ms: ms(step.duration),
                    ramp_ms: ms(step.ramp),
                })
                .collect(),
            first_user: slice.first_user,
            think_ms: ms(*think),
            pace_ms: pace.map_or(0, ms),
        }),
        Model::Rate { process, .. } => {
            use stampede_agent::load::schedule::Process;
            let (process, burstiness) = match process {
                Process::Constant => (pb::Process::Constant, 0.0),
                Process::Poisson => (pb::Process::Poisson, 0.0),
                Process::Gamma(shape) => (pb::Process::Gamma, *shape),
            };
            pb::load::Kind::Open(pb::Open {
                phases: load
                    .steps
                    .iter()
                    .map(|step| pb::RatePhase {
                        rate: step.level,
                        duration_ms: ms(step.duration),
                        ramp_ms: ms(step.ramp),
                    })
                    .collect(),
                process: process as i32,
                burstiness,
                max_concurrency: slice.max_concurrency.unwrap_or(0),
                schedule_seed,
                stream: slice.index,
                streams,
            })
        }
    };
    pb::Load { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profile::{Overrides, Profile, ProfileError};

    fn profile(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(text, Path::new("p.toml"), &Overrides::default())
    }

    /// Every duration a profile gives the agents reaches them unchanged
    /// (they read whole milliseconds), and one that would not is refused.
    #[test]
    fn durations_reach_the_agents_exactly() {
        let closed = |text: &str| {
            let p = profile(text).expect("a valid profile");
            let slices = crate::plan::slices(&p, 2).expect("two slices");
            let Some(pb::load::Kind::Closed(c)) = wire_load(&p.load, &slices[1], 2, 0).kind else {
                panic!("a closed-loop load");
            };
            let Model::Users { think, pace } = p.load.model else {
                panic!("users");
            };
            assert_eq!(Duration::from_millis(c.think_ms), think);
            assert_eq!(Duration::from_millis(c.pace_ms), pace.unwrap_or(Duration::ZERO));
            assert_eq!(c.phases.len(), p.load.steps.len());
            for (phase, step) in c.phases.iter().zip(&p.load.steps) {
                assert_eq!(Duration::from_millis(phase.duration_ms), step.duration);
                assert_eq!(Duration::from_millis(phase.ramp_ms), step.ramp);
            }
            c
        };
        let c = closed(
            "[load]\npace = \"1250ms\"\nstages = [\n  { users = 4, duration = \"1m30s\", ramp = \"1.5s\" },\n  { users = 8, duration = \"1.125s\" },\n]\n[report]\ninterval = \"125ms\"\n",
        );
        assert_eq!((c.pace_ms, c.phases[1].duration_ms), (1_250, 1_125));
        assert_eq!(closed("[load]\nusers = 2\nthink_time = \"2.5s\"\n").think_ms, 2_500);

        for (key, value) in [
            ("load.pace", "[load]\nusers = 2\npace = \"500us\"\n"),
            ("load.think_time", "[load]\nusers = 2\nthink_time = \"1.5ms\"\n"),
            ("load.duration", "[load]\nrate = 2\nduration = \"2000.5ms\"\n"),
            ("target.timeout", "[load]\nusers = 2\n[target]\ntimeout = \"0.9ms\"\n"),
            (
                "report.interval",
                "[load]\nusers = 2\n[report]\ninterval = \"1.0001s\"\n",
            ),
        ] {
            let Err(ProfileError::Invalid { problems, .. }) = profile(value) else {
                panic!("{key}: a sub-millisecond duration was accepted");
            };
            assert_eq!(problems.len(), 1, "{key}: {problems:?}");
            assert_eq!(problems[0].key, key);
            assert!(
                problems[0].message.contains("whole milliseconds"),
                "{}",
                problems[0].message
            );
        }
    }
}
