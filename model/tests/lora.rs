//! LoRA attachment: targets, zero-B no-op, B≠0 changes the logits, gradients reach A and B.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::max_abs;
use osstune_model::{Cache, GptOss, Lora};

fn model() -> GptOss {
    let dir = common::fixture("dense");
    GptOss::load(dir, &Device::Cpu, DType::F32).unwrap()
}

fn ids() -> Tensor {
    let v: Vec<u32> = (0..20u32).map(|i| (i * 37 + 11) % 250).collect();
    Tensor::from_vec(v, (1, 20), &Device::Cpu).unwrap()
}

thread_local! {
    static STATE: std::cell::Cell<u64> = const { std::cell::Cell::new(0x9E37_79B9_7F4A_7C15) };
}

/// Deterministic pseudo-random values (per test thread), uniform with the given std.
fn rand_var(shape: &[usize], std: f64) -> Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let x = STATE.with(|s| {
                let mut x = s.get();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.set(x);
                x
            });
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            ((u * 2.0 - 1.0) * std * 3f64.sqrt()) as f32
        })
        .collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

/// Attaches an adapter to every target; B is zero or random.
fn attach_all(m: &mut GptOss, r: usize, b_std: f64) -> Vec<(String, Var, Var)> {
    let mut vars = Vec::new();
    for t in m.lora_targets() {
        match t.experts {
            None => {
                let a = rand_var(&[r, t.in_dim], 1.0 / (t.in_dim as f64).sqrt());
                let b = if b_std == 0.0 {
                    Var::zeros((t.out_dim, r), DType::F32, &Device::Cpu).unwrap()
                } else {
                    rand_var(&[t.out_dim, r], b_std)
                };
                let l = Lora::new(a.clone(), b.clone(), 2.0).unwrap();
                m.attach_lora(&t.name, l).unwrap();
                vars.push((t.name.clone(), a, b));
            }
            Some(e) => {
                let a = rand_var(&[e, r, t.in_dim], 1.0 / (t.in_dim as f64).sqrt());
                let b = if b_std == 0.0 {
                    Var::zeros((e, t.out_dim, r), DType::F32, &Device::Cpu).unwrap()
                } else {
                    rand_var(&[e, t.out_dim, r], b_std)
                };
                let l = Lora::new(a.clone(), b.clone(), 2.0).unwrap();
                m.attach_lora(&t.name, l).unwrap();
                vars.push((t.name.clone(), a, b));
            }
        }
    }
    vars
}

#[test]
fn targets_follow_the_adapter_names() {
    let m = model();
    let t = m.lora_targets();
    assert_eq!(t.len(), 4 * 8 + 1, "8 targets per layer, then lm_head");
    let q = t
        .iter()
        .find(|t| t.name == "model.layers.3.self_attn.q_proj")
        .unwrap();
    assert_eq!((q.in_dim, q.out_dim, q.experts), (64, 128, None));
    let r = t
        .iter()
        .find(|t| t.name == "model.layers.3.mlp.router")
        .unwrap();
    assert_eq!((r.in_dim, r.out_dim, r.experts), (64, 4, None));
    let d = t
        .iter()
        .find(|t| t.name == "model.layers.0.mlp.experts.down_proj")
        .unwrap();
    assert_eq!((d.in_dim, d.out_dim, d.experts), (64, 64, Some(4)));
    assert_eq!(d.kind(), "down_proj");
    assert_eq!(d.layer, 0);
}

#[test]
fn attach_rejects_bad_names_and_shapes() {
    let mut m = model();
    let a = rand_var(&[4, 64], 0.1);
    let b = rand_var(&[128, 4], 0.1);
    let l = Lora::new(a.clone(), b.clone(), 1.0).unwrap();
    let e = m
        .attach_lora("model.layers.9.self_attn.q_proj", l.clone())
        .unwrap_err();
    assert!(format!("{e:#}").contains("unknown LoRA target"), "{e:#}");
    let e = m
        .attach_lora("model.layers.0.self_attn.k_proj", l.clone())
        .unwrap_err();
    assert!(format!("{e:#}").contains("do not fit"), "{e:#}");
    let e = m
        .attach_lora("model.layers.0.mlp.experts.gate_proj", l)
        .unwrap_err();
    assert!(format!("{e:#}").contains("expert projection"), "{e:#}");
}

#[test]
fn zero_b_is_a_no_op_and_nonzero_b_changes_logits() {
    let base = model();
    let mut cache = Cache::new(base.config());
    let want = base.forward(&ids(), 0, &mut cache).unwrap();

    let mut m = model();
    attach_all(&mut m, 4, 0.0);
    let mut cache = Cache::new(m.config());
    let got = m.forward(&ids(), 0, &mut cache).unwrap();
    assert!(max_abs(&got, &want) < 1e-5);

    // Each kind of target on its own changes the output.
    for kind in [
        "q_proj",
        "o_proj",
        "router",
        "gate_proj",
        "up_proj",
        "down_proj",
    ] {
        let mut m = model();
        let t = m
            .lora_targets()
            .into_iter()
            .find(|t| t.name.starts_with("model.layers.1.") && t.kind() == kind)
            .unwrap();
        match t.experts {
            None => {
                let l = Lora::new(
                    rand_var(&[4, t.in_dim], 0.3),
                    rand_var(&[t.out_dim, 4], 0.3),
                    2.0,
                )
                .unwrap();
                m.attach_lora(&t.name, l).unwrap();
            }
            Some(e) => {
                let l = Lora::new(
                    rand_var(&[e, 4, t.in_dim], 0.3),
                    rand_var(&[e, t.out_dim, 4], 0.3),
                    2.0,
                )
                .unwrap();
                m.attach_lora(&t.name, l).unwrap();
            }
        }
        let got = m.logits(&m.forward_hidden(&ids()).unwrap()).unwrap();
        let d = max_abs(&got, &want);
        assert!(
            d > 1e-3,
            "{kind}: LoRA with B≠0 left the logits unchanged ({d})"
        );
        m.clear_lora();
        let got = m.logits(&m.forward_hidden(&ids()).unwrap()).unwrap();
        assert!(max_abs(&got, &want) < 1e-5, "{kind}: clear_lora");
    }
}

fn loss(m: &GptOss) -> Tensor {
    let logits = m.logits(&m.forward_hidden(&ids()).unwrap()).unwrap();
    let lsm = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
    lsm.narrow(2, 7, 1)
        .unwrap()
        .mean_all()
        .unwrap()
        .neg()
        .unwrap()
}

#[test]
fn gradients_reach_a_and_b() {
    // Standard init (B = 0): B gets a gradient, A's is exactly zero.
    let mut m = model();
    let vars = attach_all(&mut m, 4, 0.0);
    let grads = loss(&m).backward().unwrap();
    for (name, a, b) in &vars {
        let gb = grads
            .get(b.as_tensor())
            .unwrap_or_else(|| panic!("no grad for {name} B"));
        let nb = gb
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(nb > 0.0, "{name}: zero grad for B");
        if let Some(ga) = grads.get(a.as_tensor()) {
            let na = ga
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(na, 0.0, "{name}: A grad with B = 0");
        }
    }
    // B ≠ 0: both get gradients.
    let mut m = model();
    let vars = attach_all(&mut m, 4, 0.05);
    let grads = loss(&m).backward().unwrap();
    for (name, a, b) in &vars {
        for (what, v) in [("A", a), ("B", b)] {
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("no grad for {name} {what}"));
            let n = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(n > 0.0 && n.is_finite(), "{name} {what}: grad sum {n}");
        }
    }
}

/// The analytic gradient matches a central finite difference, through every layer (norms,
/// RoPE, sink softmax, MoE) — layer 0 q_proj's B.
#[test]
fn gradient_matches_finite_difference() {
    fd_check("model.layers.0.self_attn.q_proj");
    fd_check("model.layers.1.mlp.experts.gate_proj");
    fd_check("model.layers.2.mlp.experts.down_proj");
}

fn fd_check(target: &str) {
    fd_check_var(target, false);
    fd_check_var(target, true);
}

fn fd_check_var(target: &str, check_a: bool) {
    let mut m = model();
    let vars = attach_all(&mut m, 4, 0.05);
    let (name, a, b) = vars.iter().find(|(n, _, _)| n == target).unwrap();
    let b = if check_a { a } else { b };
    let grads = loss(&m).backward().unwrap();
    let g = grads
        .get(b.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b0 = b
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let shape = b.as_tensor().dims().to_vec();
    let h = 1e-2f32;
    let l0 = loss(&m).to_scalar::<f32>().unwrap();
    let mut checked = 0;
    for idx in [0usize, 17, 101, 300, 411, 500] {
        let idx = idx % b0.len();
        let mut plus = b0.clone();
        plus[idx] += h;
        b.set(&Tensor::from_vec(plus, shape.clone(), &Device::Cpu).unwrap())
            .unwrap();
        let lp = loss(&m).to_scalar::<f32>().unwrap();
        let mut minus = b0.clone();
        minus[idx] -= h;
        b.set(&Tensor::from_vec(minus, shape.clone(), &Device::Cpu).unwrap())
            .unwrap();
        let lm = loss(&m).to_scalar::<f32>().unwrap();
        b.set(&Tensor::from_vec(b0.clone(), shape.clone(), &Device::Cpu).unwrap())
            .unwrap();
        // A perturbation that flips a top-k choice makes the loss jump: skip those points
        // (the two one-sided slopes disagree), the routing is piecewise constant.
        let (up, down) = ((lp - l0) / h, (l0 - lm) / h);
        if (up - down).abs() > 0.05 + 0.2 * up.abs().max(down.abs()) {
            continue;
        }
        checked += 1;
        let fd = (lp - lm) / (2.0 * h);
        let tol = 2e-3 + 0.05 * fd.abs();
        assert!(
            (fd - g[idx]).abs() < tol,
            "{name} B[{idx}]: analytic {} vs fd {fd}",
            g[idx]
        );
    }
    assert!(checked >= 3, "only {checked} smooth points");
}
