//! The kernel harness: every fused op (`osstune_model::kernels`), on every device candle was
//! built for, against its reference composition (`kernels::reference`): same values and same
//! gradients, on odd shapes (rows not a multiple of a block, a single token). On the CPU it
//! also checks the dispatch took the CPU kernel. A new backend is tested by these tests as
//! they stand: build with `--features cuda` (or `metal`) on a machine that has one.

mod common;
#[path = "kernels/moe.rs"]
mod moe;
#[path = "kernels/stored.rs"]
mod stored;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs;
use osstune_model::arch::linear::Linear;
use osstune_model::kernels::{self, reference, AttentionShape, Backend, CausalMask};
use osstune_model::Lora;

/// CPU, then every GPU the build has a backend for and the machine has.
pub fn devices() -> Vec<Device> {
    #[allow(unused_mut)]
    let mut out = vec![Device::Cpu];
    #[cfg(feature = "cuda")]
    if let Ok(d) = Device::new_cuda(0) {
        out.push(d);
    }
    #[cfg(feature = "metal")]
    if let Ok(d) = Device::new_metal(0) {
        out.push(d);
    }
    out
}

/// On the CPU the dispatch must pick the CPU kernels for these tensors (else the comparison
/// would be the reference against itself).
pub fn expect_kernel(dev: &Device, xs: &[&Tensor]) {
    if dev.is_cpu() {
        assert_eq!(kernels::backend(xs), Some(Backend::Cpu));
    }
}

/// Deterministic values in [−0.5, 0.5).
pub fn randn(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
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
    Tensor::from_vec(v, shape, dev).unwrap()
}

pub fn var(shape: &[usize], seed: u64, scale: f64, dev: &Device) -> Var {
    Var::from_tensor(&(randn(shape, seed, dev) * scale).unwrap()).unwrap()
}

/// Gradients of Σ(y ⊙ probe) for a kernel's result and for its reference.
pub fn probe_grads(got: Tensor, want: Tensor, probe: &Tensor) -> (GradStore, GradStore) {
    let grads = |y: Tensor| (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
    (grads(got), grads(want))
}

pub fn abs_sum(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Checks the gradient of every `(name, x)` agrees within `tol` (max |Δ|) and is not zero.
pub fn assert_grads(g: &GradStore, g_ref: &GradStore, xs: &[(&str, &Tensor)], tol: f32) {
    for (name, x) in xs {
        let (got, want) = (g.get(x).unwrap(), g_ref.get(x).unwrap());
        let err = max_abs(got, want);
        assert!(err < tol, "d{name}: max |Δ| {err}");
        assert!(abs_sum(want) > 1e-2, "d{name}: reference gradient vanishes");
    }
}

#[test]
fn backend_rule() {
    use candle_core::DeviceLocation;
    let dev = Device::Cpu;
    let (x, w) = (randn(&[4, 6], 1, &dev), randn(&[6, 6], 2, &dev));
    assert_eq!(kernels::backend(&[&x, &w]), Some(Backend::Cpu));
    // Not contiguous, another dtype, mixed dtypes, nothing: only the reference applies.
    assert_eq!(kernels::backend(&[&x.t().unwrap()]), None);
    let x16 = x.to_dtype(DType::BF16).unwrap();
    assert_eq!(kernels::backend(&[&x16]), None);
    assert_eq!(kernels::backend(&[&x, &x16]), None);
    assert_eq!(kernels::backend(&[]), None);
    let cuda = DeviceLocation::Cuda { gpu_id: 0 };
    assert_eq!(kernels::backend_at(cuda, DType::BF16), Some(Backend::Cuda));
    assert_eq!(kernels::backend_at(DeviceLocation::Cpu, DType::F16), None);
    // A non-contiguous input still gets the reference's values through the dispatch.
    let xt = x.t().unwrap();
    let got = kernels::softmax_last_dim(&xt).unwrap();
    let want = reference::softmax_last_dim(&xt.contiguous().unwrap()).unwrap();
    assert!(max_abs(&got, &want) < 1e-6);
}

#[test]
fn small_ops_match_reference() {
    for dev in devices() {
        for rows in [37, 1] {
            // softmax over the last axis
            let x = var(&[rows, 19], 1, 6.0, &dev);
            expect_kernel(&dev, &[x.as_tensor()]);
            let got = kernels::softmax_last_dim(x.as_tensor()).unwrap();
            let want = reference::softmax_last_dim(x.as_tensor()).unwrap();
            assert!(
                max_abs(&got, &want) < 1e-6,
                "softmax {}",
                max_abs(&got, &want)
            );
            let probe = randn(&[rows, 19], 2, &dev);
            let (g, g_ref) = probe_grads(got, want, &probe);
            assert_grads(&g, &g_ref, &[("x", x.as_tensor())], 1e-5);

            // RMSNorm
            let x = var(&[rows, 24], 3, 3.0, &dev);
            let w = randn(&[24], 4, &dev);
            expect_kernel(&dev, &[x.as_tensor(), &w]);
            let got = kernels::rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
            let want = reference::rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
            assert!(
                max_abs(&got, &want) < 1e-5,
                "rms_norm {}",
                max_abs(&got, &want)
            );
            let probe = randn(&[rows, 24], 5, &dev);
            let (g, g_ref) = probe_grads(got, want, &probe);
            assert_grads(&g, &g_ref, &[("x", x.as_tensor())], 1e-5);

            // SwiGLU, with values beyond the clamp on both sides
            let u = var(&[rows, 2 * 13], 6, 30.0, &dev);
            expect_kernel(&dev, &[u.as_tensor()]);
            let got = kernels::swiglu(u.as_tensor(), 7.0, 1.702).unwrap();
            let want = reference::swiglu(u.as_tensor(), 7.0, 1.702).unwrap();
            assert!(
                max_abs(&got, &want) < 1e-4,
                "swiglu {}",
                max_abs(&got, &want)
            );
            let probe = randn(&[rows, 13], 7, &dev);
            let (g, g_ref) = probe_grads(got, want, &probe);
            assert_grads(&g, &g_ref, &[("u", u.as_tensor())], 1e-4);

            // constant-weight linear: gradient to x only
            let x = var(&[rows, 24], 8, 1.0, &dev);
            let (w, b) = (randn(&[17, 24], 9, &dev), randn(&[17], 10, &dev));
            expect_kernel(&dev, &[x.as_tensor(), &w, &b]);
            for bias in [Some(&b), None] {
                let got = kernels::linear(x.as_tensor(), &w.clone().into(), bias).unwrap();
                let want = reference::linear(x.as_tensor(), &w, bias).unwrap();
                assert!(
                    max_abs(&got, &want) < 1e-5,
                    "linear {}",
                    max_abs(&got, &want)
                );
                let probe = randn(&[rows, 17], 11, &dev);
                let (g, g_ref) = probe_grads(got, want, &probe);
                assert_grads(&g, &g_ref, &[("x", x.as_tensor())], 1e-5);
            }
        }
    }
}

#[test]
fn rope_matches_reference() {
    for dev in devices() {
        for (b, h, t, d) in [(2, 3, 11, 8), (1, 1, 1, 4)] {
            let x = var(&[b, h, t, d], 12, 1.0, &dev);
            let ang = (randn(&[t, d / 2], 13, &dev) * 6.0).unwrap();
            let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
            expect_kernel(&dev, &[x.as_tensor(), &cos, &sin]);
            let got = kernels::rope(x.as_tensor(), &cos, &sin).unwrap();
            let want = reference::rope(x.as_tensor(), &cos, &sin).unwrap();
            assert!(max_abs(&got, &want) < 1e-6, "rope {}", max_abs(&got, &want));
            let probe = randn(&[b, h, t, d], 14, &dev);
            let (g, g_ref) = probe_grads(got, want, &probe);
            assert_grads(&g, &g_ref, &[("x", x.as_tensor())], 1e-5);
        }
    }
}

#[test]
fn lora_linear_matches_reference() {
    for dev in devices() {
        for m in [37, 1] {
            let (inp, out, r) = (48, 40, 4);
            let w = randn(&[out, inp], 1, &dev);
            let bias = randn(&[out], 2, &dev);
            let x = var(&[m, inp], 3, 1.0, &dev);
            let a = var(&[r, inp], 4, 1.0, &dev);
            let b = var(&[out, r], 5, 1.0, &dev);
            let scale = 2.5;
            expect_kernel(
                &dev,
                &[x.as_tensor(), &w, &bias, a.as_tensor(), b.as_tensor()],
            );
            let mut lin = Linear::new(w.clone(), Some(bias.clone()));
            *lin.lora_slot() = Some(Lora::new(a.clone(), b.clone(), scale).unwrap());
            // Output weights so that every element of y reaches the loss differently.
            let probe = randn(&[m, out], 6, &dev);

            // The layer goes through the dispatch.
            let y = lin.forward(x.as_tensor()).unwrap();
            let (at, bt) = (a.as_tensor(), b.as_tensor());
            let got = kernels::lora_linear(
                x.as_tensor(),
                (&w.clone().into(), Some(&bias)),
                (at, bt),
                scale,
            );
            assert_eq!(max_abs(&y, &got.unwrap()), 0.0);
            let xa = x.as_tensor().matmul(&at.t().unwrap()).unwrap();
            let delta = (xa.matmul(&bt.t().unwrap()).unwrap() * scale).unwrap();
            let base = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
            let y_ref = (base.broadcast_add(&bias).unwrap() + delta).unwrap();
            let y_lib =
                reference::lora_linear(x.as_tensor(), (&w, Some(&bias)), (at, bt), scale).unwrap();
            assert!(max_abs(&y_lib, &y_ref) < 1e-5);
            assert!(
                max_abs(&y, &y_ref) < 1e-5,
                "forward {}",
                max_abs(&y, &y_ref)
            );

            let (g, g_ref) = probe_grads(y, y_ref, &probe);
            assert_grads(
                &g,
                &g_ref,
                &[("x", x.as_tensor()), ("A", at), ("B", bt)],
                1e-4,
            );
        }
    }
}

fn masked_case(dev: &Device, t: usize, tk: usize, q0: usize, window: Option<usize>) {
    let (bsz, h) = (2, 3);
    let k0 = q0 + t - tk;
    let scores = var(&[bsz, h, t, tk], 7, 4.0, dev);
    let sinks = randn(&[h], 8, dev);
    expect_kernel(dev, &[scores.as_tensor(), &sinks]);
    let mask = CausalMask { q0, k0, window };
    let p = kernels::masked_sink_softmax(scores.as_tensor(), &sinks, mask).unwrap();
    let add = mask.additive(t, tk, DType::F32, dev).unwrap();
    let masked = match add {
        Some(m) => scores.as_tensor().broadcast_add(&m).unwrap(),
        None => scores.as_tensor().clone(),
    };
    // An independent composition: sink column appended, plain softmax, column dropped.
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
    // The library's reference, on the masked and on the unmasked scores.
    let p_old = reference::sink_softmax(&masked, &sinks).unwrap();
    assert!(max_abs(&p, &p_old) < 1e-6);
    let p_lib = reference::masked_sink_softmax(scores.as_tensor(), &sinks, mask).unwrap();
    assert!(max_abs(&p, &p_lib) < 1e-6);

    let probe = randn(&[bsz, h, t, tk], 9, dev);
    let (g, g_ref) = probe_grads(p, p_ref, &probe);
    assert_grads(&g, &g_ref, &[("scores", scores.as_tensor())], 1e-5);
}

#[test]
fn masked_sink_softmax_matches_reference() {
    for dev in devices() {
        masked_case(&dev, 9, 9, 0, None); // prefill, causal
        masked_case(&dev, 9, 9, 0, Some(4)); // prefill, sliding
        masked_case(&dev, 3, 12, 9, None); // cached decode, causal
        masked_case(&dev, 3, 5, 9, Some(5)); // cached decode, window-trimmed keys
        masked_case(&dev, 2, 7, 30, Some(3)); // keys beyond the window on the left
        masked_case(&dev, 1, 1, 0, None); // one token
    }
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

/// An independent attention composition: heads split, RoPE, GQA by repeating K/V, masked
/// sink softmax.
fn attention_by_repeat(
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
    let q = reference::rope(&heads(q, hq), cos, sin).unwrap();
    let k = reference::rope(&heads(k, hkv), cos, sin).unwrap();
    let v = heads(v, hkv);
    let idx: Vec<u32> = (0..hq).map(|h| (h / (hq / hkv)) as u32).collect();
    let idx = Tensor::new(idx.as_slice(), q.device()).unwrap();
    let k = k.index_select(&idx, 1).unwrap();
    let v = v.index_select(&idx, 1).unwrap();
    let s = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let mask = CausalMask {
        q0: 0,
        k0: 0,
        window,
    };
    let p = reference::masked_sink_softmax(&s, sinks, mask).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, hq * d))
        .unwrap()
}

fn attention_case(
    dev: &Device,
    b: usize,
    t: usize,
    (hq, hkv, d): (usize, usize, usize),
    window: Option<usize>,
) {
    let q = var(&[b, t, hq * d], 11, 1.0, dev);
    let k = var(&[b, t, hkv * d], 12, 1.0, dev);
    let v = var(&[b, t, hkv * d], 13, 1.0, dev);
    let ang: Vec<f32> = (0..t * d / 2)
        .map(|i| (i / (d / 2)) as f32 * 0.3 / (1 + i % (d / 2)) as f32)
        .collect();
    let ang = Tensor::from_vec(ang, (t, d / 2), dev).unwrap();
    let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
    let sinks = (randn(&[hq], 14, dev) * 4.0).unwrap();
    let mask = CausalMask {
        q0: 0,
        k0: 0,
        window,
    };
    let shape = AttentionShape {
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: d,
    };
    let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
    expect_kernel(dev, &[qt, kt, vt]);
    // Scaled-up q so the softmax is far from uniform.
    let q4 = (qt * 4.0).unwrap();
    let got = kernels::attention(&q4, kt, vt, (&cos, &sin, &sinks), shape, mask).unwrap();
    let want = reference::attention(&q4, kt, vt, (&cos, &sin, &sinks), shape, mask).unwrap();
    let by_repeat = attention_by_repeat(&q4, kt, vt, (&cos, &sin), &sinks, (hq, hkv, d), window);
    for (what, w) in [("reference", &want), ("repeat", &by_repeat)] {
        let err = max_abs(&got, w);
        assert!(
            err < 2e-6,
            "T={t} window {window:?}: forward vs {what} {err}"
        );
    }

    let probe = randn(&[b, t, hq * d], 15, dev);
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
fn attention_matches_reference() {
    for dev in devices() {
        // Blocks of 256 score rows: T = 300 with 4 heads per KV head is 5 blocks, the last
        // partial.
        attention_case(&dev, 2, 300, (8, 2, 16), None);
        attention_case(&dev, 2, 300, (8, 2, 16), Some(37));
        attention_case(&dev, 1, 9, (2, 2, 4), Some(1)); // each query sees only itself
        attention_case(&dev, 1, 40, (3, 1, 8), Some(200)); // window wider than the sequence
        attention_case(&dev, 2, 1, (4, 2, 8), None); // one token
    }
}

#[test]
fn linear_cross_entropy_matches_reference() {
    for dev in devices() {
        // V = 70000: 119-row blocks on the CPU, so 250 rows are three, the last partial.
        for (rows, hd, v) in [(250, 8, 70_000), (1, 16, 300)] {
            let h = (randn(&[rows, hd], 41, &dev) * 4.0).unwrap();
            let lm = randn(&[v, hd], 42, &dev);
            expect_kernel(&dev, &[&h, &lm]);
            let targets: Vec<u32> = (0..rows).map(|r| ((r * 7919) % v) as u32).collect();
            let weights: Vec<f32> = (0..rows).map(|r| 1.0 + (r % 3) as f32).collect();
            let tw = (targets.as_slice(), weights.as_slice());
            for scale in [Some(0.37), None] {
                let (loss, dh) =
                    kernels::linear_cross_entropy(&h, &lm.clone().into(), tw, scale, 32).unwrap();
                let (want, dh_ref) =
                    reference::linear_cross_entropy(&h, &lm, tw, scale, 32).unwrap();
                assert!(
                    (loss - want).abs() < 1e-5 * want.abs(),
                    "loss {loss} vs {want}"
                );
                match (dh, dh_ref) {
                    (Some(a), Some(e)) => {
                        assert!(max_abs(&a, &e) < 1e-5, "dh max |Δ| {}", max_abs(&a, &e));
                        assert!(abs_sum(&e) > 1e-3);
                    }
                    (None, None) => assert!(scale.is_none()),
                    _ => panic!("one side returned a gradient, the other not"),
                }
            }
            // A target outside the vocabulary is an error on every path.
            let bad = vec![v as u32; rows];
            let bw = (bad.as_slice(), weights.as_slice());
            assert!(kernels::linear_cross_entropy(&h, &lm.clone().into(), bw, None, 32).is_err());
            assert!(reference::linear_cross_entropy(&h, &lm, bw, None, 32).is_err());
        }
    }
}
