//! The refusals log: what the agents' port turned away, at most one line
//! every few seconds. A flood of junk connections must not become a flood
//! of log lines, yet an operator must see that it happened and why.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Why the port turned something away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// A request came without a token.
    NoToken,
    /// A request came with a token that is not the run's.
    WrongToken,
    /// A connection sent no valid token within the handshake deadline.
    Deadline,
    /// A connection was the oldest of too many without a valid token.
    Crowded,
    /// `accept` failed: the process (or the system) is out of file
    /// descriptors.
    NoDescriptors,
    /// `accept` failed for another reason.
    Accept,
}

const WHYS: [Why; 6] = [
    Why::NoToken,
    Why::WrongToken,
    Why::Deadline,
    Why::Crowded,
    Why::NoDescriptors,
    Why::Accept,
];

/// What the lines say about each count; set by the port's limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Wording {
    /// The handshake deadline.
    pub(crate) deadline: Duration,
    /// The most connections that may wait for a token.
    pub(crate) waiting: usize,
}

/// Counts refusals and says when a line is due.
#[derive(Debug)]
pub(crate) struct Refusals {
    every: Duration,
    wording: Wording,
    counts: [u64; WHYS.len()],
    /// When the last line was written.
    last_line: Option<Instant>,
    /// When the first refusal not yet written happened.
    first: Option<Instant>,
    /// The peer of the latest refusal that had one.
    latest: Option<SocketAddr>,
}

impl Refusals {
    /// At most one line every `every`.
    pub(crate) fn new(every: Duration, wording: Wording) -> Refusals {
        Refusals {
            every,
            wording,
            counts: [0; WHYS.len()],
            last_line: None,
            first: None,
            latest: None,
        }
    }

    /// Counts one refusal at `now`, and returns the line to write if one is
    /// due (the first refusal after a quiet spell is written at once).
    pub(crate) fn add(&mut self, why: Why, peer: Option<SocketAddr>, now: Instant) -> Option<String> {
        let slot = WHYS.iter().position(|w| *w == why).expect("WHYS lists every reason");
        self.counts[slot] += 1;
        self.first.get_or_insert(now);
        if peer.is_some() {
            self.latest = peer;
        }
        self.due(now)
    }

    /// The line to write at `now`, if refusals are waiting and the last line
    /// was at least `every` ago.
    pub(crate) fn due(&mut self, now: Instant) -> Option<String> {
        let first = self.first?;
        if self.last_line.is_some_and(|last| now.duration_since(last) < self.every) {
            return None;
        }
        let since = self.last_line.unwrap_or(first);
        Some(self.write(now, since))
    }

    fn write(&mut self, now: Instant, since: Instant) -> String {
        let line = self.line(now.duration_since(since));
        self.counts = [0; WHYS.len()];
        self.first = None;
        self.latest = None;
        self.last_line = Some(now);
        line
    }

    /// The line for what is held, whatever the period: for when the port
    /// closes, so that the last refusals are not lost.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<String> {
        let first = self.first?;
        let since = self.last_line.unwrap_or(first);
        Some(self.write(now, since))
    }

    fn line(&self, span: Duration) -> String {
        let Wording { deadline, waiting } = self.wording;
        let parts: Vec<String> = WHYS
            .iter()
            .zip(self.counts)
            .filter(|(_, n)| *n > 0)
            .map(|(why, n)| {
                let (one, many) = match why {
                    Why::NoToken => ("request", "requests"),
                    Why::WrongToken => ("request", "requests"),
                    Why::Deadline | Why::Crowded => ("connection", "connections"),
                    Why::NoDescriptors | Why::Accept => ("accept", "accepts"),
                };
                let what = if n == 1 { one } else { many };
                let why = match why {
                    Why::NoToken => "without a token".to_owned(),
                    Why::WrongToken => "with a wrong token".to_owned(),
                    Why::Deadline => format!("closed for sending no valid token within {}", secs(deadline)),
                    Why::Crowded => format!("closed as the oldest of more than {waiting} waiting for a token"),
                    Why::NoDescriptors => "failed: out of file descriptors (see ulimit -n)".to_owned(),
                    Why::Accept => "failed for another reason".to_owned(),
                };
                format!("{n} {what} {why}")
            })
            .collect();
        let mut line = format!("agents' port: refused in the last {}: {}", secs(span), parts.join("; "));
        if let Some(peer) = self.latest {
            let _ = write!(line, " (latest from {peer})");
        }
        line
    }
}

/// A duration in seconds, to a tenth: `5.0s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDING: Wording = Wording {
        deadline: Duration::from_secs(10),
        waiting: 64,
    };

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn the_first_refusal_is_written_at_once_then_one_line_per_period_counts_the_rest() {
        let t = Instant::now();
        let peer: SocketAddr = "10.0.0.7:41000".parse().unwrap();
        let mut log = Refusals::new(Duration::from_secs(5), WORDING);
        assert_eq!(log.due(t), None, "nothing refused, nothing to say");
        assert_eq!(
            log.add(Why::NoToken, Some(peer), t).as_deref(),
            Some("agents' port: refused in the last 0.0s: 1 request without a token (latest from 10.0.0.7:41000)")
        );
        // A flood inside the period writes nothing...
        for i in 0..300 {
            assert_eq!(log.add(Why::Deadline, None, at(t, 10 + i)), None);
        }
        for i in 0..7 {
            assert_eq!(log.add(Why::Crowded, None, at(t, 400 + i)), None);
        }
        assert_eq!(log.add(Why::WrongToken, Some(peer), at(t, 500)), None);
        assert_eq!(log.add(Why::WrongToken, None, at(t, 600)), None);
        assert_eq!(log.add(Why::NoDescriptors, None, at(t, 700)), None);
        assert_eq!(log.due(at(t, 4_999)), None);
        // ...and the line after it counts all of it, by reason.
        assert_eq!(
            log.due(at(t, 5_000)).as_deref(),
            Some(
                "agents' port: refused in the last 5.0s: 2 requests with a wrong token; \
                 300 connections closed for sending no valid token within 10.0s; \
                 7 connections closed as the oldest of more than 64 waiting for a token; \
                 1 accept failed: out of file descriptors (see ulimit -n) (latest from 10.0.0.7:41000)"
            )
        );
        // Counted once: nothing is left to say.
        assert_eq!(log.due(at(t, 20_000)), None);
    }

    #[test]
    fn after_a_quiet_spell_a_refusal_is_written_at_once() {
        let t = Instant::now();
        let mut log = Refusals::new(Duration::from_secs(5), WORDING);
        assert!(log.add(Why::Accept, None, t).is_some());
        assert_eq!(
            log.add(Why::NoToken, None, at(t, 60_000)).as_deref(),
            Some("agents' port: refused in the last 60.0s: 1 request without a token")
        );
        // Within the period after that line: held, then written when due.
        assert_eq!(log.add(Why::Accept, None, at(t, 61_000)), None);
        assert_eq!(log.due(at(t, 62_000)), None);
        assert_eq!(
            log.due(at(t, 65_000)).as_deref(),
            Some("agents' port: refused in the last 5.0s: 1 accept failed for another reason")
        );
    }

    #[test]
    fn closing_writes_what_is_held_at_once() {
        let t = Instant::now();
        let mut log = Refusals::new(Duration::from_secs(5), WORDING);
        assert_eq!(log.flush(t), None, "nothing held, nothing to say");
        assert!(log.add(Why::NoToken, None, t).is_some());
        assert_eq!(log.add(Why::Crowded, None, at(t, 1_000)), None);
        assert_eq!(
            log.flush(at(t, 2_000)).as_deref(),
            Some(
                "agents' port: refused in the last 2.0s: \
                 1 connection closed as the oldest of more than 64 waiting for a token"
            )
        );
        assert_eq!(log.flush(at(t, 2_500)), None);
    }
}
