//! Token sampling: greedy, temperature, top-k, top-p (nucleus), seeded.
//!
//! The pipeline follows transformers' `generate` warpers, in their order: logits are divided
//! by the temperature, then top-k keeps the k most likely tokens, then top-p keeps the smallest
//! set of most likely tokens whose probability mass reaches `p` (always at least one), and a
//! token is drawn from the renormalised distribution. Temperature 0 (or top-k 1) is greedy:
//! the arg-max, ties broken towards the lower token id (as `torch.argmax`).
//!
//! Only the last position's vocabulary row leaves the device; everything after that runs on
//! the host in f64, so a given seed draws the same tokens on every device and dtype that
//! produce the same logits.
//!
//! Reproducibility: the random source is SplitMix64 (Steele, Lea & Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014) with the user's seed as its initial state.
//! Each draw takes the top 53 bits of one output as a uniform `u` in [0, 1); candidates are
//! ordered by descending probability (ties: ascending id) and the first one whose cumulative
//! probability exceeds `u` is chosen. It is written out here rather than taken from `rand`
//! because `rand` does not promise the same stream across versions, and a seed printed in a
//! log should mean the same tokens next year.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

pub use osstune_rng::SplitMix64;

/// What the sampler does to a row of logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy. The gpt-oss recipe recommends 0.95 (see the CLI defaults).
    pub temperature: f64,
    /// Keep only the k most likely tokens (`None` or 0: no limit).
    pub top_k: Option<usize>,
    /// Nucleus mass in (0, 1]; `None` or 1.0: no limit.
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == Some(1)
    }

    fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            bail!(
                "temperature must be a finite number >= 0 (0 = greedy), got {}",
                self.temperature
            );
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                bail!("top-p must be in (0, 1], got {p}");
            }
        }
        Ok(())
    }
}

/// A seeded sampler: one per generation, so the stream of draws restarts with the seed.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = SplitMix64::new(params.seed);
        Ok(Self { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Samples from the LAST position of `logits` (`[V]`, `[T, V]` or `[1, T, V]`, any device
    /// and float dtype). Only that row is copied to the host.
    pub fn sample(&mut self, logits: &Tensor) -> Result<u32> {
        let row = last_row(logits)?;
        self.sample_row(&row)
    }

    /// Samples from one row of logits already on the host.
    pub fn sample_row(&mut self, logits: &[f32]) -> Result<u32> {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let dist = self.distribution(logits)?;
        let u = self.rng.next_f64();
        let mut acc = 0.0;
        for &(id, p) in &dist {
            acc += p;
            if u < acc {
                return Ok(id);
            }
        }
        // Rounding can leave the total a hair under 1 and `u` above it: the least likely
        // kept token is the correct answer for that sliver of mass.
        dist.last()
            .map(|&(id, _)| id)
            .context("empty sampling distribution")
    }

    /// The distribution `sample_row` draws from: kept tokens with renormalised probabilities,
    /// most likely first (ties: lower id first). Greedy gives the arg-max with probability 1.
    pub fn distribution(&self, logits: &[f32]) -> Result<Vec<(u32, f64)>> {
        if self.params.is_greedy() {
            return Ok(vec![(argmax(logits)?, 1.0)]);
        }
        check_finite_or_masked(logits)?;
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        if max == f64::NEG_INFINITY {
            bail!("every logit is -inf: nothing to sample");
        }
        // Softmax of logits / t, shifted by the max for stability; masked (-inf) tokens drop out.
        let mut cand: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, &l)| l != f32::NEG_INFINITY)
            .map(|(i, &l)| (i as u32, ((l as f64 - max) / t).exp()))
            .collect();
        let by_prob = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if let Some(k) = self.params.top_k.filter(|&k| k > 0 && k < cand.len()) {
            // Partial selection first: sorting the whole vocabulary for a top-40 is wasteful.
            cand.select_nth_unstable_by(k - 1, by_prob);
            cand.truncate(k);
        }
        cand.sort_unstable_by(by_prob);
        let total: f64 = cand.iter().map(|c| c.1).sum();
        for c in cand.iter_mut() {
            c.1 /= total;
        }
        if let Some(p) = self.params.top_p.filter(|&p| p < 1.0) {
            // Keep a token iff the mass strictly before it is < p (transformers' TopPLogitsWarper
            // drops the tail whose ascending cumulative mass is <= 1 - p).
            let mut before = 0.0;
            let mut keep = 0;
            for c in &cand {
                if before >= p {
                    break;
                }
                before += c.1;
                keep += 1;
            }
            cand.truncate(keep.max(1));
            let total: f64 = cand.iter().map(|c| c.1).sum();
            for c in cand.iter_mut() {
                c.1 /= total;
            }
        }
        Ok(cand)
    }
}

/// The last vocabulary row of `logits` as host f32: the only device → host copy per step.
pub fn last_row(logits: &Tensor) -> Result<Vec<f32>> {
    let row = match logits.dims() {
        [_] => logits.clone(),
        [t, _] if *t > 0 => logits.get(t - 1)?,
        [1, t, _] if *t > 0 => logits.get(0)?.get(t - 1)?,
        dims => bail!("expected logits [V], [T, V] or [1, T, V], got {dims:?}"),
    };
    Ok(row.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// Index of the largest logit; ties go to the lower id. NaN is an error, not a token.
pub fn argmax(logits: &[f32]) -> Result<u32> {
    check_finite_or_masked(logits)?;
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32).context("empty logits row")
}

fn check_finite_or_masked(logits: &[f32]) -> Result<()> {
    if let Some(i) = logits
        .iter()
        .position(|l| l.is_nan() || *l == f32::INFINITY)
    {
        bail!(
            "logits are not finite at token {i} ({}): the forward pass diverged",
            logits[i]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn params(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: 7,
        }
    }

    fn logits_of(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    fn assert_dist(got: &[(u32, f64)], want: &[(u32, f64)]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.0, w.0, "{got:?} vs {want:?}");
            assert!((g.1 - w.1).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn greedy_takes_argmax_and_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample_row(&[0.1, 3.0, -2.0, 3.0]).unwrap(), 1);
        assert_eq!(s.sample_row(&[f32::NEG_INFINITY, -5.0, -7.0]).unwrap(), 1);
        // top-k 1 is greedy at any temperature.
        let mut s = Sampler::new(params(5.0, Some(1), None)).unwrap();
        assert_eq!(s.sample_row(&[0.0, 0.5, 0.4]).unwrap(), 1);
    }

    #[test]
    fn temperature_reshapes_the_distribution() {
        // p ∝ q^(1/T): T = 2 turns (0.5, 0.3, 0.2) into sqrt-weights.
        let q = [0.5f64, 0.3, 0.2];
        let s = Sampler::new(params(2.0, None, None)).unwrap();
        let d = s.distribution(&logits_of(&q)).unwrap();
        let w: Vec<f64> = q.iter().map(|x| x.sqrt()).collect();
        let z: f64 = w.iter().sum();
        assert_dist(&d, &[(0, w[0] / z), (1, w[1] / z), (2, w[2] / z)]);
        // T = 1 leaves it alone.
        let s = Sampler::new(params(1.0, None, None)).unwrap();
        assert_dist(
            &s.distribution(&logits_of(&q)).unwrap(),
            &[(0, 0.5), (1, 0.3), (2, 0.2)],
        );
    }

    #[test]
    fn top_k_keeps_the_k_most_likely_and_renormalises() {
        let q = [0.1, 0.4, 0.2, 0.3];
        let s = Sampler::new(params(1.0, Some(2), None)).unwrap();
        assert_dist(
            &s.distribution(&logits_of(&q)).unwrap(),
            &[(1, 0.4 / 0.7), (3, 0.3 / 0.7)],
        );
        // k larger than the vocabulary is no limit.
        let s = Sampler::new(params(1.0, Some(10), None)).unwrap();
        assert_eq!(s.distribution(&logits_of(&q)).unwrap().len(), 4);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        let q = [0.5, 0.3, 0.15, 0.05];
        // 0.5 < 0.7, so 0.3 joins; 0.8 >= 0.7 stops before 0.15.
        let s = Sampler::new(params(1.0, None, Some(0.7))).unwrap();
        assert_dist(
            &s.distribution(&logits_of(&q)).unwrap(),
            &[(0, 0.625), (1, 0.375)],
        );
        // 0.9: 0.5, 0.8 < 0.9 → three tokens.
        let s = Sampler::new(params(1.0, None, Some(0.9))).unwrap();
        assert_dist(
            &s.distribution(&logits_of(&q)).unwrap(),
            &[(0, 0.5 / 0.95), (1, 0.3 / 0.95), (2, 0.15 / 0.95)],
        );
        // A tiny p still keeps the most likely token.
        let s = Sampler::new(params(1.0, None, Some(0.01))).unwrap();
        assert_dist(&s.distribution(&logits_of(&q)).unwrap(), &[(0, 1.0)]);
    }

    #[test]
    fn top_k_applies_before_top_p() {
        // After top-k 2 the mass is (0.625, 0.375); p = 0.6 then keeps only the first.
        let q = [0.5, 0.3, 0.2];
        let s = Sampler::new(params(1.0, Some(2), Some(0.6))).unwrap();
        assert_dist(&s.distribution(&logits_of(&q)).unwrap(), &[(0, 1.0)]);
        // Without top-k, 0.5 < 0.6 lets the second token in.
        let s = Sampler::new(params(1.0, None, Some(0.6))).unwrap();
        assert_dist(
            &s.distribution(&logits_of(&q)).unwrap(),
            &[(0, 0.625), (1, 0.375)],
        );
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let l = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let mut s = Sampler::new(params(1.0, None, None)).unwrap();
        for _ in 0..200 {
            let t = s.sample_row(&l).unwrap();
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn seeded_draws_follow_the_distribution_and_repeat() {
        let q = [0.5, 0.3, 0.2];
        let l = logits_of(&q);
        let draw = |seed| {
            let mut p = params(1.0, None, None);
            p.seed = seed;
            let mut s = Sampler::new(p).unwrap();
            (0..20_000)
                .map(|_| s.sample_row(&l).unwrap())
                .collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42), "same seed, same stream");
        assert_ne!(a, draw(43), "another seed, another stream");
        for (id, want) in q.iter().enumerate() {
            let f = a.iter().filter(|&&t| t == id as u32).count() as f64 / a.len() as f64;
            // 20k draws: the standard error is <= 0.0036, so 0.015 is > 4 sigma.
            assert!((f - want).abs() < 0.015, "token {id}: {f} vs {want}");
        }
    }

    #[test]
    fn the_draw_is_the_documented_inverse_cdf() {
        // seed 0's first uniform is 0xe220a8397b1dcdaf >> 11 / 2^53 ≈ 0.8833: with
        // (0.5, 0.3, 0.2) the cumulative mass passes it at the third token.
        let mut p = params(1.0, None, None);
        p.seed = 0;
        let mut s = Sampler::new(p).unwrap();
        assert_eq!(s.sample_row(&logits_of(&[0.5, 0.3, 0.2])).unwrap(), 2);
        // Second uniform ≈ 0.4315 → first token.
        assert_eq!(s.sample_row(&logits_of(&[0.5, 0.3, 0.2])).unwrap(), 0);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Sampler::new(params(-1.0, None, None)).is_err());
        assert!(Sampler::new(params(f64::NAN, None, None)).is_err());
        assert!(Sampler::new(params(1.0, None, Some(0.0))).is_err());
        assert!(Sampler::new(params(1.0, None, Some(1.5))).is_err());
        let mut s = Sampler::new(params(1.0, None, None)).unwrap();
        assert!(s.sample_row(&[0.0, f32::NAN]).is_err());
        assert!(s.sample_row(&[f32::NEG_INFINITY; 3]).is_err());
        assert!(s.sample_row(&[]).is_err());
        let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
        assert!(g.sample_row(&[]).is_err());
        assert!(g.sample_row(&[1.0, f32::NAN]).is_err());
    }

    #[test]
    fn sample_reads_the_last_position_of_a_tensor() {
        let dev = Device::Cpu;
        // [1, 2, 3]: position 0 prefers token 0, position 1 prefers token 2.
        let t = Tensor::new(&[[[5f32, 0., 0.], [0., 0., 5.]]], &dev).unwrap();
        let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(g.sample(&t).unwrap(), 2);
        assert_eq!(g.sample(&t.get(0).unwrap()).unwrap(), 2);
        assert_eq!(g.sample(&t.get(0).unwrap().get(0).unwrap()).unwrap(), 0);
        let bf = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(g.sample(&bf).unwrap(), 2);
        let batch2 = Tensor::zeros((2, 2, 3), DType::F32, &dev).unwrap();
        assert!(g.sample(&batch2).is_err());
    }
}
