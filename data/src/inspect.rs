//! `osstune data inspect`: one sample with the trained tokens highlighted.

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};
use osstune_harmony::Tokenizer;

use crate::sample::Sample;

/// Load sample `index` (0-based line among non-empty lines) or the one with `id`.
pub fn load_sample(path: &Path, index: usize, id: Option<&str>) -> Result<(Sample, usize)> {
    find_sample(path, index, id).map(|(s, n, _)| (s, n))
}

/// [`load_sample`], then check every token id against the tokenizer's vocabulary and the mask
/// values, naming the file and line of a bad sample (a sample written by another tool or edited
/// by hand would otherwise fail later with no location).
pub fn load_sample_checked(
    path: &Path,
    index: usize,
    id: Option<&str>,
    vocab_size: usize,
) -> Result<(Sample, usize)> {
    let (s, n, line) = find_sample(path, index, id)?;
    if let Some((i, t)) = s
        .input_ids
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab_size)
    {
        bail!(
            "{}:{line}: input_ids[{i}] = {t} is outside the tokenizer's vocabulary ({vocab_size} ids); was this file written for another tokenizer?",
            path.display()
        );
    }
    if let Some((i, m)) = s.loss_mask.iter().enumerate().find(|(_, &m)| m > 1) {
        bail!(
            "{}:{line}: loss_mask[{i}] = {m}, expected 0 or 1",
            path.display()
        );
    }
    Ok((s, n))
}

/// The sample, its index among samples and its 1-based line.
fn find_sample(path: &Path, index: usize, id: Option<&str>) -> Result<(Sample, usize, usize)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}:{}: cannot read line", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let want = match id {
            Some(id) => line.contains(&format!("\"id\":\"{id}\"")),
            None => n == index,
        };
        if want {
            let s: Sample = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a sample", path.display(), i + 1))?;
            if s.input_ids.len() != s.loss_mask.len() {
                bail!(
                    "{}:{}: input_ids ({}) and loss_mask ({}) differ in length",
                    path.display(),
                    i + 1,
                    s.input_ids.len(),
                    s.loss_mask.len()
                );
            }
            return Ok((s, n, i + 1));
        }
        n += 1;
    }
    match id {
        Some(id) => bail!("{}: no sample with id {id}", path.display()),
        None => bail!("{}: has {n} samples, no index {index}", path.display()),
    }
}

/// The sample's text with trained runs in green (`color`) or wrapped in `[[ ]]`.
pub fn highlight(tok: &Tokenizer, s: &Sample, color: bool) -> Result<String> {
    let mut out = String::new();
    let mut i = 0;
    while i < s.input_ids.len() {
        let m = s.loss_mask[i];
        let mut j = i;
        while j < s.input_ids.len() && s.loss_mask[j] == m {
            j += 1;
        }
        let text = tok.decode(&s.input_ids[i..j])?;
        match (m, color) {
            (0, _) => out.push_str(&text),
            (_, true) => out.push_str(&format!("\x1b[1;32m{text}\x1b[0m")),
            (_, false) => out.push_str(&format!("[[{text}]]")),
        }
        i = j;
    }
    Ok(out)
}

/// Header lines for a sample.
pub fn describe(s: &Sample, index: usize) -> String {
    format!(
        "sample {index} id {} | {} session {} turn {} ({})\n{} tokens, {} trained ({:.1}%), {} messages",
        s.id,
        s.source.file,
        s.source.session,
        s.source.turn,
        s.source.format,
        s.n_tokens,
        s.n_trained,
        100.0 * s.n_trained as f64 / s.n_tokens.max(1) as f64,
        s.messages.len()
    )
}
