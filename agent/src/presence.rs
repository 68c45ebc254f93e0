//! When this agent had requests in flight, to the millisecond: each
//! interval report carries a map of the milliseconds with at least one
//! request between its dispatch and its end, which the controller ORs
//! over the agents. Findings that ask how busy the server was *while
//! requests were present* divide by this time, not by the interval.

use std::sync::Mutex;

use tokio::time::Instant;

/// Requests in flight and the periods with any.
#[derive(Debug, Default)]
pub struct Presence {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    in_flight: u32,
    /// When the current period with requests began.
    since: Option<Instant>,
    /// Periods that ended since the last cut that reached past it.
    closed: Vec<(Instant, Instant)>,
}

/// A request in flight; its end when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Presence);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight -= 1;
        if s.in_flight == 0
            && let Some(since) = s.since.take()
        {
            s.closed.push((since, Instant::now()));
        }
    }
}

impl Presence {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.lock().in_flight
    }

    /// A request begins; it ends when the guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        let mut s = self.lock();
        if s.in_flight == 0 {
            s.since = Some(Instant::now());
        }
        s.in_flight += 1;
        InFlight(self)
    }

    /// The map of `[from, to)` in milliseconds (bit `j % 8` of byte
    /// `j / 8` for millisecond `j`), set where a request was in flight.
    /// Periods that reach past `to` are kept for the next cut.
    pub fn cut(&self, from: Instant, to: Instant) -> Vec<u8> {
        let slots = to.saturating_duration_since(from).as_millis() as usize;
        let mut map = vec![0u8; slots.div_ceil(8)];
        let mut mark = |a: Instant, b: Instant| {
            let a = a.max(from).saturating_duration_since(from);
            let b = b.min(to).saturating_duration_since(from);
            if b <= a {
                return;
            }
            // Every millisecond the period touches.
            let first = a.as_millis() as usize;
            let last = (b.as_micros().div_ceil(1000) as usize).min(slots);
            for j in first..last {
                map[j / 8] |= 1 << (j % 8);
            }
        };
        let mut s = self.lock();
        for &(a, b) in &s.closed {
            mark(a, b);
        }
        s.closed.retain(|&(_, b)| b > to);
        if let Some(since) = s.since {
            mark(since, to);
        }
        map
    }
}

/// Milliseconds set in a presence map.
pub fn count(map: &[u8]) -> u32 {
    map.iter().map(|b| b.count_ones()).sum()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn periods_with_requests_are_marked_to_the_millisecond() {
        let p = Presence::default();
        let from = Instant::now();
        let ms = Duration::from_millis;
        // Two overlapping requests from 100 to 250 ms, one from 600 ms on.
        tokio::time::sleep(ms(100)).await;
        let a = p.enter();
        tokio::time::sleep(ms(50)).await;
        let b = p.enter();
        tokio::time::sleep(ms(50)).await;
        drop(a);
        tokio::time::sleep(ms(50)).await;
        drop(b);
        tokio::time::sleep(ms(350)).await;
        let c = p.enter();
        tokio::time::sleep(ms(400)).await;
        let map = p.cut(from, from + ms(1000));
        assert_eq!(map.len(), 125);
        assert_eq!(count(&map), 150 + 400);
        assert_eq!(map[100 / 8], 0b1111_0000, "from millisecond 100");
        // Still in flight: the next interval begins with it.
        tokio::time::sleep(ms(100)).await;
        drop(c);
        let next = p.cut(from + ms(1000), from + ms(2000));
        assert_eq!(count(&next), 100);
        assert_eq!(count(&p.cut(from + ms(2000), from + ms(3000))), 0);
    }
}
