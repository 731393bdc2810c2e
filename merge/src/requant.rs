//! MXFP4 (OCP microscaling, E2M1 values with one E8M0 scale per 32 inputs), both ways.
//!
//! Layout (spec §2.2): a row of `in` values is `in/32` groups; group `g` is 16 bytes where byte
//! `b` holds element `32g+2b` in its low nibble and `32g+2b+1` in its high nibble, plus one
//! scale byte `s` meaning `2^(s-127)`. MLX's `uint32` view of the same bytes (little-endian) is
//! identical, so one encoder serves `*_blocks` and MLX `weight`.
//!
//! Quantizer: per group, the SMALLEST exponent `e` with `amax / 2^e <= 6`, then round to the
//! nearest E2M1 value, ties to even (the thresholds of MLX's Metal encoder). Taking the smallest
//! exponent (instead of MLX's `round(log2(amax/6))`, which can clip a group whose max is 4·2^s to
//! 6·2^(s-1)) makes `quantize ∘ dequantize` the identity on every value a checkpoint can hold,
//! so re-emitting an untouched expert never changes it.

use anyhow::{bail, Result};

/// E2M1 lookup, index = nibble (bit 3 = sign).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Elements per scale group.
pub const GROUP: usize = 32;
/// Packed bytes per group.
pub const GROUP_BYTES: usize = 16;

/// Dequantizes `rows` rows: `blocks` is `[rows, in/32, 16]`, `scales` `[rows, in/32]`, `out`
/// `[rows, in]` (nn.Linear orientation).
pub fn dequantize_rows(blocks: &[u8], scales: &[u8], out: &mut [f32]) -> Result<()> {
    let groups = scales.len();
    if blocks.len() != groups * GROUP_BYTES || out.len() != groups * GROUP {
        bail!(
            "mxfp4: {} block bytes / {} scales / {} outputs do not describe whole 32-groups",
            blocks.len(),
            scales.len(),
            out.len()
        );
    }
    for ((blk, &s), o) in blocks
        .chunks_exact(GROUP_BYTES)
        .zip(scales)
        .zip(out.chunks_exact_mut(GROUP))
    {
        let scale = exp2i(s as i32 - 127);
        for (b, pair) in blk.iter().zip(o.chunks_exact_mut(2)) {
            pair[0] = FP4_VALUES[(b & 0x0f) as usize] * scale;
            pair[1] = FP4_VALUES[(b >> 4) as usize] * scale;
        }
    }
    Ok(())
}

/// Quantizes `values` (`[rows, in]`, `in` a multiple of 32) into `blocks` `[rows, in/32, 16]`
/// and `scales` `[rows, in/32]`. Non-finite values are an error (they would poison a group).
pub fn quantize_rows(values: &[f32], blocks: &mut [u8], scales: &mut [u8]) -> Result<()> {
    let groups = values.len() / GROUP;
    if !values.len().is_multiple_of(GROUP)
        || blocks.len() != groups * GROUP_BYTES
        || scales.len() != groups
    {
        bail!(
            "mxfp4: {} values / {} block bytes / {} scales do not describe whole 32-groups",
            values.len(),
            blocks.len(),
            scales.len()
        );
    }
    for (g, ((v, blk), s)) in values
        .chunks_exact(GROUP)
        .zip(blocks.chunks_exact_mut(GROUP_BYTES))
        .zip(scales.iter_mut())
        .enumerate()
    {
        let mut amax = 0f32;
        for &x in v {
            if !x.is_finite() {
                bail!("mxfp4: non-finite value {x} in group {g}");
            }
            amax = amax.max(x.abs());
        }
        let e = group_exponent(amax);
        *s = (e + 127) as u8;
        let inv = exp2i(-e);
        for (b, pair) in blk.iter_mut().zip(v.chunks_exact(2)) {
            *b = encode(pair[0] * inv) | (encode(pair[1] * inv) << 4);
        }
    }
    Ok(())
}

/// Smallest `e` in [-127, 127] with `amax / 2^e <= 6` (so nothing saturates unless `amax` is
/// beyond the format's range). An all-zero group gets the smallest scale.
fn group_exponent(amax: f32) -> i32 {
    if amax == 0.0 {
        return -127;
    }
    // Start from the floor estimate and correct by at most a step either way: log2 of f32 is
    // not exact near powers of two.
    let mut e = ((amax / 6.0).log2().ceil() as i32).clamp(-127, 127);
    while e > -127 && amax <= 6.0 * exp2i(e - 1) {
        e -= 1;
    }
    while e < 127 && amax > 6.0 * exp2i(e) {
        e += 1;
    }
    e
}

/// Nearest E2M1 nibble for `x` (already divided by the group scale), ties to even mantissa,
/// saturating at ±6. The sign bit is kept for negative values that round to zero, so
/// `-0.0` round-trips.
fn encode(x: f32) -> u8 {
    let a = x.abs();
    let idx = if a > 5.0 {
        7
    } else if a >= 3.5 {
        6
    } else if a > 2.5 {
        5
    } else if a >= 1.75 {
        4
    } else if a > 1.25 {
        3
    } else if a >= 0.75 {
        2
    } else if a > 0.25 {
        1
    } else {
        0
    };
    if x.is_sign_negative() {
        idx | 8
    } else {
        idx
    }
}

/// 2^e for e in [-127+-3, 127], exact (f32 subnormals cover 2^-127..2^-149).
fn exp2i(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_bytes_decode() {
        // Scale 2^0; byte 0x21 = (low 1 → 0.5, high 2 → 1.0); 0xF7 = (6.0, -6.0).
        let mut blocks = [0u8; 16];
        blocks[0] = 0x21;
        blocks[1] = 0xF7;
        blocks[15] = 0x8A; // low 0xA → -1.0, high 8 → -0.0
        let mut out = [0f32; 32];
        dequantize_rows(&blocks, &[127], &mut out).unwrap();
        assert_eq!(&out[..4], &[0.5, 1.0, 6.0, -6.0]);
        assert_eq!(out[30], -1.0);
        assert!(out[31] == 0.0 && out[31].is_sign_negative());
        // Scale byte 130 = 2^3.
        dequantize_rows(&blocks, &[130], &mut out).unwrap();
        assert_eq!(&out[..4], &[4.0, 8.0, 48.0, -48.0]);
    }

    #[test]
    fn known_values_encode() {
        let mut v = [0f32; 32];
        v[0] = 0.5;
        v[1] = 1.0;
        v[2] = 6.0;
        v[3] = -6.0;
        v[30] = -1.0;
        let mut blocks = [0u8; 16];
        let mut scales = [0u8; 1];
        quantize_rows(&v, &mut blocks, &mut scales).unwrap();
        assert_eq!(scales[0], 127);
        assert_eq!(blocks[0], 0x21);
        assert_eq!(blocks[1], 0xF7);
        assert_eq!(blocks[15], 0x0A);
        // Max 3 → scale 2^-1 (3 = 6·2^-1), 0.5 → 1.0 → nibble 2.
        let mut w = [0f32; 32];
        w[0] = 3.0;
        w[1] = 0.5;
        quantize_rows(&w, &mut blocks, &mut scales).unwrap();
        assert_eq!(scales[0], 126);
        assert_eq!(blocks[0], 0x27);
        // All zero group → smallest scale, zero nibbles.
        quantize_rows(&[0.0; 32], &mut blocks, &mut scales).unwrap();
        assert_eq!((scales[0], blocks), (0, [0u8; 16]));
    }

    #[test]
    fn rounding_ties_to_even_and_saturation() {
        // Group scale 2^0 fixed by a 6.0 in element 0.
        let cases = [
            (0.25, 0.0),
            (0.26, 0.5),
            (0.75, 1.0),
            (1.25, 1.0),
            (1.3, 1.5),
            (1.75, 2.0),
            (2.5, 2.0),
            (2.6, 3.0),
            (3.5, 4.0),
            (5.0, 4.0),
            (5.1, 6.0),
            (-2.6, -3.0),
        ];
        for (x, want) in cases {
            let mut v = [0f32; 32];
            v[0] = 6.0;
            v[1] = x;
            let (mut b, mut s, mut out) = ([0u8; 16], [0u8; 1], [0f32; 32]);
            quantize_rows(&v, &mut b, &mut s).unwrap();
            dequantize_rows(&b, &s, &mut out).unwrap();
            assert_eq!(out[1], want, "{x}");
        }
    }

    #[test]
    fn round_trip_is_identity_on_representable_values() {
        // Every byte pattern at several scales, including groups whose max nibble is small
        // (where a round(log2(amax/6)) rule would clip).
        let mut state = 0x1234_5678u32;
        for scale in [1u8, 60, 120, 127, 131, 200, 250] {
            for max_nibble in 1u8..8 {
                let mut blocks = [0u8; 16 * 4];
                for b in blocks.iter_mut() {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let lo = (((state >> 24) as u8) % (max_nibble + 1)) | ((state >> 20) as u8 & 8);
                    let hi = (((state >> 16) as u8) % (max_nibble + 1)) | ((state >> 12) as u8 & 8);
                    *b = lo | (hi << 4);
                }
                let scales = [scale; 4];
                let mut w = [0f32; 128];
                dequantize_rows(&blocks, &scales, &mut w).unwrap();
                let (mut b2, mut s2, mut w2) = ([0u8; 64], [0u8; 4], [0f32; 128]);
                quantize_rows(&w, &mut b2, &mut s2).unwrap();
                dequantize_rows(&b2, &s2, &mut w2).unwrap();
                assert_eq!(w, w2, "scale {scale} max nibble {max_nibble}");
            }
        }
    }

    #[test]
    fn quantization_error_is_bounded() {
        // RTN error is at most half the spacing at the top of the range: 1·2^e.
        let mut state = 7u32;
        let v: Vec<f32> = (0..32 * 64)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state as f32 / u32::MAX as f32 - 0.5) * 0.1
            })
            .collect();
        let (mut b, mut s, mut out) = (vec![0u8; 64 * 16], vec![0u8; 64], vec![0f32; 32 * 64]);
        quantize_rows(&v, &mut b, &mut s).unwrap();
        dequantize_rows(&b, &s, &mut out).unwrap();
        for g in 0..64 {
            let step = exp2i(s[g] as i32 - 127);
            for i in 0..32 {
                let (x, y) = (v[g * 32 + i], out[g * 32 + i]);
                assert!((x - y).abs() <= step + 1e-12, "group {g}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        let mut v = [0f32; 32];
        v[3] = f32::NAN;
        let (mut b, mut s) = ([0u8; 16], [0u8; 1]);
        assert!(quantize_rows(&v, &mut b, &mut s).is_err());
        assert!(quantize_rows(&[0.0; 31], &mut b, &mut s).is_err());
        assert!(dequantize_rows(&[0u8; 15], &[0], &mut [0.0; 32]).is_err());
    }
}
