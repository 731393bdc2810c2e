//! Row-major f32 GEMM on host slices (the `gemm` crate, https://docs.rs/gemm), shared by every
//! CPU kernel: explicit (row, column) strides let a kernel multiply by a transposed or
//! column-sliced operand without copying it, and the thread heuristic keeps small products
//! (and products already inside a parallel task) single-threaded.

use crate::kernels::op::num_threads;

/// How many threads one product of `work` = m·n·k multiply-adds gets.
pub(crate) fn threads(work: usize) -> gemm::Parallelism {
    let n = num_threads();
    // Inside a rayon task (`for_segments`, the fused attention's blocks) the caller already
    // keeps every thread busy: nested splitting would only add synchronisation.
    if n > 1 && work > 1 << 16 && rayon::current_thread_index().is_none() {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// dst[m×n] (row-major, += if `acc`) = beta · a[m×k] · b[k×n], with explicit (row, col)
/// strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_rs(
    dst: &mut [f32],
    acc: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    beta: f32,
) {
    gemm_ld(dst, n, acc, (m, n, k), a, a_strides, b, b_strides, beta)
}

/// `gemm_rs` into a column block of a wider row-major matrix: dst rows are `dst_rs` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_ld(
    dst: &mut [f32],
    dst_rs: usize,
    acc: bool,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && dst.len() >= (m - 1) * dst_rs + n);
    assert!(k == 0 || (a.len() > (m - 1) * a_rs + (k - 1) * a_cs));
    assert!(k == 0 || (b.len() > (k - 1) * b_rs + (n - 1) * b_cs));
    // SAFETY: every (row, col) addressed through the strides lies inside the slices, as
    // checked above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            threads(m * n * k),
        )
    }
}
