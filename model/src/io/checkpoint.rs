//! Name → tensor access over the safetensors files of a checkpoint directory.
//!
//! Files are memory-mapped once; a tensor is read only when asked for, so merge can stream
//! one layer at a time, and [`Checkpoint::mapped`] hands out a tensor's bytes in the mapping
//! itself (the CPU model keeps its weights there instead of copying them to the heap). Sharded checkpoints are resolved through `model.safetensors.index.json`
//! (never by guessing shard names: HF's are 0-based, MLX's 1-based).

use crate::quant::bytes::Bytes;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<(PathBuf, Mapped)>,
    /// tensor name → index into `files`
    route: BTreeMap<String, usize>,
}

/// One mapped safetensors file and its parsed header.
struct Mapped {
    map: Arc<memmap2::Mmap>,
    /// name → (stored dtype, shape, absolute byte range in the file)
    tensors: HashMap<String, (safetensors::Dtype, Vec<usize>, std::ops::Range<usize>)>,
}

impl Mapped {
    fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }
}

/// Shape and dtype of one stored tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

fn map_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::U8 => DType::U8,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        S::BF16 => DType::BF16,
        S::F16 => DType::F16,
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        _ => return None,
    })
}

fn open_file(path: &Path) -> Result<Mapped> {
    if !path.exists() {
        bail!("missing file {}", path.display());
    }
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on nobody
    // truncating it while the model is alive.
    let map =
        unsafe { memmap2::Mmap::map(&f) }.with_context(|| format!("mapping {}", path.display()))?;
    // Decode streams gigabytes of these pages per token: with 4 KiB mappings every page is a
    // TLB miss and a stop for the hardware prefetcher. Asking for huge pages lets the kernel
    // read the file into 2 MiB folios and map them whole where it can; a kernel that cannot
    // keeps 4 KiB pages, which only costs speed.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    crate::io::tensor_bounds::check_mapped(path, &map)?;
    let (n, meta) = safetensors::SafeTensors::read_metadata(&map)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let data = 8 + n;
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let (a, b) = t.data_offsets;
            (name, (t.dtype, t.shape.clone(), data + a..data + b))
        })
        .collect();
    Ok(Mapped {
        map: Arc::new(map),
        tensors,
    })
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` if present, else `dir/model.safetensors`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index_path.exists() {
            Self::open_index(&dir, &index_path)
        } else if single.exists() {
            Self::open_files(&dir, &[single])
        } else {
            bail!(
                "no model.safetensors or model.safetensors.index.json in {}",
                dir.display()
            )
        }
    }

    /// Opens an explicit list of files (later files win on duplicate names).
    pub fn open_files(dir: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut route = BTreeMap::new();
        for (i, p) in paths.iter().enumerate() {
            let st = open_file(p)?;
            for name in st.names() {
                route.insert(name.clone(), i);
            }
            files.push((p.clone(), st));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            route,
        })
    }

    fn open_index(dir: &Path, index_path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index_path)
            .with_context(|| format!("cannot read {}", index_path.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", index_path.display()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map object", index_path.display()))?;
        let mut file_ids: HashMap<String, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut route = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().with_context(|| {
                format!(
                    "{}: weight_map[{name}] is not a string",
                    index_path.display()
                )
            })?;
            let id = match file_ids.get(file) {
                Some(&id) => id,
                None => {
                    let path = dir.join(file);
                    let st = open_file(&path).with_context(|| {
                        format!("listed in {} for {name}", index_path.display())
                    })?;
                    files.push((path, st));
                    file_ids.insert(file.to_string(), files.len() - 1);
                    files.len() - 1
                }
            };
            route.insert(name.clone(), id);
        }
        for (name, &id) in &route {
            let (path, st) = &files[id];
            if !st.tensors.contains_key(name) {
                bail!(
                    "{} maps tensor {name} to {}, which does not contain it",
                    index_path.display(),
                    path.display()
                );
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            route,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.route.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.route.contains_key(name)
    }

    /// The file holding `name`.
    pub fn file_of(&self, name: &str) -> Result<&Path> {
        let id = self.id(name)?;
        Ok(&self.files[id].0)
    }

    fn id(&self, name: &str) -> Result<usize> {
        self.route
            .get(name)
            .copied()
            .with_context(|| format!("missing tensor {name} in {}", self.dir.display()))
    }

    /// The file's entry for `name`: stored dtype, shape and byte range.
    fn entry(
        &self,
        name: &str,
    ) -> Result<(
        &Mapped,
        safetensors::Dtype,
        &[usize],
        std::ops::Range<usize>,
    )> {
        let id = self.id(name)?;
        let (path, st) = &self.files[id];
        let (dt, shape, range) = st
            .tensors
            .get(name)
            .with_context(|| format!("reading {name} from {}", path.display()))?;
        Ok((st, *dt, shape, range.clone()))
    }

    pub fn info(&self, name: &str) -> Result<TensorInfo> {
        let (_, dt, shape, _) = self.entry(name)?;
        let dtype = map_dtype(dt).with_context(|| {
            format!(
                "tensor {name} in {}: unsupported dtype {dt:?}",
                self.file_of(name)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            )
        })?;
        Ok(TensorInfo {
            shape: shape.to_vec(),
            dtype,
        })
    }

    /// Raw little-endian bytes of a tensor, straight from the mapping.
    pub fn bytes(&self, name: &str) -> Result<(&[u8], TensorInfo)> {
        let info = self.info(name)?;
        let (st, _, _, range) = self.entry(name)?;
        Ok((&st.map[range], info))
    }

    /// A tensor's bytes as a shareable handle on the mapping (no copy).
    pub fn mapped(&self, name: &str) -> Result<(Bytes, TensorInfo)> {
        let info = self.info(name)?;
        let (st, _, _, range) = self.entry(name)?;
        Ok((Bytes::mapped(st.map.clone(), range), info))
    }

    /// Loads a tensor in its stored dtype.
    pub fn load(&self, name: &str, dev: &Device) -> Result<Tensor> {
        let (bytes, info) = self.bytes(name)?;
        Tensor::from_raw_buffer(bytes, info.dtype, &info.shape, dev)
            .with_context(|| format!("loading {name} from {}", self.dir.display()))
    }

    /// Loads a tensor, checks its shape and converts floats to `dtype` (integer tensors are
    /// returned as stored).
    pub fn load_shaped(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let info = self.info(name)?;
        if info.shape != shape {
            bail!(
                "tensor {name} in {}: wrong shape, expected {shape:?}, found {:?}",
                self.file_of(name)?.display(),
                info.shape
            );
        }
        let t = self.load(name, dev)?;
        if info.dtype.is_float() {
            Ok(t.to_dtype(dtype)?)
        } else {
            Ok(t)
        }
    }

    /// Like `load_shaped` but for a float tensor only (names the dtype problem otherwise).
    pub fn load_float(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let info = self.info(name)?;
        if !info.dtype.is_float() {
            bail!(
                "tensor {name} in {}: expected a float dtype, found {:?}",
                self.file_of(name)?.display(),
                info.dtype
            );
        }
        self.load_shaped(name, shape, dtype, dev)
    }
}
