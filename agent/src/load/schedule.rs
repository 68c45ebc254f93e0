//! Schedules: when each request is meant to start. Pure and seeded, so the
//! same profile and seed give the same instants on every run and every
//! agent.
//!
//! Open loop: arrival gaps are drawn with mean 1 in "work" units (all 1 for
//! a constant rate, exponential for Poisson, gamma for bursty traffic) and
//! mapped to time through the rate function, so ramps between phases are
//! exact for every process. Every agent computes the same global sequence
//! and keeps every `streams`-th arrival, so N agents together offer exactly
//! the profile's rate.
//!
//! Closed loop: each user's on/off windows, from the phases' user counts and
//! ramps.

use std::time::Duration;

/// xoshiro256**: small, fast, and stable across versions, so schedules stay
/// reproducible forever.
#[derive(Clone, Debug)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator seeded from one `u64`.
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    pub fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        // Box-Muller.
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang.
    fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            return self.gamma(shape + 1.0) * self.unit().powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.unit();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }
}

/// How gaps between arrivals are distributed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Process {
    /// Evenly spaced.
    Constant,
    /// Exponential gaps (Poisson arrivals).
    Poisson,
    /// Gamma gaps with this shape ("burstiness"): below 1 burstier than
    /// Poisson, above 1 smoother. The gaps' coefficient of variation is
    /// `1 / sqrt(burstiness)`.
    Gamma(f64),
}

/// One phase of an open-loop load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatePhase {
    /// Arrivals per second once ramped.
    pub rate: f64,
    /// Length.
    pub duration: Duration,
    /// How long the rate takes to move from the previous phase's.
    pub ramp: Duration,
}

/// A piece of the rate function: linear from `from` to `to` over `len`
/// seconds, starting at `start` seconds.
#[derive(Clone, Copy, Debug)]
struct Piece {
    start: f64,
    len: f64,
    from: f64,
    to: f64,
}

impl Piece {
    /// Expected arrivals over the whole piece.
    fn work(&self) -> f64 {
        (self.from + self.to) / 2.0 * self.len
    }

    /// Seconds into the piece at which `w` expected arrivals have passed.
    fn time_for(&self, w: f64) -> f64 {
        if w <= 0.0 {
            return 0.0;
        }
        let slope = (self.to - self.from) / self.len;
        if slope.abs() < 1e-12 {
            return w / self.from;
        }
        // Solve slope/2 τ² + from τ − w = 0, in the form that stays exact
        // when the slope is small.
        let disc = (self.from * self.from + 2.0 * slope * w).max(0.0);
        2.0 * w / (self.from + disc.sqrt())
    }
}

/// A phase in work units: where it starts and how much work it holds.
#[derive(Clone, Copy, Debug)]
struct PhaseWork {
    before: f64,
    work: f64,
}

/// The global arrival sequence: offsets from the start of the load.
///
/// Each phase holds exactly `round(rate × duration)` arrivals (its expected
/// count, ramps included): the gaps are drawn from the process and then
/// scaled to fill the phase. For a Poisson process this is the process
/// conditioned on its count (arrivals uniform over the phase); for gamma
/// gaps it keeps their shape. So a run offers exactly the profile's rate
/// whatever the seed, and two runs of one profile offer the same load.
#[derive(Clone, Debug)]
pub struct Arrivals {
    pieces: Vec<Piece>,
    phases: Vec<PhaseWork>,
    process: Process,
    seed: u64,
    /// Cursor into `pieces` and the work before the current piece.
    piece: usize,
    piece_before: f64,
    /// The current phase, its arrival count, the next arrival's number,
    /// the sum of all its gaps (`None` before it starts) and of those used.
    phase: usize,
    count: u64,
    k: u64,
    total: Option<f64>,
    sum: f64,
    rng: Rng,
}

impl Arrivals {
    /// Arrivals over `phases`, drawn with `process` from `seed`.
    pub fn new(phases: &[RatePhase], process: Process, seed: u64) -> Arrivals {
        let mut pieces = Vec::new();
        let mut works = Vec::new();
        let (mut t, mut previous, mut before) = (0.0, 0.0, 0.0);
        for p in phases {
            let (d, r) = (
                p.duration.as_secs_f64(),
                p.ramp.as_secs_f64().min(p.duration.as_secs_f64()),
            );
            let first = pieces.len();
            if r > 0.0 {
                pieces.push(Piece {
                    start: t,
                    len: r,
                    from: previous,
                    to: p.rate,
                });
            }
            if d > r {
                pieces.push(Piece {
                    start: t + r,
                    len: d - r,
                    from: p.rate,
                    to: p.rate,
                });
            }
            let work: f64 = pieces[first..].iter().map(Piece::work).sum();
            works.push(PhaseWork { before, work });
            before += work;
            t += d;
            previous = p.rate;
        }
        Arrivals {
            pieces,
            phases: works,
            process,
            seed,
            piece: 0,
            piece_before: 0.0,
            phase: 0,
            count: 0,
            k: 0,
            total: None,
            sum: 0.0,
            rng: Rng::new(seed),
        }
    }

    /// Keeps every `streams`-th arrival starting at `stream`: one agent's
    /// share of the global sequence.
    pub fn stream(self, stream: u32, streams: u32) -> impl Iterator<Item = Duration> {
        let (stream, streams) = (stream as usize, streams.max(1) as usize);
        self.enumerate()
            .filter(move |(i, _)| i % streams == stream)
            .map(|(_, t)| t)
    }

    fn gap(&mut self) -> f64 {
        match self.process {
            Process::Constant => 1.0,
            Process::Poisson => -self.rng.unit().ln(),
            Process::Gamma(shape) => self.rng.gamma(shape) / shape,
        }
    }

    fn phase_rng(&self) -> Rng {
        Rng::new(self.seed ^ (self.phase as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Work at which the next arrival falls, or `None` after the last.
    fn next_work(&mut self) -> Option<f64> {
        loop {
            let phase = *self.phases.get(self.phase)?;
            if self.total.is_none() {
                self.count = phase.work.round() as u64;
                self.k = 0;
                self.sum = 0.0;
                // Two passes over the same gaps: their sum first, so that
                // they can be scaled to fill the phase without storing them.
                self.rng = self.phase_rng();
                let total: f64 = (0..=self.count).map(|_| self.gap()).sum();
                self.rng = self.phase_rng();
                self.total = Some(total);
            }
            if self.k < self.count {
                let k = self.k;
                self.k += 1;
                let fraction = match self.process {
                    // Evenly spaced, the first at the phase's start.
                    Process::Constant => k as f64 / self.count as f64,
                    _ => {
                        self.sum += self.gap();
                        self.sum / self.total.unwrap_or(1.0)
                    }
                };
                return Some(phase.before + phase.work * fraction);
            }
            self.phase += 1;
            self.total = None;
        }
    }

    /// Seconds from the start at which `w` expected arrivals have passed.
    /// Work only grows between calls, so a cursor suffices.
    fn time_at(&mut self, w: f64) -> Option<f64> {
        loop {
            let piece = *self.pieces.get(self.piece)?;
            let work = piece.work();
            if w < self.piece_before + work || self.piece + 1 == self.pieces.len() {
                let into = (w - self.piece_before).clamp(0.0, work);
                return Some(piece.start + piece.time_for(into).min(piece.len));
            }
            self.piece_before += work;
            self.piece += 1;
        }
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let w = self.next_work()?;
        let t = self.time_at(w)?;
        Some(Duration::from_secs_f64(t.max(0.0)))
    }
}

/// One phase of a closed-loop load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsersPhase {
    /// Users once ramped.
    pub users: u32,
    /// Length.
    pub duration: Duration,
    /// How long the count takes to move from the previous phase's.
    pub ramp: Duration,
}

/// When a user is active: `[on, off)` from the start of the load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Starts sending.
    pub on: Duration,
    /// Stops sending new requests.
    pub off: Duration,
}

/// Each local user's active windows. Ramps add users one by one at even
/// steps (the first within one step of the ramp's start, the last at its
/// end) and remove the most recently added first.
pub fn windows(phases: &[UsersPhase]) -> Vec<Vec<Window>> {
    let most = phases.iter().map(|p| p.users).max().unwrap_or(0) as usize;
    let mut out: Vec<Vec<Window>> = vec![Vec::new(); most];
    let mut on_since: Vec<Option<Duration>> = vec![None; most];
    let (mut t, mut count) = (Duration::ZERO, 0u32);
    for p in phases {
        let ramp = p.ramp.min(p.duration);
        let (from, to) = (count, p.users);
        if to > from {
            let steps = to - from;
            for (k, j) in (from..to).enumerate() {
                let at = t + ramp.mul_f64((k + 1) as f64 / f64::from(steps));
                on_since[j as usize] = Some(if ramp.is_zero() { t } else { at });
            }
        } else if to < from {
            let steps = from - to;
            for (k, j) in (to..from).rev().enumerate() {
                let at = t + ramp.mul_f64((k + 1) as f64 / f64::from(steps));
                let off = if ramp.is_zero() { t } else { at };
                if let Some(on) = on_since[j as usize].take() {
                    out[j as usize].push(Window { on, off });
                }
            }
        }
        count = to;
        t += p.duration;
    }
    for (j, on) in on_since.into_iter().enumerate() {
        if let Some(on) = on {
            out[j].push(Window { on, off: t });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(rate: f64, secs: u64, ramp: u64) -> RatePhase {
        RatePhase {
            rate,
            duration: Duration::from_secs(secs),
            ramp: Duration::from_secs(ramp),
        }
    }

    fn secs(v: &[Duration]) -> Vec<f64> {
        v.iter().map(Duration::as_secs_f64).collect()
    }

    #[test]
    fn a_constant_rate_is_evenly_spaced_from_the_start() {
        let a: Vec<_> = Arrivals::new(&[phase(4.0, 1, 0)], Process::Constant, 0).collect();
        assert_eq!(secs(&a), [0.0, 0.25, 0.5, 0.75]);
    }

    #[test]
    fn streams_partition_the_global_schedule_exactly() {
        let phases = [phase(20.0, 30, 0)];
        let all: Vec<_> = Arrivals::new(&phases, Process::Poisson, 9).collect();
        let mut merged: Vec<Duration> = (0..3)
            .flat_map(|s| {
                Arrivals::new(&phases, Process::Poisson, 9)
                    .stream(s, 3)
                    .collect::<Vec<_>>()
            })
            .collect();
        merged.sort();
        assert_eq!(merged, all);
        let a: Vec<_> = Arrivals::new(&phases, Process::Poisson, 9).stream(1, 3).collect();
        assert_eq!(a[0], all[1]);
        assert_eq!(a[1], all[4]);
    }

    fn cv(gaps: &[f64]) -> f64 {
        let n = gaps.len() as f64;
        let mean = gaps.iter().sum::<f64>() / n;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1.0);
        var.sqrt() / mean
    }

    fn gaps(process: Process) -> (usize, f64) {
        let a: Vec<f64> = secs(&Arrivals::new(&[phase(100.0, 1000, 0)], process, 42).collect::<Vec<_>>());
        let g: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        (a.len(), cv(&g))
    }

    #[test]
    fn poisson_has_exactly_the_rate_and_a_coefficient_of_variation_of_one() {
        let (n, cv) = gaps(Process::Poisson);
        assert_eq!(n, 100_000);
        assert!((cv - 1.0).abs() < 0.02, "cv {cv}");
    }

    #[test]
    fn every_seed_gives_the_exact_count_and_poisson_statistics() {
        // 20 per second for 30 s: a free Poisson count would vary by ±24.
        for seed in 0..20 {
            let a = secs(&Arrivals::new(&[phase(20.0, 30, 0)], Process::Poisson, seed).collect::<Vec<_>>());
            assert_eq!(a.len(), 600, "seed {seed}");
            assert!(a.iter().all(|t| (0.0..30.0).contains(t)));
            let g: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
            let cv = cv(&g);
            assert!((cv - 1.0).abs() < 0.12, "seed {seed}: cv {cv}");
        }
    }

    #[test]
    fn gamma_burstiness_sets_the_coefficient_of_variation() {
        for shape in [0.25, 0.5, 2.0, 4.0] {
            let (n, cv) = gaps(Process::Gamma(shape));
            assert_eq!(n, 100_000, "shape {shape}");
            let expected = 1.0 / f64::sqrt(shape);
            assert!(
                (cv - expected).abs() < 0.03 * expected.max(1.0),
                "shape {shape}: cv {cv}, expected {expected}"
            );
        }
    }

    #[test]
    fn a_ramp_spreads_arrivals_like_its_rate() {
        // 0 -> 10 per second over 10 s: 50 expected arrivals, a quarter of
        // them in the first half.
        let a = secs(&Arrivals::new(&[phase(10.0, 10, 10)], Process::Constant, 0).collect::<Vec<_>>());
        // At work 0, 1, ..., 49: the one at work 50 falls on the end, which
        // belongs to the next phase.
        assert_eq!(a.len(), 50);
        let first_half = a.iter().filter(|t| **t < 5.0).count();
        assert_eq!(first_half, 13); // work 0..=12
        // Work w falls at t = sqrt(2 w): the rate grows linearly.
        assert!((a[49] - f64::sqrt(98.0)).abs() < 1e-9, "{}", a[49]);
    }

    #[test]
    fn phases_follow_each_other() {
        let a = secs(&Arrivals::new(&[phase(2.0, 2, 0), phase(4.0, 1, 0)], Process::Constant, 0).collect::<Vec<_>>());
        assert_eq!(a, [0.0, 0.5, 1.0, 1.5, 2.0, 2.25, 2.5, 2.75]);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let phases = [phase(50.0, 10, 2)];
        let one: Vec<_> = Arrivals::new(&phases, Process::Gamma(0.5), 7).collect();
        assert_eq!(one, Arrivals::new(&phases, Process::Gamma(0.5), 7).collect::<Vec<_>>());
        assert_ne!(one, Arrivals::new(&phases, Process::Gamma(0.5), 8).collect::<Vec<_>>());
    }

    fn users(n: u32, secs: u64, ramp: u64) -> UsersPhase {
        UsersPhase {
            users: n,
            duration: Duration::from_secs(secs),
            ramp: Duration::from_secs(ramp),
        }
    }

    fn w(on: u64, off: u64) -> Window {
        Window {
            on: Duration::from_secs(on),
            off: Duration::from_secs(off),
        }
    }

    #[test]
    fn users_without_ramps_are_on_for_the_whole_phase() {
        assert_eq!(windows(&[users(2, 10, 0)]), [vec![w(0, 10)], vec![w(0, 10)]]);
    }

    #[test]
    fn a_ladder_adds_users_and_a_ramp_spreads_them() {
        let ws = windows(&[users(1, 10, 0), users(3, 10, 4)]);
        assert_eq!(ws[0], [w(0, 20)]);
        assert_eq!(ws[1], [w(12, 20)]);
        assert_eq!(ws[2], [w(14, 20)]);
    }

    #[test]
    fn ramping_down_removes_the_last_added_first() {
        let ws = windows(&[users(3, 10, 0), users(1, 10, 2), users(2, 10, 0)]);
        assert_eq!(ws[0], [w(0, 30)]);
        assert_eq!(ws[1], [w(0, 12), w(20, 30)]);
        assert_eq!(ws[2], [w(0, 11)]);
    }
}
