//! `agent --gpu`: the accelerators of this host, read through NVML every
//! 200 ms and sent in the interval reports. NVML is loaded when sampling
//! starts, so the binary runs on hosts without a driver; there the sampler
//! says "no GPU found" and sends nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use stampede_proto::pb;

/// How often each device is read.
pub const PERIOD: Duration = Duration::from_millis(200);

/// One reading, timed on this host's monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Reading {
    at: Instant,
    device: u32,
    utilization_pct: u32,
    memory_utilization_pct: u32,
    memory_used_bytes: u64,
    memory_total_bytes: u64,
    power_mw: u32,
}

/// A running sampler. Dropping it stops the thread.
#[derive(Debug)]
pub struct Sampler {
    readings: Arc<Mutex<Vec<Reading>>>,
    stop: Arc<AtomicBool>,
    /// What was found, in words: the devices, or why there are none.
    pub note: String,
}

impl Sampler {
    /// Loads NVML and starts reading every device. Without NVML or
    /// without a device, the sampler only carries the note.
    pub fn start() -> Sampler {
        let readings = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => n,
            Err(e) => {
                return Sampler {
                    readings,
                    stop,
                    note: format!("no GPU found: the NVIDIA management library cannot be loaded ({e})"),
                };
            }
        };
        let count = match nvml.device_count() {
            Ok(0) => {
                return Sampler {
                    readings,
                    stop,
                    note: "no GPU found: NVML lists no device".to_owned(),
                };
            }
            Ok(n) => n,
            Err(e) => {
                return Sampler {
                    readings,
                    stop,
                    note: format!("no GPU found: NVML cannot count devices ({e})"),
                };
            }
        };
        let names: Vec<String> = (0..count)
            .map(|i| {
                nvml.device_by_index(i)
                    .and_then(|d| d.name())
                    .unwrap_or_else(|e| format!("device {i} ({e})"))
            })
            .collect();
        let note = format!("{count} GPU(s) sampled every {PERIOD:?}: {}", names.join(", "));
        let (out, halt) = (Arc::clone(&readings), Arc::clone(&stop));
        let spawned = std::thread::Builder::new()
            .name(format!("{}gpu", crate::cpu::THREADS))
            .spawn(move || sample_loop(&nvml, count, &out, &halt));
        let note = match spawned {
            Ok(_) => note,
            Err(e) => format!("GPU sampling could not start: {e}"),
        };
        Sampler { readings, stop, note }
    }

    /// Takes the readings so far, timed from `start`; readings from before
    /// it are dropped.
    pub fn drain(&self, start: Instant) -> Vec<pb::GpuSample> {
        let taken = std::mem::take(&mut *self.readings.lock().unwrap_or_else(|p| p.into_inner()));
        taken
            .into_iter()
            .filter_map(|r| {
                let elapsed = r.at.checked_duration_since(start)?;
                Some(pb::GpuSample {
                    elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                    device: r.device,
                    utilization_pct: r.utilization_pct,
                    memory_utilization_pct: r.memory_utilization_pct,
                    memory_used_bytes: r.memory_used_bytes,
                    memory_total_bytes: r.memory_total_bytes,
                    power_mw: r.power_mw,
                })
            })
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample_loop(nvml: &nvml_wrapper::Nvml, count: u32, out: &Mutex<Vec<Reading>>, stop: &AtomicBool) {
    let mut next = Instant::now();
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
        for index in 0..count {
            let read = nvml.device_by_index(index).and_then(|d| {
                let util = d.utilization_rates()?;
                let memory = d.memory_info()?;
                // Some boards do not report power; that is not a reason to
                // lose the rest.
                let power = d.power_usage().unwrap_or(0);
                Ok(Reading {
                    at: Instant::now(),
                    device: index,
                    utilization_pct: util.gpu,
                    memory_utilization_pct: util.memory,
                    memory_used_bytes: memory.used,
                    memory_total_bytes: memory.total,
                    power_mw: power,
                })
            });
            match read {
                Ok(r) => out.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                Err(e) if !warned => {
                    tracing::warn!("GPU {index}: cannot read ({e}); going on with what can be read");
                    warned = true;
                }
                Err(_) => {}
            }
        }
        next += PERIOD;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_nvml_says_so_and_sends_nothing() {
        let sampler = Sampler::start();
        if sampler.note.starts_with("no GPU found") {
            std::thread::sleep(PERIOD * 2);
            assert!(sampler.drain(Instant::now() - Duration::from_secs(1)).is_empty());
        } else {
            // A GPU host: readings arrive within a few periods.
            std::thread::sleep(PERIOD * 3);
            let start = Instant::now() - Duration::from_secs(10);
            let got = sampler.drain(start);
            assert!(!got.is_empty(), "{}", sampler.note);
            assert!(got.iter().all(|s| s.utilization_pct <= 100 && s.memory_total_bytes > 0));
        }
    }
}
