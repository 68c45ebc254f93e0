//! Load profiles: the TOML schema, its defaults, and validation that
//! reports every problem at once with file, line, key and value.
//!
//! Precedence is settled here and only here: command line, then profile,
//! then default.

mod doc;
mod gates;
mod grades;
mod load;
mod metrics;
mod prompts;
pub mod replay;
mod settings;
mod target;
mod trace;

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use stampede_agent::api::{ApiConfig, Dialect};
use stampede_agent::http::Endpoint;
use stampede_sim::OutputLength;

pub use doc::{Problem, parse_duration, parse_positive_duration};
use doc::{Problems, Table};
pub use gates::{DEFAULT_RATIO, Slo, Threshold, Thresholds};
pub use grades::{Band, Grade, Grades};
pub use load::{Load, Model, Shape, Step};
pub use metrics::{MetricsTable, Push};
pub use settings::{Flags, Setting};
pub use trace::{DEFAULT_SERVICE, TraceTable};

use crate::dataset::Prompt;

/// The server under test.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Base URL; `None` runs the built-in simulator.
    pub url: Option<String>,
    /// Server dialect, path, headers, extra body fields and, for
    /// `http-json`, the template and pointers.
    pub api: ApiConfig,
    /// Model name; `None` asks the server (`/v1/models`).
    pub model: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// The target model's tokenizer: agents count tokens with it.
    pub tokenizer: Option<TokenizerFile>,
    /// The longest `Retry-After` (on a 429 or 503) a closed-loop user
    /// waits out before its next request; `None` ignores `Retry-After`.
    pub retry_after_max: Option<Duration>,
}

/// The longest `Retry-After` honoured unless the profile says otherwise:
/// a rate limit's window is typically a minute.
pub const DEFAULT_RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// A Hugging Face `tokenizer.json`, read and checked when the profile is
/// loaded; its content is sent to every agent.
#[derive(Clone, PartialEq)]
pub struct TokenizerFile {
    /// The path as given (in the profile, relative to the profile's
    /// folder; on the command line, to the working directory).
    pub name: String,
    /// The whole file.
    pub json: Arc<[u8]>,
    /// Tokens in its vocabulary, added tokens included.
    pub vocab_size: usize,
}

impl fmt::Debug for TokenizerFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenizerFile")
            .field("name", &self.name)
            .field("bytes", &self.json.len())
            .field("vocab_size", &self.vocab_size)
            .finish()
    }
}

impl TokenizerFile {
    /// Reads and checks the tokenizer at `path`, named `name`; one larger
    /// than [`stampede_agent::tokenizer::MAX_FILE_BYTES`], which agents
    /// would refuse, is refused before it is read.
    fn read(path: &Path, name: &str) -> Result<TokenizerFile, String> {
        let (tokenizer, json) = stampede_agent::tokenizer::Tokenizer::from_file(path)?;
        Ok(TokenizerFile {
            name: name.to_owned(),
            json: json.into(),
            vocab_size: tokenizer.vocab_size(),
        })
    }
}

/// The generation parameters of each request.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Upper bound on output tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Stream answers token by token.
    pub stream: bool,
}

/// Where results go and how often they are cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Length of one reporting interval.
    pub interval: Duration,
    /// Directory under which `<run-id>/` is created.
    pub out: PathBuf,
}

/// What the run does when an agent is lost mid-run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnAgentLoss {
    /// Stop every agent; the run is aborted.
    Abort,
    /// Go on with the others; the run is degraded.
    Continue,
}

/// How the controller and its agents tell that the other is gone
/// (`[agents]` `heartbeat`, `dead_man`, `resume_limit`, `lost_after`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Each side sends a heartbeat this often.
    pub heartbeat: Duration,
    /// An agent that hears nothing from its controller this long stops
    /// its load.
    pub dead_man: Duration,
    /// An agent keeps trying to resume its session this long after it last
    /// heard from its controller, to deliver what it recorded.
    pub resume_limit: Duration,
    /// The controller declares an agent lost once it has been out of
    /// contact this long.
    pub lost_after: Duration,
}

impl Liveness {
    /// The limits as the agents receive them.
    pub fn to_wire(&self) -> stampede_proto::pb::Liveness {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        stampede_proto::pb::Liveness {
            heartbeat_ms: ms(self.heartbeat),
            dead_man_ms: ms(self.dead_man),
            resume_limit_ms: ms(self.resume_limit),
            lost_after_ms: ms(self.lost_after),
        }
    }
}

impl Default for Liveness {
    /// Limits that ride out a 5 s stall of either side: a paused process,
    /// a long garbage collection on a neighbour, a congested node.
    fn default() -> Liveness {
        Liveness {
            heartbeat: Duration::from_secs(1),
            dead_man: Duration::from_secs(10),
            resume_limit: Duration::from_secs(120),
            lost_after: Duration::from_secs(10),
        }
    }
}

/// The server's own Prometheus metrics, scraped during the run.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerMetrics {
    /// Scrape at all.
    pub enabled: bool,
    /// The page; `None` tries the target's `/metrics`.
    pub url: Option<String>,
    /// Time between scrapes.
    pub interval: Duration,
}

/// How closed-loop users play sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sessions {
    /// Pause between a turn's answer and the session's next turn.
    pub think: Duration,
}

/// A validated load profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The file it came from.
    pub path: PathBuf,
    /// The file's text, as read; each run keeps a copy.
    pub source: String,
    /// The command line's settings laid over it, as typed.
    pub overrides: Vec<String>,
    /// Profile name (default: the file name without extension).
    pub name: String,
    /// Run seed: prompt order and every agent's seed derive from it.
    pub seed: u64,
    /// The server under test.
    pub target: Target,
    /// The load.
    pub load: Load,
    /// Request parameters.
    pub request: Request,
    /// The prompt dataset.
    pub prompts: Vec<Prompt>,
    /// Where the prompts came from, for the summary.
    pub prompt_source: String,
    /// What the prompt classes were measured in.
    pub classes_by: crate::dataset::ClassBy,
    /// Set when users play multi-turn sessions (`[prompts] sessions`):
    /// each prompt is then a conversation.
    pub sessions: Option<Sessions>,
    /// The shared prefixes the synthetic prompts were built with, if any.
    pub shared_prefix: Option<crate::dataset::synthetic::SharedWorkload>,
    /// Agents the controller starts in-process.
    pub agents: NonZeroU32,
    /// What to do when an agent is lost mid-run.
    pub on_agent_loss: OnAgentLoss,
    /// How the controller and the agents tell that the other is gone.
    pub liveness: Liveness,
    /// Reporting.
    pub report: Report,
    /// The built-in simulator, used when no target URL is given.
    pub sim: stampede_sim::Config,
    /// The server's own metrics.
    pub server_metrics: ServerMetrics,
    /// Per-request objectives (goodput), when the profile sets some.
    pub slo: Option<Slo>,
    /// Pass/fail limits.
    pub thresholds: Thresholds,
    /// The bands TTFT and TPOT are graded by.
    pub grades: Grades,
    /// The `[trace]` table; resolve it against the environment.
    pub trace: TraceTable,
    /// The `[metrics]` table; resolve it against the environment.
    pub metrics: MetricsTable,
}

/// Values from the command line, which win over the profile.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--target URL`.
    pub target: Option<String>,
    /// `--tokenizer PATH`.
    pub tokenizer: Option<PathBuf>,
    /// `--duration D`.
    pub duration: Option<Duration>,
    /// `--out DIR`.
    pub out: Option<PathBuf>,
    /// Settings from other flags and `--set`, laid over the profile in
    /// order (a later one wins).
    pub settings: Vec<Setting>,
}

/// A profile that cannot be used.
#[derive(Debug)]
pub enum ProfileError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid profile; every problem is listed.
    Invalid {
        /// The file.
        path: PathBuf,
        /// Each problem, in file order.
        problems: Vec<Problem>,
    },
}

impl std::error::Error for ProfileError {}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Read { path, source } => {
                write!(f, "{}: cannot read the profile: {source}", path.display())
            }
            ProfileError::Invalid { path, problems } => {
                for p in problems {
                    match &p.origin {
                        Some(origin) => write!(f, "{origin}")?,
                        None => write!(f, "{}", path.display())?,
                    }
                    if p.line > 0 {
                        write!(f, ":{}:{}", p.line, p.column)?;
                    }
                    if !p.key.is_empty() {
                        write!(f, ": {}", p.key)?;
                    }
                    writeln!(f, ": {}", p.message)?;
                }
                let n = problems.len();
                write!(f, "{n} problem{} in {}", if n == 1 { "" } else { "s" }, path.display())
            }
        }
    }
}

impl Profile {
    /// Reads, validates and applies `overrides` to the profile at `path`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Profile, ProfileError> {
        use stampede_agent::file::{ReadError, read_text};
        let read_error = |source| ProfileError::Read {
            path: path.to_owned(),
            source,
        };
        let source = read_text(path, MAX_PROFILE_BYTES).map_err(|e| match e {
            ReadError::Io(e) => read_error(e),
            e @ ReadError::TooLarge { .. } => read_error(std::io::Error::new(std::io::ErrorKind::FileTooLarge, e)),
            e @ ReadError::NotText { .. } => read_error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        })?;
        Profile::parse(&source, path, overrides)
    }

    /// Validates profile text with the command line's settings laid over
    /// it; `path` names it in messages.
    pub fn parse(source: &str, path: &Path, overrides: &Overrides) -> Result<Profile, ProfileError> {
        let (text, ranges) = settings::text(source, &overrides.settings);
        let labels = ranges
            .iter()
            .cloned()
            .zip(overrides.settings.iter().map(|s| s.origin.clone()))
            .collect();
        let mut p = Problems::with_settings(&text, labels);
        let profile = match toml::de::DeTable::parse(&text[..source.len().min(text.len())]) {
            Ok(doc) => {
                let mut root = doc.into_inner();
                settings::apply(&mut root, &text, &overrides.settings, &ranges, &mut |range, message| {
                    p.at(Some(range), "", message);
                });
                walk(&root, path, overrides, &mut p)
            }
            Err(e) => {
                p.at(e.span(), "", format!("invalid TOML: {}", e.message().trim()));
                None
            }
        };
        let mut problems = p.list;
        problems.sort_by_key(|p| (p.line, p.column));
        match profile {
            Some(profile) if problems.is_empty() => Ok(Profile {
                source: source.to_owned(),
                overrides: overrides.settings.iter().map(|s| s.origin.clone()).collect(),
                ..profile
            }),
            _ => Err(ProfileError::Invalid {
                path: path.to_owned(),
                problems,
            }),
        }
    }
}

/// The largest profile read: profiles are a few KiB, and even one with
/// thousands of inline prompts is far below this.
const MAX_PROFILE_BYTES: u64 = 64 << 20;

/// Largest values accepted, to catch typos such as an extra zero digit
/// run long before they exhaust memory.
pub const MAX_AGENTS: u64 = 10_000;
const MAX_TOKENS: u64 = 10_000_000;
/// The shortest report interval.
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Most frequent scrape of the server's metrics.
const MIN_SCRAPE_INTERVAL: Duration = Duration::from_millis(100);

/// A count of agents given outside a profile (`--expect-agents`), checked
/// as `agents.count` is and refused with the same words.
pub fn agent_count(text: &str) -> Result<NonZeroU32, String> {
    text.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_AGENTS).contains(n))
        .and_then(|n| NonZeroU32::new(u32::try_from(n).ok()?))
        .ok_or_else(|| format!("expected a positive integer up to {MAX_AGENTS}, got {text}"))
}

fn walk(root: &toml::de::DeTable<'_>, path: &Path, o: &Overrides, p: &mut Problems<'_>) -> Option<Profile> {
    let mut top = Table::root(root);
    let name = top.string(p, "name");
    let seed = top.int_in(p, "seed", 0, u64::MAX);

    let mut t = top.table(p, "target");
    let url = t.string(p, "url");
    let api = target::walk(&mut t, p);
    let model = t.string(p, "model");
    let timeout = t.millis(p, "timeout", false);
    let retry_after = t.bool(p, "retry_after");
    let retry_after_max = t.millis(p, "retry_after_max", false);
    let base = path.parent().unwrap_or(Path::new("."));
    let tokenizer = match (&o.tokenizer, t.string(p, "tokenizer")) {
        (Some(cli), _) => {
            let name = cli.display().to_string();
            TokenizerFile::read(cli, &name)
                .map_err(|e| p.at(None, "--tokenizer", e))
                .ok()
        }
        (None, Some(name)) => TokenizerFile::read(&base.join(&name), &name)
            .map_err(|e| p.at(t.span_of("tokenizer"), &t.path_of("tokenizer"), e))
            .ok(),
        (None, None) => None,
    };
    let tokenizer_path = match (&o.tokenizer, &tokenizer) {
        (Some(cli), Some(_)) => Some(cli.clone()),
        (None, Some(t)) => Some(base.join(&t.name)),
        _ => None,
    };
    let url = match &o.target {
        Some(cli) => {
            if let Err(e) = Endpoint::parse(cli) {
                p.at(None, "--target", e.to_string());
            }
            Some(cli.clone())
        }
        None => {
            if let Some(u) = &url
                && let Err(e) = Endpoint::parse(u)
            {
                p.at(t.span_of("url"), &t.path_of("url"), e.to_string());
            }
            url
        }
    };
    t.finish(p);

    let mut rep = top.table(p, "report");
    let interval = rep.millis(p, "interval", false).filter(|&d| {
        let short = d < MIN_REPORT_INTERVAL;
        if short {
            p.at(
                rep.span_of("interval"),
                &rep.path_of("interval"),
                format!(
                    "expected at least {MIN_REPORT_INTERVAL:?} (each agent sends a report of every histogram each interval), got {d:?}"
                ),
            );
        }
        !short
    });
    let out = rep.string(p, "out");
    rep.finish(p);

    let mut l = top.table(p, "load");
    let cli = load::Cli {
        duration: o.duration,
        interval: interval.unwrap_or(Duration::from_secs(1)),
        base: base.to_owned(),
    };
    let load = load::walk(&mut l, p, &cli);
    l.finish(p);

    let mut r = top.table(p, "request");
    let max_tokens = r.int_in(p, "max_tokens", 1, MAX_TOKENS);
    let temperature = r.number_in(p, "temperature", 0.0, 2.0);
    let stream = r.bool(p, "stream");
    r.finish(p);

    let prompts_given = top.has("prompts");
    let mut d = top.table(p, "prompts");
    let default_tokenizer = tokenizer_path
        .as_deref()
        .zip(tokenizer.as_ref().map(|t| t.name.as_str()));
    let sessions_on = d.bool(p, "sessions").unwrap_or(false);
    let turn_think = d.duration(p, "turn_think", true);
    if turn_think.is_some() && !sessions_on {
        p.at(
            d.span_of("turn_think"),
            &d.path_of("turn_think"),
            "applies to sessions: set prompts.sessions = true too",
        );
    }
    let dataset = prompts::walk(&mut d, p, base, seed.unwrap_or(0), default_tokenizer, sessions_on);
    d.finish(p);
    let sessions = sessions_on.then(|| Sessions {
        think: turn_think.unwrap_or(Duration::ZERO),
    });

    let mut a = top.table(p, "agents");
    let agents = a.int_in(p, "count", 1, MAX_AGENTS);
    let on_agent_loss = a.choice(p, "on_agent_loss", &["abort", "continue"]);
    let liveness = liveness(&mut a, p);
    a.finish(p);

    let mut s = top.table(p, "sim");
    let defaults = stampede_sim::Config::default();
    let max_batch = s.int_in(p, "max_batch", 1, 1_000_000);
    let prefill_base = s.duration(p, "prefill_base", true);
    let prefill_per_token = s.duration(p, "prefill_per_token", true);
    let decode_step = s.duration(p, "decode_step", false);
    let decode_step_per_seq = s.duration(p, "decode_step_per_seq", true);
    let output_tokens = s
        .string(p, "output_tokens")
        .and_then(|text| match text.parse::<OutputLength>() {
            Ok(o) => Some(o),
            Err(e) => {
                p.at(s.span_of("output_tokens"), &s.path_of("output_tokens"), e);
                None
            }
        });
    let sim_seed = s.int_in(p, "seed", 0, u64::MAX);
    let generate_shape = s.choice(p, "generate_shape", &["tgi", "seconds", "ms"]);
    let step_overhead = s.duration(p, "step_overhead", true);
    let load_time = s.duration(p, "load_time", true);
    let dcgm = s.bool(p, "dcgm");
    let kv_cache_tokens = s.int_in(p, "kv_cache_tokens", 1, u64::from(u32::MAX));
    let tokens_per_event = s.int_in(p, "tokens_per_event", 1, u64::from(u32::MAX));
    let empty_events = s.int_in(p, "empty_events", 1, u64::from(u32::MAX));
    let prefix_cache_blocks = s.int_in(p, "prefix_cache_blocks", 0, u64::from(u32::MAX));
    let prefix_block_tokens = s.int_in(p, "prefix_block_tokens", 1, u64::from(u32::MAX));
    let sim_span = s.span_of("step_overhead");
    let sim_key = s.path_of("step_overhead");
    let (faults_span, faults_key) = (s.span_of("faults"), s.path_of("faults"));
    let mut faults: Vec<stampede_sim::FaultRule> = Vec::new();
    for (i, text) in s.strings(p, "faults").unwrap_or_default().iter().enumerate() {
        match text.parse() {
            Ok(rule) => faults.push(rule),
            Err(e) => p.at(faults_span.clone(), &format!("{faults_key}[{i}]"), e),
        }
    }
    let only_faults = stampede_sim::Config {
        faults,
        ..stampede_sim::Config::default()
    };
    // Checked here, where the problem can name the key; a rejected list
    // is dropped so that the whole check below does not name it again.
    let faults = match only_faults.check() {
        Ok(()) => only_faults.faults,
        Err(e) => {
            p.at(faults_span, &faults_key, e);
            Vec::new()
        }
    };
    s.finish(p);

    let mut sm = top.table(p, "server_metrics");
    let sm_enabled = sm.bool(p, "enabled");
    let sm_url = sm.string(p, "url");
    if let Some(u) = &sm_url
        && let Err(e) = crate::server::split_url(u)
    {
        p.at(sm.span_of("url"), &sm.path_of("url"), e);
    }
    let sm_interval = sm.duration(p, "interval", false);
    if let Some(d) = sm_interval
        && d < MIN_SCRAPE_INTERVAL
    {
        p.at(
            sm.span_of("interval"),
            &sm.path_of("interval"),
            format!("scraping more often than every {MIN_SCRAPE_INTERVAL:?} would load the server; use 100ms or more"),
        );
    }
    sm.finish(p);
    let present = top.has("trace");
    let mut tr = top.table(p, "trace");
    let trace = trace::walk(&mut tr, p, present);
    tr.finish(p);
    let mut me = top.table(p, "metrics");
    let metrics = metrics::walk(&mut me, p);
    me.finish(p);

    let slo_present = top.has("slo");
    let mut sl = top.table(p, "slo");
    let slo = gates::slo(&mut sl, p, slo_present);
    sl.finish(p);
    let mut th = top.table(p, "thresholds");
    let context = gates::Context {
        steps: load.as_ref().map_or(1, |l| l.steps.len()),
        slo: slo.is_some(),
    };
    let thresholds = gates::thresholds(&mut th, p, &context);
    th.finish(p);
    let mut gr = top.table(p, "grades");
    let grades = grades::grades(&mut gr, p);
    gr.finish(p);
    top.finish(p);

    let (mut prompts, mut prompt_source, mut classes_by, shared_prefix) = dataset?;
    let agents = agents
        .and_then(|n| NonZeroU32::new(u32::try_from(n).ok()?))
        .unwrap_or(NonZeroU32::MIN);
    let load = load?;
    if sessions.is_some() && !matches!(load.model, Model::Users { .. }) {
        p.at(
            None,
            "prompts.sessions",
            "sessions are played by closed-loop users: use load.users (an open-loop rate has no user to hold a conversation)",
        );
    }
    if let Some(replay) = &load.trace {
        // The trace's rows are the prompts, one per arrival, in order.
        if prompts_given {
            p.at(
                None,
                "prompts",
                "a trace replay (load.trace) gives every request its prompt; remove [prompts]",
            );
        }
        let counter = match &tokenizer_path {
            Some(path) => crate::dataset::synthetic::Counter::from_file(path),
            None => Ok(crate::dataset::synthetic::Counter::words()),
        };
        match counter.and_then(|c| replay.prompts(seed.unwrap_or(0), &c)) {
            // Classed by the rows' input lengths.
            Ok(built) => (prompts, classes_by) = (built, crate::dataset::ClassBy::Tokens),
            Err(e) => p.at(None, "load.trace", e),
        }
        prompt_source = format!("trace {}", replay.file);
        if prompts.len() < agents.get() as usize {
            p.at(
                None,
                "load.trace",
                format!(
                    "{} replayed row(s) cannot give each of {agents} agents an arrival of its own; replay more rows or use fewer agents",
                    prompts.len()
                ),
            );
            return None;
        }
    }
    let needing_prompts = crate::plan::loaded_agents(&load, agents.get()) as usize;
    if prompts.len() < needing_prompts {
        p.at(
            None,
            "prompts",
            format!(
                "{} prompt(s) cannot give each of {needing_prompts} agents with load a share of its own; add prompts or use fewer agents",
                prompts.len()
            ),
        );
    }
    let sim = stampede_sim::Config {
        max_batch: max_batch.map_or(defaults.max_batch, |n| n as u32),
        prefill_base: prefill_base.unwrap_or(defaults.prefill_base),
        prefill_per_token: prefill_per_token.unwrap_or(defaults.prefill_per_token),
        decode_step: decode_step.unwrap_or(defaults.decode_step),
        decode_step_per_seq: decode_step_per_seq.unwrap_or(defaults.decode_step_per_seq),
        step_overhead: step_overhead.unwrap_or(defaults.step_overhead),
        load_time: load_time.unwrap_or(defaults.load_time),
        kv_cache_tokens: kv_cache_tokens.map(|n| n as u32).or(defaults.kv_cache_tokens),
        dcgm: dcgm.unwrap_or(defaults.dcgm),
        tokens_per_event: tokens_per_event.map_or(defaults.tokens_per_event, |n| n as u32),
        empty_events: empty_events.map(|n| n as u32).or(defaults.empty_events),
        prefix_cache_blocks: prefix_cache_blocks.map_or(defaults.prefix_cache_blocks, |n| n as u32),
        prefix_block_tokens: prefix_block_tokens.map_or(defaults.prefix_block_tokens, |n| n as u32),
        output_tokens: output_tokens.unwrap_or(defaults.output_tokens),
        model: defaults.model,
        seed: sim_seed.unwrap_or(defaults.seed),
        generate_shape: match generate_shape.as_deref() {
            Some("seconds") => stampede_sim::GenerateShape::Seconds,
            Some("ms") => stampede_sim::GenerateShape::Millis,
            Some(_) => stampede_sim::GenerateShape::Tgi,
            None => defaults.generate_shape,
        },
        faults,
    };
    if let Err(e) = sim.check() {
        p.at(sim_span, &sim_key, e);
    }
    let default_name = path
        .file_stem()
        .map_or_else(|| "run".to_owned(), |s| s.to_string_lossy().into_owned());
    Some(Profile {
        path: path.to_owned(),
        source: String::new(),
        overrides: Vec::new(),
        name: name.unwrap_or(default_name),
        seed: seed.unwrap_or(0),
        target: Target {
            url,
            api: api.unwrap_or_else(|| ApiConfig::plain(Dialect::OpenAiChat)),
            model,
            timeout: timeout.unwrap_or(Duration::from_secs(120)),
            tokenizer,
            retry_after_max: (retry_after != Some(false)).then(|| retry_after_max.unwrap_or(DEFAULT_RETRY_AFTER_MAX)),
        },
        load,
        request: Request {
            max_tokens: max_tokens.map(|n| n as u32),
            temperature,
            stream: stream.unwrap_or(true),
        },
        prompts,
        prompt_source,
        classes_by,
        sessions,
        shared_prefix,
        agents,
        on_agent_loss: match on_agent_loss.as_deref() {
            Some("continue") => OnAgentLoss::Continue,
            _ => OnAgentLoss::Abort,
        },
        liveness,
        report: Report {
            interval: interval.unwrap_or(Duration::from_secs(1)),
            out: o
                .out
                .clone()
                .or(out.map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("results")),
        },
        sim,
        server_metrics: ServerMetrics {
            enabled: sm_enabled.unwrap_or(true),
            url: sm_url,
            interval: sm_interval.unwrap_or(Duration::from_secs(1)),
        },
        slo,
        thresholds,
        grades,
        trace,
        metrics,
    })
}

/// `[agents]`' liveness limits, checked against one another: a heartbeat
/// must fit several times into each limit, and an agent must go on trying
/// to deliver at least as long as it keeps its load running.
fn liveness(a: &mut Table<'_, '_>, p: &mut Problems<'_>) -> Liveness {
    let d = Liveness::default();
    let heartbeat = a.millis(p, "heartbeat", false);
    let dead_man = a.millis(p, "dead_man", false);
    let resume_limit = a.millis(p, "resume_limit", false);
    let lost_after = a.millis(p, "lost_after", false);
    let l = Liveness {
        heartbeat: heartbeat.unwrap_or(d.heartbeat),
        dead_man: dead_man.unwrap_or(d.dead_man),
        resume_limit: resume_limit.unwrap_or(d.resume_limit),
        lost_after: lost_after.unwrap_or(d.lost_after),
    };
    if l.heartbeat < Duration::from_millis(100) {
        let key = "heartbeat";
        p.at(
            a.span_of(key),
            &a.path_of(key),
            "at least \"100ms\": heartbeats are not free",
        );
    }
    for (key, given, limit) in [
        ("dead_man", dead_man, l.dead_man),
        ("lost_after", lost_after, l.lost_after),
    ] {
        if limit < l.heartbeat * 3 {
            let why = format!(
                "at least three heartbeats ({:?}): one late heartbeat must not end a session",
                l.heartbeat * 3
            );
            let key_span = if given.is_some() { key } else { "heartbeat" };
            p.at(a.span_of(key_span), &a.path_of(key), why);
        }
    }
    if l.resume_limit < l.dead_man {
        p.at(
            a.span_of("resume_limit"),
            &a.path_of("resume_limit"),
            format!(
                "at least agents.dead_man ({:?}): an agent must go on trying to deliver what it recorded for as long as it keeps its load running",
                l.dead_man
            ),
        );
    }
    l
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
