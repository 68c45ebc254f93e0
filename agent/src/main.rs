//! `agent`: joins a stampede run and generates its share of the load.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use stampede_agent::{Config, Error};
use tokio_util::sync::CancellationToken;

/// A stampede load agent. It dials the controller, receives its share of
/// the load, and streams measurements back.
#[derive(Debug, Parser)]
#[command(name = "agent", version)]
struct Cli {
    /// The controller's URL, such as http://controller:7000 (https:// for
    /// TLS).
    #[arg(long, env = "STAMPEDE_CONTROLLER")]
    controller: String,
    /// File holding the token the controller expects.
    #[arg(long, env = "STAMPEDE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// This agent's name in the run [default: agent-$JOB_COMPLETION_INDEX,
    /// or the hostname].
    #[arg(long)]
    name: Option<String>,
    /// PEM file of the certificate authority that signed the controller's
    /// certificate [default: the web PKI roots].
    #[arg(long)]
    ca: Option<PathBuf>,
    /// How long to keep trying to reach the controller, such as 60s.
    #[arg(long, default_value = "60s", value_parser = positive_duration)]
    wait: Duration,
    /// Sample this host's NVIDIA GPUs (utilisation, memory, power) every
    /// 200 ms through NVML and send the readings with the reports. Without
    /// a driver or a device the run goes on, and the summary says "no GPU
    /// found".
    #[arg(long, env = "STAMPEDE_GPU")]
    gpu: bool,
}

/// A duration flag, refused with the words the controller's flags use.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(r#"expected a positive duration such as "30s", "2m" or "250ms""#.to_owned()),
    }
}

/// Reads a secret or a certificate file, up to `limit` bytes; the error
/// names the flag.
fn read(flag: &str, path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    stampede_agent::file::read(path, limit).map_err(|e| format!("{flag} {}: {e}", path.display()))
}

fn token(path: &Path) -> Result<String, String> {
    let bytes = read("--token-file", path, stampede_agent::file::MAX_TOKEN_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| format!("--token-file {}: not UTF-8 text", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("--token-file {}: the file is empty", path.display()));
    }
    Ok(token.to_owned())
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

/// Request-span export from the standard `OTEL_*` variables, used when the
/// controller sends no trace settings; `None` when they name no endpoint.
fn trace_from_env() -> Result<Option<stampede_proto::pb::Trace>, String> {
    let env = stampede_otel::from_env(|k| std::env::var(k).ok())?;
    if env.disabled {
        return Ok(None);
    }
    let Some(endpoint) = env.endpoint else {
        return Ok(None);
    };
    Ok(Some(stampede_proto::pb::Trace {
        protocol: env.protocol.unwrap_or(stampede_otel::Protocol::Grpc).to_string(),
        endpoint,
        sample_ratio: env.sample_ratio.unwrap_or(1.0),
        service_name: env.service_name.unwrap_or_else(|| "stampede".to_owned()),
        run_traceparent: String::new(),
    }))
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let token = cli.token_file.as_deref().map(token).transpose();
    let ca = cli
        .ca
        .as_ref()
        .map(|p| stampede_agent::pem::certificates("--ca", p))
        .transpose();
    let (token, ca) = match (token, ca) {
        (Ok(t), Ok(c)) => (t, c),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("agent: {e}");
            return ExitCode::from(64);
        }
    };
    let trace = match trace_from_env() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(64);
        }
    };
    let config = Config {
        controller: cli.controller,
        name: cli.name.unwrap_or_else(default_name),
        token,
        ca,
        wait: cli.wait,
        trace,
        gpu: cli.gpu,
        in_process: false,
    };
    let runtime = match stampede_agent::load_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let files = stampede_agent::raise_open_file_limit();
    tracing::debug!(?files, "open-file limit");
    let shutdown = CancellationToken::new();
    runtime.spawn(stop_on_signal(shutdown.clone()));
    match runtime.block_on(stampede_agent::run(config, shutdown)) {
        Ok(ended) => {
            tracing::info!(ok = ended.counters.ok, failed = ended.counters.failed(), "run complete");
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
