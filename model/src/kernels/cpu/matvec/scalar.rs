//! Portable scalar paths: the fallback on any CPU and the order the SIMD paths are tested
//! against.

use super::{bf16_at, mxfp4, RowMap, Rows, GROUP, GROUP_BYTES, HALF_SCALE, LUT_X2};

pub(super) fn bf16_xwt<R: RowMap>(
    w: &[u8],
    rs: &Rows<R>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let inp = rs.inp;
    for i in 0..rs.n {
        let r = rs.row(i);
        let row = &w[r * 2 * inp..(r + 1) * 2 * inp];
        for t in 0..m {
            y[t * ldy + i] = bf16_dot(row, &x[t * inp..(t + 1) * inp]);
        }
    }
}

/// Eight interleaved partial sums (the compiler keeps them in one SSE register pair).
fn bf16_dot(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let full = x.len() / 8 * 8;
    for (wb, xb) in row[..2 * full]
        .chunks_exact(16)
        .zip(x[..full].chunks_exact(8))
    {
        for (j, a) in acc.iter_mut().enumerate() {
            *a += bf16_at(wb, j) * xb[j];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (j, &xv) in x.iter().enumerate().skip(full) {
        s += bf16_at(row, j) * xv;
    }
    s
}

#[allow(clippy::too_many_arguments)]
pub(super) fn mxfp4_xwt<R: RowMap>(
    blocks: &[u8],
    scales: &[u8],
    rs: &Rows<R>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let (inp, groups) = (rs.inp, rs.inp / GROUP);
    for i in 0..rs.n {
        let r = rs.row(i);
        let blk = &blocks[r * groups * GROUP_BYTES..(r + 1) * groups * GROUP_BYTES];
        let sc = &scales[r * groups..(r + 1) * groups];
        for t in 0..m {
            y[t * ldy + i] = mxfp4_dot(blk, sc, &x[t * inp..(t + 1) * inp]);
        }
    }
}

/// Per group: Σ 2·fp4 · x (two partial sums), times scale / 2.
fn mxfp4_dot(blk: &[u8], sc: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for ((b16, &s), xg) in blk
        .chunks_exact(GROUP_BYTES)
        .zip(sc)
        .zip(x.chunks_exact(GROUP))
    {
        let (mut even, mut odd) = (0f32, 0f32);
        for (&byte, xx) in b16.iter().zip(xg.chunks_exact(2)) {
            even += LUT_X2[(byte & 0x0f) as usize] as f32 * xx[0];
            odd += LUT_X2[(byte >> 4) as usize] as f32 * xx[1];
        }
        acc += (even + odd) * HALF_SCALE[s as usize];
    }
    acc
}

pub(super) fn bf16_rows<R: RowMap>(w: &[u8], rs: &Rows<R>, out: &mut [f32]) {
    let inp = rs.inp;
    for i in 0..rs.n {
        let r = rs.row(i);
        let row = &w[r * 2 * inp..(r + 1) * 2 * inp];
        for (j, o) in out[i * inp..(i + 1) * inp].iter_mut().enumerate() {
            *o = bf16_at(row, j);
        }
    }
}

pub(super) fn mxfp4_rows<R: RowMap>(blocks: &[u8], scales: &[u8], rs: &Rows<R>, out: &mut [f32]) {
    let (inp, groups) = (rs.inp, rs.inp / GROUP);
    for i in 0..rs.n {
        let r = rs.row(i);
        mxfp4::dequantize_into(
            &blocks[r * groups * GROUP_BYTES..(r + 1) * groups * GROUP_BYTES],
            &scales[r * groups..(r + 1) * groups],
            &mut out[i * inp..(i + 1) * inp],
        );
    }
}
