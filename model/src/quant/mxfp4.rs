//! MXFP4 (spec §2.2): blocks `[.., G, 16]` U8 hold 32 E2M1 values per group (low nibble =
//! even element), scales `[.., G]` U8 are E8M0 exponents (value 2^(s−127)).
//!
//! `dequantize` picks a tight CPU loop when the tensors live on the CPU and otherwise the
//! device-generic path built from candle ops, so Metal/CUDA run the same model code.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

/// E2M1 values indexed by nibble (bit 3 = sign).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// 2^(s − 127) as f32, exactly (s = 0 is the subnormal 2^-127, s = 255 overflows to inf,
/// as `ldexp` in the reference).
pub fn e8m0(s: u8) -> f32 {
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

/// Nearest E2M1 code of `v` (already divided by the group scale), with MLX's thresholds
/// (ties toward the larger magnitude at 0.75, 1.75, 3.5; values beyond ±6 saturate).
fn e2m1_code(v: f32) -> u8 {
    let a = v.abs();
    let mag = if a > 5.0 {
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
    if v.is_sign_negative() && mag != 0 {
        mag | 8
    } else {
        mag
    }
}

/// Quantizes rows of `cols` values (cols a multiple of 32) with MLX's rule (spec §2.2):
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
            let lo = e2m1_code(src[2 * b] * inv);
            let hi = e2m1_code(src[2 * b + 1] * inv);
            blocks[g * 16 + b] = lo | (hi << 4);
        }
    }
    Ok((blocks, scales))
}

/// Views MLX's packed U32 words (`[.., G·4]`, little-endian) as OpenAI blocks bytes
/// (`[.., G, 16]`): the two layouts are the same bytes (spec §2.4).
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
