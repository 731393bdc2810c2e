//! Loading a checkpoint directory into `GptOss`.
//!
//! Layouts (docs/gpt-oss.md §2): HF with MXFP4 experts (`*_blocks`/`*_scales`, rows interleaved
//! gate/up), HF with dense experts (`gate_up_proj [E, H, 2I]`, `down_proj [E, I, H]`,
//! transposed relative to nn.Linear), and MLX (split `gate_proj`/`up_proj`/`down_proj`
//! SwitchLinear `[E, out, in]`, optionally `mxfp4`/`affine` quantized, with `.scales` and for
//! affine `.biases` — not to be confused with the layer `.bias`). Experts end up in one form:
//! `[E, 2I, H]` with gate rows first, quantized experts still packed.
//!
//! On the CPU in f32 the frozen weights are not copied: dense matrices (bf16 in the release)
//! and MXFP4 experts are handles on the checkpoint's mapping (`quant::{matrix, experts}`),
//! HF's interleaved gate/up rows included, and only the small vectors (norms, sinks,
//! biases) and MLX's affine experts are read onto the heap.

use crate::arch::attention::Attention;
use crate::arch::gpt_oss::{Block, GptOss};
use crate::arch::linear::Linear;
use crate::arch::moe::Moe;
use crate::arch::rope::RopeTable;
use crate::config::Config;
use crate::io::checkpoint::Checkpoint;
use crate::io::layout::ExpertLayout;
use crate::kernels::{self, memory};
use crate::quant::affine::{self, QuantMode};
use crate::quant::bytes::Bytes;
use crate::quant::experts::{ExpertMat, Packed, PackedPart};
use crate::quant::matrix::{Matrix, Stored};
use crate::quant::mxfp4;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

struct Loader<'a> {
    ck: &'a Checkpoint,
    cfg: &'a Config,
    dev: &'a Device,
    dtype: DType,
    /// Frozen matrices and packed experts stay in the checkpoint's mapping (CPU, f32 compute:
    /// the CPU kernels widen them per tile). Otherwise they become tensors of `dtype` on `dev`.
    in_place: bool,
}

/// `[0, 2, 4, …, 1, 3, 5, …]`: de-interleaves gate (even) / up (odd) rows.
fn deinterleave_index(two_i: usize, dev: &Device) -> Result<Tensor> {
    let idx: Vec<u32> = (0..two_i as u32)
        .step_by(2)
        .chain((1..two_i as u32).step_by(2))
        .collect();
    Ok(Tensor::from_vec(idx, two_i, dev)?)
}

impl Loader<'_> {
    fn float(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ck.load_float(name, shape, self.dtype, self.dev)
    }

    fn f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ck.load_float(name, shape, DType::F32, self.dev)
    }

    fn u8_bytes(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let bytes = self.packed_bytes(name, shape)?;
        Ok(Tensor::from_slice(bytes.as_slice(), shape, self.dev)?)
    }

    /// A packed U8 (or MLX U32) tensor's bytes where they lie, checked against `shape` (bytes).
    fn packed_bytes(&self, name: &str, shape: &[usize]) -> Result<Bytes> {
        let (bytes, info) = self.ck.mapped(name)?;
        if info.dtype != DType::U8 && info.dtype != DType::U32 {
            bail!(
                "tensor {name} in {}: expected U8/U32 packed data, found {:?}",
                self.ck.file_of(name)?.display(),
                info.dtype
            );
        }
        let n: usize = shape.iter().product();
        if bytes.len() != n {
            bail!(
                "tensor {name} in {}: wrong shape, expected {} bytes as {shape:?}, found {:?} {:?}",
                self.ck.file_of(name)?.display(),
                n,
                info.dtype,
                info.shape
            );
        }
        Ok(bytes)
    }

    /// Packed MXFP4 experts `{blocks}`/`{scales}` of `[e, rows, inp]` where they lie.
    fn packed(
        &self,
        (blocks, scales): (&str, &str),
        (e, rows, inp): (usize, usize, usize),
        interleaved: bool,
    ) -> Result<Packed> {
        let part = PackedPart {
            blocks: self.packed_bytes(blocks, &[e, rows, inp / 32, 16])?,
            scales: self.packed_bytes(scales, &[e, rows, inp / 32])?,
            rows,
        };
        Packed::new(vec![part], e, inp, interleaved).with_context(|| format!("tensor {blocks}"))
    }

    /// A dense `[out, in]` matrix stored at `{path}.weight`: where it lies if it can stay
    /// there, dequantized if MLX quantized it.
    fn matrix(&self, path: &str, out: usize, inp: usize) -> Result<Matrix> {
        let wname = format!("{path}.weight");
        let sname = format!("{path}.scales");
        if !self.ck.contains(&sname) {
            if self.in_place {
                let (bytes, info) = self.ck.mapped(&wname)?;
                if info.shape != [out, inp] {
                    bail!(
                        "tensor {wname} in {}: wrong shape, expected {:?}, found {:?}",
                        self.ck.file_of(&wname)?.display(),
                        [out, inp],
                        info.shape
                    );
                }
                if let Some(stored) = Stored::from_dtype(info.dtype) {
                    return Matrix::mapped(bytes, stored, (out, inp));
                }
            }
            return Ok(self.float(&wname, &[out, inp])?.into());
        }
        let mode = affine::mode_for(self.cfg.mlx_quantization(), path)?;
        let v = match mode {
            QuantMode::Mxfp4 => {
                let b = self.u8_bytes(&wname, &[out, inp / 32, 16])?;
                let s = self.u8_bytes(&sname, &[out, inp / 32])?;
                return Ok(mxfp4::dequantize(&b, &s, self.dtype)?.into());
            }
            QuantMode::Affine { bits, group } => {
                let (w, winfo) = self.ck.bytes(&wname)?;
                if winfo.shape != [out, inp * bits / 32] {
                    bail!(
                        "tensor {wname}: wrong shape for {bits}-bit affine, expected {:?}, found {:?}",
                        [out, inp * bits / 32],
                        winfo.shape
                    );
                }
                let s = self.floats(&sname, &[out, inp / group])?;
                let b = self.floats(&format!("{path}.biases"), &[out, inp / group])?;
                affine::affine_dequantize(w, &s, &b, out, bits, group)
                    .with_context(|| format!("dequantizing {path}"))?
            }
        };
        Ok(Tensor::from_vec(v, (out, inp), &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(self.dev)?
            .into())
    }

    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (bytes, info) = self.ck.bytes(name)?;
        if info.shape != shape {
            bail!(
                "tensor {name}: wrong shape, expected {shape:?}, found {:?}",
                info.shape
            );
        }
        affine::floats_from_bytes(bytes, info.dtype).with_context(|| format!("tensor {name}"))
    }

    fn linear(&self, path: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
        let w = self.matrix(path, out, inp)?;
        let b = if bias {
            Some(self.float(&format!("{path}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(w, b))
    }

    /// MLX SwitchLinear `{path}` with `[E, out, in]` experts, in its stored form.
    fn switch(&self, path: &str, e: usize, out: usize, inp: usize) -> Result<ExpertMat> {
        let wname = format!("{path}.weight");
        let sname = format!("{path}.scales");
        if !self.ck.contains(&sname) {
            return Ok(ExpertMat::Dense(self.float(&wname, &[e, out, inp])?));
        }
        match affine::mode_for(self.cfg.mlx_quantization(), path)? {
            QuantMode::Mxfp4 if self.in_place => Ok(ExpertMat::Packed(self.packed(
                (&wname, &sname),
                (e, out, inp),
                false,
            )?)),
            QuantMode::Mxfp4 => Ok(ExpertMat::Mxfp4 {
                blocks: self.u8_bytes(&wname, &[e, out, inp / 32, 16])?,
                scales: self.u8_bytes(&sname, &[e, out, inp / 32])?,
            }),
            QuantMode::Affine { bits, group } => {
                let s = self.floats(&sname, &[e, out, inp / group])?;
                let b = self.floats(&format!("{path}.biases"), &[e, out, inp / group])?;
                Ok(ExpertMat::Affine {
                    w: self.u8_bytes(&wname, &[e, out, inp * bits / 8])?,
                    scales: Tensor::from_vec(s, (e, out, inp / group), &Device::Cpu)?,
                    biases: Tensor::from_vec(b, (e, out, inp / group), &Device::Cpu)?,
                    bits,
                    group,
                })
            }
        }
    }

    fn experts(&self, l: usize) -> Result<(ExpertMat, Tensor, ExpertMat, Tensor)> {
        let c = self.cfg;
        let (e, h, i) = (c.num_local_experts, c.hidden_size, c.intermediate_size);
        let p = format!("model.layers.{l}.mlp.experts");
        let perm = deinterleave_index(2 * i, self.dev)?;
        let layout = ExpertLayout::detect(|n| self.ck.contains(n), l).with_context(|| {
            format!(
                "missing tensor {} in {}",
                ExpertLayout::expected(l),
                self.ck.dir().display()
            )
        })?;
        if layout == ExpertLayout::HfMxfp4 && self.in_place {
            // Left where they lie: the kernels read HF's interleaved gate/up rows in place.
            let gub = self.float(&format!("{p}.gate_up_proj_bias"), &[e, 2 * i])?;
            Ok((
                ExpertMat::Packed(self.packed(
                    (
                        &format!("{p}.gate_up_proj_blocks"),
                        &format!("{p}.gate_up_proj_scales"),
                    ),
                    (e, 2 * i, h),
                    true,
                )?),
                gub.index_select(&perm, 1)?,
                ExpertMat::Packed(self.packed(
                    (
                        &format!("{p}.down_proj_blocks"),
                        &format!("{p}.down_proj_scales"),
                    ),
                    (e, h, i),
                    false,
                )?),
                self.float(&format!("{p}.down_proj_bias"), &[e, h])?,
            ))
        } else if layout == ExpertLayout::HfMxfp4 {
            // HF MXFP4: rows interleaved gate/up; the row permutation moves whole groups.
            let gb = self.u8_bytes(&format!("{p}.gate_up_proj_blocks"), &[e, 2 * i, h / 32, 16])?;
            let gs = self.u8_bytes(&format!("{p}.gate_up_proj_scales"), &[e, 2 * i, h / 32])?;
            let db = self.u8_bytes(&format!("{p}.down_proj_blocks"), &[e, h, i / 32, 16])?;
            let ds = self.u8_bytes(&format!("{p}.down_proj_scales"), &[e, h, i / 32])?;
            let gub = self.float(&format!("{p}.gate_up_proj_bias"), &[e, 2 * i])?;
            Ok((
                ExpertMat::Mxfp4 {
                    blocks: gb.index_select(&perm, 1)?,
                    scales: gs.index_select(&perm, 1)?,
                },
                gub.index_select(&perm, 1)?,
                ExpertMat::Mxfp4 {
                    blocks: db,
                    scales: ds,
                },
                self.float(&format!("{p}.down_proj_bias"), &[e, h])?,
            ))
        } else if layout == ExpertLayout::HfDense {
            // HF dense: [E, H, 2I] used as x @ W; interleave along the last axis.
            let gu = self.float(&format!("{p}.gate_up_proj"), &[e, h, 2 * i])?;
            let gu = gu.index_select(&perm, 2)?.transpose(1, 2)?.contiguous()?;
            let down = self.float(&format!("{p}.down_proj"), &[e, i, h])?;
            let down = down.transpose(1, 2)?.contiguous()?;
            let gub = self.float(&format!("{p}.gate_up_proj_bias"), &[e, 2 * i])?;
            Ok((
                ExpertMat::Dense(gu),
                gub.index_select(&perm, 1)?,
                ExpertMat::Dense(down),
                self.float(&format!("{p}.down_proj_bias"), &[e, h])?,
            ))
        } else {
            let gate = self.switch(&format!("{p}.gate_proj"), e, i, h)?;
            let up = self.switch(&format!("{p}.up_proj"), e, i, h)?;
            let gate_up = concat_rows(gate, up).with_context(|| format!("{p}: gate/up"))?;
            let bias = Tensor::cat(
                &[
                    self.float(&format!("{p}.gate_proj.bias"), &[e, i])?,
                    self.float(&format!("{p}.up_proj.bias"), &[e, i])?,
                ],
                1,
            )?;
            let down = self.switch(&format!("{p}.down_proj"), e, h, i)?;
            let down_bias = self.float(&format!("{p}.down_proj.bias"), &[e, h])?;
            Ok((gate_up, bias, down, down_bias))
        }
    }

    fn block(&self, l: usize) -> Result<Block> {
        let c = self.cfg;
        let (h, d) = (c.hidden_size, c.head_dim);
        let (hq, hkv) = (c.num_attention_heads, c.num_key_value_heads);
        let p = format!("model.layers.{l}");
        let bias = c.attention_bias;
        let attn = Attention {
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"), hq * d, h, bias)?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"), hkv * d, h, bias)?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"), hkv * d, h, bias)?,
            o_proj: self.linear(&format!("{p}.self_attn.o_proj"), h, hq * d, bias)?,
            sinks: self.f32(&format!("{p}.self_attn.sinks"), &[hq])?,
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            window: c.is_sliding(l).then(|| c.window()),
        };
        let (gate_up, gate_up_bias, down, down_bias) = self.experts(l)?;
        let moe = Moe {
            router: self.linear(&format!("{p}.mlp.router"), c.num_local_experts, h, true)?,
            gate_up,
            gate_up_bias,
            down,
            down_bias,
            top_k: c.num_experts_per_tok,
            limit: c.swiglu_limit,
            alpha: c.swiglu_alpha,
            lora: Default::default(),
        };
        Ok(Block {
            input_norm: self.f32(&format!("{p}.input_layernorm.weight"), &[h])?,
            attn,
            post_norm: self.f32(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            moe,
        })
    }
}

/// Stacks gate and up experts along the row axis (same storage kind required).
fn concat_rows(gate: ExpertMat, up: ExpertMat) -> Result<ExpertMat> {
    Ok(match (gate, up) {
        (ExpertMat::Dense(g), ExpertMat::Dense(u)) => ExpertMat::Dense(Tensor::cat(&[g, u], 1)?),
        (ExpertMat::Packed(g), ExpertMat::Packed(u)) => ExpertMat::Packed(g.stack_rows(u)?),
        (
            ExpertMat::Mxfp4 {
                blocks: gb,
                scales: gs,
            },
            ExpertMat::Mxfp4 {
                blocks: ub,
                scales: us,
            },
        ) => ExpertMat::Mxfp4 {
            blocks: Tensor::cat(&[gb, ub], 1)?,
            scales: Tensor::cat(&[gs, us], 1)?,
        },
        (
            ExpertMat::Affine {
                w: gw,
                scales: gs,
                biases: gb,
                bits,
                group,
            },
            ExpertMat::Affine {
                w: uw,
                scales: us,
                biases: ub,
                bits: ubits,
                group: ugroup,
            },
        ) if bits == ubits && group == ugroup => ExpertMat::Affine {
            w: Tensor::cat(&[gw, uw], 1)?,
            scales: Tensor::cat(&[gs, us], 1)?,
            biases: Tensor::cat(&[gb, ub], 1)?,
            bits,
            group,
        },
        _ => bail!("gate_proj and up_proj are stored in different quantization formats"),
    })
}

impl GptOss {
    /// Loads `dir` (config.json + safetensors, any supported layout) onto `dev` in `dtype`.
    pub fn load(dir: impl AsRef<Path>, dev: &Device, dtype: DType) -> Result<Self> {
        let dir = dir.as_ref();
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            bail!("unsupported model dtype {dtype:?} (use f32 or bf16)");
        }
        let cfg = Config::from_model_dir(dir)?;
        let ck = Checkpoint::open(dir)?;
        let ld = Loader {
            ck: &ck,
            cfg: &cfg,
            dev,
            dtype,
            in_place: memory::weights_stay_mapped(kernels::backend_at(dev.location(), dtype)),
        };
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let embed = ld.matrix("model.embed_tokens", v, h)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| ld.block(l))
            .collect::<Result<Vec<_>>>()?;
        let norm = ld.f32("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings && !ck.contains("lm_head.weight") {
            embed.clone()
        } else {
            ld.matrix("lm_head", v, h)?
        };
        let rope = RopeTable::new(&cfg);
        Ok(Self {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            lora: Default::default(),
            rope,
            device: dev.clone(),
            dtype,
            content_digest: crate::io::content_digest::content_digest(&ck)?,
        })
    }
}
