//! Streaming sharded safetensors writer.
//!
//! The whole output (names, dtypes, shapes, order) is planned before any weight is computed,
//! so each shard's header is known up front and tensor bytes can be appended as they are
//! produced — one expert at a time — without ever holding a shard in memory. Tensors must be
//! written in plan order; each may arrive in several chunks.

use crate::st::Dtype;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl Spec {
    pub fn new(name: impl Into<String>, dtype: Dtype, shape: &[usize]) -> Spec {
        Spec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
        }
    }
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// How shard files are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// The official gpt-oss converter: 0-based, count written as n-1
    /// (`model-00000-of-00002.safetensors` … `-00002-`).
    HfZeroBased,
    /// Hugging Face `save_pretrained` (transformers' sharding): 1-based, count as is
    /// (`model-00001-of-00003.safetensors` … `-00003-`), what merge writes.
    Hf,
    /// mlx-lm `save_model`: `model.safetensors` alone, else 1-based `model-00001-of-00003`.
    Mlx,
}

fn shard_name(naming: Naming, i: usize, n: usize) -> String {
    match naming {
        Naming::HfZeroBased => format!("model-{i:05}-of-{:05}.safetensors", n - 1),
        Naming::Mlx if n == 1 => "model.safetensors".into(),
        Naming::Hf | Naming::Mlx => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
    }
}

pub struct ShardedWriter {
    dir: PathBuf,
    specs: Vec<Spec>,
    /// Index of the first tensor of each shard (plus a final sentinel).
    bounds: Vec<usize>,
    names: Vec<String>,
    metadata: serde_json::Map<String, serde_json::Value>,
    file: Option<BufWriter<File>>,
    shard: usize,
    /// Tensor being written and bytes of it received so far.
    cur: usize,
    got: usize,
    total_bytes: usize,
}

impl ShardedWriter {
    /// Splits `specs` (in write order) into shards of at most `max_shard_bytes` of data
    /// (a tensor larger than that gets a shard of its own).
    pub fn new(
        dir: &Path,
        specs: Vec<Spec>,
        max_shard_bytes: usize,
        naming: Naming,
        format: &str,
    ) -> Result<ShardedWriter> {
        let mut seen = std::collections::HashSet::new();
        for s in &specs {
            if !seen.insert(s.name.as_str()) {
                bail!("internal: tensor {} planned twice", s.name);
            }
        }
        let mut bounds = vec![0];
        let mut acc = 0;
        for (i, s) in specs.iter().enumerate() {
            if acc > 0 && acc + s.bytes() > max_shard_bytes {
                bounds.push(i);
                acc = 0;
            }
            acc += s.bytes();
        }
        bounds.push(specs.len());
        let n = bounds.len() - 1;
        let names = (0..n).map(|i| shard_name(naming, i, n)).collect();
        let mut metadata = serde_json::Map::new();
        metadata.insert("format".into(), format.into());
        let total_bytes = specs.iter().map(Spec::bytes).sum();
        let mut w = ShardedWriter {
            dir: dir.to_path_buf(),
            specs,
            bounds,
            names,
            metadata,
            file: None,
            shard: 0,
            cur: 0,
            got: 0,
            total_bytes,
        };
        if !w.specs.is_empty() {
            w.open_shard(0)?;
        }
        Ok(w)
    }

    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    fn open_shard(&mut self, s: usize) -> Result<()> {
        let path = self.dir.join(&self.names[s]);
        let mut header = serde_json::Map::new();
        header.insert(
            "__metadata__".into(),
            serde_json::Value::Object(self.metadata.clone()),
        );
        let mut off = 0usize;
        for spec in &self.specs[self.bounds[s]..self.bounds[s + 1]] {
            let end = off + spec.bytes();
            header.insert(
                spec.name.clone(),
                serde_json::json!({ "dtype": spec.dtype.name(), "shape": spec.shape,
                                    "data_offsets": [off, end] }),
            );
            off = end;
        }
        let mut h = serde_json::to_vec(&header)?;
        // Pad with spaces to 8 bytes, as the reference writer does, so data stays aligned.
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut f = BufWriter::with_capacity(1 << 22, f);
        f.write_all(&(h.len() as u64).to_le_bytes())?;
        f.write_all(&h)?;
        self.file = Some(f);
        self.shard = s;
        Ok(())
    }

    /// Appends `bytes` to tensor `name`, which must be the tensor currently expected.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(spec) = self.specs.get(self.cur) else {
            bail!("internal: tensor {name} written after the plan was complete");
        };
        if spec.name != name {
            bail!("internal: expected tensor {} next, got {name}", spec.name);
        }
        if self.got + bytes.len() > spec.bytes() {
            bail!(
                "internal: tensor {name} ({:?} {}) got {} bytes, more than {}",
                spec.shape,
                spec.dtype.name(),
                self.got + bytes.len(),
                spec.bytes()
            );
        }
        let path = self.dir.join(&self.names[self.shard]);
        let f = self.file.as_mut().context("internal: no shard open")?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        self.got += bytes.len();
        if self.got == spec.bytes() {
            self.cur += 1;
            self.got = 0;
            if self.cur == self.bounds[self.shard + 1] {
                self.close_shard()?;
                if self.cur < self.specs.len() {
                    self.open_shard(self.shard + 1)?;
                }
            }
        }
        Ok(())
    }

    fn close_shard(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            let path = self.dir.join(&self.names[self.shard]);
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()
                .with_context(|| format!("syncing {}", path.display()))?;
        }
        Ok(())
    }

    /// Checks every planned tensor was written and writes `model.safetensors.index.json`.
    pub fn finish(mut self) -> Result<Vec<String>> {
        if self.cur != self.specs.len() {
            let s = &self.specs[self.cur];
            bail!(
                "internal: tensor {} was not written ({} of {} bytes)",
                s.name,
                self.got,
                s.bytes()
            );
        }
        self.close_shard()?;
        let mut map = serde_json::Map::new();
        for s in 0..self.names.len() {
            for spec in &self.specs[self.bounds[s]..self.bounds[s + 1]] {
                map.insert(spec.name.clone(), self.names[s].clone().into());
            }
        }
        let index = serde_json::json!({
            "metadata": { "total_size": self.total_bytes },
            "weight_map": map,
        });
        write_json(&self.dir.join("model.safetensors.index.json"), &index)?;
        Ok(self.names)
    }
}

/// The temporary folder name of output `leaf` for process `pid` (`.LEAF.tmp-PID`, hidden
/// beside the output so the final rename stays on one file system).
pub fn temp_name(leaf: &str, pid: u32) -> String {
    format!(".{leaf}.tmp-{pid}")
}

/// Removes the temporary folders (`temp_name`) that earlier runs for output `leaf` left in
/// `parent` when they were killed: those whose process no longer exists (Linux `/proc`;
/// elsewhere nothing is removed, since liveness cannot be told). Returns what was removed.
pub fn clean_stale_temporaries(parent: &Path, leaf: &str) -> Result<Vec<PathBuf>> {
    let proc_ = Path::new("/proc");
    if !proc_.join("self").exists() {
        return Ok(Vec::new());
    }
    let prefix = format!(".{leaf}.tmp-");
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Ok(removed);
    };
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || proc_.join(pid.to_string()).exists() {
            continue; // ours, or a live process's (possibly a concurrent merge)
        }
        let p = e.path();
        std::fs::remove_dir_all(&p)
            .with_context(|| format!("removing the stale temporary folder {}", p.display()))?;
        removed.push(p);
    }
    Ok(removed)
}

/// Writes pretty JSON atomically (`X.tmp`, then rename).
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut text = serde_json::to_string_pretty(v)?;
    text.push('\n');
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

/// Writes one small safetensors file from in-memory tensors (adapters, fixtures), atomically.
pub fn write_single(path: &Path, tensors: &[(Spec, Vec<u8>)], format: &str) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let dir = tmp.with_extension("d");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let specs = tensors.iter().map(|(s, _)| s.clone()).collect();
    let mut w = ShardedWriter::new(&dir, specs, usize::MAX, Naming::Mlx, format)?;
    for (s, b) in tensors {
        w.write(&s.name, b)?;
    }
    w.finish()?;
    std::fs::rename(dir.join("model.safetensors"), path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::st::Tensors;

    #[test]
    fn shards_and_reads_back() {
        let dir = std::env::temp_dir().join(format!("osstune-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let specs = vec![
            Spec::new("a", Dtype::F32, &[2, 3]),
            Spec::new("b", Dtype::U8, &[5]),
            Spec::new("c", Dtype::BF16, &[4, 4]),
        ];
        let mut w = ShardedWriter::new(&dir, specs, 25, Naming::Hf, "pt").unwrap();
        let a: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.write("a", &a[..8]).unwrap();
        assert!(w.write("b", &[1]).is_err(), "out of order must fail");
        w.write("a", &a[8..]).unwrap();
        w.write("b", &[1, 2, 3, 4, 5]).unwrap();
        w.write("c", &[7u8; 32]).unwrap();
        let names = w.finish().unwrap();
        assert_eq!(
            names,
            [
                "model-00001-of-00003.safetensors",
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors"
            ]
        );
        let t = Tensors::open_dir(&dir).unwrap();
        assert_eq!(t.f32("a").unwrap(), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(t.bytes("b").unwrap(), &[1, 2, 3, 4, 5]);
        assert_eq!(t.info("c").unwrap().shape, vec![4, 4]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile_dir("stale");
        // A pid above the kernel's limit (pid_max ≤ 2^22) never belongs to a live process.
        let dead = dir.join(temp_name("out", 4_999_999));
        let live = dir.join(temp_name("out", std::process::id()));
        let other = dir.join(temp_name("other", 4_999_999));
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        let removed = clean_stale_temporaries(&dir, "out").unwrap();
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, vec![dead.clone()]);
            assert!(!dead.exists());
        }
        assert!(live.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("osstune-writer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn unfinished_plan_is_an_error() {
        let dir = std::env::temp_dir().join(format!("osstune-writer2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = ShardedWriter::new(
            &dir,
            vec![Spec::new("a", Dtype::U8, &[2])],
            100,
            Naming::Mlx,
            "mlx",
        )
        .unwrap();
        assert!(w.finish().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
