//! The fused CPU ops (LoRA linear, masked sink softmax) against the device-generic candle-op
//! compositions they replace: same values and same gradients.

mod common;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs;
use osstune_model::arch::linear::Linear;
use osstune_model::kernels::cpu::masked_softmax::{masked_sink_softmax, CausalMask};
use osstune_model::{kernels::cpu::ops, LoraLinear};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Gradients of Σ(y ⊙ probe) for a fused result and for its reference.
fn probe_grads(got: Tensor, want: Tensor, probe: &Tensor) -> (GradStore, GradStore) {
    let grads = |y: Tensor| (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    (grads(got), grads(want))
}

#[test]
fn fused_lora_linear_matches_composition() {
    let (m, inp, out, r) = (37, 48, 40, 4);
    let w = randn(&[out, inp], 1);
    let bias = randn(&[out], 2);
    let x = Var::from_tensor(&randn(&[m, inp], 3)).unwrap();
    let a = Var::from_tensor(&randn(&[r, inp], 4)).unwrap();
    let b = Var::from_tensor(&randn(&[out, r], 5)).unwrap();
    let scale = 2.5;
    let mut lin = Linear::new(w.clone(), Some(bias.clone()));
    lin.lora = Some(LoraLinear::new(a.clone(), b.clone(), scale).unwrap());
    // Output weights so that every element of y reaches the loss differently.
    let probe = randn(&[m, out], 6);

    let y = lin.forward(x.as_tensor()).unwrap();
    let xa = x.as_tensor().matmul(&a.as_tensor().t().unwrap()).unwrap();
    let delta = (xa.matmul(&b.as_tensor().t().unwrap()).unwrap() * scale).unwrap();
    let base = x
        .as_tensor()
        .matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(&bias)
        .unwrap();
    let y_ref = (base + delta).unwrap();
    assert!(
        max_abs(&y, &y_ref) < 1e-5,
        "forward {}",
        max_abs(&y, &y_ref)
    );

    let (g, g_ref) = probe_grads(y, y_ref, &probe);
    for (what, v) in [("x", &x), ("A", &a), ("B", &b)] {
        let (got, want) = (
            g.get(v.as_tensor()).unwrap(),
            g_ref.get(v.as_tensor()).unwrap(),
        );
        let err = max_abs(got, want);
        assert!(err < 1e-4, "d{what}: {err}");
        // Not trivially zero.
        assert!(
            want.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-2
        );
    }
}

fn masked_case(t: usize, tk: usize, q0: usize, window: Option<usize>) {
    let (bsz, h) = (2, 3);
    let k0 = q0 + t - tk;
    let scores = Var::from_tensor(&(randn(&[bsz, h, t, tk], 7) * 4.0).unwrap()).unwrap();
    let sinks = randn(&[h], 8);
    let mask = CausalMask { q0, k0, window };
    let p = masked_sink_softmax(scores.as_tensor(), &sinks, mask).unwrap();
    let add = mask.additive(t, tk, DType::F32, &Device::Cpu).unwrap();
    let masked = match add {
        Some(m) => scores.as_tensor().broadcast_add(&m).unwrap(),
        None => scores.as_tensor().clone(),
    };
    // The composed reference: sink column appended, plain softmax, column dropped.
    let col = sinks
        .reshape((1, h, 1, 1))
        .unwrap()
        .broadcast_as((bsz, h, t, 1))
        .unwrap()
        .contiguous()
        .unwrap();
    let all = Tensor::cat(&[&masked, &col], 3).unwrap();
    let p_ref = candle_nn::ops::softmax(&all, 3)
        .unwrap()
        .narrow(3, 0, tk)
        .unwrap();
    assert!(
        max_abs(&p, &p_ref) < 1e-6,
        "forward {}",
        max_abs(&p, &p_ref)
    );
    // Also the device-generic composition on the masked scores.
    let p_old = ops::sink_softmax(&masked, &sinks).unwrap();
    assert!(max_abs(&p, &p_old) < 1e-6);

    let probe = randn(&[bsz, h, t, tk], 9);
    let (g, g_ref) = probe_grads(p, p_ref, &probe);
    let (got, want) = (
        g.get(scores.as_tensor()).unwrap(),
        g_ref.get(scores.as_tensor()).unwrap(),
    );
    assert!(max_abs(got, want) < 1e-5, "backward {}", max_abs(got, want));
    assert!(
        want.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 1e-2
    );
}

#[test]
fn masked_sink_softmax_matches_composition() {
    masked_case(9, 9, 0, None); // prefill, causal
    masked_case(9, 9, 0, Some(4)); // prefill, sliding
    masked_case(3, 12, 9, None); // cached decode, causal
    masked_case(3, 5, 9, Some(5)); // cached decode, window-trimmed keys
    masked_case(2, 7, 30, Some(3)); // keys beyond the window on the left
}

#[test]
fn causal_mask_ranges() {
    let m = CausalMask {
        q0: 0,
        k0: 0,
        window: Some(3),
    };
    assert_eq!(m.range(0, 8), (0, 1));
    assert_eq!(m.range(2, 8), (0, 3));
    assert_eq!(m.range(5, 8), (3, 6));
    let c = CausalMask {
        q0: 10,
        k0: 8,
        window: None,
    };
    assert_eq!(c.range(0, 4), (0, 3));
    assert_eq!(c.range(1, 4), (0, 4));
}

/// The composed attention core: heads split, RoPE, GQA by repeating K/V, masked sink softmax.
fn attention_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (cos, sin): (&Tensor, &Tensor),
    sinks: &Tensor,
    (hq, hkv, d): (usize, usize, usize),
    window: Option<usize>,
) -> Tensor {
    let (b, t, _) = q.dims3().unwrap();
    let heads = |x: &Tensor, n: usize| {
        x.reshape((b, t, n, d))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let q = ops::rope(&heads(q, hq), cos, sin).unwrap();
    let k = ops::rope(&heads(k, hkv), cos, sin).unwrap();
    let v = heads(v, hkv);
    let idx: Vec<u32> = (0..hq).map(|h| (h / (hq / hkv)) as u32).collect();
    let idx = Tensor::new(idx.as_slice(), &Device::Cpu).unwrap();
    let k = k.index_select(&idx, 1).unwrap();
    let v = v.index_select(&idx, 1).unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let mask = CausalMask {
        q0: 0,
        k0: 0,
        window,
    };
    let p = masked_sink_softmax(&s, sinks, mask).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, hq * d))
        .unwrap()
}

fn fused_attention_case(
    b: usize,
    t: usize,
    (hq, hkv, d): (usize, usize, usize),
    window: Option<usize>,
) {
    use osstune_model::kernels::cpu::attention::try_fused_attention;
    let q = Var::from_tensor(&randn(&[b, t, hq * d], 11)).unwrap();
    let k = Var::from_tensor(&randn(&[b, t, hkv * d], 12)).unwrap();
    let v = Var::from_tensor(&randn(&[b, t, hkv * d], 13)).unwrap();
    let ang: Vec<f32> = (0..t * d / 2)
        .map(|i| (i / (d / 2)) as f32 * 0.3 / (1 + i % (d / 2)) as f32)
        .collect();
    let ang = Tensor::from_vec(ang, (t, d / 2), &Device::Cpu).unwrap();
    let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
    let sinks = (randn(&[hq], 14) * 4.0).unwrap();
    let mask = CausalMask {
        q0: 0,
        k0: 0,
        window,
    };
    let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
    // Scaled-up q so the softmax is far from uniform.
    let q4 = (qt * 4.0).unwrap();
    let got = try_fused_attention(&q4, kt, vt, &cos, &sin, &sinks, (hq, hkv, d), mask)
        .unwrap()
        .expect("fast path applies to CPU f32");
    let want = attention_reference(&q4, kt, vt, (&cos, &sin), &sinks, (hq, hkv, d), window);
    let err = max_abs(&got, &want);
    assert!(err < 2e-6, "T={t} window {window:?}: forward max |Δ| {err}");

    let probe = randn(&[b, t, hq * d], 15);
    let (g, g_ref) = probe_grads(got, want, &probe);
    for (name, x) in [("q", qt), ("k", kt), ("v", vt)] {
        let (a, e) = (g.get(x).unwrap(), g_ref.get(x).unwrap());
        let err = max_abs(a, e);
        let scale = e
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(scale > 1e-2, "{name}: reference gradient vanishes");
        assert!(
            err < 1e-5 * scale.max(1.0),
            "T={t} window {window:?}: d{name} max |Δ| {err}"
        );
    }
}

#[test]
fn fused_attention_matches_composition() {
    // Blocks of 256 score rows: T = 300 with 4 heads per KV head is 5 blocks, the last partial.
    fused_attention_case(2, 300, (8, 2, 16), None);
    fused_attention_case(2, 300, (8, 2, 16), Some(37));
    fused_attention_case(1, 9, (2, 2, 4), Some(1)); // each query sees only itself
    fused_attention_case(1, 40, (3, 1, 8), Some(200)); // window wider than the sequence
}

/// Rows in "expert order": the N·k routing slots shuffled by the permutation i ↦ (i·mul + add)
/// mod N·k (mul coprime to N·k), and each row's token.
fn expert_order(n: usize, k: usize, mul: u32, add: u32) -> (Vec<u32>, Vec<u32>) {
    let nk = (n * k) as u32;
    let slots: Vec<u32> = (0..nk).map(|i| (i * mul + add) % nk).collect();
    let tokens = slots.iter().map(|&s| s / k as u32).collect();
    (slots, tokens)
}

#[test]
fn moe_combine_matches_composition() {
    use osstune_model::kernels::cpu::routing::combine;
    let (n, k, h) = (13, 3, 10);
    let (slots, tokens) = expert_order(n, k, 17, 5);
    let y = Var::from_tensor(&randn(&[n * k, h], 21)).unwrap();
    let w = Var::from_tensor(&randn(&[n * k], 22)).unwrap();
    let got = combine(y.as_tensor(), w.as_tensor(), &slots, k).unwrap();
    let dev = Device::Cpu;
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
    let probe = randn(&[n, h], 23);
    let (g, g_ref) = probe_grads(got, want, &probe);
    for x in [y.as_tensor(), w.as_tensor()] {
        let (a, e) = (g.get(x).unwrap(), g_ref.get(x).unwrap());
        assert!(max_abs(a, e) < 1e-5, "gradient max |Δ| {}", max_abs(a, e));
        assert!(
            e.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 1e-2
        );
    }
    // A slot used twice is refused, not silently mis-combined.
    let mut bad = slots.clone();
    bad[1] = bad[0];
    assert!(combine(y.as_tensor(), w.as_tensor(), &bad, k).is_err());
}

#[test]
fn moe_dispatch_matches_index_select() {
    use osstune_model::kernels::cpu::routing::dispatch;
    let (n, k, h) = (11, 4, 9);
    let (slots, tokens) = expert_order(n, k, 13, 7);
    let x = Var::from_tensor(&randn(&[n, h], 31)).unwrap();
    let got = dispatch(x.as_tensor(), &slots, k).unwrap();
    let tok_t = Tensor::new(tokens.as_slice(), &Device::Cpu).unwrap();
    let want = x.as_tensor().index_select(&tok_t, 0).unwrap();
    assert_eq!(max_abs(&got, &want), 0.0);
    // Each token's k rows meet different probe values, so its gradient sums k distinct terms.
    let probe = randn(&[n * k, h], 32);
    let (g, g_ref) = probe_grads(got, want, &probe);
    let (a, e) = (
        g.get(x.as_tensor()).unwrap(),
        g_ref.get(x.as_tensor()).unwrap(),
    );
    assert!(max_abs(a, e) < 1e-5, "gradient max |Δ| {}", max_abs(a, e));
    assert!(max_abs(e, &e.zeros_like().unwrap()) > 1e-2);
    let mut bad = slots.clone();
    bad[2] = bad[5];
    assert!(dispatch(x.as_tensor(), &bad, k).is_err());
    assert!(dispatch(x.as_tensor(), &slots[1..], k).is_err());
}
