//! The frozen-weight engine on weights as a checkpoint stores them: bf16 matrices read in
//! place (`Matrix::Mapped`) and MXFP4 experts in place (`ExpertMat::Packed`, HF's
//! interleaved gate/up included), through the same dispatch points the layers call, against
//! the reference composition on the same values widened to f32. Shapes cover both engine
//! regimes: 1 and 3 rows (the fused matrix–vector kernels) and 37 rows (widened tiles +
//! gemm), output rows that are not a multiple of a tile or a thread chunk, one expert hit by
//! every token and experts hit by none.

use super::moe::{routing, E, K};
use super::{assert_grads, expect_kernel, probe_grads, randn, var};
use crate::common::max_abs;
use candle_core::{DType, Device, Tensor, Var};
use osstune_model::kernels::{self, moe::moe_experts_reference, reference, ExpertLora, Experts};
use osstune_model::quant::bytes::Bytes;
use osstune_model::quant::experts::{ExpertMat, Packed, PackedPart};
use osstune_model::quant::matrix::{Matrix, Stored};

/// `t` rounded to bf16, as the stored little-endian bytes and as the f32 tensor they mean.
fn bf16_stored(t: &Tensor) -> (Matrix, Tensor) {
    let (out, inp) = t.dims2().unwrap();
    let rounded = t.to_dtype(DType::BF16).unwrap();
    let bytes: Vec<u8> = rounded
        .flatten_all()
        .unwrap()
        .to_vec1::<half::bf16>()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect();
    let m = Matrix::mapped(Bytes::from_vec(bytes), Stored::Bf16, (out, inp)).unwrap();
    (m, rounded.to_dtype(DType::F32).unwrap())
}

#[test]
fn mapped_bf16_linear_matches_reference() {
    let dev = Device::Cpu;
    // out = 70: one 64-row thread chunk and a partial one; in = 45: the kernels' scalar tails.
    let (out, inp, r) = (70, 45, 4);
    let (w, w_f32) = bf16_stored(&randn(&[out, inp], 101, &dev));
    let bias = randn(&[out], 102, &dev);
    for m in [1, 3, 37] {
        let x = var(&[m, inp], 103, 1.0, &dev);
        let a = var(&[r, inp], 104, 1.0, &dev);
        let b = var(&[out, r], 105, 1.0, &dev);
        let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
        expect_kernel(&dev, &[xt, at, bt, &bias]);
        let probe = randn(&[m, out], 106, &dev);

        let got = kernels::linear(xt, &w, Some(&bias)).unwrap();
        let want = reference::linear(xt, &w_f32, Some(&bias)).unwrap();
        let err = max_abs(&got, &want);
        assert!(err < 1e-5, "linear, m = {m}: forward max |Δ| {err}");
        let (g, g_ref) = probe_grads(got, want, &probe);
        assert_grads(&g, &g_ref, &[("x", xt)], 1e-5);

        let got = kernels::lora_linear(xt, (&w, Some(&bias)), (at, bt), 2.0).unwrap();
        let want = reference::lora_linear(xt, (&w_f32, Some(&bias)), (at, bt), 2.0).unwrap();
        let err = max_abs(&got, &want);
        assert!(err < 1e-5, "lora_linear, m = {m}: forward max |Δ| {err}");
        let (g, g_ref) = probe_grads(got, want, &probe);
        assert_grads(&g, &g_ref, &[("x", xt), ("A", at), ("B", bt)], 1e-4);
    }
}

#[test]
fn mapped_bf16_lm_head_loss_matches_reference() {
    let dev = Device::Cpu;
    // V = 70,000 in partial blocks; 1 row (the matrix–vector path) and 250 rows (tiles).
    for (rows, hd, v) in [(250, 24, 70_000), (1, 40, 301)] {
        let h = (randn(&[rows, hd], 111, &dev) * 4.0).unwrap();
        let (lm, lm_f32) = bf16_stored(&randn(&[v, hd], 112, &dev));
        let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % v) as u32).collect();
        let weights: Vec<f32> = (0..rows).map(|r| 1.0 + (r % 3) as f32).collect();
        let tw = (targets.as_slice(), weights.as_slice());
        let (loss, dh) = kernels::linear_cross_entropy(&h, &lm, tw, Some(0.37), 32).unwrap();
        let (want, dh_ref) =
            reference::linear_cross_entropy(&h, &lm_f32, tw, Some(0.37), 32).unwrap();
        assert!(
            (loss - want).abs() < 1e-5 * want.abs(),
            "rows {rows}: loss {loss} vs {want}"
        );
        let (dh, dh_ref) = (dh.unwrap(), dh_ref.unwrap());
        let err = max_abs(&dh, &dh_ref);
        assert!(err < 1e-5, "rows {rows}: dh max |Δ| {err}");
        assert!(super::abs_sum(&dh_ref) > 1e-3);
    }
}

/// Multiples of the MXFP4 group (32); `H` = 96 rows of `down` is not a multiple of 64.
const H: usize = 96;
const I: usize = 32;

/// Random MXFP4 stack `[E, rows, inp]`: any nibble, scales 2^-9 … 2^-5 (|w| ≤ 6·2^-5).
fn packed(rows: usize, inp: usize, seed: u64, interleaved: bool) -> ExpertMat {
    let groups = E * rows * inp / 32;
    let mut s = seed;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as u8
    };
    let blocks: Vec<u8> = (0..groups * 16).map(|_| next()).collect();
    let scales: Vec<u8> = (0..groups).map(|_| 118 + next() % 5).collect();
    let part = PackedPart {
        blocks: Bytes::from_vec(blocks),
        scales: Bytes::from_vec(scales),
        rows,
    };
    ExpertMat::Packed(Packed::new(vec![part], E, inp, interleaved).unwrap())
}

/// Rank-3 adapters `(A [E, r, in], B [E, out, r])` of gate, up and down.
type Adapters = [(Var, Var); 3];

/// The expert half of a layer, with the adapters when given (the fused op).
fn layer<'a>(
    (gate_up, gate_up_bias): (&'a ExpertMat, &'a Tensor),
    (down, down_bias): (&'a ExpertMat, &'a Tensor),
    lora: Option<&'a Adapters>,
) -> Experts<'a> {
    let site = |j: usize, scale| {
        lora.map(|l| ExpertLora {
            a: l[j].0.as_tensor(),
            b: l[j].1.as_tensor(),
            scale,
            input: None,
        })
    };
    Experts {
        gate_up,
        gate_up_bias,
        down,
        down_bias,
        gate_lora: site(0, 2.0),
        up_lora: site(1, 0.5),
        down_lora: site(2, 1.5),
        top_k: K,
        limit: 7.0,
        alpha: 1.702,
    }
}

#[test]
fn packed_mxfp4_experts_match_reference() {
    let dev = Device::Cpu;
    // HF's single interleaved gate_up (gate, up, gate, … rows) and a straight down.
    let gate_up = packed(2 * I, H, 121, true);
    let down = packed(H, I, 122, false);
    let dense = |m: &ExpertMat| ExpertMat::Dense(m.dense_all(DType::F32, &dev).unwrap());
    let (gate_up_ref, down_ref) = (dense(&gate_up), dense(&down));
    let gate_up_bias = randn(&[E, 2 * I], 123, &dev);
    let down_bias = randn(&[E, H], 124, &dev);
    let adapters: Adapters = [(I, H), (I, H), (H, I)].map(|(out, inp)| {
        (
            var(&[E, 3, inp], 128 + out as u64, 1.0, &dev),
            var(&[E, out, 3], 129 + inp as u64, 1.0, &dev),
        )
    });
    // 1 token: matrix–vector everywhere; 7: expert 0 takes the tile path, 1 and 2 the fused
    // kernels; 37: tiles for experts 0–2.
    for (n, lora) in [
        (1, None),
        (7, None),
        (37, None),
        (1, Some(&adapters)),
        (37, Some(&adapters)),
    ] {
        let x = var(&[n, H], 125, 2.0, &dev);
        let w = var(&[n * K], 126, 1.0, &dev);
        let (xt, wt) = (x.as_tensor(), w.as_tensor());
        expect_kernel(&dev, &[xt, wt]);
        let per_expert = routing(n);
        let got = kernels::moe_experts(
            xt,
            wt,
            &per_expert,
            &layer((&gate_up, &gate_up_bias), (&down, &down_bias), lora),
        )
        .unwrap();
        let want = moe_experts_reference(
            xt,
            wt,
            &per_expert,
            &layer((&gate_up_ref, &gate_up_bias), (&down_ref, &down_bias), lora),
        )
        .unwrap();
        let err = max_abs(&got, &want);
        assert!(err < 1e-5, "N = {n}: forward max |Δ| {err}");
        assert!(super::abs_sum(&want) > 1e-2);
        let probe = randn(&[n, H], 127, &dev);
        let (g, g_ref) = probe_grads(got, want, &probe);
        let mut vars = vec![("x", xt), ("w", wt)];
        for (a, b) in lora.into_iter().flatten() {
            vars.push(("A", a.as_tensor()));
            vars.push(("B", b.as_tensor()));
        }
        assert_grads(&g, &g_ref, &vars, 1e-4);
    }
}
