//! How busy this process is: CPU time used per interval, as a share of the
//! cores available, for the client-saturation guard.

use std::time::Duration;

use tokio::time::Instant;

/// Linux reports process times in units of `USER_HZ`, which is 100 on every
/// architecture it supports.
const USER_HZ: f64 = 100.0;

/// CPU time (user + system) this process has used, from `/proc/self/stat`;
/// `None` where that file does not exist.
pub fn used() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / USER_HZ))
}

/// Measures the share of the available cores used between calls.
#[derive(Debug)]
pub struct Meter {
    last: Option<(Instant, Duration)>,
    cores: f64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter {
            last: used().map(|cpu| (Instant::now(), cpu)),
            cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }
}

impl Meter {
    /// CPU used since the previous call, from 0 (idle) to 1 (every core
    /// busy); 0 when it cannot be measured.
    pub fn sample(&mut self) -> f64 {
        let (Some((then, before)), Some(now_cpu)) = (self.last, used()) else {
            return 0.0;
        };
        let now = Instant::now();
        self.last = Some((now, now_cpu));
        let wall = (now - then).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        ((now_cpu.saturating_sub(before)).as_secs_f64() / wall / self.cores).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_up() {
        let before = used().expect("this test runs on Linux");
        let mut meter = Meter::default();
        let wall = std::time::SystemTime::now();
        // Spin until this process has used 200 ms more CPU, however long a
        // loaded machine makes that take (at most 20 s).
        let mut x = 0u64;
        while used().unwrap_or_default().saturating_sub(before) < Duration::from_millis(200)
            && wall.elapsed().unwrap_or_default() < Duration::from_secs(20)
        {
            for _ in 0..10_000 {
                x = x.wrapping_mul(31).wrapping_add(7);
            }
        }
        std::hint::black_box(x);
        let busy = meter.sample();
        let elapsed = wall.elapsed().unwrap_or_default().as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        // At least 190 ms of CPU (the counters tick every 10 ms) over the
        // wall time, on `cores` cores.
        let least = 0.19 / elapsed / cores;
        assert!(busy >= least && busy <= 1.0, "busy {busy}, expected at least {least}");
    }
}
