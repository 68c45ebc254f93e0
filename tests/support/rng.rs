//! A small seeded generator (SplitMix64): draws that reproduce from their
//! seed, for the chaos suite's scenarios and the fleet's reports.

/// SplitMix64 from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1): never 0, so its logarithm is finite.
    pub fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Uniform between `lo` and `hi`, to a tenth.
    pub fn between(&mut self, (lo, hi): (f64, f64)) -> f64 {
        ((lo + self.unit() * (hi - lo)) * 10.0).round() / 10.0
    }

    /// Log-normal with the given median and shape, at least 1.
    pub fn lognormal(&mut self, median: f64, sigma: f64) -> u64 {
        let (u1, u2) = (self.unit(), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (median * (sigma * normal).exp()).max(1.0) as u64
    }

    /// 128 random bits in hex, as a trace id is written.
    pub fn hex(&mut self) -> String {
        format!("{:016x}{:016x}", self.next(), self.next())
    }
}
