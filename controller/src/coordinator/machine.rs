//! The coordinator's decisions as a state machine: inputs in, actions
//! out, and no I/O. It admits agents, hands out assignments, holds the
//! start barrier, takes reports in (as entries for the writer, which logs
//! each durably before acknowledging it), lets an agent whose stream broke
//! resume its session, declares agents lost once they have been out of
//! contact for `agents.lost_after`, and decides when the run is over.
//!
//! Time comes in with every input ([`Now`]), so that tests drive it on a
//! paused clock; the shell (`coordinator::run`) turns connections, timers
//! and interrupts into [`Input`]s and carries out the [`Action`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_proto::PROTOCOL_VERSION;
use stampede_proto::pb::{self, agent_message, controller_message};
use tokio::time::Instant;
use tonic::Status;

use super::{Setup, assignment, service};
use crate::profile::OnAgentLoss;
use crate::report::progress::Stop;
use crate::results::log::{End, Entry, FinishedEntry, Joined, ReportEntry};

/// A gap this long between two ticks means the controller itself did not
/// run (stopped, or starved): the agents' silence during it is not theirs.
pub(crate) const STALL: Duration = Duration::from_secs(1);
/// Slack after the planned end of the load before agents are told to stop.
const OVERRUN: Duration = Duration::from_secs(10);
/// How long agents get to report after a stop before the run is closed
/// without them.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The time of an input, on both clocks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// Monotonic: every limit is measured on it.
    pub(crate) mono: Instant,
    /// Wall clock: the start instant agents convert to their own clocks.
    pub(crate) wall: SystemTime,
}

impl Now {
    /// This moment.
    pub(crate) fn current() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What happens to the coordinator.
#[derive(Debug)]
pub(crate) enum Input {
    /// A new agent stream.
    Connected { conn: u64, peer: Option<SocketAddr> },
    /// A message on stream `conn`.
    Message { conn: u64, message: Box<pb::AgentMessage> },
    /// Stream `conn` ended, with the transport's reason if it broke.
    Closed { conn: u64, reason: Option<String> },
    /// Time to tell every agent the controller is alive.
    Heartbeat,
    /// Time passes: the watchdog's tick, or the wake-up the machine asked
    /// for ([`Machine::wake_at`]).
    Tick,
    /// The operator interrupted the run: once to let in-flight requests
    /// finish, again (`abort`) to abandon them.
    Interrupt { abort: bool },
    /// A threshold with `abort` broke, judged on what was recorded.
    Breach(String),
}

/// What the shell is to do, in order.
#[derive(Debug)]
pub(crate) enum Action {
    /// Queue `kind` on stream `conn` without waiting (an agent that does
    /// not read its stream must not stall the run).
    Send {
        conn: u64,
        kind: Box<controller_message::Kind>,
    },
    /// End stream `conn`: with the refusal's status, or plainly.
    HangUp { conn: u64, refusal: Option<Status> },
    /// Append `entry` to the run log durably and apply it; then, when
    /// given, send the acknowledgement on stream `conn`.
    Record {
        entry: Box<Entry>,
        ack: Option<(u64, pb::ReportAck)>,
    },
    /// The load was stopped after it started: tell the live view, whose
    /// later intervals are the drain.
    Stopped(Stop),
}

/// How an agent's part stands, as far as the coordinator is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Running,
    Finished,
    /// Lost, or failed: it takes no more part.
    Over(String),
}

/// An agent's session.
#[derive(Debug)]
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
    began: bool,
    part: Part,
    /// When it was last heard from: its last contact.
    heard: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Joining,
    Running,
    Stopping,
}

/// The coordinator's state.
pub(crate) struct Machine {
    setup: Setup,
    /// Open streams, and the agent each speaks for once known.
    conns: HashMap<u64, (Option<u32>, Option<SocketAddr>)>,
    slots: Vec<Option<Slot>>,
    phase: Phase,
    deadline: Instant,
    started: Option<Instant>,
    interrupted: bool,
    forced: bool,
    aborted: Option<String>,
    failure: Option<String>,
    /// A threshold with `abort` broke: why.
    stopped_by: Option<String>,
    /// The run cannot go on; end without waiting for agents.
    give_up: bool,
    /// The last input's time, to notice the controller's own stalls.
    last_tick: Instant,
    beats: u64,
    out: Vec<Action>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn unix(t: SystemTime, unit: fn(&Duration) -> u128) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(unit(&d)).unwrap_or(u64::MAX))
}

impl Machine {
    /// A coordinator for `setup`, waiting for its agents from `now`.
    pub(crate) fn new(setup: Setup, now: Instant) -> Machine {
        Machine {
            deadline: now + setup.join_timeout,
            slots: (0..setup.slices.len()).map(|_| None).collect(),
            setup,
            conns: HashMap::new(),
            phase: Phase::Joining,
            started: None,
            interrupted: false,
            forced: false,
            aborted: None,
            failure: None,
            stopped_by: None,
            give_up: false,
            last_tick: now,
            beats: 0,
            out: Vec::new(),
        }
    }

    /// Takes `input` at `now`; returns what to do.
    pub(crate) fn step(&mut self, now: Now, input: Input) -> Vec<Action> {
        match input {
            Input::Connected { conn, peer } => {
                self.conns.insert(conn, (None, peer));
            }
            Input::Message { conn, message } => self.message(now, conn, *message),
            Input::Closed { conn, reason } => self.closed(now, conn, reason),
            Input::Heartbeat => {
                self.beats += 1;
                let beat = pb::Heartbeat { sequence: self.beats };
                self.broadcast(controller_message::Kind::Heartbeat(beat));
            }
            Input::Tick => {
                // After a stall every timer is due at once: the stall is
                // noticed first, and no silence is blamed on an agent.
                if !self.own_stall(now.mono) {
                    self.watch(now.mono);
                    if now.mono >= self.deadline {
                        self.overdue(now.mono);
                    }
                }
            }
            Input::Interrupt { abort: false } if !self.interrupted => {
                self.interrupted = true;
                let why = "interrupted; in-flight requests may finish (interrupt again to abandon them)";
                self.stop(now.mono, why, false);
            }
            Input::Interrupt { abort: true } if !self.forced => {
                self.forced = true;
                self.interrupted = true;
                self.stop(now.mono, "interrupted again; abandoning in-flight requests", true);
            }
            Input::Interrupt { .. } => {}
            Input::Breach(why) => {
                if self.stopped_by.is_none() && self.phase == Phase::Running {
                    // Logged once, by `stop`.
                    self.stopped_by = Some(why.clone());
                    self.stop(now.mono, &why, true);
                }
            }
        }
        std::mem::take(&mut self.out)
    }

    /// When the machine next needs a [`Input::Tick`]: the first agent
    /// that could be lost, or the run's deadline.
    pub(crate) fn wake_at(&self) -> Instant {
        let limit = self.setup.liveness.lost_after;
        self.running()
            .map(|s| s.heard + limit)
            .min()
            .map_or(self.deadline, |silence| silence.min(self.deadline))
    }

    /// How often to send heartbeats.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.setup.liveness.heartbeat
    }

    /// Every agent has finished or been lost, or the run cannot go on.
    pub(crate) fn done(&self) -> bool {
        self.give_up
            || self
                .slots
                .iter()
                .all(|s| s.as_ref().is_some_and(|s| s.part != Part::Running))
    }

    /// How the run ended.
    pub(crate) fn end(&self) -> End {
        End {
            interrupted: self.interrupted,
            aborted: self.aborted.clone(),
            failure: self.failure.clone(),
            stopped_by: self.stopped_by.clone(),
            metrics_push: None,
        }
    }

    fn running(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten().filter(|s| s.part == Part::Running)
    }

    fn send(&mut self, conn: u64, kind: controller_message::Kind) {
        self.out.push(Action::Send {
            conn,
            kind: Box::new(kind),
        });
    }

    fn broadcast(&mut self, kind: controller_message::Kind) {
        let conns: Vec<u64> = self.running().map(|s| s.conn).collect();
        for conn in conns {
            self.send(conn, kind.clone());
        }
    }

    fn record(&mut self, entry: Entry) {
        self.out.push(Action::Record {
            entry: Box::new(entry),
            ack: None,
        });
    }

    fn hang_up(&mut self, conn: u64) {
        self.out.push(Action::HangUp { conn, refusal: None });
    }

    fn refuse(&mut self, conn: u64, status: Status) {
        let peer = self.conns.get(&conn).and_then(|c| c.1);
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        tracing::warn!("refused an agent{from}: {}", status.message());
        self.out.push(Action::HangUp {
            conn,
            refusal: Some(status),
        });
    }

    fn message(&mut self, now: Now, conn: u64, message: pb::AgentMessage) {
        let Some(kind) = message.kind else { return };
        let Some(&(agent, _)) = self.conns.get(&conn) else {
            return;
        };
        if let Some(i) = agent
            && let Some(slot) = self.slots[i as usize].as_mut()
            && slot.conn == conn
        {
            slot.heard = now.mono;
        }
        match (kind, agent) {
            (agent_message::Kind::Hello(hello), None) if hello.resume.is_some() => self.resume(now.mono, conn, hello),
            (agent_message::Kind::Hello(hello), None) => self.hello(now.mono, conn, hello),
            (_, None) => self.refuse(conn, Status::failed_precondition("the first message must be Hello")),
            (agent_message::Kind::Hello(_), Some(_)) => {
                self.refuse(conn, Status::failed_precondition("Hello was already received"));
            }
            (agent_message::Kind::Ready(r), Some(i)) => self.ready(now, i, &r),
            (agent_message::Kind::Began(b), Some(i)) => {
                // Sent again on a resumed stream: taken once.
                if let Some(slot) = self.slots[i as usize].as_mut()
                    && !slot.began
                {
                    slot.began = true;
                    self.record(Entry::Began {
                        agent_index: i,
                        at_us: b.started_at_us,
                    });
                }
            }
            (agent_message::Kind::Report(r), Some(i)) => {
                // The writer logs it (once: a sequence number already taken
                // in is not logged again) and then acknowledges it.
                let ack = Some((
                    conn,
                    pb::ReportAck {
                        sequence: r.sequence,
                        finished: false,
                    },
                ));
                let entry = Box::new(Entry::Report(ReportEntry {
                    agent: self.name(i),
                    agent_index: i,
                    report: r,
                }));
                self.out.push(Action::Record { entry, ack });
            }
            (agent_message::Kind::Finished(f), Some(i)) => self.finished(conn, i, f),
            (agent_message::Kind::Failed(f), Some(i)) => self.failed(now.mono, i, f.reason),
            (agent_message::Kind::Heartbeat(_) | agent_message::Kind::ClockProbe(_), Some(_)) => {}
        }
    }

    fn closed(&mut self, now: Now, conn: u64, reason: Option<String>) {
        let Some((Some(i), _)) = self.conns.remove(&conn) else {
            return;
        };
        let current = self.slots[i as usize]
            .as_ref()
            .is_some_and(|s| s.conn == conn && s.part == Part::Running);
        if !current {
            return;
        }
        let why = reason.map_or_else(|| "its stream ended".to_owned(), |r| format!("its stream broke: {r}"));
        if self.phase == Phase::Joining {
            return self.lose(now.mono, i, why);
        }
        // After the start a session outlives its stream: the agent dials
        // again and resumes it, or is lost once it has been out of contact
        // for the limit.
        let limit = self.setup.liveness.lost_after;
        if let Some(slot) = self.slots[i as usize].as_mut() {
            tracing::warn!(agent = %slot.name, "{why}; waiting up to {limit:?} from its last contact for it to resume");
            slot.broke = Some(why);
        }
    }

    fn hello(&mut self, now: Instant, conn: u64, hello: pb::Hello) {
        if let Some(refusal) = version_refusal(&hello) {
            return self.refuse(conn, refusal);
        }
        if self.phase != Phase::Joining {
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
            c.0 = Some(index as u32);
            c.1
        });
        self.record(Entry::Joined(Joined {
            agent_index: index as u32,
            name: hello.name.clone(),
            users: slice.peak_users(),
            version: hello.agent_version,
            peer: peer.map(|p| p.to_string()),
            gpu_note: (!hello.gpu.is_empty()).then_some(hello.gpu),
        }));
        // 256 random bits, from the trace id generator.
        let secret = format!("{}{}", stampede_otel::new_trace_id(), stampede_otel::new_trace_id());
        self.slots[index] = Some(Slot {
            name: hello.name.clone(),
            index: index as u32,
            conn,
            broke: None,
            secret: secret.clone(),
            ready: false,
            began: false,
            part: Part::Running,
            heard: now,
        });
        let joined = self.slots.iter().flatten().count();
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        if self.setup.local {
            tracing::debug!(agent = %hello.name, index, users = slice.peak_users(), "agent joined{from} ({joined}/{})", self.slots.len());
        } else {
            tracing::info!(agent = %hello.name, index, users = slice.peak_users(), "agent joined{from} ({joined}/{})", self.slots.len());
        }
        let assignment = pb::Assignment {
            session_secret: secret,
            ..assignment(&self.setup, &slice)
        };
        self.send(conn, controller_message::Kind::Assignment(assignment));
    }

    /// A new stream takes up the session of an agent whose stream broke.
    fn resume(&mut self, now: Instant, conn: u64, hello: pb::Hello) {
        let resume = hello.resume.clone().unwrap_or_default();
        if let Some(refusal) = version_refusal(&hello) {
            return self.refuse(conn, refusal);
        }
        if resume.run_id != self.setup.run_id {
            let text = format!(
                "this controller runs {}, not {}: a session cannot be resumed with another run",
                self.setup.run_id, resume.run_id
            );
            return self.refuse(conn, Status::failed_precondition(text));
        }
        let Some(slot) = self.slots.iter().flatten().find(|s| s.name == hello.name) else {
            let text = format!("no agent named {:?} has a session in this run", hello.name);
            return self.refuse(conn, Status::not_found(text));
        };
        if !service::same(resume.secret.as_bytes(), slot.secret.as_bytes()) {
            let text = format!("wrong session secret for agent {:?}", hello.name);
            return self.refuse(conn, Status::permission_denied(text));
        }
        let (index, old, heard) = (slot.index, slot.conn, slot.heard);
        match slot.part.clone() {
            Part::Finished => {
                // Its Finished arrived and the goodbye did not: say so. What
                // it sends again on this stream is taken in once, as ever.
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.0 = Some(index);
                }
                self.send(conn, controller_message::Kind::Resumed(pb::Resumed { finished: true }));
                return self.hang_up(conn);
            }
            Part::Over(why) => {
                let text = format!(
                    "agent {:?} was declared lost ({why}); this run takes nothing more from it",
                    hello.name
                );
                return self.refuse(conn, Status::failed_precondition(text));
            }
            Part::Running => {}
        }
        if old != conn {
            self.hang_up(old);
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.0 = Some(index);
        }
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.conn = conn;
            slot.broke = None;
            slot.heard = now;
        }
        let gap = now.saturating_duration_since(heard);
        tracing::info!(agent = %hello.name, "agent resumed its session after {gap:.1?} out of contact");
        self.send(conn, controller_message::Kind::Resumed(pb::Resumed { finished: false }));
    }

    fn ready(&mut self, now: Now, index: u32, ready: &pb::Ready) {
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.ready = true;
            let measured = ready.clock_rtt_us > 0;
            self.record(Entry::Ready {
                agent_index: index,
                clock_offset_us: measured.then_some(ready.clock_offset_us),
                clock_rtt_us: measured.then_some(ready.clock_rtt_us),
            });
        }
        let all_ready = self.slots.iter().all(|s| s.as_ref().is_some_and(|s| s.ready));
        if self.phase != Phase::Joining || !all_ready {
            return;
        }
        let delay = self.setup.start_delay;
        let start_at_us = unix(now.wall, Duration::as_micros) + micros(delay);
        self.phase = Phase::Running;
        self.started = Some(now.mono + delay);
        self.record(Entry::Started {
            unix_ns: unix(now.wall + delay, Duration::as_nanos),
            start_at_us,
        });
        self.deadline = now.mono + delay + self.setup.load.duration() + self.setup.load.drain + OVERRUN;
        if self.setup.local {
            tracing::debug!(agents = self.slots.len(), "all agents ready; starting in {delay:?}");
        } else {
            tracing::info!(agents = self.slots.len(), "all agents ready; starting in {delay:?}");
        }
        let start = pb::Start {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            start_at_us,
        };
        self.broadcast(controller_message::Kind::Start(start));
    }

    fn finished(&mut self, conn: u64, index: u32, wire: pb::Finished) {
        let Some(slot) = self.slots[index as usize].as_mut() else {
            return;
        };
        if slot.part != Part::Running {
            // Sent again on a resumed stream, or after the agent was lost.
            return self.hang_up(conn);
        }
        slot.part = Part::Finished;
        // Once the writer has logged the totals it tells the agent its
        // part is complete; then the stream ends.
        let ack = pb::ReportAck {
            sequence: wire.last_sequence,
            finished: true,
        };
        let entry = Entry::Finished(FinishedEntry {
            agent: slot.name.clone(),
            agent_index: index,
            finished: wire,
        });
        self.out.push(Action::Record {
            entry: Box::new(entry),
            ack: Some((conn, ack)),
        });
        self.hang_up(conn);
    }

    fn failed(&mut self, now: Instant, index: u32, reason: String) {
        let name = self.name(index);
        tracing::error!(agent = %name, "agent cannot carry out its assignment: {reason}");
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.part = Part::Over(reason.clone());
            // Closing its stream tells it the reason was heard.
            let conn = slot.conn;
            self.hang_up(conn);
        }
        self.record(Entry::Failed {
            agent_index: index,
            reason: reason.clone(),
        });
        self.failure = Some(format!("agent {name} cannot carry out its assignment: {reason}"));
        self.stop(now, "an agent failed", true);
    }

    /// Declares agent `index` lost as of its last contact: keeps everything
    /// it reported, tells it to stop, ends its stream, and applies the
    /// profile's policy. Before the start, frees its place instead.
    fn lose(&mut self, now: Instant, index: u32, reason: String) {
        let Some(slot) = self.slots[index as usize].as_mut() else {
            return;
        };
        let (name, conn, heard) = (slot.name.clone(), slot.conn, slot.heard);
        if self.phase == Phase::Joining {
            tracing::warn!(agent = %name, "agent left before the start ({reason}); its place is open");
            self.record(Entry::Left {
                agent_index: index,
                reason,
            });
            self.slots[index as usize] = None;
            return self.hang_up(conn);
        }
        slot.part = Part::Over(reason.clone());
        tracing::warn!(agent = %name, "agent lost: {reason}");
        let after_start = self.started.map(|s| heard.saturating_duration_since(s));
        self.record(Entry::Lost {
            agent_index: index,
            reason: reason.clone(),
            after_start_us: after_start.map(micros),
        });
        let stop = pb::Stop {
            reason: format!("this agent was declared lost: {reason}"),
            abort: true,
        };
        self.send(conn, controller_message::Kind::Stop(stop));
        self.hang_up(conn);
        if self.setup.on_agent_loss == OnAgentLoss::Abort && self.aborted.is_none() && !self.interrupted {
            let why = format!("agent {name} was lost ({reason}) and agents.on_agent_loss is \"abort\"");
            self.aborted = Some(why.clone());
            self.stop(now, &why, true);
        }
    }

    /// Declares agents out of contact for `lost_after` lost.
    fn watch(&mut self, now: Instant) {
        let limit = self.setup.liveness.lost_after;
        let gone: Vec<(u32, String)> = self
            .running()
            .filter(|s| now.saturating_duration_since(s.heard) >= limit)
            .map(|s| {
                let why = match &s.broke {
                    Some(broke) => format!("{broke}, and it did not resume within {limit:?}"),
                    None => format!("silent for {limit:?}"),
                };
                (s.index, why)
            })
            .collect();
        for (index, why) in gone {
            self.lose(now, index, why);
        }
    }

    /// Whether the controller itself did not run for a while since the
    /// last input (stopped, or starved of CPU; the watchdog's tick keeps
    /// inputs coming). No agent could be heard in that gap, so each gets a
    /// fresh `lost_after` from now, and the run's deadline moves by the
    /// gap.
    fn own_stall(&mut self, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last_tick);
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

    fn stop(&mut self, now: Instant, reason: &str, abort: bool) {
        if self.stopped_by.as_deref() == Some(reason) {
            tracing::warn!("stopped the load: {reason}");
        } else {
            tracing::info!("stopped the load: {reason}");
        }
        if let Some(started) = self.started {
            self.out.push(Action::Stopped(Stop {
                after: now.saturating_duration_since(started),
                abort,
            }));
        }
        self.broadcast(controller_message::Kind::Stop(pb::Stop {
            reason: reason.to_owned(),
            abort,
        }));
        if self.phase == Phase::Joining {
            // Nothing ran: there is nothing to wait for.
            self.failure
                .get_or_insert_with(|| format!("the run was stopped before it started: {reason}"));
            self.give_up = true;
        }
        // An agent out of contact has until it would be lost to resume and
        // deliver.
        let grace = STOP_GRACE.max(self.setup.liveness.lost_after);
        let grace = if abort { grace } else { self.setup.load.drain + grace };
        self.phase = Phase::Stopping;
        self.deadline = now + grace;
    }

    fn overdue(&mut self, now: Instant) {
        match self.phase {
            Phase::Joining => {
                let joined = self.slots.iter().flatten().count();
                let ready = self.slots.iter().flatten().filter(|s| s.ready).count();
                self.failure = Some(format!(
                    "only {joined} of {} agents joined and {ready} were ready within {:?}",
                    self.slots.len(),
                    self.setup.join_timeout
                ));
                self.stop(now, "not every agent joined in time", true);
            }
            Phase::Running => self.stop(now, "the load overran its duration and drain time", true),
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
}

/// The refusal of an agent that speaks another protocol version.
fn version_refusal(hello: &pb::Hello) -> Option<Status> {
    (hello.protocol_version != PROTOCOL_VERSION).then(|| {
        Status::failed_precondition(format!(
            "protocol version mismatch: agent {:?} speaks version {}, this controller speaks version {PROTOCOL_VERSION}",
            hello.name, hello.protocol_version
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profile::{Overrides, Profile};

    /// Two agents (users 2 and 2), a 10 s load, a 2 s drain, the default
    /// liveness limits.
    fn setup(on_loss: &str) -> Setup {
        let text =
            format!("[load]\nusers = 4\nduration = \"10s\"\ndrain = \"2s\"\n[agents]\non_agent_loss = \"{on_loss}\"\n");
        let p = Profile::parse(&text, Path::new("p.toml"), &Overrides::default()).expect("a valid profile");
        Setup::two_agents(&p)
    }

    /// A machine on a clock the test moves.
    struct Run {
        m: Machine,
        t0: Instant,
        at: Duration,
    }

    impl Run {
        fn new(on_loss: &str) -> Run {
            let t0 = Instant::now();
            Run {
                m: Machine::new(setup(on_loss), t0),
                t0,
                at: Duration::ZERO,
            }
        }

        /// Moves the clock to `at` after the machine began, feeding it the
        /// watchdog's ticks on the way as the shell would.
        fn to(&mut self, at: Duration) -> Vec<Action> {
            let mut actions = Vec::new();
            while self.at + Duration::from_millis(250) < at {
                self.at += Duration::from_millis(250);
                actions.extend(self.input(Input::Tick));
            }
            self.at = at;
            actions.extend(self.input(Input::Tick));
            actions
        }

        /// Moves the clock to `at` a second at a time, a heartbeat from each
        /// of `conns` every second.
        fn alive_to(&mut self, at: Duration, conns: &[u64]) -> Vec<Action> {
            let mut actions = Vec::new();
            while self.at < at {
                for (sequence, &conn) in conns.iter().enumerate() {
                    let beat = pb::Heartbeat {
                        sequence: sequence as u64,
                    };
                    actions.extend(self.message(conn, agent_message::Kind::Heartbeat(beat)));
                }
                let next = (self.at + Duration::from_secs(1)).min(at);
                actions.extend(self.to(next));
            }
            actions
        }

        /// Moves the clock to `at` with no tick between: the controller
        /// itself did not run.
        fn jump(&mut self, at: Duration) -> Vec<Action> {
            self.at = at;
            self.input(Input::Tick)
        }

        fn input(&mut self, input: Input) -> Vec<Action> {
            let now = Now {
                mono: self.t0 + self.at,
                wall: UNIX_EPOCH + Duration::from_secs(1_800_000_000) + self.at,
            };
            self.m.step(now, input)
        }

        fn message(&mut self, conn: u64, kind: agent_message::Kind) -> Vec<Action> {
            let message = Box::new(pb::AgentMessage { kind: Some(kind) });
            self.input(Input::Message { conn, message })
        }

        /// Agent `name` dials on `conn` and says hello; returns the
        /// session secret of its assignment.
        fn join(&mut self, conn: u64, name: &str) -> String {
            self.input(Input::Connected { conn, peer: None });
            let actions = self.message(conn, agent_message::Kind::Hello(hello(name, None)));
            assert!(
                matches!(recorded(&actions).first(), Some(Entry::Joined(j)) if j.name == name),
                "{actions:?}"
            );
            match &actions[1] {
                Action::Send { conn: to, kind } if *to == conn => {
                    let controller_message::Kind::Assignment(a) = kind.as_ref() else {
                        panic!("expected an assignment, got {kind:?}");
                    };
                    let l = a.liveness.expect("liveness limits travel with the assignment");
                    assert_eq!(
                        (l.heartbeat_ms, l.dead_man_ms, l.lost_after_ms),
                        (1_000, 10_000, 10_000)
                    );
                    assert_eq!(a.session_secret.len(), 64);
                    a.session_secret.clone()
                }
                other => panic!("expected an assignment, got {other:?}"),
            }
        }

        /// Both agents join and are ready; the load starts at 1.25 s.
        fn started(on_loss: &str) -> (Run, [String; 2]) {
            let mut r = Run::new(on_loss);
            let secrets = [r.join(1, "a"), r.join(2, "b")];
            r.to(Duration::from_millis(500));
            assert!(
                sends(&r.message(1, ready()), |k| matches!(
                    k,
                    controller_message::Kind::Start(_)
                ))
                .is_empty()
            );
            r.to(Duration::from_secs(1));
            let actions = r.message(2, ready());
            let starts = sends(&actions, |k| matches!(k, controller_message::Kind::Start(_)));
            assert_eq!(starts, [1, 2], "every agent is started at once: {actions:?}");
            assert!(recorded(&actions).iter().any(|e| matches!(e, Entry::Started { .. })));
            (r, secrets)
        }
    }

    fn hello(name: &str, resume: Option<pb::Resume>) -> pb::Hello {
        pb::Hello {
            name: name.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: vec!["load:users".to_owned(), "api:openai-chat".to_owned()],
            resume,
            ..pb::Hello::default()
        }
    }

    fn ready() -> agent_message::Kind {
        agent_message::Kind::Ready(pb::Ready::default())
    }

    fn report(sequence: u64) -> agent_message::Kind {
        agent_message::Kind::Report(pb::Report {
            interval: sequence - 1,
            sequence,
            ..pb::Report::default()
        })
    }

    /// The streams each matching message goes to.
    fn sends(actions: &[Action], f: impl Fn(&controller_message::Kind) -> bool) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send { conn, kind } if f(kind) => Some(*conn),
                _ => None,
            })
            .collect()
    }

    /// The entries recorded, in order.
    fn recorded(actions: &[Action]) -> Vec<&Entry> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Record { entry, .. } => Some(entry.as_ref()),
                _ => None,
            })
            .collect()
    }

    fn lost(actions: &[Action]) -> Vec<(u32, String, Option<u64>)> {
        recorded(actions)
            .into_iter()
            .filter_map(|e| match e {
                Entry::Lost {
                    agent_index,
                    reason,
                    after_start_us,
                } => Some((*agent_index, reason.clone(), *after_start_us)),
                _ => None,
            })
            .collect()
    }

    fn refusal(actions: &[Action]) -> Option<String> {
        actions.iter().find_map(|a| match a {
            Action::HangUp {
                refusal: Some(status), ..
            } => Some(status.message().to_owned()),
            _ => None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn join_refuses_what_cannot_take_part() {
        let mut r = Run::new("abort");
        r.join(1, "a");
        r.input(Input::Connected { conn: 2, peer: None });
        let twin = r.message(2, agent_message::Kind::Hello(hello("a", None)));
        assert_eq!(
            refusal(&twin).as_deref(),
            Some("an agent named \"a\" has already joined this run")
        );
        r.input(Input::Connected { conn: 3, peer: None });
        let old = r.message(
            3,
            agent_message::Kind::Hello(pb::Hello {
                protocol_version: 1,
                ..hello("c", None)
            }),
        );
        assert!(refusal(&old).is_some_and(|m| m.contains("speaks version 1")), "{old:?}");
        r.input(Input::Connected { conn: 4, peer: None });
        let early = r.message(4, report(1));
        assert_eq!(refusal(&early).as_deref(), Some("the first message must be Hello"));
        // An agent that leaves before the start frees its place.
        let left = r.input(Input::Closed { conn: 1, reason: None });
        assert!(
            matches!(recorded(&left).first(), Some(Entry::Left { agent_index: 0, .. })),
            "{left:?}"
        );
        r.join(5, "c");
        assert!(!r.m.done());
    }

    #[tokio::test(start_paused = true)]
    async fn not_every_agent_joining_in_time_fails_the_run() {
        let mut r = Run::new("abort");
        r.join(1, "a");
        assert!(r.alive_to(Duration::from_secs(29), &[1]).is_empty());
        assert!(!r.m.done());
        r.to(Duration::from_secs(30));
        assert!(r.m.done());
        let end = r.m.end();
        assert_eq!(
            end.failure.as_deref(),
            Some("only 1 of 2 agents joined and 0 were ready within 30s")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reports_are_recorded_then_acknowledged_and_duplicates_taken_once() {
        let (mut r, _) = Run::started("abort");
        r.to(Duration::from_millis(1_300));
        let began = r.message(1, agent_message::Kind::Began(pb::Began { started_at_us: 1 }));
        assert_eq!(began.len(), 1);
        // A resumed stream sends Began again: taken once.
        assert!(
            r.message(1, agent_message::Kind::Began(pb::Began { started_at_us: 1 }))
                .is_empty()
        );
        let actions = r.message(1, report(1));
        match &actions[..] {
            [
                Action::Record {
                    entry,
                    ack: Some((1, ack)),
                },
            ] if ack.sequence == 1 && !ack.finished => {
                assert!(
                    matches!(entry.as_ref(), Entry::Report(e) if e.agent == "a"),
                    "{entry:?}"
                );
            }
            other => panic!("a report is recorded with its acknowledgement to follow: {other:?}"),
        }
        // The same report again (sent before a break and after it): the
        // writer's ledger takes each sequence once, and acknowledges it
        // again so that the agent can let it go.
        let again = r.message(1, report(1));
        assert!(
            matches!(&again[..], [Action::Record { ack: Some((1, ack)), .. }] if ack.sequence == 1),
            "{again:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_gap_shorter_than_lost_after_is_ridden_out_and_the_session_resumed() {
        let (mut r, secrets) = Run::started("abort");
        r.to(Duration::from_secs(3));
        r.message(1, report(1));
        // Stream 1 breaks at 3 s; agent "a" is silent from then on.
        assert!(
            r.input(Input::Closed {
                conn: 1,
                reason: Some("reset".to_owned())
            })
            .is_empty()
        );
        for s in 4..=12 {
            r.message(2, report(s - 3));
            assert!(lost(&r.to(Duration::from_secs(s))).is_empty(), "lost at {s} s");
        }
        // A stream with the wrong secret takes nothing up.
        r.input(Input::Connected { conn: 3, peer: None });
        let wrong = pb::Resume {
            run_id: "run-1".to_owned(),
            secret: "0".repeat(64),
        };
        let refused = r.message(3, agent_message::Kind::Hello(hello("a", Some(wrong))));
        assert_eq!(
            refusal(&refused).as_deref(),
            Some("wrong session secret for agent \"a\"")
        );
        // The right one, 9.5 s after its last contact: resumed.
        r.to(Duration::from_millis(12_500));
        r.input(Input::Connected { conn: 4, peer: None });
        let resume = pb::Resume {
            run_id: "run-1".to_owned(),
            secret: secrets[0].clone(),
        };
        let resumed = r.message(4, agent_message::Kind::Hello(hello("a", Some(resume))));
        let confirmed = sends(
            &resumed,
            |k| matches!(k, controller_message::Kind::Resumed(r) if !r.finished),
        );
        assert_eq!(confirmed, [4], "{resumed:?}");
        // What it sends again is recorded and acknowledged on the new stream.
        let again = r.message(4, report(1));
        assert!(
            matches!(&again[..], [Action::Record { ack: Some((4, ack)), .. }] if ack.sequence == 1),
            "{again:?}"
        );
        assert!(lost(&r.to(Duration::from_secs(20))).is_empty());
        // Heartbeats go to the new stream.
        let beats = r.input(Input::Heartbeat);
        assert_eq!(
            sends(&beats, |k| matches!(k, controller_message::Kind::Heartbeat(_))),
            [4, 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_out_of_contact_for_lost_after_is_lost_as_of_its_last_contact() {
        let (mut r, secrets) = Run::started("continue");
        r.to(Duration::from_secs(4));
        r.message(1, report(1));
        r.message(2, report(1));
        // Agent "a" falls silent at 4 s, 2.75 s after the start; "b" goes on.
        for s in 5..14 {
            r.message(2, agent_message::Kind::Heartbeat(pb::Heartbeat { sequence: s }));
            assert!(lost(&r.to(Duration::from_secs(s))).is_empty(), "lost at {s} s");
        }
        let actions = r.to(Duration::from_secs(14));
        assert_eq!(
            lost(&actions),
            [(0, "silent for 10s".to_owned(), Some(2_750_000))],
            "lost 10 s after its last contact, as of that contact"
        );
        assert_eq!(
            sends(&actions, |k| matches!(k, controller_message::Kind::Stop(_))),
            [1],
            "with \"continue\" only the lost agent is told to stop"
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::HangUp { conn: 1, refusal: None }))
        );
        // Once lost, it cannot resume.
        r.input(Input::Connected { conn: 3, peer: None });
        let resume = pb::Resume {
            run_id: "run-1".to_owned(),
            secret: secrets[0].clone(),
        };
        let refused = r.message(3, agent_message::Kind::Hello(hello("a", Some(resume))));
        assert!(
            refusal(&refused).is_some_and(|m| m.contains("was declared lost")),
            "{refused:?}"
        );
        assert!(!r.m.done());
        assert!(r.m.end().aborted.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn with_abort_a_loss_stops_every_agent() {
        let (mut r, _) = Run::started("abort");
        // "b"'s stream ends at 1 s and it never resumes; "a" stays.
        r.input(Input::Closed { conn: 2, reason: None });
        let actions = r.alive_to(Duration::from_secs(11), &[1]);
        assert_eq!(lost(&actions).len(), 1);
        let stops = sends(&actions, |k| matches!(k, controller_message::Kind::Stop(s) if s.abort));
        assert!(stops.contains(&1), "{actions:?}");
        assert!(
            r.m.end()
                .aborted
                .is_some_and(|a| a.contains("agents.on_agent_loss is \"abort\""))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_controllers_own_stall_is_not_blamed_on_the_agents() {
        let (mut r, _) = Run::started("abort");
        r.to(Duration::from_secs(3));
        // The controller does not run for 60 s: every agent is silent, but
        // none is lost; each gets a fresh limit from now.
        let actions = r.jump(Duration::from_secs(63));
        assert!(actions.is_empty(), "{actions:?}");
        assert!(lost(&r.to(Duration::from_secs(72))).is_empty());
        assert_eq!(
            lost(&r.to(Duration::from_secs(73))).len(),
            2,
            "then silence counts again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_records_the_totals_then_ends_the_stream_and_the_run() {
        let (mut r, secrets) = Run::started("abort");
        r.alive_to(Duration::from_secs(12), &[1, 2]);
        let finished = agent_message::Kind::Finished(pb::Finished::default());
        let actions = r.message(1, finished.clone());
        assert!(
            matches!(
                &actions[..],
                [Action::Record { entry, ack: Some((1, ack)) }, Action::HangUp { conn: 1, refusal: None }]
                    if matches!(entry.as_ref(), Entry::Finished(_)) && ack.finished
            ),
            "{actions:?}"
        );
        // Its goodbye was lost: on resuming it hears it has finished.
        r.input(Input::Connected { conn: 3, peer: None });
        let resume = pb::Resume {
            run_id: "run-1".to_owned(),
            secret: secrets[0].clone(),
        };
        let resumed = r.message(3, agent_message::Kind::Hello(hello("a", Some(resume))));
        assert_eq!(
            sends(
                &resumed,
                |k| matches!(k, controller_message::Kind::Resumed(r) if r.finished)
            ),
            [3]
        );
        // Finished sent again is not recorded again.
        let again = r.message(3, finished.clone());
        assert!(matches!(&again[..], [Action::HangUp { conn: 3, .. }]), "{again:?}");
        assert!(!r.m.done());
        r.message(2, finished);
        assert!(r.m.done());
        assert!(r.m.end().failure.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_lets_requests_finish_and_a_second_abandons_them() {
        let (mut r, _) = Run::started("abort");
        r.to(Duration::from_secs(5));
        let first = r.input(Input::Interrupt { abort: false });
        assert_eq!(
            sends(&first, |k| matches!(k, controller_message::Kind::Stop(s) if !s.abort)),
            [1, 2]
        );
        // The live view hears of it once, with the time into the load
        // (started at 1.25 s).
        let stops: Vec<&Stop> = first
            .iter()
            .filter_map(|a| match a {
                Action::Stopped(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(
            stops,
            [&Stop {
                after: Duration::from_millis(3_750),
                abort: false
            }]
        );
        assert!(r.input(Input::Interrupt { abort: false }).is_empty(), "said once");
        let second = r.input(Input::Interrupt { abort: true });
        assert_eq!(
            sends(&second, |k| matches!(k, controller_message::Kind::Stop(s) if s.abort)),
            [1, 2]
        );
        assert!(r.m.end().interrupted);
        // Agents that never finish are given up after the grace period.
        r.to(Duration::from_secs(16));
        assert!(r.m.done());
    }

    #[tokio::test(start_paused = true)]
    async fn a_breached_threshold_stops_the_load_once() {
        let (mut r, _) = Run::started("abort");
        r.to(Duration::from_secs(5));
        let actions = r.input(Input::Breach("ttft_p95 above 100 ms".to_owned()));
        assert_eq!(
            sends(&actions, |k| matches!(k, controller_message::Kind::Stop(s) if s.abort)),
            [1, 2]
        );
        assert!(r.input(Input::Breach("again".to_owned())).is_empty());
        assert_eq!(r.m.end().stopped_by.as_deref(), Some("ttft_p95 above 100 ms"));
    }
}
