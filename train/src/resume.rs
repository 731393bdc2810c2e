//! What a `--resume` may change, and the data check.
//!
//! A resumed run continues the saved one, so the model, the adapters' shape, the data order
//! and the optimizers' kind must be the same. These may change, because they are how one
//! rescues or extends a run (the divergence message advises them), and every change is
//! recorded in `metrics.jsonl` as a `resume` record:
//! - paths (`model.path`, `data.path`, `train.out`);
//! - `train.steps` (the schedule is stretched to the new total from the current step);
//! - the learning rates `optim.muon.lr`, `optim.adamw.lr` and `train.grad_clip`.
//!
//! The data must be the same bytes (sha256 of train.jsonl and valid.jsonl, stored in each
//! checkpoint), unless `--allow-data-change`.

use crate::config::TrainConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The changes between the saved and the current config that a resume may make, as
/// `key: old -> new` lines; an error for any other change.
pub fn allowed_changes(saved: &str, now: &str, dir: &Path) -> Result<Vec<String>> {
    let parse =
        |s: &str| -> Result<TrainConfig> { toml::from_str(s).context("parsing a saved config") };
    let (old, new) = (parse(saved)?, parse(now)?);
    let mut changes = Vec::new();
    let mut note = |key: &str, a: f64, b: f64| {
        if a != b {
            changes.push(format!("{key}: {a} -> {b}"));
        }
    };
    note(
        "train.steps",
        old.train.steps as f64,
        new.train.steps as f64,
    );
    note("optim.muon.lr", old.optim.muon.lr, new.optim.muon.lr);
    note("optim.adamw.lr", old.optim.adamw.lr, new.optim.adamw.lr);
    note("train.grad_clip", old.train.grad_clip, new.train.grad_clip);
    let norm = |mut c: TrainConfig| -> TrainConfig {
        c.model.path = None;
        c.data.path = None;
        c.train.out = None;
        c.train.steps = 0;
        c.optim.muon.lr = 0.0;
        c.optim.adamw.lr = 0.0;
        c.train.grad_clip = 0.0;
        c
    };
    if norm(old) != norm(new) {
        bail!(
            "--resume: the config differs from the one checkpoint {} was trained with \
             (only paths, train.steps, optim.muon.lr, optim.adamw.lr and train.grad_clip may \
             change); saved config:\n{saved}",
            dir.display()
        );
    }
    Ok(changes)
}

/// Refuses to resume on different data unless `allow`. Checkpoints written before the
/// fingerprint existed (None) cannot be checked and are let through with a notice.
pub fn check_data(saved: Option<&str>, now: &str, dir: &Path, allow: bool) -> Result<()> {
    match saved {
        None => eprintln!(
            "note: checkpoint {} records no data fingerprint; the data cannot be checked",
            dir.display()
        ),
        Some(s) if s == now => {}
        Some(s) if allow => eprintln!(
            "--allow-data-change: resuming on different data (checkpoint {}, now {})",
            &s[..s.len().min(12)],
            &now[..now.len().min(12)]
        ),
        Some(s) => bail!(
            "--resume: train.jsonl / valid.jsonl differ from the data checkpoint {} was \
             trained on (sha256 {} then, {} now); resume on the same data, or pass \
             --allow-data-change to continue anyway",
            dir.display(),
            &s[..s.len().min(16)],
            &now[..now.len().min(16)]
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sets: &[&str]) -> String {
        let o: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &o).unwrap().to_toml().unwrap()
    }

    #[test]
    fn learning_rates_steps_and_clip_may_change_nothing_else() {
        let d = Path::new("ck");
        let base = cfg(&[]);
        let c =
            allowed_changes(&base, &cfg(&["optim.muon.lr=0.001", "train.steps=99"]), d).unwrap();
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c.iter().any(|l| l.starts_with("optim.muon.lr:")));
        assert!(allowed_changes(&base, &cfg(&["train.grad_clip=1.0"]), d).is_ok());
        let e = allowed_changes(&base, &cfg(&["lora.rank=4"]), d).unwrap_err();
        assert!(e.to_string().contains("only paths"), "{e}");
    }

    #[test]
    fn data_mismatch_refused_unless_allowed() {
        let d = Path::new("ck");
        assert!(check_data(Some("aa"), "aa", d, false).is_ok());
        assert!(check_data(None, "aa", d, false).is_ok());
        let e = check_data(Some("aa"), "bb", d, false).unwrap_err();
        assert!(e.to_string().contains("--allow-data-change"), "{e}");
        assert!(check_data(Some("aa"), "bb", d, true).is_ok());
    }
}
