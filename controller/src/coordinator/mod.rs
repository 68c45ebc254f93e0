//! The coordinator: one task that owns the run's connections. Its
//! decisions are a state machine ([`machine`]: inputs in, actions out, no
//! I/O); this shell feeds it connections, messages, timers and interrupts
//! and carries out what it decides. Everything the run's results depend on
//! goes through the [`writer`], which logs each entry before it takes
//! effect, and a report durably before its acknowledgement.

pub(crate) mod machine;
pub(crate) mod service;
pub(crate) mod writer;

use std::collections::HashMap;
use std::time::Duration;

use stampede_proto::pb;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use crate::dataset::Prompt;
use crate::plan::Slice;
use crate::profile::{Liveness, Load, Model, OnAgentLoss, Threshold};
use crate::report::live::Live;
use crate::report::progress::Progress;
use crate::results::{Collected, Ledger};
use crate::run::Interrupt;
use machine::{Action, Input, Machine, Now};
use service::{Event, Outbound};
use writer::{Write, Writer};

/// How often the watchdog ticks: a gap much longer than this between two
/// ticks is the controller's own stall ([`machine::STALL`]).
const WATCHDOG: Duration = Duration::from_millis(250);

/// Everything the coordinator needs to run.
pub(crate) struct Setup {
    pub(crate) run_id: String,
    pub(crate) slices: Vec<Slice>,
    pub(crate) target: pb::Target,
    pub(crate) request: pb::RequestSpec,
    pub(crate) prompts: Vec<Prompt>,
    /// Set when users play sessions: the pause between turns.
    pub(crate) sessions: Option<Duration>,
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
    /// The OTLP metrics push to feed, when on.
    pub(crate) otlp: Option<crate::report::otlp::Feed>,
    /// How agents export request spans; `None`: tracing is off.
    pub(crate) trace: Option<pb::Trace>,
    /// Per-request objectives agents check (goodput).
    pub(crate) slo: Option<pb::Slo>,
    /// The profile's thresholds; those with `abort` are checked as each
    /// interval completes.
    pub(crate) thresholds: Vec<Threshold>,
    /// The agents run in this process: their joining is logged at debug
    /// level, since the run's own line says how many there are.
    pub(crate) local: bool,
}

/// Runs the coordinator until every agent has finished or been lost, or the
/// run cannot go on: turns connections, timers and interrupts into the
/// machine's inputs, carries out its actions, and hands entries to the
/// writer.
pub(crate) async fn run(
    mut setup: Setup,
    mut events: mpsc::Receiver<Event>,
    ledger: Ledger,
    progress: Progress,
    interrupt: Interrupt,
) -> Collected {
    let (breach_tx, mut breaches) = mpsc::unbounded_channel();
    let (writes, write_rx) = mpsc::channel(1024);
    let collected = writer::spawn(
        Writer {
            ledger,
            progress,
            live: setup.live.take(),
            otlp: setup.otlp.take(),
            thresholds: std::mem::take(&mut setup.thresholds),
            interval: setup.interval,
            breaches: breach_tx,
        },
        write_rx,
    );
    let mut machine = Machine::new(setup, Instant::now());
    let mut outs: HashMap<u64, Outbound> = HashMap::new();
    let mut heartbeat = tokio::time::interval(machine.heartbeat());
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut watchdog = tokio::time::interval(WATCHDOG);
    watchdog.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut stopping, mut aborting) = (false, false);
    while !machine.done() {
        let input = tokio::select! {
            event = events.recv() => match event {
                Some(Event::Connected { conn, out, peer }) => {
                    outs.insert(conn, out);
                    Input::Connected { conn, peer }
                }
                Some(Event::Message { conn, message }) => Input::Message { conn, message },
                Some(Event::Closed { conn, reason }) => {
                    outs.remove(&conn);
                    Input::Closed { conn, reason }
                }
                None => break,
            },
            _ = heartbeat.tick() => Input::Heartbeat,
            _ = watchdog.tick() => Input::Tick,
            // When the first agent could be lost, or the deadline is due:
            // an agent is lost the moment it has been out of contact for
            // the limit, not at the next tick.
            _ = sleep_until(machine.wake_at()) => Input::Tick,
            Some(why) = breaches.recv() => Input::Breach(why),
            _ = interrupt.stop.cancelled(), if !stopping => {
                stopping = true;
                Input::Interrupt { abort: false }
            }
            _ = interrupt.abort.cancelled(), if !aborting => {
                aborting = true;
                Input::Interrupt { abort: true }
            }
        };
        for action in machine.step(Now::current(), input) {
            match action {
                Action::Send { conn, kind } => {
                    if let Some(out) = outs.get(&conn) {
                        let _ = out.try_send(Ok(pb::ControllerMessage { kind: Some(*kind) }));
                    }
                }
                // The stream ends when its last sender goes: the writer
                // keeps one until it has acknowledged what came before.
                Action::HangUp { conn, refusal } => {
                    if let (Some(out), Some(status)) = (outs.remove(&conn), refusal) {
                        let _ = out.try_send(Err(status));
                    }
                }
                Action::Stopped(stop) => {
                    let _ = writes.send(Write::Stopped(stop)).await;
                }
                Action::Record { entry, ack } => {
                    let ack = ack.and_then(|(conn, ack)| outs.get(&conn).map(|out| (out.clone(), ack)));
                    if writes.send(Write::Record { entry, ack }).await.is_err() {
                        tracing::error!("the results writer stopped; the run cannot record what it receives");
                    }
                }
            }
        }
    }
    let _ = writes.send(Write::Close(machine.end())).await;
    drop(writes);
    collected
        .await
        .expect("the results writer hands back what it collected")
}

/// Agent `slice`'s assignment, less its session secret.
pub(crate) fn assignment(s: &Setup, slice: &Slice) -> pb::Assignment {
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
            prompts: share(s, slice)
                .map(|p| pb::Prompt {
                    text: p.text.clone(),
                    class: p.class.clone(),
                    max_tokens: p.max_tokens,
                    system: p.system.clone().unwrap_or_default(),
                    turns: p.turns.clone(),
                })
                .collect(),
            offset: if s.load.trace.is_some() {
                u64::from(slice.index)
            } else {
                slice.prompts.start as u64
            },
            total: s.prompts.len() as u64,
            sessions: s.sessions.map(|think| pb::Sessions {
                think_us: u64::try_from(think.as_micros()).unwrap_or(u64::MAX),
            }),
        }),
        seed: slice.seed,
        slo: s.slo,
        max_requests: slice.requests.unwrap_or(0),
        session_secret: String::new(),
        liveness: Some(s.liveness.to_wire()),
    }
}

/// Agent `slice`'s prompts: its share of the dataset, or for a trace
/// replay the rows it sends (every agents-th, from its index), one per
/// arrival.
fn share<'a>(s: &'a Setup, slice: &Slice) -> Box<dyn Iterator<Item = &'a Prompt> + 'a> {
    match &s.load.trace {
        Some(_) => Box::new(
            s.prompts
                .iter()
                .skip(slice.index as usize)
                .step_by(s.slices.len().max(1)),
        ),
        None => Box::new(s.prompts[slice.prompts.clone()].iter()),
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
                trace_offsets_us: load.trace.as_ref().map_or_else(Vec::new, |t| {
                    t.rows
                        .iter()
                        .skip(slice.index as usize)
                        .step_by(streams.max(1) as usize)
                        .map(|r| u64::try_from(r.at.as_micros()).unwrap_or(u64::MAX))
                        .collect()
                }),
            })
        }
    };
    pb::Load { kind: Some(kind) }
}

/// What a run of `p` over two in-process agents sets up, without tracing,
/// objectives or live metrics: for tests.
#[cfg(test)]
impl Setup {
    pub(crate) fn two_agents(p: &crate::profile::Profile) -> Setup {
        Setup {
            run_id: "run-1".to_owned(),
            slices: crate::plan::slices(p, 2).expect("two slices"),
            target: pb::Target::default(),
            request: pb::RequestSpec::default(),
            prompts: p.prompts.clone(),
            sessions: p.sessions.map(|s| s.think),
            load: p.load.clone(),
            schedule_seed: 1,
            interval: p.report.interval,
            start_delay: Duration::from_millis(250),
            join_timeout: Duration::from_secs(30),
            capabilities: vec!["load:users".to_owned()],
            on_agent_loss: p.on_agent_loss,
            liveness: p.liveness,
            live: None,
            otlp: None,
            trace: None,
            slo: None,
            thresholds: Vec::new(),
            local: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::profile::{Overrides, Profile, ProfileError};

    fn profile(text: &str) -> Result<Profile, ProfileError> {
        Profile::parse(text, Path::new("p.toml"), &Overrides::default())
    }

    /// A trace's rows are split by index over the agents: each to exactly
    /// one, in order, with its offset to the microsecond.
    #[test]
    fn a_traces_rows_are_dealt_out_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let trace = dir.path().join("t.jsonl");
        let rows: String = (0..11)
            .map(|i| {
                format!(
                    "{{\"timestamp\": {}.25, \"input_length\": {}, \"output_length\": 2}}\n",
                    i * 7,
                    i + 1
                )
            })
            .collect();
        std::fs::write(&trace, rows).unwrap();
        let p = profile(&format!("[load]\ntrace = {:?}\nspeed = 4.0\n", trace.to_str().unwrap())).unwrap();
        let slices = crate::plan::slices(&p, 3).unwrap();
        let mut all = Vec::new();
        for slice in &slices {
            let Some(pb::load::Kind::Open(o)) = wire_load(&p.load, slice, 3, 0).kind else {
                panic!("an open loop");
            };
            assert_eq!(o.trace_offsets_us.len(), [4, 4, 3][slice.index as usize]);
            all.extend(
                o.trace_offsets_us
                    .iter()
                    .enumerate()
                    .map(|(k, us)| (k * 3 + slice.index as usize, *us)),
            );
        }
        all.sort_unstable();
        let expected: Vec<(usize, u64)> = (0..11).map(|i| (i, (i as u64 * 7_000) / 4)).collect();
        assert_eq!(all, expected);
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

    /// Sessions reach the agents whole: every conversation, its system
    /// prompt and all its turns, in exactly one agent's share, the shares
    /// adding up to the dataset, the same on every run.
    #[test]
    fn sessions_are_split_whole_and_exactly_across_agents() {
        let p = profile(
            "seed = 5\n[load]\nusers = 4\n[prompts]\nsessions = true\nturn_think = \"1.5s\"\n[prompts.synthetic]\ncount = 7\ninput_tokens = 8\nturns = { min = 1, max = 5 }\nsystem_tokens = 3\n",
        )
        .expect("a valid profile");
        let s = Setup::two_agents(&p);
        let shares: Vec<pb::DatasetShare> = s
            .slices
            .iter()
            .map(|slice| assignment(&s, slice).prompts.expect("a share"))
            .collect();
        assert_eq!(
            shares.iter().map(|d| d.prompts.len()).collect::<Vec<_>>(),
            [4, 3],
            "seven sessions over two agents"
        );
        let mut played = Vec::new();
        for share in &shares {
            assert_eq!(share.sessions.map(|x| x.think_us), Some(1_500_000));
            assert_eq!(share.total, 7);
            played.extend(share.prompts.iter().cloned());
        }
        for (wire, session) in played.iter().zip(&p.prompts) {
            assert_eq!(wire.text, session.text);
            assert_eq!(wire.turns, session.turns, "every turn travels with its session");
            assert_eq!(Some(&wire.system), session.system.as_ref());
            assert_eq!(wire.system.split_whitespace().count(), 3);
        }
        assert_eq!(played.len(), p.prompts.len());
        assert!(p.prompts.iter().any(|s| s.turns.len() >= 2), "{:?}", p.prompts);
        let again = Setup::two_agents(&profile(&p.source).unwrap_or_else(|_| p.clone()));
        assert_eq!(again.slices.len(), 2);
        assert_eq!(assignment(&again, &again.slices[1]).prompts, Some(shares[1].clone()));
    }
}
