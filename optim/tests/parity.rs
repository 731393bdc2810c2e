//! Golden parity with torch.optim.Muon / torch.optim.AdamW (fixtures from
//! `scripts/gen_optim_fixtures.py`, which documents how each reference was produced).
//!
//! Tolerances:
//! - f32 Muon vs torch's algorithm with NS in f32: max |Δ| ≤ 1e-4 × max parameter movement.
//!   Only summation order differs; measured ~1e-6.
//! - bf16 Muon vs unmodified torch (bf16 NS), and vs the f32 reference: ‖Δ‖_F ≤ bf16_tol (0.05)
//!   × ‖movement‖_F. Two bf16 implementations round differently; torch's own bf16 result is
//!   asserted to lie within the same bound of the f32 reference by the generator.
//! - AdamW: max |Δ| ≤ 1e-5 × movement (element-wise ops only).

mod common;

use candle_core::{backprop::GradStore, DType, Tensor, Var};
use common::*;
use osstune_optim::{
    muon::newton_schulz, AdamWConfig, LrAdjust, MuonConfig, NsDtype, OptimConfig, Optimizer,
};

const F32_TOL: f64 = 1e-4;
const ADAMW_TOL: f64 = 1e-5;

fn muon_config(case: &serde_json::Value, ns_dtype: NsDtype) -> OptimConfig {
    let lr_adjust = match case["lr_adjust"].as_str().unwrap() {
        "original" => LrAdjust::Original,
        "match_rms_adamw" => LrAdjust::MatchRmsAdamw,
        other => panic!("unknown lr_adjust {other}"),
    };
    OptimConfig {
        muon: MuonConfig {
            // Peak 1: the per-step lr of the fixture is passed as the multiplier.
            lr: 1.0,
            momentum: case["momentum"].as_f64().unwrap(),
            nesterov: case["nesterov"].as_bool().unwrap(),
            ns_steps: case["ns_steps"].as_u64().unwrap() as usize,
            weight_decay: case["weight_decay"].as_f64().unwrap(),
            lr_adjust,
            ns_dtype,
            ..MuonConfig::default()
        },
        ..OptimConfig::default()
    }
}

/// Runs one case with each fixture parameter as its own Var; returns [param][step] results.
fn run_case(fx: &Fixtures, name: &str, cfg: &OptimConfig) -> Vec<Vec<Tensor>> {
    let case = fx.case(name);
    let names = strs(&case["params"]);
    let lrs = f64s(&case["lrs"]);
    let vars: Vec<(String, Var)> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                Var::from_tensor(&fx.t(&format!("{n}.param0"))).unwrap(),
            )
        })
        .collect();
    let mut opt = Optimizer::new(vars.clone(), cfg).unwrap();
    let mut out = vec![Vec::new(); names.len()];
    for (t, lr) in lrs.iter().enumerate() {
        let mut grads = GradStore::default();
        for (n, v) in &vars {
            let g = fx.t(&format!("{n}.grads")).get(t).unwrap();
            grads.insert(v.as_tensor(), g);
        }
        opt.step(&grads, *lr).unwrap();
        for (i, (_, v)) in vars.iter().enumerate() {
            out[i].push(v.as_tensor().copy().unwrap());
        }
    }
    assert_eq!(opt.steps(), lrs.len() as u64);
    out
}

const MUON_CASES: &[&str] = &[
    "muon_lora",
    "muon_wd",
    "muon_rms",
    "muon_nonesterov",
    "muon_experts_a",
    "muon_experts_b",
];

#[test]
fn muon_f32_matches_torch_algorithm_in_f32() {
    let fx = Fixtures::load();
    for name in MUON_CASES {
        let case = fx.case(name);
        let got = run_case(&fx, name, &muon_config(case, NsDtype::F32));
        let mut worst = 0.0f64;
        for (i, n) in strs(&case["params"]).iter().enumerate() {
            let p0 = fx.t(&format!("{n}.param0"));
            let reference = fx.t(&format!("{n}.ref_f32"));
            for (t, x) in got[i].iter().enumerate() {
                worst = worst.max(rel_max_err(x, &reference.get(t).unwrap(), &p0));
            }
        }
        println!("{name}: f32 max error / movement = {worst:.3e}");
        assert!(
            worst < F32_TOL,
            "{name}: f32 error {worst:.3e} >= {F32_TOL}"
        );
    }
}

#[test]
fn muon_bf16_matches_torch_within_bf16_tolerance() {
    let fx = Fixtures::load();
    for name in MUON_CASES {
        let case = fx.case(name);
        let got = run_case(&fx, name, &muon_config(case, NsDtype::Bf16));
        let (mut vs_torch, mut vs_f32) = (0.0f64, 0.0f64);
        for (i, n) in strs(&case["params"]).iter().enumerate() {
            let p0 = fx.t(&format!("{n}.param0"));
            let r16 = fx.t(&format!("{n}.ref_bf16"));
            let r32 = fx.t(&format!("{n}.ref_f32"));
            for (t, x) in got[i].iter().enumerate() {
                vs_torch = vs_torch.max(rel_frob_err(x, &r16.get(t).unwrap(), &p0));
                vs_f32 = vs_f32.max(rel_frob_err(x, &r32.get(t).unwrap(), &p0));
            }
        }
        println!("{name}: bf16 error / movement vs torch bf16 {vs_torch:.3e}, vs f32 {vs_f32:.3e}");
        assert!(
            vs_torch < fx.bf16_tol,
            "{name}: vs torch bf16 {vs_torch:.3e}"
        );
        assert!(
            vs_f32 < fx.bf16_tol,
            "{name}: vs f32 reference {vs_f32:.3e}"
        );
        // bf16 must actually differ from f32 (the dtype switch does something).
        assert!(
            vs_f32 > 1e-5,
            "{name}: bf16 path identical to f32 ({vs_f32:.3e})"
        );
    }
}

/// The experts cases, stacked as one [E, rows, cols] parameter, must reproduce torch's
/// per-matrix result expert by expert (batched NS, per-expert norm, per-matrix lr scale).
#[test]
fn muon_3d_is_per_expert_2d() {
    let fx = Fixtures::load();
    for name in ["muon_experts_a", "muon_experts_b"] {
        let case = fx.case(name);
        let names = strs(&case["params"]);
        let lrs = f64s(&case["lrs"]);
        let cfg = muon_config(case, NsDtype::F32);
        let stack = |suffix: &str| {
            let ts: Vec<Tensor> = names
                .iter()
                .map(|n| fx.t(&format!("{n}.{suffix}")))
                .collect();
            Tensor::stack(&ts, 0).unwrap()
        };
        let p0 = stack("param0");
        let grads = stack("grads"); // [E, steps, r, c]
        let reference = stack("ref_f32"); // [E, steps, r, c]
        let var = Var::from_tensor(&p0).unwrap();
        let mut opt = Optimizer::new(vec![("experts".into(), var.clone())], &cfg).unwrap();
        for (t, lr) in lrs.iter().enumerate() {
            let mut gs = GradStore::default();
            gs.insert(
                var.as_tensor(),
                grads.narrow(1, t, 1).unwrap().squeeze(1).unwrap(),
            );
            opt.step(&gs, *lr).unwrap();
            let want = reference.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            let mut worst = 0.0f64;
            for e in 0..names.len() {
                let got_e = var.as_tensor().get(e).unwrap();
                let err = rel_max_err(&got_e, &want.get(e).unwrap(), &p0.get(e).unwrap());
                worst = worst.max(err);
            }
            assert!(
                worst < F32_TOL,
                "{name} step {t}: per-expert error {worst:.3e}"
            );
        }
    }
}

#[test]
fn adamw_matches_torch() {
    let fx = Fixtures::load();
    for name in ["adamw_basic", "adamw_betas"] {
        let case = fx.case(name);
        let cfg = OptimConfig {
            adamw: AdamWConfig {
                lr: 1.0,
                beta1: case["beta1"].as_f64().unwrap(),
                beta2: case["beta2"].as_f64().unwrap(),
                eps: case["eps"].as_f64().unwrap(),
                weight_decay: case["weight_decay"].as_f64().unwrap(),
            },
            // The 2-D tensor of adamw_basic is routed to AdamW by name.
            adamw_params: vec!["adamw_".into()],
            ..OptimConfig::default()
        };
        let got = run_case(&fx, name, &cfg);
        let mut worst = 0.0f64;
        for (i, n) in strs(&case["params"]).iter().enumerate() {
            let p0 = fx.t(&format!("{n}.param0"));
            let reference = fx.t(&format!("{n}.ref_f32"));
            for (t, x) in got[i].iter().enumerate() {
                worst = worst.max(rel_max_err(x, &reference.get(t).unwrap(), &p0));
            }
        }
        println!("{name}: max error / movement = {worst:.3e}");
        assert!(
            worst < ADAMW_TOL,
            "{name}: error {worst:.3e} >= {ADAMW_TOL}"
        );
    }
}

/// Newton–Schulz alone, f32, against torch's iteration in f32, on LoRA shapes including the
/// gpt-oss-120b expert factors (16×2880, 2880×16).
#[test]
fn newton_schulz_matches_torch_f32() {
    let fx = Fixtures::load();
    for name in ["ns_r16_wide", "ns_r16_tall", "ns_small", "ns_square"] {
        let x = fx.t(&format!("{name}.input"));
        let want = fx.t(&format!("{name}.out_f32"));
        let got = newton_schulz(&x, 5, [3.4445, -4.7750, 2.0315], 1e-7, DType::F32).unwrap();
        let err = max_abs_diff(&got, &want);
        let scale = flat(&want).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        println!("{name}: NS max |Δ| = {err:.3e} (max |out| {scale:.3e})");
        assert!(err < 1e-4 * scale, "{name}: NS error {err:.3e}");

        let got16 = newton_schulz(&x, 5, [3.4445, -4.7750, 2.0315], 1e-7, DType::BF16).unwrap();
        assert_eq!(got16.dtype(), DType::F32);
        let rel16 = frob_diff(&got16, &fx.t(&format!("{name}.out_bf16")))
            / frob_diff(&want, &want.zeros_like().unwrap());
        println!("{name}: bf16 NS vs torch bf16, relative Frobenius {rel16:.3e}");
        assert!(
            rel16 < fx.bf16_tol,
            "{name}: bf16 NS differs from torch by {rel16:.3e}"
        );
    }
}
