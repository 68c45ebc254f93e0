//! Live metrics: a Prometheus endpoint served while the run goes on, so a
//! dashboard shows the run as it happens. Every report adds to cumulative
//! counters and histograms as it arrives; histograms are re-bucketed from
//! the exact HDR histograms into fixed buckets sized for LLM latencies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use stampede_proto::{Counters, Histograms, Metric};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// A cumulative Prometheus histogram.
#[derive(Debug)]
struct Buckets {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
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
        }
    }

    /// Adds an HDR histogram of microseconds. Each HDR bucket (0.1 % wide)
    /// lands in the first Prometheus bucket holding its lowest value, so a
    /// sample of exactly a bound counts at that bound; the sum uses each
    /// bucket's middle.
    fn add(&mut self, h: &Histogram<u64>) {
        for v in h.iter_recorded() {
            let n = v.count_since_last_iteration();
            let value = v.value_iterated_to();
            let low = h.lowest_equivalent(value) as f64 / 1e6;
            if let Some(i) = self.bounds.iter().position(|b| low <= *b) {
                self.counts[i] += n;
            }
            self.sum += h.median_equivalent(value) as f64 / 1e6 * n as f64;
            self.count += n;
        }
    }

    fn render(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

#[derive(Debug)]
struct State {
    run_id: String,
    profile: String,
    target: String,
    counters: Counters,
    active: BTreeMap<u32, u32>,
    agents: [u32; 3],
    ttft: Buckets,
    itl: Buckets,
    tpot: Buckets,
    e2e: Buckets,
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

fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Live {
    /// Metrics of run `run_id` of `profile` against `target`.
    pub fn new(run_id: &str, profile: &str, target: &str) -> Live {
        Live(Arc::new(Mutex::new(State {
            run_id: run_id.to_owned(),
            profile: profile.to_owned(),
            target: target.to_owned(),
            counters: Counters::default(),
            active: BTreeMap::new(),
            agents: [0; 3],
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
        })))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one report of agent `agent`.
    pub fn report(&self, agent: u32, histograms: &Histograms, counters: &Counters) {
        let mut s = self.state();
        let mut c = counters.clone();
        s.active.insert(agent, c.active_users);
        c.active_users = 0;
        s.counters.add(&c);
        s.ttft.add(histograms.get(Metric::Ttft));
        s.itl.add(histograms.get(Metric::Itl));
        s.tpot.add(histograms.get(Metric::Tpot));
        s.e2e.add(histograms.get(Metric::E2e));
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        let s = self.state();
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        let c = &s.counters;
        let simple = |o: &mut String, kind: &str, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let _ = writeln!(
            o,
            "# HELP stampede_run_info The run being measured.\n# TYPE stampede_run_info gauge\nstampede_run_info{{run_id=\"{}\",profile=\"{}\",target=\"{}\"}} 1",
            label(&s.run_id),
            label(&s.profile),
            label(&s.target)
        );
        simple(o, "counter", "stampede_requests_total", "Successful requests.", c.ok);
        let _ = writeln!(
            o,
            "# HELP stampede_request_errors_total Failed requests by class.\n# TYPE stampede_request_errors_total counter"
        );
        for (class, n) in &c.errors {
            let _ = writeln!(o, "stampede_request_errors_total{{class=\"{class}\"}} {n}");
        }
        simple(
            o,
            "counter",
            "stampede_requests_cancelled_total",
            "Requests abandoned at shutdown.",
            c.cancelled,
        );
        simple(
            o,
            "counter",
            "stampede_input_tokens_total",
            "Input tokens of successful requests.",
            c.input_tokens,
        );
        simple(
            o,
            "counter",
            "stampede_output_tokens_total",
            "Output tokens of successful requests.",
            c.output_tokens,
        );
        let active: u32 = s.active.values().sum();
        simple(
            o,
            "gauge",
            "stampede_active_users",
            "Users running at the latest reports.",
            u64::from(active),
        );
        let _ = writeln!(
            o,
            "# HELP stampede_agents Agents by state.\n# TYPE stampede_agents gauge"
        );
        for (state, n) in ["running", "finished", "lost"].iter().zip(s.agents) {
            let _ = writeln!(o, "stampede_agents{{state=\"{state}\"}} {n}");
        }
        for h in [&s.ttft, &s.itl, &s.tpot, &s.e2e] {
            h.render(o);
        }
        out
    }
}

/// Serves `live` at `http://addr/metrics` until `stop` is cancelled.
/// Returns the bound address.
pub async fn serve(addr: SocketAddr, live: Live, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let live = live.clone();
            async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    live.render(),
                )
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

#[cfg(test)]
mod tests {
    use super::*;
    use stampede_proto::ErrorClass;

    #[test]
    fn reports_add_up_into_counters_and_buckets() {
        let live = Live::new("r1", "high", "http://x:8000");
        let mut h = Histograms::new();
        h.record(Metric::Ttft, 40_000); // 40 ms
        h.record(Metric::Ttft, 2_000_000); // 2 s
        h.record(Metric::Itl, 20_000);
        let mut c = Counters {
            ok: 2,
            output_tokens: 64,
            active_users: 5,
            ..Counters::default()
        };
        c.count_error(ErrorClass::Status(503));
        live.report(0, &h, &c);
        live.report(1, &h, &c);
        live.agents(2, 0, 0);
        let text = live.render();
        assert!(text.contains("stampede_run_info{run_id=\"r1\",profile=\"high\",target=\"http://x:8000\"} 1"));
        assert!(text.contains("\nstampede_requests_total 4\n"), "{text}");
        assert!(text.contains("stampede_request_errors_total{class=\"http_503\"} 2"));
        assert!(text.contains("\nstampede_output_tokens_total 128\n"));
        assert!(text.contains("\nstampede_active_users 10\n"));
        assert!(text.contains("stampede_agents{state=\"running\"} 2"));
        assert!(text.contains("stampede_ttft_seconds_bucket{le=\"0.05\"} 2\n"), "{text}");
        assert!(text.contains("stampede_ttft_seconds_bucket{le=\"1.5\"} 2\n"));
        assert!(text.contains("stampede_ttft_seconds_bucket{le=\"2\"} 4\n"));
        assert!(text.contains("stampede_ttft_seconds_count 4\n"));
        assert!(text.contains("stampede_itl_seconds_bucket{le=\"0.02\"} 2\n"));
    }
}
