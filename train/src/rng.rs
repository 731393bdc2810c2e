//! A tiny seeded RNG (SplitMix64) whose whole state is one u64, so checkpoints can store it
//! exactly and `--resume` reproduces every random draw (shuffles, dropout masks, LoRA init).
//! Statistical quality is ample for shuffling and dropout; this is not a crypto RNG.

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
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
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

/// RNG purposes, so streams never collide.
pub const PURPOSE_SHUFFLE: u64 = 1;
pub const PURPOSE_INIT: u64 = 2;
pub const PURPOSE_DROPOUT: u64 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_uniformish() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let xa: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xa, xb);
        let mut r = SplitMix64::new(1);
        let mean: f32 = (0..10000).map(|_| r.next_f32()).sum::<f32>() / 10000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let mut v: Vec<usize> = (0..50).collect();
        SplitMix64::derive(7, PURPOSE_SHUFFLE, 0).shuffle(&mut v);
        let mut w: Vec<usize> = (0..50).collect();
        SplitMix64::derive(7, PURPOSE_SHUFFLE, 1).shuffle(&mut w);
        assert_ne!(v, w);
        v.sort();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
