//! Fused matrix kernels over weights kept in their stored encoding: `y = x · Wᵀ` for a few
//! activation rows (decode: one token; prefill: the few tokens each expert receives) and
//! whole-row widening for the tiled GEMM of large batches, with `W` given as the raw bytes of a
//! bf16 or MXFP4 tensor.
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
//! `scale / 2` (exact: a power of two). AVX-512 looks the E2M1 values up as f32 directly
//! (`vpermps` over a 16-entry table), which halves the instructions per group. Products are
//! therefore formed from exact weights, and the only rounding is f32 accumulation (relative
//! error ~1e-7 of Σ|x·w| at these widths).
//!
//! Decode is one x row against every weight row, and at gpt-oss-20b shapes the MXFP4 kernel
//! is bound by its arithmetic, not by memory: the x86 kernels therefore run a block of weight
//! rows at once (`each_block!`: independent sums in flight, x loads shared) and prefetch the
//! next block's bytes while they work (the hardware prefetcher alone left the kernel waiting
//! on memory, at a fifth of the read bandwidth). bf16 rows run one at a time: that kernel is
//! at the read bandwidth with two threads, and more concurrent row streams slowed it.
//!
//! Dispatch: AVX-512F, AVX2 + FMA (x86-64, detected once at run time and cached), NEON
//! (aarch64), and a portable scalar fallback. The functions are pure: no threads (the caller
//! splits output rows across threads) and a fixed summation order, so a row's result depends
//! only on its weights and `x`: not on `m`, on how the rows are split, or on the call.
//! Different ISAs sum in different orders and agree to rounding.

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

/// The preferred instruction set, detected once. `OSSTUNE_KERNEL_ISA` (scalar, avx2,
/// avx512, neon) picks a lower one this CPU can run, to measure or test it on a machine that
/// has more; a value it cannot run is reported and the preferred one used.
fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let all = available();
        let best = *all.last().unwrap_or(&Isa::Scalar);
        let Ok(want) = std::env::var("OSSTUNE_KERNEL_ISA") else {
            return best;
        };
        match all.iter().find(|i| format!("{i:?}").eq_ignore_ascii_case(&want)) {
            Some(&i) => i,
            None => {
                eprintln!(
                    "warning: OSSTUNE_KERNEL_ISA={want:?} is not one this CPU runs ({all:?}); using {best:?}"
                );
                best
            }
        }
    })
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

/// Runs `$dot::<R, M>(&rows, xp, args)` (returning `[[f32; M]; R]`, by output row) over the
/// output rows of `$rs` in blocks of `R` rows sharing one pass over `x` (up to `$rmax` rows
/// for one x row, 2 for two, else 1; rows left over one at a time) and chunks of up to
/// `MAX_M` rows of `$x`, writing `$y[t*ldy + i]`. `rows[j]` is the stored row of the
/// block's row j (`rows[R..]` unused) and `xp` the chunk's first x row. Why blocks: a
/// decode product is one x row against every weight row, and R rows at a time give R
/// independent sums in flight and R weight streams for the memory system to fetch at once.
/// A kernel sums each (row, x row) pair in the same order whatever block it is in, so
/// results depend neither on m nor on the blocking.
#[allow(unused_macros)]
macro_rules! each_block {
    ($rmax:literal, $rs:expr, $x:expr, $m:expr, $y:expr, $ldy:expr, $dot:ident($($arg:expr),* $(,)?)) => {{
        let rs = $rs;
        let mut t0 = 0;
        while t0 < $m {
            let mm = ($m - t0).min(MAX_M);
            let xp = $x.as_ptr().add(t0 * rs.inp);
            let mut i = 0;
            while i < rs.n {
                let left = rs.n - i;
                let r = match mm {
                    1 if left >= $rmax => $rmax,
                    2 if $rmax >= 2 && left >= 2 => 2,
                    3 | 4 if $rmax >= 4 && left >= 2 => 2,
                    _ => 1,
                };
                let rows: [usize; 4] =
                    std::array::from_fn(|j| if j < r { rs.row(i + j) } else { 0 });
                let mut out = [[0f32; MAX_M]; 4];
                match (r, mm) {
                    (4, _) => super::put(&mut out, $dot::<4, 1>(&rows, xp, $($arg),*)),
                    (2, 1) => super::put(&mut out, $dot::<2, 1>(&rows, xp, $($arg),*)),
                    (2, 2) => super::put(&mut out, $dot::<2, 2>(&rows, xp, $($arg),*)),
                    (2, 3) => super::put(&mut out, $dot::<2, 3>(&rows, xp, $($arg),*)),
                    (2, _) => super::put(&mut out, $dot::<2, 4>(&rows, xp, $($arg),*)),
                    (_, 1) => super::put(&mut out, $dot::<1, 1>(&rows, xp, $($arg),*)),
                    (_, 2) => super::put(&mut out, $dot::<1, 2>(&rows, xp, $($arg),*)),
                    (_, 3) => super::put(&mut out, $dot::<1, 3>(&rows, xp, $($arg),*)),
                    _ => super::put(&mut out, $dot::<1, 4>(&rows, xp, $($arg),*)),
                }
                for (j, o) in out[..r].iter().enumerate() {
                    for (t, &v) in o[..mm].iter().enumerate() {
                        $y[(t0 + t) * $ldy + i + j] = v;
                    }
                }
                i += r;
            }
            t0 += mm;
        }
    }};
}

/// Copies a block's `[[f32; M]; R]` into the fixed-size buffer of `each_block!`.
#[inline(always)]
#[allow(dead_code)]
fn put<const R: usize, const M: usize>(out: &mut [[f32; MAX_M]; 4], v: [[f32; M]; R]) {
    for (o, v) in out.iter_mut().zip(v) {
        o[..M].copy_from_slice(&v);
    }
}

#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;
