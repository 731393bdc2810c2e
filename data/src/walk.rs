//! Inputs: any mix of files and directories, walked recursively in sorted order; each file
//! or opencode storage tree becomes a [`Unit`] of a detected (or forced) format.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::diag::Diag;
use crate::opencode::is_storage_dir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    Auto,
    /// Any opencode source: storage tree, `opencode.db`, export JSON.
    Opencode,
    ClaudeCode,
}

#[derive(Clone, Debug)]
pub enum Unit {
    Storage { path: PathBuf, rel: String },
    Db { path: PathBuf, rel: String },
    Export { path: PathBuf, rel: String },
    Jsonl { path: PathBuf, rel: String },
}

impl Unit {
    pub fn rel(&self) -> &str {
        match self {
            Unit::Storage { rel, .. }
            | Unit::Db { rel, .. }
            | Unit::Export { rel, .. }
            | Unit::Jsonl { rel, .. } => rel,
        }
    }
}

fn has_sqlite_magic(p: &Path) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 16];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok()
        && &buf == b"SQLite format 3\0"
}

fn classify(path: &Path, rel: String, format: InputFormat) -> Option<Unit> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let path = path.to_path_buf();
    match (format, ext.as_str()) {
        (InputFormat::Opencode, "jsonl") => None,
        (InputFormat::ClaudeCode, "jsonl") | (InputFormat::Auto, "jsonl") => {
            Some(Unit::Jsonl { path, rel })
        }
        (InputFormat::ClaudeCode, _) => None,
        (_, "json") => Some(Unit::Export { path, rel }),
        (_, "db") | (_, "sqlite") | (_, "sqlite3") if has_sqlite_magic(&path) => {
            Some(Unit::Db { path, rel })
        }
        _ => None,
    }
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn walk(
    dir: &Path,
    rel: &str,
    format: InputFormat,
    out: &mut Vec<Unit>,
    skipped: &mut usize,
    diag: &mut Diag,
) -> Result<()> {
    if format != InputFormat::ClaudeCode && is_storage_dir(dir) {
        out.push(Unit::Storage {
            path: dir.to_path_buf(),
            rel: rel.to_string(),
        });
        return Ok(());
    }
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => {
            diag.warn(rel, None, format!("cannot read directory: {e}"))?;
            *skipped += 1;
            return Ok(());
        }
    };
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        let r = join_rel(rel, &name);
        if p.is_dir() {
            walk(&p, &r, format, out, skipped, diag)?;
        } else {
            // Gen-2 opencode trees keep `tool-output/`, `snapshot/` etc. next to `storage/`: only
            // recognised files count.
            match classify(&p, r, format) {
                Some(u) => out.push(u),
                None => *skipped += 1,
            }
        }
    }
    Ok(())
}

/// Units for all inputs, in a deterministic order. A missing input is an error.
pub fn collect_units(
    inputs: &[PathBuf],
    format: InputFormat,
    diag: &mut Diag,
    skipped: &mut usize,
) -> Result<Vec<Unit>> {
    if inputs.is_empty() {
        bail!("no inputs given");
    }
    let mut out = Vec::new();
    for input in inputs {
        if !input.exists() {
            bail!("input {} does not exist", input.display());
        }
        let base = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".to_string());
        if input.is_dir() {
            walk(input, &base, format, &mut out, skipped, diag)?;
        } else {
            // A file named explicitly is taken by extension, or by the forced format.
            let unit = classify(input, base.clone(), format).or_else(|| match format {
                InputFormat::ClaudeCode => Some(Unit::Jsonl {
                    path: input.clone(),
                    rel: base.clone(),
                }),
                InputFormat::Opencode => Some(Unit::Export {
                    path: input.clone(),
                    rel: base.clone(),
                }),
                InputFormat::Auto => None,
            });
            match unit {
                Some(u) => out.push(u),
                None => {
                    diag.warn(
                        &base,
                        None,
                        "unrecognised file type (use --format); skipped",
                    )?;
                    *skipped += 1;
                }
            }
        }
    }
    Ok(out)
}
