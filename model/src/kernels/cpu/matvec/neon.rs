//! aarch64: NEON (not built or run on the x86 development machines; mirrors the x86 paths).

use super::{bf16_at, RowMap, Rows, GROUP, GROUP_BYTES, HALF_SCALE, LUT_X2, MAX_M};
use std::arch::aarch64::*;

/// Eight bf16 at `p` (16 bytes, byte loads: any alignment) widened to two f32x4: zipping
/// zeros below each u16 is `<< 16` on little-endian lanes.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn bf16x8(p: *const u8) -> (float32x4_t, float32x4_t) {
    let v = vreinterpretq_u16_u8(vld1q_u8(p));
    let z = vdupq_n_u16(0);
    (
        vreinterpretq_f32_u16(vzip1q_u16(z, v)),
        vreinterpretq_f32_u16(vzip2q_u16(z, v)),
    )
}

/// Four accumulators per x row, 16 weights a step, scalar tail.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn bf16_dot<const M: usize>(w: *const u8, x: *const f32, inp: usize) -> [f32; M] {
    let mut acc = [[vdupq_n_f32(0.0); 4]; M];
    let mut k = 0;
    while k + 16 <= inp {
        let (v0, v1) = bf16x8(w.add(2 * k));
        let (v2, v3) = bf16x8(w.add(2 * k + 16));
        for (t, a) in acc.iter_mut().enumerate() {
            let xp = x.add(t * inp + k);
            a[0] = vfmaq_f32(a[0], v0, vld1q_f32(xp));
            a[1] = vfmaq_f32(a[1], v1, vld1q_f32(xp.add(4)));
            a[2] = vfmaq_f32(a[2], v2, vld1q_f32(xp.add(8)));
            a[3] = vfmaq_f32(a[3], v3, vld1q_f32(xp.add(12)));
        }
        k += 16;
    }
    if k + 8 <= inp {
        let (v0, v1) = bf16x8(w.add(2 * k));
        for (t, a) in acc.iter_mut().enumerate() {
            let xp = x.add(t * inp + k);
            a[0] = vfmaq_f32(a[0], v0, vld1q_f32(xp));
            a[1] = vfmaq_f32(a[1], v1, vld1q_f32(xp.add(4)));
        }
        k += 8;
    }
    let row = std::slice::from_raw_parts(w, 2 * inp);
    let mut out = [0f32; M];
    for (t, a) in acc.iter().enumerate() {
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])));
        for j in k..inp {
            s += bf16_at(row, j) * *x.add(t * inp + j);
        }
        out[t] = s;
    }
    out
}

/// SAFETY: NEON present; `rs` checks every stored row against `w`; `x` holds `m` rows of
/// `rs.inp`; `y` holds `(m-1)·ldy + rs.n` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn bf16_xwt<R: RowMap>(
    w: &[u8],
    rs: &Rows<R>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let inp = rs.inp;
    each_row!(rs, x, m, y, ldy, |r, xp| bf16_dot(
        w.as_ptr().add(r * 2 * inp),
        xp,
        inp
    ));
}

/// One MXFP4 group as eight f32x4 of 2·fp4 in element order: `tbl` lookups of both nibble
/// sets, zipped back to element order, widened i8 → i16 → i32 → f32.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn group(p: *const u8, lut: int8x16_t) -> [float32x4_t; 8] {
    let b = vld1q_u8(p);
    let even = vqtbl1q_s8(lut, vandq_u8(b, vdupq_n_u8(0x0f)));
    let odd = vqtbl1q_s8(lut, vshrq_n_u8::<4>(b));
    let e0 = vzip1q_s8(even, odd);
    let e1 = vzip2q_s8(even, odd);
    let h = [
        vmovl_s8(vget_low_s8(e0)),
        vmovl_high_s8(e0),
        vmovl_s8(vget_low_s8(e1)),
        vmovl_high_s8(e1),
    ];
    let mut w = [vdupq_n_f32(0.0); 8];
    for (j, hj) in h.iter().enumerate() {
        w[2 * j] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(*hj)));
        w[2 * j + 1] = vcvtq_f32_s32(vmovl_high_s16(*hj));
    }
    w
}

/// Per group and x row: eight products in two chains, one multiply-add by `HALF_SCALE`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn mxfp4_dot<const M: usize>(
    blk: *const u8,
    sc: *const u8,
    groups: usize,
    x: *const f32,
    inp: usize,
) -> [f32; M] {
    let lut = vld1q_s8(LUT_X2.as_ptr());
    let mut acc = [vdupq_n_f32(0.0); M];
    for g in 0..groups {
        let w = group(blk.add(g * GROUP_BYTES), lut);
        let s = vdupq_n_f32(HALF_SCALE[*sc.add(g) as usize]);
        for (t, a) in acc.iter_mut().enumerate() {
            let xp = x.add(t * inp + g * GROUP);
            let mut p = vmulq_f32(w[0], vld1q_f32(xp));
            let mut q = vmulq_f32(w[1], vld1q_f32(xp.add(4)));
            for j in 1..4 {
                p = vfmaq_f32(p, w[2 * j], vld1q_f32(xp.add(8 * j)));
                q = vfmaq_f32(q, w[2 * j + 1], vld1q_f32(xp.add(8 * j + 4)));
            }
            *a = vfmaq_f32(*a, vaddq_f32(p, q), s);
        }
    }
    let mut out = [0f32; M];
    for (o, a) in out.iter_mut().zip(acc.iter()) {
        *o = vaddvq_f32(*a);
    }
    out
}

/// SAFETY: as `bf16_xwt`, with `blocks` / `scales` checked whole MXFP4 rows.
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn mxfp4_xwt<R: RowMap>(
    blocks: &[u8],
    scales: &[u8],
    rs: &Rows<R>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let (inp, groups) = (rs.inp, rs.inp / GROUP);
    each_row!(rs, x, m, y, ldy, |r, xp| mxfp4_dot(
        blocks.as_ptr().add(r * groups * GROUP_BYTES),
        scales.as_ptr().add(r * groups),
        groups,
        xp,
        inp
    ));
}

/// SAFETY: NEON present, `rs` checks the rows, `out` holds `rs.n · rs.inp` values.
#[target_feature(enable = "neon")]
pub(super) unsafe fn bf16_rows<R: RowMap>(w: &[u8], rs: &Rows<R>, out: &mut [f32]) {
    let inp = rs.inp;
    for i in 0..rs.n {
        let row = &w[rs.row(i) * 2 * inp..][..2 * inp];
        let dst = &mut out[i * inp..(i + 1) * inp];
        let mut k = 0;
        while k + 8 <= inp {
            let (lo, hi) = bf16x8(row.as_ptr().add(2 * k));
            vst1q_f32(dst.as_mut_ptr().add(k), lo);
            vst1q_f32(dst.as_mut_ptr().add(k + 4), hi);
            k += 8;
        }
        for (j, o) in dst.iter_mut().enumerate().skip(k) {
            *o = bf16_at(row, j);
        }
    }
}

/// SAFETY: as `bf16_rows`, with whole MXFP4 rows.
#[target_feature(enable = "neon")]
pub(super) unsafe fn mxfp4_rows<R: RowMap>(
    blocks: &[u8],
    scales: &[u8],
    rs: &Rows<R>,
    out: &mut [f32],
) {
    let (inp, groups) = (rs.inp, rs.inp / GROUP);
    let lut = vld1q_s8(LUT_X2.as_ptr());
    for i in 0..rs.n {
        let r = rs.row(i);
        let blk = &blocks[r * groups * GROUP_BYTES..][..groups * GROUP_BYTES];
        let sc = &scales[r * groups..][..groups];
        let dst = &mut out[i * inp..(i + 1) * inp];
        for g in 0..groups {
            let w = group(blk.as_ptr().add(g * GROUP_BYTES), lut);
            let s = vdupq_n_f32(HALF_SCALE[sc[g] as usize]);
            let o = dst.as_mut_ptr().add(g * GROUP);
            for (j, wj) in w.iter().enumerate() {
                vst1q_f32(o.add(4 * j), vmulq_f32(*wj, s));
            }
        }
    }
}
