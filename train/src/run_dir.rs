//! The run folder (`train.out`) as a guarded resource:
//!
//! - one process at a time: an exclusive advisory lock (`flock`, via `File::try_lock`) on
//!   `OUT/.osstune-train.lock`, held for the run's life. The kernel drops it when the process
//!   dies (even by `kill -9`), so a stale lock file never blocks the next run; the file holds
//!   the holder's pid only so that the refusal can name it.
//! - a finished or interrupted run is never overwritten by accident: a fresh run (no
//!   `--resume`) needs an empty or missing folder, or `--overwrite`, which removes the
//!   previous run's outputs first.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Lock file inside the run folder.
pub const LOCK_NAME: &str = ".osstune-train.lock";

/// Files and folders a training run writes into its folder (removed by `--overwrite`).
pub const RUN_OUTPUTS: [&str; 5] = [
    "checkpoints",
    "metrics.jsonl",
    "loss.svg",
    "adapters.safetensors",
    "adapter_config.json",
];

/// Holds the run folder's lock until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `out` if needed and locks it, or fails naming the pid that holds the lock.
    pub fn acquire(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let path = out.join(LOCK_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                bail!(
                    "{} is in use: {who} is training into it (lock {}); wait for it to finish \
                     or choose another --out",
                    out.display(),
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        // Ours now: record the pid for whoever is refused next.
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| write!(file, "{}", std::process::id()))
            .and_then(|_| file.flush())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Checks (and with `overwrite`, clears) the run folder for a run that does not resume.
/// Call with the lock held. Returns the names removed.
pub fn prepare_fresh(out: &Path, overwrite: bool) -> Result<Vec<String>> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Ok(Vec::new()); // not there yet: nothing to protect
    };
    let mut present: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_NAME)
        .collect();
    present.sort();
    if present.is_empty() {
        return Ok(Vec::new());
    }
    if !overwrite {
        let is_run = present.iter().any(|n| RUN_OUTPUTS.contains(&n.as_str()));
        bail!(
            "{} already holds {} ({}); continue it with --resume, choose a new --out, or \
             pass --overwrite to replace it",
            out.display(),
            if is_run {
                "a training run"
            } else {
                "other files"
            },
            present.join(", ")
        );
    }
    let foreign: Vec<&String> = present
        .iter()
        .filter(|n| !RUN_OUTPUTS.contains(&n.as_str()))
        .collect();
    if !foreign.is_empty() {
        bail!(
            "--overwrite: {} holds files a training run does not write ({}); refusing to \
             delete them, choose another --out",
            out.display(),
            foreign
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for name in &present {
        let p = out.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("--overwrite: removing {}", p.display()))?;
    }
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder_and_frees_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let first = RunLock::acquire(&out).unwrap();
        // flock locks belong to the open file description: a second open in this process
        // conflicts like another process would.
        let e = RunLock::acquire(&out).unwrap_err().to_string();
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(first);
        RunLock::acquire(&out).unwrap();
    }

    #[test]
    fn fresh_run_refuses_an_existing_run_unless_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        assert!(prepare_fresh(&out.join("missing"), false)
            .unwrap()
            .is_empty());
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        std::fs::create_dir_all(out.join("checkpoints/step-000001")).unwrap();
        let e = prepare_fresh(out, false).unwrap_err().to_string();
        assert!(e.contains("--resume") && e.contains("--overwrite"), "{e}");
        assert!(out.join("metrics.jsonl").exists());
        let removed = prepare_fresh(out, true).unwrap();
        assert_eq!(removed, ["checkpoints", "metrics.jsonl"]);
        assert!(!out.join("checkpoints").exists());
        // A folder with foreign files is never emptied.
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        assert!(prepare_fresh(out, true).is_err());
        assert!(out.join("notes.txt").exists());
    }
}
