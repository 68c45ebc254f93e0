//! Live metrics: a Prometheus endpoint served while the run goes on, so a
//! dashboard shows the run as it happens. Every report adds to cumulative
//! counters and histograms as it arrives; histograms are re-bucketed from
//! the exact HDR histograms into fixed buckets sized for LLM latencies.
//! Every scrape of the server adds its mapped figures (latest value) and
//! its accelerators' DCGM figures; agents' NVML readings come with their
//! reports.
//!
//! Every series carries the run's `run_id`, so that consecutive runs
//! scraped by one Prometheus stay apart. A scraper that accepts
//! OpenMetrics (`application/openmetrics-text`, as Prometheus asks with
//! exemplar storage on) is answered in OpenMetrics 1.0 text, with
//! exemplars on the latency histograms' buckets: the latest request seen
//! in each bucket whose span was exported, named by its trace id.
//! Anything else gets the 0.0.4 text format, without exemplars.

mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use stampede_proto::{Counters, Metric, Sparse, pb};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use render::Format;

use crate::results::log::ReportEntry;
use crate::server::map::{self, Canon};
use crate::server::prom::Sample;
use crate::server::{Reading, Value};

/// Bucket bounds, seconds.
const TTFT_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
];
const TOKEN_BUCKETS: [f64; 18] = [
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0,
];
const E2E_BUCKETS: [f64; 18] = [
    0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
];
const QUEUE_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A request named by its trace: an OpenMetrics exemplar.
#[derive(Clone, Debug, PartialEq)]
struct Exemplar {
    /// 32 lowercase hex digits.
    trace_id: String,
    /// Its measurement, seconds.
    value: f64,
    /// When the controller received it, Unix seconds.
    at: f64,
}

/// A cumulative Prometheus histogram, with the latest exemplar of each
/// bucket.
#[derive(Debug)]
struct Buckets {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    /// One per bound, and one for `+Inf`.
    exemplars: Vec<Option<Exemplar>>,
}

impl Buckets {
    fn new(name: &'static str, help: &'static str, bounds: &'static [f64]) -> Buckets {
        Buckets {
            name,
            help,
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
            exemplars: vec![None; bounds.len() + 1],
        }
    }

    /// Adds an HDR histogram of microseconds, as its buckets with samples
    /// (of `like`'s bounds). Each HDR bucket (0.1 % wide) lands in the
    /// first Prometheus bucket holding its lowest value, so a sample of
    /// exactly a bound counts at that bound; the sum uses each bucket's
    /// middle.
    fn add(&mut self, like: &Histogram<u64>, buckets: &[(u64, u64)]) {
        for &(low, n) in buckets {
            let low_s = like.lowest_equivalent(low) as f64 / 1e6;
            if let Some(i) = self.bounds.iter().position(|b| low_s <= *b) {
                self.counts[i] += n;
            }
            self.sum += like.median_equivalent(low) as f64 / 1e6 * n as f64;
            self.count += n;
        }
    }

    /// Keeps `e` as its bucket's exemplar: the first bucket whose bound
    /// is at least its value.
    fn exemplar(&mut self, e: Exemplar) {
        let i = self
            .bounds
            .iter()
            .position(|b| e.value <= *b)
            .unwrap_or(self.bounds.len());
        self.exemplars[i] = Some(e);
    }
}

/// One accelerator, as a source names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Device {
    /// `nvml` (an agent's reading) or `dcgm` (the server's exporter).
    source: &'static str,
    /// The agent that read it (NVML); empty for DCGM.
    agent: String,
    /// The device's index.
    device: String,
}

/// An accelerator's latest figures; absent where its source gave none.
#[derive(Clone, Debug, Default, PartialEq)]
struct Gpu {
    utilization: Option<f64>,
    memory_used_bytes: Option<f64>,
    memory_total_bytes: Option<f64>,
    power_watts: Option<f64>,
    memory_bandwidth: Option<f64>,
    compute_active: Option<f64>,
}

#[derive(Debug)]
struct State {
    run_id: String,
    profile: String,
    target: String,
    /// Spans are exported: exemplars name traces the collector has.
    exemplars: bool,
    counters: Counters,
    active: BTreeMap<u32, u32>,
    agents: [u32; 3],
    /// Each agent's CPU share at its latest report, by name.
    cpu: BTreeMap<String, f64>,
    /// An empty histogram of the latencies' bounds: where each bucket
    /// starts and its middle.
    micros: Histogram<u64>,
    ttft: Buckets,
    itl: Buckets,
    tpot: Buckets,
    e2e: Buckets,
    client_queue: Buckets,
    /// The server's mapped figures at its latest scrape, with the series
    /// each was read from (accelerators' figures are in `gpus`).
    server: BTreeMap<Canon, (Value, &'static str)>,
    gpus: BTreeMap<Device, Gpu>,
}

/// A figure from outside the agents' histograms (an agent's CPU, the
/// server's, an accelerator's), named for OTLP.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// Its OTLP name, such as `stampede.gpu.utilization`.
    pub name: String,
    /// What it means.
    pub description: &'static str,
    /// Its UCUM unit.
    pub unit: &'static str,
    /// The attributes of its point (device, source, agent).
    pub attributes: Vec<(&'static str, String)>,
    /// Its latest value.
    pub value: FigureValue,
}

/// A figure's latest value, by kind.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FigureValue {
    /// A level.
    Gauge(f64),
    /// A running total.
    Counter(f64),
    /// A distribution's running sum and count.
    Summary {
        /// Sum of observations.
        sum: f64,
        /// Observations.
        count: f64,
    },
}

/// The live metrics of one run. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Live(Arc<Mutex<State>>);

/// How an agent stands, for `stampede_agents{state}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Joined and not ended.
    Running,
    /// Ended normally.
    Finished,
    /// Lost or failed.
    Lost,
}

/// What the live metrics take from a report besides its histograms and
/// counters: the agent's name, CPU, accelerator readings and exemplars.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    agent: String,
    cpu: f64,
    gpu: Vec<pb::GpuSample>,
    exemplars: Vec<pb::Exemplar>,
}

impl Extras {
    /// What `entry` carries for the live metrics.
    pub fn of(entry: &ReportEntry) -> Extras {
        let r = &entry.report;
        Extras {
            agent: entry.agent.clone(),
            cpu: r.cpu,
            gpu: r.gpu.clone(),
            exemplars: r.exemplars.iter().chain(&r.sampled_exemplars).cloned().collect(),
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Live {
    /// Metrics of run `run_id` of `profile` against `target`.
    pub fn new(run_id: &str, profile: &str, target: &str) -> Live {
        Live(Arc::new(Mutex::new(State {
            run_id: run_id.to_owned(),
            profile: profile.to_owned(),
            target: target.to_owned(),
            exemplars: false,
            counters: Counters::default(),
            active: BTreeMap::new(),
            agents: [0; 3],
            cpu: BTreeMap::new(),
            micros: Metric::Ttft.empty_histogram(),
            ttft: Buckets::new("stampede_ttft_seconds", "Time to first token.", &TTFT_BUCKETS),
            itl: Buckets::new(
                "stampede_itl_seconds",
                "Inter-token latency, one sample per gap.",
                &TOKEN_BUCKETS,
            ),
            tpot: Buckets::new(
                "stampede_tpot_seconds",
                "Time per output token after the first.",
                &TOKEN_BUCKETS,
            ),
            e2e: Buckets::new("stampede_e2e_seconds", "End-to-end request latency.", &E2E_BUCKETS),
            client_queue: Buckets::new(
                "stampede_client_queue_seconds",
                "Client-side queueing: intended start to request write.",
                &QUEUE_BUCKETS,
            ),
            server: BTreeMap::new(),
            gpus: BTreeMap::new(),
        })))
    }

    /// Serves exemplars (the run exports spans, so every trace id an
    /// exemplar names reaches the collector).
    pub fn with_exemplars(self, on: bool) -> Live {
        self.state().exemplars = on;
        self
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one report of agent `agent`.
    pub fn report(&self, agent: u32, histograms: &Sparse, counters: &Counters) {
        let mut guard = self.state();
        let s = &mut *guard;
        let mut c = counters.clone();
        s.active.insert(agent, c.active_users);
        c.active_users = 0;
        s.counters.add(&c);
        let like = &s.micros;
        s.ttft.add(like, histograms.buckets(Metric::Ttft));
        s.itl.add(like, histograms.buckets(Metric::Itl));
        s.tpot.add(like, histograms.buckets(Metric::Tpot));
        s.e2e.add(like, histograms.buckets(Metric::E2e));
        s.client_queue.add(like, histograms.buckets(Metric::ClientQueue));
    }

    /// Adds what a report carries besides its figures: the agent's CPU,
    /// its accelerators' latest readings, and (with tracing on) its
    /// exemplars.
    pub fn extras(&self, extras: Extras) {
        let mut s = self.state();
        s.cpu.insert(extras.agent.clone(), extras.cpu);
        for g in &extras.gpu {
            let device = Device {
                source: "nvml",
                agent: extras.agent.clone(),
                device: g.device.to_string(),
            };
            let power = (g.power_mw > 0).then(|| f64::from(g.power_mw) / 1e3);
            s.gpus.insert(
                device,
                Gpu {
                    utilization: Some(f64::from(g.utilization_pct) / 100.0),
                    memory_used_bytes: Some(g.memory_used_bytes as f64),
                    memory_total_bytes: Some(g.memory_total_bytes as f64),
                    power_watts: power,
                    memory_bandwidth: Some(f64::from(g.memory_utilization_pct) / 100.0),
                    compute_active: None,
                },
            );
        }
        if !s.exemplars {
            return;
        }
        let at = unix_now();
        for e in &extras.exemplars {
            let exemplar = Exemplar {
                trace_id: e.trace_id.clone(),
                value: e.value_us as f64 / 1e6,
                at,
            };
            match Metric::from_wire(e.metric) {
                Ok(Metric::Ttft) => s.ttft.exemplar(exemplar),
                Ok(Metric::Itl) => s.itl.exemplar(exemplar),
                Ok(Metric::Tpot) => s.tpot.exemplar(exemplar),
                Ok(Metric::E2e) => s.e2e.exemplar(exemplar),
                _ => {}
            }
        }
    }

    /// Takes in one scrape of the server: its mapped figures replace the
    /// last scrape's, and its accelerators' DCGM figures are read per
    /// device from the raw `samples`.
    pub fn scrape(&self, reading: &Reading, samples: &[Sample]) {
        let mut s = self.state();
        s.server = reading
            .values
            .iter()
            .filter(|(canon, _)| render::server_family(**canon).is_some())
            .filter_map(|(canon, v)| Some((*canon, (*v, reading.sources.get(canon)?.metric))))
            .collect();
        s.gpus.retain(|d, _| d.source != "dcgm");
        for (device, figures) in map::devices(samples) {
            let mib = |c: Canon| figures.get(&c).map(|v| v * 1024.0 * 1024.0);
            let total = match (mib(Canon::GpuMemoryMib), mib(Canon::GpuMemoryFreeMib)) {
                (Some(used), Some(free)) => Some(used + free),
                _ => None,
            };
            let gpu = Gpu {
                utilization: figures.get(&Canon::GpuUtil).copied(),
                memory_used_bytes: mib(Canon::GpuMemoryMib),
                memory_total_bytes: total,
                power_watts: figures.get(&Canon::GpuPowerW).copied(),
                memory_bandwidth: figures.get(&Canon::MemoryBandwidth).copied(),
                compute_active: figures.get(&Canon::ComputeActive).copied(),
            };
            let key = Device {
                source: "dcgm",
                agent: String::new(),
                device,
            };
            s.gpus.insert(key, gpu);
        }
    }

    /// Records how many agents stand in each state.
    pub fn agents(&self, running: u32, finished: u32, lost: u32) {
        let mut s = self.state();
        s.agents = [running, finished, lost];
        if running == 0 {
            s.active.clear();
        }
    }

    /// Forgets an agent's users (it ended).
    pub fn agent_ended(&self, agent: u32) {
        self.state().active.remove(&agent);
    }

    /// The agents' CPU, the server's figures and the accelerators', at
    /// their latest readings.
    pub fn figures(&self) -> Vec<Figure> {
        render::figures(&self.state())
    }

    /// The exposition in `format`.
    pub fn render(&self, format: Format) -> String {
        render::render(&self.state(), format)
    }
}

/// The format to answer a scraper whose `Accept` header is `accept`:
/// OpenMetrics when it accepts `application/openmetrics-text` (with a
/// quality above 0), else the 0.0.4 text format.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Text };
    let open_metrics = accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.trim().parse::<f64>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    });
    if open_metrics {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// Serves `live` at `http://addr/metrics` until `stop` is cancelled.
/// Returns the bound address.
pub async fn serve(addr: SocketAddr, live: Live, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    use axum::http::{HeaderMap, header};
    use axum::routing::get;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let live = live.clone();
            async move {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let format = negotiate(accept);
                ([(header::CONTENT_TYPE, format.content_type())], live.render(format))
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::warn!("the metrics endpoint stopped: {e}");
        }
    });
    Ok(bound)
}
