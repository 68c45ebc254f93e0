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
    let occupied = engine.occupied_time().as_secs_f64();
    let recent = engine.recent_busy_share();
    // Every figure that takes the lock is read above: the lock is not
    // reentrant.
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
        "Time spent computing: a prefill, or the accelerator's part of a decode step.",
        busy,
    );
    metric(
        o,
        "counter",
        "llmsim_occupied_seconds_total",
        "Time with at least one request received and not yet answered.",
        occupied,
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
        "Share of uptime spent computing.",
        fraction,
    );
    if engine.config.dcgm {
        dcgm(&engine.config.model, recent, state.running, o);
    }
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

/// Memory the modelled weights take, MiB.
const WEIGHTS_MIB: u64 = 16_384;
/// KV cache per running sequence, MiB.
const KV_MIB_PER_SEQUENCE: u64 = 256;
/// Power draw idle and at full use, W.
const POWER_IDLE_W: f64 = 70.0;
const POWER_BUSY_W: f64 = 350.0;

/// The busy share, memory and power as NVIDIA's DCGM exporter names them,
/// for one modelled GPU. Utilisation is the busy share of the last second,
/// as DCGM's is of its sampling period; memory and power are modelled from
/// the batch and the busy share.
fn dcgm(model: &str, share: f64, running: u32, o: &mut String) {
    let labels =
        format!("gpu=\"0\",UUID=\"GPU-llm-sim-0\",device=\"nvidia0\",modelName=\"{model}\",Hostname=\"llm-sim\"");
    let gauge = |o: &mut String, name: &str, help: &str, value: String| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} gauge");
        let _ = writeln!(o, "{name}{{{labels}}} {value}");
    };
    gauge(
        o,
        "DCGM_FI_DEV_GPU_UTIL",
        "GPU utilization (in %).",
        format!("{}", (share * 100.0).round()),
    );
    gauge(
        o,
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB).",
        format!("{}", WEIGHTS_MIB + KV_MIB_PER_SEQUENCE * u64::from(running)),
    );
    gauge(
        o,
        "DCGM_FI_DEV_POWER_USAGE",
        "Power draw (in W).",
        format!("{:.3}", POWER_IDLE_W + (POWER_BUSY_W - POWER_IDLE_W) * share),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_page_renders_ground_truth_and_dcgm_names() {
        let engine = Engine::new(crate::Config {
            dcgm: true,
            ..crate::Config::default()
        });
        // On the paused clock: one second of history, so the DCGM share
        // has a window to cover; it costs no real time.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let page = render(&engine);
        for line in [
            "llmsim_busy_seconds_total 0\n",
            "llmsim_occupied_seconds_total 0\n",
            "llmsim_busy_fraction 0\n",
            "DCGM_FI_DEV_GPU_UTIL{gpu=\"0\",",
            "} 0\n",
            "DCGM_FI_DEV_FB_USED{",
            "DCGM_FI_DEV_POWER_USAGE{",
        ] {
            assert!(page.contains(line), "{line:?} missing from\n{page}");
        }
        let plain = render(&Engine::new(crate::Config::default()));
        assert!(!plain.contains("DCGM_"), "{plain}");
    }

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
