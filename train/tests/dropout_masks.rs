//! LoRA dropout (`lora.dropout` > 0; see `osstune_model::lora::dropout`), model side: the forward
//! and the LoRA gradients equal an explicit reference that applies the same mask by hand (an
//! attention projection and the expert projections, grouped and per-expert paths), and p = 0
//! or dropout off changes nothing. The trainer side is in `dropout_training.rs`.

mod common;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use common::*;
use osstune_model::arch::moe::Moe;
use osstune_model::{GptOss, Lora, LoraDropout, Target};
use osstune_train::rng::SplitMix64;

const CPU: Device = Device::Cpu;

/// Uniform values with standard deviation `std`.
fn rand(rng: &mut SplitMix64, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt())
        .collect();
    Tensor::from_vec(v, shape, &CPU).unwrap()
}

/// Rank-4 adapters with random A and B (B ≠ 0, so the LoRA path and its dropout matter) on
/// every target; the same values for the same `seed`.
fn attach_random(m: &mut GptOss, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let r = 4;
    for t in m.lora_targets() {
        let a_std = 1.0 / (t.in_dim as f32).sqrt();
        match t.experts {
            None => {
                let a = Var::from_tensor(&rand(&mut rng, &[r, t.in_dim], a_std)).unwrap();
                let b = Var::from_tensor(&rand(&mut rng, &[t.out_dim, r], 0.3)).unwrap();
                m.attach_lora(&t.name, Lora::new(a, b, 2.0).unwrap())
                    .unwrap();
            }
            Some(e) => {
                let a = Var::from_tensor(&rand(&mut rng, &[e, r, t.in_dim], a_std)).unwrap();
                let b = Var::from_tensor(&rand(&mut rng, &[e, t.out_dim, r], 0.3)).unwrap();
                m.attach_lora(&t.name, Lora::new(a, b, 2.0).unwrap())
                    .unwrap();
            }
        }
    }
}

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-12)
}

fn grad(gs: &GradStore, v: &Var, what: &str) -> Tensor {
    gs.get(v.as_tensor())
        .unwrap_or_else(|| panic!("no gradient for {what}"))
        .clone()
}

/// `x ⊙ mask` with the mask of `d` for rows numbered by `row_id`.
fn masked(d: &LoraDropout, x: &Tensor, row_id: impl Fn(usize) -> u64 + Sync) -> Tensor {
    let (m, cols) = x.dims2().unwrap();
    let mask = Tensor::from_vec(d.mask(m, cols, row_id), (m, cols), &CPU).unwrap();
    (x * mask).unwrap()
}

/// `scale · ((x ⊙ mask) Aᵀ) Bᵀ` for `x [m, in]`, A `[r, in]`, B `[out, r]`.
fn low_rank(a: &Tensor, b: &Tensor, scale: f64, xm: &Tensor) -> Tensor {
    (xm.matmul(&a.t().unwrap())
        .unwrap()
        .matmul(&b.t().unwrap())
        .unwrap()
        * scale)
        .unwrap()
}

#[test]
fn attention_projection_matches_explicit_mask() {
    let mut m = model(DType::F32);
    attach_random(&mut m, 1);
    let step = LoraDropout { p: 0.3, seed: 99 };
    m.set_lora_dropout(Some(step));
    let lin = &m.layers[0].attn.q_proj;
    let l = lin.lora().unwrap();
    let d = l.dropout().unwrap();
    assert_eq!(d, step.for_target("model.layers.0.self_attn.q_proj"));
    let mut rng = SplitMix64::new(3);
    let x = Var::from_tensor(&rand(&mut rng, &[2, 5, 64], 1.0)).unwrap();
    let y = lin.forward(x.as_tensor()).unwrap();

    // Reference: base on x, LoRA on x ⊙ mask, rows of the flattened [10, 64] input.
    let x2 = x.as_tensor().reshape((10, 64)).unwrap();
    let xm = masked(&d, &x2, |r| r as u64);
    let zeros = xm.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let dropped = zeros.iter().filter(|v| **v == 0.0).count() as f64 / zeros.len() as f64;
    assert!((dropped - 0.3).abs() < 0.08, "dropped fraction {dropped}");
    let base = x2
        .matmul(&lin.weight.to_tensor(DType::F32, &CPU).unwrap().t().unwrap())
        .unwrap()
        .broadcast_add(lin.bias.as_ref().unwrap())
        .unwrap();
    let want = (base + low_rank(l.a().as_tensor(), l.b().as_tensor(), l.scale(), &xm))
        .unwrap()
        .reshape(y.dims())
        .unwrap();
    assert!(rel(&y, &want) < 1e-5, "forward: {}", rel(&y, &want));

    // Without dropout the output is clearly different (the mask matters).
    let plain = {
        let mut lin = lin.clone();
        lin.lora_slot().as_mut().unwrap().set_dropout(None);
        lin.forward(x.as_tensor()).unwrap()
    };
    assert!(rel(&plain, &want) > 1e-2);

    // Gradients of Σ y·g: A, B and x (the base path carries the undropped x).
    let g = rand(&mut rng, y.dims(), 1.0);
    let gs = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (&want * &g).unwrap().sum_all().unwrap().backward().unwrap();
    for (v, what) in [(l.a(), "A"), (l.b(), "B"), (&x, "x")] {
        let (o, r) = (grad(&gs, v, what), grad(&gr, v, what));
        assert!(rel(&o, &r) < 1e-5, "d{what}: {}", rel(&o, &r));
    }

    // Finite differences: the output is linear in A (and in B), so a central difference
    // with a large step is exact up to rounding.
    let loss = || -> f64 {
        let y = lin.forward(x.as_tensor()).unwrap();
        (y * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    for (v, what) in [(l.a(), "A"), (l.b(), "B")] {
        let an = grad(&gs, v, what)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let orig = v
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in [0, 7, orig.len() - 1] {
            let h = 0.25f32;
            let at = |delta: f32| {
                let mut w = orig.clone();
                w[i] += delta;
                v.set(&Tensor::from_vec(w, v.dims(), &CPU).unwrap())
                    .unwrap();
                loss()
            };
            let fd = (at(h) - at(-h)) / (2.0 * h as f64);
            v.set(&Tensor::from_vec(orig.clone(), v.dims(), &CPU).unwrap())
                .unwrap();
            let tol = 1e-3 * fd.abs().max(1.0);
            assert!(
                (fd - an[i] as f64).abs() < tol,
                "d{what}[{i}]: fd {fd} vs {}",
                an[i]
            );
        }
    }
}

/// The gpt-oss MoE written out per token and slot with plain tensor ops, every LoRA input
/// multiplied by its mask by hand: the router's rows are the tokens, an expert row is numbered
/// by its routing slot t·k + j.
fn reference_moe(moe: &Moe, x: &Tensor) -> Tensor {
    let h = x.dim(1).unwrap();
    let k = moe.top_k;
    let r = &moe.router;
    let rl = r.lora().unwrap();
    let xm = masked(&rl.dropout().unwrap(), x, |t| t as u64);
    let logits = (x
        .matmul(&r.weight.to_tensor(DType::F32, &CPU).unwrap().t().unwrap())
        .unwrap()
        .broadcast_add(r.bias.as_ref().unwrap())
        .unwrap()
        + low_rank(rl.a().as_tensor(), rl.b().as_tensor(), rl.scale(), &xm))
    .unwrap();
    let lv: Vec<Vec<f32>> = logits.to_vec2().unwrap();
    let (gl, ul, dl) = (
        moe.lora(Target::Gate).unwrap(),
        moe.lora(Target::Up).unwrap(),
        moe.lora(Target::Down).unwrap(),
    );
    let mut rows = Vec::new();
    for (t, row) in lv.iter().enumerate() {
        // Largest first, ties toward the lower expert id.
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
        let top: Vec<u32> = order[..k].iter().map(|&e| e as u32).collect();
        let sel = logits
            .get(t)
            .unwrap()
            .index_select(&Tensor::new(top.as_slice(), &CPU).unwrap(), 0)
            .unwrap();
        let ex = sel
            .broadcast_sub(&sel.max_keepdim(0).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        let w = ex.broadcast_div(&ex.sum_keepdim(0).unwrap()).unwrap();
        let xt = x.narrow(0, t, 1).unwrap();
        let mut acc = Tensor::zeros((1, h), DType::F32, &CPU).unwrap();
        for (j, &e) in top.iter().enumerate() {
            let e = e as usize;
            let slot = (t * k + j) as u64;
            let lr = |l: &Lora, inp: &Tensor| {
                let im = masked(&l.dropout().unwrap(), inp, |_| slot);
                let a = l.a().as_tensor().get(e).unwrap();
                let b = l.b().as_tensor().get(e).unwrap();
                low_rank(&a, &b, l.scale(), &im)
            };
            let w1 = moe.gate_up.expert(e, DType::F32, &CPU).unwrap();
            let b1 = moe.gate_up_bias.get(e).unwrap();
            let u = xt
                .matmul(&w1.t().unwrap())
                .unwrap()
                .broadcast_add(&b1)
                .unwrap();
            let u = (u + Tensor::cat(&[lr(gl, &xt), lr(ul, &xt)], 1).unwrap()).unwrap();
            // swiglu: gate capped above at L, up clamped to ±L, g·σ(α·g)·(up + 1).
            let i = u.dim(1).unwrap() / 2;
            let gate = u.narrow(1, 0, i).unwrap().minimum(moe.limit).unwrap();
            let up = u
                .narrow(1, i, i)
                .unwrap()
                .clamp(-moe.limit, moe.limit)
                .unwrap();
            let sig = ((gate.clone() * -moe.alpha).unwrap().exp().unwrap() + 1.0)
                .unwrap()
                .recip()
                .unwrap();
            let act = ((gate * sig).unwrap() * (up + 1.0).unwrap()).unwrap();
            let w2 = moe.down.expert(e, DType::F32, &CPU).unwrap();
            let b2 = moe.down_bias.get(e).unwrap();
            let y = act
                .matmul(&w2.t().unwrap())
                .unwrap()
                .broadcast_add(&b2)
                .unwrap();
            let y = (y + lr(dl, &act)).unwrap();
            let wj = w.narrow(0, j, 1).unwrap().unsqueeze(0).unwrap();
            acc = (acc + y.broadcast_mul(&wj).unwrap()).unwrap();
        }
        rows.push(acc);
    }
    Tensor::cat(&rows, 0).unwrap()
}

/// The gradients of Σ(y ⊙ g) and Σ(want ⊙ g), for a random g, agree (≤ 1e-4 relative) for
/// every adapter factor of `moe` and for the input `x`.
fn assert_moe_grads_match(moe: &Moe, x: &Var, y: &Tensor, want: &Tensor, rng: &mut SplitMix64) {
    let g = rand(rng, y.dims(), 1.0);
    let gs = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (want * &g).unwrap().sum_all().unwrap().backward().unwrap();
    let rl = moe.router.lora().unwrap();
    let (gl, ul, dl) = (
        moe.lora(Target::Gate).unwrap(),
        moe.lora(Target::Up).unwrap(),
        moe.lora(Target::Down).unwrap(),
    );
    let vars = [
        (rl.a(), "router A"),
        (rl.b(), "router B"),
        (gl.a(), "gate A"),
        (gl.b(), "gate B"),
        (ul.a(), "up A"),
        (ul.b(), "up B"),
        (dl.a(), "down A"),
        (dl.b(), "down B"),
        (x, "x"),
    ];
    for (v, what) in vars {
        let (o, r) = (grad(&gs, v, what), grad(&gr, v, what));
        assert!(rel(&o, &r) < 1e-4, "d({what}): {}", rel(&o, &r));
    }
}

#[test]
fn expert_projections_match_explicit_mask() {
    let mut m = model(DType::F32);
    attach_random(&mut m, 2);
    let step = LoraDropout { p: 0.4, seed: 5 };
    m.set_lora_dropout(Some(step));
    let moe = &m.layers[1].moe;
    let gl = moe.lora(Target::Gate).unwrap();
    assert_eq!(
        gl.dropout().unwrap(),
        step.for_target("model.layers.1.mlp.experts.gate_proj")
    );
    let mut rng = SplitMix64::new(4);
    let x = Var::from_tensor(&rand(&mut rng, &[12, 64], 1.0)).unwrap();
    // f32 on the CPU: the grouped path, unfused because dropout is on.
    let y = moe.forward(x.as_tensor()).unwrap();
    let want = reference_moe(moe, x.as_tensor());
    assert!(rel(&y, &want) < 1e-5, "forward: {}", rel(&y, &want));
    let plain = {
        let mut p = m.clone();
        p.set_lora_dropout(None);
        p.layers[1].moe.forward(x.as_tensor()).unwrap()
    };
    assert!(rel(&plain, &want) > 1e-2, "dropout made no difference");

    assert_moe_grads_match(moe, &x, &y, &want, &mut rng);
}

/// The per-expert loop (taken off the CPU f32 path; here: bf16) numbers gathered rows by their
/// routing slot too, so it draws the grouped path's masks. Tokens whose top-(k+1) logits are
/// close are skipped (bf16 may route them differently).
#[test]
fn expert_loop_path_draws_the_same_masks() {
    let step = LoraDropout { p: 0.5, seed: 11 };
    let run = |dtype: DType| -> (Tensor, Tensor, Tensor) {
        let mut m = model(dtype);
        attach_random(&mut m, 3);
        let mut rng = SplitMix64::new(6);
        let x = rand(&mut rng, &[16, 64], 1.0).to_dtype(dtype).unwrap();
        let moe = &m.layers[0].moe;
        let logits = moe.router.forward(&x).unwrap();
        let plain = moe.forward(&x).unwrap();
        m.set_lora_dropout(Some(step));
        let y = m.layers[0].moe.forward(&x).unwrap();
        let f = |t: Tensor| t.to_dtype(DType::F32).unwrap();
        (f(y), f(plain), f(logits))
    };
    let (y32, plain32, logits) = run(DType::F32);
    let (y16, _, _) = run(DType::BF16);
    let k = 2;
    let mut checked = 0;
    for (t, row) in logits.to_vec2::<f32>().unwrap().iter().enumerate() {
        let mut s = row.clone();
        s.sort_by(|a, b| b.partial_cmp(a).unwrap());
        if (0..k).any(|i| s[i] - s[i + 1] < 0.05) {
            continue;
        }
        let (a, b) = (y32.get(t).unwrap(), y16.get(t).unwrap());
        let p = plain32.get(t).unwrap();
        assert!(rel(&b, &a) < 3e-2, "token {t}: {}", rel(&b, &a));
        assert!(rel(&p, &a) > 0.1, "token {t}: dropout made no difference");
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} tokens with clear routing");
}

#[test]
fn zero_rate_and_off_change_nothing() {
    let mut m = model(DType::F32);
    attach_random(&mut m, 4);
    let ids = Tensor::from_vec(
        (0..24u32).map(|i| (i * 37 + 5) % 384).collect(),
        (2, 12),
        &CPU,
    )
    .unwrap();
    let h0 = m.forward_hidden(&ids).unwrap();
    let same = |a: &Tensor, b: &Tensor| {
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    // p = 0 leaves every adapter without dropout: the fused paths, bit for bit.
    m.set_lora_dropout(Some(LoraDropout { p: 0.0, seed: 1 }));
    assert!(every_dropout(&m).iter().all(|d| d.is_none()));
    assert!(same(&m.forward_hidden(&ids).unwrap(), &h0));
    // p > 0 changes the output; turning it off restores it exactly.
    m.set_lora_dropout(Some(LoraDropout { p: 0.2, seed: 1 }));
    assert_eq!(every_dropout(&m).len(), 2 * 8);
    assert!(every_dropout(&m).iter().all(|d| d.is_some()));
    let hd = m.forward_hidden(&ids).unwrap();
    assert!(rel(&hd, &h0) > 1e-3);
    // A forward is a pure function of the seed (what recompute and resume rely on).
    assert!(same(&m.forward_hidden(&ids).unwrap(), &hd));
    m.set_lora_dropout(None);
    assert!(same(&m.forward_hidden(&ids).unwrap(), &h0));

    // The base path never sees dropout: with B = 0 (fresh adapters) dropout is a no-op.
    let mut z = model(DType::F32);
    for t in z.lora_targets() {
        let a = Var::from_tensor(&Tensor::ones((4, t.in_dim), DType::F32, &CPU).unwrap()).unwrap();
        let b = Var::zeros((t.out_dim, 4), DType::F32, &CPU).unwrap();
        match t.experts {
            None => z.attach_lora(&t.name, Lora::new(a, b, 2.0).unwrap()),
            Some(e) => {
                let a = Var::from_tensor(
                    &a.as_tensor()
                        .unsqueeze(0)
                        .unwrap()
                        .repeat((e, 1, 1))
                        .unwrap(),
                )
                .unwrap();
                let b = Var::zeros((e, t.out_dim, 4), DType::F32, &CPU).unwrap();
                z.attach_lora(&t.name, Lora::new(a, b, 2.0).unwrap())
            }
        }
        .unwrap();
    }
    let z0 = z.forward_hidden(&ids).unwrap();
    z.set_lora_dropout(Some(LoraDropout { p: 0.5, seed: 3 }));
    let z1 = z.forward_hidden(&ids).unwrap();
    assert!(rel(&z1, &z0) < 1e-5, "{}", rel(&z1, &z0));
}

/// Without dropout the CPU f32 path is the single `MoeExperts` op (dispatch, gate/up, SwiGLU,
/// down and combine fused); it must equal the explicit reference with all-ones masks, forward
/// and every gradient, including the router's (through the routing weights) and the input's.
#[test]
fn fused_expert_op_matches_explicit_reference() {
    let mut m = model(DType::F32);
    attach_random(&mut m, 3);
    let moe = &m.layers[0].moe;
    let mut reference = m.clone();
    for t in [Target::Router, Target::Gate, Target::Up, Target::Down] {
        let l = reference.lora_slot(t, 0).unwrap().as_mut().unwrap();
        l.set_dropout(Some(LoraDropout { p: 0.0, seed: 1 }));
    }
    let reference = &reference.layers[0].moe;
    let mut rng = SplitMix64::new(9);
    let x = Var::from_tensor(&rand(&mut rng, &[15, 64], 1.0)).unwrap();
    let y = moe.forward(x.as_tensor()).unwrap();
    let want = reference_moe(reference, x.as_tensor());
    assert!(rel(&y, &want) < 1e-5, "forward: {}", rel(&y, &want));

    assert_moe_grads_match(moe, &x, &y, &want, &mut rng);
}
