//! The base checkpoint as merge sees it: every non-expert tensor by name, and experts one at a
//! time in ONE canonical orientation — nn.Linear `[out, in]` f32 rows — whatever the storage:
//!
//! | storage | gate_up / gate, up | down |
//! |---|---|---|
//! | HF MXFP4 | `gate_up_proj_blocks` [E, 2I, H/32, 16] (rows interleaved gate/up) | `down_proj_blocks` [E, H, I/32, 16] |
//! | HF dense | `gate_up_proj` [E, H, 2I] (transposed; last axis interleaved) | `down_proj` [E, I, H] (transposed) |
//! | MLX | `gate_proj.weight`, `up_proj.weight` [E, I, H] (dense, or U32 mxfp4 [E, I, H/8] + `.scales`) | `down_proj.weight` [E, H, I] |

use crate::adapter::{Target, TargetShape};
use crate::st::{Dtype, Tensors};
use anyhow::{bail, Context, Result};
use osstune_model::io::layout::ExpertLayout;
use osstune_model::quant::mxfp4::{dequantize_rows, GROUP, GROUP_BYTES};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpertStore {
    HfMxfp4,
    HfDense,
    MlxDense,
    MlxMxfp4,
}

/// Which expert rows to read. `GateUp` is the fused, interleaved `[2I, H]` matrix
/// (row 2i = gate i, row 2i+1 = up i); `Gate` / `Up` its even / odd rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sel {
    GateUp,
    Gate,
    Up,
    Down,
}

pub struct Base {
    pub dir: PathBuf,
    pub config: serde_json::Value,
    pub tensors: Tensors,
    pub store: ExpertStore,
    pub layers: usize,
    pub experts: usize,
    pub hidden: usize,
    pub inter: usize,
}

fn ex(layer: usize, leaf: &str) -> String {
    format!("model.layers.{layer}.mlp.experts.{leaf}")
}

impl Base {
    pub fn open(dir: &Path) -> Result<Base> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("reading {}", cfg_path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
        let get = |k: &str| {
            config
                .get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .with_context(|| format!("{}: missing integer `{k}`", cfg_path.display()))
        };
        let layers = get("num_hidden_layers")?;
        let experts = get("num_local_experts")?;
        let tensors = Tensors::open_dir(dir)?;
        let store = match ExpertLayout::detect(|n| tensors.get(n).is_some(), 0) {
            Some(ExpertLayout::HfMxfp4) => ExpertStore::HfMxfp4,
            Some(ExpertLayout::HfDense) => ExpertStore::HfDense,
            Some(ExpertLayout::Mlx { quantized: true }) => ExpertStore::MlxMxfp4,
            Some(ExpertLayout::Mlx { quantized: false }) => ExpertStore::MlxDense,
            None => bail!(
                "{}: no gpt-oss experts found (looked for {})",
                dir.display(),
                ExpertLayout::expected(0)
            ),
        };
        let shape0 = |n: &str| -> Result<Vec<usize>> { Ok(tensors.info(n)?.shape.clone()) };
        // (E, 2I, H) from the gate/up tensor, I from down.
        let (e, hidden, inter) = match store {
            ExpertStore::HfMxfp4 => {
                let s = shape0(&ex(0, "gate_up_proj_blocks"))?;
                dims4(&s, "gate_up_proj_blocks")?;
                (s[0], s[2] * GROUP, s[1] / 2)
            }
            ExpertStore::HfDense => {
                let s = shape0(&ex(0, "gate_up_proj"))?;
                dims3(&s, "gate_up_proj")?;
                (s[0], s[1], s[2] / 2)
            }
            ExpertStore::MlxDense => {
                let s = shape0(&ex(0, "gate_proj.weight"))?;
                dims3(&s, "gate_proj.weight")?;
                (s[0], s[2], s[1])
            }
            ExpertStore::MlxMxfp4 => {
                let s = shape0(&ex(0, "gate_proj.weight"))?;
                dims3(&s, "gate_proj.weight")?;
                (s[0], s[2] * 8, s[1])
            }
        };
        if e != experts {
            bail!(
                "{}: config says {experts} experts, tensors have {e}",
                dir.display()
            );
        }
        if !hidden.is_multiple_of(GROUP) || !inter.is_multiple_of(GROUP) {
            bail!(
                "{}: hidden {hidden} / intermediate {inter} not multiples of 32",
                dir.display()
            );
        }
        for name in tensors.names() {
            if name.ends_with(".scales") && !name.contains(".mlp.experts.") {
                bail!(
                    "{}: {name}: quantized non-expert layers (MLX affine) are not supported; \
                     merge into a bf16 or MXFP4-experts base",
                    tensors.file_of(name)
                );
            }
        }
        Ok(Base {
            dir: dir.to_path_buf(),
            config,
            tensors,
            store,
            layers,
            experts,
            hidden,
            inter,
        })
    }

    pub fn is_mxfp4(&self) -> bool {
        matches!(self.store, ExpertStore::HfMxfp4 | ExpertStore::MlxMxfp4)
    }

    /// A target's shape in this base (for checking adapters).
    pub fn target_shape(&self, layer: usize, t: Target) -> Result<TargetShape> {
        let (e, h, i) = (Some(self.experts), self.hidden, self.inter);
        Ok(match t {
            Target::Gate | Target::Up => TargetShape {
                experts: e,
                out: i,
                inp: h,
            },
            Target::Down => TargetShape {
                experts: e,
                out: h,
                inp: i,
            },
            _ => {
                let name = format!("{}.weight", t.path(layer));
                let s = &self.tensors.info(&name)?.shape;
                if s.len() != 2 {
                    bail!(
                        "{}: {name} has shape {s:?}, expected 2-D",
                        self.tensors.file_of(&name)
                    );
                }
                TargetShape {
                    experts: None,
                    out: s[0],
                    inp: s[1],
                }
            }
        })
    }

    /// (rows, in) of a selection.
    pub fn sel_dims(&self, sel: Sel) -> (usize, usize) {
        match sel {
            Sel::GateUp => (2 * self.inter, self.hidden),
            Sel::Gate | Sel::Up => (self.inter, self.hidden),
            Sel::Down => (self.hidden, self.inter),
        }
    }

    /// Rows of expert `e`, `[rows, in]` f32 (see the module table).
    pub fn expert_rows(&self, layer: usize, e: usize, sel: Sel) -> Result<Vec<f32>> {
        let (rows, inp) = self.sel_dims(sel);
        let mut out = vec![0f32; rows * inp];
        let groups = inp / GROUP;
        // Row `j` of the selection comes from row src(j) of the stored fused/down matrix.
        let src = |j: usize| match sel {
            Sel::GateUp | Sel::Down => j,
            Sel::Gate => 2 * j,
            Sel::Up => 2 * j + 1,
        };
        match self.store {
            ExpertStore::HfMxfp4 => {
                let leaf = if sel == Sel::Down {
                    "down_proj"
                } else {
                    "gate_up_proj"
                };
                let blocks = self
                    .tensors
                    .slice0(&ex(layer, &format!("{leaf}_blocks")), e)?;
                let scales = self
                    .tensors
                    .slice0(&ex(layer, &format!("{leaf}_scales")), e)?;
                for (j, o) in out.chunks_exact_mut(inp).enumerate() {
                    let r = src(j);
                    let b = &blocks[r * groups * GROUP_BYTES..(r + 1) * groups * GROUP_BYTES];
                    dequantize_rows(b, &scales[r * groups..(r + 1) * groups], o)
                        .with_context(|| ex(layer, leaf))?;
                }
            }
            ExpertStore::HfDense => {
                // Stored transposed: [in, out_all].
                let leaf = if sel == Sel::Down {
                    "down_proj"
                } else {
                    "gate_up_proj"
                };
                let w = self.tensors.f32_slice0(&ex(layer, leaf), e)?;
                let cols = w.len() / inp;
                for (j, o) in out.chunks_exact_mut(inp).enumerate() {
                    let c = src(j);
                    for (k, x) in o.iter_mut().enumerate() {
                        *x = w[k * cols + c];
                    }
                }
            }
            ExpertStore::MlxDense | ExpertStore::MlxMxfp4 => {
                let read = |leaf: &str, o: &mut [f32]| -> Result<()> {
                    let wname = ex(layer, &format!("{leaf}.weight"));
                    if self.store == ExpertStore::MlxDense {
                        o.copy_from_slice(&self.tensors.f32_slice0(&wname, e)?);
                        Ok(())
                    } else {
                        let b = self.tensors.slice0(&wname, e)?;
                        let s = self
                            .tensors
                            .slice0(&ex(layer, &format!("{leaf}.scales")), e)?;
                        dequantize_rows(b, s, o).with_context(|| wname.clone())
                    }
                };
                match sel {
                    Sel::Gate => read("gate_proj", &mut out)?,
                    Sel::Up => read("up_proj", &mut out)?,
                    Sel::Down => read("down_proj", &mut out)?,
                    Sel::GateUp => {
                        let mut g = vec![0f32; rows / 2 * inp];
                        let mut u = vec![0f32; rows / 2 * inp];
                        read("gate_proj", &mut g)?;
                        read("up_proj", &mut u)?;
                        interleave_rows(&g, &u, inp, &mut out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Expert biases: fused gate/up `[E, 2I]` (interleaved) and down `[E, H]`, f32.
    pub fn expert_biases(&self, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        match self.store {
            ExpertStore::HfMxfp4 | ExpertStore::HfDense => Ok((
                self.tensors.f32(&ex(layer, "gate_up_proj_bias"))?,
                self.tensors.f32(&ex(layer, "down_proj_bias"))?,
            )),
            ExpertStore::MlxDense | ExpertStore::MlxMxfp4 => {
                let g = self.tensors.f32(&ex(layer, "gate_proj.bias"))?;
                let u = self.tensors.f32(&ex(layer, "up_proj.bias"))?;
                let mut fused = vec![0f32; g.len() * 2];
                interleave_rows(&g, &u, 1, &mut fused);
                Ok((fused, self.tensors.f32(&ex(layer, "down_proj.bias"))?))
            }
        }
    }

    /// Dtype of the non-expert float weights (what an `--dtype` default would keep).
    pub fn float_dtype(&self) -> Dtype {
        self.tensors
            .get("model.embed_tokens.weight")
            .map(|i| i.dtype)
            .unwrap_or(Dtype::BF16)
    }
}

/// out[2j] = a[j], out[2j+1] = b[j], rows of `width`.
pub fn interleave_rows(a: &[f32], b: &[f32], width: usize, out: &mut [f32]) {
    for (j, (ra, rb)) in a.chunks_exact(width).zip(b.chunks_exact(width)).enumerate() {
        out[2 * j * width..(2 * j + 1) * width].copy_from_slice(ra);
        out[(2 * j + 1) * width..(2 * j + 2) * width].copy_from_slice(rb);
    }
}

fn dims3(s: &[usize], what: &str) -> Result<()> {
    if s.len() != 3 {
        bail!("{what}: expected 3 dims, found {s:?}");
    }
    Ok(())
}

fn dims4(s: &[usize], what: &str) -> Result<()> {
    if s.len() != 4 || s[3] != GROUP_BYTES {
        bail!("{what}: expected [E, out, in/32, 16], found {s:?}");
    }
    Ok(())
}
