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
                x86::TOP_SCALE[s as usize] as f64,
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
            let bits =
                (((r >> 63) as u16) << 15) | ((250 + (r >> 8) % 4) as u16) << 7 | (r & 0x7f) as u16;
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
        for inp in [32, 64, 96, 128, 224, 2880] {
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
