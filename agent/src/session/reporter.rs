//! Interval reports: cut the recorder's shards each interval, keep the
//! run's totals, and encode both for the wire.
//!
//! Merging shards and compressing histograms is CPU work of a few
//! milliseconds each interval. It runs on a blocking thread, so that it
//! never holds up the runtime threads that start requests on time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stampede_proto::pb;
use tokio::time::Instant;

use crate::cpu::Meter;
use crate::presence::Presence;
use crate::record::{Interval, Recorder};
use crate::trace::Tracing;

/// What a cut works on; moved to a blocking thread and back.
struct Work {
    recorder: Recorder,
    cut: Interval,
    spare: Interval,
    total: Interval,
    cpu: Meter,
    tracing: Arc<Tracing>,
    /// The prompt classes' names, by index.
    classes: Vec<String>,
}

impl Work {
    /// Cuts one interval; `active` is the users gauge at the cut.
    fn cut(&mut self, active: u32, index: u64, last: bool) -> pb::Report {
        self.recorder.cut(&mut self.cut, &mut self.spare);
        let exemplars = self.tracing.cut(index);
        let sampled_exemplars = self.tracing.cut_drawn(index);
        if last {
            self.tracing.close();
        }
        let spans = self.tracing.stats_delta();
        self.cut.counters.spans_exported = spans.exported;
        self.cut.counters.spans_dropped = spans.dropped;
        self.total.add(&self.cut);
        self.cut.counters.active_users = active;
        let report = pb::Report {
            histograms: self.cut.histograms.to_wire(),
            counters: Some(self.cut.counters.to_wire()),
            error_samples: self
                .cut
                .samples
                .iter()
                .map(|(class, message)| pb::ErrorSample {
                    class: class.to_string(),
                    message: message.clone(),
                })
                .collect(),
            cpu: self.cpu.sample(),
            exemplars,
            sampled_exemplars,
            classes: class_totals(&self.cut, &self.classes),
            turns: turn_totals(&self.cut),
            ..pb::Report::default()
        };
        self.cut.reset();
        report
    }
}

/// The wire form of `interval`'s prompt classes that had requests.
fn class_totals(interval: &Interval, classes: &[String]) -> Vec<pb::ClassTotals> {
    interval
        .classes
        .iter()
        .filter(|(_, t)| t.counters.ok + t.counters.failed() > 0)
        .map(|(index, t)| pb::ClassTotals {
            class: classes.get(usize::from(*index)).cloned().unwrap_or_default(),
            histograms: t.histograms.to_wire(),
            counters: Some(t.counters.to_wire()),
        })
        .collect()
}

/// The wire form of `interval`'s session turns that had requests, each
/// named by its number.
fn turn_totals(interval: &Interval) -> Vec<pb::ClassTotals> {
    interval
        .turns
        .iter()
        .filter(|(_, t)| t.counters.ok + t.counters.failed() > 0)
        .map(|(turn, t)| pb::ClassTotals {
            class: turn.to_string(),
            histograms: t.histograms.to_wire(),
            counters: Some(t.counters.to_wire()),
        })
        .collect()
}

/// Cuts interval reports and keeps the run's totals.
pub(super) struct Reporter {
    work: Option<Work>,
    presence: Arc<Presence>,
    active: Arc<AtomicU32>,
    start: Instant,
    interval: Duration,
    next_index: u64,
    sequence: u64,
    gpu: Option<Arc<crate::gpu::Sampler>>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Reporter {
    /// A reporter of `recorder`'s outcomes, with intervals counted from
    /// `start`.
    /// `gpu`'s readings go with each report, and `presence`'s map of the
    /// interval.
    pub(super) fn new(
        recorder: Recorder,
        tracing: Arc<Tracing>,
        presence: Arc<Presence>,
        active: Arc<AtomicU32>,
        start: Instant,
        interval: Duration,
        gpu: Option<Arc<crate::gpu::Sampler>>,
    ) -> Reporter {
        Reporter {
            work: Some(Work {
                recorder,
                tracing,
                cut: Interval::default(),
                spare: Interval::default(),
                total: Interval::default(),
                cpu: Meter::default(),
                classes: Vec::new(),
            }),
            presence,
            active,
            start,
            interval,
            next_index: 0,
            sequence: 0,
            gpu,
        }
    }

    /// Names the prompt classes, by index, for the reports' per-class
    /// counts.
    pub(super) fn name_classes(&mut self, classes: &[String]) {
        if let Some(work) = &mut self.work {
            work.classes = classes.to_vec();
        }
    }

    /// When the current interval ends.
    pub(super) fn due(&self) -> Instant {
        let ends = u32::try_from(self.next_index + 1).unwrap_or(u32::MAX);
        self.start + self.interval * ends
    }

    /// Cuts the current interval into a report.
    pub(super) async fn report(&mut self) -> pb::Report {
        self.cut(None).await
    }

    /// Cuts the last report, after flushing the span exporter (bounded by
    /// [`crate::trace::FLUSH`]). It is stamped `ended`, when the load ended
    /// (time since the agent's start), not when the flush was done: the
    /// exporter's time is not the load's, and the run's rates divide by it.
    pub(super) async fn report_last(&mut self, ended: Duration) -> pb::Report {
        self.cut(Some(ended)).await
    }

    async fn cut(&mut self, ended: Option<Duration>) -> pb::Report {
        let last = ended.is_some();
        let mut work = self.work.take().expect("the work is put back after every cut");
        let active = self.active.load(Ordering::Relaxed);
        let index = self.next_index;
        let logs = tracing::Span::current();
        let (work, mut report) = tokio::task::spawn_blocking(move || {
            let report = logs.in_scope(|| work.cut(active, index, last));
            (work, report)
        })
        .await
        .expect("cutting a report does not panic");
        self.work = Some(work);
        self.sequence += 1;
        report.interval = self.next_index;
        report.sequence = self.sequence;
        report.elapsed_us = micros(ended.unwrap_or_else(|| self.start.elapsed()));
        let from = self.start + self.interval * u32::try_from(self.next_index).unwrap_or(u32::MAX);
        let to = ended.map_or_else(|| self.due(), |e| self.start + e);
        report.presence = self.presence.cut(from, to.max(from));
        report.in_flight = self.presence.in_flight();
        if let Some(gpu) = &self.gpu {
            report.gpu = gpu.drain(self.start);
        }
        self.next_index += 1;
        report
    }

    /// The run's totals, once the last report is cut.
    /// `classes` names the prompt classes by index.
    pub(super) fn finished(&self, elapsed: Duration, classes: &[String]) -> (pb::Finished, stampede_proto::Counters) {
        let total = &self.work.as_ref().expect("the work is put back after every cut").total;
        let mut counters = total.counters.clone();
        counters.active_users = 0;
        let finished = pb::Finished {
            histograms: total.histograms.to_wire(),
            counters: Some(counters.to_wire()),
            elapsed_us: micros(elapsed),
            last_sequence: self.sequence,
            classes: class_totals(total, classes),
            stopped_early: String::new(),
            turns: turn_totals(total),
        };
        (finished, counters)
    }
}
