//! The coordinator: one task that owns the run's state. It admits agents,
//! hands out assignments, holds the start barrier, merges reports (writing
//! each to the interval log before acknowledging it) and notices agents
//! that end early.

pub(crate) mod service;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use stampede_proto::pb::{self, agent_message, controller_message};
use stampede_proto::{Counters, Histograms, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tonic::Status;

use crate::dataset::Prompt;
use crate::merge::{self, Merger, Row};
use crate::plan::Slice;
use crate::report::intervals::Log;
use crate::report::progress::Progress;
use crate::run::Interrupt;
use service::{Event, Outbound};

/// How often the controller signals liveness to agents.
const HEARTBEAT: Duration = Duration::from_secs(1);
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
    pub(crate) duration: Duration,
    pub(crate) drain: Duration,
    pub(crate) interval: Duration,
    pub(crate) start_delay: Duration,
    pub(crate) join_timeout: Duration,
    pub(crate) capabilities: Vec<String>,
}

/// How an agent's part ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentEnd {
    /// It sent its totals.
    Finished,
    /// Its stream ended before it finished.
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
    /// How it ended.
    pub end: AgentEnd,
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
    /// The run was interrupted.
    pub interrupted: bool,
    /// Why the run could not be carried out, if it could not.
    pub failure: Option<String>,
    /// Reports that could not be decoded.
    pub unreadable: u64,
}

struct Conn {
    out: Outbound,
    agent: Option<u32>,
}

enum Phase {
    Joining,
    Running,
    Stopping,
}

struct Coordinator {
    setup: Setup,
    conns: HashMap<u64, Conn>,
    agents: Vec<Option<AgentRecord>>,
    ready: Vec<bool>,
    merger: Merger,
    log: Log,
    progress: Progress,
    rows: Vec<Row>,
    phase: Phase,
    deadline: Instant,
    started_at: Option<SystemTime>,
    interrupted: bool,
    failure: Option<String>,
    unreadable: u64,
    /// The run cannot go on; end the loop without waiting for agents.
    give_up: bool,
}

fn message(kind: controller_message::Kind) -> Result<pb::ControllerMessage, Status> {
    Ok(pb::ControllerMessage { kind: Some(kind) })
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
        merger: Merger::new(n as u32),
        agents: vec![None; n],
        ready: vec![false; n],
        setup,
        conns: HashMap::new(),
        log,
        progress,
        rows: Vec::new(),
        phase: Phase::Joining,
        started_at: None,
        interrupted: false,
        failure: None,
        unreadable: 0,
        give_up: false,
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beats = 0;
    let mut aborted = false;
    while !c.all_ended() {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => c.handle(event).await,
                None => break,
            },
            _ = heartbeat.tick() => {
                beats += 1;
                c.broadcast(controller_message::Kind::Heartbeat(pb::Heartbeat { sequence: beats })).await;
            }
            _ = sleep_until(c.deadline) => c.overdue().await,
            _ = interrupt.stop.cancelled(), if !c.interrupted => {
                c.interrupted = true;
                c.stop("interrupted; in-flight requests may finish (interrupt again to abandon them)", false).await;
            }
            _ = interrupt.abort.cancelled(), if !aborted => {
                aborted = true;
                c.interrupted = true;
                c.stop("interrupted again; abandoning in-flight requests", true).await;
            }
        }
    }
    c.close()
}

impl Coordinator {
    fn all_ended(&self) -> bool {
        self.give_up
            || self
                .agents
                .iter()
                .all(|a| a.as_ref().is_some_and(|a| a.end != AgentEnd::Unfinished))
    }

    async fn send(&self, conn: u64, kind: controller_message::Kind) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.out.send(message(kind)).await;
        }
    }

    async fn broadcast(&self, kind: controller_message::Kind) {
        for c in self.conns.values().filter(|c| c.agent.is_some()) {
            let _ = c.out.send(message(kind.clone())).await;
        }
    }

    /// Ends stream `conn` with an error the agent will print.
    async fn refuse(&mut self, conn: u64, status: Status) {
        if let Some(c) = self.conns.remove(&conn) {
            tracing::warn!("refused an agent: {}", status.message());
            let _ = c.out.send(Err(status)).await;
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { conn, out } => {
                self.conns.insert(conn, Conn { out, agent: None });
            }
            Event::Message { conn, message } => {
                let Some(kind) = message.kind else { return };
                let agent = self.conns.get(&conn).and_then(|c| c.agent);
                match (kind, agent) {
                    (agent_message::Kind::Hello(hello), None) => self.hello(conn, hello).await,
                    (_, None) => {
                        self.refuse(
                            conn,
                            Status::failed_precondition("the first message must be Hello"),
                        )
                        .await;
                    }
                    (agent_message::Kind::Hello(_), Some(_)) => {
                        self.refuse(
                            conn,
                            Status::failed_precondition("Hello was already received"),
                        )
                        .await;
                    }
                    (agent_message::Kind::Ready(_), Some(i)) => self.ready(i).await,
                    (agent_message::Kind::Report(r), Some(i)) => self.report(conn, i, r).await,
                    (agent_message::Kind::Finished(f), Some(i)) => self.finished(conn, i, f),
                    (agent_message::Kind::Failed(f), Some(i)) => self.failed(i, f.reason).await,
                    (agent_message::Kind::Heartbeat(_), Some(_)) => {}
                }
            }
            Event::Closed { conn, reason } => {
                let Some(c) = self.conns.remove(&conn) else {
                    return;
                };
                let Some(i) = c.agent else { return };
                let Some(agent) = self.agents[i as usize].as_mut() else {
                    return;
                };
                if agent.end == AgentEnd::Unfinished {
                    let reason =
                        reason.unwrap_or_else(|| "its stream ended before it finished".to_owned());
                    tracing::warn!(agent = %agent.name, "agent lost: {reason}");
                    agent.end = AgentEnd::Lost(reason);
                    let name = agent.name.clone();
                    let rows = self.merger.gone(i);
                    self.on_rows(rows);
                    if matches!(self.phase, Phase::Joining) {
                        self.stop(&format!("agent {name} was lost before the start"), true)
                            .await;
                    }
                }
            }
        }
    }

    async fn hello(&mut self, conn: u64, hello: pb::Hello) {
        if hello.protocol_version != PROTOCOL_VERSION {
            let text = format!(
                "protocol version mismatch: agent {:?} speaks version {}, this controller speaks version {PROTOCOL_VERSION}",
                hello.name, hello.protocol_version
            );
            return self.refuse(conn, Status::failed_precondition(text)).await;
        }
        if !matches!(self.phase, Phase::Joining) {
            return self
                .refuse(
                    conn,
                    Status::failed_precondition("the run has already started"),
                )
                .await;
        }
        if let Some(missing) = self
            .setup
            .capabilities
            .iter()
            .find(|c| !hello.capabilities.contains(c))
        {
            let text = format!(
                "agent {:?} lacks capability {missing:?} that this run needs",
                hello.name
            );
            return self.refuse(conn, Status::failed_precondition(text)).await;
        }
        if self.agents.iter().flatten().any(|a| a.name == hello.name) {
            let text = format!(
                "an agent named {:?} has already joined this run",
                hello.name
            );
            return self.refuse(conn, Status::already_exists(text)).await;
        }
        let Some(index) = self.agents.iter().position(Option::is_none) else {
            let text = format!(
                "this run already has all {} agents it needs",
                self.agents.len()
            );
            return self.refuse(conn, Status::resource_exhausted(text)).await;
        };
        let slice = self.setup.slices[index].clone();
        self.agents[index] = Some(AgentRecord {
            name: hello.name.clone(),
            index: index as u32,
            users: slice.users,
            version: hello.agent_version,
            end: AgentEnd::Unfinished,
        });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.agent = Some(index as u32);
        }
        let joined = self.agents.iter().flatten().count();
        tracing::info!(agent = %hello.name, index, users = slice.users, "agent joined ({joined}/{})", self.agents.len());
        let assignment = self.assignment(&slice);
        self.send(conn, controller_message::Kind::Assignment(assignment))
            .await;
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
            load: Some(pb::assignment::Load::Users(pb::ClosedUsers {
                users: slice.users,
                first_user: slice.first_user,
            })),
            duration_ms: ms(s.duration),
            drain_ms: ms(s.drain),
            interval_ms: ms(s.interval),
            prompts: Some(pb::DatasetShare {
                prompts: s.prompts[slice.prompts.clone()]
                    .iter()
                    .map(|p| pb::Prompt {
                        text: p.text.clone(),
                        class: p.class.clone(),
                    })
                    .collect(),
                offset: slice.prompts.start as u64,
                total: s.prompts.len() as u64,
            }),
            seed: slice.seed,
        }
    }

    async fn ready(&mut self, index: u32) {
        self.ready[index as usize] = true;
        if !matches!(self.phase, Phase::Joining) || !self.ready.iter().all(|r| *r) {
            return;
        }
        let delay = self.setup.start_delay;
        self.phase = Phase::Running;
        self.started_at = Some(SystemTime::now() + delay);
        self.deadline = Instant::now() + delay + self.setup.duration + self.setup.drain + OVERRUN;
        tracing::info!(
            agents = self.agents.len(),
            "all agents ready; starting in {delay:?}"
        );
        let start = pb::Start {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        };
        self.broadcast(controller_message::Kind::Start(start)).await;
    }

    async fn report(&mut self, conn: u64, index: u32, wire: pb::Report) {
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
        if merged == merge::Merged::Added {
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
        )
        .await;
        self.on_rows(rows);
    }

    fn finished(&mut self, conn: u64, index: u32, wire: pb::Finished) {
        let name = self.name(index);
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
        if let Some(a) = self.agents[index as usize].as_mut() {
            a.end = AgentEnd::Finished;
        }
        // Closing the stream tells the agent everything was received.
        self.conns.remove(&conn);
        self.on_rows(rows);
    }

    async fn failed(&mut self, index: u32, reason: String) {
        let name = self.name(index);
        tracing::error!(agent = %name, "agent cannot carry out its assignment: {reason}");
        if let Some(a) = self.agents[index as usize].as_mut() {
            a.end = AgentEnd::Failed(reason.clone());
        }
        let rows = self.merger.gone(index);
        self.on_rows(rows);
        self.failure = Some(format!(
            "agent {name} cannot carry out its assignment: {reason}"
        ));
        self.stop("an agent failed", true).await;
    }

    async fn stop(&mut self, reason: &str, abort: bool) {
        tracing::info!("stopping the run: {reason}");
        self.broadcast(controller_message::Kind::Stop(pb::Stop {
            reason: reason.to_owned(),
            abort,
        }))
        .await;
        if matches!(self.phase, Phase::Joining) {
            // Nothing ran: there is nothing to wait for.
            self.failure
                .get_or_insert_with(|| format!("the run was stopped before it started: {reason}"));
            self.give_up = true;
        }
        let grace = if abort {
            STOP_GRACE
        } else {
            self.setup.drain + STOP_GRACE
        };
        self.phase = Phase::Stopping;
        self.deadline = Instant::now() + grace;
    }

    async fn overdue(&mut self) {
        match self.phase {
            Phase::Joining => {
                let joined = self.agents.iter().flatten().count();
                let ready = self.ready.iter().filter(|r| **r).count();
                self.failure = Some(format!(
                    "only {joined} of {} agents joined and {ready} were ready within {:?}",
                    self.agents.len(),
                    self.setup.join_timeout
                ));
                self.stop("not every agent joined in time", true).await;
            }
            Phase::Running => {
                self.stop("the load overran its duration and drain time", true)
                    .await
            }
            Phase::Stopping => {
                tracing::warn!(
                    "agents did not finish within the grace period; closing the run without them"
                );
                self.give_up = true;
            }
        }
    }

    fn name(&self, index: u32) -> String {
        self.agents[index as usize]
            .as_ref()
            .map_or_else(|| format!("#{index}"), |a| a.name.clone())
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
            .agents
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                a.unwrap_or_else(|| AgentRecord {
                    name: format!("#{i}"),
                    index: i as u32,
                    users: self.setup.slices[i].users,
                    version: String::new(),
                    end: AgentEnd::Lost("never joined".to_owned()),
                })
            })
            .collect();
        Collected {
            merger: self.merger,
            agents,
            rows: self.rows,
            started_at: self.started_at,
            interrupted: self.interrupted,
            failure: self.failure,
            unreadable: self.unreadable,
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
    })
}
