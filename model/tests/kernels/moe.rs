//! The MoE ops of the harness: dispatch, combine and the whole expert half, against their
//! references, on routings with one expert hit by every token and experts hit by none.

use super::{assert_grads, devices, expect_kernel, probe_grads, randn, var};
use crate::common::max_abs;
use candle_core::{DType, Device, Tensor, Var};
use osstune_model::kernels::{self, moe::moe_experts_reference, reference, ExpertLora, Experts};
use osstune_model::quant::experts::ExpertMat;

/// Rows in "expert order": the N·k routing slots shuffled by the permutation i ↦ (i·mul + add)
/// mod N·k (mul coprime to N·k), and each row's token.
fn expert_order(n: usize, k: usize, mul: u32, add: u32) -> (Vec<u32>, Vec<u32>) {
    let nk = (n * k) as u32;
    let slots: Vec<u32> = (0..nk).map(|i| (i * mul + add) % nk).collect();
    let tokens = slots.iter().map(|&s| s / k as u32).collect();
    (slots, tokens)
}

#[test]
fn moe_combine_matches_reference() {
    for dev in devices() {
        let (n, k, h) = (13, 3, 10);
        let (slots, tokens) = expert_order(n, k, 17, 5);
        let y = var(&[n * k, h], 21, 1.0, &dev);
        let w = var(&[n * k], 22, 1.0, &dev);
        expect_kernel(&dev, &[y.as_tensor(), w.as_tensor()]);
        let got = kernels::combine(y.as_tensor(), w.as_tensor(), &slots, k).unwrap();
        let slot_t = Tensor::new(slots.as_slice(), &dev).unwrap();
        let tok_t = Tensor::new(tokens.as_slice(), &dev).unwrap();
        let ws = w
            .as_tensor()
            .index_select(&slot_t, 0)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let want = Tensor::zeros((n, h), DType::F32, &dev)
            .unwrap()
            .index_add(&tok_t, &y.as_tensor().broadcast_mul(&ws).unwrap(), 0)
            .unwrap();
        assert!(max_abs(&got, &want) < 1e-6);
        let lib = reference::combine(y.as_tensor(), w.as_tensor(), &slots, k).unwrap();
        assert!(max_abs(&got, &lib) < 1e-6);
        let probe = randn(&[n, h], 23, &dev);
        let (g, g_ref) = probe_grads(got, want, &probe);
        assert_grads(
            &g,
            &g_ref,
            &[("y", y.as_tensor()), ("w", w.as_tensor())],
            1e-5,
        );
        // A slot used twice is refused, not silently mis-combined.
        let mut bad = slots.clone();
        bad[1] = bad[0];
        assert!(kernels::combine(y.as_tensor(), w.as_tensor(), &bad, k).is_err());
    }
}

#[test]
fn moe_dispatch_matches_reference() {
    for dev in devices() {
        let (n, k, h) = (11, 4, 9);
        let (slots, tokens) = expert_order(n, k, 13, 7);
        let x = var(&[n, h], 31, 1.0, &dev);
        expect_kernel(&dev, &[x.as_tensor()]);
        let got = kernels::dispatch(x.as_tensor(), &slots, k).unwrap();
        let tok_t = Tensor::new(tokens.as_slice(), &dev).unwrap();
        let want = x.as_tensor().index_select(&tok_t, 0).unwrap();
        assert_eq!(max_abs(&got, &want), 0.0);
        let lib = reference::dispatch(x.as_tensor(), &slots, k).unwrap();
        assert_eq!(max_abs(&got, &lib), 0.0);
        // Each token's k rows meet different probe values, so its gradient sums k distinct
        // terms.
        let probe = randn(&[n * k, h], 32, &dev);
        let (g, g_ref) = probe_grads(got, want, &probe);
        assert_grads(&g, &g_ref, &[("x", x.as_tensor())], 1e-5);
        let mut bad = slots.clone();
        bad[2] = bad[5];
        assert!(kernels::dispatch(x.as_tensor(), &bad, k).is_err());
        assert!(kernels::dispatch(x.as_tensor(), &slots[1..], k).is_err());
    }
}

/// One MoE layer's weights: `E` experts, hidden `H`, intermediate `I`.
struct Layer {
    gate_up: ExpertMat,
    gate_up_bias: Tensor,
    down: ExpertMat,
    down_bias: Tensor,
}

pub(super) const E: usize = 5;
const H: usize = 12;
const I: usize = 8;
pub(super) const K: usize = 2;

fn layer(dev: &Device) -> Layer {
    Layer {
        gate_up: ExpertMat::Dense(randn(&[E, 2 * I, H], 51, dev)),
        gate_up_bias: randn(&[E, 2 * I], 52, dev),
        down: ExpertMat::Dense(randn(&[E, H, I], 53, dev)),
        down_bias: randn(&[E, H], 54, dev),
    }
}

/// Token t's first choice is expert 0 (hit by every token), its second expert 1 or 2;
/// experts 3 and 4 get no token. Per expert: its routing slots t·k + j in token order.
pub(super) fn routing(n: usize) -> Vec<Vec<u32>> {
    let mut per_expert = vec![Vec::new(); E];
    for t in 0..n {
        per_expert[0].push((t * K) as u32);
        per_expert[1 + t % 2].push((t * K + 1) as u32);
    }
    per_expert
}

/// Adapter factors `A [E, r, in]`, `B [E, out, r]` with B non-zero.
fn adapter(r: usize, inp: usize, out: usize, seed: u64, dev: &Device) -> (Var, Var) {
    (
        var(&[E, r, inp], seed, 1.0, dev),
        var(&[E, out, r], seed + 1, 1.0, dev),
    )
}

/// How the adapters are set up in a case.
#[derive(Clone, Copy, Debug)]
enum Adapters {
    /// All three, rank 3: the fused op.
    Fused,
    /// Down at a different rank: the grouped composition.
    MixedRanks,
    /// A transformed LoRA input on gate (as LoRA dropout is): the grouped composition.
    Transformed,
    /// None: the grouped ops without LoRA.
    Absent,
}

fn moe_case(dev: &Device, n: usize, setup: Adapters) {
    let l = layer(dev);
    let x = var(&[n, H], 61, 2.0, dev);
    let w = var(&[n * K], 62, 1.0, dev);
    let down_rank = if matches!(setup, Adapters::MixedRanks) {
        2
    } else {
        3
    };
    let gate = adapter(3, H, I, 63, dev);
    let up = adapter(3, H, I, 65, dev);
    let down = adapter(down_rank, I, H, 67, dev);
    let present = !matches!(setup, Adapters::Absent);
    fn make<'a>(
        (a, b): &'a (Var, Var),
        scale: f64,
        halve: bool,
        present: bool,
    ) -> Option<ExpertLora<'a>> {
        present.then(|| ExpertLora {
            a: a.as_tensor(),
            b: b.as_tensor(),
            scale,
            input: halve.then(|| {
                Box::new(|x: &Tensor, _: &[u32]| Ok((x * 0.5)?)) as Box<kernels::LoraInput<'_>>
            }),
        })
    }
    let lora = |ab, scale, halve| make(ab, scale, halve, present);
    let transformed = matches!(setup, Adapters::Transformed);
    let experts = || Experts {
        gate_up: &l.gate_up,
        gate_up_bias: &l.gate_up_bias,
        down: &l.down,
        down_bias: &l.down_bias,
        gate_lora: lora(&gate, 2.0, transformed),
        up_lora: lora(&up, 0.5, false),
        down_lora: lora(&down, 1.5, false),
        top_k: K,
        limit: 7.0,
        alpha: 1.702,
    };
    let per_expert = routing(n);
    expect_kernel(dev, &[x.as_tensor()]);
    let (xt, wt) = (x.as_tensor(), w.as_tensor());
    let got = kernels::moe_experts(xt, wt, &per_expert, &experts()).unwrap();
    let want = moe_experts_reference(xt, wt, &per_expert, &experts()).unwrap();
    let err = max_abs(&got, &want);
    assert!(err < 1e-5, "{setup:?}, N = {n}: forward max |Δ| {err}");

    let probe = randn(&[n, H], 69, dev);
    let (g, g_ref) = probe_grads(got, want, &probe);
    let mut vars = vec![("x", xt), ("w", wt)];
    if present {
        for (name, (a, b)) in [("gate", &gate), ("up", &up), ("down", &down)] {
            vars.push((name, a.as_tensor()));
            vars.push((name, b.as_tensor()));
        }
    }
    assert_grads(&g, &g_ref, &vars, 1e-4);
    // Experts nobody chose get no adapter gradient.
    if present {
        let da = g.get(gate.0.as_tensor()).unwrap();
        assert_eq!(super::abs_sum(&da.narrow(0, 3, 2).unwrap()), 0.0);
    }
}

#[test]
fn moe_experts_matches_reference() {
    for dev in devices() {
        for setup in [
            Adapters::Fused,
            Adapters::MixedRanks,
            Adapters::Transformed,
            Adapters::Absent,
        ] {
            moe_case(&dev, 7, setup);
            moe_case(&dev, 1, setup); // one token: experts 0 and 1 only
        }
    }
}
