//! LoRA dropout (`lora.dropout` > 0), trainer side: masks are the trainer's SplitMix64 stream
//! seeded per step and micro-batch, validation never sees dropout, `--resume` and activation
//! checkpointing stay exact, training with dropout learns, and the exported adapter configs
//! carry the configured rate. The model side is in `dropout_masks.rs`.

mod common;
use candle_core::Device;
use common::*;
use osstune_train::adapters::{read_safetensors, WEIGHTS_FILE};
use osstune_train::config::TrainConfig;
use osstune_train::export::{export, Format};
use osstune_train::rng::SplitMix64;
use osstune_train::trainer::{dropout_seed, RunOptions};
use std::path::Path;

const CPU: Device = Device::Cpu;

/// The trainer tests' config with dropout 0.1, 3 steps, no periodic validation or saves.
fn config(extra: &[&str]) -> TrainConfig {
    let mut o = vec![
        "lora.dropout=0.1",
        "train.steps=3",
        "train.val_every=0",
        "train.save_every=0",
    ];
    o.extend_from_slice(extra);
    common::config(&o)
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let mut w: Vec<(String, Vec<f32>)> = read_safetensors(&dir.join(WEIGHTS_FILE), &CPU)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    w.sort_by(|a, b| a.0.cmp(&b.0));
    w
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut d = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            d = d.max((x - y).abs());
        }
    }
    d
}

#[test]
fn mask_hash_is_the_trainers_splitmix64_stream() {
    let mut r = SplitMix64::new(0xDEAD_BEEF);
    for c in 0..64 {
        assert_eq!(
            r.next_u64(),
            osstune_model::lora::dropout::splitmix_at(0xDEAD_BEEF, c)
        );
    }
}

#[test]
fn masks_are_seeded_per_step_and_micro_batch() {
    let cfg = config(&[]);
    let s = |step, micro| dropout_seed(&cfg, step, micro);
    assert_eq!(s(3, 1), s(3, 1));
    let all = [s(0, 0), s(0, 1), s(1, 0), s(1, 1), s(2, 0)];
    for i in 0..all.len() {
        for j in i + 1..all.len() {
            assert_ne!(all[i], all[j]);
        }
    }
    assert_ne!(dropout_seed(&config(&["train.seed=7"]), 0, 0), s(0, 0));
}

#[test]
fn validation_never_sees_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 8, 4);
    let mut off = trainer(
        config(&["lora.dropout=0.0"]),
        &data,
        &tmp.path().join("a"),
        false,
    );
    let mut on = trainer(config(&[]), &data, &tmp.path().join("b"), false);
    // Same initial adapters (the init does not depend on dropout): the same validation loss.
    let v = on.validate().unwrap().unwrap();
    assert_eq!(v, on.validate().unwrap().unwrap());
    assert_eq!(v, off.validate().unwrap().unwrap());
    // Two steps each (the warm-up makes the first update zero): dropout changes the
    // update, and is off again afterwards.
    for _ in 0..2 {
        on.train_step().unwrap();
        off.train_step().unwrap();
    }
    assert!(every_dropout(&on.model).iter().all(|d| d.is_none()));
    let (wa, wb) = (on.adapters.vars(), off.adapters.vars());
    let diff = wa
        .iter()
        .zip(&wb)
        .map(|(a, b)| max_abs(&(a.as_tensor() - b.as_tensor()).unwrap()))
        .fold(0f32, f32::max);
    assert!(diff > 1e-6, "dropout did not change the update");
    // The dropout run's validation equals a dropout-free trainer's on the same weights.
    let v1 = on.validate().unwrap().unwrap();
    assert_eq!(v1, on.validate().unwrap().unwrap());
    off.adapters.assign_from(&on.adapters).unwrap();
    assert_eq!(v1, off.validate().unwrap().unwrap());
}

#[test]
fn resume_is_bit_identical_with_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 10, 2);
    // Interrupted after step 1 (as Ctrl-C does), then resumed to the end.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train_straight_and_resumed(|| config(&[]), &data, &a, &b, 1);
    assert_eq!(
        adapters_bytes(&a),
        adapters_bytes(&b),
        "resumed adapters differ"
    );
}

#[test]
fn recompute_matches_plain_with_dropout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 8, 2);
    let run = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name);
        trainer(config(extra), &data, &out, false)
            .run(&RunOptions::default())
            .unwrap();
        weights(&out)
    };
    let plain = run("plain", &["train.steps=2"]);
    let ckpt = run(
        "ckpt",
        &["train.steps=2", "train.activation_checkpointing=true"],
    );
    let d = max_diff(&plain, &ckpt);
    assert!(d < 1e-5, "recompute differs from plain: {d}");
    // Discriminating: without dropout the adapters end far further away than that.
    let nodrop = run("nodrop", &["train.steps=2", "lora.dropout=0.0"]);
    assert!(
        max_diff(&plain, &nodrop) > 1e-3,
        "dropout made no difference"
    );
}

#[test]
fn training_with_dropout_learns_and_exports_the_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 32, 8);
    let out = tmp.path().join("out");
    let s = trainer(
        config(&["train.steps=12", "train.grad_accum=1", "train.val_every=6"]),
        &data,
        &out,
        false,
    )
    .run(&RunOptions::default())
    .unwrap();
    let (first, last) = (s.first_valid_loss.unwrap(), s.last_valid_loss.unwrap());
    eprintln!("validation loss with dropout 0.1: {first:.4} -> {last:.4}");
    assert!(
        last < 0.9 * first,
        "validation loss did not fall: {first} -> {last}"
    );

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["dropout"], 0.1);
    let peft = tmp.path().join("peft");
    export(&out, &peft, Format::Peft).unwrap();
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(p["lora_dropout"], 0.1);
    let mlx = tmp.path().join("mlx");
    export(&out, &mlx, Format::Mlx).unwrap();
    let x: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mlx.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(x["lora_parameters"]["dropout"], 0.1);
}
