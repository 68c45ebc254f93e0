//! How long a closed-loop user waits after a connection attempt failed:
//! capped exponential back-off with jitter, so that a server that is down
//! (or a client out of file descriptors) is not hammered in a hot loop,
//! and users that failed together do not all try again together.
//!
//! Each failed attempt is still one `connect` error; the back-off only
//! spaces the attempts. A connection that opens resets it.

use std::time::Duration;

use super::schedule::Rng;

/// The wait after the first failure, at most.
pub const FIRST: Duration = Duration::from_millis(50);
/// The longest wait, at most.
pub const MAX: Duration = Duration::from_secs(2);

/// One user's back-off.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Failures in a row.
    failures: u32,
    /// The jitter, seeded per user so that a run's waits are reproducible.
    rng: Rng,
}

impl Backoff {
    /// A back-off whose jitter is drawn from `seed`.
    pub fn new(seed: u64) -> Backoff {
        Backoff {
            failures: 0,
            rng: Rng::new(seed),
        }
    }

    /// Notes a failed attempt and returns how long to wait before the
    /// next: the ceiling doubles from [`FIRST`] up to [`MAX`], and the wait
    /// is drawn uniformly from its upper half, so it is never shorter than
    /// half the ceiling ("equal jitter").
    pub fn failed(&mut self) -> Duration {
        let ceiling = FIRST.saturating_mul(1 << self.failures.min(16)).min(MAX);
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(self.rng.unit())
    }

    /// Notes that a connection opened: the next failure starts again
    /// from [`FIRST`].
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_double_up_to_the_cap_within_their_upper_half() {
        let mut b = Backoff::new(7);
        let ceilings = [50, 100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000];
        for (i, c) in ceilings.into_iter().enumerate() {
            let w = b.failed();
            assert!(
                w >= ms(c) / 2 && w <= ms(c),
                "failure {i}: {w:?} outside [{}, {c}] ms",
                c / 2
            );
        }
        // Thousands of failures later the wait is still capped.
        for _ in 0..10_000 {
            assert!(b.failed() <= MAX);
        }
    }

    #[test]
    fn a_success_starts_again_from_the_first_wait() {
        let mut b = Backoff::new(1);
        for _ in 0..8 {
            b.failed();
        }
        b.succeeded();
        assert!(b.failed() <= FIRST);
    }

    #[test]
    fn the_jitter_follows_the_seed() {
        let waits = |seed| {
            let mut b = Backoff::new(seed);
            (0..8).map(|_| b.failed()).collect::<Vec<_>>()
        };
        assert_eq!(waits(3), waits(3));
        assert_ne!(waits(3), waits(4));
    }

    #[test]
    fn failing_for_three_seconds_makes_at_most_eight_attempts() {
        // The bound the end-to-end test relies on: with every wait at its
        // shortest (half its ceiling), a user that fails at once every
        // time attempts at 0, 25, 75, 175, 375, 775, 1575 and 2575 ms, and
        // not again before 3575 ms. Waits only ever run longer on a busy
        // machine, so a busy machine makes fewer attempts, never more.
        for seed in 0..1000 {
            let mut b = Backoff::new(seed);
            let (mut at, mut attempts) = (Duration::ZERO, 0);
            while at < Duration::from_secs(3) {
                attempts += 1;
                at += b.failed();
            }
            assert!(attempts <= 8, "seed {seed}: {attempts} attempts");
        }
    }
}
