//! Golden parity with transformers + PEFT (fixtures from scripts/gen_train_fixtures.py):
//! base-model loss, adapted loss and every LoRA gradient after one forward/backward, with
//! right padding and chunked cross-entropy, for both the plain and the recomputing backward.

use candle_core::{DType, Device, Tensor};
use osstune_model::GptOss;
use osstune_model::Target;
use osstune_train::adapters::{read_safetensors, select_targets, Adapters};
use osstune_train::batches::{MicroBatch, Sample};
use osstune_train::config::TrainConfig;
use osstune_train::loss::{self, BatchTensors};
use osstune_train::recompute;
use osstune_train::trainer::{attach, base_info, target_shapes};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/train")
}

#[derive(serde::Deserialize)]
struct Parity {
    rank: usize,
    alpha: f64,
    seqs: Vec<Vec<u32>>,
    masks: Vec<Vec<u8>>,
    base_loss: f64,
    loss: f64,
}

fn setup() -> (GptOss, Adapters, MicroBatch, Parity) {
    let dir = fixtures();
    let p: Parity =
        serde_json::from_str(&std::fs::read_to_string(dir.join("parity.json")).unwrap()).unwrap();
    let mut model = GptOss::load(dir.join("model"), &Device::Cpu, DType::F32).unwrap();
    let cfg = TrainConfig::load(
        None,
        &[
            format!("lora.rank={}", p.rank),
            format!("lora.alpha={}", p.alpha),
        ],
    )
    .unwrap();
    let shapes = select_targets(
        &target_shapes(&model),
        &cfg.lora.targets,
        0,
        model.cfg.num_hidden_layers,
    )
    .unwrap();
    let ad = Adapters::init(shapes, &cfg, base_info(&model), &Device::Cpu).unwrap();
    let init = read_safetensors(&dir.join("adapter_init.safetensors"), &Device::Cpu).unwrap();
    for (n, v) in ad.named_vars() {
        v.set(&init[&n]).unwrap();
    }
    assert_eq!(ad.named_vars().len(), init.len());
    attach(&mut model, &ad).unwrap();
    let samples: Vec<Sample> = p
        .seqs
        .iter()
        .zip(&p.masks)
        .map(|(s, m)| Sample {
            input_ids: s.clone(),
            loss_mask: m.clone(),
        })
        .collect();
    let mb = MicroBatch::from_samples(&samples.iter().collect::<Vec<_>>());
    (model, ad, mb, p)
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    (d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-30)) as f64
}

#[test]
fn loss_and_gradients_match_peft() {
    let (mut model, ad, mb, p) = setup();
    let grads_ref =
        read_safetensors(&fixtures().join("parity_grads.safetensors"), &Device::Cpu).unwrap();
    let n = mb.n_trained() as f64;
    let bt = BatchTensors::new(&mb, &Device::Cpu).unwrap();
    let vars = ad.vars();
    // Plain backward with a chunk that does not divide the length; then the recomputing one.
    for (what, chunk) in [("plain", 5usize), ("recompute", 7)] {
        let (loss_sum, gs) = if what == "plain" {
            loss::micro_step(&model, &bt, chunk, 1.0 / n).unwrap()
        } else {
            recompute::micro_step(&model, &vars, &bt, chunk, 1.0 / n).unwrap()
        };
        let l = loss_sum / n;
        assert!(
            ((l - p.loss) / p.loss).abs() < 1e-5,
            "{what}: loss {l} vs PEFT {}",
            p.loss
        );
        let mut worst = (0.0, String::new());
        for (name, v) in ad.named_vars() {
            let g = gs
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{what}: no grad for {name}"));
            let e = rel_err(g, &grads_ref[&name]);
            if e > worst.0 {
                worst = (e, name.clone());
            }
            assert!(e <= 1e-4, "{what}: {name}: relative error {e:.2e}");
        }
        eprintln!(
            "{what}: loss {l:.6} (PEFT {:.6}); worst gradient rel. error {:.2e} ({})",
            p.loss, worst.0, worst.1
        );
    }
    // Every target kind is covered, A and B both have nonzero gradients.
    for t in Target::defaults() {
        let name = ad
            .pairs
            .iter()
            .find(|q| q.shape.target == t)
            .unwrap()
            .shape
            .name
            .clone();
        for s in ["lora_a", "lora_b"] {
            let r = &grads_ref[&format!("{name}.{s}")];
            let m = r
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(m > 1e-6, "{name}.{s}: reference gradient is zero");
        }
    }
    // The base model (adapters removed) against transformers without PEFT.
    model.clear_lora();
    let base = loss::eval_loss(&model, &bt, 64).unwrap() / n;
    assert!(
        ((base - p.base_loss) / p.base_loss).abs() < 1e-5,
        "base loss {base} vs transformers {}",
        p.base_loss
    );
}
