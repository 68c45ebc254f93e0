//! The live view of a run: one line per interval, rewritten in place on a
//! terminal and printed as plain log lines otherwise.
//!
//! The line says where the run is (elapsed of planned time, the stage or
//! sweep step, the drain), how long it has left (ETA), and the interval's
//! figures. On a terminal it is kept to the terminal's width by leaving
//! out the least important figures first; log lines printed meanwhile go
//! above it ([`LogWriter`]).

use std::io::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use stampede_proto::Metric;

use super::human_us;
use crate::merge::{Place, Row};
use crate::profile::{Load, Shape};

/// The width a line is kept to on a terminal whose width cannot be told.
pub const DEFAULT_WIDTH: usize = 120;

/// The live line on the terminal, if one is shown. Standard error is one
/// per process, and the log writer must clear the line before a log line
/// and draw it again below, so the line lives here rather than in
/// [`Progress`].
static SCREEN: Mutex<Option<String>> = Mutex::new(None);

/// How the load was stopped before its planned end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stop {
    /// When, from the start of the load.
    pub after: Duration,
    /// In-flight requests were abandoned rather than given the drain.
    pub abort: bool,
}

/// Prints each completed interval.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    interval: Duration,
    load: Load,
    /// Requests that ended so far (succeeded or failed).
    ended: u64,
    /// The longest end-to-end time in the latest interval that had one,
    /// microseconds: about how long the drain takes.
    e2e_max_us: Option<u64>,
    stopped: Option<Stop>,
    shown: bool,
}

impl Progress {
    /// `tty`: rewrite one line in place instead of printing log lines.
    pub fn new(interval: Duration, load: &Load, tty: bool) -> Progress {
        Progress {
            tty,
            interval,
            load: load.clone(),
            ended: 0,
            e2e_max_us: None,
            stopped: None,
            shown: false,
        }
    }

    /// The load was stopped early (an interrupt, a threshold with
    /// `abort`): later intervals are the drain.
    pub fn stopped(&mut self, stop: Stop) {
        self.stopped.get_or_insert(stop);
    }

    /// The text of one interval's line, every field included: what a log
    /// line shows. Call [`Progress::take`] first for the run's totals.
    pub fn line(&self, row: &Row) -> String {
        join(&self.fields(row), usize::MAX)
    }

    /// Counts `row` towards the run's totals (requests ended, the latest
    /// end-to-end time).
    pub fn take(&mut self, row: &Row) {
        self.ended += row.counters.ok + row.counters.failed();
        let e2e = row.get(Metric::E2e);
        if e2e.count > 0 {
            self.e2e_max_us = Some(e2e.max);
        }
    }

    /// The fields of `row`'s line, in order.
    fn fields(&self, row: &Row) -> Vec<Field> {
        let end = self.interval * u32::try_from(row.interval + 1).unwrap_or(u32::MAX);
        let planned = self.load.duration();
        let load_end = self.stopped.map_or(planned, |s| s.after.min(planned));
        let secs = row.length_s.max(1e-3);
        let mut f = Vec::new();
        // An interval that began once the load had ended is the drain's.
        let draining = row.place == Place::Drain || end.saturating_sub(self.interval) >= load_end;
        if self.stopped.is_some_and(|s| s.abort) && draining {
            f.push(Field::new("[stopping]", 0));
        } else if draining {
            let drained = end.saturating_sub(load_end).min(self.load.drain);
            f.push(Field::new(
                format!("[drain {}/{}]", clock(drained, false), clock(self.load.drain, false)),
                0,
            ));
            f.push(Field::new(
                format!("ETA ≤{}", clock(self.load.drain.saturating_sub(drained), true)),
                1,
            ));
        } else {
            f.push(Field::new(
                format!(
                    "[{:>5.0}s/{:.0}s]",
                    end.min(planned).as_secs_f64(),
                    planned.as_secs_f64()
                ),
                0,
            ));
            if let Some(step) = self.step(row.place) {
                f.push(Field::new(step, 2));
            }
            f.push(Field::new(self.eta(end.min(load_end), load_end), 1));
        }
        let active = row.counters.active_users;
        f.push(Field::new(
            if self.load.is_users() && !draining {
                format!("users {active:>4}")
            } else {
                format!("in flight {active:>4}")
            },
            5,
        ));
        f.push(Field::new(format!("{:>6.1} req/s", row.counters.ok as f64 / secs), 0));
        f.push(Field::new(
            format!("{:>6.0} tok/s", row.counters.output_tokens as f64 / secs),
            2,
        ));
        let (ttft, itl, e2e) = (row.get(Metric::Ttft), row.get(Metric::Itl), row.get(Metric::E2e));
        let show = |count: u64, v: u64| {
            if count == 0 { "-".to_owned() } else { human_us(v as f64) }
        };
        f.push(Field::new(format!("TTFT p50 {:>6}", show(ttft.count, ttft.p50)), 3));
        f.push(Field::joined(format!("p95 {:>6}", show(ttft.count, ttft.p95)), 6));
        f.push(Field::new(format!("ITL p50 {:>6}", show(itl.count, itl.p50)), 7));
        f.push(Field::new(format!("E2E p95 {:>6}", show(e2e.count, e2e.p95)), 4));
        f.push(Field::new(format!("errors {}", row.counters.failed()), 1));
        f
    }

    /// `stage 2/4`, `step 3/6 at 40 users`, with `warm-up` during one;
    /// nothing for a single level.
    fn step(&self, place: Place) -> Option<String> {
        let (k, warm) = match place {
            Place::Step(k) => (k, false),
            Place::Warmup(k) => (k, true),
            Place::Drain => return None,
        };
        let n = self.load.steps.len();
        let mut text = match self.load.shape {
            Shape::Single => String::new(),
            Shape::Stages => format!("stage {}/{n}", k + 1),
            Shape::Sweep => {
                let level = self.load.steps.get(k).map_or(0.0, |s| s.level);
                format!("step {}/{n} at {}", k + 1, self.load.label(level))
            }
        };
        if warm {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str("warm-up");
        }
        (!text.is_empty()).then_some(text)
    }

    /// The time left for the whole run at `elapsed` into a load that ends
    /// at `load_end`: the
    /// rest of the load (its steps, or the requests left to send at the
    /// pace so far), then the drain, taken as the longest request seen
    /// lately. `≤` marks an upper bound: no request has ended yet, so the
    /// drain may take all its time.
    fn eta(&self, elapsed: Duration, load_end: Duration) -> String {
        let mut left = load_end.saturating_sub(elapsed);
        if let Some(n) = self.load.requests
            && self.ended > 0
            && !elapsed.is_zero()
        {
            let per_s = self.ended as f64 / elapsed.as_secs_f64();
            let by_count = Duration::from_secs_f64((n.saturating_sub(self.ended) as f64 / per_s).min(1e9));
            left = left.min(by_count);
        }
        match self.e2e_max_us {
            Some(us) => format!(
                "ETA {}",
                clock(left + Duration::from_micros(us).min(self.load.drain), true)
            ),
            None => format!("ETA ≤{}", clock(left + self.load.drain, true)),
        }
    }

    /// Shows one completed interval.
    pub fn row(&mut self, row: &Row) {
        self.take(row);
        let fields = self.fields(row);
        self.shown = true;
        if self.tty {
            let line = join(&fields, width());
            let mut screen = SCREEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            *screen = Some(line);
        } else {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{}", join(&fields, usize::MAX));
        }
    }

    /// Ends the live view.
    pub fn finish(&mut self) {
        if self.tty && self.shown {
            let mut screen = SCREEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if screen.take().is_some() {
                let _ = writeln!(std::io::stderr());
            }
        }
    }
}

/// One part of the line.
#[derive(Debug)]
struct Field {
    text: String,
    /// Follows the previous field after a space rather than a bar.
    joined: bool,
    /// Left out first when the line is too wide: the highest rank goes
    /// first; rank 0 always stays.
    rank: u8,
}

impl Field {
    fn new(text: impl Into<String>, rank: u8) -> Field {
        Field {
            text: text.into(),
            joined: false,
            rank,
        }
    }

    fn joined(text: impl Into<String>, rank: u8) -> Field {
        Field {
            joined: true,
            ..Field::new(text, rank)
        }
    }
}

/// The fields as one line. Within `width` characters (a terminal's), the
/// padding that keeps log lines in columns is left out, then the
/// highest-ranked fields until it fits (the fields of rank 0 stay
/// whatever the width).
fn join(fields: &[Field], width: usize) -> String {
    let compact = width != usize::MAX;
    let mut drop_from = u8::MAX;
    loop {
        let mut line = String::new();
        for f in fields.iter().filter(|f| f.rank < drop_from) {
            if !line.is_empty() {
                line.push_str(if f.joined { " " } else { " | " });
            }
            if compact {
                let words: Vec<&str> = f.text.split(' ').filter(|w| !w.is_empty()).collect();
                line.push_str(&words.join(" ").replace("[ ", "["));
            } else {
                line.push_str(&f.text);
            }
        }
        let widest = fields
            .iter()
            .map(|f| f.rank)
            .filter(|&r| r < drop_from)
            .max()
            .unwrap_or(0);
        if line.chars().count() <= width || widest == 0 {
            return line;
        }
        drop_from = widest;
    }
}

/// A duration to the second, `42s`, `2m05s`, `1h02m`: rounded down for
/// time spent, up for time left (`up`), so that the two add up.
fn clock(d: Duration, up: bool) -> String {
    let s = d.as_secs() + u64::from(up && d.subsec_nanos() > 0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The terminal's width, or [`DEFAULT_WIDTH`] when standard error is not
/// a terminal that says.
fn width() -> usize {
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
        _ => DEFAULT_WIDTH,
    }
}

/// Writes log lines to standard error above the live line: the line is
/// cleared, the log line written, and the line drawn again. Give it to
/// the log subscriber (`tracing_subscriber::fmt().with_writer(LogWriter)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log line on its way to standard error: kept until it is complete,
/// then written in one go beneath the live line's place.
#[derive(Debug)]
pub struct LogLine(Vec<u8>);

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let screen = SCREEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        match screen.as_deref() {
            Some(line) => {
                let _ = err.write_all(b"\r\x1b[2K");
                let _ = err.write_all(&self.0);
                let _ = write!(err, "{line}");
            }
            None => {
                let _ = err.write_all(&self.0);
            }
        }
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests;
