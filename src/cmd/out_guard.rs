//! Output folders that must not destroy their inputs: an `--out` that is, contains or lies
//! inside an input folder is refused (an mlx-lm export into the adapter folder would replace
//! the trained `adapters.safetensors`), and an existing folder is only written into with
//! `--overwrite`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `p` made absolute with symlinks resolved, also when its last components do not exist yet
/// (the longest existing ancestor is canonicalized, the rest appended).
fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    };
    let mut rest = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = cur.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return Ok(out);
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// Refuses `out` when it overlaps an input (`(flag, path)` pairs, for the message) or exists
/// without `overwrite`.
pub fn check_output(out: &Path, inputs: &[(&str, &Path)], overwrite: bool) -> Result<()> {
    let o = resolve(out)?;
    for (flag, input) in inputs {
        let i = resolve(input)?;
        let relation = if o == i {
            "is"
        } else if o.starts_with(&i) {
            "is inside"
        } else if i.starts_with(&o) {
            "contains"
        } else {
            continue;
        };
        bail!(
            "--out {} {relation} the input {flag} {}; writing there could destroy the input, \
             choose another --out",
            out.display(),
            input.display()
        );
    }
    if out.exists() && !overwrite {
        bail!(
            "--out {} already exists; choose another folder or pass --overwrite to write \
             into it",
            out.display()
        );
    }
    Ok(())
}
