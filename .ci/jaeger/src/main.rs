//! `jaeger-query --otlp ADDR --ui ADDR`: receives spans over OTLP/gRPC on
//! one address and serves Jaeger's query API (`/api/services`,
//! `/api/traces?service=S&limit=N`, `/api/traces/{id}`) and the Jaeger UI
//! on the other, from memory. Port 0 picks a free port; the bound
//! addresses are printed on stdout, one line each (`otlp ADDR`, then
//! `ui ADDR`), once both listen.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use otlp_embedded::{Config, State, TraceServiceImpl, TraceServiceServer, ui_app};

const USAGE: &str = "usage: jaeger-query --otlp ADDR --ui ADDR";

fn args() -> Result<(SocketAddr, SocketAddr), String> {
    let (mut otlp, mut ui) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let slot = match flag.as_str() {
            "--otlp" => &mut otlp,
            "--ui" => &mut ui,
            "--version" => {
                println!("jaeger-query {} (otlp-embedded 0.0.2)", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        };
        let value = args.next().ok_or_else(|| format!("{flag} needs an address; {USAGE}"))?;
        let addr = value
            .parse()
            .map_err(|_| format!("{flag}: expected an address such as 127.0.0.1:0, got {value:?}"))?;
        *slot = Some(addr);
    }
    Ok((otlp.ok_or(USAGE)?, ui.ok_or(USAGE)?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let (otlp, ui) = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("jaeger-query: {e}");
            return ExitCode::from(64);
        }
    };
    // Enough for every trace of a test run; the oldest go first past it.
    let state = State::new(Config {
        max_length: 200_000,
        max_memory_usage: 1 << 30,
    });
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))
    };
    let (otlp, ui) = match (bind(otlp).await, bind(ui).await) {
        (Ok(o), Ok(u)) => (o, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("jaeger-query: {e}");
            return ExitCode::from(1);
        }
    };
    let (otlp_addr, ui_addr) = (otlp.local_addr(), ui.local_addr());
    match (otlp_addr, ui_addr) {
        (Ok(o), Ok(u)) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "otlp {o}\nui {u}");
            let _ = out.flush();
        }
        _ => {
            eprintln!("jaeger-query: cannot read the bound addresses");
            return ExitCode::from(1);
        }
    }
    let app = ui_app(state.clone(), "/");
    let ui = tokio::spawn(async move { axum::serve(ui, app).await });
    let grpc = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(TraceServiceImpl::new(state)))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(otlp));
    tokio::select! {
        r = grpc => eprintln!("jaeger-query: the OTLP receiver stopped: {r:?}"),
        r = ui => eprintln!("jaeger-query: the query API stopped: {r:?}"),
        _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
    }
    ExitCode::from(1)
}
