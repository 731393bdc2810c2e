//! SplitMix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014; reference code: https://prng.di.unimi.it/splitmix64.c): the one seeded generator
//! of osstune. Its whole state is one u64, so checkpoints store it exactly and `--resume`
//! reproduces every draw (shuffles, LoRA init, dropout masks, sampling). Statistical quality is
//! ample for shuffling, dropout and sampling; this is not a crypto RNG.

/// The Weyl-sequence increment (2^64 / φ).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `c`-th output (0-based) of SplitMix64 started at state `seed`, without the c draws
/// before it (random access: stateless dropout masks draw entry c directly).
pub fn splitmix_at(seed: u64, c: u64) -> u64 {
    mix(seed.wrapping_add(c.wrapping_add(1).wrapping_mul(GAMMA)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for (seed, purpose, index): used so that e.g. the shuffle of
    /// epoch 3 does not depend on how many numbers earlier epochs drew.
    pub fn derive(seed: u64, purpose: u64, index: u64) -> Self {
        let mut r = Self::new(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.state ^= r
            .next_u64()
            .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 53 bits (every value exactly representable).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1) with 24 bits (exactly representable in f32).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in [0, n) (n > 0), by rejection so there is no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_stream() {
        // First outputs for seed 0 of the reference C implementation (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        let want = [
            0xe220a8397b1dcdaf_u64,
            0x6e789e6aa1b965f4,
            0x06c45d188009454f,
        ];
        for (c, w) in want.into_iter().enumerate() {
            assert_eq!(r.next_u64(), w);
            assert_eq!(splitmix_at(0, c as u64), w);
        }
    }

    #[test]
    fn deterministic_and_uniformish() {
        let mut r = SplitMix64::new(1);
        let mean: f32 = (0..10000).map(|_| r.next_f32()).sum::<f32>() / 10000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut v: Vec<usize> = (0..50).collect();
        SplitMix64::derive(7, 1, 0).shuffle(&mut v);
        let mut w: Vec<usize> = (0..50).collect();
        SplitMix64::derive(7, 1, 1).shuffle(&mut w);
        assert_ne!(v, w);
        v.sort();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
