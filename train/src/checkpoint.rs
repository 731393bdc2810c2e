//! Checkpoints: `OUT/checkpoints/step-NNNNNN/` holding the adapters, the optimizer state, and
//! `state.json` (step, data cursor, RNG state, schedule position, config). A checkpoint is
//! written into a `.tmp-…` folder, synced, then renamed into place, and only then does
//! `OUT/checkpoints/latest` (itself replaced atomically) point at it — so a crash or a failed
//! write at any moment leaves the previous checkpoint complete and current.

use crate::batches::Cursor;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checkpoints kept on disk (older ones are pruned after a successful save).
pub const KEEP: usize = 2;

/// Everything besides tensors that a resumed run needs to continue bit-identically.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed (= the schedule position).
    pub step: usize,
    pub cursor: Cursor,
    /// State of the dropout RNG (see `rng.rs`).
    pub rng_state: u64,
    pub tokens_seen: u64,
    pub trained_tokens_seen: u64,
    pub elapsed_s: f64,
    /// The config the run was started with (TOML), checked on resume.
    pub config_toml: String,
    /// Last train loss (for the report after resume).
    pub last_loss: Option<f64>,
    /// sha256 of the run's train.jsonl + valid.jsonl (`preflight::data_fingerprint`);
    /// absent in checkpoints written before it existed.
    #[serde(default)]
    pub data_fingerprint: Option<String>,
}

/// Writes `bytes` to `path` via `path.tmp` + fsync + rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

fn step_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// Test hook: when this variable is set, a checkpoint write fails after its first file, as a
/// crash (disk full, kill) in the middle of a write would.
pub const FAIL_ENV: &str = "OSSTUNE_TEST_FAIL_CHECKPOINT_WRITE";

/// Writes a checkpoint for `step`: `fill` writes the files into a temporary folder, which is
/// then renamed to `step-NNNNNN` and made `latest`.
pub fn save(
    out: &Path,
    step: usize,
    fill: impl FnOnce(&Path) -> Result<()>,
    state: &TrainState,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = step_name(step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("removing stale {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    fill(&tmp)?;
    if std::env::var_os(FAIL_ENV).is_some() {
        bail!(
            "checkpoint write into {} failed ({FAIL_ENV} is set)",
            tmp.display()
        );
    }
    write_atomic(&tmp.join("state.json"), &serde_json::to_vec_pretty(state)?)?;
    let dst = root.join(&name);
    if dst.exists() {
        // Re-saving the same step (e.g. final save right after a periodic one): replace it.
        // `latest` may point at it; the window between remove and rename is the only moment
        // without it, and the previous checkpoint (if any) is still there.
        std::fs::remove_dir_all(&dst).with_context(|| format!("removing {}", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    sync_dir(&root);
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, &name);
    Ok(dst)
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on Linux; not supported everywhere.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

fn prune(root: &Path, keep_name: &str) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let mut steps: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    let n = steps.len();
    for old in steps.into_iter().take(n.saturating_sub(KEEP)) {
        if old != keep_name {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
    }
}

/// The checkpoint `latest` points at, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(out);
    let p = root.join("latest");
    if !p.exists() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let dir = root.join(name.trim());
    if !dir.join("state.json").exists() {
        bail!(
            "{} points at {}, which has no state.json",
            p.display(),
            dir.display()
        );
    }
    Ok(Some(dir))
}

pub fn load_state(dir: &Path) -> Result<TrainState> {
    let p = dir.join("state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> TrainState {
        TrainState {
            step,
            cursor: Cursor {
                epoch: 0,
                index: step,
            },
            rng_state: 9,
            tokens_seen: 0,
            trained_tokens_seen: 0,
            elapsed_s: 0.0,
            config_toml: String::new(),
            last_loss: None,
            data_fingerprint: None,
        }
    }

    #[test]
    fn failed_write_keeps_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        save(
            out,
            1,
            |d| write_atomic(&d.join("a.bin"), b"one"),
            &state(1),
        )
        .unwrap();
        // A write that dies half-way (the payload callback fails) …
        let e = save(
            out,
            2,
            |d| {
                write_atomic(&d.join("a.bin"), b"two")?;
                bail!("disk full")
            },
            &state(2),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("disk full"));
        // … leaves step 1 complete and current.
        let l = latest(out).unwrap().unwrap();
        assert!(l.ends_with("step-000001"));
        assert_eq!(load_state(&l).unwrap(), state(1));
        assert_eq!(std::fs::read(l.join("a.bin")).unwrap(), b"one");
        // The next successful save cleans up and prunes to KEEP.
        for s in 2..=4 {
            save(out, s, |d| write_atomic(&d.join("a.bin"), b"x"), &state(s)).unwrap();
        }
        let names: Vec<String> = std::fs::read_dir(checkpoints_dir(out))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("step-"))
            .collect();
        assert_eq!(names.len(), KEEP);
        assert!(latest(out).unwrap().unwrap().ends_with("step-000004"));
    }
}
