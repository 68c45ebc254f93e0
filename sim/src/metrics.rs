//! Prometheus exposition of the simulator's ground truth.

use std::fmt::Write as _;
use std::time::Duration;

use crate::engine::Engine;

/// Bucket bounds for latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 20] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

/// A Prometheus histogram: cumulative buckets, an exact sum and a count.
#[derive(Clone, Debug)]
pub(crate) struct PromHistogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl PromHistogram {
    pub(crate) fn latency() -> PromHistogram {
        PromHistogram {
            bounds: &LATENCY_BUCKETS,
            counts: vec![0; LATENCY_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, value: Duration) {
        let secs = value.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }

    /// Exact sum of observed values, in seconds.
    #[cfg(test)]
    pub(crate) fn sum(&self) -> f64 {
        self.sum
    }

    /// Number of observations.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}");
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

fn metric(out: &mut String, kind: &str, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// The text exposition format (version 0.0.4) of everything the engine
/// knows.
pub(crate) fn render(engine: &Engine) -> String {
    let uptime = engine.uptime().as_secs_f64();
    let busy = engine.busy_time().as_secs_f64();
    let state = engine.state();
    let mut out = String::with_capacity(8 * 1024);
    let o = &mut out;
    metric(
        o,
        "counter",
        "llmsim_requests_received_total",
        "Generation requests received.",
        state.received,
    );
    metric(
        o,
        "counter",
        "llmsim_requests_served_total",
        "Generation requests answered in full.",
        state.served,
    );
    metric(
        o,
        "counter",
        "llmsim_requests_cancelled_total",
        "Requests whose client left before the answer was complete.",
        state.cancelled,
    );
    metric(
        o,
        "counter",
        "llmsim_prompt_tokens_total",
        "Input tokens of served requests.",
        state.prompt_tokens,
    );
    metric(
        o,
        "counter",
        "llmsim_generation_tokens_total",
        "Output tokens of served requests.",
        state.generation_tokens,
    );
    metric(
        o,
        "gauge",
        "llmsim_queue_depth",
        "Requests waiting for a batch slot.",
        state.queued,
    );
    metric(
        o,
        "gauge",
        "llmsim_running_sequences",
        "Sequences in the running batch.",
        state.running,
    );
    metric(o, "gauge", "llmsim_max_batch", "Batch slots.", engine.config.max_batch);
    metric(
        o,
        "counter",
        "llmsim_busy_seconds_total",
        "Time with at least one sequence running.",
        busy,
    );
    metric(
        o,
        "counter",
        "llmsim_uptime_seconds_total",
        "Time since the engine started.",
        uptime,
    );
    let fraction = if uptime > 0.0 { busy / uptime } else { 0.0 };
    metric(
        o,
        "gauge",
        "llmsim_busy_fraction",
        "Share of uptime with at least one sequence running.",
        fraction,
    );
    let (n, sum, sumsq) = state.gaps;
    metric(
        o,
        "counter",
        "llmsim_interarrival_gaps_total",
        "Gaps between consecutive arrivals.",
        n,
    );
    metric(
        o,
        "counter",
        "llmsim_interarrival_seconds_total",
        "Sum of the gaps between arrivals.",
        sum,
    );
    metric(
        o,
        "counter",
        "llmsim_interarrival_seconds_squared_total",
        "Sum of the squared gaps between arrivals, for their variance.",
        sumsq,
    );
    state.queue_time.render(
        "llmsim_queue_time_seconds",
        "Ground truth: arrival to admission into the batch.",
        o,
    );
    state.ttft.render(
        "llmsim_time_to_first_token_seconds",
        "Ground truth: arrival to first token.",
        o,
    );
    state.e2e.render(
        "llmsim_request_duration_seconds",
        "Ground truth: arrival to last token, served requests only.",
        o,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_renders_cumulative_buckets_sum_and_count() {
        let mut h = PromHistogram::latency();
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render("x_seconds", "help", &mut out);
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"60\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count 3\n"));
        assert!(out.contains("x_seconds_sum 100.041\n"));
    }
}
