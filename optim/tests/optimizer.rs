//! Routing, state save/load and bit-identical resume.

mod common;

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use common::*;
use osstune_optim::{Group, NsDtype, OptimConfig, Optimizer, Schedule};

/// A small LoRA-shaped parameter set: attention A/B, expert A/B (3-D), a bias-like vector.
fn params(rng: &mut Rng) -> Vec<(String, Var)> {
    let shapes: &[(&str, &[usize])] = &[
        ("layers.0.q_proj.lora_a", &[4, 32]),
        ("layers.0.q_proj.lora_b", &[48, 4]),
        ("layers.0.experts.gate_proj.lora_a", &[3, 4, 32]),
        ("layers.0.experts.gate_proj.lora_b", &[3, 24, 4]),
        ("layers.0.mlp.router.lora_b", &[8, 4]),
        ("layers.0.norm", &[32]),
    ];
    shapes
        .iter()
        .map(|(n, d)| {
            (
                n.to_string(),
                Var::from_tensor(&rng.tensor(d, 0.5)).unwrap(),
            )
        })
        .collect()
}

fn copy_params(p: &[(String, Var)]) -> Vec<(String, Var)> {
    p.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Gradients that depend on the step and on the current parameters (like a real loss), so a
/// resume that restored the wrong state would diverge.
fn grads(params: &[(String, Var)], step: u64) -> GradStore {
    let mut gs = GradStore::default();
    for (i, (_, v)) in params.iter().enumerate() {
        let mut rng = Rng::new(1000 * step + i as u64);
        let noise = rng.tensor(v.dims(), 0.1);
        let g = (v.as_tensor().affine(0.3, 0.0).unwrap() + noise).unwrap();
        gs.insert(v.as_tensor(), g);
    }
    gs
}

fn cfg(ns_dtype: NsDtype) -> OptimConfig {
    let mut c = OptimConfig::default();
    c.muon.lr = 0.02;
    c.muon.weight_decay = 0.1;
    c.muon.ns_dtype = ns_dtype;
    c.adamw.lr = 0.01;
    c.adamw.weight_decay = 0.01;
    c.adamw_params = vec!["router".into()];
    c
}

fn bits(p: &[(String, Var)]) -> Vec<Vec<u32>> {
    p.iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn routes_by_rank_and_name() {
    let p = params(&mut Rng::new(1));
    let opt = Optimizer::new(p, &cfg(NsDtype::F32)).unwrap();
    let groups: Vec<Group> = opt.groups().iter().map(|g| g.1).collect();
    use Group::*;
    assert_eq!(groups, vec![Muon, Muon, Muon, Muon, AdamW, AdamW]);
    // 4*32 + 48*4 + 3*4*32 + 3*24*4 Muon elements (1 buffer) + (8*4 + 32) AdamW (2 buffers).
    let muon = 128 + 192 + 384 + 288;
    assert_eq!(opt.state_bytes(), 4 * muon + 8 * (32 + 32));
}

#[test]
fn rejects_duplicate_names_and_int_params() {
    let v = Var::from_tensor(&Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let dup = vec![("a".to_string(), v.clone()), ("a".to_string(), v)];
    let err = Optimizer::new(dup, &OptimConfig::default()).err().unwrap();
    assert!(err.to_string().contains("listed twice"), "{err}");
    let int = Var::from_tensor(&Tensor::zeros(3, DType::U32, &Device::Cpu).unwrap()).unwrap();
    let err = Optimizer::new(vec![("ids".into(), int)], &OptimConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("ids"), "{err}");
}

#[test]
fn every_parameter_moves_and_missing_grads_are_skipped() {
    let p = params(&mut Rng::new(2));
    let before = bits(&p);
    let mut opt = Optimizer::new(p.clone(), &cfg(NsDtype::F32)).unwrap();
    let mut gs = grads(&p, 0);
    gs.remove(p[5].1.as_tensor());
    opt.step(&gs, 1.0).unwrap();
    let after = bits(&p);
    for i in 0..5 {
        assert_ne!(before[i], after[i], "{} did not move", p[i].0);
    }
    assert_eq!(before[5], after[5], "a parameter without gradient moved");
    // Multiplier 0 with no weight-decay effect: parameters stay, momentum still accumulates.
    let mid = bits(&p);
    opt.step(&grads(&p, 1), 0.0).unwrap();
    assert_eq!(mid, bits(&p));
    assert!(opt.step(&grads(&p, 2), f64::NAN).is_err());
}

#[test]
fn gradient_shape_mismatch_names_the_parameter() {
    let p = params(&mut Rng::new(4));
    let mut opt = Optimizer::new(p.clone(), &cfg(NsDtype::F32)).unwrap();
    let mut gs = GradStore::default();
    gs.insert(
        p[1].1.as_tensor(),
        Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap(),
    );
    let err = format!("{:#}", opt.step(&gs, 1.0).unwrap_err());
    assert!(
        err.contains("layers.0.q_proj.lora_b") && err.contains("shape"),
        "{err}"
    );
}

/// Interrupt at step k, save, rebuild everything from the saved state, continue: the final
/// parameters are bit-identical to an uninterrupted run (f32 and bf16 NS).
#[test]
fn resume_is_bit_identical() {
    let dir = std::env::temp_dir().join(format!("osstune-optim-resume-{}", std::process::id()));
    for ns_dtype in [NsDtype::F32, NsDtype::Bf16] {
        let c = cfg(ns_dtype);
        let schedule = Schedule::new(&c.schedule, 12).unwrap();
        let init = params(&mut Rng::new(9));

        let straight = copy_params(&init);
        let mut opt = Optimizer::new(straight.clone(), &c).unwrap();
        for k in 0..12 {
            opt.step(&grads(&straight, k), schedule.multiplier(k))
                .unwrap();
        }

        let first = copy_params(&init);
        let mut opt = Optimizer::new(first.clone(), &c).unwrap();
        for k in 0..5 {
            opt.step(&grads(&first, k), schedule.multiplier(k)).unwrap();
        }
        opt.save(&dir).unwrap();
        let saved_params = copy_params(&first);
        drop(opt);
        assert!(!dir.join("optimizer.safetensors.tmp").exists());
        assert!(!dir.join("optimizer.json.tmp").exists());

        let resumed = copy_params(&saved_params);
        let mut opt = Optimizer::new(resumed.clone(), &c).unwrap();
        opt.load(&dir).unwrap();
        assert_eq!(opt.steps(), 5);
        for k in opt.steps()..12 {
            opt.step(&grads(&resumed, k), schedule.multiplier(k))
                .unwrap();
        }
        assert_eq!(
            bits(&straight),
            bits(&resumed),
            "{ns_dtype:?}: resume diverged"
        );

        // Without the state (fresh momentum) the result differs: the test can fail.
        let fresh = copy_params(&saved_params);
        let mut opt = Optimizer::new(fresh.clone(), &c).unwrap();
        for k in 5..12 {
            opt.step(&grads(&fresh, k), schedule.multiplier(k)).unwrap();
        }
        assert_ne!(bits(&straight), bits(&fresh));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_rejects_mismatched_state() {
    let dir = std::env::temp_dir().join(format!("osstune-optim-bad-{}", std::process::id()));
    let p = params(&mut Rng::new(5));
    let opt = Optimizer::new(p.clone(), &cfg(NsDtype::F32)).unwrap();
    opt.save(&dir).unwrap();

    // Different routing: the router now goes to Muon.
    let mut c = cfg(NsDtype::F32);
    c.adamw_params.clear();
    let mut other = Optimizer::new(copy_params(&p), &c).unwrap();
    let err = other.load(&dir).unwrap_err().to_string();
    assert!(err.contains("router") && err.contains("adamw"), "{err}");

    // A parameter the state does not know.
    let mut more = copy_params(&p);
    let extra =
        Var::from_tensor(&Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
    more.push(("new.lora_a".into(), extra));
    let err = Optimizer::new(more, &cfg(NsDtype::F32))
        .unwrap()
        .load(&dir)
        .unwrap_err();
    assert!(err.to_string().contains("new.lora_a"), "{err}");

    // A parameter missing from the optimizer.
    let fewer = copy_params(&p[..5]);
    let err = Optimizer::new(fewer, &cfg(NsDtype::F32))
        .unwrap()
        .load(&dir)
        .unwrap_err();
    assert!(err.to_string().contains("layers.0.norm"), "{err}");

    // Corrupt JSON names the file.
    std::fs::write(dir.join("optimizer.json"), "{ not json").unwrap();
    let mut o = Optimizer::new(copy_params(&p), &cfg(NsDtype::F32)).unwrap();
    let err = format!("{:#}", o.load(&dir).unwrap_err());
    assert!(err.contains("optimizer.json"), "{err}");
    let err = format!("{:#}", o.load(dir.join("nowhere")).unwrap_err());
    assert!(err.contains("nowhere"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
