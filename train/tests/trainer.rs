//! The training loop on the small fixture model (fixtures/train/model): learning, exact
//! resume, the NaN guard, and export/import round trips.

mod common;
use candle_core::{DType, Device};
use common::*;
use osstune_model::GptOss;
use osstune_train::adapters::{read_safetensors, WEIGHTS_FILE};
use osstune_train::checkpoint;
use osstune_train::metrics::{read_records, Record};
use osstune_train::trainer::{Outcome, RunOptions, Trainer};
use std::path::Path;

#[test]
fn validation_loss_falls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 48, 8);
    let out = tmp.path().join("out");
    let mut t = trainer(
        config(&["train.steps=30", "train.val_every=10"]),
        &data,
        &out,
        false,
    );
    let s = t.run(&RunOptions::default()).unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let (first, last) = (s.first_valid_loss.unwrap(), s.last_valid_loss.unwrap());
    eprintln!("validation loss {first:.4} -> {last:.4}");
    assert!(
        last < 0.7 * first,
        "validation loss did not fall: {first} -> {last}"
    );
    // Outputs: adapters, metrics with every step, the loss curve.
    assert!(out.join("adapters.safetensors").exists() && out.join("adapter_config.json").exists());
    let recs = read_records(&out.join("metrics.jsonl")).unwrap();
    let steps: Vec<usize> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Train { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=30).collect::<Vec<_>>());
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
}

#[test]
fn resume_is_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 10, 4);
    // Uninterrupted; and interrupted after step 1 (stop flag, as Ctrl-C sets it), again after
    // step 2, then resumed to the end. The micro-batches run over an epoch boundary on the way.
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    train_straight_and_resumed(|| config(&[]), &data, &a, &b, 2);
    assert_eq!(
        adapters_bytes(&a),
        adapters_bytes(&b),
        "resumed adapters differ"
    );
    // The metrics of the resumed run equal the uninterrupted one's (except timings).
    let strip = |p: &Path| -> Vec<(usize, f64)> {
        read_records(&p.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Record::Train { step, loss, .. } => (step, loss),
                Record::Valid { step, loss, .. } => (step + 1000, loss),
                Record::Resume { step, .. } => (step + 2000, 0.0),
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    // A changed recipe is refused on resume.
    let e = Trainer::from_model(
        config(&["lora.rank=8"]),
        GptOss::load(model_dir(), &Device::Cpu, DType::F32).unwrap(),
        &data,
        &b,
        true,
    )
    .err()
    .unwrap();
    assert!(format!("{e:#}").contains("config differs"), "{e:#}");
}

#[test]
fn nan_loss_stops_and_keeps_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 10, 2);
    let out = tmp.path().join("out");
    // An absurd learning rate: step 1 is computed with the initial adapters (finite loss),
    // its update blows the weights up, step 2's loss is not finite.
    let cfg = config(&[
        "optim.muon.lr=1e30",
        "optim.schedule.warmup_ratio=0.0",
        "train.save_every=1",
    ]);
    let mut t = trainer(cfg, &data, &out, false);
    let e = t.run(&RunOptions::default()).unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("diverged") && msg.contains("step 2"), "{msg}");
    let last = checkpoint::latest(&out).unwrap().unwrap();
    assert!(last.ends_with("step-000001"), "{}", last.display());
    let w = read_safetensors(&last.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    for (n, t) in w {
        let s = t
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(s.is_finite(), "{n} not finite in the kept checkpoint");
    }
}

#[test]
fn recompute_matches_plain_training() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_data(&data, 8, 2);
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    trainer(config(&["train.steps=2"]), &data, &a, false)
        .run(&RunOptions::default())
        .unwrap();
    trainer(
        config(&["train.steps=2", "train.activation_checkpointing=true"]),
        &data,
        &b,
        false,
    )
    .run(&RunOptions::default())
    .unwrap();
    let wa = read_safetensors(&a.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    let wb = read_safetensors(&b.join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    for (n, ta) in &wa {
        let d = (ta - &wb[n]).unwrap().abs().unwrap().max_all().unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{n}: {d}");
    }
}
