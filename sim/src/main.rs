//! `llm-sim`: a simulated LLM inference server.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// A simulated LLM inference server with an OpenAI-compatible API and
/// ground-truth Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "llm-sim", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free port. The address is printed.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Export a span per request (queue, prefill, decode) to this OTLP
    /// collector, for requests whose traceparent is sampled.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_PROTOCOL",
        default_value = "grpc",
        value_name = "PROTOCOL"
    )]
    otlp_protocol: String,
    /// service.name of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "llm-sim", value_name = "NAME")]
    otlp_service: String,
    /// Write each chat request's messages, and the answer sent back, as
    /// one JSON line to this file: what a client really sent.
    #[arg(long, value_name = "FILE")]
    record: Option<std::path::PathBuf>,
    /// For each streamed OpenAI request with a traceparent, write its trace
    /// id and the wall-clock time (µs since the Unix epoch) at which its
    /// first token was handed to the connection, as one JSON line to this
    /// file: the ground truth for a client's time to first token.
    #[arg(long, value_name = "FILE")]
    record_first_writes: Option<std::path::PathBuf>,
    #[command(flatten)]
    config: stampede_sim::Config,
}

fn main() -> ExitCode {
    raise_open_file_limit();
    let cli = Cli::parse();
    if let Err(e) = cli.config.check() {
        use clap::CommandFactory as _;
        Cli::command().error(clap::error::ErrorKind::ArgumentConflict, e).exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llm-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as the
/// controller and the agent do: the server holds a socket per connection,
/// and the common default of 1,024 would refuse a heavy load's users.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((cli.host, cli.port))
        .await
        .with_context(|| format!("binding {}:{}", cli.host, cli.port))?;
    let addr = listener.local_addr()?;
    // The first line of stdout is the address, for scripts and tests.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "llm-sim listening on http://{addr}")?;
    stdout.flush()?;
    tracing::info!(max_batch = cli.config.max_batch, model = %cli.config.model, "serving");
    let spans = match &cli.otlp_endpoint {
        Some(base) => {
            let protocol: stampede_otel::Protocol = cli.otlp_protocol.parse().map_err(anyhow::Error::msg)?;
            let config = stampede_otel::Config::new(base, protocol, &cli.otlp_service)
                .map_err(|e| anyhow::anyhow!("--otlp-endpoint: {e}"))?;
            tracing::info!(endpoint = %config.endpoint, %protocol, "exporting request spans");
            Some(stampede_sim::trace::exporter(&config).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let record = stampede_sim::Recording {
        requests: cli.record.as_deref(),
        first_writes: cli.record_first_writes.as_deref(),
    };
    stampede_sim::serve_recorded(cli.config, spans.clone(), record, listener, shutdown).await?;
    if let Some(spans) = spans {
        // Bounded: a collector that is gone costs at most this long.
        let stats = tokio::task::spawn_blocking(move || spans.close(std::time::Duration::from_secs(2))).await?;
        tracing::info!(
            exported = stats.exported,
            dropped = stats.dropped,
            "request spans flushed"
        );
    }
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
