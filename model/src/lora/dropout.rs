//! LoRA dropout (PEFT's `lora_dropout`, mlx-lm's `LoRALinear(dropout=…)`): while training, the
//! low-rank path sees `dropout(x)` and the base path sees `x`:
//!
//!   y = base(x) + scale · B · A · dropout(x)
//!
//! Inverted dropout: kept entries are scaled by 1/(1−p), dropped ones are 0. Expert adapters
//! (a `Lora` with an experts axis) drop entries of the gathered rows each expert's LoRA sees.
//!
//! Masks are stateless, so nothing about them needs saving or replaying: entry (row, col) of an
//! adapter's mask is a pure function of (seed, row, col). The trainer derives one seed per
//! training micro-step from (run seed, optimizer step, micro-batch index) and
//! `GptOss::set_lora_dropout` mixes each adapter's name into it. `--resume` therefore draws
//! the same masks as an uninterrupted run, and activation checkpointing's recompute (which runs
//! a layer's forward again) draws exactly the masks of the first forward.
//!
//! The hash: with counter c = row · cols + col, u = the c-th output of SplitMix64 started at
//! state `seed` (= mix(seed + (c+1)·γ), the stream of `osstune_rng::SplitMix64`), top
//! 24 bits as a uniform in [0, 1); the entry is kept iff u ≥ p. Dense projections number the
//! rows of their flattened `[B·T, in]` input; expert projections number a gathered row by its
//! routing slot t·k + j (token t's j-th expert), so the mask does not depend on which code path
//! (the grouped CPU ops or the per-expert loop) gathers the rows. Masks are built on the host
//! in f32.
//!
//! Off unless set: adapters carry `dropout: None`, and validation, `generate --adapter`, merge
//! and training with p = 0 run exactly as without this module (fused fast paths included).
//! With p > 0 the projections take their unfused compositions (base op on x + LoRA op on
//! dropout(x)), since the fused ops feed one input to both paths.

use anyhow::{bail, Result};
use candle_core::Tensor;
use rayon::prelude::*;

pub use osstune_rng::splitmix_at;
use osstune_rng::{mix, GAMMA};

/// FNV-1a, 64 bit: a stable hash of an adapter's name.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Dropout on a LoRA input: probability `p` of zeroing an entry, masks drawn from `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u64,
}

impl LoraDropout {
    /// The dropout of the adapter called `name` (a `GptOss::lora_targets()` name): the same p,
    /// the seed mixed with the name's hash so that adapters draw independent masks.
    pub fn for_target(&self, name: &str) -> Self {
        Self {
            p: self.p,
            seed: mix(self.seed ^ fnv1a(name).wrapping_mul(GAMMA)),
        }
    }

    /// The `[m, cols]` mask (row-major): 1/(1−p) where kept, 0 where dropped. Row `r` uses the
    /// row number `row_id(r)` in the hash.
    pub fn mask(&self, m: usize, cols: usize, row_id: impl Fn(usize) -> u64 + Sync) -> Vec<f32> {
        let keep = 1.0 / (1.0 - self.p);
        let mut out = vec![0f32; m * cols];
        out.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let base = row_id(r).wrapping_mul(cols as u64);
                for (c, v) in row.iter_mut().enumerate() {
                    let u = (splitmix_at(self.seed, base + c as u64) >> 40) as f32
                        / (1u64 << 24) as f32;
                    *v = if u >= self.p { keep } else { 0.0 };
                }
            });
        out
    }

    /// `x ⊙ mask` for `x [..., cols]`, viewed as rows `[m, cols]`. Rows are numbered 0..m, or
    /// by `rows` (one id per row: the routing slots of gathered expert rows).
    pub fn apply(&self, x: &Tensor, rows: Option<&[u32]>) -> Result<Tensor> {
        let cols = x.dims().last().copied().unwrap_or(1);
        let m = x.elem_count() / cols.max(1);
        let mask = match rows {
            Some(ids) => {
                if ids.len() != m {
                    bail!("lora dropout: {} row ids for {m} rows", ids.len());
                }
                self.mask(m, cols, |r| ids[r] as u64)
            }
            None => self.mask(m, cols, |r| r as u64),
        };
        let mask = Tensor::from_vec(mask, x.dims(), x.device())?.to_dtype(x.dtype())?;
        Ok(x.mul(&mask)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_at_is_the_stream() {
        // Random access equals the sequential stream.
        let mut s = osstune_rng::SplitMix64::new(12345);
        for c in 0..10 {
            assert_eq!(splitmix_at(12345, c), s.next_u64());
        }
    }

    #[test]
    fn mask_rate_scale_and_row_ids() {
        let d = LoraDropout { p: 0.25, seed: 7 };
        let m = d.mask(200, 50, |r| r as u64);
        let kept = m.iter().filter(|&&v| v != 0.0).count();
        let rate = 1.0 - kept as f64 / m.len() as f64;
        assert!((rate - 0.25).abs() < 0.02, "{rate}");
        assert!(m.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
        // Row ids pick rows of the dense numbering; other seeds and names differ.
        let picked = d.mask(2, 50, |r| [17u64, 3][r]);
        assert_eq!(&picked[..50], &m[17 * 50..18 * 50]);
        assert_eq!(&picked[50..], &m[3 * 50..4 * 50]);
        assert_ne!(
            LoraDropout { p: 0.25, seed: 8 }.mask(200, 50, |r| r as u64),
            m
        );
        let (q, k) = (d.for_target("a.q_proj"), d.for_target("a.k_proj"));
        assert_ne!(q.seed, k.seed);
        assert_eq!(q, d.for_target("a.q_proj"));
    }
}
