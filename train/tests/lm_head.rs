//! `lm_head` as a LoRA target (off by default): its gradients through the trainer's chunked
//! loss equal candle's autograd through the whole composition (logits with the adapter, then
//! log-softmax cross-entropy), with and without activation checkpointing; it trains, saves,
//! resumes its layout, exports to PEFT (and mlx-lm refuses it, naming why) and imports back.

mod common;
use candle_core::{DType, Device, Tensor, Var, D};
use common::*;
use osstune_model::GptOss;
use osstune_train::adapters::{read_safetensors, select_targets, Adapters};
use osstune_train::batches::MicroBatch;
use osstune_train::export::{export, import, Format};
use osstune_train::loss::{micro_step, BatchTensors};
use osstune_train::trainer::{attach, base_info, target_shapes, Outcome, RunOptions};
use osstune_train::{config::TrainConfig, recompute};

const TARGETS: &str = r#"lora.targets=["q_proj","gate_proj","lm_head"]"#;

/// A model with q_proj, gate_proj and lm_head adapters whose B factors are nonzero (so every
/// factor gets a gradient), and the adapters.
fn adapted(cfg: &TrainConfig) -> (GptOss, Adapters) {
    let mut m = model(DType::F32);
    let n = m.cfg.num_hidden_layers;
    let shapes = select_targets(&target_shapes(&m), &cfg.lora.targets, 0, n).unwrap();
    assert_eq!(
        shapes.last().unwrap().name,
        "lm_head",
        "model-level targets come last"
    );
    let ad = Adapters::init(shapes, cfg, base_info(&m), &Device::Cpu).unwrap();
    for (i, p) in ad.pairs.iter().enumerate() {
        let mut rng = osstune_train::rng::SplitMix64::new(100 + i as u64);
        let v: Vec<f32> = (0..p.b.elem_count())
            .map(|_| (rng.next_f32() - 0.5) * 0.1)
            .collect();
        p.b.set(&Tensor::from_vec(v, p.b.dims(), &Device::Cpu).unwrap())
            .unwrap();
    }
    attach(&mut m, &ad).unwrap();
    (m, ad)
}

/// Two rows of 9 positions, some untrained (weight 0), targets spread over the vocabulary.
fn batch(v: usize) -> MicroBatch {
    let (b, t) = (2, 9);
    let inputs: Vec<u32> = (0..b * t)
        .map(|i| (17 + 31 * i as u32) % v as u32)
        .collect();
    let targets: Vec<u32> = (0..b * t).map(|i| (5 + 47 * i as u32) % v as u32).collect();
    let weights: Vec<f32> = (0..b * t)
        .map(|i| if i % 9 < 3 { 0.0 } else { 1.0 })
        .collect();
    MicroBatch {
        batch: b,
        len: t,
        inputs,
        targets,
        weights,
        n_tokens: b * t,
    }
}

/// Σ w·(−log softmax(logits)[target]) by candle autograd, and its gradients.
fn reference(m: &GptOss, bt: &BatchTensors) -> (f64, candle_core::backprop::GradStore) {
    let logits = m.logits(&m.forward_hidden(&bt.inputs).unwrap()).unwrap();
    let max = logits.max_keepdim(D::Minus1).unwrap();
    let shifted = logits.broadcast_sub(&max).unwrap();
    let lse = shifted
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp = shifted.broadcast_sub(&lse).unwrap();
    let picked = logp
        .gather(&bt.targets.unsqueeze(D::Minus1).unwrap(), D::Minus1)
        .unwrap()
        .squeeze(D::Minus1)
        .unwrap();
    let loss = (picked * &bt.weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap();
    let value = loss.to_scalar::<f32>().unwrap() as f64;
    (value, loss.backward().unwrap())
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = max_abs(b).max(1e-12);
    max_abs(&(a - b).unwrap()) / scale
}

#[test]
fn lm_head_gradients_match_autograd_reference() {
    let cfg = config(&[TARGETS]);
    let (m, ad) = adapted(&cfg);
    let bt = BatchTensors::new(&batch(m.cfg.vocab_size), &Device::Cpu).unwrap();
    let (want_loss, want) = reference(&m, &bt);
    let vars: Vec<Var> = ad.vars();
    // loss_chunk 2 → the 12 trained rows go through the head in several chunks.
    let plain = micro_step(&m, &bt, 2, 1.0).unwrap();
    let recomputed = recompute::micro_step(&m, &vars, &bt, 2, 1.0).unwrap();
    for (what, (loss, grads)) in [("plain", plain), ("recompute", recomputed)] {
        assert!(
            (loss - want_loss).abs() <= 1e-4 * want_loss.abs(),
            "{what}: loss {loss} vs reference {want_loss}"
        );
        for (name, v) in ad.named_vars() {
            let got = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{what}: no grad {name}"));
            let exp = want.get(v.as_tensor()).unwrap();
            let e = rel_err(got, exp);
            assert!(e <= 1e-4, "{what}: {name}: relative error {e:.2e}");
            assert!(max_abs(exp) > 0.0, "{name}: reference gradient is zero");
        }
    }
}

#[test]
fn lm_head_trains_exports_to_peft_and_imports_back() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 24, 6);
    let out = tmp.path().join("out");
    let cfg = || config(&[TARGETS, "train.steps=8", "train.val_every=4"]);
    let s = trainer(cfg(), &data, &out, false)
        .run(&RunOptions::default())
        .unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let (first, last) = (s.first_valid_loss.unwrap(), s.last_valid_loss.unwrap());
    assert!(
        last < first,
        "validation loss did not fall: {first} -> {last}"
    );

    // Saved: the head's factors beside the layers', and it is listed as a target.
    let saved = read_safetensors(&out.join("adapters.safetensors"), &Device::Cpu).unwrap();
    let (v, h) = (
        saved["lm_head.lora_b"].dims()[0],
        saved["lm_head.lora_a"].dims()[1],
    );
    assert_eq!(saved["lm_head.lora_a"].dims(), [4, h]);
    assert_eq!(saved["lm_head.lora_b"].dims(), [v, 4]);
    assert!(
        max_abs(&saved["lm_head.lora_b"]) > 0.0,
        "lm_head B never moved"
    );
    let acfg = osstune_train::adapters::read_config(&out).unwrap();
    assert!(acfg.targets.contains(&"lm_head".to_string()));

    // PEFT: a lora.Linear on the `lm_head` module, listed in target_modules.
    let peft = tmp.path().join("peft");
    export(&out, &peft, Format::Peft).unwrap();
    let pt = read_safetensors(&peft.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(pt["base_model.model.lm_head.lora_A.weight"].dims()[1], h);
    assert_eq!(pt["base_model.model.lm_head.lora_B.weight"].dims()[0], v);
    let pcfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(peft.join("adapter_config.json")).unwrap()).unwrap();
    let modules = pcfg["target_modules"].as_array().unwrap();
    assert!(modules.iter().any(|m| m == "lm_head"), "{modules:?}");

    // mlx-lm cannot hold it: refused with the reason, nothing half-written.
    let mlx = tmp.path().join("mlx");
    let err = export(&out, &mlx, Format::Mlx).unwrap_err().to_string();
    assert!(err.contains("lm_head") && err.contains("merge"), "{err}");

    // Back from PEFT: the same head delta (the rank was padded to 2r for gate/up).
    let back = tmp.path().join("back");
    import(&peft, &back, Format::Peft, &acfg.base_model).unwrap();
    let b2 = read_safetensors(&back.join("adapters.safetensors"), &Device::Cpu).unwrap();
    let c2 = osstune_train::adapters::read_config(&back).unwrap();
    let delta = |t: &std::collections::HashMap<String, Tensor>, scale: f64| {
        (t["lm_head.lora_b"].matmul(&t["lm_head.lora_a"]).unwrap() * scale).unwrap()
    };
    let e = rel_err(&delta(&b2, c2.scale()), &delta(&saved, acfg.scale()));
    assert!(e < 1e-6, "lm_head delta changed through PEFT: {e:.2e}");
    assert!(c2.targets.contains(&"lm_head".to_string()));
}
