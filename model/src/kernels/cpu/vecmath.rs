//! Vectorizable f32 building blocks for the CPU kernels: `exp`, lane-parallel reductions and
//! runtime AVX2 + FMA dispatch for a row's loop.

/// `exp(x)` for f32 in branch-free arithmetic the compiler vectorizes (libm's `expf` is a
/// call per element and was ~6% of a training step between softmax, SwiGLU and the loss).
/// Range reduction x = n·ln2 + r, |r| ≤ ln2/2, then Cephes' degree-6 polynomial for e^r and
/// 2^n through the exponent bits: relative error ≤ 2 ulp on the clamped range. Inputs are
/// clamped to [−87.3, 88]: below, the result is ~1e-38 instead of 0 (or a denormal), which
/// no softmax here can tell apart; NaN stays NaN (the NaN guards rely on it).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer in f32 arithmetic.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Runs `f` compiled for AVX2 + FMA when the CPU has them (checked once, cached by std).
/// The crate is built for baseline x86-64 (SSE2) so the binary runs anywhere; the
/// element-wise loops of the hot ops (exp, SwiGLU, softmax rows) get 8-wide vectors and fused
/// multiply-adds this way, which roughly halves their time. `f` must be small enough to be
/// inlined into the wrapper (a row's loop, not a whole parallel pass: rayon tasks run on
/// other threads, outside the wrapper).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features `avx2` was compiled for are present on this CPU.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Σ xs with eight independent lanes: a plain `iter().sum()` is a serial dependency chain
/// (float addition is not reassociated), eight lanes let the compiler use one vector register.
#[inline(always)]
pub fn sum_f32(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// max(init, xs…), eight lanes as in `sum_f32`. NaN inputs are ignored by `f32::max`; the
/// callers' NaN checks look at sums, which a NaN input still poisons.
#[inline(always)]
pub fn max_f32(xs: &[f32], init: f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = xs.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = a.max(v);
        }
    }
    rest.iter()
        .fold(acc.iter().fold(init, |a, &b| a.max(b)), |a, &b| a.max(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(
            worst < 3.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
        assert!(fast_exp(f32::NAN).is_nan());
        assert!(fast_exp(1000.0).is_finite());
    }

    #[test]
    fn lane_reductions() {
        let xs: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 - 50.0).collect();
        assert_eq!(sum_f32(&xs), xs.iter().sum::<f32>());
        assert_eq!(max_f32(&xs, f32::NEG_INFINITY), 50.0);
        assert_eq!(max_f32(&xs[..3], 1e9), 1e9);
        assert_eq!(max_f32(&[], -2.0), -2.0);
    }
}
