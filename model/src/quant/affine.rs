//! MLX quantized modules (docs/gpt-oss.md §2.5): which modules are quantized and how, and affine
//! dequantization.
//!
//! A module is quantized iff `{path}.scales` exists. Its parameters come from the per-module
//! entry of the config's `quantization` dict if present — an entry WITHOUT `mode` is affine,
//! it does not inherit the top-level mode — else from the top-level keys.

use anyhow::{bail, Context, Result};
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantMode {
    Affine { bits: usize, group: usize },
    Mxfp4,
}

/// Resolves the quantization of module `path` (without `.weight`) from the raw dict.
pub fn mode_for(quant: Option<&serde_json::Value>, path: &str) -> Result<QuantMode> {
    let q = quant.with_context(|| {
        format!("{path}.scales exists but config.json has no `quantization` dictionary")
    })?;
    let (entry, inherit) = match q.get(path) {
        Some(serde_json::Value::Bool(false)) => {
            bail!("{path}.scales exists but `quantization[{path:?}]` is false")
        }
        Some(e) if e.is_object() => (e, false),
        _ => (q, true),
    };
    let bits = entry.get("bits").and_then(|v| v.as_u64()).unwrap_or(4) as usize;
    let group = entry
        .get("group_size")
        .and_then(|v| v.as_u64())
        .unwrap_or(64) as usize;
    let mode = match entry.get("mode").and_then(|v| v.as_str()) {
        Some(m) => m.to_string(),
        // Per-module dicts without a mode are affine (mlx `to_quantized` default).
        None if !inherit => "affine".into(),
        None => "affine".into(),
    };
    match mode.as_str() {
        "affine" => {
            if !matches!(bits, 2 | 3 | 4 | 5 | 6 | 8) {
                bail!("{path}: unsupported affine bits {bits}");
            }
            if group == 0 {
                bail!("{path}: group_size 0");
            }
            Ok(QuantMode::Affine { bits, group })
        }
        "mxfp4" => {
            if bits != 4 || group != 32 {
                bail!("{path}: mxfp4 needs bits 4 / group 32, found {bits}/{group}");
            }
            Ok(QuantMode::Mxfp4)
        }
        other => bail!("{path}: unsupported quantization mode {other:?}"),
    }
}

/// Reads float values (bf16/f16/f32 little-endian bytes) as f32.
pub fn floats_from_bytes(bytes: &[u8], dtype: candle_core::DType) -> Result<Vec<f32>> {
    use candle_core::DType as T;
    Ok(match dtype {
        T::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        T::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        T::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("expected a float dtype for quantization scales, found {other:?}"),
    })
}

/// Affine dequantization of `rows` rows: `w` bytes are the packed U32 words (LSB-first bit
/// stream per row), `scales`/`biases` `[rows, in/group]`. Returns `[rows, in]` f32.
pub fn affine_dequantize(
    w: &[u8],
    scales: &[f32],
    biases: &[f32],
    rows: usize,
    bits: usize,
    group: usize,
) -> Result<Vec<f32>> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    let words_per_row = w.len() / 4 / rows;
    let in_dim = words_per_row * 32 / bits;
    if !in_dim.is_multiple_of(group)
        || scales.len() != rows * (in_dim / group)
        || biases.len() != scales.len()
    {
        bail!(
            "affine quantized weight: {} words/row × {bits} bits = {in_dim} inputs do not match \
             {} scales / {} biases with group {group}",
            words_per_row,
            scales.len(),
            biases.len()
        );
    }
    let mask = (1u64 << bits) - 1;
    let gpr = in_dim / group;
    let mut out = vec![0f32; rows * in_dim];
    for r in 0..rows {
        let row = &w[r * words_per_row * 4..(r + 1) * words_per_row * 4];
        for i in 0..in_dim {
            // Bit stream across little-endian words; for power-of-two bits this is the same
            // as "element k of each word at bits [k·bits, (k+1)·bits)".
            let bit = i * bits;
            let (byte, shift) = (bit / 8, bit % 8);
            let mut v = 0u64;
            for k in 0..3 {
                if byte + k < row.len() {
                    v |= (row[byte + k] as u64) << (8 * k);
                }
            }
            let q = ((v >> shift) & mask) as f32;
            let g = r * gpr + i / group;
            out[r * in_dim + i] = q * scales[g] + biases[g];
        }
    }
    Ok(out)
}

/// MLX's affine quantizer (docs/gpt-oss.md §2.5), for writing test checkpoints. Returns packed U32
/// words (as bytes), scales and biases; `w` is `[rows, cols]`.
pub fn affine_quantize(
    w: &[f32],
    cols: usize,
    bits: usize,
    group: usize,
) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let n_levels = ((1u32 << bits) - 1) as f32;
    let rows = w.len() / cols;
    let groups = cols / group;
    let mut scales = Vec::with_capacity(rows * groups);
    let mut biases = Vec::with_capacity(rows * groups);
    let mut packed = vec![0u8; rows * cols * bits / 8];
    for r in 0..rows {
        for g in 0..groups {
            let src = &w[r * cols + g * group..r * cols + (g + 1) * group];
            let (mn, mx) = src
                .iter()
                .fold((0f32, 0f32), |(a, b), &v| (a.min(v), b.max(v)));
            let mut scale = ((mx - mn) / n_levels).max(1e-7);
            let edge = if mn.abs() > mx.abs() {
                mn
            } else {
                scale = -scale;
                mx
            };
            let q0 = (edge / scale).round();
            let bias = if q0 != 0.0 {
                scale = edge / q0;
                edge
            } else {
                0.0
            };
            scales.push(scale);
            biases.push(bias);
            for (j, &v) in src.iter().enumerate() {
                let q = ((v - bias) / scale).round().clamp(0.0, n_levels) as u64;
                let bit = (r * cols + g * group + j) * bits;
                for k in 0..bits {
                    if (q >> k) & 1 == 1 {
                        let b = bit + k;
                        packed[b / 8] |= 1 << (b % 8);
                    }
                }
            }
        }
    }
    (packed, scales, biases)
}
