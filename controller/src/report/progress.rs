//! The live view of a run: one line per interval, rewritten in place on a
//! terminal and printed as plain log lines otherwise.

use std::io::Write as _;
use std::time::Duration;

use stampede_proto::Metric;

use super::human_us;
use crate::merge::Row;

/// Prints each completed interval.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    interval: Duration,
    duration: Duration,
    shown: bool,
}

impl Progress {
    /// `tty`: rewrite one line in place instead of printing log lines.
    pub fn new(interval: Duration, duration: Duration, tty: bool) -> Progress {
        Progress {
            tty,
            interval,
            duration,
            shown: false,
        }
    }

    /// The text of one interval's line.
    pub fn line(&self, row: &Row) -> String {
        let end = self.interval * u32::try_from(row.interval + 1).unwrap_or(u32::MAX);
        let secs = self.interval.as_secs_f64();
        let ttft = row.get(Metric::Ttft);
        let itl = row.get(Metric::Itl);
        let e2e = row.get(Metric::E2e);
        let show = |count: u64, v: u64| {
            if count == 0 { "-".to_owned() } else { human_us(v as f64) }
        };
        format!(
            "[{:>5.0}s/{:.0}s] users {:>4} | {:>7.1} req/s | TTFT p50 {:>7} p95 {:>7} | ITL p50 {:>7} | E2E p95 {:>7} | errors {}",
            end.as_secs_f64(),
            self.duration.as_secs_f64(),
            row.counters.active_users,
            row.counters.ok as f64 / secs,
            show(ttft.count, ttft.p50),
            show(ttft.count, ttft.p95),
            show(itl.count, itl.p50),
            show(e2e.count, e2e.p95),
            row.counters.failed(),
        )
    }

    /// Shows one completed interval.
    pub fn row(&mut self, row: &Row) {
        let line = self.line(row);
        let mut err = std::io::stderr().lock();
        let _ = if self.tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
        self.shown = true;
    }

    /// Ends the live view.
    pub fn finish(&mut self) {
        if self.tty && self.shown {
            let _ = writeln!(std::io::stderr());
        }
    }
}
