//! A release-shaped checkpoint to benchmark (`--preset gpt-oss-20b|gpt-oss-120b [--layers N]`),
//! written by `init-tiny`'s streaming writer, either into a cache folder that later runs reuse
//! (`--model-cache DIR`, recognised by a marker file naming preset, layers and seed) or into a
//! temporary folder removed when the bench ends.

use anyhow::{bail, Context, Result};
use osstune_model::io::real_shape::{checkpoint_size, release_shape, write_release_layout};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReleasePreset {
    /// 24 layers, 32 experts (12.8 GiB).
    #[value(name = "gpt-oss-20b")]
    GptOss20b,
    /// 36 layers, 128 experts (60.8 GiB).
    #[value(name = "gpt-oss-120b")]
    GptOss120b,
}

impl ReleasePreset {
    pub fn name(self) -> &'static str {
        match self {
            ReleasePreset::GptOss20b => "gpt-oss-20b",
            ReleasePreset::GptOss120b => "gpt-oss-120b",
        }
    }
}

/// Marker written after the checkpoint is complete; its absence means "not a finished cache".
const MARKER: &str = ".osstune-bench-preset.json";

/// The checkpoint directory; a temporary one is removed on drop.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub what: String,
    temp: bool,
}

impl Drop for Checkpoint {
    fn drop(&mut self) {
        if self.temp {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn marker_json(preset: ReleasePreset, layers: usize, seed: u64) -> serde_json::Value {
    serde_json::json!({ "preset": preset.name(), "layers": layers, "seed": seed })
}

/// Writes (or finds in `cache`) the `preset` checkpoint cut to `layers` layers (default all).
pub fn prepare(
    preset: ReleasePreset,
    layers: Option<usize>,
    cache: Option<&Path>,
    seed: u64,
    tag: &str,
) -> Result<Checkpoint> {
    let mut shape = release_shape(preset.name()).expect("a release preset");
    if let Some(n) = layers {
        if n == 0 || n > shape.layers {
            bail!(
                "--layers {n}: {} has 1..={} layers",
                preset.name(),
                shape.layers
            );
        }
        shape.layers = n;
    }
    let want = marker_json(preset, shape.layers, seed);
    let what = format!(
        "{} ({} of {} layers, seed {seed})",
        preset.name(),
        shape.layers,
        release_shape(preset.name()).expect("preset").layers
    );
    let (dir, temp) = match cache {
        Some(d) => (d.to_path_buf(), false),
        None => (
            std::env::temp_dir().join(format!("osstune-bench-{tag}-{}", std::process::id())),
            true,
        ),
    };
    let marker = dir.join(MARKER);
    if !temp {
        if let Ok(text) = std::fs::read_to_string(&marker) {
            let have: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if have == want && dir.join("config.json").exists() {
                eprintln!("reusing the cached checkpoint in {}", dir.display());
                return Ok(Checkpoint { dir, what, temp });
            }
            eprintln!(
                "{} holds another bench checkpoint ({have}); replacing it",
                dir.display()
            );
            clear_cache(&dir)?;
        } else if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
            bail!(
                "{} is not empty and holds no bench checkpoint marker ({MARKER}); \
                 choose an empty or new --model-cache folder",
                dir.display()
            );
        }
    }
    let ck = Checkpoint { dir, what, temp };
    let (_, bytes) = checkpoint_size(&shape);
    eprintln!(
        "writing {} ({:.2} GiB) into {} …",
        ck.what,
        bytes as f64 / (1u64 << 30) as f64,
        ck.dir.display()
    );
    write_release_layout(&ck.dir, &shape, seed, 4800 << 20)
        .with_context(|| format!("writing {} to {}", preset.name(), ck.dir.display()))?;
    if !ck.temp {
        std::fs::write(&marker, serde_json::to_vec_pretty(&want)?)?;
    }
    Ok(ck)
}

/// Removes what an earlier cache write left: the marker first (so a half-cleared folder is
/// never taken for a cache), then the shards, index and config.
fn clear_cache(dir: &Path) -> Result<()> {
    std::fs::remove_file(dir.join(MARKER))?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".safetensors")
            || name.contains(".safetensors.tmp-")
            || name == "model.safetensors.index.json"
            || name == "config.json"
        {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_names_preset_layers_and_seed() {
        let m = marker_json(ReleasePreset::GptOss20b, 2, 0);
        assert_eq!(m["preset"], "gpt-oss-20b");
        assert_eq!(m["layers"], 2);
        assert_ne!(m, marker_json(ReleasePreset::GptOss20b, 3, 0));
        assert_ne!(m, marker_json(ReleasePreset::GptOss120b, 2, 0));
    }
}
