//! Estimating the offset between this agent's wall clock and the
//! controller's, so that every agent can begin at the same instant and say
//! when it really began.
//!
//! The agent sends a few probes; each reply carries the controller's clock.
//! Assuming the reply was stamped halfway through the round trip, the
//! offset is `controller_time - (sent_at + rtt / 2)`, wrong by at most
//! `rtt / 2`; the probe with the shortest round trip is the best estimate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stampede_proto::pb::{self, agent_message, controller_message};
use tokio::time::Instant;

use super::Link;
use crate::Error;

/// Probes sent before Ready.
const PROBES: u64 = 8;
/// How long to wait for one reply.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Controller clock minus agent clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offset {
    /// The offset, microseconds.
    pub offset_us: i64,
    /// Round trip of the probe it came from, microseconds.
    pub rtt_us: u64,
}

/// This host's wall clock, microseconds since the Unix epoch.
pub fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One probe's measurement: the offset it implies and its round trip.
fn measure(sent_wall_us: i64, rtt: Duration, controller_time_us: u64) -> Offset {
    let rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
    let midpoint = sent_wall_us + i64::try_from(rtt_us / 2).unwrap_or(i64::MAX);
    Offset {
        offset_us: i64::try_from(controller_time_us).unwrap_or(i64::MAX) - midpoint,
        rtt_us,
    }
}

/// Probes the controller and keeps the best estimate; `None` when no probe
/// was answered (an older controller), in which case the agent falls back
/// to Start's relative delay.
pub(crate) async fn estimate(link: &mut Link) -> Result<Option<Offset>, Error> {
    let mut best: Option<Offset> = None;
    for id in 1..=PROBES {
        let sent = Instant::now();
        let sent_wall = wall_us();
        link.send(agent_message::Kind::ClockProbe(pb::ClockProbe { id })).await;
        let due = sent + PROBE_TIMEOUT;
        loop {
            let kind = tokio::select! {
                k = link.recv() => k?,
                _ = tokio::time::sleep_until(due) => break,
            };
            match kind {
                controller_message::Kind::ClockReply(r) if r.id == id => {
                    let m = measure(sent_wall, sent.elapsed(), r.controller_time_us);
                    if best.is_none_or(|b| m.rtt_us < b.rtt_us) {
                        best = Some(m);
                    }
                    break;
                }
                controller_message::Kind::Stop(s) => return Err(Error::Stopped(s.reason)),
                _ => {} // Heartbeats and stale replies.
            }
        }
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_is_assumed_halfway_through_the_round_trip() {
        // Sent at 1_000_000 us by the agent's clock, answered 2 ms later;
        // the controller stamped 1_051_000: it is 50 ms ahead.
        let m = measure(1_000_000, Duration::from_millis(2), 1_051_000);
        assert_eq!(
            m,
            Offset {
                offset_us: 50_000,
                rtt_us: 2_000
            }
        );
        let behind = measure(1_000_000, Duration::from_millis(10), 995_000);
        assert_eq!(behind.offset_us, -10_000);
    }
}
