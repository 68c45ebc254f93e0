//! The coordinator's writer, on a thread of its own: it appends each entry
//! to the run log and applies it to the ledger, and only then
//! acknowledges a report (reports and an agent's totals reach the disk
//! first: `fdatasync`), so that an acknowledged report survives a crash.
//! It feeds the progress line and the live metrics, and judges the
//! thresholds with `abort` on every row the entries complete, telling the
//! coordinator when one breaks. Waiting on the disk here never delays a
//! heartbeat or a decision of the coordinator.

use std::time::Duration;

use stampede_proto::pb::{self, controller_message};
use tokio::sync::{mpsc, oneshot};

use super::service::Outbound;
use crate::analysis::gates;
use crate::merge::{Place, Row};
use crate::profile::Threshold;
use crate::report::live::{self, Live};
use crate::report::otlp::Feed;
use crate::report::progress::{Progress, Stop};
use crate::results::log::{End, Entry};
use crate::results::{AgentEnd, Collected, Ledger};

/// What the writer is given.
pub(crate) enum Write {
    /// Log and apply `entry`; then send the acknowledgement on the stream,
    /// when given.
    Record {
        entry: Box<Entry>,
        ack: Option<(Outbound, pb::ReportAck)>,
    },
    /// The load was stopped early: tell the progress line.
    Stopped(Stop),
    /// The run is over: close the log.
    Close(End),
}

/// The writer's state.
pub(crate) struct Writer {
    pub(crate) ledger: Ledger,
    pub(crate) progress: Progress,
    pub(crate) live: Option<Live>,
    /// The OTLP metrics push, when on.
    pub(crate) otlp: Option<Feed>,
    /// The profile's thresholds; those with `abort` are judged as rows
    /// complete.
    pub(crate) thresholds: Vec<Threshold>,
    pub(crate) interval: Duration,
    /// Where a broken threshold is reported, once.
    pub(crate) breaches: mpsc::UnboundedSender<String>,
}

/// Starts the writer on its own thread; the receiver gets what it
/// collected once it has been given [`Write::Close`] (or its sender is
/// dropped).
pub(crate) fn spawn(writer: Writer, writes: mpsc::Receiver<Write>) -> oneshot::Receiver<Collected> {
    let (done, collected) = oneshot::channel();
    let logs = tracing::Span::current();
    let spawned = std::thread::Builder::new()
        .name("stampede-writer".to_owned())
        .spawn(move || {
            let _in_run = logs.enter();
            let _ = done.send(writer.run(writes));
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the results writer: {e}");
    }
    collected
}

impl Writer {
    fn run(mut self, mut writes: mpsc::Receiver<Write>) -> Collected {
        let mut breached = false;
        // Acknowledgements wait for the one fdatasync that follows the
        // entries at hand (group commit): a thousand agents' reports a
        // second would otherwise wait for a thousand, one after another.
        let mut acks = Vec::new();
        while let Some(mut write) = writes.blocking_recv() {
            loop {
                match write {
                    Write::Record { entry, ack } => {
                        breached |= self.record(*entry, breached);
                        acks.extend(ack);
                    }
                    Write::Stopped(stop) => self.progress.stopped(stop),
                    Write::Close(end) => {
                        self.acknowledge(&mut acks);
                        return self.close(end);
                    }
                }
                match writes.try_recv() {
                    Ok(next) => write = next,
                    Err(_) => break,
                }
            }
            self.acknowledge(&mut acks);
        }
        self.acknowledge(&mut acks);
        self.close(End::default())
    }

    /// Puts what was recorded on the disk, then acknowledges it.
    fn acknowledge(&mut self, acks: &mut Vec<(Outbound, pb::ReportAck)>) {
        self.ledger.sync();
        for (out, ack) in acks.drain(..) {
            let ack = controller_message::Kind::Ack(ack);
            let _ = out.try_send(Ok(pb::ControllerMessage { kind: Some(ack) }));
        }
    }

    /// Records one entry, to be acknowledged once it is on the disk; true
    /// when a threshold broke.
    fn record(&mut self, entry: Entry, breached: bool) -> bool {
        let agent_state = matches!(
            entry,
            Entry::Joined(_) | Entry::Left { .. } | Entry::Lost { .. } | Entry::Failed { .. } | Entry::Finished(_)
        );
        let agent_index = match &entry {
            Entry::Report(r) => Some(r.agent_index),
            _ => None,
        };
        let name = match &entry {
            Entry::Finished(f) => Some(f.agent.clone()),
            _ => None,
        };
        let extras = match (&entry, &self.live) {
            (Entry::Report(r), Some(_)) => Some(live::Extras::of(r)),
            _ => None,
        };
        let effect = self.ledger.record_unsynced(entry);
        if let Some(why) = &effect.unreadable {
            tracing::error!("{why}");
        }
        if let (Some(mismatch), Some(name)) = (&effect.mismatch, name) {
            tracing::warn!(agent = %name, "{mismatch}");
        }
        if let (Some(report), Some(live), Some(index)) = (&effect.added, &self.live, agent_index) {
            live.report(index, &report.histograms, &report.counters);
            live.extras(extras.unwrap_or_default());
        }
        if agent_state {
            self.count_agents();
        }
        if let Some(otlp) = &mut self.otlp {
            otlp.record(&effect, agent_index, agent_state, &self.ledger);
        }
        self.rows(&effect.rows);
        !breached && !effect.rows.is_empty() && self.breach()
    }

    fn rows(&mut self, rows: &[Row]) {
        for row in rows {
            self.progress.row(row);
        }
    }

    /// Tells the live metrics how many agents stand in each state.
    fn count_agents(&self) {
        let Some(live) = &self.live else { return };
        let (mut running, mut finished, mut lost) = (0, 0, 0);
        for agent in self.ledger.agents() {
            match agent.end {
                AgentEnd::Unfinished => running += 1,
                AgentEnd::Finished => finished += 1,
                AgentEnd::Lost(_) | AgentEnd::Failed(_) => lost += 1,
            }
            if agent.end != AgentEnd::Unfinished {
                live.agent_ended(agent.index);
            }
        }
        live.agents(running, finished, lost);
    }

    /// Judges the thresholds with `abort` on everything merged so far;
    /// tells the coordinator when one breaks.
    fn breach(&self) -> bool {
        if !self.thresholds.iter().any(|t| t.abort) {
            return false;
        }
        let rows = self.ledger.rows();
        let Some(last) = rows.last() else { return false };
        let interval_s = self.interval.as_secs_f64();
        let merger = self.ledger.merger();
        let (measured, steps) = (merger.measured(), merger.steps());
        let mut steps_s = vec![0.0; steps.len()];
        let mut measured_s = 0.0;
        for r in rows {
            match r.place {
                Place::Step(k) => {
                    measured_s += interval_s;
                    if let Some(s) = steps_s.get_mut(k) {
                        *s += interval_s;
                    }
                }
                Place::Drain => measured_s += interval_s,
                Place::Warmup(_) => {}
            }
        }
        let progress = gates::Progress {
            measured: &measured,
            measured_s,
            steps: &steps,
            steps_s: &steps_s,
            elapsed_s: (last.interval + 1) as f64 * interval_s,
        };
        match gates::breached(&self.thresholds, &progress) {
            Some(why) => self.breaches.send(why).is_ok(),
            None => false,
        }
    }

    fn close(mut self, mut end: End) -> Collected {
        let rows = self.ledger.flush();
        self.rows(&rows);
        self.progress.finish();
        // Every report is merged: the last push carries the summary's
        // figures.
        if let Some(otlp) = self.otlp.take() {
            end.metrics_push = Some(otlp.finish(&self.ledger));
        }
        self.ledger.close(end)
    }
}
