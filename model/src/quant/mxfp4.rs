//! MXFP4 (OCP Microscaling Formats v1.0,
//! https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf; the
//! gpt-oss layout in docs/gpt-oss.md §2.2): the one codec of osstune, both ways. Blocks
//! `[.., G, 16]` U8 hold 32 E2M1 values per group (byte `b` of group `g`: element `32g+2b` in
//! the low nibble, `32g+2b+1` in the high one), scales `[.., G]` U8 are E8M0 exponents (value
//! 2^(s−127)). MLX's `uint32` view of the same bytes (little-endian) is identical, so one
//! encoder serves HF `*_blocks` and MLX `weight`.
//!
//! Two quantizers share one E2M1 rounding ([`encode`]): [`quantize_rows`], which takes per
//! group the smallest exponent `e` with `amax / 2^e <= 6`, or `e − 1` when letting the largest
//! values saturate there gives the smaller squared error (so `quantize ∘ dequantize` is the
//! identity on every value a checkpoint can hold, re-emitting an untouched expert never
//! changes its values, and a small merged delta does not coarsen a whole group: what merge
//! writes), and [`quantize`], MLX's `round(log2(amax/6))` rule (which
//! can clip a group whose max is 4·2^s to 6·2^(s-1); the random test checkpoints use it).
//!
//! `dequantize` picks a tight CPU loop when the tensors live on the CPU and otherwise the
//! device-generic path built from candle ops, so Metal/CUDA run the same model code.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// E2M1 values indexed by nibble (bit 3 = sign).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// Elements per scale group.
pub const GROUP: usize = 32;
/// Packed bytes per group.
pub const GROUP_BYTES: usize = 16;

/// 2^(s − 127) as f32, exactly (s = 0 is the subnormal 2^-127, s = 255 overflows to inf,
/// as `ldexp` in the reference).
pub const fn e8m0(s: u8) -> f32 {
    if s == 0 {
        f32::from_bits(1 << 22)
    } else {
        f32::from_bits((s as u32) << 23)
    }
}

/// Dequantizes raw bytes: `blocks.len() == 16 · scales.len()`, output `32 · scales.len()`.
pub fn dequantize_into(blocks: &[u8], scales: &[u8], out: &mut [f32]) {
    // A per-scale table of the 256 byte values would be faster still, but this loop already
    // runs at memory speed for the sizes the model dequantizes per expert.
    for (g, &s) in scales.iter().enumerate() {
        let sc = e8m0(s);
        let lut: [f32; 16] = std::array::from_fn(|i| FP4_VALUES[i] * sc);
        let src = &blocks[g * 16..g * 16 + 16];
        let dst = &mut out[g * 32..g * 32 + 32];
        for (b, &byte) in src.iter().enumerate() {
            dst[2 * b] = lut[(byte & 0x0f) as usize];
            dst[2 * b + 1] = lut[(byte >> 4) as usize];
        }
    }
}

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
    dequantize_into(blocks, scales, out);
    Ok(())
}

fn check_shapes(blocks: &Tensor, scales: &Tensor) -> Result<Vec<usize>> {
    if blocks.dtype() != DType::U8 || scales.dtype() != DType::U8 {
        bail!(
            "mxfp4 blocks/scales must be U8, found {:?}/{:?}",
            blocks.dtype(),
            scales.dtype()
        );
    }
    let bd = blocks.dims();
    let sd = scales.dims();
    if bd.len() < 2 || bd[bd.len() - 1] != 16 || &bd[..bd.len() - 1] != sd {
        bail!("mxfp4 blocks {bd:?} do not match scales {sd:?} (expected blocks = scales + [16])");
    }
    let mut out = sd.to_vec();
    let last = out.len() - 1;
    out[last] *= 32;
    Ok(out)
}

/// Dequantizes to `[.., G·32]` in `dtype`, on the tensors' device.
pub fn dequantize(blocks: &Tensor, scales: &Tensor, dtype: DType) -> Result<Tensor> {
    let out_shape = check_shapes(blocks, scales)?;
    if !blocks.device().is_cpu() {
        return dequantize_generic(blocks, scales, dtype);
    }
    let b = blocks.flatten_all()?.to_vec1::<u8>()?;
    let s = scales.flatten_all()?.to_vec1::<u8>()?;
    let mut out = vec![0f32; s.len() * 32];
    dequantize_into(&b, &s, &mut out);
    Ok(Tensor::from_vec(out, out_shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// Device-generic dequantization from candle ops only (no bit operations: nibbles are
/// recovered with floor division in f32, which is exact for bytes).
pub fn dequantize_generic(blocks: &Tensor, scales: &Tensor, dtype: DType) -> Result<Tensor> {
    let out_shape = check_shapes(blocks, scales)?;
    let dev = blocks.device();
    let bytes = blocks.to_dtype(DType::F32)?;
    let high = (&bytes / 16.0)?.floor()?;
    let low = (&bytes - (&high * 16.0)?)?;
    // [.., G, 16, 2]: low nibble first = even element.
    let nib = Tensor::stack(&[&low, &high], candle_core::D::Minus1)?
        .to_dtype(DType::U32)?
        .flatten_all()?;
    let lut = Tensor::new(&FP4_VALUES, dev)?;
    let vals = lut.index_select(&nib, 0)?;
    let mut grouped: Vec<usize> = scales.dims().to_vec();
    grouped.push(32);
    let vals = vals.reshape(grouped)?;
    let table: Vec<f32> = (0..=255u8).map(e8m0).collect();
    let table = Tensor::from_vec(table, 256, dev)?;
    let sc = table
        .index_select(&scales.flatten_all()?, 0)?
        .reshape(scales.dims())?
        .unsqueeze(candle_core::D::Minus1)?;
    let out = vals.broadcast_mul(&sc)?.reshape(out_shape)?;
    Ok(out.to_dtype(dtype)?)
}

/// [`encode`] with a negative value that rounds to zero stored as +0, as MLX's encoder does
/// (used by [`quantize`], MLX's rule).
fn encode_mlx(v: f32) -> u8 {
    let c = encode(v);
    if c & 7 == 0 {
        0
    } else {
        c
    }
}

/// Quantizes rows of `cols` values (cols a multiple of 32) with MLX's rule (docs/gpt-oss.md §2.2):
/// e = round(log2(amax/6)) clamped to [−127, 127]; returns (blocks, scales) bytes.
pub fn quantize(w: &[f32], cols: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    if !cols.is_multiple_of(32) || !w.len().is_multiple_of(cols.max(1)) {
        bail!("mxfp4 quantize: row length {cols} must be a multiple of 32");
    }
    let groups = w.len() / 32;
    let mut blocks = vec![0u8; groups * 16];
    let mut scales = vec![0u8; groups];
    for g in 0..groups {
        let src = &w[g * 32..g * 32 + 32];
        let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
        let e = if amax == 0.0 {
            -127
        } else {
            ((amax / 6.0).log2().round() as i32).clamp(-127, 127)
        };
        scales[g] = (e + 127) as u8;
        let inv = 1.0 / e8m0(scales[g]);
        for b in 0..16 {
            let lo = encode_mlx(src[2 * b] * inv);
            let hi = encode_mlx(src[2 * b + 1] * inv);
            blocks[g * 16 + b] = lo | (hi << 4);
        }
    }
    Ok((blocks, scales))
}

/// Views MLX's packed U32 words (`[.., G·4]`, little-endian) as OpenAI blocks bytes
/// (`[.., G, 16]`): the two layouts are the same bytes (docs/gpt-oss.md §2.4).
pub fn blocks_from_u32_bytes(bytes: &[u8], dims: &[usize]) -> Result<(Vec<u8>, Vec<usize>)> {
    let last = *dims.last().context("empty shape")?;
    if last % 4 != 0 {
        bail!("mxfp4 U32 weight last dim {last} is not a multiple of 4");
    }
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(last / 4);
    out.push(16);
    Ok((bytes.to_vec(), out))
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
        // Of `e` (no value saturates) and `e − 1` (the largest values saturate at
        // 6·2^(e−1)), the encoding with the smaller squared error; ties keep `e`. Why not `e`
        // alone: a merged delta that lifts a group's largest value a hair above 6·2^e would
        // move the whole group up an exponent and re-round every other value at twice the
        // step — an error far larger than the delta (seen on 87% of the groups of
        // gpt-oss-20b-shaped experts).
        let mut e = group_exponent(amax);
        let err = encode_group(v, e, blk);
        if e > -127 && err > 0.0 {
            let mut lower = [0u8; GROUP_BYTES];
            if encode_group(v, e - 1, &mut lower) < err {
                blk.copy_from_slice(&lower);
                e -= 1;
            }
        }
        *s = (e + 127) as u8;
    }
    Ok(())
}

/// Encodes one group `v` at exponent `e` into `blk`; returns the squared error of the values
/// it stands for.
fn encode_group(v: &[f32], e: i32, blk: &mut [u8]) -> f64 {
    let (inv, sc) = (exp2i(-e), exp2i(e) as f64);
    let mut err = 0f64;
    for (b, pair) in blk.iter_mut().zip(v.chunks_exact(2)) {
        let (lo, hi) = (encode(pair[0] * inv), encode(pair[1] * inv));
        *b = lo | (hi << 4);
        for (x, n) in [(pair[0], lo), (pair[1], hi)] {
            err += (x as f64 - FP4_VALUES[n as usize] as f64 * sc).powi(2);
        }
    }
    err
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

    #[test]
    fn small_delta_on_the_group_max_keeps_the_exponent() {
        // Every E2M1 magnitude at scale 2^-7, both signs; the largest then nudged up by less
        // than a step, as a merged LoRA delta does.
        let sc = exp2i(-7);
        let mut v: Vec<f32> = (0..32).map(|i| FP4_VALUES[i % 16] * sc).collect();
        let (mut b, mut s) = ([0u8; 16], [0u8; 1]);
        quantize_rows(&v, &mut b, &mut s).unwrap();
        assert_eq!(s[0], 120);
        let before = b;
        v[7] += 1e-3 * sc; // 6·2^-7 → slightly above: the no-saturation exponent would be −6
        quantize_rows(&v, &mut b, &mut s).unwrap();
        assert_eq!(
            s[0], 120,
            "a hair over 6·2^e saturates rather than coarsening the group"
        );
        assert_eq!(b, before);
        // A real overshoot (the max doubles) does move the group up.
        v[7] = 12.0 * sc;
        quantize_rows(&v, &mut b, &mut s).unwrap();
        assert_eq!(s[0], 121);
    }
}
