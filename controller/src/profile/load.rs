//! The `[load]` table: closed-loop users or open-loop arrivals, as one
//! level for a duration, as stages, or as a sweep of levels.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stampede_agent::load::schedule::Process;

use super::doc::{Problems, Table};

/// Largest values accepted, to catch typos such as an extra zero digit
/// long before they exhaust memory.
const MAX_USERS: u64 = 1_000_000;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_CONCURRENCY: u64 = 10_000_000;
const MAX_REQUESTS: u64 = 1_000_000_000;
/// How long a closed-loop load that counts its requests may run when no
/// duration is given: the count ends it, this only bounds it.
pub(super) const COUNTED_DURATION: Duration = Duration::from_secs(3600);

/// How load is generated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Closed-loop users: each waits for its answer before the next request.
    Users {
        /// Pause after each answer.
        think: Duration,
        /// When set, each user aims to start a request at this cadence, and
        /// latency also counts from the tick it meant to send at.
        pace: Option<Duration>,
    },
    /// Open-loop arrivals at a rate, whatever the server does.
    Rate {
        /// Gap distribution.
        process: Process,
        /// Most requests in flight over all agents.
        max_concurrency: Option<NonZeroU32>,
    },
}

/// One level of load held for a while.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Users (closed loop) or arrivals per second (open loop).
    pub level: f64,
    /// How long it lasts, ramp included.
    pub duration: Duration,
    /// How long the level takes to move from the previous step's.
    pub ramp: Duration,
}

/// How the steps were asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// One level (`users = …` or `rate = …`).
    Single,
    /// `stages = [...]`.
    Stages,
    /// `[load.sweep]`: separate steps to find where the server saturates.
    Sweep,
}

/// The validated `[load]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// How load is generated.
    pub model: Model,
    /// Consecutive steps.
    pub steps: Vec<Step>,
    /// How the steps were asked for.
    pub shape: Shape,
    /// Excluded from statistics at the start of every step.
    pub warmup: Duration,
    /// How long in-flight requests may finish after the last step.
    pub drain: Duration,
    /// Most requests sent over the run: the load ends at this count or at
    /// its duration, whichever comes first.
    #[serde(default)]
    pub requests: Option<u64>,
    /// The trace replayed (`trace = "file"`): an open loop whose arrivals,
    /// prompts and output lengths are the trace's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<super::replay::Replay>,
}

impl Load {
    /// How long new requests are sent: the steps' total.
    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    /// The highest level of any step.
    pub fn peak(&self) -> f64 {
        self.steps.iter().map(|s| s.level).fold(0.0, f64::max)
    }

    /// True for closed-loop users.
    pub fn is_users(&self) -> bool {
        matches!(self.model, Model::Users { .. })
    }

    /// The whole load in words: `50 users for 30s`, `4 users in 2
    /// stages over 1m`, `a sweep of 6 steps up to 40 users over 3m`.
    pub fn describe(&self) -> String {
        let over = humantime::format_duration(self.duration());
        let peak = self.label(self.peak());
        let n = self.steps.len();
        if let Some(t) = &self.trace {
            return format!("{} over {over}", t.describe());
        }
        match self.shape {
            Shape::Single => match self.requests {
                Some(r) => format!("{peak} for {r} requests (at most {over})"),
                None => format!("{peak} for {over}"),
            },
            Shape::Stages => format!("up to {peak} in {n} stage{} over {over}", if n == 1 { "" } else { "s" }),
            Shape::Sweep => format!("a sweep of {n} steps up to {peak} over {over}"),
        }
    }

    /// A step's level in words: `10 users` or `20 req/s`.
    pub fn label(&self, level: f64) -> String {
        if self.is_users() {
            format!("{level:.0} user{}", if level == 1.0 { "" } else { "s" })
        } else {
            format!("{level} req/s")
        }
    }
}

/// Command-line values that bear on the load.
pub(super) struct Cli {
    pub(super) duration: Option<Duration>,
    pub(super) interval: Duration,
    /// The profile's folder, which a trace file's path is relative to.
    pub(super) base: std::path::PathBuf,
}

enum Kind {
    Users,
    Rate,
}

/// Fastest and slowest replay of a trace.
const MAX_SPEED: f64 = 1000.0;
const MIN_SPEED: f64 = 0.001;
/// Most tokens in one hash-id block.
const MAX_BLOCK: u64 = 1_000_000;

/// Reads `[load]`; `None` when it has problems (all recorded in `p`).
pub(super) fn walk(l: &mut Table<'_, '_>, p: &mut Problems<'_>, cli: &Cli) -> Option<Load> {
    let users = l.int_in(p, "users", 1, MAX_USERS);
    let rate = l.number_in(p, "rate", 0.001, MAX_RATE);
    let mut stages = l.tables(p, "stages");
    let mut sweep = if l.has("sweep") {
        Some(l.table(p, "sweep"))
    } else {
        None
    };
    let duration = l.millis(p, "duration", false);
    let warmup = l.duration(p, "warmup", true).unwrap_or(Duration::ZERO);
    let drain = l.millis(p, "drain", true).unwrap_or(Duration::from_secs(30));
    let think = l.millis(p, "think_time", true);
    let pace = l.millis(p, "pace", false);
    let spawn_rate = l.number_in(p, "spawn_rate", 0.001, MAX_RATE);
    let arrival = l.choice(p, "arrival", &["constant", "poisson", "gamma"]);
    let burstiness = l.number_in(p, "burstiness", 0.01, 100.0);
    let max_concurrency = l.int_in(p, "max_concurrency", 1, MAX_CONCURRENCY);
    let requests = l.int_in(p, "requests", 1, MAX_REQUESTS);
    let trace = l.string(p, "trace");
    let trace_format = l.choice(p, "trace_format", &["mooncake", "azure"]);
    let speed = l.number_in(p, "speed", MIN_SPEED, MAX_SPEED);
    let start = l.millis(p, "start", true);
    let length = l.millis(p, "length", false);
    let block_size = l.int_in(p, "block_size", 1, MAX_BLOCK);
    if l.span_of("trace").is_none() {
        for key in ["trace_format", "speed", "start", "length", "block_size"] {
            if l.span_of(key).is_some() {
                p.at(
                    l.span_of(key),
                    &l.path_of(key),
                    "applies only to a trace replay (load.trace)",
                );
            }
        }
    }

    let modes = ["users", "rate", "stages", "sweep", "trace"];
    let given: Vec<&str> = modes.iter().copied().filter(|m| l.span_of(m).is_some()).collect();
    if given.len() != 1 {
        let message = if given.is_empty() {
            "missing: choose one load model: users = N (closed loop), rate = R (open loop), stages = [...], [load.sweep] or trace = \"file\"".to_owned()
        } else {
            let (last, rest) = given.split_last().expect("two or more");
            let both = if rest.len() == 1 { "both" } else { "all" };
            format!("{} and {last} are {both} set; choose one load model", rest.join(", "))
        };
        let key = given.get(1).map_or_else(|| l.path_of("users"), |k| l.path_of(k));
        p.at(given.get(1).and_then(|k| l.span_of(k)), &key, message);
        return None;
    }

    if given[0] == "trace" {
        let t = Trace {
            file: trace?,
            format: trace_format,
            speed,
            start,
            length,
            block_size,
            requests,
            duration,
        };
        return replay(l, p, cli, t, warmup, drain, max_concurrency);
    }

    // The steps, and whether they are users or rates.
    let (kind, steps, shape) = match given[0] {
        "users" | "rate" => {
            let (kind, level) = match (users, rate) {
                (Some(u), _) => (Kind::Users, u as f64),
                (_, Some(r)) => (Kind::Rate, r),
                _ => return None,
            };
            let ramp = match (spawn_rate, &kind) {
                (Some(per_s), Kind::Users) => Duration::from_secs_f64(level / per_s),
                _ => Duration::ZERO,
            };
            // With a count of requests and no duration, the count ends the
            // load: an open loop lasts as long as the count takes at its
            // rate, a closed one until its users have sent them.
            let duration = match (cli.duration.or(duration), requests, &kind) {
                (Some(d), _, _) => d,
                (None, Some(n), Kind::Rate) => Duration::from_secs_f64(n as f64 / level).max(Duration::from_millis(1)),
                (None, Some(_), Kind::Users) => COUNTED_DURATION,
                (None, None, _) => Duration::from_secs(30),
            };
            if ramp > duration {
                p.at(
                    l.span_of("spawn_rate"),
                    &l.path_of("spawn_rate"),
                    format!("spawning {level} users takes {ramp:?}, longer than the duration {duration:?}"),
                );
            }
            (
                kind,
                vec![Step {
                    level,
                    duration,
                    ramp: ramp.min(duration),
                }],
                Shape::Single,
            )
        }
        "stages" => {
            if l.span_of("duration").is_some() {
                p.at(
                    l.span_of("duration"),
                    &l.path_of("duration"),
                    "each stage has its own duration; remove this key",
                );
            }
            if cli.duration.is_some() {
                p.at(
                    None,
                    "--duration",
                    "stages have their own durations; edit the stages instead",
                );
            }
            let (kind, steps) = stage_steps(stages.as_mut()?, p)?;
            (kind, steps, Shape::Stages)
        }
        _ => {
            if l.span_of("duration").is_some() {
                p.at(
                    l.span_of("duration"),
                    &l.path_of("duration"),
                    "a sweep's steps last load.sweep.step; remove this key",
                );
            }
            let (kind, steps) = sweep_steps(sweep.as_mut()?, p, cli.duration)?;
            (kind, steps, Shape::Sweep)
        }
    };
    if let Some(sweep) = sweep {
        sweep.finish(p);
    }
    if let Some(stages) = stages {
        for t in stages {
            t.finish(p);
        }
    }

    // Options that belong to the other model are mistakes worth naming.
    let misplaced: &[&str] = match kind {
        Kind::Users => &["arrival", "burstiness", "max_concurrency"],
        Kind::Rate => &["think_time", "pace", "spawn_rate"],
    };
    for key in misplaced {
        if l.span_of(key).is_some() {
            let which = if matches!(kind, Kind::Users) {
                "open-loop loads (rate)"
            } else {
                "closed-loop loads (users)"
            };
            p.at(l.span_of(key), &l.path_of(key), format!("applies only to {which}"));
        }
    }
    if shape != Shape::Single && requests.is_some() {
        p.at(
            l.span_of("requests"),
            &l.path_of("requests"),
            "a count of requests applies to one level of load (users = N or rate = R), not to stages or a sweep",
        );
    }
    if shape != Shape::Single && spawn_rate.is_some() {
        p.at(
            l.span_of("spawn_rate"),
            &l.path_of("spawn_rate"),
            "for stages and sweeps, give each step a ramp instead",
        );
    }
    if burstiness.is_some() && arrival.as_deref() != Some("gamma") {
        p.at(
            l.span_of("burstiness"),
            &l.path_of("burstiness"),
            "applies only to arrival = \"gamma\"",
        );
    }
    if think.is_some() && pace.is_some() {
        p.at(
            l.span_of("pace"),
            &l.path_of("pace"),
            "set think_time or pace, not both",
        );
    }
    for (i, s) in steps.iter().enumerate() {
        if warmup >= s.duration {
            p.at(
                l.span_of("warmup"),
                &l.path_of("warmup"),
                format!(
                    "the warm-up {warmup:?} leaves nothing of step {i} ({:?}) to measure",
                    s.duration
                ),
            );
            break;
        }
    }
    if shape != Shape::Single || !warmup.is_zero() {
        let whole = |d: Duration| d.as_nanos().is_multiple_of(cli.interval.as_nanos().max(1));
        if let Some(s) = steps.iter().find(|s| !whole(s.duration)) {
            p.at(
                None,
                &l.path_of(if shape == Shape::Sweep { "sweep.step" } else { "stages" }),
                format!(
                    "step durations must be whole report intervals ({:?}), so that each step's statistics are exact; got {:?}",
                    cli.interval, s.duration
                ),
            );
        }
        if !whole(warmup) {
            p.at(
                l.span_of("warmup"),
                &l.path_of("warmup"),
                format!("must be a whole number of report intervals ({:?})", cli.interval),
            );
        }
    }

    let model = match kind {
        Kind::Users => Model::Users {
            think: think.unwrap_or(Duration::ZERO),
            pace,
        },
        Kind::Rate => Model::Rate {
            process: match arrival.as_deref() {
                Some("constant") => Process::Constant,
                Some("gamma") => Process::Gamma(burstiness.unwrap_or(1.0)),
                _ => Process::Poisson,
            },
            max_concurrency: max_concurrency.and_then(|n| NonZeroU32::new(n as u32)),
        },
    };
    Some(Load {
        model,
        steps,
        shape,
        warmup,
        drain,
        requests,
        trace: None,
    })
}

/// `[load]`'s trace settings as given.
struct Trace {
    file: String,
    format: Option<String>,
    speed: Option<f64>,
    start: Option<Duration>,
    length: Option<Duration>,
    block_size: Option<u64>,
    requests: Option<u64>,
    duration: Option<Duration>,
}

/// Reads the trace a `[load]` replays: one open-loop step from the run's
/// start to just after its last arrival.
fn replay(
    l: &mut Table<'_, '_>,
    p: &mut Problems<'_>,
    cli: &Cli,
    t: Trace,
    warmup: Duration,
    drain: Duration,
    max_concurrency: Option<u64>,
) -> Option<Load> {
    use super::replay::{Format, Options};
    for key in ["think_time", "pace", "spawn_rate", "arrival", "burstiness"] {
        if l.span_of(key).is_some() {
            p.at(
                l.span_of(key),
                &l.path_of(key),
                "does not apply to a trace replay, whose rows give every arrival",
            );
        }
    }
    if t.duration.is_some() {
        p.at(
            l.span_of("duration"),
            &l.path_of("duration"),
            "a trace replay lasts as long as its rows; replay part of it with load.start and load.length",
        );
    }
    let path = cli.base.join(&t.file);
    let format = match t.format.as_deref() {
        Some("azure") => Format::Azure,
        Some(_) => Format::Mooncake,
        None => match Format::of(&path) {
            Some(f) => f,
            None => {
                p.at(
                    l.span_of("trace"),
                    &l.path_of("trace"),
                    format!(
                        "cannot tell the layout of {:?} from its extension (.jsonl: Mooncake, .csv: Azure); set load.trace_format = \"mooncake\" or \"azure\"",
                        t.file
                    ),
                );
                return None;
            }
        },
    };
    let options = Options {
        format,
        speed: t.speed.unwrap_or(1.0),
        start: t.start.unwrap_or(Duration::ZERO),
        length: t.length,
        max_requests: t.requests,
        // `--duration` cuts the replay: what falls after it is not sent.
        until: cli.duration,
        block_size: t.block_size.map_or(512, |n| n as u32),
    };
    let replay = match super::replay::read(&path, &t.file, &options) {
        Ok(r) => r,
        Err(e) => {
            p.at(l.span_of("trace"), &l.path_of("trace"), e);
            return None;
        }
    };
    // Every arrival falls before the end: one millisecond past the last,
    // in whole milliseconds as the agents are told.
    let duration = Duration::from_millis(replay.last().as_millis() as u64 + 1);
    if warmup >= duration {
        p.at(
            l.span_of("warmup"),
            &l.path_of("warmup"),
            format!("the warm-up {warmup:?} leaves nothing of the replay ({duration:?}) to measure"),
        );
    }
    if !warmup.is_zero() && !warmup.as_nanos().is_multiple_of(cli.interval.as_nanos().max(1)) {
        p.at(
            l.span_of("warmup"),
            &l.path_of("warmup"),
            format!("must be a whole number of report intervals ({:?})", cli.interval),
        );
    }
    let level = replay.requests as f64 / duration.as_secs_f64();
    Some(Load {
        model: Model::Rate {
            process: Process::Constant,
            max_concurrency: max_concurrency.and_then(|n| NonZeroU32::new(n as u32)),
        },
        steps: vec![Step {
            level,
            duration,
            ramp: Duration::ZERO,
        }],
        shape: Shape::Single,
        warmup,
        drain,
        requests: None,
        trace: Some(replay),
    })
}

fn stage_steps(stages: &mut [Table<'_, '_>], p: &mut Problems<'_>) -> Option<(Kind, Vec<Step>)> {
    if stages.is_empty() {
        p.at(None, "load.stages", "expected at least one stage");
        return None;
    }
    let mut steps = Vec::new();
    let (mut users_seen, mut rates_seen, mut ok) = (false, false, true);
    for t in stages.iter_mut() {
        let users = t.int_in(p, "users", 0, MAX_USERS);
        let rate = t.number_in(p, "rate", 0.0, MAX_RATE);
        let duration = t.millis(p, "duration", false);
        let ramp = t.millis(p, "ramp", true).unwrap_or(Duration::ZERO);
        let level = match (users, rate, t.span_of("users"), t.span_of("rate")) {
            (Some(u), None, _, None) => {
                users_seen = true;
                u as f64
            }
            (None, Some(r), None, _) => {
                rates_seen = true;
                r
            }
            (_, _, Some(_), Some(_)) => {
                p.at(
                    t.span_of("rate"),
                    &t.path_of("rate"),
                    "a stage has users or a rate, not both",
                );
                ok = false;
                continue;
            }
            (_, _, None, None) => {
                p.at(
                    None,
                    &t.path_of("users"),
                    "missing: give the stage users = N or rate = R",
                );
                ok = false;
                continue;
            }
            _ => {
                ok = false;
                continue;
            }
        };
        let Some(duration) = duration else {
            if t.span_of("duration").is_none() {
                p.at(
                    None,
                    &t.path_of("duration"),
                    "missing: how long the stage lasts, such as \"30s\"",
                );
            }
            ok = false;
            continue;
        };
        if ramp > duration {
            p.at(
                t.span_of("ramp"),
                &t.path_of("ramp"),
                format!("longer than the stage ({duration:?})"),
            );
            ok = false;
        }
        steps.push(Step { level, duration, ramp });
    }
    if users_seen && rates_seen {
        p.at(None, "load.stages", "stages are all users or all rates, not a mix");
        return None;
    }
    if ok && steps.iter().all(|s| s.level == 0.0) {
        p.at(
            None,
            "load.stages",
            "every stage is empty; give one some users or a rate",
        );
        return None;
    }
    ok.then_some((if rates_seen { Kind::Rate } else { Kind::Users }, steps))
}

fn sweep_steps(t: &mut Table<'_, '_>, p: &mut Problems<'_>, cli_step: Option<Duration>) -> Option<(Kind, Vec<Step>)> {
    let users = t.numbers(p, "users", 1.0, MAX_USERS as f64);
    let rates = t.numbers(p, "rates", 0.001, MAX_RATE);
    let step = cli_step.or(t.millis(p, "step", false));
    let (kind, levels) = match (users, rates) {
        (Some(u), None) if t.span_of("rates").is_none() => {
            if let Some(bad) = u.iter().find(|n| n.fract() != 0.0) {
                p.at(
                    t.span_of("users"),
                    &t.path_of("users"),
                    format!("user counts are whole numbers, got {bad}"),
                );
                return None;
            }
            (Kind::Users, u)
        }
        (None, Some(r)) if t.span_of("users").is_none() => (Kind::Rate, r),
        _ if t.span_of("users").is_some() && t.span_of("rates").is_some() => {
            p.at(
                t.span_of("rates"),
                &t.path_of("rates"),
                "sweep users or rates, not both",
            );
            return None;
        }
        _ => {
            if t.span_of("users").is_none() && t.span_of("rates").is_none() {
                p.at(
                    None,
                    &t.path_of("users"),
                    "missing: the levels to sweep, users = [...] or rates = [...]",
                );
            }
            return None;
        }
    };
    if levels.is_empty() {
        p.at(t.span_of("users"), &t.path_of("users"), "expected at least one level");
        return None;
    }
    if levels.windows(2).any(|w| w[1] <= w[0]) {
        p.at(
            None,
            &t.path_of("users"),
            "levels must increase, so that the knee is the first that saturates",
        );
        return None;
    }
    let Some(step) = step else {
        if t.span_of("step").is_none() {
            p.at(
                None,
                &t.path_of("step"),
                "missing: how long each level lasts, such as \"30s\"",
            );
        }
        return None;
    };
    let steps = levels
        .into_iter()
        .map(|level| Step {
            level,
            duration: step,
            ramp: Duration::ZERO,
        })
        .collect();
    Some((kind, steps))
}
