//! Products with a frozen weight matrix `W [out, in]` in whatever storage it lies: f32 on the
//! heap, bf16/f16/f32 bytes in a checkpoint's memory map, or MXFP4 blocks (possibly with
//! HF's interleaved gate/up rows). Two products cover every use: `y = x·Wᵀ` (forward) and
//! `dx = g·W` (the input gradient; a frozen weight gets none of its own).
//!
//! Why one engine: at gpt-oss-20b shapes the weights are 13 GB and must stay where they lie,
//! so nothing may widen a whole matrix to f32. Three regimes:
//! - f32 on the heap: the `gemm` crate reads it in place;
//! - few rows of `x` (decode, small expert segments): the fused kernels of `matvec.rs` widen
//!   or dequantize each weight in registers and read every byte once (decode is
//!   memory-bandwidth bound);
//! - many rows (prefill, training): a tile of `W` rows is widened into a cache-sized scratch
//!   and multiplied with `gemm`; the widening is O(out·in) against the product's
//!   O(m·out·in).
//!
//! Threads: outside a parallel task the output rows (forward) are split across threads (on
//! `pool.rs`'s spinning workers for a decoded token, on rayon otherwise); inside one (the
//! MoE's expert segments, the loss blocks) everything runs on the calling thread.
//! Each output element is computed by one thread in a fixed order: results do not depend on
//! the thread count.

use crate::kernels::cpu::matvec::{self, Deinterleave, Identity, RowMap};
use crate::kernels::cpu::pool;
use crate::kernels::gemm::{gemm_ld, gemm_rs};
use crate::kernels::op::CResult;
use crate::quant::experts::{model_row, ExpertMat};
use crate::quant::matrix::{Matrix, Stored};
use candle_core::{CpuStorage, Storage};

/// Rows of `x` up to which the fused kernels beat tile + gemm (`osstune bench kernels --m`,
/// one and two threads, gpt-oss-20b shapes): the MXFP4 kernel dequantizes a group once for
/// four x rows and runs the same cache-resident rows again for the next four, which at
/// 8–24 rows is 1.5× the tile path (whose f32 tile costs as much as the product there); a
/// bf16 row widens in two instructions, so gemm takes over sooner.
const FUSED_ROWS_MXFP4: usize = 24;
const FUSED_ROWS_BF16: usize = 12;
/// Output rows per parallel task of the matrix–vector path.
const MATVEC_CHUNK: usize = 64;

/// Where one run of output rows is stored.
#[derive(Clone, Copy)]
pub(crate) enum Src<'a> {
    F32(&'a [f32]),
    Raw {
        bytes: &'a [u8],
        stored: Stored,
    },
    Mxfp4 {
        blocks: &'a [u8],
        scales: &'a [u8],
        interleaved: bool,
    },
}

/// Output rows `row0..row0 + rows` of the matrix, stored in `src` (its rows `0..rows`).
#[derive(Clone, Copy)]
pub(crate) struct Piece<'a> {
    pub row0: usize,
    pub rows: usize,
    pub src: Src<'a>,
}

/// A frozen `[out, in]` matrix as one or more row pieces (MLX stores gate and up apart).
pub(crate) struct Frozen<'a> {
    pub out: usize,
    pub inp: usize,
    pub pieces: Vec<Piece<'a>>,
}

/// Runs `f` on `m` as a [`Frozen`] (borrowing a heap tensor's storage for the call).
pub(crate) fn with_matrix<R>(m: &Matrix, f: impl FnOnce(&Frozen) -> CResult<R>) -> CResult<R> {
    let (out, inp) = m.out_in();
    match m {
        Matrix::Tensor(t) => {
            let (st, l) = t.storage_and_layout();
            match (&*st, l.contiguous_offsets()) {
                (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                    f(&Frozen::one(out, inp, Src::F32(&v[a..b])))
                }
                _ => candle_core::bail!("frozen matrix: expected a contiguous f32 CPU tensor"),
            }
        }
        Matrix::Mapped { bytes, stored, .. } => f(&Frozen::one(
            out,
            inp,
            Src::Raw {
                bytes: bytes.as_slice(),
                stored: *stored,
            },
        )),
    }
}

/// Runs `f` on expert `e` of `mat` as a [`Frozen`].
pub(crate) fn with_expert<R>(
    mat: &ExpertMat,
    e: usize,
    f: impl FnOnce(&Frozen) -> CResult<R>,
) -> CResult<R> {
    let (out, inp) = mat.out_in();
    match mat {
        ExpertMat::Dense(t) => {
            let (st, l) = t.storage_and_layout();
            match (&*st, l.contiguous_offsets()) {
                (Storage::Cpu(CpuStorage::F32(v)), Some((a, _))) => {
                    let off = a + e * out * inp;
                    f(&Frozen::one(out, inp, Src::F32(&v[off..off + out * inp])))
                }
                _ => candle_core::bail!("dense experts must be contiguous f32 on the CPU"),
            }
        }
        ExpertMat::Packed(p) => {
            let pieces = p
                .expert_parts(e)
                .map(|part| Piece {
                    row0: part.row0,
                    rows: part.rows,
                    src: Src::Mxfp4 {
                        blocks: part.blocks,
                        scales: part.scales,
                        interleaved: part.interleaved,
                    },
                })
                .collect();
            f(&Frozen { out, inp, pieces })
        }
        ExpertMat::Mxfp4 { .. } | ExpertMat::Affine { .. } => {
            let w = mat
                .expert(e, candle_core::DType::F32, &candle_core::Device::Cpu)
                .map_err(candle_core::Error::wrap)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            f(&Frozen::one(out, inp, Src::F32(&w)))
        }
    }
}

/// A piece's stored row order as one [`RowMap`] (the match runs once per row, outside the
/// kernels' inner loops).
enum Order {
    Straight,
    Deinterleaved(Deinterleave),
}

impl RowMap for Order {
    fn row(&self, i: usize) -> usize {
        match self {
            Order::Straight => Identity.row(i),
            Order::Deinterleaved(d) => d.row(i),
        }
    }
}

fn order(p: &Piece, interleaved: bool) -> Order {
    match interleaved {
        true => Order::Deinterleaved(Deinterleave { half: p.rows / 2 }),
        false => Order::Straight,
    }
}

/// A raw pointer that may cross threads: the tasks that share it write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Through a method, so closures capture the whole (Send) wrapper, not its raw field.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Whether this call may split its work across threads (not already inside a parallel task).
fn may_split() -> bool {
    crate::kernels::op::num_threads() > 1 && !pool::in_task()
}

thread_local! {
    /// A tile of widened weight rows, kept between calls (a fresh buffer per tile would be
    /// zero-filled for nothing).
    static TILE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

impl<'a> Frozen<'a> {
    pub fn one(out: usize, inp: usize, src: Src<'a>) -> Self {
        Self {
            out,
            inp,
            pieces: vec![Piece {
                row0: 0,
                rows: out,
                src,
            }],
        }
    }

    /// Widens (dequantizes) rows `r0..r0 + n` of `piece` into `dst [n, in]`: output rows, or
    /// with `stored` the rows as they lie (which differ only for interleaved gate/up).
    fn rows(&self, p: &Piece, (r0, n): (usize, usize), dst: &mut [f32], stored: bool) {
        let inp = self.inp;
        match p.src {
            Src::F32(w) => dst.copy_from_slice(&w[r0 * inp..(r0 + n) * inp]),
            Src::Raw { bytes, stored } => match stored {
                Stored::Bf16 => matvec::bf16_rows(bytes, inp, &Identity, (r0, n), dst),
                Stored::F32 => {
                    let src = &bytes[r0 * inp * 4..(r0 + n) * inp * 4];
                    for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
                Stored::F16 => {
                    let src = &bytes[r0 * inp * 2..(r0 + n) * inp * 2];
                    for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                        *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }
            },
            Src::Mxfp4 {
                blocks,
                scales,
                interleaved,
            } => matvec::mxfp4_rows(
                blocks,
                scales,
                inp,
                &order(p, interleaved && !stored),
                (r0, n),
                dst,
            ),
        }
    }

    /// `y [m, n]` (row stride n) = `x [m, in]` · stored rows `r0..r0 + n` of `piece`ᵀ with the
    /// fused kernels, if the storage has one.
    fn fused(
        &self,
        p: &Piece,
        (r0, n): (usize, usize),
        x: &[f32],
        m: usize,
        y: &mut [f32],
    ) -> bool {
        let inp = self.inp;
        match p.src {
            Src::Raw {
                bytes,
                stored: Stored::Bf16,
            } => matvec::bf16_xwt(bytes, inp, &Identity, (r0, n), x, m, y, n),
            Src::Mxfp4 { blocks, scales, .. } => {
                matvec::mxfp4_xwt(blocks, scales, inp, &Identity, (r0, n), x, m, y, n)
            }
            _ => return false,
        }
        true
    }

    /// `y [m, out]` (row stride `ldy`; `+=` if `acc`) = `x [m, in]` · Wᵀ.
    pub fn xwt(&self, x: &[f32], m: usize, y: &mut [f32], ldy: usize, acc: bool) -> CResult<()> {
        let (out, inp) = (self.out, self.inp);
        if x.len() < m * inp || ldy < out || (m > 0 && y.len() < (m - 1) * ldy + out) {
            candle_core::bail!(
                "frozen product: x {} values for [{m}, {inp}], y {} values, stride {ldy}, {out} outputs",
                x.len(),
                y.len()
            );
        }
        if m == 0 {
            return Ok(());
        }
        for p in &self.pieces {
            if let Src::F32(w) = p.src {
                gemm_ld(
                    &mut y[p.row0..],
                    ldy,
                    acc,
                    (m, p.rows, inp),
                    x,
                    (inp, 1),
                    w,
                    (1, inp),
                    1.0,
                );
                continue;
            }
            // Chunks of stored rows, each a task: fused products for few rows of x, tile +
            // gemm otherwise. Stored order, so that every task streams one contiguous run of
            // the weights (HF's interleaved gate/up rows go to their output columns on the
            // way out).
            let interleaved = matches!(
                p.src,
                Src::Mxfp4 {
                    interleaved: true,
                    ..
                }
            );
            let fused = match p.src {
                Src::Mxfp4 { .. } => m <= FUSED_ROWS_MXFP4,
                _ => m <= FUSED_ROWS_BF16,
            };
            let split = may_split();
            let chunk = if fused && !split {
                // One thread: one call over every row (the kernel reorders x once a call).
                p.rows
            } else if fused {
                MATVEC_CHUNK
            } else if m >= 64 {
                128
            } else {
                32
            };
            let n_chunks = p.rows.div_ceil(chunk);
            let yp = SharedOut(y.as_mut_ptr());
            let y_len = y.len();
            let task = |c: usize| {
                let r0 = c * chunk;
                let n = chunk.min(p.rows - r0);
                let mut part = vec![0f32; m * n];
                if !(fused && self.fused(p, (r0, n), x, m, &mut part)) {
                    let mut tile = TILE.with(|t| t.take());
                    tile.resize(n * inp, 0.0);
                    self.rows(p, (r0, n), &mut tile, true);
                    gemm_rs(
                        &mut part,
                        false,
                        (m, n, inp),
                        x,
                        (inp, 1),
                        &tile,
                        (1, inp),
                        1.0,
                    );
                    TILE.with(|t| t.replace(tile));
                }
                for t in 0..m {
                    let src = &part[t * n..(t + 1) * n];
                    if interleaved {
                        for (i, &v) in src.iter().enumerate() {
                            let col = model_row(r0 + i, p.rows, true);
                            let at = t * ldy + p.row0 + col;
                            assert!(at < y_len);
                            // SAFETY: in bounds (checked); each stored row has its own column.
                            unsafe {
                                let d = yp.ptr().add(at);
                                *d = if acc { *d + v } else { v };
                            }
                        }
                        continue;
                    }
                    let at = t * ldy + p.row0 + r0;
                    assert!(at + n <= y_len);
                    // SAFETY: in bounds (checked above); the chunks write disjoint columns.
                    let row = unsafe { std::slice::from_raw_parts_mut(yp.ptr().add(at), n) };
                    if acc {
                        row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                    } else {
                        row.copy_from_slice(src);
                    }
                }
            };
            if n_chunks > 1 && split {
                pool::run(m, n_chunks, |c| {
                    task(c);
                    Ok(())
                })?;
            } else {
                (0..n_chunks).for_each(task);
            }
        }
        Ok(())
    }

    /// `dx [m, in]` (`+=` if `acc`) = `g [m, out]` (row stride `ldg`) · W.
    pub fn gw(&self, g: &[f32], m: usize, ldg: usize, dx: &mut [f32], acc: bool) -> CResult<()> {
        let (out, inp) = (self.out, self.inp);
        if ldg < out || dx.len() < m * inp || (m > 0 && g.len() < (m - 1) * ldg + out) {
            candle_core::bail!(
                "frozen input gradient: g {} values, stride {ldg}, {out} outputs, dx {} values for [{m}, {inp}]",
                g.len(),
                dx.len()
            );
        }
        if m == 0 {
            return Ok(());
        }
        let mut acc = acc;
        for p in &self.pieces {
            let gp = &g[p.row0..];
            if let Src::F32(w) = p.src {
                gemm_rs(dx, acc, (m, inp, p.rows), gp, (ldg, 1), w, (inp, 1), 1.0);
                acc = true;
                continue;
            }
            // Tiles of rows in order (the sum over tiles is the product's k loop); the gemm
            // itself is split across threads when it is large enough.
            const TILE_ROWS: usize = 256;
            let mut tile = TILE.with(|t| t.take());
            for r0 in (0..p.rows).step_by(TILE_ROWS) {
                let n = TILE_ROWS.min(p.rows - r0);
                tile.resize(n * inp, 0.0);
                self.rows(p, (r0, n), &mut tile, false);
                gemm_rs(
                    dx,
                    acc,
                    (m, inp, n),
                    &gp[r0..],
                    (ldg, 1),
                    &tile,
                    (inp, 1),
                    1.0,
                );
                acc = true;
            }
            TILE.with(|t| t.replace(tile));
        }
        Ok(())
    }
}
