//! The fused CPU ops (LoRA linear, masked sink softmax) against the device-generic candle-op
//! compositions they replace: same values and same gradients.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs;
use osstune_model::linear::Linear;
use osstune_model::masked_softmax::{masked_sink_softmax, CausalMask};
use osstune_model::{ops, LoraLinear};

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

    let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (y_ref * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
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
    // Also the existing fused (unmasked-input) op on the masked scores.
    let p_old = ops::sink_softmax(&masked, &sinks).unwrap();
    assert!(max_abs(&p, &p_old) < 1e-6);

    let probe = randn(&[bsz, h, t, tk], 9);
    let g = (p * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (p_ref * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
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
