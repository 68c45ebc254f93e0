//! `agent`: joins a stampede run and generates its share of the load.

use std::process::ExitCode;

use clap::Parser;
use stampede_agent::{Config, Error};
use tokio_util::sync::CancellationToken;

/// A stampede load agent. It dials the controller, receives its share of
/// the load, and streams measurements back.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Cli {
    /// The controller's URL, such as http://controller:7000.
    #[arg(long, env = "STAMPEDE_CONTROLLER")]
    controller: String,
    /// This agent's name in the run [default: agent-$JOB_COMPLETION_INDEX,
    /// or the hostname].
    #[arg(long)]
    name: Option<String>,
}

fn default_name() -> String {
    if let Ok(index) = std::env::var("JOB_COMPLETION_INDEX") {
        return format!("agent-{index}");
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("agent-{}", std::process::id()))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config {
        controller: cli.controller,
        name: cli.name.unwrap_or_else(default_name),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(stop_on_signal(shutdown.clone()));
    match runtime.block_on(stampede_agent::run(config, shutdown)) {
        Ok(ended) => {
            tracing::info!(
                ok = ended.counters.ok,
                failed = ended.counters.failed(),
                "run complete"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::from(match e {
                Error::ControllerLost(_) => 3,
                Error::Interrupted => 130,
                _ => 1,
            })
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    shutdown.cancel();
}
