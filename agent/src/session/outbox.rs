//! What an agent has sent and the controller has not yet acknowledged:
//! kept so that a broken stream loses nothing, and sent again, in order,
//! on the stream that resumes the session.
//!
//! A report leaves the outbox when the controller acknowledges it (it
//! acknowledges only what it has logged); so does everything sent before
//! it on the same stream, since a stream delivers in order and the
//! controller handles its messages in order. `Finished` stays until the
//! controller says it has recorded it (an acknowledgement marked
//! `finished`, or `Resumed { finished }` on a resumed stream).
//!
//! Bounded: at most [`MAX_REPORTS`] reports or [`MAX_BYTES`] bytes. Past
//! either, the oldest report is dropped (with a warning); the controller
//! then finds the agent's totals disagree with its reports and says the
//! run is degraded. The dead-man limit stops the load long before that in
//! practice: a gap holds about `dead_man / interval` reports.

use std::collections::VecDeque;

use prost::Message as _;
use stampede_proto::Counters;
use stampede_proto::pb::{self, agent_message};

/// Most unacknowledged reports kept: an hour of the default interval.
pub(super) const MAX_REPORTS: usize = 3_600;
/// Most bytes of unacknowledged messages kept.
pub(super) const MAX_BYTES: usize = 256 << 20;

/// Messages sent and not yet acknowledged, oldest first.
#[derive(Default)]
pub(super) struct Outbox {
    items: VecDeque<pb::AgentMessage>,
    bytes: usize,
    reports: usize,
    /// Reports dropped to stay within the bounds.
    pub(super) dropped: u64,
    /// The run's totals, once the load has ended.
    pub(super) counters: Option<Counters>,
}

fn sequence(m: &pb::AgentMessage) -> Option<u64> {
    match &m.kind {
        Some(agent_message::Kind::Report(r)) => Some(r.sequence),
        _ => None,
    }
}

impl Outbox {
    /// Keeps `message` until it is acknowledged.
    pub(super) fn push(&mut self, message: pb::AgentMessage) {
        self.bytes += message.encoded_len();
        self.reports += usize::from(sequence(&message).is_some());
        self.items.push_back(message);
        while self.reports > MAX_REPORTS || self.bytes > MAX_BYTES {
            let Some(oldest) = self.items.iter().position(|m| sequence(m).is_some()) else {
                break;
            };
            if let Some(m) = self.items.remove(oldest) {
                self.bytes -= m.encoded_len();
                self.reports -= 1;
                self.dropped += 1;
                tracing::warn!(
                    sequence = sequence(&m),
                    "more unacknowledged reports than an agent keeps ({MAX_REPORTS} or {} MiB): dropped the oldest",
                    MAX_BYTES >> 20
                );
            }
        }
    }

    /// The controller has logged report `sequence`: it and everything sent
    /// before it leave. An acknowledgement of a report no longer kept (a
    /// duplicate's) changes nothing.
    pub(super) fn acked(&mut self, sequence_acked: u64) {
        let Some(at) = self.items.iter().position(|m| sequence(m) == Some(sequence_acked)) else {
            return;
        };
        for m in self.items.drain(..=at) {
            self.bytes -= m.encoded_len();
            self.reports -= usize::from(sequence(&m).is_some());
        }
    }

    /// What to send again, oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &pb::AgentMessage> {
        self.items.iter()
    }

    /// Messages kept.
    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// Reports kept.
    pub(super) fn reports(&self) -> usize {
        self.reports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sequence: u64) -> pb::AgentMessage {
        pb::AgentMessage {
            kind: Some(agent_message::Kind::Report(pb::Report {
                sequence,
                interval: sequence - 1,
                ..pb::Report::default()
            })),
        }
    }

    fn kept(o: &Outbox) -> Vec<Option<u64>> {
        o.iter().map(sequence).collect()
    }

    #[test]
    fn an_ack_takes_its_report_and_everything_before_it() {
        let mut o = Outbox::default();
        o.push(pb::AgentMessage {
            kind: Some(agent_message::Kind::Began(pb::Began { started_at_us: 1 })),
        });
        for s in 1..=4 {
            o.push(report(s));
        }
        assert_eq!(kept(&o), [None, Some(1), Some(2), Some(3), Some(4)]);
        o.acked(2);
        assert_eq!(kept(&o), [Some(3), Some(4)]);
        assert_eq!(o.reports(), 2);
        // A duplicate's acknowledgement, after a resumed stream sent it
        // again, changes nothing.
        o.acked(1);
        o.acked(2);
        assert_eq!(kept(&o), [Some(3), Some(4)]);
        o.push(pb::AgentMessage {
            kind: Some(agent_message::Kind::Finished(pb::Finished::default())),
        });
        o.acked(4);
        assert_eq!(kept(&o), [None], "Finished stays until its own acknowledgement");
        assert_eq!(o.bytes, o.iter().map(prost::Message::encoded_len).sum::<usize>());
    }

    #[test]
    fn past_its_bound_the_oldest_report_is_dropped_and_counted() {
        let mut o = Outbox::default();
        for s in 1..=(MAX_REPORTS as u64 + 3) {
            o.push(report(s));
        }
        assert_eq!(o.reports(), MAX_REPORTS);
        assert_eq!(o.dropped, 3);
        assert_eq!(kept(&o)[0], Some(4));
    }
}
