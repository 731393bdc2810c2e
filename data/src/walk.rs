//! Inputs: any mix of files and directories, walked recursively in sorted order; each file, or
//! each directory a reader claims (an opencode storage tree), becomes a [`Unit`] read by the
//! reader that recognised its content (see [`crate::readers`]).
//!
//! The walk is safe on hostile trees: symbolic links are followed at most once per real
//! directory (a loop is reported, not walked forever), only regular files are read (a FIFO or
//! device named `*.jsonl` would block or never end), and files over `--max-file-mb` are
//! reported and skipped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::diag::Diag;
pub use crate::readers::InputFormat;
use crate::readers::{detect, forced_fallback, Probe, Reader, PROBE_BYTES};

/// One input and the reader that takes it.
#[derive(Clone)]
pub struct Unit {
    pub reader: &'static dyn Reader,
    pub path: PathBuf,
    /// Path relative to the input root, `/`-separated.
    pub rel: String,
}

impl Unit {
    pub fn rel(&self) -> &str {
        &self.rel
    }
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.rel, self.reader.name())
    }
}

/// What the walk needs besides the inputs.
pub struct Walk<'a> {
    pub format: &'a InputFormat,
    pub column: Option<&'a str>,
    pub diag: &'a mut Diag,
    pub skipped: &'a mut usize,
    /// Real (canonical) directories already walked.
    seen_dirs: HashSet<PathBuf>,
    pub units: Vec<Unit>,
}

fn head_of(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

impl Walk<'_> {
    fn skip(&mut self, rel: &str, why: impl AsRef<str>) -> Result<()> {
        *self.skipped += 1;
        self.diag.warn(rel, None, why)
    }

    /// A regular file: probe its head and hand it to the reader that claims it. `explicit`:
    /// named on the command line (then an unrecognised file is reported, and a forced
    /// `--format` takes it anyway).
    fn file(&mut self, path: &Path, rel: String, len: u64, explicit: bool) -> Result<()> {
        if len > self.diag.max_file_bytes {
            let mb = self.diag.max_file_bytes / (1024 * 1024);
            return self.skip(
                &rel,
                format!(
                    "{len} bytes, over --max-file-mb {mb}; skipped (raise the limit to read it)"
                ),
            );
        }
        let head = match head_of(path) {
            Ok(h) => h,
            Err(e) => return self.skip(&rel, format!("cannot read: {e}; skipped")),
        };
        let probe = Probe::new(path, false, &head, self.column);
        let reader = detect(&probe, self.format).or_else(|| {
            if explicit {
                forced_fallback(self.format)
            } else {
                None
            }
        });
        match reader {
            Some(reader) => self.units.push(Unit {
                reader,
                path: path.to_path_buf(),
                rel,
            }),
            // Inside a walked folder, files nobody recognises (opencode's `snapshot/`, READMEs)
            // are counted, not reported one by one.
            None if !explicit => *self.skipped += 1,
            None => self.skip(&rel, "unrecognised file type (use --format); skipped")?,
        }
        Ok(())
    }

    fn dir(&mut self, dir: &Path, rel: &str) -> Result<()> {
        let real = match std::fs::canonicalize(dir) {
            Ok(r) => r,
            Err(e) => return self.skip(rel, format!("cannot resolve directory: {e}; skipped")),
        };
        if !self.seen_dirs.insert(real.clone()) {
            return self.skip(
                rel,
                format!(
                    "symbolic link loop or repeated directory ({} was already walked); skipped",
                    real.display()
                ),
            );
        }
        let probe = Probe::new(dir, true, &[], self.column);
        if let Some(reader) = detect(&probe, self.format) {
            self.units.push(Unit {
                reader,
                path: dir.to_path_buf(),
                rel: rel.to_string(),
            });
            return Ok(());
        }
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => return self.skip(rel, format!("cannot read directory: {e}")),
        };
        let mut entries = Vec::new();
        for e in rd {
            match e {
                Ok(e) => entries.push(e.path()),
                Err(e) => self.skip(rel, format!("cannot list an entry: {e}; skipped"))?,
            }
        }
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            self.entry(&p, join_rel(rel, &name), false)?;
        }
        Ok(())
    }

    /// Any path: follows symbolic links (directories at most once, see [`Walk::dir`]).
    fn entry(&mut self, p: &Path, rel: String, explicit: bool) -> Result<()> {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => return self.skip(&rel, format!("cannot read: {e}; skipped")),
        };
        if meta.is_dir() {
            self.dir(p, &rel)
        } else if meta.is_file() {
            self.file(p, rel, meta.len(), explicit)
        } else {
            self.skip(&rel, "not a regular file (FIFO, socket or device); skipped")
        }
    }
}

/// Units for all inputs, in a deterministic order. A missing input is an error.
pub fn collect_units(
    inputs: &[PathBuf],
    format: &InputFormat,
    column: Option<&str>,
    diag: &mut Diag,
    skipped: &mut usize,
) -> Result<Vec<Unit>> {
    if inputs.is_empty() {
        bail!("no inputs given");
    }
    let mut walk = Walk {
        format,
        column,
        diag,
        skipped,
        seen_dirs: HashSet::new(),
        units: Vec::new(),
    };
    for input in inputs {
        if std::fs::symlink_metadata(input).is_err() {
            bail!("input {} does not exist", input.display());
        }
        let base = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| ".".to_string());
        walk.entry(input, base, true)?;
    }
    Ok(walk.units)
}
