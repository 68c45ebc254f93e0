//! `ttft-error`: how much later than the bytes' arrival stampede stamps a
//! request's first token, at many open streams (bench/ttft-error.sh).
//!
//! Starts an in-process OTLP collector, `llm-sim --record-first-writes`
//! (which writes down, per traced request, the wall-clock time it handed
//! the first token to the connection) and `controller run` with one local
//! agent of N users exporting every request span. Then it joins the two by
//! trace id: each request's client-added error is the `first_token` event
//! of its `llm.request` span (the agent's first-token stamp, on the same
//! host's clock) minus the simulator's first write. Prints one JSON object.

#![allow(clippy::disallowed_types)] // Watches real processes from outside: no tokio clock to share.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use serde_json::{Value, json};
use stampede_tests::collector::Collector;

/// Client-added TTFT error against a simulator that records its writes.
#[derive(Parser, Debug)]
#[command(name = "ttft-error", version)]
struct Cli {
    /// Open streams: closed-loop users of the one agent.
    #[arg(long, default_value_t = 1000)]
    streams: u32,
    /// How long users send requests.
    #[arg(long, default_value = "12s")]
    duration: String,
    /// The simulator's decode step: one token per stream this often.
    #[arg(long, default_value = "200ms")]
    decode_step: String,
    /// Tokens per answer.
    #[arg(long, default_value_t = 10)]
    tokens: u32,
    /// CPU the controller and its agent run on (taskset); the simulator
    /// and the collector run where this process runs.
    #[arg(long)]
    client_cpu: Option<u32>,
    /// Folder holding `controller` and `llm-sim` (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn pct(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ttft-error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<Value, String> {
    let bins = match &cli.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .ok_or("this binary has no folder")?
            .to_owned(),
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let writes = dir.path().join("first-writes.jsonl");
    let collector = Collector::start();
    let batch = (cli.streams + 16).to_string();
    let mut sim = Command::new(bins.join("llm-sim"))
        .args(["--host", "127.0.0.1", "--port", "0", "--max-batch", &batch])
        .args([
            "--prefill-base",
            "0s",
            "--prefill-per-token",
            "0s",
            "--decode-step-per-seq",
            "0s",
        ])
        .args(["--decode-step", &cli.decode_step, "--record-first-writes"])
        .arg(&writes)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting llm-sim: {e}"))?;
    let mut line = String::new();
    BufReader::new(sim.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let url = line
        .trim()
        .strip_prefix("llm-sim listening on ")
        .ok_or_else(|| format!("unexpected first line from llm-sim: {line:?}"))?
        .to_owned();
    let profile = dir.path().join("ttft-error.toml");
    let text = format!(
        r#"
        name = "ttft-error"
        [target]
        url = "{url}"
        model = "llm-sim"
        timeout = "300s"
        [load]
        users = {users}
        duration = "{duration}"
        drain = "60s"
        [request]
        max_tokens = {tokens}
        stream = true
        [prompts]
        builtin = "short"
        [agents]
        count = 1
        [trace]
        endpoint = "{otlp}"
        protocol = "grpc"
        sample_ratio = 1.0
        [thresholds]
        max_error_rate = 1.0
        # What is measured here is the client's own stamping, starved or
        # not: a client-bound run still answers (and says so below).
        allow_client_bound = true
        "#,
        users = cli.streams,
        duration = cli.duration,
        tokens = cli.tokens,
        otlp = collector.grpc_url(),
    );
    std::fs::write(&profile, text).map_err(|e| e.to_string())?;
    let out = dir.path().join("out");
    let mut controller = match cli.client_cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(bins.join("controller"));
            c
        }
        None => Command::new(bins.join("controller")),
    };
    let ran = controller
        .arg("run")
        .arg(&profile)
        .arg("--out")
        .arg(&out)
        .output()
        .map_err(|e| format!("running the controller: {e}"))?;
    let _ = sim.kill();
    let _ = sim.wait();
    if !ran.status.success() {
        return Err(format!(
            "the controller failed ({}): {}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr)
        ));
    }
    let run_dir = std::fs::read_dir(&out)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no run folder")?
        .map_err(|e| e.to_string())?
        .path();
    let summary: Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let written: HashMap<String, i64> = std::fs::read_to_string(&writes)
        .map_err(|e| e.to_string())?
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((v["trace_id"].as_str()?.to_owned(), v["first_write_unix_us"].as_i64()?)))
        .collect();
    let stamped = collector.event_times("llm.request", "first_token");
    let mut diffs: Vec<i64> = stamped
        .iter()
        .filter_map(|(trace, ns)| Some(*ns as i64 / 1000 - written.get(trace)?))
        .collect();
    diffs.sort_unstable();
    Ok(json!({
        "streams": cli.streams,
        "requests_ok": summary.pointer("/requests/ok"),
        "first_writes": written.len(),
        "first_token_spans": stamped.len(),
        "matched": diffs.len(),
        "ttft_p50_ms": summary.pointer("/metrics/ttft/p50"),
        "spans_dropped": summary.pointer("/tracing/spans_dropped"),
        // How late the agent's own 10 ms tick ran: a host that starves the
        // agent shows here as well as in the error below.
        "runtime_delay_p99_ms": summary.pointer("/metrics/runtime_delay/p99"),
        "client_bound": summary.pointer("/client/bound"),
        // Client's first-token stamp minus the simulator's first write, µs.
        "client_added_us": {
            "min": diffs.first(),
            "p50": pct(&diffs, 0.5),
            "p90": pct(&diffs, 0.9),
            "p99": pct(&diffs, 0.99),
            "max": diffs.last(),
        },
    }))
}
