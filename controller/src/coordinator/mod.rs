//! The coordinator: one task that owns the run's state. It admits agents,
//! hands out assignments, holds the start barrier, merges reports (writing
//! each to the interval log before acknowledging it), and declares agents
//! lost when their stream ends or they fall silent.

pub(crate) mod service;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_proto::pb::{self, agent_message, controller_message};
use stampede_proto::{Counters, Histograms, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tonic::Status;

use crate::dataset::Prompt;
use crate::merge::{self, Merger, Row, Timeline};
use crate::plan::Slice;
use crate::profile::{Load, Model, OnAgentLoss};
use crate::report::intervals::Log;
use crate::report::live::Live;
use crate::report::progress::Progress;
use crate::run::Interrupt;
use service::{Event, Outbound};

/// How often the controller signals liveness to agents.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// An agent silent this long is lost.
pub const SILENCE: Duration = Duration::from_secs(3);
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
    /// Live metrics to feed, when served.
    pub(crate) live: Option<Live>,
    /// How agents export request spans; `None`: tracing is off.
    pub(crate) trace: Option<pb::Trace>,
}

/// How an agent's part ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEnd {
    /// It sent its totals.
    Finished,
    /// Its stream ended, or it fell silent, before it finished.
    Lost(String),
    /// It said it could not carry out its assignment.
    Failed(String),
    /// It never ended (the run was closed without it).
    Unfinished,
}

/// One agent of the run.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    /// Its name.
    pub name: String,
    /// Its position.
    pub index: u32,
    /// Users it ran.
    pub users: u32,
    /// Its software version.
    pub version: String,
    /// Where it connected from.
    pub peer: Option<SocketAddr>,
    /// How it ended.
    pub end: AgentEnd,
    /// When it was declared lost, after the start.
    pub lost_at: Option<Duration>,
    /// When its load began, controller clock, microseconds since the epoch.
    pub began_at_us: Option<u64>,
    /// Its estimate of controller clock minus its clock, microseconds.
    pub clock_offset_us: Option<i64>,
    /// Round trip of that estimate, microseconds.
    pub clock_rtt_us: Option<u64>,
    /// What its GPU sampler found, when it was asked to sample.
    pub gpu_note: Option<String>,
    /// Its GPU readings, in the order received.
    pub gpu: Vec<pb::GpuSample>,
}

/// What a run collected.
pub struct Collected {
    /// Every merged report.
    pub merger: Merger,
    /// Each agent, by index.
    pub agents: Vec<AgentRecord>,
    /// One row per interval.
    pub rows: Vec<Row>,
    /// When the load began (wall clock, for the summary).
    pub started_at: Option<SystemTime>,
    /// The planned start, controller clock, microseconds since the epoch.
    pub start_at_us: Option<u64>,
    /// The run was interrupted.
    pub interrupted: bool,
    /// The run was aborted because an agent was lost.
    pub aborted: Option<String>,
    /// Why the run could not be carried out, if it could not.
    pub failure: Option<String>,
    /// Reports that could not be decoded.
    pub unreadable: u64,
    /// The slowest requests the agents named, slowest first per metric.
    pub exemplars: Vec<Exemplar>,
    /// Successful requests by prompt class, summed over the agents' final
    /// totals.
    pub classes: BTreeMap<String, ClassTotals>,
}

/// One prompt class's successful requests over the run.
#[derive(Clone, Debug, Default)]
pub struct ClassTotals {
    /// TTFT, ITL, TPOT, E2E, input and output tokens.
    pub histograms: Histograms,
    /// Requests and token totals.
    pub counters: Counters,
}

/// Exemplars kept per metric over the whole run.
pub const EXEMPLARS: usize = 10;

/// One slow request an agent named.
#[derive(Clone, Debug, PartialEq)]
pub struct Exemplar {
    /// The agent.
    pub agent: u32,
    /// TTFT or E2E.
    pub metric: stampede_proto::Metric,
    /// Its value, microseconds.
    pub value_us: u64,
    /// Its trace id.
    pub trace_id: String,
    /// The interval it completed in.
    pub interval: u64,
}

/// Adds an interval's exemplars, keeping the [`EXEMPLARS`] slowest of
/// each metric.
fn keep_exemplars(kept: &mut Vec<Exemplar>, agent: u32, wire: &[pb::Exemplar]) {
    for e in wire {
        let metric = match pb::Metric::try_from(e.metric) {
            Ok(pb::Metric::Ttft) => stampede_proto::Metric::Ttft,
            Ok(pb::Metric::E2e) => stampede_proto::Metric::E2e,
            _ => continue,
        };
        kept.push(Exemplar {
            agent,
            metric,
            value_us: e.value_us,
            trace_id: e.trace_id.clone(),
            interval: e.interval,
        });
    }
    kept.sort_by(|a, b| (a.metric as u8, b.value_us).cmp(&(b.metric as u8, a.value_us)));
    let mut per_metric: Vec<(stampede_proto::Metric, usize)> = Vec::new();
    kept.retain(|e| match per_metric.iter_mut().find(|(m, _)| *m == e.metric) {
        Some((_, n)) => {
            *n += 1;
            *n <= EXEMPLARS
        }
        None => {
            per_metric.push((e.metric, 1));
            true
        }
    });
}

struct Conn {
    /// `None` once the coordinator has ended the stream.
    out: Option<Outbound>,
    agent: Option<u32>,
    peer: Option<SocketAddr>,
}

struct Slot {
    record: AgentRecord,
    conn: u64,
    ready: bool,
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
    merger: Merger,
    log: Log,
    progress: Progress,
    rows: Vec<Row>,
    phase: Phase,
    deadline: Instant,
    started: Option<Instant>,
    started_at: Option<SystemTime>,
    start_at_us: Option<u64>,
    interrupted: bool,
    aborted: Option<String>,
    failure: Option<String>,
    unreadable: u64,
    exemplars: Vec<Exemplar>,
    classes: BTreeMap<String, ClassTotals>,
    /// The run cannot go on; end the loop without waiting for agents.
    give_up: bool,
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
    log: Log,
    progress: Progress,
    interrupt: Interrupt,
) -> Collected {
    let n = setup.slices.len();
    let mut c = Coordinator {
        deadline: Instant::now() + setup.join_timeout,
        merger: Merger::new(n as u32, Timeline::new(&setup.load, setup.interval)),
        slots: (0..n).map(|_| None).collect(),
        setup,
        conns: HashMap::new(),
        log,
        progress,
        rows: Vec::new(),
        phase: Phase::Joining,
        started: None,
        started_at: None,
        start_at_us: None,
        interrupted: false,
        aborted: None,
        failure: None,
        unreadable: 0,
        exemplars: Vec::new(),
        classes: BTreeMap::new(),
        give_up: false,
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
            // Checked when the first silence can complete, not by polling,
            // so that a silent agent is lost the moment it has been silent
            // for SILENCE.
            _ = sleep_until(c.next_silence()), if c.watching() => {
                c.watch();
                c.count_agents();
            }
            _ = sleep_until(c.deadline) => c.overdue(),
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
                .all(|s| s.as_ref().is_some_and(|s| s.record.end != AgentEnd::Unfinished))
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
            if slot.record.end == AgentEnd::Unfinished {
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
                    (agent_message::Kind::Hello(hello), None) => self.hello(conn, hello),
                    (_, None) => self.refuse(conn, Status::failed_precondition("the first message must be Hello")),
                    (agent_message::Kind::Hello(_), Some(_)) => {
                        self.refuse(conn, Status::failed_precondition("Hello was already received"));
                    }
                    (agent_message::Kind::Ready(r), Some(i)) => self.ready(i, &r),
                    (agent_message::Kind::Began(b), Some(i)) => {
                        if let Some(slot) = self.slots[i as usize].as_mut() {
                            slot.record.began_at_us = Some(b.started_at_us);
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
                    .is_some_and(|s| s.conn == conn && s.record.end == AgentEnd::Unfinished);
                if unfinished {
                    let why =
                        reason.map_or_else(|| "its stream ended".to_owned(), |r| format!("its stream broke: {r}"));
                    self.lose(i, why);
                }
            }
        }
    }

    /// Tells the live metrics how many agents stand in each state.
    fn count_agents(&self) {
        let Some(live) = &self.setup.live else { return };
        let (mut running, mut finished, mut lost) = (0, 0, 0);
        for slot in self.slots.iter().flatten() {
            match slot.record.end {
                AgentEnd::Unfinished => running += 1,
                AgentEnd::Finished => finished += 1,
                AgentEnd::Lost(_) | AgentEnd::Failed(_) => lost += 1,
            }
            if slot.record.end != AgentEnd::Unfinished {
                live.agent_ended(slot.record.index);
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
        if self.slots.iter().flatten().any(|s| s.record.name == hello.name) {
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
        self.slots[index] = Some(Slot {
            record: AgentRecord {
                name: hello.name.clone(),
                index: index as u32,
                users: slice.peak_users(),
                version: hello.agent_version,
                peer,
                end: AgentEnd::Unfinished,
                lost_at: None,
                began_at_us: None,
                clock_offset_us: None,
                clock_rtt_us: None,
                gpu_note: (!hello.gpu.is_empty()).then_some(hello.gpu),
                gpu: Vec::new(),
            },
            conn,
            ready: false,
            heard: Instant::now(),
        });
        let joined = self.slots.iter().flatten().count();
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        tracing::info!(agent = %hello.name, index, users = slice.peak_users(), "agent joined{from} ({joined}/{})", self.slots.len());
        let assignment = self.assignment(&slice);
        self.send(conn, controller_message::Kind::Assignment(assignment));
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
        }
    }

    fn ready(&mut self, index: u32, ready: &pb::Ready) {
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.ready = true;
            if ready.clock_rtt_us > 0 {
                slot.record.clock_offset_us = Some(ready.clock_offset_us);
                slot.record.clock_rtt_us = Some(ready.clock_rtt_us);
            }
        }
        let all_ready = self.slots.iter().all(|s| s.as_ref().is_some_and(|s| s.ready));
        if !matches!(self.phase, Phase::Joining) || !all_ready {
            return;
        }
        let delay = self.setup.start_delay;
        let start_at_us = wall_us() + u64::try_from(delay.as_micros()).unwrap_or(0);
        self.phase = Phase::Running;
        self.started = Some(Instant::now() + delay);
        self.started_at = Some(SystemTime::now() + delay);
        self.start_at_us = Some(start_at_us);
        self.deadline = Instant::now() + delay + self.setup.load.duration() + self.setup.load.drain + OVERRUN;
        tracing::info!(agents = self.slots.len(), "all agents ready; starting in {delay:?}");
        let start = pb::Start {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            start_at_us,
        };
        self.broadcast(controller_message::Kind::Start(start));
    }

    fn report(&mut self, conn: u64, index: u32, wire: pb::Report) {
        let name = self.name(index);
        let report = match decode_report(&wire) {
            Ok(r) => r,
            Err(e) => {
                self.unreadable += 1;
                tracing::error!(agent = %name, sequence = wire.sequence, "unreadable report, left out: {e}");
                return;
            }
        };
        let (merged, rows) = self.merger.add(index, &report);
        if merged == merge::Merged::Added
            && let Some(slot) = self.slots.get_mut(index as usize).and_then(Option::as_mut)
        {
            slot.record.gpu.extend(wire.gpu.iter().copied());
        }
        if merged == merge::Merged::Added
            && let Some(live) = &self.setup.live
        {
            live.report(index, &report.histograms, &report.counters);
        }
        if merged == merge::Merged::Added {
            keep_exemplars(&mut self.exemplars, index, &wire.exemplars);
            // Durable before acknowledged: a crash after the ack loses
            // nothing the agent was told is safe.
            if let Err(e) = self.log.append(&name, index, &wire) {
                tracing::error!("cannot append to {}: {e}", self.log.path().display());
            }
        }
        self.send(
            conn,
            controller_message::Kind::Ack(pb::ReportAck {
                sequence: wire.sequence,
            }),
        );
        self.on_rows(rows);
    }

    fn finished(&mut self, conn: u64, index: u32, wire: pb::Finished) {
        let name = self.name(index);
        for class in &wire.classes {
            let decoded = Histograms::from_wire(&class.histograms)
                .and_then(|h| Ok((h, Counters::from_wire(&class.counters.clone().unwrap_or_default())?)));
            match decoded {
                Ok((histograms, counters)) => {
                    let totals = self.classes.entry(class.class.clone()).or_default();
                    totals.histograms.add(&histograms);
                    totals.counters.add(&counters);
                }
                Err(e) => tracing::warn!(agent = %name, "unreadable totals of prompt class {:?}: {e}", class.class),
            }
        }
        let decoded = Histograms::from_wire(&wire.histograms).and_then(|histograms| {
            Ok(merge::Finished {
                histograms,
                counters: Counters::from_wire(&wire.counters.unwrap_or_default())?,
                elapsed_us: wire.elapsed_us,
                last_sequence: wire.last_sequence,
            })
        });
        let rows = match decoded {
            Ok(finished) => self.merger.finish(index, &finished),
            Err(e) => {
                tracing::error!(agent = %name, "unreadable final totals: {e}");
                self.merger.gone(index)
            }
        };
        if let Some(mismatch) = &self.merger.agents()[index as usize].mismatch {
            tracing::warn!(agent = %name, "{mismatch}");
        }
        if let Some(slot) = self.slots[index as usize].as_mut()
            && slot.record.end == AgentEnd::Unfinished
        {
            slot.record.end = AgentEnd::Finished;
        }
        // Ending the stream tells the agent everything was received.
        self.hang_up(conn, None);
        self.on_rows(rows);
    }

    fn failed(&mut self, index: u32, reason: String) {
        let name = self.name(index);
        tracing::error!(agent = %name, "agent cannot carry out its assignment: {reason}");
        if let Some(slot) = self.slots[index as usize].as_mut() {
            slot.record.end = AgentEnd::Failed(reason.clone());
        }
        let rows = self.merger.gone(index);
        self.on_rows(rows);
        self.failure = Some(format!("agent {name} cannot carry out its assignment: {reason}"));
        self.stop("an agent failed", true);
    }

    /// Declares agent `index` lost: keeps everything it reported, tells it
    /// to stop, ends its stream, and applies the profile's policy.
    fn lose(&mut self, index: u32, reason: String) {
        let Some(slot) = self.slots[index as usize].as_mut() else {
            return;
        };
        let (name, conn) = (slot.record.name.clone(), slot.conn);
        if matches!(self.phase, Phase::Joining) {
            // Nothing ran: free its place for another agent.
            tracing::warn!(agent = %name, "agent left before the start ({reason}); its place is open");
            self.slots[index as usize] = None;
            self.hang_up(conn, None);
            return;
        }
        tracing::warn!(agent = %name, "agent lost: {reason}");
        slot.record.end = AgentEnd::Lost(reason.clone());
        slot.record.lost_at = self.started.map(|s| Instant::now().saturating_duration_since(s));
        let stop = pb::Stop {
            reason: format!("this agent was declared lost: {reason}"),
            abort: true,
        };
        self.send(conn, controller_message::Kind::Stop(stop));
        self.hang_up(conn, None);
        let rows = self.merger.gone(index);
        self.on_rows(rows);
        if self.setup.on_agent_loss == OnAgentLoss::Abort && self.aborted.is_none() && !self.interrupted {
            let why = format!("agent {name} was lost ({reason}) and agents.on_agent_loss is \"abort\"");
            self.aborted = Some(why.clone());
            self.stop(&why, true);
        }
    }

    fn watching(&self) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| s.record.end == AgentEnd::Unfinished)
    }

    /// When the earliest silence among running agents reaches [`SILENCE`].
    fn next_silence(&self) -> Instant {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.record.end == AgentEnd::Unfinished)
            .map(|s| s.heard + SILENCE)
            .min()
            .unwrap_or_else(|| Instant::now() + SILENCE)
    }

    /// Declares silent agents lost.
    fn watch(&mut self) {
        let silent: Vec<u32> = self
            .slots
            .iter()
            .flatten()
            .filter(|s| s.record.end == AgentEnd::Unfinished && s.heard.elapsed() >= SILENCE)
            .map(|s| s.record.index)
            .collect();
        for index in silent {
            self.lose(index, format!("silent for {SILENCE:?}"));
        }
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
        let grace = if abort {
            STOP_GRACE
        } else {
            self.setup.load.drain + STOP_GRACE
        };
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
            .map_or_else(|| format!("#{index}"), |s| s.record.name.clone())
    }

    fn on_rows(&mut self, rows: Vec<Row>) {
        for row in rows {
            self.progress.row(&row);
            self.rows.push(row);
        }
    }

    fn close(mut self) -> Collected {
        let rows = self.merger.flush();
        self.on_rows(rows);
        self.progress.finish();
        let agents = self
            .slots
            .into_iter()
            .enumerate()
            .map(|(i, slot)| match slot {
                Some(slot) => slot.record,
                None => AgentRecord {
                    name: format!("#{i}"),
                    index: i as u32,
                    users: self.setup.slices[i].peak_users(),
                    version: String::new(),
                    peer: None,
                    end: AgentEnd::Lost("never joined".to_owned()),
                    lost_at: None,
                    began_at_us: None,
                    clock_offset_us: None,
                    clock_rtt_us: None,
                    gpu_note: None,
                    gpu: Vec::new(),
                },
            })
            .collect();
        Collected {
            classes: self.classes,
            merger: self.merger,
            agents,
            rows: self.rows,
            started_at: self.started_at,
            start_at_us: self.start_at_us,
            interrupted: self.interrupted,
            aborted: self.aborted,
            failure: self.failure,
            unreadable: self.unreadable,
            exemplars: std::mem::take(&mut self.exemplars),
        }
    }
}

fn decode_report(wire: &pb::Report) -> Result<merge::Report, stampede_proto::WireError> {
    let mut samples = std::collections::BTreeMap::new();
    for s in &wire.error_samples {
        samples.insert(s.class.parse()?, s.message.clone());
    }
    Ok(merge::Report {
        interval: wire.interval,
        sequence: wire.sequence,
        elapsed_us: wire.elapsed_us,
        histograms: Histograms::from_wire(&wire.histograms)?,
        counters: Counters::from_wire(&wire.counters.clone().unwrap_or_default())?,
        samples,
        cpu: wire.cpu,
    })
}

/// This agent's load on the wire.
fn wire_load(load: &Load, slice: &Slice, streams: u32, schedule_seed: u64) -> pb::Load {
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
