//! `controller`: runs a load profile and reports what the server did.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use stampede_agent::file;
use stampede_controller::compare;
use stampede_controller::figure::Limit;
use stampede_controller::profile::{Flags, Overrides, Profile, Setting, agent_count, parse_positive_duration};
use stampede_controller::report::{self, terminal};
use stampede_controller::results;
use stampede_controller::{Agents, Interrupt, Listen, Options, run};

/// Exit code for bad input: a profile or flag that cannot be used.
const EX_USAGE: u8 = 64;
/// What a run described by flags alone is named after.
const COMMAND_LINE: &str = "command-line";

/// stampede: load-test an LLM inference server and find out where the time
/// goes.
#[derive(Debug, Parser)]
#[command(name = "controller", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a load profile. With no target in the profile or on the command
    /// line, the built-in simulated server is the target.
    Run(Box<RunArgs>),
    /// Check profiles without running them; prints every problem found.
    Validate {
        /// Profiles to check.
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
    /// Rebuild a finished run's summary.json, report.html and CSV files
    /// from its directory alone (intervals.jsonl, server-metrics.jsonl),
    /// print its summary, and exit with its verdict's code.
    Report {
        /// The run's results directory, such as results/<run-id>.
        dir: PathBuf,
        /// Write the rebuilt files into this directory instead of the run's.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare runs: every figure of each run against the first (the
    /// baseline), with the difference and whether it changed beyond noise;
    /// writes compare.json and compare.html. Exits 99 when a --fail-if
    /// limit is broken.
    Compare(CompareArgs),
    /// Print the JSON Schema of summary.json (also kept in the repository
    /// as docs/summary.schema.json).
    Schema,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// Run directories (results/<run-id>); the first is the baseline.
    #[arg(required = true, num_args = 2..)]
    runs: Vec<PathBuf>,
    /// A regression limit, such as ttft.p95=+10%, requests_per_s=-5% or
    /// tpot.p50=+2ms: a change past it, beyond noise, fails the
    /// comparison. Repeat for several.
    #[arg(long = "fail-if", value_name = "FIGURE=±AMOUNT", value_parser = Limit::parse)]
    fail_if: Vec<Limit>,
    /// The smallest change counted as one, as a share of the baseline;
    /// smaller differences are within noise whatever the test says.
    #[arg(long, default_value = "1%", value_parser = parse_share)]
    min_change: f64,
    /// Directory for compare.json and compare.html [default: the last
    /// run's directory].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A share written as a percentage (`2%`) or a fraction (`0.02`).
fn parse_share(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => s.trim().parse::<f64>(),
    };
    v.ok()
        .filter(|v| (0.0..1.0).contains(v))
        .ok_or_else(|| format!("expected a share such as \"1%\" or \"0.01\", from 0 up to 100%, got {s:?}"))
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The load profile (TOML); without one, the flags below describe the
    /// run (at least --users or --rate).
    profile: Option<PathBuf>,
    /// Closed-loop users, replacing the profile's load model.
    #[arg(long, value_name = "N")]
    users: Option<String>,
    /// Open-loop arrivals per second, replacing the profile's load model.
    #[arg(long, value_name = "R", conflicts_with = "users")]
    rate: Option<String>,
    /// Send this many requests in all, then stop (or at --duration,
    /// whichever comes first); split across agents like the users.
    #[arg(long, value_name = "N")]
    requests: Option<String>,
    /// The model name to send [default: the profile's, else the first the
    /// server lists].
    #[arg(long)]
    model: Option<String>,
    /// The server's dialect, such as openai-chat, openai-completions,
    /// ollama or tgi [default: the profile's, else openai-chat].
    #[arg(long)]
    api: Option<String>,
    /// Upper bound on each answer's tokens.
    #[arg(long, value_name = "N")]
    max_tokens: Option<String>,
    /// Synthetic prompts of this many tokens, replacing the profile's
    /// prompts.
    #[arg(long, value_name = "N")]
    prompt_tokens: Option<String>,
    /// The synthetic prompts' answers: this many tokens each (with
    /// --prompt-tokens).
    #[arg(long, value_name = "N", requires = "prompt_tokens")]
    output_tokens: Option<String>,
    /// Set any profile key, such as load.users=25, target.model=llama or
    /// 'thresholds."ttft.p95"=< 500ms'; repeat for several. The named
    /// flags above win over these, and both over the profile.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = Setting::parse)]
    set: Vec<Setting>,
    /// Base URL of the server under test, such as http://gpu-box:8000
    /// [default: the profile's target.url, else the built-in simulator].
    #[arg(long)]
    target: Option<String>,
    /// The target model's Hugging Face tokenizer.json: agents count each
    /// answer's tokens with it, beside the server's count [default: the
    /// profile's target.tokenizer].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Agents to start in this process [default: the profile's agents.count].
    #[arg(long, value_name = "N")]
    agents: Option<String>,
    /// How long to issue new requests, such as 30s or 2m [default: the
    /// profile's load.duration].
    #[arg(long, value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    /// Directory for results; each run writes <out>/<run-id>/ [default: the
    /// profile's report.out].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Wait for remote agents on this address (such as 0.0.0.0:7000)
    /// instead of starting agents in this process.
    #[arg(long, requires = "expect_agents", conflicts_with = "agents")]
    listen: Option<String>,
    /// How many remote agents the run needs; the load is split among them.
    #[arg(long, value_name = "N", requires = "listen")]
    expect_agents: Option<String>,
    /// How long to wait for the remote agents, such as 60s.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration, requires = "listen")]
    wait: Duration,
    /// File holding the token agents must present; required when listening
    /// on an address other than loopback.
    #[arg(long, env = "STAMPEDE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM certificate chain for TLS on the agents' listener.
    #[arg(long, requires_all = ["tls_key", "listen"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on the agents' listener.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve live Prometheus metrics at http://ADDR/metrics during the run
    /// (and for 5 s after it), such as 0.0.0.0:9100.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// After the summary table, print summary.json as one line of JSON, the
    /// last line of standard output, for when the log is all there is to
    /// read (a Kubernetes Job, a compose service).
    #[arg(long)]
    print_summary: bool,
    /// The in-process agents sample this host's NVIDIA GPUs every 200 ms
    /// (for a server on this host; remote agents take `agent --gpu`).
    #[arg(long)]
    gpu: bool,
}

/// Reads a secret or a certificate file, up to `limit` bytes; the error
/// names the flag.
fn read(flag: &str, path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    file::read(path, limit).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

/// Where the agents come from, from the flags; errors are bad input.
fn agents(args: &RunArgs) -> Result<Agents, String> {
    let Some(listen) = &args.listen else {
        return Ok(Agents::Local);
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(listen)
        .map_err(|e| format!("--listen {listen}: {e} (expected HOST:PORT, such as 0.0.0.0:7000)"))?
        .next()
        .ok_or_else(|| format!("--listen {listen}: the name resolves to no address"))?;
    let token = match &args.token_file {
        None => None,
        Some(path) => {
            let text = String::from_utf8(read("--token-file", path, file::MAX_TOKEN_BYTES)?)
                .map_err(|_| format!("--token-file {}: not UTF-8 text", path.display()))?;
            let token = text.trim().to_owned();
            if token.is_empty() {
                return Err(format!("--token-file {}: the file is empty", path.display()));
            }
            Some(token)
        }
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(stampede_agent::pem::identity(cert, key)?),
        _ => None,
    };
    let expect = args
        .expect_agents
        .as_deref()
        .expect("clap requires --expect-agents with --listen");
    let expect = agent_count(expect).map_err(|e| format!("--expect-agents {expect}: {e}"))?;
    Listen::new(addr, expect, args.wait, token, tls).map(Agents::Remote)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EX_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,hyper=warn,tower=warn".into()),
        )
        .with_target(false)
        .with_writer(stampede_controller::report::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Validate { profiles } => validate(&profiles),
        Command::Schema => {
            print!("{}", stampede_controller::report::schema::summary_text());
            ExitCode::SUCCESS
        }
        Command::Run(args) => run_profile(*args),
        Command::Report { dir, out } => rebuild(&dir, out.as_deref()),
        Command::Compare(args) => compare_runs(&args),
    }
}

fn compare_runs(args: &CompareArgs) -> ExitCode {
    let mut sides = Vec::new();
    for dir in &args.runs {
        match compare::Side::load(dir) {
            Ok(side) => {
                for note in &side.notes {
                    eprintln!("controller: warning: {note}");
                }
                sides.push(side);
            }
            Err(e) => return unreadable(&e),
        }
    }
    let options = compare::Options {
        min_change: args.min_change,
        limits: args.fail_if.clone(),
    };
    let comparison = compare::compare(&sides, &options);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.runs[args.runs.len() - 1].clone());
    let written = (|| {
        std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
        let json = out.join("compare.json");
        let text = serde_json::to_vec_pretty(&comparison).expect("a comparison serializes");
        std::fs::write(&json, text).map_err(|e| format!("cannot write {}: {e}", json.display()))?;
        let html = out.join("compare.html");
        std::fs::write(&html, report::html::render_compare(&comparison, &sides))
            .map_err(|e| format!("cannot write {}: {e}", html.display()))?;
        Ok::<_, String>(vec![json.display().to_string(), html.display().to_string()])
    })();
    match written {
        Ok(files) => {
            print!("{}", compare::terminal::render(&comparison, &files));
            ExitCode::from(comparison.exit_code)
        }
        Err(e) => {
            eprintln!("controller: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A run directory that cannot be read: bad input when it holds no run.
fn unreadable(e: &results::LoadError) -> ExitCode {
    eprintln!("controller: {e}");
    match e {
        results::LoadError::NotARun { .. } => ExitCode::from(EX_USAGE),
        _ => ExitCode::FAILURE,
    }
}

fn rebuild(dir: &Path, out: Option<&Path>) -> ExitCode {
    let loaded = match results::load(dir) {
        Ok(l) => l,
        Err(e) => return unreadable(&e),
    };
    for note in &loaded.notes {
        eprintln!("controller: warning: {note}");
    }
    let out = out.unwrap_or(dir);
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("controller: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    match report::write(out, &loaded.run) {
        Ok(written) => {
            print!("{}", terminal::render(&written.summary, &written.files));
            ExitCode::from(written.summary.verdict.exit_code)
        }
        Err(e) => {
            eprintln!("controller: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(profiles: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in profiles {
        match Profile::load(path, &Overrides::default()) {
            Ok(p) if p.load.trace.is_some() => {
                println!(
                    "{}: ok ({}, {} agent{})",
                    path.display(),
                    p.load.describe(),
                    p.agents,
                    if p.agents.get() == 1 { "" } else { "s" },
                );
            }
            Ok(p) => {
                println!(
                    "{}: ok (up to {}, {} step{}, {} agent{}, {:?})",
                    path.display(),
                    p.load.label(p.load.peak()),
                    p.load.steps.len(),
                    if p.load.steps.len() == 1 { "" } else { "s" },
                    p.agents,
                    if p.agents.get() == 1 { "" } else { "s" },
                    p.load.duration()
                );
                for warning in unset_header_variables(&p) {
                    eprintln!("{}: warning: {warning}", path.display());
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EX_USAGE)
    }
}

/// Headers whose variable is not set here: a local run would stop on them,
/// and a remote agent needs it set in its own environment.
fn unset_header_variables(p: &Profile) -> Vec<String> {
    p.target
        .api
        .headers
        .iter()
        .filter_map(|(name, source)| match source {
            stampede_agent::api::HeaderSource::Env(var) if std::env::var_os(var).is_none() => Some(format!(
                "header {name:?} takes its value from the environment variable {var}, which is not set here; a local run stops on it, and remote agents need it in their own environment"
            )),
            _ => None,
        })
        .collect()
}

fn run_profile(args: RunArgs) -> ExitCode {
    let agents = match agents(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("controller: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let flags = Flags {
        users: args.users,
        rate: args.rate,
        requests: args.requests,
        model: args.model,
        api: args.api,
        max_tokens: args.max_tokens,
        prompt_tokens: args.prompt_tokens,
        output_tokens: args.output_tokens,
        agents: args.agents,
        set: args.set,
    };
    if args.profile.is_none() && !flags.choose_load() {
        eprintln!(
            "controller: give a profile (controller run load-profiles/high.toml), or describe the run with flags: --users N or --rate R, and --target URL for a real server (see controller run --help)"
        );
        return ExitCode::from(EX_USAGE);
    }
    let overrides = Overrides {
        target: args.target,
        tokenizer: args.tokenizer,
        duration: args.duration,
        out: args.out,
        settings: flags.settings(),
    };
    let print_summary = args.print_summary;
    let loaded = match &args.profile {
        Some(path) => Profile::load(path, &overrides),
        None => Profile::parse("", Path::new(COMMAND_LINE), &overrides),
    };
    let profile = match loaded {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // In-process agents and the built-in simulator share this process's
    // open files.
    let files = stampede_agent::raise_open_file_limit();
    tracing::debug!(?files, "open-file limit");
    let interrupt = Interrupt::default();
    runtime.spawn(watch_signals(interrupt.clone()));
    let options = Options {
        agents,
        metrics: args.metrics_addr,
        gpu: args.gpu,
    };
    match runtime.block_on(run(profile, options, interrupt)) {
        Ok(finished) => {
            print!("{}", terminal::render(&finished.summary, &finished.files));
            if print_summary {
                let json = serde_json::to_string(&finished.summary).expect("the summary always serializes");
                println!("{json}");
            }
            ExitCode::from(finished.summary.verdict.exit_code)
        }
        Err(e @ stampede_controller::RunError::Plan(_)) => {
            eprintln!("controller: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("controller: {e}");
            ExitCode::FAILURE
        }
    }
}

/// First SIGINT or SIGTERM: stop issuing requests and let in-flight ones
/// finish. Second: abandon them. Third: exit at once.
async fn watch_signals(interrupt: Interrupt) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot watch signals; interrupts will end the process at once");
        return;
    };
    for count in 1.. {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        match count {
            1 => interrupt.stop.cancel(),
            2 => interrupt.abort.cancel(),
            _ => std::process::exit(130),
        }
    }
}
