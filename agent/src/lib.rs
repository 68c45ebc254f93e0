//! The stampede agent: virtual users that load an LLM server, timing every
//! token into HDR histograms, and a gRPC session that reports them to a
//! controller each interval.
//!
//! The data path reads from the module list: [`session`] receives the
//! assignment, [`load`] decides when each request starts, [`exec`] runs it
//! through an [`api`] dialect and [`stream`] framing over an [`http`]
//! connection (counting tokens with a [`tokenizer`] when the run has one),
//! and [`record`] keeps the measurements.

pub mod api;
pub mod assignment;
pub mod cpu;
pub mod events;
pub mod exec;
pub mod file;
pub mod gpu;
pub mod http;
pub mod load;
pub mod open_files;
pub mod pem;
pub mod presence;
pub mod prompts;
pub mod record;
pub mod session;
pub mod slo;
pub mod stream;
pub mod tokenizer;
pub mod trace;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use session::Ended;

/// How this agent joins a run.
#[derive(Clone)]
pub struct Config {
    /// The controller's gRPC URL, such as `http://controller:7000`, or
    /// `https://...` for TLS.
    pub controller: String,
    /// This agent's name, unique within the run.
    pub name: String,
    /// Shared secret presented to the controller. Never logged.
    pub token: Option<String>,
    /// PEM certificate authority that signed the controller's certificate;
    /// without it the web PKI roots are trusted.
    pub ca: Option<Vec<u8>>,
    /// How long to keep trying to reach the controller.
    pub wait: Duration,
    /// Where to export request spans when the controller's assignment
    /// does not say (from this agent's own `OTEL_*` environment); the
    /// controller's settings, when it sends some, win.
    pub trace: Option<stampede_proto::pb::Trace>,
    /// Sample this host's GPUs and send the readings.
    pub gpu: bool,
    /// Runs inside the controller's process, whose log already tells of
    /// the assignment and the stop: this agent logs them at debug level,
    /// so that each event is logged once.
    pub in_process: bool,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("controller", &self.controller)
            .field("name", &self.name)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca.is_some())
            .field("wait", &self.wait)
            .field("trace", &self.trace)
            .field("gpu", &self.gpu)
            .field("in_process", &self.in_process)
            .finish()
    }
}

/// Why an agent did not complete its part of a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller could not be reached.
    #[error("cannot reach the controller at {url}: {reason}")]
    Connect {
        /// The controller URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The controller refused the session or ended it before the start.
    #[error("the controller refused this agent: {0}")]
    Refused(String),
    /// The assignment cannot be carried out by this agent.
    #[error("cannot carry out the assignment: {0}")]
    Assignment(String),
    /// The controller sent something out of order.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The controller stopped the run before it started.
    #[error("the controller stopped the run before it started: {0}")]
    Stopped(String),
    /// The controller went away during the run; the load was stopped.
    #[error("lost the controller during the run ({0}); the load was stopped")]
    ControllerLost(String),
    /// Interrupted before the load started.
    #[error("interrupted before the run started")]
    Interrupted,

    /// The session's own thread or runtime could not be started.
    #[error("cannot start the session: {0}")]
    Start(String),
}

/// Raises this process's soft limit on open files to its hard limit, as
/// load generators do: every request in flight holds a socket (two when
/// the built-in simulator shares the process), and the common default of
/// 1,024 would turn a heavy load into connect errors. Returns the limit now
/// in force, when known.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// A runtime for agents' loads: its threads are named so that the agents'
/// CPU is measured for them alone ([`cpu`]), and the runtime's tick
/// measures how late they run.
pub fn load_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name(cpu::LOAD_THREADS)
        .build()
}

/// Takes part in one run, from connecting to the controller until the
/// load is over and reported. Cancelling `shutdown` stops new requests and
/// lets in-flight ones finish within the drain time.
///
/// The load runs on the caller's runtime; the session (the stream to the
/// controller, heartbeats, reports, the dead-man switch) runs on a
/// single-threaded runtime of its own thread, so that a load too heavy for
/// the machine delays requests, which the figures show, and never the
/// heartbeats, which would make the controller and this agent give each
/// other up.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<Ended, Error> {
    let load = tokio::runtime::Handle::current();
    let logs = tracing::Span::current();
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("{}session-{}", cpu::THREADS, config.name))
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(tracing::Instrument::instrument(
                    session::run(&config, shutdown, load),
                    logs,
                )),
                Err(e) => Err(Error::Start(format!("its runtime: {e}"))),
            };
            let _ = done.send(result);
        })
        .map_err(|e| Error::Start(format!("its thread: {e}")))?;
    ended
        .await
        .unwrap_or_else(|_| Err(Error::Start("the session's thread ended without a result".to_owned())))
}
