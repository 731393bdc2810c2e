//! Newton–Schulz properties: singular values land in the band the quintic is designed for,
//! 3-D inputs are orthogonalised per expert, tall inputs are the transpose of wide ones, and the
//! lr shape factor reads the canonical [out, in] dims.

mod common;

use candle_core::{DType, Tensor};
use common::*;
use osstune_optim::{muon::lr_scale, muon::newton_schulz, LrAdjust};

const COEFFS: [f64; 3] = [3.4445, -4.7750, 2.0315];

fn ns(x: &Tensor, dtype: DType) -> Tensor {
    newton_schulz(x, 5, COEFFS, 1e-7, dtype).unwrap()
}

#[test]
fn singular_value_helper_agrees_with_torch_svd() {
    // The fixture records torch.linalg.svdvals of torch's f32 NS output.
    let fx = Fixtures::load();
    for name in ["ns_small", "ns_square", "ns_r16_wide"] {
        let sv = singular_values(&fx.t(&format!("{name}.out_f32")));
        let case = fx.case(name);
        let (lo, hi) = (sv[0], sv[sv.len() - 1]);
        assert!(
            (lo - case["sv_min"].as_f64().unwrap()).abs() < 1e-5,
            "{name}: {lo}"
        );
        assert!(
            (hi - case["sv_max"].as_f64().unwrap()).abs() < 1e-5,
            "{name}: {hi}"
        );
    }
}

#[test]
fn singular_values_in_band_for_lora_shapes() {
    let mut rng = Rng::new(7);
    let shapes: &[(usize, usize)] = &[
        (16, 2880),
        (2880, 16),
        (8, 512),
        (640, 16),
        (64, 256),
        (48, 48),
    ];
    for &(r, c) in shapes {
        // Varied input scale: the Frobenius normalisation makes NS scale-free.
        let x = rng.tensor(&[r, c], 1e-3 * (1 + r % 7) as f64);
        for dtype in [DType::F32, DType::BF16] {
            let y = ns(&x, dtype);
            assert_eq!(y.dims(), &[r, c]);
            let sv = singular_values(&y);
            let (lo, hi) = (sv[0], sv[sv.len() - 1]);
            println!("{r}x{c} {dtype:?}: singular values in [{lo:.3}, {hi:.3}]");
            assert!(
                lo > 0.5 && hi < 1.5,
                "{r}x{c} {dtype:?}: [{lo}, {hi}] outside (0.5, 1.5)"
            );
        }
    }
}

#[test]
fn ill_conditioned_input_is_equalised() {
    // Singular values spread over 2 orders of magnitude come out within the band; over 3
    // orders, 5 steps are not enough to lift the smallest to 0.5 (each step multiplies small
    // values by at most a = 3.4445), but the spread still collapses from 1000x to under 4x.
    let mut rng = Rng::new(11);
    let (r, c) = (16, 400);
    for (decades, lo_min, max_ratio) in [(2.0f32, 0.5, 3.0), (3.0, 0.3, 4.0)] {
        let x = rng.tensor(&[r, c], 1.0);
        let scales: Vec<f32> = (0..r)
            .map(|i| 10f32.powf(-decades * i as f32 / (r - 1) as f32))
            .collect();
        let d = Tensor::from_vec(scales, (r, 1), x.device()).unwrap();
        let x = x.broadcast_mul(&d).unwrap();
        let sv_in = singular_values(&x);
        assert!(sv_in[r - 1] / sv_in[0] > 0.3 * 10f64.powf(decades as f64));
        let sv = singular_values(&ns(&x, DType::F32));
        println!(
            "spread 1e{decades}: output singular values [{:.3}, {:.3}]",
            sv[0],
            sv[r - 1]
        );
        assert!(sv[0] > lo_min && sv[r - 1] < 1.5, "{sv:?}");
        assert!(sv[r - 1] / sv[0] < max_ratio, "{sv:?}");
    }
}

#[test]
fn batched_3d_equals_each_expert_alone() {
    let mut rng = Rng::new(3);
    for dims in [[6, 16, 200], [6, 200, 16]] {
        // Experts of very different scales: a flattened norm would shrink the small ones.
        let experts: Vec<Tensor> = (0..dims[0])
            .map(|e| rng.tensor(&dims[1..], 10f64.powi(e as i32 - 3)))
            .collect();
        let stacked = Tensor::stack(&experts, 0).unwrap();
        let y = ns(&stacked, DType::F32);
        assert_eq!(y.dims(), &dims);
        for (e, x) in experts.iter().enumerate() {
            let want = ns(x, DType::F32);
            let err = max_abs_diff(&y.get(e).unwrap(), &want);
            assert!(err < 1e-6, "{dims:?} expert {e}: {err:.3e}");
        }
    }
}

#[test]
fn tall_is_transpose_of_wide() {
    let mut rng = Rng::new(5);
    let x = rng.tensor(&[12, 90], 1.0);
    let wide = ns(&x, DType::F32);
    let tall = ns(&x.t().unwrap().contiguous().unwrap(), DType::F32);
    let err = max_abs_diff(&tall.t().unwrap(), &wide);
    assert!(err < 1e-6, "{err:.3e}");
}

#[test]
fn zero_gradient_gives_zero_update() {
    let x = Tensor::zeros((4, 9), DType::F32, &candle_core::Device::Cpu).unwrap();
    let y = ns(&x, DType::F32);
    assert!(flat(&y).iter().all(|v| *v == 0.0));
}

#[test]
fn lr_scale_uses_last_two_dims_as_out_in() {
    // LoRA A [r, in]: wide, factor 1. LoRA B [out, r]: tall, sqrt(out / r).
    assert_eq!(lr_scale(&[16, 2880], LrAdjust::Original), 1.0);
    assert!((lr_scale(&[2880, 16], LrAdjust::Original) - 180f64.sqrt()).abs() < 1e-12);
    // Experts: per expert, the leading dim is ignored.
    assert_eq!(lr_scale(&[128, 16, 2880], LrAdjust::Original), 1.0);
    assert!((lr_scale(&[128, 2880, 16], LrAdjust::Original) - 180f64.sqrt()).abs() < 1e-12);
    // Router B [E, r] = [128, 16]: sqrt(8).
    assert!((lr_scale(&[128, 16], LrAdjust::Original) - 8f64.sqrt()).abs() < 1e-12);
    // match_rms_adamw is symmetric.
    let rms = 0.2 * 2880f64.sqrt();
    assert!((lr_scale(&[16, 2880], LrAdjust::MatchRmsAdamw) - rms).abs() < 1e-12);
    assert!((lr_scale(&[4, 2880, 16], LrAdjust::MatchRmsAdamw) - rms).abs() < 1e-12);
}

#[test]
fn rejects_vectors() {
    let x = Tensor::zeros(5, DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = newton_schulz(&x, 5, COEFFS, 1e-7, DType::F32).unwrap_err();
    assert!(err.to_string().contains("matrix"), "{err}");
}
