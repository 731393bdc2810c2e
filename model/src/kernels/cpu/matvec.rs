//! Fused matrix kernels over weights kept in their stored encoding: `y = x · Wᵀ` for a few
//! activation rows (decode: one token; small-batch prefill: up to ~8) and whole-row widening for
//! the tiled GEMM of large batches, with `W` given as the raw bytes of a bf16 or MXFP4 tensor.
//!
//! Why fused: decoding one token reads every weight of the layers it visits once, and does two
//! flops per weight, so it is bound by memory bandwidth, not arithmetic. Dequantizing a matrix
//! into an f32 scratch first would read the stored bytes, write 4 bytes per weight and read them
//! back (3–9× the traffic of the stored bytes for bf16 / MXFP4). These kernels load each stored
//! byte once and widen / dequantize it in vector registers right before the multiply-add, so the
//! traffic is the stored size (2 bytes a weight for bf16, 17/32 for MXFP4).
//!
//! Formats:
//! - bf16: the upper 16 bits of an IEEE-754 binary32 (Google's bfloat16,
//!   https://cloud.google.com/tpu/docs/bfloat16), little-endian as safetensors stores every dtype
//!   (https://huggingface.co/docs/safetensors/index). The bytes come straight from an mmap and are
//!   not 2-byte aligned in general: every load here is an unaligned byte load. Widening is
//!   `(u16 as u32) << 16` reinterpreted as f32, exact for every value (denormals, ±inf, NaN).
//! - MXFP4 (OCP Microscaling Formats v1.0,
//!   https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf; the
//!   gpt-oss layout in docs/gpt-oss.md §2.2, codec in `quant::mxfp4`): per row, groups of 32 E2M1
//!   values in 16 bytes (byte `b` holds element `2b` in its low nibble, `2b+1` in its high one)
//!   and one E8M0 scale byte per group (2^(s−127); s = 0 is 2^-127, as `mxfp4::e8m0`).
//!
//! Every E2M1 value times two is a small integer (−12..12), so a 16-entry i8 table looked up
//! with a byte shuffle (`pshufb` / `tbl`) turns 16 packed bytes into 32 exact integers; those are
//! converted to f32, multiplied-added against `x`, and each group's partial sum is scaled once by
//! `scale / 2` (exact: a power of two). Products are therefore formed from exact weights, and
//! the only rounding is f32 accumulation (relative error ~1e-7 of Σ|x·w| at these widths).
//!
//! Dispatch: AVX-512F, AVX2 + FMA (x86-64, detected once at run time and cached), NEON
//! (aarch64), and a portable scalar fallback. The functions are pure: no threads (the caller
//! splits output rows across threads) and a fixed summation order, so a row's result depends
//! only on its weights and `x`: not on `m`, on how the rows are split, or on the call.
//! Different ISAs sum in different orders and agree to rounding.

// Wired in by the stored-weight engine; until then only the tests call these.

use std::sync::OnceLock;

use crate::quant::mxfp4::{self, GROUP, GROUP_BYTES};

/// Stored row of output row `i` (the caller's row order, e.g. gate/up de-interleaving).
pub(crate) trait RowMap: Sync {
    fn row(&self, i: usize) -> usize;
}

/// Output row `i` is stored row `i`.
pub(crate) struct Identity;

impl RowMap for Identity {
    #[inline(always)]
    fn row(&self, i: usize) -> usize {
        i
    }
}

/// HF gpt-oss gate_up rows are interleaved (stored row 2j = gate j, 2j+1 = up j); output row
/// i < half is gate i → stored 2i, output row i >= half is up (i-half) → stored 2(i-half)+1.
pub(crate) struct Deinterleave {
    pub half: usize,
}

impl RowMap for Deinterleave {
    #[inline(always)]
    fn row(&self, i: usize) -> usize {
        if i < self.half {
            2 * i
        } else {
            2 * (i - self.half) + 1
        }
    }
}

/// y[t*ldy + i] = Σ_k x[t*inp + k] · W[map.row(r0+i), k]  for t < m, i < n (overwrites).
/// `x` holds m rows of `inp` f32; `w` is the whole stored matrix (all rows); computes output
/// rows r0..r0+n.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bf16_xwt(
    w: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    bf16_xwt_on(isa(), w, inp, map, (r0, n), x, m, y, ldy)
}

/// As [`bf16_xwt`] with `W` in MXFP4: `blocks` `[rows, inp/32, 16]`, `scales` `[rows, inp/32]`.
/// On AVX2 the exactness holds while |x| < 2^95 and partial sums stay below 2^125 (see
/// `x86::mxfp4_dot_avx2`); beyond that the result may be ±inf where f32 could still hold it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mxfp4_xwt(
    blocks: &[u8],
    scales: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    mxfp4_xwt_on(isa(), blocks, scales, inp, map, (r0, n), x, m, y, ldy)
}

/// Widening whole rows into f32 scratch (for the tiled GEMM path of large m):
/// out[i*inp..] = W[map.row(r0+i), :] for i < n. Exact.
pub(crate) fn bf16_rows(
    w: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    out: &mut [f32],
) {
    bf16_rows_on(isa(), w, inp, map, (r0, n), out)
}

/// Dequantizing whole rows into f32 scratch: out[i*inp..] = W[map.row(r0+i), :] for i < n.
/// Equal (`==`) to `mxfp4::dequantize_into`; a stored −0 may come out as +0.
pub(crate) fn mxfp4_rows(
    blocks: &[u8],
    scales: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    out: &mut [f32],
) {
    mxfp4_rows_on(isa(), blocks, scales, inp, map, (r0, n), out)
}

// ---------------------------------------------------------------------------------------------
// Dispatch

/// The instruction set a call runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

/// Every instruction set this CPU can run, scalar first and the preferred one last.
fn available() -> Vec<Isa> {
    #[allow(unused_mut)]
    let mut out = vec![Isa::Scalar];
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        if avx2 {
            out.push(Isa::Avx2);
        }
        if avx2 && is_x86_feature_detected!("avx512f") {
            out.push(Isa::Avx512);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            out.push(Isa::Neon);
        }
    }
    out
}

/// The preferred instruction set, detected once.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| *available().last().unwrap_or(&Isa::Scalar))
}

/// At most this many `x` rows share one pass over a weight row (their accumulators live in
/// registers); more rows loop over the (then cache-resident) weight row again.
const MAX_M: usize = 4;

/// Output rows `r0..r0+n` of a stored matrix of `rows` rows of `inp` values.
struct Rows<'a, R> {
    map: &'a R,
    rows: usize,
    inp: usize,
    r0: usize,
    n: usize,
}

impl<R: RowMap> Rows<'_, R> {
    /// Stored row of output row `r0 + i`, checked against the matrix.
    #[inline(always)]
    fn row(&self, i: usize) -> usize {
        let r = self.map.row(self.r0 + i);
        assert!(
            r < self.rows,
            "matvec: output row {} maps to stored row {r} of {}",
            self.r0 + i,
            self.rows
        );
        r
    }
}

/// Rows of a bf16 matrix of `inp` columns held in `w`.
fn bf16_shape(w: &[u8], inp: usize) -> usize {
    assert!(inp > 0, "matvec: rows of length 0");
    assert!(
        w.len().is_multiple_of(2 * inp),
        "matvec: {} bf16 bytes are not whole rows of {inp}",
        w.len()
    );
    w.len() / (2 * inp)
}

/// Rows of an MXFP4 matrix of `inp` columns held in `blocks` / `scales`.
fn mxfp4_shape(blocks: &[u8], scales: &[u8], inp: usize) -> usize {
    assert!(
        inp > 0 && inp.is_multiple_of(GROUP),
        "matvec: MXFP4 row length {inp} is not a positive multiple of {GROUP}"
    );
    let groups = inp / GROUP;
    assert!(
        scales.len().is_multiple_of(groups) && blocks.len() == scales.len() * GROUP_BYTES,
        "matvec: {} block bytes / {} scales are not whole MXFP4 rows of {inp}",
        blocks.len(),
        scales.len()
    );
    scales.len() / groups
}

/// Checks the activation / output arguments of an xwt call; false when there is nothing to do.
fn check_xwt(inp: usize, n: usize, x: &[f32], m: usize, y: &[f32], ldy: usize) -> bool {
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        x.len() >= m * inp,
        "matvec: x holds {} values, {m} rows of {inp} need {}",
        x.len(),
        m * inp
    );
    assert!(ldy >= n, "matvec: ldy {ldy} < n {n}");
    assert!(
        y.len() >= (m - 1) * ldy + n,
        "matvec: y holds {} values, {m} rows of {n} at stride {ldy} need {}",
        y.len(),
        (m - 1) * ldy + n
    );
    true
}

#[allow(clippy::too_many_arguments)]
fn bf16_xwt_on(
    isa: Isa,
    w: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let rows = bf16_shape(w, inp);
    if !check_xwt(inp, n, x, m, y, ldy) {
        return;
    }
    let rs = Rows {
        map,
        rows,
        inp,
        r0,
        n,
    };
    match isa {
        Isa::Scalar => scalar::bf16_xwt(w, &rs, x, m, y, ldy),
        // SAFETY (all three): the features were detected (`available`), every stored row is
        // checked by `Rows::row`, and `x` / `y` were checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::bf16_xwt_avx2(w, &rs, x, m, y, ldy) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::bf16_xwt_avx512(w, &rs, x, m, y, ldy) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::bf16_xwt(w, &rs, x, m, y, ldy) },
    }
}

#[allow(clippy::too_many_arguments)]
fn mxfp4_xwt_on(
    isa: Isa,
    blocks: &[u8],
    scales: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    let rows = mxfp4_shape(blocks, scales, inp);
    if !check_xwt(inp, n, x, m, y, ldy) {
        return;
    }
    let rs = Rows {
        map,
        rows,
        inp,
        r0,
        n,
    };
    match isa {
        Isa::Scalar => scalar::mxfp4_xwt(blocks, scales, &rs, x, m, y, ldy),
        // SAFETY: as in `bf16_xwt_on`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::mxfp4_xwt_avx2(blocks, scales, &rs, x, m, y, ldy) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::mxfp4_xwt_avx512(blocks, scales, &rs, x, m, y, ldy) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::mxfp4_xwt(blocks, scales, &rs, x, m, y, ldy) },
    }
}

fn bf16_rows_on(
    isa: Isa,
    w: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    out: &mut [f32],
) {
    let rows = bf16_shape(w, inp);
    assert!(
        out.len() >= n * inp,
        "matvec: out holds {} values, {n} rows of {inp} need {}",
        out.len(),
        n * inp
    );
    let rs = Rows {
        map,
        rows,
        inp,
        r0,
        n,
    };
    match isa {
        Isa::Scalar => scalar::bf16_rows(w, &rs, out),
        // SAFETY: as in `bf16_xwt_on`, `out` checked above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::bf16_rows_avx2(w, &rs, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::bf16_rows_avx512(w, &rs, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::bf16_rows(w, &rs, out) },
    }
}

fn mxfp4_rows_on(
    isa: Isa,
    blocks: &[u8],
    scales: &[u8],
    inp: usize,
    map: &impl RowMap,
    (r0, n): (usize, usize),
    out: &mut [f32],
) {
    let rows = mxfp4_shape(blocks, scales, inp);
    assert!(
        out.len() >= n * inp,
        "matvec: out holds {} values, {n} rows of {inp} need {}",
        out.len(),
        n * inp
    );
    let rs = Rows {
        map,
        rows,
        inp,
        r0,
        n,
    };
    match isa {
        Isa::Scalar => scalar::mxfp4_rows(blocks, scales, &rs, out),
        // SAFETY: as in `bf16_rows_on`.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::mxfp4_rows_avx2(blocks, scales, &rs, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::mxfp4_rows_avx512(blocks, scales, &rs, out) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe { neon::mxfp4_rows(blocks, scales, &rs, out) },
    }
}

/// The portable paths under the same names as the public functions (tests compare them with
/// the SIMD paths).
#[allow(clippy::too_many_arguments)]
#[cfg(test)]
fn bf16_xwt_scalar(
    w: &[u8],
    inp: usize,
    map: &impl RowMap,
    rows: (usize, usize),
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    bf16_xwt_on(Isa::Scalar, w, inp, map, rows, x, m, y, ldy)
}

#[allow(clippy::too_many_arguments)]
#[cfg(test)]
fn mxfp4_xwt_scalar(
    blocks: &[u8],
    scales: &[u8],
    inp: usize,
    map: &impl RowMap,
    rows: (usize, usize),
    x: &[f32],
    m: usize,
    y: &mut [f32],
    ldy: usize,
) {
    mxfp4_xwt_on(Isa::Scalar, blocks, scales, inp, map, rows, x, m, y, ldy)
}

#[cfg(test)]
fn bf16_rows_scalar(
    w: &[u8],
    inp: usize,
    map: &impl RowMap,
    rows: (usize, usize),
    out: &mut [f32],
) {
    bf16_rows_on(Isa::Scalar, w, inp, map, rows, out)
}

#[cfg(test)]
fn mxfp4_rows_scalar(
    blocks: &[u8],
    scales: &[u8],
    inp: usize,
    map: &impl RowMap,
    rows: (usize, usize),
    out: &mut [f32],
) {
    mxfp4_rows_on(Isa::Scalar, blocks, scales, inp, map, rows, out)
}

// ---------------------------------------------------------------------------------------------
// Tables

/// 2 × E2M1 value by nibble (bit 3 = sign): `mxfp4::FP4_VALUES` doubled, all integers.
const LUT_X2: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// `e8m0(s) / 2` (2^(s−128), pairs with `LUT_X2`), exactly; s = 255 is +inf as in `e8m0`.
static HALF_SCALE: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut s = 0;
    while s < 256 {
        t[s] = match s {
            // 2^-128 and 2^-127 are subnormal: one mantissa bit.
            0 => f32::from_bits(1 << 21),
            1 => f32::from_bits(1 << 22),
            255 => f32::INFINITY,
            _ => f32::from_bits(((s - 1) as u32) << 23),
        };
        s += 1;
    }
    t
};

/// bf16 at index `j` of a row of little-endian bytes.
#[inline(always)]
fn bf16_at(row: &[u8], j: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([row[2 * j], row[2 * j + 1]]) as u32) << 16)
}

/// Runs `$dot::<M>(args)` (returning `[f32; M]`) for every output row of `$rs` and every chunk
/// of up to `MAX_M` rows of `$x`, writing `$y[t*ldy + i]`. `$r` is bound to the stored row and
/// `$xp` to the chunk's first x row (a pointer; rows `$rs.inp` apart). Expands inside an
/// `unsafe` target-feature function so the kernels inline with its features.
#[allow(unused_macros)]
macro_rules! each_row {
    ($rs:expr, $x:expr, $m:expr, $y:expr, $ldy:expr, |$r:ident, $xp:ident| $dot:ident($($arg:expr),* $(,)?)) => {{
        let rs = $rs;
        for i in 0..rs.n {
            let $r = rs.row(i);
            let mut t0 = 0;
            while t0 < $m {
                let mm = ($m - t0).min(MAX_M);
                let $xp = $x.as_ptr().add(t0 * rs.inp);
                let mut out = [0f32; MAX_M];
                match mm {
                    1 => out[..1].copy_from_slice(&$dot::<1>($($arg),*)),
                    2 => out[..2].copy_from_slice(&$dot::<2>($($arg),*)),
                    3 => out[..3].copy_from_slice(&$dot::<3>($($arg),*)),
                    _ => out = $dot::<4>($($arg),*),
                }
                for (t, &v) in out[..mm].iter().enumerate() {
                    $y[(t0 + t) * $ldy + i] = v;
                }
                t0 += mm;
            }
        }
    }};
}

// ---------------------------------------------------------------------------------------------
// Portable scalar paths

mod scalar {
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

    pub(super) fn mxfp4_rows<R: RowMap>(
        blocks: &[u8],
        scales: &[u8],
        rs: &Rows<R>,
        out: &mut [f32],
    ) {
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
}

// ---------------------------------------------------------------------------------------------
// x86-64: AVX2 + FMA and AVX-512F

/// `x` rows reordered within each 32-group to the lane order of `x86::mxfp4_group_top`:
/// position 8k + i holds element 8·(i mod 4) + 2k + i/4.
#[cfg(target_arch = "x86_64")]
fn permute_for_top(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (src, dst) in x.chunks_exact(GROUP).zip(out.chunks_exact_mut(GROUP)) {
        for k in 0..4 {
            for i in 0..8 {
                dst[8 * k + i] = src[8 * (i % 4) + 2 * k + i / 4];
            }
        }
    }
    out
}

/// `e8m0(s) / 2 · 2^-24 · 2^3` = 2^(s−149), exactly (a subnormal below s = 23): the scale of
/// the AVX2 xwt path, whose weights come out of `mxfp4_group_top` as 2·fp4·2^24 and whose
/// final sum is multiplied by 2^-3 (so that s = 0 stays representable). s = 255 is +inf.
#[cfg(target_arch = "x86_64")]
static TOP_SCALE: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut s = 0;
    while s < 256 {
        t[s] = if s == 255 {
            f32::INFINITY
        } else if s < 23 {
            f32::from_bits(1 << s)
        } else {
            f32::from_bits(((s - 22) as u32) << 23)
        };
        s += 1;
    }
    t
};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{
        bf16_at, permute_for_top, RowMap, Rows, GROUP, GROUP_BYTES, HALF_SCALE, LUT_X2, MAX_M,
        TOP_SCALE,
    };
    use std::arch::x86_64::*;

    // ---- shared pieces ----------------------------------------------------------------------

    /// One MXFP4 group (16 bytes at `p`) as 2·fp4 i8 values in element order: elements 0..16
    /// and 16..32. Both nibble sets are looked up with `pshufb`, then interleaved back.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn mxfp4_group_i8(p: *const u8) -> (__m128i, __m128i) {
        let lut = _mm_loadu_si128(LUT_X2.as_ptr().cast());
        let low = _mm_set1_epi8(0x0f);
        let b = _mm_loadu_si128(p.cast());
        let even = _mm_shuffle_epi8(lut, _mm_and_si128(b, low));
        let odd = _mm_shuffle_epi8(lut, _mm_and_si128(_mm_srli_epi16(b, 4), low));
        (_mm_unpacklo_epi8(even, odd), _mm_unpackhi_epi8(even, odd))
    }

    // ---- AVX2 + FMA -------------------------------------------------------------------------

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum8(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// Eight bf16 at `p` (16 bytes, any alignment) widened to f32.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn bf16x8(p: *const u8) -> __m256 {
        let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
        _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
    }

    /// `[Σ_k w[k]·x[t·inp + k]; M]` for one bf16 row `w` of `inp` values: two accumulators
    /// per x row (16 weights a step), scalar tail.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn bf16_dot_avx2<const M: usize>(w: *const u8, x: *const f32, inp: usize) -> [f32; M] {
        let mut a = [_mm256_setzero_ps(); M];
        let mut b = [_mm256_setzero_ps(); M];
        let mut k = 0;
        while k + 16 <= inp {
            let v0 = bf16x8(w.add(2 * k));
            let v1 = bf16x8(w.add(2 * k + 16));
            for t in 0..M {
                let xp = x.add(t * inp + k);
                a[t] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(xp), a[t]);
                b[t] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(xp.add(8)), b[t]);
            }
            k += 16;
        }
        if k + 8 <= inp {
            let v0 = bf16x8(w.add(2 * k));
            for (t, at) in a.iter_mut().enumerate() {
                *at = _mm256_fmadd_ps(v0, _mm256_loadu_ps(x.add(t * inp + k)), *at);
            }
            k += 8;
        }
        let row = std::slice::from_raw_parts(w, 2 * inp);
        let mut out = [0f32; M];
        for t in 0..M {
            let mut s = hsum8(_mm256_add_ps(a[t], b[t]));
            for j in k..inp {
                s += bf16_at(row, j) * *x.add(t * inp + j);
            }
            out[t] = s;
        }
        out
    }

    /// SAFETY: AVX2 and FMA present; `rs` checks every stored row against `w`; `x` holds `m`
    /// rows of `rs.inp`; `y` holds `(m-1)·ldy + rs.n` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bf16_xwt_avx2<R: RowMap>(
        w: &[u8],
        rs: &Rows<R>,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        ldy: usize,
    ) {
        let inp = rs.inp;
        each_row!(rs, x, m, y, ldy, |r, xp| bf16_dot_avx2(
            w.as_ptr().add(r * 2 * inp),
            xp,
            inp
        ));
    }

    /// One MXFP4 group as four vectors of 2·fp4·2^24 in the lane order of `permute_for_top`:
    /// both 128-bit lanes get the 16 bytes, the upper lane shifted by a nibble, so one 256-bit
    /// `pshufb` looks up the even elements (lower lane) and the odd ones (upper lane); byte k
    /// of each dword is then moved to the top of the dword (`slli` / mask) and converted,
    /// which keeps its sign and needs no sign-extending shuffle. Exact (integers < 2^28).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn mxfp4_group_top(p: *const u8, lut: __m256i) -> [__m256; 4] {
        let low = _mm256_set1_epi8(0x0f);
        let top = _mm256_set1_epi32(0xff00_0000u32 as i32);
        let nibble = _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4);
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p.cast()));
        let q = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srlv_epi32(v, nibble), low));
        [
            _mm256_cvtepi32_ps(_mm256_slli_epi32(q, 24)),
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_slli_epi32(q, 16), top)),
            _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_slli_epi32(q, 8), top)),
            _mm256_cvtepi32_ps(_mm256_and_si256(q, top)),
        ]
    }

    /// `[Σ_k w[k]·x[t·inp + k]; M]` for one MXFP4 row, `x` permuted by `permute_for_top`.
    /// Per group and x row: four products summed, then one multiply-add by `TOP_SCALE` into
    /// the row's accumulator; the sum is scaled by 2^-3 at the end. The weights carry a 2^24
    /// factor (cheaper to decode than sign-extending: ~15% faster at m = 1), so a group's
    /// partial sum overflows for |x| ≥ 2^95, and the 2^3 headroom of `TOP_SCALE` for partial
    /// sums ≥ 2^125: far outside what activations reach.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn mxfp4_dot_avx2<const M: usize>(
        blk: *const u8,
        sc: *const u8,
        groups: usize,
        x: *const f32,
        inp: usize,
    ) -> [f32; M] {
        let lut = _mm256_broadcastsi128_si256(_mm_loadu_si128(LUT_X2.as_ptr().cast()));
        let mut acc = [_mm256_setzero_ps(); M];
        for g in 0..groups {
            let w = mxfp4_group_top(blk.add(g * GROUP_BYTES), lut);
            let s = _mm256_broadcast_ss(&TOP_SCALE[*sc.add(g) as usize]);
            for (t, at) in acc.iter_mut().enumerate() {
                let xp = x.add(t * inp + g * GROUP);
                let mut p = _mm256_mul_ps(w[0], _mm256_loadu_ps(xp));
                p = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xp.add(8)), p);
                p = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xp.add(16)), p);
                p = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xp.add(24)), p);
                *at = _mm256_fmadd_ps(p, s, *at);
            }
        }
        let mut out = [0f32; M];
        for t in 0..M {
            out[t] = hsum8(acc[t]) * 0.125;
        }
        out
    }

    /// SAFETY: as `bf16_xwt_avx2`, with `blocks` / `scales` checked whole MXFP4 rows.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn mxfp4_xwt_avx2<R: RowMap>(
        blocks: &[u8],
        scales: &[u8],
        rs: &Rows<R>,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        ldy: usize,
    ) {
        let (inp, groups) = (rs.inp, rs.inp / GROUP);
        // m·inp values, reused by every row of the call.
        let xs = permute_for_top(&x[..m * inp]);
        each_row!(rs, xs, m, y, ldy, |r, xp| mxfp4_dot_avx2(
            blocks.as_ptr().add(r * groups * GROUP_BYTES),
            scales.as_ptr().add(r * groups),
            groups,
            xp,
            inp
        ));
    }

    /// SAFETY: AVX2 present, `rs` checks the rows, `out` holds `rs.n · rs.inp` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bf16_rows_avx2<R: RowMap>(w: &[u8], rs: &Rows<R>, out: &mut [f32]) {
        let inp = rs.inp;
        for i in 0..rs.n {
            let row = &w[rs.row(i) * 2 * inp..][..2 * inp];
            let dst = &mut out[i * inp..(i + 1) * inp];
            let mut k = 0;
            while k + 8 <= inp {
                _mm256_storeu_ps(dst.as_mut_ptr().add(k), bf16x8(row.as_ptr().add(2 * k)));
                k += 8;
            }
            for (j, o) in dst.iter_mut().enumerate().skip(k) {
                *o = bf16_at(row, j);
            }
        }
    }

    /// The low eight i8 of `v` as f32, times `s`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn i8x8_scaled(v: __m128i, s: __m256) -> __m256 {
        _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), s)
    }

    /// SAFETY: as `bf16_rows_avx2`, with whole MXFP4 rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn mxfp4_rows_avx2<R: RowMap>(
        blocks: &[u8],
        scales: &[u8],
        rs: &Rows<R>,
        out: &mut [f32],
    ) {
        let (inp, groups) = (rs.inp, rs.inp / GROUP);
        for i in 0..rs.n {
            let r = rs.row(i);
            let blk = &blocks[r * groups * GROUP_BYTES..][..groups * GROUP_BYTES];
            let sc = &scales[r * groups..][..groups];
            let dst = &mut out[i * inp..(i + 1) * inp];
            for g in 0..groups {
                let (e0, e1) = mxfp4_group_i8(blk.as_ptr().add(g * GROUP_BYTES));
                let s = _mm256_set1_ps(HALF_SCALE[sc[g] as usize]);
                let o = dst.as_mut_ptr().add(g * GROUP);
                _mm256_storeu_ps(o, i8x8_scaled(e0, s));
                _mm256_storeu_ps(o.add(8), i8x8_scaled(_mm_unpackhi_epi64(e0, e0), s));
                _mm256_storeu_ps(o.add(16), i8x8_scaled(e1, s));
                _mm256_storeu_ps(o.add(24), i8x8_scaled(_mm_unpackhi_epi64(e1, e1), s));
            }
        }
    }

    // ---- AVX-512F ---------------------------------------------------------------------------

    /// Sixteen bf16 at `p` (32 bytes, any alignment) widened to f32.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn bf16x16(p: *const u8) -> __m512 {
        let v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()));
        _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))
    }

    /// As `bf16_dot_avx2`, 32 weights a step.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn bf16_dot_avx512<const M: usize>(w: *const u8, x: *const f32, inp: usize) -> [f32; M] {
        let mut a = [_mm512_setzero_ps(); M];
        let mut b = [_mm512_setzero_ps(); M];
        let mut k = 0;
        while k + 32 <= inp {
            let v0 = bf16x16(w.add(2 * k));
            let v1 = bf16x16(w.add(2 * k + 32));
            for t in 0..M {
                let xp = x.add(t * inp + k);
                a[t] = _mm512_fmadd_ps(v0, _mm512_loadu_ps(xp), a[t]);
                b[t] = _mm512_fmadd_ps(v1, _mm512_loadu_ps(xp.add(16)), b[t]);
            }
            k += 32;
        }
        if k + 16 <= inp {
            let v0 = bf16x16(w.add(2 * k));
            for (t, at) in a.iter_mut().enumerate() {
                *at = _mm512_fmadd_ps(v0, _mm512_loadu_ps(x.add(t * inp + k)), *at);
            }
            k += 16;
        }
        let row = std::slice::from_raw_parts(w, 2 * inp);
        let mut out = [0f32; M];
        for t in 0..M {
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(a[t], b[t]));
            for j in k..inp {
                s += bf16_at(row, j) * *x.add(t * inp + j);
            }
            out[t] = s;
        }
        out
    }

    /// SAFETY: as `bf16_xwt_avx2`, with AVX-512F present.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn bf16_xwt_avx512<R: RowMap>(
        w: &[u8],
        rs: &Rows<R>,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        ldy: usize,
    ) {
        let inp = rs.inp;
        each_row!(rs, x, m, y, ldy, |r, xp| bf16_dot_avx512(
            w.as_ptr().add(r * 2 * inp),
            xp,
            inp
        ));
    }

    /// One MXFP4 group as two vectors of 2·fp4 in element order (x needs no permutation).
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn mxfp4_group16(p: *const u8) -> (__m512, __m512) {
        let (e0, e1) = mxfp4_group_i8(p);
        (
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(e0)),
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(e1)),
        )
    }

    /// Per group and x row: two products summed, one multiply-add by `HALF_SCALE`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[inline]
    unsafe fn mxfp4_dot_avx512<const M: usize>(
        blk: *const u8,
        sc: *const u8,
        groups: usize,
        x: *const f32,
        inp: usize,
    ) -> [f32; M] {
        let mut acc = [_mm512_setzero_ps(); M];
        for g in 0..groups {
            let (w0, w1) = mxfp4_group16(blk.add(g * GROUP_BYTES));
            let s = _mm512_set1_ps(HALF_SCALE[*sc.add(g) as usize]);
            for (t, at) in acc.iter_mut().enumerate() {
                let xp = x.add(t * inp + g * GROUP);
                let p = _mm512_mul_ps(w0, _mm512_loadu_ps(xp));
                let p = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp.add(16)), p);
                *at = _mm512_fmadd_ps(p, s, *at);
            }
        }
        let mut out = [0f32; M];
        for t in 0..M {
            out[t] = _mm512_reduce_add_ps(acc[t]);
        }
        out
    }

    /// SAFETY: as `mxfp4_xwt_avx2`, with AVX-512F present.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn mxfp4_xwt_avx512<R: RowMap>(
        blocks: &[u8],
        scales: &[u8],
        rs: &Rows<R>,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        ldy: usize,
    ) {
        let (inp, groups) = (rs.inp, rs.inp / GROUP);
        each_row!(rs, x, m, y, ldy, |r, xp| mxfp4_dot_avx512(
            blocks.as_ptr().add(r * groups * GROUP_BYTES),
            scales.as_ptr().add(r * groups),
            groups,
            xp,
            inp
        ));
    }

    /// SAFETY: as `bf16_rows_avx2`, with AVX-512F present.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn bf16_rows_avx512<R: RowMap>(w: &[u8], rs: &Rows<R>, out: &mut [f32]) {
        let inp = rs.inp;
        for i in 0..rs.n {
            let row = &w[rs.row(i) * 2 * inp..][..2 * inp];
            let dst = &mut out[i * inp..(i + 1) * inp];
            let mut k = 0;
            while k + 16 <= inp {
                _mm512_storeu_ps(dst.as_mut_ptr().add(k), bf16x16(row.as_ptr().add(2 * k)));
                k += 16;
            }
            for (j, o) in dst.iter_mut().enumerate().skip(k) {
                *o = bf16_at(row, j);
            }
        }
    }

    /// SAFETY: as `mxfp4_rows_avx2`, with AVX-512F present.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn mxfp4_rows_avx512<R: RowMap>(
        blocks: &[u8],
        scales: &[u8],
        rs: &Rows<R>,
        out: &mut [f32],
    ) {
        let (inp, groups) = (rs.inp, rs.inp / GROUP);
        for i in 0..rs.n {
            let r = rs.row(i);
            let blk = &blocks[r * groups * GROUP_BYTES..][..groups * GROUP_BYTES];
            let sc = &scales[r * groups..][..groups];
            let dst = &mut out[i * inp..(i + 1) * inp];
            for g in 0..groups {
                let (w0, w1) = mxfp4_group16(blk.as_ptr().add(g * GROUP_BYTES));
                let s = _mm512_set1_ps(HALF_SCALE[sc[g] as usize]);
                let o = dst.as_mut_ptr().add(g * GROUP);
                _mm512_storeu_ps(o, _mm512_mul_ps(w0, s));
                _mm512_storeu_ps(o.add(16), _mm512_mul_ps(w1, s));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// aarch64: NEON (not built or run on the x86 development machines; mirrors the x86 paths)

#[cfg(target_arch = "aarch64")]
mod neon {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::mxfp4::{dequantize_into, e8m0, FP4_VALUES};
    use osstune_rng::SplitMix64;

    const SENTINEL: f32 = -7.25e30;

    /// Random bf16 bytes: both signs, exponents 2^-8..2^8, with `specials` also denormals
    /// (both signs), zeros and values up to 2^60.
    fn bf16_bytes(rng: &mut SplitMix64, count: usize, specials: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 * count);
        for _ in 0..count {
            let r = rng.next_u64();
            let sign = ((r >> 63) as u16) << 15;
            let mant = (r & 0x7f) as u16;
            let bits = match (specials, (r >> 8) % 16) {
                (true, 0) => sign | mant.max(1),              // denormal
                (true, 1) => sign,                            // ±0
                (true, 2) => sign | ((127 + 60) << 7) | mant, // large
                (true, 3) => sign | ((127 + 30 + (r >> 20) % 30) as u16) << 7 | mant,
                _ => sign | ((119 + (r >> 12) % 17) as u16) << 7 | mant,
            };
            out.extend_from_slice(&bits.to_le_bytes());
        }
        out
    }

    fn widen(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
            .collect()
    }

    fn xs(rng: &mut SplitMix64, count: usize, scale: f32) -> Vec<f32> {
        (0..count)
            .map(|i| {
                if i % 29 == 7 {
                    0.0
                } else {
                    (rng.next_f32() * 2.0 - 1.0) * scale
                }
            })
            .collect()
    }

    /// Dequantized rows through the codec (f32).
    fn dequant(blocks: &[u8], scales: &[u8], inp: usize) -> Vec<f32> {
        let mut w = vec![0f32; scales.len() * GROUP];
        dequantize_into(blocks, scales, &mut w);
        assert_eq!(w.len() % inp, 0);
        w
    }

    /// The same values in f64 through the codec, without its f32 overflow: a group with a
    /// scale ≥ 128 is decoded at scale s − 64 and multiplied by 2^64 (exact), so 6·2^127 stays
    /// finite as the kernels' dot products do.
    fn dequant64(blocks: &[u8], scales: &[u8]) -> Vec<f64> {
        let mut out = Vec::with_capacity(scales.len() * GROUP);
        let mut w = [0f32; GROUP];
        for (b16, &s) in blocks.chunks_exact(GROUP_BYTES).zip(scales) {
            let (s, mul) = if s >= 128 {
                (s - 64, 2f64.powi(64))
            } else {
                (s, 1.0)
            };
            dequantize_into(b16, &[s], &mut w);
            out.extend(w.iter().map(|&v| v as f64 * mul));
        }
        out
    }

    /// `[(y, Σ|x·w|)]` in f64 for output rows r0..r0+n, indexed `t·n + i`.
    fn reference(
        w: &[f64],
        inp: usize,
        map: &impl RowMap,
        (r0, n): (usize, usize),
        x: &[f32],
        m: usize,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for t in 0..m {
            for i in 0..n {
                let r = map.row(r0 + i);
                let (mut y, mut s) = (0f64, 0f64);
                for k in 0..inp {
                    let p = x[t * inp + k] as f64 * w[r * inp + k];
                    y += p;
                    s += p.abs();
                }
                out.push((y, s));
            }
        }
        out
    }

    /// Runs `f(y_block, ldy)` on a y of `m` rows of `ldy = n + 3` with the block at column 2,
    /// checks the other columns kept their sentinel, returns the block as `[t·n + i]`.
    fn with_y(m: usize, n: usize, f: impl FnOnce(&mut [f32], usize)) -> Vec<f32> {
        let (c0, ldy) = (2, n + 3);
        let mut buf = vec![SENTINEL; c0 + m * ldy + 1];
        f(&mut buf[c0..], ldy);
        let mut out = Vec::with_capacity(m * n);
        for (j, &v) in buf.iter().enumerate() {
            let inside = j >= c0 && (j - c0) / ldy < m && (j - c0) % ldy < n;
            if inside {
                out.push(v);
            } else {
                assert_eq!(
                    v.to_bits(),
                    SENTINEL.to_bits(),
                    "y[{j}] outside the block written"
                );
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[(f64, f64)], what: &str) {
        assert_eq!(got.len(), want.len());
        for (j, (&g, &(y, s))) in got.iter().zip(want).enumerate() {
            // 1e-5 of Σ|x·w| (the brief's bound), plus the f32 subnormal spacing for results
            // that sit there.
            let tol = 1e-5 * s + 1e-42;
            assert!(
                g.is_finite() && (g as f64 - y).abs() <= tol,
                "{what} [{j}]: got {g:e}, want {y:e} (Σ|x·w| {s:e})"
            );
        }
    }

    /// Output row ranges to try for a matrix of `rows` rows.
    fn ranges(rows: usize) -> Vec<(usize, usize)> {
        let mut out = vec![(0, rows)];
        if rows >= 3 {
            out.push((1, rows - 2));
        }
        if rows >= 37 {
            out.push((5, 20));
        }
        out
    }

    fn maps_do(rows: usize, mut f: impl FnMut(&(dyn Fn(usize) -> usize + Sync), &str)) {
        f(&|i| Identity.row(i), "identity");
        let d = Deinterleave {
            half: rows.div_ceil(2),
        };
        f(&|i| d.row(i), "deinterleave");
    }

    /// A `RowMap` from a closure (lets one test loop over both maps).
    struct FnMap<'a>(&'a (dyn Fn(usize) -> usize + Sync));
    impl RowMap for FnMap<'_> {
        fn row(&self, i: usize) -> usize {
            (self.0)(i)
        }
    }

    #[test]
    fn tables_match_the_codec() {
        for s in 0..=255u8 {
            assert_eq!(
                HALF_SCALE[s as usize].to_bits(),
                (e8m0(s) * 0.5).to_bits(),
                "HALF_SCALE[{s}]"
            );
            #[cfg(target_arch = "x86_64")]
            if s < 255 {
                assert_eq!(
                    TOP_SCALE[s as usize] as f64,
                    e8m0(s) as f64 * 0.5 * 2f64.powi(-21),
                    "TOP_SCALE[{s}]"
                );
            }
        }
        for (i, &v) in FP4_VALUES.iter().enumerate() {
            assert_eq!(LUT_X2[i] as f32, 2.0 * v, "LUT_X2[{i}]");
        }
    }

    #[test]
    fn row_maps() {
        assert_eq!(
            (0..4).map(|i| Identity.row(i)).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let d = Deinterleave { half: 3 };
        assert_eq!(
            (0..6).map(|i| d.row(i)).collect::<Vec<_>>(),
            [0, 2, 4, 1, 3, 5]
        );
    }

    #[test]
    fn bf16_rows_widen_exactly() {
        let mut rng = SplitMix64::new(11);
        for rows in [1, 3, 37] {
            for inp in [7, 32, 45, 96, 2880] {
                // An odd byte offset: the kernels must not rely on 2-byte alignment.
                let mut store = vec![0u8; 1];
                store.extend(bf16_bytes(&mut rng, rows * inp, true));
                store.extend_from_slice(&[0x7f, 0x7f, 0x80, 0xff, 0x01, 0x00, 0x01, 0x80]);
                let w = &store[1..1 + 2 * rows * inp];
                let wf = widen(w);
                for (r0, n) in ranges(rows) {
                    maps_do(rows, |f, name| {
                        let map = FnMap(f);
                        for isa in available() {
                            let mut out = vec![SENTINEL; n * inp + 1];
                            bf16_rows_on(isa, w, inp, &map, (r0, n), &mut out);
                            for i in 0..n {
                                let r = map.row(r0 + i);
                                for k in 0..inp {
                                    assert_eq!(
                                        out[i * inp + k].to_bits(),
                                        wf[r * inp + k].to_bits(),
                                        "{isa:?} {name} rows {rows} inp {inp} ({r0},{n}) [{i},{k}]"
                                    );
                                }
                            }
                            assert_eq!(out[n * inp], SENTINEL);
                        }
                    });
                }
            }
        }
        // Extremes: largest finite, ±inf, NaN, smallest denormals.
        let w: Vec<u8> = [
            0x7f7fu16, 0xff7f, 0x7f80, 0xff80, 0x7fc1, 0x0001, 0x8001, 0x0000,
        ]
        .iter()
        .flat_map(|b| b.to_le_bytes())
        .collect();
        for isa in available() {
            let mut out = vec![0f32; 8];
            bf16_rows_on(isa, &w, 8, &Identity, (0, 1), &mut out);
            let want = widen(&w);
            for (o, v) in out.iter().zip(&want) {
                assert_eq!(o.to_bits(), v.to_bits(), "{isa:?}");
            }
        }
    }

    #[test]
    fn mxfp4_rows_dequantize_exactly() {
        let mut rng = SplitMix64::new(12);
        let special = [0u8, 1, 2, 127, 140, 254];
        for rows in [1, 3, 37] {
            for inp in [32, 64, 96, 2880] {
                let g = inp / GROUP;
                let blocks: Vec<u8> = (0..rows * g * 16).map(|_| rng.next_u64() as u8).collect();
                let scales: Vec<u8> = (0..rows * g)
                    .map(|j| {
                        if j % 3 == 0 {
                            special[(j / 3) % special.len()]
                        } else {
                            rng.next_u64() as u8 % 255
                        }
                    })
                    .collect();
                let wf = dequant(&blocks, &scales, inp);
                for (r0, n) in ranges(rows) {
                    maps_do(rows, |f, name| {
                        let map = FnMap(f);
                        for isa in available() {
                            let mut out = vec![SENTINEL; n * inp + 1];
                            mxfp4_rows_on(isa, &blocks, &scales, inp, &map, (r0, n), &mut out);
                            for i in 0..n {
                                let r = map.row(r0 + i);
                                for k in 0..inp {
                                    // `==`: a stored -0 may come back as +0.
                                    assert!(
                                        out[i * inp + k] == wf[r * inp + k],
                                        "{isa:?} {name} rows {rows} inp {inp} ({r0},{n}) [{i},{k}]: {} vs {}",
                                        out[i * inp + k],
                                        wf[r * inp + k]
                                    );
                                }
                            }
                            assert_eq!(out[n * inp], SENTINEL);
                        }
                    });
                }
            }
        }
    }

    /// Every ISA against the f64 reference over rows × inp × m × maps × row ranges, with y
    /// written into a column block of a wider matrix.
    fn check_bf16_xwt(w: &[u8], rows: usize, inp: usize, x_scale: f32, seed: u64) {
        let wf: Vec<f64> = widen(w).into_iter().map(f64::from).collect();
        let mut rng = SplitMix64::new(seed);
        for m in [1, 2, 3, 5, 9] {
            let x = xs(&mut rng, m * inp, x_scale);
            for (r0, n) in ranges(rows) {
                maps_do(rows, |f, name| {
                    let map = FnMap(f);
                    let want = reference(&wf, inp, &map, (r0, n), &x, m);
                    for isa in available() {
                        let got = with_y(m, n, |y, ldy| {
                            bf16_xwt_on(isa, w, inp, &map, (r0, n), &x, m, y, ldy)
                        });
                        let what =
                            format!("bf16 {isa:?} {name} rows {rows} inp {inp} m {m} ({r0},{n})");
                        assert_close(&got, &want, &what);
                    }
                });
            }
        }
    }

    #[test]
    fn bf16_xwt_matches_reference() {
        let mut rng = SplitMix64::new(21);
        for rows in [1, 3, 37] {
            for inp in [7, 32, 45, 64, 96, 2880] {
                let mut store = vec![0u8; 1];
                store.extend(bf16_bytes(&mut rng, rows * inp, true));
                check_bf16_xwt(&store[1..], rows, inp, 1.0, rng.next_u64());
            }
        }
    }

    #[test]
    fn bf16_xwt_extreme_values() {
        let mut rng = SplitMix64::new(22);
        let (rows, inp) = (5, 96);
        // All denormal weights: products are normal only with x ~ 2^120.
        let w: Vec<u8> = (0..rows * inp)
            .flat_map(|_| {
                let r = rng.next_u64();
                ((((r >> 63) as u16) << 15) | ((r & 0x7f) as u16).max(1)).to_le_bytes()
            })
            .collect();
        check_bf16_xwt(&w, rows, inp, 2f32.powi(120), 1);
        // Weights near the top of the range with x ~ 2^-100.
        let w: Vec<u8> = (0..rows * inp)
            .flat_map(|_| {
                let r = rng.next_u64();
                let bits = (((r >> 63) as u16) << 15)
                    | ((250 + (r >> 8) % 4) as u16) << 7
                    | (r & 0x7f) as u16;
                bits.to_le_bytes()
            })
            .collect();
        check_bf16_xwt(&w, rows, inp, 2f32.powi(-100), 2);
    }

    /// MXFP4 weights with scales drawn from `scales` and x of magnitude `x_scale` (the three
    /// regimes keep the exact result inside f32's range).
    fn check_mxfp4_xwt(regime: &[u8], x_scale: f32, seed: u64) {
        let mut rng = SplitMix64::new(seed);
        for rows in [1, 3, 37] {
            for inp in [32, 64, 96, 2880] {
                let g = inp / GROUP;
                let blocks: Vec<u8> = (0..rows * g * 16).map(|_| rng.next_u64() as u8).collect();
                let scales: Vec<u8> = (0..rows * g)
                    .map(|_| regime[rng.below(regime.len() as u64) as usize])
                    .collect();
                let wf = dequant64(&blocks, &scales);
                for m in [1, 2, 3, 5, 9] {
                    let x = xs(&mut rng, m * inp, x_scale);
                    for (r0, n) in ranges(rows) {
                        maps_do(rows, |f, name| {
                            let map = FnMap(f);
                            let want = reference(&wf, inp, &map, (r0, n), &x, m);
                            for isa in available() {
                                let got = with_y(m, n, |y, ldy| {
                                    mxfp4_xwt_on(
                                        isa,
                                        &blocks,
                                        &scales,
                                        inp,
                                        &map,
                                        (r0, n),
                                        &x,
                                        m,
                                        y,
                                        ldy,
                                    )
                                });
                                let what = format!(
                                    "mxfp4 {isa:?} {name} rows {rows} inp {inp} m {m} ({r0},{n}) x~{x_scale:e}"
                                );
                                assert_close(&got, &want, &what);
                            }
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn mxfp4_xwt_matches_reference() {
        let mid: Vec<u8> = [127u8, 140].into_iter().chain(118..=136).collect();
        check_mxfp4_xwt(&mid, 1.0, 31);
    }

    #[test]
    fn mxfp4_xwt_extreme_scales() {
        // Smallest scales (2^-127 is a subnormal f32) against x ~ 2^90, largest against 2^-120.
        check_mxfp4_xwt(&[0, 1, 2, 3, 10], 2f32.powi(90), 32);
        check_mxfp4_xwt(&[254, 253, 250, 240], 2f32.powi(-120), 33);
    }

    /// A row's result does not depend on m, on how rows are split between calls, or on the call.
    #[test]
    fn deterministic_across_m_and_row_splits() {
        let mut rng = SplitMix64::new(41);
        let (rows, inp, m) = (37, 2880, 9);
        let w = bf16_bytes(&mut rng, rows * inp, false);
        let g = inp / GROUP;
        let blocks: Vec<u8> = (0..rows * g * 16).map(|_| rng.next_u64() as u8).collect();
        let scales: Vec<u8> = (0..rows * g).map(|_| 115 + rng.below(20) as u8).collect();
        let x = xs(&mut rng, m * inp, 1.0);
        let d = Deinterleave { half: 19 };
        for isa in available() {
            type Run<'a> = Box<dyn Fn((usize, usize), &[f32], usize, &mut [f32], usize) + 'a>;
            let runs: [(&str, Run); 2] = [
                (
                    "bf16",
                    Box::new(|rr, x, m, y, ldy| bf16_xwt_on(isa, &w, inp, &d, rr, x, m, y, ldy)),
                ),
                (
                    "mxfp4",
                    Box::new(|rr, x, m, y, ldy| {
                        mxfp4_xwt_on(isa, &blocks, &scales, inp, &d, rr, x, m, y, ldy)
                    }),
                ),
            ];
            for (name, run) in runs.iter() {
                let mut full = vec![0f32; m * rows];
                run((0, rows), &x, m, &mut full, rows);
                let mut again = vec![0f32; m * rows];
                run((0, rows), &x, m, &mut again, rows);
                let mut split = vec![0f32; m * rows];
                for (a, b) in [(0, 5), (5, 17), (17, 18), (18, 37)] {
                    run((a, b - a), &x, m, &mut split[a..], rows);
                }
                for t in 0..m {
                    let mut one = vec![0f32; rows];
                    run((0, rows), &x[t * inp..(t + 1) * inp], 1, &mut one, rows);
                    for (i, one_i) in one.iter().enumerate() {
                        let j = t * rows + i;
                        assert_eq!(
                            full[j].to_bits(),
                            again[j].to_bits(),
                            "{name} {isa:?} repeat"
                        );
                        assert_eq!(
                            full[j].to_bits(),
                            split[j].to_bits(),
                            "{name} {isa:?} split"
                        );
                        assert_eq!(
                            full[j].to_bits(),
                            one_i.to_bits(),
                            "{name} {isa:?} m=1 [{t},{i}]"
                        );
                    }
                }
            }
        }
    }

    /// The `_scalar` entry points against the dispatched (SIMD here) ones.
    #[test]
    fn scalar_fallback_agrees_with_simd() {
        let mut rng = SplitMix64::new(51);
        let (rows, inp, m) = (37, 2880, 3);
        let map = Deinterleave { half: 19 };
        let w = bf16_bytes(&mut rng, rows * inp, true);
        let g = inp / GROUP;
        let blocks: Vec<u8> = (0..rows * g * 16).map(|_| rng.next_u64() as u8).collect();
        let scales: Vec<u8> = (0..rows * g).map(|_| 110 + rng.below(30) as u8).collect();
        let x = xs(&mut rng, m * inp, 1.0);
        let range = (3, 30);
        println!("dispatched ISA: {:?}", isa());

        let (mut a, mut b) = (vec![0f32; m * 30], vec![0f32; m * 30]);
        bf16_xwt_scalar(&w, inp, &map, range, &x, m, &mut a, 30);
        bf16_xwt(&w, inp, &map, range, &x, m, &mut b, 30);
        let wf: Vec<f64> = widen(&w).into_iter().map(f64::from).collect();
        let want = reference(&wf, inp, &map, range, &x, m);
        assert_close(&a, &want, "bf16 scalar");
        assert_close(&b, &want, "bf16 dispatched");

        mxfp4_xwt_scalar(&blocks, &scales, inp, &map, range, &x, m, &mut a, 30);
        mxfp4_xwt(&blocks, &scales, inp, &map, range, &x, m, &mut b, 30);
        let want = reference(&dequant64(&blocks, &scales), inp, &map, range, &x, m);
        assert_close(&a, &want, "mxfp4 scalar");
        assert_close(&b, &want, "mxfp4 dispatched");

        let (mut a, mut b) = (vec![0f32; 30 * inp], vec![0f32; 30 * inp]);
        bf16_rows_scalar(&w, inp, &map, range, &mut a);
        bf16_rows(&w, inp, &map, range, &mut b);
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()));
        mxfp4_rows_scalar(&blocks, &scales, inp, &map, range, &mut a);
        mxfp4_rows(&blocks, &scales, inp, &map, range, &mut b);
        assert!(a.iter().zip(&b).all(|(p, q)| p == q));
    }

    #[test]
    fn empty_calls_touch_nothing() {
        let w = vec![0u8; 2 * 64];
        let mut y = [SENTINEL; 4];
        bf16_xwt(&w, 32, &Identity, (0, 0), &[1.0; 32], 1, &mut y, 4);
        bf16_xwt(&w, 32, &Identity, (0, 2), &[], 0, &mut y, 4);
        assert!(y.iter().all(|v| *v == SENTINEL));
    }

    #[test]
    #[should_panic(expected = "maps to stored row")]
    fn mapped_row_past_the_matrix_panics() {
        let w = vec![0u8; 2 * 4 * 32];
        let mut y = [0f32; 3];
        bf16_xwt(&w, 32, &Identity, (2, 3), &[0.0; 32], 1, &mut y, 3);
    }

    #[test]
    #[should_panic(expected = "not a positive multiple of 32")]
    fn mxfp4_row_length_must_be_whole_groups() {
        let mut out = [0f32; 48];
        mxfp4_rows(&[0u8; 24], &[0u8; 1], 48, &Identity, (0, 1), &mut out);
    }

    #[test]
    #[should_panic(expected = "x holds")]
    fn short_x_panics() {
        let mut y = [0f32; 2];
        mxfp4_xwt(
            &[0u8; 16],
            &[0u8; 1],
            32,
            &Identity,
            (0, 1),
            &[0.0; 32],
            2,
            &mut y,
            1,
        );
    }

    #[test]
    #[should_panic(expected = "y holds")]
    fn short_y_panics() {
        let mut y = [0f32; 4];
        bf16_xwt(&[0u8; 128], 32, &Identity, (0, 2), &[0.0; 64], 2, &mut y, 3);
    }

    /// GB/s of weight bytes at m = 1 on a [5760, 2880] matrix (gpt-oss-20b's gate_up), one
    /// thread, rotating over copies that together exceed the last-level cache. Run with
    /// `cargo test -p osstune-model --release --lib matvec::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_m1_gbps() {
        use std::time::Instant;
        let (rows, inp) = (5760, 2880);
        let g = inp / GROUP;
        let mut rng = SplitMix64::new(61);
        let bf: Vec<Vec<u8>> = (0..3)
            .map(|_| bf16_bytes(&mut rng, rows * inp, false))
            .collect();
        let blocks: Vec<Vec<u8>> = (0..8)
            .map(|_| (0..rows * g * 16).map(|_| rng.next_u64() as u8).collect())
            .collect();
        let scales: Vec<Vec<u8>> = (0..8)
            .map(|_| (0..rows * g).map(|_| 115 + rng.below(12) as u8).collect())
            .collect();
        let x = xs(&mut rng, inp, 1.0);
        let mut y = vec![0f32; rows];
        let mut tile = vec![0f32; 64 * inp];
        let best = |passes: usize, f: &mut dyn FnMut(usize)| {
            (0..passes)
                .map(|p| {
                    let t = Instant::now();
                    f(p);
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let (bf_bytes, fp4_bytes) = ((rows * inp * 2) as f64, (rows * g * 17) as f64);
        println!("[{rows}, {inp}], m = 1, one thread, GB/s of stored weight bytes:");
        for isa in available() {
            let t = best(9, &mut |p| {
                bf16_xwt_on(
                    isa,
                    &bf[p % 3],
                    inp,
                    &Identity,
                    (0, rows),
                    &x,
                    1,
                    &mut y,
                    rows,
                )
            });
            let t2 = best(16, &mut |p| {
                let c = p % 8;
                mxfp4_xwt_on(
                    isa,
                    &blocks[c],
                    &scales[c],
                    inp,
                    &Identity,
                    (0, rows),
                    &x,
                    1,
                    &mut y,
                    rows,
                )
            });
            let t3 = best(6, &mut |p| {
                for r0 in (0..rows).step_by(64) {
                    bf16_rows_on(isa, &bf[p % 3], inp, &Identity, (r0, 64), &mut tile);
                }
            });
            let t4 = best(8, &mut |p| {
                let c = p % 8;
                for r0 in (0..rows).step_by(64) {
                    mxfp4_rows_on(
                        isa,
                        &blocks[c],
                        &scales[c],
                        inp,
                        &Identity,
                        (r0, 64),
                        &mut tile,
                    );
                }
            });
            println!(
                "  {isa:?}: bf16_xwt {:.2}, mxfp4_xwt {:.2}, bf16_rows {:.2}, mxfp4_rows {:.2}",
                bf_bytes / t / 1e9,
                fp4_bytes / t2 / 1e9,
                bf_bytes / t3 / 1e9,
                fp4_bytes / t4 / 1e9
            );
        }
        std::hint::black_box((&y, &tile));
    }
}
