//! `controller`: runs a load profile and reports what the server did.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use stampede_controller::profile::{Overrides, Profile, parse_duration};
use stampede_controller::report::terminal;
use stampede_controller::{Interrupt, run};

/// Exit code for bad input: a profile or flag that cannot be used.
const EX_USAGE: u8 = 64;

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
    Run(RunArgs),
    /// Check profiles without running them; prints every problem found.
    Validate {
        /// Profiles to check.
        #[arg(required = true)]
        profiles: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The load profile (TOML).
    profile: PathBuf,
    /// Base URL of the server under test, such as http://gpu-box:8000
    /// [default: the profile's target.url, else the built-in simulator].
    #[arg(long)]
    target: Option<String>,
    /// Agents to start in this process [default: the profile's agents.count].
    #[arg(long)]
    agents: Option<NonZeroU32>,
    /// How long to issue new requests, such as 30s or 2m [default: the
    /// profile's load.duration].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Directory for results; each run writes <out>/<run-id>/ [default: the
    /// profile's report.out].
    #[arg(long)]
    out: Option<PathBuf>,
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
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Validate { profiles } => validate(&profiles),
        Command::Run(args) => run_profile(args),
    }
}

fn validate(profiles: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in profiles {
        match Profile::load(path, &Overrides::default()) {
            Ok(p) => println!(
                "{}: ok ({} users, {} agents, {:?})",
                path.display(),
                p.users(),
                p.agents,
                p.load.duration
            ),
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

fn run_profile(args: RunArgs) -> ExitCode {
    let overrides = Overrides {
        target: args.target,
        agents: args.agents,
        duration: args.duration,
        out: args.out,
    };
    let profile = match Profile::load(&args.profile, &overrides) {
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
    let interrupt = Interrupt::default();
    runtime.spawn(watch_signals(interrupt.clone()));
    match runtime.block_on(run(profile, interrupt)) {
        Ok(finished) => {
            let path = finished.dir.join("summary.json");
            print!(
                "{}",
                terminal::render(&finished.summary, &path.display().to_string())
            );
            ExitCode::from(finished.summary.verdict.exit_code)
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
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
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
