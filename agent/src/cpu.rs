//! How busy the agent is: CPU time its own threads used per interval, as a
//! share of the cores available, for the client-saturation guard.
//!
//! Only threads whose names begin with [`THREADS`] count: the load
//! runtime's workers and blocking threads, the session's thread and the
//! GPU sampler. In a controller that runs agents in-process, the
//! controller's and the built-in simulator's threads are left out.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// Linux reports process times in units of `USER_HZ`, which is 100 on every
/// architecture it supports.
const USER_HZ: f64 = 100.0;

/// The prefix of every agent thread's name.
pub const THREADS: &str = "agent-";

/// The name of the load runtime's threads.
pub const LOAD_THREADS: &str = "agent-load";

/// User and system time of one `stat` file's thread or process.
fn times(stat: &str) -> Option<Duration> {
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / USER_HZ))
}

/// CPU time (user + system) this process has used, from `/proc/self/stat`;
/// `None` where that file does not exist.
pub fn used() -> Option<Duration> {
    times(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU time used by each of this process's agent threads, by thread id;
/// `None` where `/proc/self/task` cannot be read.
fn agent_threads() -> Option<HashMap<u64, Duration>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !name.starts_with(THREADS) {
            continue;
        }
        if let Some(t) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(times)
        {
            out.insert(tid, t);
        }
    }
    Some(out)
}

/// Measures the share of the available cores the agent's threads used
/// between calls.
#[derive(Debug)]
pub struct Meter {
    last: Option<(Instant, HashMap<u64, Duration>)>,
    cores: f64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            last: agent_threads().map(|t| (Instant::now(), t)),
            cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }
}

impl Meter {
    /// CPU used since the previous call, from 0 (idle) to 1 (every core
    /// busy); 0 when it cannot be measured. A thread started since counts
    /// from its start; one that ended since is not counted for its last
    /// moments.
    pub fn sample(&mut self) -> f64 {
        let (Some((then, before)), Some(now_cpu)) = (self.last.take(), agent_threads()) else {
            return 0.0;
        };
        let now = Instant::now();
        let used: Duration = now_cpu
            .iter()
            .map(|(tid, t)| t.saturating_sub(before.get(tid).copied().unwrap_or_default()))
            .sum();
        self.last = Some((now, now_cpu));
        let wall = (now - then).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (used.as_secs_f64() / wall / self.cores).clamp(0.0, 1.0)
    }
}

/// How often the load runtime's delay is measured.
pub const TICK: Duration = Duration::from_millis(10);

/// Measures, for as long as it runs, how late the load runtime gets to a
/// task that asks to wake every [`TICK`]: the time the agent's threads
/// waited for a CPU (a starved host, a CPU quota) or for workers busy
/// with other tasks. Every timestamp the agent takes waits as long.
pub async fn measure_delay(recorder: crate::record::Recorder) {
    let mut due = Instant::now();
    loop {
        due += TICK;
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        recorder.record_delay(u64::try_from(late.as_micros()).unwrap_or(u64::MAX));
        // After a long stall, measure from now rather than catch up with
        // a burst of ticks that would each read late.
        if late > TICK {
            due = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CPU time the calling thread has used.
    fn own() -> Duration {
        std::fs::read_to_string("/proc/thread-self/stat")
            .ok()
            .as_deref()
            .and_then(times)
            .expect("this test runs on Linux")
    }

    /// Spins until the calling thread has used `cpu` more, however long a
    /// loaded machine makes that take (at most 20 s).
    fn spin(cpu: Duration) {
        let before = own();
        let wall = std::time::SystemTime::now();
        let mut x = 0u64;
        while own().saturating_sub(before) < cpu && wall.elapsed().unwrap_or_default() < Duration::from_secs(20) {
            for _ in 0..10_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        std::hint::black_box(x);
    }

    #[test]
    fn an_agent_threads_busy_loop_shows_up_and_another_threads_does_not() {
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        // Another thread's work is not the agent's.
        let mut meter = Meter::default();
        std::thread::Builder::new()
            .name("other-work".to_owned())
            .spawn(|| spin(Duration::from_millis(200)))
            .unwrap()
            .join()
            .unwrap();
        // (200 ms of it would read 0.1 or more.)
        let other = meter.sample();
        assert!(other < 0.02, "another thread's work read {other}");
        // An agent thread's is.
        let wall = std::time::SystemTime::now();
        let busy = std::thread::Builder::new()
            .name(format!("{LOAD_THREADS}-test"))
            .spawn(move || {
                spin(Duration::from_millis(200));
                // Sampled while the thread still exists.
                meter.sample()
            })
            .unwrap()
            .join()
            .unwrap();
        let elapsed = wall.elapsed().unwrap_or_default().as_secs_f64();
        // At least 190 ms of CPU (the counters tick every 10 ms) over the
        // wall time, on `cores` cores.
        let least = 0.19 / elapsed / cores;
        assert!(busy >= least && busy <= 1.0, "busy {busy}, expected at least {least}");
    }
}
