//! Helpers shared by the trainer's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device, Tensor};
use osstune_model::{GptOss, LoraDropout, Target};
use osstune_train::adapters::WEIGHTS_FILE;
use osstune_train::config::TrainConfig;
use osstune_train::rng::SplitMix64;
use osstune_train::trainer::{Outcome, RunOptions, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/train/model")
}

pub fn model(dtype: DType) -> GptOss {
    GptOss::load(model_dir(), &Device::Cpu, dtype).unwrap()
}

/// Samples with a learnable structure: a random "prompt" (untrained) followed by a fixed
/// phrase that depends on the prompt's first token (trained).
pub fn write_data(dir: &Path, n_train: usize, n_valid: usize) {
    let mut rng = SplitMix64::new(5);
    let line = |rng: &mut SplitMix64| {
        let first = 10 + rng.below(4) as u32;
        let mut ids = vec![first];
        let plen = 3 + rng.below(5) as usize;
        ids.extend((0..plen).map(|_| 20 + rng.below(300) as u32));
        let mut mask = vec![0u8; ids.len()];
        for j in 0..12u32 {
            ids.push(first * 7 + j * 3);
            mask.push(1);
        }
        serde_json::json!({"id": "x", "input_ids": ids, "loss_mask": mask, "text": ""}).to_string()
    };
    let train: Vec<String> = (0..n_train).map(|_| line(&mut rng)).collect();
    let valid: Vec<String> = (0..n_valid).map(|_| line(&mut rng)).collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train.jsonl"), train.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("valid.jsonl"), valid.join("\n") + "\n").unwrap();
}

pub fn config(extra: &[&str]) -> TrainConfig {
    let mut o: Vec<String> = [
        "lora.rank=4",
        "lora.alpha=8.0",
        "optim.muon.lr=2e-2",
        "optim.adamw.lr=1e-3",
        "train.micro_batch=2",
        "train.grad_accum=2",
        "train.steps=6",
        "train.val_every=3",
        "train.save_every=3",
        "train.loss_chunk=8",
        "data.max_seq_len=64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    o.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &o).unwrap()
}

pub fn trainer(cfg: TrainConfig, data: &Path, out: &Path, resume: bool) -> Trainer {
    let model = GptOss::load(model_dir(), &Device::Cpu, DType::F32).unwrap();
    Trainer::from_model(cfg, model, data, out, resume).unwrap()
}

pub fn adapters_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(WEIGHTS_FILE)).unwrap()
}

/// Trains `cfg()` on `data` into `straight` without a break, and into `resumed` stopped after
/// each of steps 1..=`stops` (the stop flag, as Ctrl-C sets it) and resumed each time, the
/// last resume running to the end. Checks each run ends where it should.
pub fn train_straight_and_resumed(
    cfg: impl Fn() -> TrainConfig,
    data: &Path,
    straight: &Path,
    resumed: &Path,
    stops: usize,
) {
    trainer(cfg(), data, straight, false)
        .run(&RunOptions::default())
        .unwrap();
    for step in 1..=stops {
        let stop = RunOptions {
            resume: step > 1,
            progress: false,
            stop: Arc::new(AtomicBool::new(true)),
        };
        let s = trainer(cfg(), data, resumed, step > 1).run(&stop).unwrap();
        assert_eq!(s.outcome, Outcome::Interrupted { step });
    }
    let s = trainer(cfg(), data, resumed, true)
        .run(&RunOptions {
            resume: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
}

pub fn max_abs(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn every_dropout(m: &GptOss) -> Vec<Option<LoraDropout>> {
    let mut out = Vec::new();
    for b in &m.layers {
        for l in [
            b.attn.q_proj.lora(),
            b.attn.k_proj.lora(),
            b.attn.v_proj.lora(),
            b.attn.o_proj.lora(),
            b.moe.router.lora(),
        ]
        .into_iter()
        .flatten()
        {
            out.push(l.dropout());
        }
        for l in [
            b.moe.lora(Target::Gate),
            b.moe.lora(Target::Up),
            b.moe.lora(Target::Down),
        ]
        .into_iter()
        .flatten()
        {
            out.push(l.dropout());
        }
    }
    out
}
